//! Every role's side of the core: statuses from the others, appends taken
//! from a leader, choosing whom to follow, and replacing a leader that is
//! gone.

use super::{key_of, Node, Note, Role};
use crate::replication::log::{chain, view_rank, LogEntry, LogRead};
use fileshare_protocol::messages::cluster::{
    AppendResult, ClusterMsg, LogPoint, MemberRole, Status, ViewId,
};
use serde_bytes::ByteBuf;
use std::sync::Arc;

impl Node {
    pub(super) fn on_status(&mut self, from: u32, st: Status, storage: &dyn LogRead) {
        let me = self.cfg.me;
        if let Some(v) = &st.view {
            self.max_epoch = self.max_epoch.max(v.id.epoch);
        }
        if let Some(p) = self.peers.get_mut(&from) {
            p.stopping = st.role == MemberRole::Stopping;
            if p.diverged_base.is_some_and(|b| b != st.base) {
                p.diverged_base = None;
            }
            p.status = Some(st.clone());
        }
        match self.role.clone() {
            Role::Leader => match &st.role {
                MemberRole::Leader => {
                    let theirs = st.view.as_ref().map(|v| v.id);
                    let mine = self.log.last_view().map(|(_, v)| v.id);
                    if theirs != mine && self.yields_to(from, &st) {
                        self.step_down(format!(
                            "tracker {from} also leads (a split cluster has healed), and its \
                             state wins"
                        ));
                    }
                }
                MemberRole::Recovering { source: Some(s) } if *s == me => {
                    self.admit(from, &st, storage)
                }
                MemberRole::Follower { leader } if *leader == me => self.admit(from, &st, storage),
                _ => {}
            },
            Role::Follower { leader } if from == leader => {
                let still =
                    st.role == MemberRole::Leader && st.view.as_ref().is_some_and(|v| v.has(me));
                if !still && st.role == MemberRole::Leader {
                    self.note_info(format!(
                        "tracker {leader} left this tracker out of its view; catching up again"
                    ));
                    self.role = Role::Recovering { source: None };
                    self.choose_source();
                }
            }
            Role::Recovering { source: None } if st.role == MemberRole::Leader => {
                self.choose_source();
            }
            Role::Recovering { source: Some(s) } if s == from && st.role != MemberRole::Leader => {
                self.role = Role::Recovering { source: None };
            }
            _ => {}
        }
    }

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

    /// Follows the up leader whose state wins, if any.
    pub(super) fn choose_source(&mut self) {
        let best = self
            .peers
            .iter()
            .filter(|(n, p)| {
                self.up(**n)
                    && p.status
                        .as_ref()
                        .is_some_and(|s| s.role == MemberRole::Leader)
            })
            .filter_map(|(n, p)| p.status.as_ref().map(|s| (key_of(s, *n), *n)))
            .max();
        if let Some((_, n)) = best {
            self.role = Role::Recovering { source: Some(n) };
            self.note_info(format!("catching up with tracker {n}"));
            let st = self.status();
            self.send(n, ClusterMsg::Status(st));
        }
    }

    /// Our leader is down or no longer leads. If another tracker leads,
    /// catch up with it; otherwise the surviving member of our view with
    /// the winning state leads a new view of the survivors.
    pub(super) fn take_over(&mut self, old: u32, storage: &dyn LogRead) {
        let me = self.cfg.me;
        let elsewhere = self.peers.iter().any(|(n, p)| {
            *n != old
                && self.up(*n)
                && p.status
                    .as_ref()
                    .is_some_and(|s| s.role == MemberRole::Leader)
        });
        if elsewhere {
            self.role = Role::Recovering { source: None };
            self.choose_source();
            return;
        }
        let Some((_, view)) = self.log.last_view() else {
            self.role = Role::Recovering { source: None };
            return;
        };
        let mut candidates = vec![(self.my_key(), me)];
        for &n in &view.members {
            if n == me || n == old || !self.up(n) {
                continue;
            }
            if let Some(st) = self.peer_status(n) {
                if st.role == (MemberRole::Follower { leader: old }) {
                    candidates.push((key_of(st, n), n));
                }
            }
        }
        let best = candidates.iter().max().map(|(_, n)| *n);
        if best == Some(me) {
            self.note_info(format!("tracker {old} is down; taking over"));
            let members = candidates.iter().map(|(_, n)| *n).collect();
            self.become_leader(members, storage);
        }
    }

    /// No leader reachable: once every tracker of every last view we know
    /// of is reachable, the one with the winning state leads (alone, then
    /// the others catch up with it). A fresh cluster starts so once all its
    /// trackers are up.
    pub(super) fn recover(&mut self, storage: &dyn LogRead) {
        let me = self.cfg.me;
        if let Role::Recovering { source: Some(s) } = self.role {
            let leading = self.up(s)
                && self
                    .peer_status(s)
                    .is_some_and(|st| st.role == MemberRole::Leader);
            if leading {
                return;
            }
            self.role = Role::Recovering { source: None };
        }
        self.choose_source();
        if self.role != (Role::Recovering { source: None }) {
            return;
        }
        let mut reachable = vec![me];
        let mut required: Vec<u32> = Vec::new();
        let mut best = (self.my_key(), me);
        let everyone: Vec<u32> = (1..=self.cfg.size).collect();
        let mine = self.status();
        let mut statuses = vec![(me, &mine)];
        for (n, p) in &self.peers {
            if let (true, Some(st)) = (self.up(*n), p.status.as_ref()) {
                statuses.push((*n, st));
            }
        }
        for (n, st) in statuses {
            if matches!(st.role, MemberRole::Follower { .. }) {
                // Still electing a successor among themselves.
                return;
            }
            if n != me {
                reachable.push(n);
            }
            match &st.view {
                Some(v) => required.extend(&v.members),
                None => required.extend(&everyone),
            }
            if !matches!(st.role, MemberRole::Refused { .. }) {
                best = best.max((key_of(st, n), n));
            }
        }
        let mut missing: Vec<u32> = required
            .into_iter()
            .filter(|n| !reachable.contains(n))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        self.waiting_for = missing;
        if self.waiting_for.is_empty() && best.1 == me {
            self.note_info(
                "every tracker of the last views is reachable and this one holds the latest state"
                    .into(),
            );
            self.become_leader(vec![me], storage);
        }
    }
}
