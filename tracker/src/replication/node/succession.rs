//! Who leads when that is open: choosing the leader to catch up with,
//! taking over from a leader that is gone, and starting again once every
//! tracker of the last views is back.

use super::{key_of, Node, Role};
use crate::replication::log::LogRead;
use fileshare_protocol::messages::cluster::{ClusterMsg, MemberRole};

impl Node {
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
