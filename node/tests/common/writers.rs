//! Writers that keep putting their own keys while a test kills a member: each of `count` tasks
//! puts `w<W>-<III>` = `<W>.<I>` for `per_writer` keys, once each (a put whose reply a failover
//! cut off is retried by the client in the same session), and returns the keys acknowledged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use node::client::Client;
use tokio::task::JoinHandle;

/// A fleet of writing tasks.
pub struct Writers {
    /// Puts acknowledged so far, over every writer.
    pub acked: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<Vec<String>>>,
    /// Writers × keys each.
    pub total: usize,
}

impl Writers {
    /// Starts `count` writers of `per_writer` keys each, pausing `pace` after each put (so a
    /// kill lands while writes are in flight).
    pub fn start(client: &Arc<Client>, count: usize, per_writer: usize, pace: Duration) -> Self {
        let acked = Arc::new(AtomicUsize::new(0));
        let tasks = (0..count)
            .map(|w| {
                let (client, acked) = (client.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    for i in 0..per_writer {
                        let key = format!("w{w}-{i:03}");
                        client
                            .put(key.clone(), format!("{w}.{i}"))
                            .await
                            .unwrap_or_else(|e| panic!("put {key} across the failover: {e}"));
                        done.push(key);
                        acked.fetch_add(1, Ordering::Relaxed);
                        if !pace.is_zero() {
                            tokio::time::sleep(pace).await;
                        }
                    }
                    done
                })
            })
            .collect();
        Writers {
            acked,
            tasks,
            total: count * per_writer,
        }
    }

    /// Puts acknowledged so far.
    pub fn acked_so_far(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits for every writer; the keys acknowledged, all of them.
    pub async fn finish(self) -> Vec<String> {
        let mut acked = Vec::new();
        for task in self.tasks {
            acked.extend(task.await.expect("writer task"));
        }
        assert_eq!(acked.len(), self.total);
        acked
    }
}
