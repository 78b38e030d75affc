//! Snapshots (Raft §7): sending one to a follower that needs compacted entries, installing one.

use super::message::MessageBody;
use super::Raft;
use super::RaftStorage;
use crate::types::{NodeId, Snapshot};

impl<S: RaftStorage> Raft<S> {
    /// Leader: the entries `to` needs are compacted; send the latest snapshot instead.
    pub(super) fn send_snapshot(&mut self, to: NodeId) -> bool {
        let snapshot = match self.log.storage.snapshot() {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::debug!(%error, to, "snapshot not available yet");
                return false;
            }
        };
        let Some(progress) = self.progress.get_mut(&to) else {
            return false;
        };
        progress.become_snapshot(snapshot.meta.index);
        self.send(to, MessageBody::InstallSnapshot { snapshot });
        true
    }

    /// Follower: install a snapshot from the leader, unless the log already covers it.
    pub(super) fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        self.election_elapsed = 0;
        self.leader = Some(from);
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        // A member that was never configured takes the snapshot even at an old index: it carries
        // the configuration the leader's log starts from.
        let unconfigured = self.conf.members().is_empty() && self.log.last_index() == 0;
        let reply_index = if index <= self.log.committed && !unconfigured {
            self.log.committed
        } else if self.log.match_term(index, term) && !unconfigured {
            // We hold the snapshot's last entry: it is committed, no need to replace our log.
            self.log.commit_to(index);
            self.log.committed
        } else {
            self.conf = snapshot.meta.conf_state.clone();
            self.log.restore(snapshot);
            index
        };
        self.send(
            from,
            MessageBody::AppendResponse {
                index: reply_index,
                reject: false,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }
}
