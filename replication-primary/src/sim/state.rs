//! The simulated state machine's snapshots: the entries applied so far, encoded so a snapshot's
//! data restores exactly the applied sequence it was taken from (and the checker can compare it).

use bytes::{BufMut, Bytes, BytesMut};
use consensus_core::{Entry, EntryPayload, Snapshot};

/// Encodes the applied entries (from index 1): per entry its index, term, payload length and
/// payload. The simulator only writes data entries.
pub(super) fn encode(applied: &[Entry]) -> Bytes {
    let mut out = BytesMut::new();
    for e in applied {
        let EntryPayload::Data(data) = &e.payload else {
            continue;
        };
        out.put_u64_le(e.index);
        out.put_u64_le(e.term);
        out.put_u32_le(data.len() as u32);
        out.put_slice(data);
    }
    out.freeze()
}

/// The applied sequence a snapshot holds: exactly its entries 1 through its index (`None` if
/// the data is anything else).
pub(super) fn restore(snapshot: &Snapshot) -> Option<Vec<Entry>> {
    decode(&snapshot.data).filter(|e| e.len() as u64 == snapshot.meta.index)
}

/// Decodes what [`encode`] wrote; `None` if the data is not such a sequence from index 1.
pub(super) fn decode(mut data: &[u8]) -> Option<Vec<Entry>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let header = data.get(..20)?;
        let index = u64::from_le_bytes(header[..8].try_into().ok()?);
        let term = u64::from_le_bytes(header[8..16].try_into().ok()?);
        let len = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
        let payload = data.get(20..20 + len)?;
        if index != out.len() as u64 + 1 {
            return None;
        }
        out.push(Entry {
            index,
            term,
            payload: EntryPayload::Data(Bytes::copy_from_slice(payload)),
        });
        data = &data[20 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_restores_the_applied_sequence_and_refuses_a_gap() {
        let entries: Vec<Entry> = (1..=3)
            .map(|i| Entry {
                index: i,
                term: 2,
                payload: EntryPayload::Data(Bytes::from(format!("v{i}"))),
            })
            .collect();
        assert_eq!(decode(&encode(&entries)), Some(entries.clone()));
        assert_eq!(decode(&encode(&entries[1..])), None);
        assert_eq!(decode(&encode(&entries)[..25]), None);
    }
}
