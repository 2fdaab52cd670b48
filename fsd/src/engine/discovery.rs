//! Finding peers for a swarm that needs pieces: one task per swarm, woken
//! by its readers and download jobs, asking the trackers at most every
//! [`DISCOVERY_INTERVAL`] and linking to the peers they name or that linked
//! peers told of (peer exchange), within the link budget
//! ([`fetch::LinkBudget`]): at the file's budget, with peers waiting for a
//! place, the link that gave nothing the longest is rotated out. When the
//! file is complete, it makes this user one more holder of it.

use crate::engine::Engine;
use crate::net::fetch;
use crate::pieces::swarm::peer_book::Origin;
use crate::pieces::swarm::rotation::ROTATE_IDLE;
use crate::pieces::swarm::Swarm;
use fileshare_protocol::messages::tracker::{PeerLocation, ShareFile};
use std::sync::Arc;
use std::time::Duration;

/// How often a swarm that needs pieces asks the tracker for more peers.
/// Other readers of the same file are listed once they hold a piece, and
/// every one of them found early adds upload to the swarm, so this is short.
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(250);

/// Discovery rounds with nothing wanted before the task ends (30 s).
const IDLE_ROUNDS: u32 = 120;

impl Engine {
    /// Starts the swarm's peer discovery if it is not running, and wakes it.
    pub(crate) fn ensure_discovery(self: &Arc<Self>, swarm: &Arc<Swarm>) {
        if !swarm.wake_discovery() {
            return;
        }
        let engine = self.clone();
        let tasks = self.swarm_tasks(swarm);
        let swarm = swarm.clone();
        tasks.spawn("discovery", async move {
            loop {
                engine.discover(&swarm).await;
                // A reader may have arrived while the task was ending.
                if !swarm.discovery_ended() {
                    return;
                }
            }
        });
    }

    /// Finds peers for a swarm while it needs pieces; when the file is
    /// complete, makes this user one more holder of it.
    async fn discover(self: &Arc<Self>, swarm: &Arc<Swarm>) {
        let file = swarm.file.clone();
        let mut idle_rounds = 0;
        let mut last_locate = None;
        loop {
            if swarm.is_complete() {
                // One more holder of the file as listed; never a share of
                // a name its sharer renamed or removed meanwhile.
                let listed = self.tracker.locate(&file.group, &file.meta.name).await;
                if !listed.is_ok_and(|(meta, _)| meta.id() == file.id) {
                    tracing::info!(file = %file.meta.name, "complete; no longer listed as it was, so not shared");
                    return;
                }
                let share = ShareFile {
                    session: self.tracker.session,
                    group: file.group.clone(),
                    meta: file.meta.clone(),
                };
                match self.tracker.client.call(share).await {
                    Ok(()) => tracing::info!(file = %file.meta.name, "complete; now shared"),
                    Err(e) => {
                        tracing::warn!(file = %file.meta.name, "complete, but cannot share it: {e:#}")
                    }
                }
                self.announce_now.notify_one();
                return;
            }
            if !swarm.needs_pieces() {
                // Nothing wanted for a while: stop asking the tracker; the
                // next read starts discovery again.
                idle_rounds += 1;
                if idle_rounds >= IDLE_ROUNDS {
                    return;
                }
            } else {
                idle_rounds = 0;
            }
            // Every read wakes this loop; ask the tracker at most once per
            // interval unless there is no peer at all.
            let due = last_locate.is_none_or(|t: tokio::time::Instant| {
                t.elapsed() >= DISCOVERY_INTERVAL || swarm.links() == 0
            });
            let budget = self.link_ctx.budget.per_file;
            if swarm.needs_pieces() {
                self.link_heard(swarm);
            }
            if due && swarm.needs_pieces() && swarm.links() < budget {
                last_locate = Some(tokio::time::Instant::now());
                match self.tracker.locate(&file.group, &file.meta.name).await {
                    Ok((meta, peers)) if meta.id() == file.id => self.connect(swarm, peers),
                    Ok(_) => {
                        tracing::warn!(file = %file.meta.name, "the tracker now lists other content under this name")
                    }
                    Err(e) => tracing::debug!(file = %file.meta.name, "locate failed: {e:#}"),
                }
            }
            // The task ends with the swarm's token.
            tokio::select! {
                () = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
                () = swarm.discovery_woken() => {}
            }
        }
    }

    /// Starts links to the located peers we are not linked to yet; those
    /// there is no room for wait in the peer book.
    pub(super) fn connect(&self, swarm: &Arc<Swarm>, peers: Vec<PeerLocation>) {
        let mut waiting = Vec::new();
        for p in peers {
            if let Some(p) = self.link(swarm, p, Origin::Tracker) {
                waiting.push(p);
            }
        }
        swarm.peers.wait(waiting, Origin::Tracker);
    }

    /// Links to peers heard of while there is room; at the file's budget,
    /// with peers waiting, rotates out the link that gave nothing longest.
    fn link_heard(&self, swarm: &Arc<Swarm>) {
        let budget = self.link_ctx.budget.per_file;
        let links = swarm.links();
        if links >= budget {
            if swarm.peers.has_candidates() {
                if let Some(peer) = swarm.rotate_out(ROTATE_IDLE) {
                    swarm.peers.rotated(peer);
                }
            }
            return;
        }
        for (p, origin) in swarm.peers.take_candidates(budget - links) {
            if let Some(p) = self.link(swarm, p, origin) {
                swarm.peers.wait(vec![p], origin);
            }
        }
    }

    /// Starts a link to `p` if it is not this daemon, not linked, banned or
    /// rotated out lately, and the budgets have room; gives `p` back if
    /// only room was missing.
    fn link(&self, swarm: &Arc<Swarm>, p: PeerLocation, origin: Origin) -> Option<PeerLocation> {
        let ctx = &self.link_ctx;
        if p.peer == ctx.my_id || swarm.peers.cooling(&p.peer) {
            return None;
        }
        if swarm.links() >= ctx.budget.per_file {
            return Some(p);
        }
        let Some(place) = ctx.budget.take() else {
            return Some(p);
        };
        if !swarm.connect_started(p.peer) {
            return None;
        }
        let tasks = self.swarm_tasks(swarm);
        let run = fetch::run(swarm.clone(), ctx.clone(), p, origin, place, tasks.clone());
        tasks.spawn("peer-link", run);
        None
    }
}
