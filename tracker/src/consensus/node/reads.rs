//! When this tracker serves a request.
//!
//! - After a start or a cut: once it has applied what its leader had
//!   applied when they (re)gained touch, and, one of a pair, once its
//!   partner said it keeps nothing aside.
//! - At every request: once it has applied every write committed before
//!   the request came. A write is acknowledged once a majority has it and
//!   the leader and the tracker the client sent it to have applied it, and
//!   any tracker may serve it once committed, so a tracker asks the leader
//!   how far committed writes go ([`ClusterMsg::ReadMark`]; the leader
//!   confirms it still leads with a round of heartbeats) and waits until it
//!   applied that far: a read through any tracker sees every write
//!   acknowledged, or seen by another read, before it began. The requests
//!   that come while an ask is on its way wait for the next one, so one ask
//!   serves many; the leader's own reads ask its Raft the same.

use super::{Node, WAIT_FOR_LEADER};
use crate::consensus::{NodeId, Raft};
use fileshare_protocol::messages::ClusterMsg;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a request waits for the leader's mark, or to apply up to it,
/// before it looks at the cluster again (the leader may have changed).
const MARK_TIMEOUT: Duration = Duration::from_millis(500);

/// This tracker's asks for a read mark: one on its way at a time.
#[derive(Default)]
pub(super) struct Marks(Mutex<Asks>);

#[derive(Default)]
struct Asks {
    last_id: u64,
    /// The ask on its way: its id, when it was sent and the requests
    /// waiting for its answer.
    sent: Option<(u64, Instant, Vec<oneshot::Sender<u64>>)>,
    /// Requests that came after it was sent: they wait for the next one.
    queued: Vec<oneshot::Sender<u64>>,
}

impl Asks {
    /// Sends the queued requests' ask: its id.
    fn send_queued(&mut self) -> u64 {
        self.last_id += 1;
        let waiting = std::mem::take(&mut self.queued);
        self.sent = Some((self.last_id, Instant::now(), waiting));
        self.last_id
    }
}

/// How far a read must wait, as the leader sees it: every entry committed
/// (at least its term's first), confirmed with a majority. Not what the
/// leader applied: a follower may apply a committed entry, and serve it,
/// before the leader's own state has it, and a read that began after that
/// one ended must see it too.
async fn read_mark(raft: &Raft) -> Option<u64> {
    let (read, _) = raft.get_read_log_id().await.ok()?;
    Some(read.map_or(0, |l| l.index))
}

impl Node {
    /// Whether reads are served, or why not.
    pub fn readable(&self) -> Result<(), String> {
        self.readiness().map_err(|(why, _)| why)
    }

    /// Waits, for a moment at most, while this tracker is about to serve
    /// (a leader being chosen, writes kept aside going through the log,
    /// catching up), then until it has applied every write acknowledged
    /// before the call: the client would only come back. Refuses at once
    /// when it waits for a tracker out of reach.
    pub async fn ready(&self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let why = match self.readiness() {
                Ok(()) => match self.applied_acknowledged().await {
                    Ok(()) => return Ok(()),
                    Err(why) => (why, true),
                },
                Err(why) => why,
            };
            match why {
                (why, false) => return Err(why),
                (why, true) if start.elapsed() >= WAIT_FOR_LEADER => return Err(why),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Whether reads are served, or why not and whether that is about to
    /// change.
    fn readiness(&self) -> Result<(), (String, bool)> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(("the tracker is shutting down".into(), false));
        }
        if let Some(aside) = &self.aside {
            if aside.alone() {
                return Ok(());
            }
            let pending = aside.pending();
            if pending > 0 {
                return Err((
                    format!("putting {pending} write(s) acknowledged while alone through the log"),
                    true,
                ));
            }
        }
        if self.size == 2 {
            // Its partner's writes kept aside are not here yet.
            match self.partner_pending() {
                Some(0) => {}
                Some(waiting) => {
                    return Err((
                        format!(
                            "waiting for the other tracker to put {waiting} write(s) it \
                             acknowledged alone through the log"
                        ),
                        true,
                    ))
                }
                None => {
                    return Err((
                        "waiting for the other tracker to say how far it is".into(),
                        true,
                    ))
                }
            }
        }
        if let Some(why) = self.lagging() {
            return Err((why, true));
        }
        if self.caught_up.load(Ordering::Relaxed) {
            return Ok(());
        }
        let missing: Vec<String> = self
            .others()
            .filter(|i| !self.wire.in_touch(*i))
            .map(|i| i.to_string())
            .collect();
        if missing.is_empty() {
            Err(("catching up with the cluster".into(), true))
        } else {
            Err((
                format!(
                    "waiting for tracker(s) {} (one may hold changes this one lacks)",
                    missing.join(", ")
                ),
                false,
            ))
        }
    }

    /// Why reads wait for the leader this tracker follows, if they do:
    /// after a start or after being out of touch, until it applied what
    /// the leader said it had applied on contact.
    fn lagging(&self) -> Option<String> {
        let (leader, applied) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.last_applied.map_or(0, |l| l.index))
        };
        let l = leader.filter(|l| *l != self.me && self.wire.in_touch(*l))?;
        match self.applied_by.lock().get(&l) {
            None => Some(format!(
                "waiting for tracker {l}, which leads, to say how far it is"
            )),
            Some(h) if applied < h.first => Some(format!(
                "catching up with tracker {l}: applied entry {applied} of {}",
                h.first
            )),
            Some(_) => None,
        }
    }

    /// Waits until this tracker applied every write acknowledged before
    /// the call, or says what it waits for. A tracker alone in its file,
    /// serving alone, or cut off from the majority serves what it has.
    async fn applied_acknowledged(&self) -> Result<(), String> {
        if self.size == 1 || self.aside.as_ref().is_some_and(|a| a.alone()) {
            return Ok(());
        }
        let leader = self.usable_leader(&self.raft.metrics().borrow());
        let mark = match leader {
            Some(l) if l == self.me => read_mark(&self.raft)
                .await
                .ok_or_else(|| "confirming that this tracker still leads".to_string())?,
            Some(l) => self.mark_from(l).await.ok_or_else(|| {
                format!("waiting for tracker {l}, which leads, to say how far writes go")
            })?,
            // A leader is being chosen: a write may have been acknowledged
            // that this tracker has not applied yet.
            None if self.size >= 3 && self.reached() >= self.majority() => {
                return Err("waiting for the trackers to choose a leader".into())
            }
            None => return Ok(()),
        };
        self.applied_up_to(mark).await
    }

    /// Waits until this tracker applied entry `index`, for a moment.
    pub(super) async fn applied_up_to(&self, index: u64) -> Result<(), String> {
        let applied = || (self.raft.metrics().borrow().last_applied).map_or(0, |l| l.index);
        if applied() >= index {
            return Ok(());
        }
        let waited = self
            .raft
            .wait(Some(MARK_TIMEOUT))
            .applied_index_at_least(Some(index), "a read")
            .await;
        match waited {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "catching up with the cluster: applied entry {} of {index}",
                applied()
            )),
        }
    }

    /// The leader `l`'s read mark, asked for this request and every other
    /// one that came before the ask went; `None` if it did not answer in
    /// time.
    async fn mark_from(&self, l: NodeId) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        let ask = {
            let mut asks = self.marks.0.lock();
            asks.queued.push(tx);
            match &asks.sent {
                Some((_, at, _)) if at.elapsed() < MARK_TIMEOUT => None,
                // None on its way, or given up on: its requests ask again.
                _ => Some(asks.send_queued()),
            }
        };
        if let Some(id) = ask {
            self.wire.send(l, ClusterMsg::ReadMark { id });
        }
        tokio::time::timeout(MARK_TIMEOUT * 2, rx)
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Answers tracker `from`'s ask `id`, if this tracker leads (on a task
    /// of its own: the mark takes a round of heartbeats).
    pub(super) fn tell_mark(&self, from: NodeId, id: u64) {
        if !self.raft.metrics().borrow().state.is_leader() {
            return;
        }
        let (raft, wire) = (self.raft.clone(), self.wire.clone());
        self.tasks.spawn(async move {
            if let Some(index) = read_mark(&raft).await {
                wire.send(from, ClusterMsg::ReadMarkIs { id, index });
            }
        });
    }

    /// Tracker `from`'s answer to ask `id`: the requests waiting for it
    /// go on; those that came since ask again.
    pub(super) fn mark_told(&self, from: NodeId, id: u64, index: u64) {
        let next = {
            let mut asks = self.marks.0.lock();
            if asks.sent.as_ref().is_none_or(|(sent, _, _)| *sent != id) {
                return;
            }
            if let Some((_, _, waiting)) = asks.sent.take() {
                for w in waiting {
                    let _ = w.send(index);
                }
            }
            (!asks.queued.is_empty()).then(|| asks.send_queued())
        };
        if let Some(id) = next {
            self.wire.send(from, ClusterMsg::ReadMark { id });
        }
    }
}
