//! Three peers, one key, a partition: both sides take a write, the partition heals, a read
//! shows both siblings with their context, and a write naming that context resolves them.
//!
//! `cargo run -p replication-peer --example three_peers`

use std::collections::{BTreeMap, BTreeSet};

use replication_peer::{
    Config, NodeId, Peer, Request, RequestError, RequestId, Response, VersionVector,
};

/// The embedder's duties, in miniature: make writes durable, confirm them, deliver messages
/// (except across the cut), collect replies.
struct Net {
    peers: BTreeMap<NodeId, Peer>,
    cut: BTreeSet<NodeId>,
    replies: BTreeMap<RequestId, Result<Response, RequestError>>,
}

impl Net {
    fn run(&mut self) {
        loop {
            let mut mail = Vec::new();
            let mut moved = false;
            for (&id, peer) in &mut self.peers {
                let out = peer.take_output();
                moved |= !out.is_empty();
                if let Some(last) = out.persists.last() {
                    // A real node writes `out.persists` to its log and fsyncs first.
                    peer.persisted(last.token).expect("issued");
                }
                self.replies.extend(out.replies);
                mail.extend(out.messages.into_iter().map(|(to, m)| (id, to, m)));
            }
            let cut = |n| self.cut.contains(&n);
            let deliverable: Vec<_> = mail
                .into_iter()
                .filter(|(f, t, _)| !cut(*f) && !cut(*t))
                .collect();
            if !moved {
                return;
            }
            for (from, to, m) in deliverable {
                self.peers
                    .get_mut(&to)
                    .expect("member")
                    .step(from, m)
                    .expect("valid");
            }
        }
    }

    fn request(
        &mut self,
        node: NodeId,
        id: u64,
        request: Request,
    ) -> Result<Response, RequestError> {
        self.peers
            .get_mut(&node)
            .expect("member")
            .client_request(RequestId(id), request);
        self.run();
        self.replies.remove(&RequestId(id)).expect("answered")
    }
}

fn main() {
    let members = vec![1, 2, 3];
    let peers = members
        .iter()
        .map(|&id| {
            (
                id,
                Peer::new(Config::new(id, members.clone())).expect("valid config"),
            )
        })
        .collect();
    let mut net = Net {
        peers,
        cut: BTreeSet::new(),
        replies: BTreeMap::new(),
    };
    let put = |value: &str, context: VersionVector, w| Request::Put {
        key: b"cart".to_vec(),
        value: value.as_bytes().to_vec(),
        context,
        w,
    };

    net.cut.insert(3);
    println!(
        "node 1 (node 3 cut off): {:?}",
        net.request(1, 1, put("milk", VersionVector::new(), 1))
    );
    net.cut = BTreeSet::from([1, 2]);
    println!(
        "node 3 (nodes 1, 2 cut off): {:?}",
        net.request(3, 2, put("eggs", VersionVector::new(), 1))
    );
    net.cut.clear();

    let Ok(Response::Read {
        siblings, context, ..
    }) = net.request(
        2,
        3,
        Request::Get {
            key: b"cart".to_vec(),
            r: 3,
        },
    )
    else {
        panic!("read failed");
    };
    for s in &siblings {
        println!(
            "sibling {:?}: {}",
            s.dot,
            String::from_utf8_lossy(s.value.as_deref().unwrap_or(b"<deleted>"))
        );
    }
    println!("context {context:?}");
    assert_eq!(siblings.len(), 2, "both concurrent writes survive");

    net.request(2, 4, put("milk+eggs", context, 3))
        .expect("resolving write");
    let Ok(Response::Read { siblings, .. }) = net.request(
        1,
        5,
        Request::Get {
            key: b"cart".to_vec(),
            r: 3,
        },
    ) else {
        panic!("read failed");
    };
    println!(
        "after the resolving write: {:?}",
        siblings
            .iter()
            .map(|s| String::from_utf8_lossy(s.value.as_deref().unwrap_or(b"")))
            .collect::<Vec<_>>()
    );
    assert_eq!(siblings.len(), 1);
}
