//! Every role's answer to another tracker's status: a leader yields to
//! a leader whose state wins or admits a tracker catching up with it; a
//! follower notices its leader left it out of the view; a recovering
//! tracker picks or drops the leader it catches up with.

use super::{Node, Role};
use crate::replication::log::LogRead;
use fileshare_protocol::messages::cluster::{MemberRole, Status};

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
}
