//! Keys and values encode as byte strings (`serde_bytes`): one length and a copy. In postcard
//! that is byte for byte what a sequence of `u8`s was, so logs and messages written before the
//! change still decode, and peers of both builds understand each other.

use replication_peer::{Dot, Dvv, Message, Object, Timestamp, VersionVector, Versioned, Write};
use serde::Serialize;

/// `Versioned` as it was encoded before: the value as a plain sequence of bytes.
#[derive(Serialize)]
struct OldVersioned {
    value: Option<Vec<u8>>,
    at: Timestamp,
}

fn at(wall: u64) -> Timestamp {
    Timestamp {
        wall,
        logical: 3,
        node: 2,
    }
}

fn object(value: Option<Vec<u8>>) -> Object {
    let mut dvv = Dvv::new();
    dvv.write(
        &VersionVector::new(),
        Dot {
            node: 2,
            counter: 9,
        },
        Versioned { value, at: at(77) },
    );
    Object::Causal(dvv)
}

#[test]
fn a_value_encodes_as_the_byte_sequence_it_was() {
    for value in [None, Some(Vec::new()), Some((0..=255).collect::<Vec<u8>>())] {
        let new = postcard::to_allocvec(&Versioned {
            value: value.clone(),
            at: at(5),
        })
        .unwrap();
        let old = postcard::to_allocvec(&OldVersioned { value, at: at(5) }).unwrap();
        assert_eq!(new, old);
    }
}

#[test]
fn writes_and_messages_round_trip() {
    let write = Write::Object {
        key: b"key-1".to_vec(),
        object: Some(object(Some(vec![7; 300]))),
    };
    let bytes = postcard::to_allocvec(&write).unwrap();
    assert_eq!(postcard::from_bytes::<Write>(&bytes).unwrap(), write);

    let message = Message::Replicate {
        tag: 1,
        seq: 2,
        key: b"key-2".to_vec(),
        object: object(None),
    };
    let bytes = postcard::to_allocvec(&message).unwrap();
    assert_eq!(postcard::from_bytes::<Message>(&bytes).unwrap(), message);
    // The key is a length and its bytes, right after the variant, tag and seq.
    let key_at = bytes.windows(6).position(|w| w == b"\x05key-2");
    assert!(key_at.is_some(), "{bytes:?}");
}
