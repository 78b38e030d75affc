//! A UDP relay on loopback that can drop everything: how the end-to-end tests partition two
//! nodes without firewall rules (no root, nothing left behind on the machine, no effect on any
//! other process's traffic).
//!
//! Node A is configured to reach node B at the relay's address instead of B's. Datagrams from
//! B's address go back to the last other sender (A's socket); everything else goes to B. QUIC
//! authenticates the node by its certificate, not its address, so the relay is invisible to the
//! nodes — until [`Relay::cut`] makes it drop every datagram in both directions, as a lost
//! link would. Bounded: one thread per relay, stopped (and joined) on drop.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One direction of dialling: A reaches B through it.
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// A relay in front of `target` on a fresh loopback port.
    pub fn new(target: SocketAddr) -> Relay {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a relay port");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("relay address");
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (cut, stop) = (cut.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                let mut dialer: Option<SocketAddr> = None;
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    let to = if from == target {
                        match dialer {
                            Some(d) => d,
                            None => continue,
                        }
                    } else {
                        dialer = Some(from);
                        target
                    };
                    let _ = socket.send_to(&buf[..len], to);
                }
            })
        };
        Relay {
            addr,
            cut,
            stop,
            thread: Some(thread),
        }
    }

    /// Where the dialling node is told the target is.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram from now on (`true`) or relays again (`false`).
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every node reaching every other node through its own [`Relay`] (clients reach the nodes
/// directly), so a test can cut any link.
pub struct RelayMesh {
    relays: std::collections::BTreeMap<(u64, u64), Relay>,
}

impl RelayMesh {
    /// Puts relays between every pair of `procs`' nodes `1..=nodes`, writes each node's
    /// configuration with its peers at their relays' addresses, and starts the nodes.
    pub fn spawn(procs: &mut super::ProcCluster, nodes: u64) -> RelayMesh {
        let mut relays = std::collections::BTreeMap::new();
        for a in 1..=nodes {
            for b in (1..=nodes).filter(|&b| b != a) {
                relays.insert((a, b), Relay::new(procs.addrs[&b]));
            }
        }
        for id in 1..=nodes {
            let mut config = procs.config(id, false);
            config.members = (1..=nodes)
                .map(|m| node::config::MemberConfig {
                    id: m,
                    addr: if m == id {
                        procs.addrs[&m]
                    } else {
                        relays[&(id, m)].addr()
                    },
                })
                .collect();
            std::fs::write(procs.config_path(id), config.to_toml_string().unwrap()).unwrap();
            procs.spawn(id);
        }
        RelayMesh { relays }
    }

    /// Cuts (or heals) the link between `a` and `b`, both directions.
    pub fn cut(&self, a: u64, b: u64, cut: bool) {
        self.relays[&(a, b)].cut(cut);
        self.relays[&(b, a)].cut(cut);
    }
}
