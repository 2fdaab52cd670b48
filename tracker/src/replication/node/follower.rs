//! The side of the core that takes a leader's appends, as a follower or
//! while catching up: checking them against the hash chain, replacing
//! what the leader does not have, and being told this log has diverged.

use super::{Node, Note, Role};
use crate::replication::log::{chain, view_rank, LogEntry};
use fileshare_protocol::messages::cluster::{
    AppendResult, ClusterMsg, LogPoint, MemberRole, ViewId,
};
use serde_bytes::ByteBuf;
use std::sync::Arc;

impl Node {
    pub(super) fn on_append(
        &mut self,
        from: u32,
        view: ViewId,
        prev: LogPoint,
        entries: Vec<ByteBuf>,
        commit: u64,
    ) {
        let me = self.cfg.me;
        let my_view = self.log.last_view().map(|(_, v)| v.id);
        let newer = view_rank(Some(view)) > view_rank(my_view);
        let accept = view.leader == from
            && match &self.role {
                Role::Leader | Role::Refused(_) | Role::Stopped => false,
                Role::Follower { leader } => *leader == from || (newer && !self.up(*leader)),
                Role::Recovering { source } => *source == Some(from),
            };
        if !accept {
            if !matches!(self.role, Role::Refused(_) | Role::Stopped) {
                let result = AppendResult::Rejected(self.status());
                self.send(from, ClusterMsg::Appended { view, result });
            }
            return;
        }
        self.max_epoch = self.max_epoch.max(view.epoch);
        // An append is the freshest word that its sender leads, even if the
        // status saying so was lost.
        if let Some(st) = self.peers.get_mut(&from).and_then(|p| p.status.as_mut()) {
            st.role = MemberRole::Leader;
        }
        if !self.log.contains(&prev) {
            let result = AppendResult::Mismatch(self.status());
            self.send(from, ClusterMsg::Appended { view, result });
            return;
        }
        let mut hash = prev.hash;
        let mut verified = prev.index;
        for bytes in entries {
            let index = verified + 1;
            let next = chain(&hash, index, &bytes);
            if index <= self.log.last_index() {
                if self.log.hash(index) == Some(next) {
                    hash = next;
                    verified = index;
                    continue;
                }
                if index <= self.log.base().index {
                    // Our acknowledged state differs: the leader decides
                    // from our status who yields.
                    let result = AppendResult::Mismatch(self.status());
                    self.send(from, ClusterMsg::Appended { view, result });
                    return;
                }
            }
            let entry = match LogEntry::decode(bytes.into_vec()) {
                Ok(e) => e,
                Err(e) => {
                    self.note_warn(format!(
                        "tracker {from} sent an entry {index} that does not decode: {e}"
                    ));
                    break;
                }
            };
            if index <= self.log.last_index() {
                // Only views lie between the last acknowledged change and
                // the applied index, so forgetting them is sound.
                if index <= self.log.applied() {
                    self.rewind = Some(self.rewind.map_or(index - 1, |r| r.min(index - 1)));
                }
                self.log.truncate(index);
                self.pending_truncate = Some(self.pending_truncate.map_or(index, |t| t.min(index)));
            }
            self.log.append(Arc::new(entry));
            hash = next;
            verified = index;
        }
        self.log.raise_commit(commit.min(verified));
        self.matched_leader = verified;
        let joined = self
            .log
            .last_view()
            .is_some_and(|(_, v)| v.id.leader == from && v.has(me));
        let role = if joined {
            Role::Follower { leader: from }
        } else {
            Role::Recovering { source: Some(from) }
        };
        if role != self.role {
            if joined {
                self.note_info(format!("following tracker {from}"));
            }
            self.role = role;
            self.leader_lost_ms = None;
        }
        self.owe_ack = Some((from, view));
    }

    pub(super) fn on_diverged(&mut self, from: u32, reason: String) {
        let from_source = match self.role {
            Role::Recovering { source } => source == Some(from),
            Role::Follower { leader } => leader == from,
            _ => false,
        };
        if from_source {
            self.notes.push(Note::Error(format!(
                "refusing to serve: {reason} (told by tracker {from})"
            )));
            self.role = Role::Refused(reason);
            self.broadcast_status();
        }
    }
}
