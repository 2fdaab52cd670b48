//! Finding peers for a swarm that needs pieces: one task per swarm, woken
//! by its readers and download jobs, asking the trackers at most every
//! [`DISCOVERY_INTERVAL`] and linking to the peers they name; when the file
//! is complete, it makes this user one more holder of it.

use crate::engine::Engine;
use crate::net::fetch;
use crate::pieces::swarm::Swarm;
use fileshare_protocol::messages::tracker::{PeerLocation, ShareFile};
use std::sync::Arc;
use std::time::Duration;

/// Peers one file is fetched from at most.
const MAX_LINKS: usize = 16;

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
            if due && swarm.needs_pieces() && swarm.links() < MAX_LINKS {
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

    /// Starts links to the located peers we are not linked to yet.
    pub(super) fn connect(&self, swarm: &Arc<Swarm>, peers: Vec<PeerLocation>) {
        let tasks = self.swarm_tasks(swarm);
        for p in peers {
            if p.peer == self.link_ctx.my_id
                || swarm.links() >= MAX_LINKS
                || !swarm.connect_started(p.peer)
            {
                continue;
            }
            tasks.spawn(
                "peer-link",
                fetch::run(swarm.clone(), self.link_ctx.clone(), p, tasks.clone()),
            );
        }
    }
}
