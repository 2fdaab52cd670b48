//! The leader's side of the core: leading a view, sending appends,
//! counting acknowledgements, changing the view as trackers go and come,
//! and meeting another leader.

use super::{key_of, Node, Note, Progress, Role};
use crate::replication::log::{LogEntry, LogRead};
use crate::state::records::Record;
use fileshare_protocol::messages::cluster::{
    AppendResult, ClusterMsg, MemberRole, Status, View, ViewId,
};
use serde_bytes::ByteBuf;
use std::sync::Arc;

impl Node {
    pub(super) fn become_leader(&mut self, members: Vec<u32>, storage: &dyn LogRead) {
        let me = self.cfg.me;
        let last_epoch = self.log.last_view().map_or(0, |(_, v)| v.id.epoch);
        let epoch = self.max_epoch.max(last_epoch).saturating_add(1);
        let view = self.new_view(epoch, members);
        let Some(index) = self.append_view(&view) else {
            return;
        };
        self.role = Role::Leader;
        self.leading_since = Some(view.id);
        self.acked = self.acked.max(self.log.applied());
        for (n, p) in self.peers.iter_mut() {
            p.progress = view.has(*n).then_some(Progress {
                matched: 0,
                applied: 0,
                next: index,
                sent_ms: 0,
                commit_sent: 0,
            });
        }
        // Where a member's log stands is known from its status: send it
        // what it lacks rather than probing.
        let members: Vec<u32> = view.members.iter().copied().filter(|&n| n != me).collect();
        for n in &members {
            if let Some(st) = self.peer_status(*n).cloned() {
                if let Some(next) = self.start_point(&st) {
                    if let Some(p) = self.peers.get_mut(n).and_then(|p| p.progress.as_mut()) {
                        p.next = next.min(index);
                    }
                }
            }
        }
        self.note_info(format!(
            "leading view {epoch} with trackers {:?}",
            view.members
        ));
        self.broadcast_status();
        for n in members {
            self.send_append(n, storage);
        }
    }

    pub(super) fn new_view(&mut self, epoch: u64, mut members: Vec<u32>) -> View {
        members.push(self.cfg.me);
        members.retain(|&n| n >= 1 && n <= self.cfg.size);
        members.sort_unstable();
        members.dedup();
        self.max_epoch = self.max_epoch.max(epoch);
        View {
            id: ViewId {
                epoch,
                leader: self.cfg.me,
            },
            members,
        }
    }

    pub(super) fn append_view(&mut self, view: &View) -> Option<u64> {
        match LogEntry::new(Record::View(view.clone())) {
            Ok(e) => Some(self.log.append(Arc::new(e))),
            Err(e) => {
                self.notes
                    .push(Note::Error(format!("cannot encode a view: {e}")));
                None
            }
        }
    }

    /// Where to start sending to a tracker whose log stands at `st`: after
    /// its last entry if we have it, else after its last acknowledged
    /// change (it drops what follows). `None`: we lack its acknowledged
    /// state.
    pub(super) fn start_point(&self, st: &Status) -> Option<u64> {
        if self.log.contains(&st.last) {
            Some(st.last.index + 1)
        } else if self.log.contains(&st.base) {
            Some(st.base.index + 1)
        } else {
            None
        }
    }

    pub(super) fn leader_tick(&mut self, storage: &dyn LogRead) {
        let me = self.cfg.me;
        let last = self.log.last_index();
        let view_durable = self
            .log
            .last_view()
            .is_some_and(|(i, _)| i <= self.log.persisted());
        if let (true, Some((_, view))) = (view_durable, self.log.last_view()) {
            let view = view.clone();
            let gone: Vec<u32> = view
                .members
                .iter()
                .copied()
                .filter(|&n| n != me)
                .filter(|&n| {
                    let p = self.peers.get(&n);
                    !self.up(n)
                        || p.is_some_and(|p| p.diverged_base.is_some() || p.progress.is_none())
                        || self.peer_status(n).is_some_and(|s| {
                            // A member that leads elsewhere is left to the
                            // two leaders' meeting (see `yields_to`).
                            matches!(s.role, MemberRole::Refused { .. })
                        })
                })
                .collect();
            let slack = self.cfg.max_append_entries as u64;
            let joining: Vec<u32> = self
                .peers
                .iter()
                .filter(|(n, p)| {
                    !view.has(**n)
                        && self.up(**n)
                        && p.progress
                            .as_ref()
                            .is_some_and(|g| g.matched > 0 && g.matched + slack >= last)
                        && p.status
                            .as_ref()
                            .is_some_and(|s| s.role == MemberRole::Recovering { source: Some(me) })
                })
                .map(|(n, _)| *n)
                .collect();
            if !gone.is_empty() || !joining.is_empty() {
                let members: Vec<u32> = view
                    .members
                    .iter()
                    .copied()
                    .filter(|n| !gone.contains(n))
                    .chain(joining.iter().copied())
                    .collect();
                let epoch = self.max_epoch.max(view.id.epoch).saturating_add(1);
                let next = self.new_view(epoch, members);
                for n in &gone {
                    if let Some(p) = self.peers.get_mut(n) {
                        p.progress = None;
                    }
                }
                if self.append_view(&next).is_some() {
                    self.note_info(format!(
                        "view {epoch}: trackers {:?} (down or gone: {gone:?}, joined: {joining:?})",
                        next.members
                    ));
                    for n in self.progress_peers() {
                        self.send_append(n, storage);
                    }
                    self.maybe_commit();
                }
            }
        }
        // Learners that went away stop being caught up.
        let lost: Vec<u32> = self
            .peers
            .iter()
            .filter(|(n, p)| {
                p.progress.is_some()
                    && !self.log.last_view().is_some_and(|(_, v)| v.has(**n))
                    && !self.up(**n)
            })
            .map(|(n, _)| *n)
            .collect();
        for n in lost {
            if let Some(p) = self.peers.get_mut(&n) {
                p.progress = None;
            }
        }
        // Appends, and commit news, that went unanswered are sent again.
        let last = self.log.last_index();
        let commit = self.log.commit();
        let due: Vec<u32> = self
            .peers
            .iter()
            .filter(|(n, p)| {
                self.up(**n)
                    && p.progress.as_ref().is_some_and(|g| {
                        (g.matched < last || g.applied < commit)
                            && self.now_ms.saturating_sub(g.sent_ms) >= self.cfg.retry_ms
                    })
            })
            .map(|(n, _)| *n)
            .collect();
        for n in due {
            if let Some(g) = self.peers.get_mut(&n).and_then(|p| p.progress.as_mut()) {
                g.next = g.matched + 1;
            }
            self.send_append(n, storage);
        }
    }

    pub(super) fn send_append(&mut self, to: u32, storage: &dyn LogRead) {
        let Some(view) = self.log.last_view().map(|(_, v)| v.id) else {
            return;
        };
        let last = self.log.last_index();
        let commit = self.log.commit();
        let (max_entries, max_bytes, max_unacked) = (
            self.cfg.max_append_entries,
            self.cfg.max_append_bytes,
            self.cfg.max_unacked,
        );
        let Some(p) = self.peers.get_mut(&to).and_then(|p| p.progress.as_mut()) else {
            return;
        };
        p.next = p.next.clamp(1, last + 1);
        let unacked = (p.next - 1).saturating_sub(p.matched);
        let entries = if p.next <= last && unacked < max_unacked {
            match self.log.bytes_from(p.next, max_entries, max_bytes, storage) {
                Ok(e) => e,
                Err(e) => {
                    self.notes.push(Note::Error(format!(
                        "cannot read the log to send it to tracker {to}: {e}"
                    )));
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let Some(prev) = self.log.point(p.next - 1) else {
            return;
        };
        p.next += entries.len() as u64;
        p.sent_ms = self.now_ms;
        p.commit_sent = commit;
        let msg = ClusterMsg::Append {
            view,
            prev,
            entries: entries.into_iter().map(ByteBuf::from).collect(),
            commit,
        };
        self.send(to, msg);
    }

    pub(super) fn on_appended(
        &mut self,
        from: u32,
        view: ViewId,
        result: AppendResult,
        st: &dyn LogRead,
    ) {
        let current = self.role == Role::Leader
            && view.leader == self.cfg.me
            && self.leading_since.is_some_and(|s| view.epoch >= s.epoch);
        if !current {
            return;
        }
        let last = self.log.last_index();
        match result {
            AppendResult::Ok { matched, applied } => {
                let Some(p) = self.peers.get_mut(&from).and_then(|p| p.progress.as_mut()) else {
                    return;
                };
                p.matched = p.matched.max(matched.min(last));
                p.applied = p.applied.max(applied.min(p.matched));
                if p.next <= p.matched {
                    p.next = p.matched + 1;
                }
                let more = p.next <= last;
                self.maybe_commit();
                if more {
                    self.send_append(from, st);
                }
            }
            AppendResult::Mismatch(status) => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.status = Some(status.clone());
                }
                if self.peers.get(&from).is_none_or(|p| p.progress.is_none()) {
                    return;
                }
                match self.start_point(&status) {
                    Some(next) => {
                        if let Some(p) = self.peers.get_mut(&from).and_then(|p| p.progress.as_mut())
                        {
                            p.next = next;
                            p.matched = p.matched.min(next - 1);
                            p.applied = p.applied.min(p.matched);
                        }
                        self.send_append(from, st);
                    }
                    None => self.diverged(from, &status),
                }
            }
            AppendResult::Rejected(status) => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.status = Some(status);
                }
            }
        }
    }

    /// Tracker `from`, at `st`, has acknowledged state our log lacks.
    pub(super) fn diverged(&mut self, from: u32, st: &Status) {
        if key_of(st, from) > self.my_key() {
            self.step_down(format!(
                "tracker {from} holds acknowledged changes this tracker lacks, in a newer view"
            ));
            return;
        }
        let reason = format!(
            "split brain: this tracker's acknowledged change {} is not in the log of tracker {} \
             (which keeps serving); both sides of a split cluster accepted changes, and this \
             side yields. Its data directory holds the changes only it has; to rejoin, stop \
             it, move that directory away and start it again",
            st.base.index, self.cfg.me
        );
        if self.peers.get(&from).and_then(|p| p.diverged_base) != Some(st.base) {
            self.note_warn(format!(
                "tracker {from} diverged (its acknowledged change {:?} is not in this log): \
                 told it to stop serving",
                st.base
            ));
        }
        if let Some(p) = self.peers.get_mut(&from) {
            p.diverged_base = Some(st.base);
            p.progress = None;
        }
        self.send(from, ClusterMsg::Diverged { reason });
    }

    pub(super) fn step_down(&mut self, why: String) {
        self.note_warn(format!("no longer leading: {why}"));
        self.role = Role::Recovering { source: None };
        self.leading_since = None;
        for p in self.peers.values_mut() {
            p.progress = None;
        }
        self.broadcast_status();
    }

    /// Two leaders met. The one that has acknowledged nothing the other
    /// lacks yields, so whichever side took writes keeps them; when both or
    /// neither did, the more recent committed view wins (see [`key_of`]).
    pub(super) fn yields_to(&self, other: u32, st: &Status) -> bool {
        let my_base = self.log.base();
        let they_hold_mine = st
            .holds
            .iter()
            .any(|(n, b)| *n == self.cfg.me && *b == my_base);
        let i_hold_theirs = self.log.contains(&st.base);
        match (they_hold_mine, i_hold_theirs) {
            (true, false) => true,
            (false, true) => false,
            _ => key_of(st, other) > self.my_key(),
        }
    }

    /// A tracker that follows us: start catching it up, or tell it it
    /// diverged. One we already track that says it is recovering has
    /// restarted: its disk still holds what it acknowledged, but it must
    /// hear from us to know it is back in the view.
    pub(super) fn admit(&mut self, from: u32, st: &Status, storage: &dyn LogRead) {
        let Some(peer) = self.peers.get(&from) else {
            return;
        };
        if peer.diverged_base == Some(st.base) {
            // Told before; it restarted since, or the word was lost.
            self.diverged(from, st);
            return;
        }
        let restarted = matches!(st.role, MemberRole::Recovering { .. });
        if peer.progress.is_some() && !restarted {
            return;
        }
        match self.start_point(st) {
            Some(next) => {
                if let Some(p) = self.peers.get_mut(&from) {
                    match p.progress.as_mut() {
                        Some(g) => {
                            g.next = next.max(g.matched + 1);
                            g.applied = g.applied.min(st.applied);
                        }
                        None => {
                            p.progress = Some(Progress {
                                matched: 0,
                                applied: 0,
                                next,
                                sent_ms: 0,
                                commit_sent: 0,
                            })
                        }
                    }
                }
                self.send_append(from, storage);
            }
            None => self.diverged(from, st),
        }
    }
}
