//! One tracker's part in the cluster: the engine, started over the redb
//! file, and what request handlers ask of it.
//!
//! - A write ([`Node::submit`]) is proposed by the leader; a follower
//!   forwards it to the leader ([`ClusterMsg::Forward`]). The leader
//!   answers once a majority has it and it has applied it; a follower
//!   relays the answer once it has applied it too.
//! - With three or more trackers a write needs a majority; a tracker that
//!   reaches fewer refuses writes at once, saying how many it reaches and
//!   how many a write needs, and keeps answering reads.
//! - A tracker of two that lost its partner serves alone ([`super::aside`]).
//! - When requests are served ([`reads`]): after a start or a cut, once
//!   this tracker caught up with the leader; at every request, once it
//!   applied every write acknowledged before the request came.

use crate::auth;
use crate::consensus::aside::Aside;
use crate::consensus::batch::{Batcher, Proposed};
use crate::consensus::log_store::LogStore;
use crate::consensus::network::{serve, Network, Rpc};
use crate::consensus::state_machine::StateMachine;
use crate::consensus::transport::Transport;
use crate::consensus::wire::{TrackerWire, IN_TOUCH};
use crate::consensus::{config, Command, NodeId, Raft};
use crate::error::TrackerError;
use crate::state::change::Change;
use crate::state::State;
use fileshare_protocol::codec;
use fileshare_protocol::messages::ClusterMsg;
use fileshare_protocol::ErrorCode;
use openraft::{BasicNode, RaftMetrics};
use parking_lot::{Mutex, RwLock};
use redb::Database;
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod reads;

/// How long a write waits for a leader before it is refused.
const WAIT_FOR_LEADER: Duration = Duration::from_secs(3);

/// How long a forwarded write may go unanswered.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);

/// How long a follower waits to apply a write the leader answered before
/// it relays the answer anyway (a read through it waits for it then).
const WAIT_FOR_APPLIED: Duration = Duration::from_secs(1);

/// A tracker of two serves alone once its partner was silent this long.
const ALONE_AFTER: Duration = Duration::from_millis(1500);

/// How often the background task looks at the cluster.
const LOOK: Duration = Duration::from_millis(50);

/// Shortest time between two reports of how far this tracker applied.
const REPORT_EVERY: Duration = Duration::from_millis(50);

/// The forwarder's cue that a write was not proposed (the tracker it went
/// to does not lead): it is safe to send it again.
const NOT_LEADING: &str = "not leading: ";

/// A write's answer from the leader and the log index it was applied at
/// (0 if it was not).
type Led = (Result<(), ErrorCode>, u64);

/// What another tracker said of itself since it was last in touch.
#[derive(Clone, Copy)]
struct Heard {
    /// The index it had applied when touch was gained: what this tracker
    /// applies before it serves reads, if that tracker leads.
    first: u64,
    /// The latest index it said it applied.
    index: u64,
    /// Writes it acknowledged alone and has not put through the log.
    pending: u64,
}

pub struct Node {
    me: NodeId,
    size: u64,
    raft: Raft,
    batcher: Batcher,
    wire: Arc<TrackerWire>,
    state: Arc<RwLock<State>>,
    /// Trackers of two only.
    aside: Option<Arc<Aside>>,
    /// Writes forwarded to the leader: their answers and the index the
    /// leader applied them at.
    forwards: Mutex<HashMap<u64, oneshot::Sender<Led>>>,
    next_forward: AtomicU64,
    /// What each other tracker in touch said since touch was (re)gained;
    /// a tracker out of touch has no entry.
    applied_by: Mutex<BTreeMap<NodeId, Heard>>,
    marks: reads::Marks,
    /// Caught up with a leader since start: reads are served.
    caught_up: AtomicBool,
    /// When a majority (or, in a pair, the partner) was last in touch.
    in_touch_since: Mutex<Instant>,
    stopping: AtomicBool,
    /// A task puts the writes kept aside through the log.
    merging: AtomicBool,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Node {
    /// Starts tracker `me` of `size` over `db`, applying into `state`.
    pub async fn start(
        me: u32,
        size: u32,
        db: Arc<Database>,
        state: Arc<RwLock<State>>,
        transport: Arc<Transport>,
    ) -> Result<Arc<Node>, TrackerError> {
        let (me, size) = (NodeId::from(me), u64::from(size.max(1)));
        let aside = if size == 2 {
            Some(Arc::new(Aside::open(db.clone())?))
        } else {
            None
        };
        let log = LogStore::open(db.clone()).map_err(engine)?;
        let sm = StateMachine::open(db, state.clone(), aside.clone()).map_err(engine)?;
        let fresh = sm.last_applied().is_none() && log.is_empty().map_err(engine)?;
        let cfg = config("fileshare-trackers").map_err(engine)?;
        let wire = TrackerWire::new(transport);
        let raft = Raft::new(me, Arc::new(cfg), Network::new(wire.clone()), log, sm)
            .await
            .map_err(engine)?;
        if fresh {
            let members: BTreeMap<NodeId, BasicNode> =
                (1..=size).map(|i| (i, BasicNode::default())).collect();
            // Every tracker of a new cluster does this with the same
            // members, which the engine allows.
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!("cluster already initialized: {e}");
            }
        }
        let cancel = CancellationToken::new();
        let node = Arc::new(Node {
            me,
            size,
            batcher: Batcher::start(raft.clone(), cancel.clone()),
            raft,
            wire,
            state,
            aside,
            forwards: Mutex::new(HashMap::new()),
            next_forward: AtomicU64::new(1),
            applied_by: Mutex::new(BTreeMap::new()),
            marks: reads::Marks::default(),
            caught_up: AtomicBool::new(false),
            in_touch_since: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
            merging: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            cancel,
        });
        {
            let n = node.clone();
            node.tasks.spawn(async move { n.watch().await });
            let n = node.clone();
            node.tasks.spawn(async move { n.report_applied().await });
        }
        if size == 1 {
            // Alone in its trackers file, it serves its whole state at once.
            let start = Instant::now();
            while !node.caught_up.load(Ordering::Relaxed) && start.elapsed() < WAIT_FOR_LEADER {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(node)
    }

    fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        (1..=self.size).filter(move |i| *i != self.me)
    }

    /// Trackers this one reaches, itself included.
    fn reached(&self) -> u64 {
        1 + self.others().filter(|i| self.wire.in_touch(*i)).count() as u64
    }

    fn majority(&self) -> u64 {
        self.size / 2 + 1
    }

    /// The leader, if it can commit: this tracker while it reaches a
    /// majority, or another one in touch.
    fn usable_leader(&self, m: &RaftMetrics<NodeId, BasicNode>) -> Option<NodeId> {
        match m.current_leader {
            Some(l) if l == self.me => {
                (m.state.is_leader() && self.reached() >= self.majority()).then_some(l)
            }
            Some(l) => self.wire.in_touch(l).then_some(l),
            None => None,
        }
    }

    /// Follows the engine and the other trackers: reports what is applied,
    /// notes catching up, starts and ends serving alone, proposes what was
    /// kept aside, and proposes the ticket key once.
    async fn watch(self: Arc<Self>) {
        let mut leader_seen: Option<NodeId> = None;
        let mut init_term = None;
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(LOOK) => {}
            }
            let m = self.metrics();
            let applied = m.last_applied.map_or(0, |l| l.index);
            // Said again now and then, so a tracker that just came back
            // learns how far the others are (`report` says it at once).
            ticks += 1;
            if ticks.is_multiple_of(10) {
                self.report(applied);
            }
            let leader = self.usable_leader(&m);
            if leader != leader_seen {
                match leader {
                    Some(l) if l == self.me => tracing::info!("leading the cluster"),
                    Some(l) => tracing::info!("following tracker {l}"),
                    None => tracing::info!("no leader in reach"),
                }
                leader_seen = leader;
            }
            self.forget_out_of_touch();
            self.note_caught_up(leader, &m);
            if self.reached() >= self.majority() || (self.size == 2 && self.reached() == 2) {
                *self.in_touch_since.lock() = Instant::now();
            }
            if m.state.is_leader()
                && init_term != Some(m.current_term)
                && self.state.read().ticket_seed().is_none()
            {
                init_term = Some(m.current_term);
                match auth::random::<32>() {
                    Ok(ticket_seed) => {
                        let raft = self.raft.clone();
                        self.tasks.spawn(async move {
                            let _ = raft.client_write(Command::Init { ticket_seed }).await;
                        });
                    }
                    Err(e) => tracing::error!("cannot make the ticket key: {e}"),
                }
            }
            let Some(aside) = self.aside.clone() else {
                continue;
            };
            if aside.alone() && self.reached() == 2 {
                // The partner is back: what was kept aside goes through the
                // log; until then readers wait for it.
                aside.leave(&mut self.state.write());
            }
            let partner_silent = self.in_touch_since.lock().elapsed() > ALONE_AFTER;
            if leader.is_none()
                && partner_silent
                && !aside.alone()
                && (self.caught_up.load(Ordering::Relaxed) || aside.pending() > 0)
            {
                let mut state = self.state.write();
                match aside.enter(&mut state) {
                    Ok(()) => tracing::warn!(
                        "the other tracker is out of reach: serving alone; writes are kept \
                         aside and go through the log once it is back"
                    ),
                    Err(e) => tracing::error!("cannot serve alone: {e}"),
                }
            }
            if leader.is_some()
                && !aside.alone()
                && aside.pending() > 0
                && !self.merging.swap(true, Ordering::Relaxed)
            {
                let n = self.clone();
                self.tasks.spawn(async move {
                    n.merge(&aside).await;
                    n.merging.store(false, Ordering::Relaxed);
                });
            }
        }
    }

    /// What another tracker said is forgotten once it is out of touch:
    /// when it is back, its word then counts, not an old one.
    fn forget_out_of_touch(&self) {
        let mut by = self.applied_by.lock();
        by.retain(|o, _| self.wire.in_touch(*o));
    }

    /// Whether the others in touch that may hold writes this tracker lacks
    /// have said they hold none: a partner's word that it kept nothing
    /// aside, which it gives on contact.
    fn partner_pending(&self) -> Option<u64> {
        let by = self.applied_by.lock();
        let mut sum = 0;
        for o in self.others().filter(|o| self.wire.in_touch(*o)) {
            sum += by.get(&o)?.pending;
        }
        Some(sum)
    }

    /// Notes the first time since start that this tracker has applied
    /// what its leader had applied when they gained touch (leading: its
    /// whole log) and, one of a pair, has its partner's word that nothing
    /// is kept aside: from then on it may serve alone.
    fn note_caught_up(&self, leader: Option<NodeId>, m: &RaftMetrics<NodeId, BasicNode>) {
        if self.caught_up.load(Ordering::Relaxed) {
            return;
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        let caught_up = match leader {
            None => false,
            Some(l) if l == self.me => applied >= m.last_log_index.unwrap_or(0),
            Some(l) => {
                let by = self.applied_by.lock();
                by.get(&l).is_some_and(|h| applied >= h.first)
            }
        };
        if caught_up
            && (self.size != 2 || self.partner_pending() == Some(0))
            && !self.caught_up.swap(true, Ordering::Relaxed)
        {
            tracing::info!("caught up with the cluster at entry {applied}");
        }
    }

    /// Tells the others how far this tracker applied the log.
    fn report(&self, applied: u64) {
        for o in self.others().collect::<Vec<_>>() {
            self.report_to(o, applied);
        }
    }

    fn report_to(&self, o: NodeId, applied: u64) {
        let pending = self.aside.as_ref().map_or(0, |a| a.pending() as u64);
        self.wire.send(
            o,
            ClusterMsg::Applied {
                index: applied,
                pending,
            },
        );
    }

    /// Reports advances of the applied index, at most every
    /// [`REPORT_EVERY`]: a tracker back in touch learns soon where this
    /// one stands, without a message to every other tracker per entry
    /// (only a pair's count kept aside and where a tracker back in touch
    /// stands are read from it).
    async fn report_applied(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let mut reported = 0;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
            let applied = metrics.borrow().last_applied.map_or(0, |l| l.index);
            if applied != reported {
                reported = applied;
                self.report(applied);
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = tokio::time::sleep(REPORT_EVERY) => {}
                }
            }
        }
    }

    /// Proposes every change kept aside, oldest first, each decided again.
    async fn merge(&self, aside: &Aside) {
        while let Some((key, change)) = aside.first() {
            match self.propose(Command::Aside(Box::new(change.clone()))).await {
                Err(ErrorCode::Unavailable(why)) => {
                    tracing::info!("changes acknowledged alone wait: {why}");
                    return;
                }
                Err(code) => tracing::warn!(
                    "a change acknowledged while the trackers were apart conflicts with one \
                     made on the other side, which reached the log first and stands: \
                     {change:?} is dropped: {code}"
                ),
                Ok(()) => {}
            }
            if let Err(e) = aside.done(key) {
                tracing::error!("cannot clear a change kept aside: {e}");
                return;
            }
            // The partner's readers wait for this count to reach zero.
            let applied = (self.raft.metrics().borrow().last_applied).map_or(0, |l| l.index);
            self.report(applied);
        }
    }

    /// How long since a majority was in touch (for a pair: since the
    /// partner was, unless it serves alone).
    pub fn out_of_touch(&self) -> Duration {
        if self.aside.as_ref().is_some_and(|a| a.alone()) {
            return Duration::ZERO;
        }
        self.in_touch_since.lock().elapsed()
    }

    fn quorum_refusal(&self) -> ErrorCode {
        ErrorCode::Unavailable(format!(
            "this tracker reaches {} of {} trackers; writes need {}",
            self.reached(),
            self.size,
            self.majority()
        ))
    }

    /// Returns once `change` is acknowledged (a majority has it, the leader
    /// and this tracker applied it), or refused. `once`: the client's id and the write's sequence number,
    /// if the client sent them; the write then takes effect once however
    /// often it comes.
    pub async fn submit(&self, change: Change, once: Option<(u64, u64)>) -> Result<(), ErrorCode> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(ErrorCode::Unavailable(
                "the tracker is shutting down".into(),
            ));
        }
        let command = Command::of(change, once);
        if let Some(r) = self.write_alone(&command) {
            return r;
        }
        self.propose(command).await
    }

    /// A tracker of two serving alone takes the write itself.
    fn write_alone(&self, command: &Command) -> Option<Result<(), ErrorCode>> {
        let aside = self.aside.as_ref().filter(|a| a.alone())?;
        let mut state = self.state.write();
        aside.write(&mut state, command.clone())
    }

    /// Through the log: by the leader, or forwarded to it.
    async fn propose(&self, change: Command) -> Result<(), ErrorCode> {
        // A tracker of two may need the time to find its partner gone and
        // serve alone.
        let wait = if self.size == 2 {
            WAIT_FOR_LEADER + ALONE_AFTER + IN_TOUCH
        } else {
            WAIT_FOR_LEADER
        };
        let deadline = Instant::now() + wait;
        loop {
            if self.size >= 3 && self.reached() < self.majority() {
                return Err(self.quorum_refusal());
            }
            if let Some(r) = self.write_alone(&change) {
                return r;
            }
            let leader = self.usable_leader(&self.raft.metrics().borrow());
            match leader {
                Some(l) if l == self.me => match self.lead(change.clone()).await.0 {
                    Err(ErrorCode::Unavailable(why)) if why.starts_with(NOT_LEADING) => {}
                    other => return other,
                },
                Some(l) => match self.forward(l, &change).await {
                    Err(ErrorCode::Unavailable(why)) if why.starts_with(NOT_LEADING) => {}
                    other => return other,
                },
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(if self.size >= 3 {
                    self.quorum_refusal()
                } else {
                    ErrorCode::Unavailable("no tracker that orders changes is reachable".into())
                });
            }
            tokio::time::sleep(LOOK).await;
        }
    }

    /// As the leader: proposes (with other writes queued meanwhile); the
    /// answer once a majority has it and this tracker applied it, with the
    /// index it was applied at (0 if it was not).
    async fn lead(&self, command: Command) -> Led {
        let repeatable = repeatable(&command);
        let write = tokio::select! {
            r = self.batcher.propose(command) => Ok(r),
            () = self.quorum_lost() => Err(()),
        };
        let refused = |e| (Err(e), 0);
        match write {
            // Sent again, it is answered as the first time.
            Err(()) if repeatable => refused(ErrorCode::Unavailable(format!(
                "{NOT_LEADING}{}: the trackers it needs are out of reach",
                self.me
            ))),
            Err(()) => refused(ErrorCode::Internal(
                "the trackers needed to commit the change went out of reach; it may or may \
                 not take effect"
                    .into(),
            )),
            Ok(Proposed::Applied { index, answer }) => (answer, index),
            Ok(Proposed::NotLeader) => {
                refused(ErrorCode::Unavailable(format!("{NOT_LEADING}{}", self.me)))
            }
            Ok(Proposed::Failed(e)) => refused(ErrorCode::Unavailable(format!(
                "the change was not saved: {e}"
            ))),
        }
    }

    /// Returns once this tracker has reached fewer trackers than a write
    /// needs for a moment: a write it leads will not commit soon.
    async fn quorum_lost(&self) {
        let mut since: Option<Instant> = None;
        loop {
            tokio::time::sleep(LOOK).await;
            if self.reached() >= self.majority() {
                since = None;
            } else if since.get_or_insert_with(Instant::now).elapsed() > IN_TOUCH {
                return;
            }
        }
    }

    /// As a follower: sends the change to leader `to` and waits for its
    /// answer.
    async fn forward(&self, to: NodeId, command: &Command) -> Result<(), ErrorCode> {
        let body = codec::encode(command).map_err(|e| {
            ErrorCode::BadRequest(format!("the change is too large to replicate: {e}"))
        })?;
        let id = self.next_forward.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.forwards.lock().insert(id, tx);
        let msg = ClusterMsg::Forward {
            id,
            change: ByteBuf::from(body),
        };
        if !self.wire.send(to, msg) {
            self.forwards.lock().remove(&id);
            return Err(ErrorCode::Unavailable(format!("{NOT_LEADING}{to} is away")));
        }
        let answer = tokio::select! {
            r = tokio::time::timeout(FORWARD_TIMEOUT, rx) => r.ok().and_then(Result::ok),
            () = self.gone(to) => None,
        };
        self.forwards.lock().remove(&id);
        match answer {
            Some((r, index)) => {
                // Applied here too, a read through this tracker need not
                // wait for it.
                let deadline = Instant::now() + WAIT_FOR_APPLIED;
                while index > 0 && self.applied_up_to(index).await.is_err() {
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                r
            }
            // Sent again, it has the effect of sending it once.
            None if repeatable(command) => Err(ErrorCode::Unavailable(format!(
                "{NOT_LEADING}{to} did not answer"
            ))),
            None => Err(ErrorCode::Internal(format!(
                "tracker {to}, which orders changes, did not answer; the change may or may \
                 not have taken effect"
            ))),
        }
    }

    /// Returns once tracker `to` is out of touch.
    async fn gone(&self, to: NodeId) {
        while self.wire.in_touch(to) {
            tokio::time::sleep(LOOK).await;
        }
    }

    /// A message from tracker `from`, other than gossip.
    pub fn deliver(self: &Arc<Self>, from: u32, msg: ClusterMsg) {
        let from = NodeId::from(from);
        if self.wire.heard(from) {
            // First word since touch was lost: what it said before no
            // longer counts, and it hears at once how far this one is.
            self.applied_by.lock().remove(&from);
            let applied = (self.raft.metrics().borrow().last_applied).map_or(0, |l| l.index);
            self.report_to(from, applied);
        }
        match msg {
            ClusterMsg::Raft { id, body } => {
                let n = self.clone();
                self.tasks.spawn(async move {
                    let rpc: Rpc = match codec::decode(&body) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(tracker = from, "an engine call does not decode: {e}");
                            return;
                        }
                    };
                    let reply = serve(&n.raft, rpc).await;
                    match codec::encode(&reply) {
                        Ok(b) => {
                            n.wire.send(
                                from,
                                ClusterMsg::RaftReply {
                                    id,
                                    body: ByteBuf::from(b),
                                },
                            );
                        }
                        Err(e) => tracing::warn!("an engine answer does not encode: {e}"),
                    }
                });
            }
            ClusterMsg::RaftReply { id, body } => self.wire.answered(id, &body),
            ClusterMsg::Applied { index, pending } => {
                let mut by = self.applied_by.lock();
                let e = by.entry(from).or_insert(Heard {
                    first: index,
                    index,
                    pending,
                });
                e.index = e.index.max(index);
                e.pending = pending;
                drop(by);
            }
            ClusterMsg::Forward { id, change } => {
                let n = self.clone();
                self.tasks.spawn(async move {
                    let result = match codec::decode::<Command>(&change) {
                        Ok(c @ (Command::Change(_) | Command::Once { .. } | Command::Aside(_))) => {
                            let leading = n.raft.metrics().borrow().state.is_leader();
                            if leading {
                                n.lead(c).await
                            } else {
                                (
                                    Err(ErrorCode::Unavailable(format!("{NOT_LEADING}{}", n.me))),
                                    0,
                                )
                            }
                        }
                        Ok(Command::Init { .. } | Command::Batch(_)) => (
                            Err(ErrorCode::BadRequest("not a client's change".into())),
                            0,
                        ),
                        Err(e) => (
                            Err(ErrorCode::BadRequest(format!("undecodable change: {e}"))),
                            0,
                        ),
                    };
                    let (result, index) = result;
                    n.wire
                        .send(from, ClusterMsg::Forwarded { id, result, index });
                });
            }
            ClusterMsg::Forwarded { id, result, index } => {
                if let Some(tx) = self.forwards.lock().remove(&id) {
                    let _ = tx.send((result, index));
                }
            }
            ClusterMsg::ReadMark { id } => self.tell_mark(from, id),
            ClusterMsg::ReadMarkIs { id, index } => self.mark_told(from, id, index),
            // Soft state goes to the gossip handler; messages of earlier
            // versions are ignored.
            _ => {}
        }
    }

    /// Stops the engine and every task of this node.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("the consensus engine did not stop cleanly: {e}");
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Whether proposing `command` again has the effect of proposing it once.
fn repeatable(command: &Command) -> bool {
    match command {
        Command::Once { .. } => true,
        Command::Change(c) => c.is_repeatable(),
        Command::Aside(inner) => repeatable(inner),
        Command::Init { .. } | Command::Batch(_) => false,
    }
}

/// An error of the consensus engine, kept as the cause of the tracker's.
fn engine(e: impl std::error::Error + Send + Sync + 'static) -> TrackerError {
    TrackerError::Consensus(Box::new(e))
}
