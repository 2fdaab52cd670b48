//! The record writer: one thread that owns the log on disk, the
//! replication core ([`Node`]) and the only write access to the state.
//!
//! It takes changes from request handlers, messages from other trackers
//! and clock ticks. On the leader, each round decides every queued change
//! against the state under a read lock ([`decide`]), hands the records to
//! the core, then runs the core's [`Ready`] batches: one durable write per
//! batch (group commit), then applying what is committed under a brief
//! write lock, then sending, then acknowledging the changes that every
//! member has applied. A follower forwards its clients' changes to the
//! leader and answers them when the leader does. See STATE.md.
//!
//! The thread is the only writer of the state, so the state cannot move
//! between deciding and applying but by records this thread appended:
//! a change whose key has records in flight waits until they are applied
//! (see [`crate::state::change`]).
//!
//! The log on disk, which only this thread writes, is [`store`].

pub mod store;

use crate::auth;
use crate::replication::log::LogEntry;
use crate::replication::node::{Node, Note, Ready, Role};
use crate::replication::transport::Outbox;
use crate::state::change::{decide, Change, Key};
use crate::state::records::Record;
use crate::state::State;
use crate::writer::store::{Batch, Store};
use fileshare_protocol::messages::ClusterMsg;
use fileshare_protocol::{codec, ErrorCode, MAX_FRAME_LEN};
use parking_lot::RwLock;
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The log target of what the replication core reports.
const REPLICATION: &str = "fileshare_tracker::replication";

/// Most changes decided in one round.
const MAX_BATCH: usize = 4096;

/// Inputs that may wait in the queue before senders wait too.
const QUEUE: usize = 8192;

/// Entries appended and not yet committed before the leader stops taking
/// new changes (they wait in the queue).
const MAX_UNCOMMITTED: u64 = 16384;

/// Largest encoded record: an append carrying it must fit in a frame.
pub const MAX_RECORD_LEN: usize = MAX_FRAME_LEN - (64 << 10);

/// How long a follower holds a change while no leader is reachable.
const WAIT_FOR_LEADER: Duration = Duration::from_secs(3);

/// How long a forwarded change may go unanswered.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);

type Ack = oneshot::Sender<Result<(), ErrorCode>>;

/// Everything the writer thread acts on, in arrival order.
pub enum Input {
    Change(Change, Ack),
    /// A message from another tracker (not gossip).
    Net(u32, ClusterMsg),
    Tick,
    Stop,
}

/// Submits changes and messages to the writer thread; cheap to share.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Input>,
}

impl WriterHandle {
    /// Returns once `change` is applied on every tracker of the view, or
    /// refused.
    pub async fn submit(&self, change: Change) -> Result<(), ErrorCode> {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Input::Change(change, ack)).await.is_err() {
            return Err(stopping());
        }
        done.await.unwrap_or_else(|_| Err(stopping()))
    }

    /// Hands a message from tracker `from` over; false once stopped.
    pub async fn deliver(&self, from: u32, msg: ClusterMsg) -> bool {
        self.tx.send(Input::Net(from, msg)).await.is_ok()
    }

    /// A clock tick, skipped if the queue is full (another comes soon).
    pub fn tick(&self) -> bool {
        !matches!(
            self.tx.try_send(Input::Tick),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    }
}

fn stopping() -> ErrorCode {
    ErrorCode::Unavailable("the tracker is shutting down".into())
}

fn maybe_done() -> ErrorCode {
    ErrorCode::Internal(
        "the tracker ordering changes went away while this one was being saved; it may or may \
         not have taken effect"
            .into(),
    )
}

/// Whether this tracker answers clients, or why not; published by the
/// writer after every round.
pub type Availability = RwLock<Result<(), String>>;

/// The running writer thread; [`WriterThread::stop`] ends and joins it.
pub struct WriterThread {
    tx: mpsc::Sender<Input>,
    thread: std::thread::JoinHandle<()>,
}

impl WriterThread {
    /// Stops after every input queued before this call is handled.
    pub async fn stop(self) {
        let _ = self.tx.send(Input::Stop).await;
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// A change a follower sent to its leader.
struct Forwarded {
    /// Kept while it may be sent again (see [`Change::is_repeatable`]).
    change: Option<Change>,
    ack: Ack,
    sent: Instant,
    /// When the client's change arrived.
    since: Instant,
    leader: u32,
}

/// Who waits for a change's outcome.
enum Origin {
    Local(Ack),
    /// A change forwarded by tracker `from` under request `id`.
    Remote {
        from: u32,
        id: u64,
    },
}

/// The writer's state; built by [`Writer::new`], run by [`spawn`].
pub struct Writer {
    store: Store,
    state: Arc<RwLock<State>>,
    node: Node,
    out: Arc<dyn Outbox>,
    availability: Arc<Availability>,
    clock: Instant,
    /// Leader: changes not decided yet, oldest first.
    queued: VecDeque<(Change, Origin)>,
    /// Leader: keys with records appended and not applied yet, with the
    /// index of the last of them.
    in_flight: HashMap<Key, u64>,
    /// Leader: who to answer once everything up to the index is applied
    /// on every member.
    acks: BTreeMap<u64, Vec<Origin>>,
    /// Follower: changes sent to the leader, by request id.
    forwards: HashMap<u64, Forwarded>,
    next_forward: u64,
    /// Follower: changes waiting for a reachable leader.
    waiting: VecDeque<(Change, Ack, Instant)>,
    /// Leader: the ticket key was proposed in this leadership.
    init_proposed: bool,
    /// The last round decided as many changes as a round may.
    full_round: bool,
    role: Role,
}

impl Writer {
    /// A writer over `store`, already replayed into `state` and `node`.
    pub fn new(
        store: Store,
        state: Arc<RwLock<State>>,
        node: Node,
        out: Arc<dyn Outbox>,
        availability: Arc<Availability>,
        clock: Instant,
    ) -> Writer {
        let role = node.role().clone();
        Writer {
            store,
            state,
            node,
            out,
            availability,
            clock,
            queued: VecDeque::new(),
            in_flight: HashMap::new(),
            acks: BTreeMap::new(),
            forwards: HashMap::new(),
            next_forward: 1,
            waiting: VecDeque::new(),
            init_proposed: false,
            full_round: false,
            role,
        }
    }

    fn now_ms(&self) -> u64 {
        fileshare_protocol::millis(self.clock.elapsed())
    }

    /// Runs rounds with no input until nothing is left to do: at start-up,
    /// so a tracker that leads alone has its state complete (and its
    /// ticket key) before it listens.
    pub fn settle(&mut self) {
        for _ in 0..8 {
            self.round();
        }
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Input>) {
        loop {
            let mut inputs = Vec::new();
            // More to decide than one round took: go on without waiting.
            // Changes that wait for records in flight do not count, or the
            // thread would spin until the acknowledgements come.
            let busy = self.full_round && self.can_decide();
            if busy {
                match rx.try_recv() {
                    Ok(i) => inputs.push(i),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.blocking_recv() {
                    Some(i) => inputs.push(i),
                    None => break,
                }
            }
            while inputs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(i) => inputs.push(i),
                    Err(_) => break,
                }
            }
            let mut stop = false;
            for input in inputs {
                match input {
                    Input::Change(c, ack) => self.on_change(c, Origin::Local(ack)),
                    Input::Net(from, msg) => self.on_net(from, msg),
                    Input::Tick => {
                        let now = self.now_ms();
                        self.node.tick(now, &self.store);
                    }
                    Input::Stop => stop = true,
                }
            }
            self.round();
            if stop {
                self.shutdown();
                break;
            }
        }
        tracing::debug!(last = self.store.last_index(), "record writer stopped");
    }

    /// Decides what can be, runs the core's batches, follows role changes.
    fn round(&mut self) {
        self.decide_queued();
        self.flush();
        self.follow_role();
        self.retry_waiting();
        self.flush();
        for note in self.node.take_notes() {
            match note {
                Note::Info(s) => tracing::info!(target: REPLICATION, "{s}"),
                Note::Warn(s) => tracing::warn!(target: REPLICATION, "{s}"),
                Note::Error(s) => tracing::error!(target: REPLICATION, "{s}"),
            }
        }
        *self.availability.write() = self.node.serving();
    }

    fn can_decide(&self) -> bool {
        self.node.is_leader()
            && self.node.serving().is_ok()
            && self.node.uncommitted() < MAX_UNCOMMITTED
    }

    fn on_change(&mut self, change: Change, origin: Origin) {
        if self.node.is_leader() {
            self.queued.push_back((change, origin));
            return;
        }
        match origin {
            Origin::Local(ack) => self.forward(change, ack, Instant::now()),
            Origin::Remote { from, id } => {
                let result = Err(ErrorCode::Unavailable(format!(
                    "tracker {} does not order changes now",
                    self.node.me()
                )));
                self.out.send(from, ClusterMsg::Forwarded { id, result });
            }
        }
    }

    /// Sends a local client's change to the leader, or holds it until one
    /// is reachable.
    fn forward(&mut self, change: Change, ack: Ack, since: Instant) {
        let leader = self
            .node
            .leader()
            .filter(|l| *l != self.node.me() && self.out.connected(*l));
        let Some(leader) = leader else {
            self.waiting.push_back((change, ack, since));
            return;
        };
        let bytes = match codec::encode(&change) {
            Ok(b) if b.len() <= MAX_RECORD_LEN => b,
            Ok(b) => {
                let _ = ack.send(Err(ErrorCode::BadRequest(format!(
                    "the change is too large to replicate ({} bytes, at most {MAX_RECORD_LEN})",
                    b.len()
                ))));
                return;
            }
            Err(e) => {
                let _ = ack.send(Err(ErrorCode::BadRequest(format!(
                    "the change cannot be sent to the leader: {e}"
                ))));
                return;
            }
        };
        let id = self.next_forward;
        self.next_forward += 1;
        let msg = ClusterMsg::Forward {
            id,
            change: ByteBuf::from(bytes),
        };
        if self.out.send(leader, msg) {
            let forwarded = Forwarded {
                change: change.is_repeatable().then_some(change),
                ack,
                sent: Instant::now(),
                since,
                leader,
            };
            self.forwards.insert(id, forwarded);
        } else {
            self.waiting.push_back((change, ack, since));
        }
    }

    fn on_net(&mut self, from: u32, msg: ClusterMsg) {
        match msg {
            ClusterMsg::Forward { id, change } => match codec::decode::<Change>(&change) {
                Ok(c) => self.on_change(c, Origin::Remote { from, id }),
                Err(e) => {
                    tracing::warn!(tracker = from, "a forwarded change does not decode: {e}");
                    let result = Err(ErrorCode::BadRequest(format!("undecodable change: {e}")));
                    self.out.send(from, ClusterMsg::Forwarded { id, result });
                }
            },
            ClusterMsg::Forwarded { id, result } => {
                if let Some(f) = self.forwards.remove(&id) {
                    let _ = f.ack.send(result);
                }
            }
            other => {
                let now = self.now_ms();
                self.node.step(now, from, other, &self.store);
            }
        }
    }

    fn reply(&self, origin: Origin, result: Result<(), ErrorCode>) {
        match origin {
            Origin::Local(ack) => {
                let _ = ack.send(result);
            }
            Origin::Remote { from, id } => {
                self.out.send(from, ClusterMsg::Forwarded { id, result });
            }
        }
    }

    /// Leader: decides queued changes into records and orders them.
    fn decide_queued(&mut self) {
        self.full_round = false;
        if !self.can_decide() {
            return;
        }
        let mut entries = Vec::new();
        let mut decided: Vec<(usize, Origin, Key)> = Vec::new();
        let mut noops = Vec::new();
        let mut round_keys = HashSet::new();
        let mut later = VecDeque::new();
        {
            let state = self.state.read();
            if state.ticket_seed().is_none() && !self.init_proposed {
                match auth::random::<32>() {
                    Ok(ticket_seed) => {
                        if let Ok(e) = LogEntry::new(Record::ClusterInit { ticket_seed }) {
                            entries.push(e);
                            self.init_proposed = true;
                        }
                    }
                    Err(e) => tracing::error!("cannot make the ticket key: {e}"),
                }
            }
            let mut taken = 0;
            while let Some((change, origin)) = self.queued.pop_front() {
                if taken >= MAX_BATCH {
                    self.queued.push_front((change, origin));
                    self.full_round = true;
                    break;
                }
                let key = change.key();
                if self.in_flight.contains_key(&key) || !round_keys.insert(key.clone()) {
                    later.push_back((change, origin));
                    continue;
                }
                taken += 1;
                match decide(&state, change) {
                    Ok(recs) if recs.is_empty() => noops.push((state.applied(), origin)),
                    Ok(recs) => match encode_all(recs) {
                        Ok(es) => {
                            entries.extend(es);
                            decided.push((entries.len(), origin, key));
                        }
                        Err(code) => self.reply(origin, Err(code)),
                    },
                    // A refusal rests on applied state only: answer now.
                    Err(code) => self.reply(origin, Err(code)),
                }
            }
        }
        later.extend(self.queued.drain(..));
        self.queued = later;
        for (index, origin) in noops {
            self.acks.entry(index).or_default().push(origin);
        }
        if entries.is_empty() {
            return;
        }
        let first = self.node.log().last_index() + 1;
        if let Err(why) = self.node.propose(entries, &self.store) {
            for (_, origin, _) in decided {
                self.reply(origin, Err(ErrorCode::Unavailable(why.clone())));
            }
            return;
        }
        for (end, origin, key) in decided {
            let index = first + end as u64 - 1;
            self.in_flight.insert(key, index);
            self.acks.entry(index).or_default().push(origin);
        }
    }

    /// Runs the core's batches until it has nothing more to do.
    fn flush(&mut self) {
        loop {
            let rd = self.node.ready(&self.store);
            if rd.is_empty() {
                self.ack_upto(rd.acked);
                return;
            }
            if let Err(e) = self.carry_out(&rd) {
                tracing::error!("cannot save the log: {e:#}");
                self.node
                    .refuse(format!("this tracker cannot write its log: {e}"));
            }
            self.ack_upto(rd.acked);
        }
    }

    fn carry_out(&mut self, rd: &Ready) -> Result<(), crate::error::TrackerError> {
        if rd.send_first {
            self.send_all(rd);
        }
        if let Some(p) = &rd.persist {
            let entries = p
                .entries
                .iter()
                .map(|(i, e)| (*i, e.bytes.as_slice()))
                .collect();
            self.store.write(&Batch {
                truncate_from: p.truncate_from,
                entries,
                commit: p.commit,
            })?;
            self.node.persisted(self.store.last_index(), p.commit);
        }
        if rd.rewind_to.is_some() || !rd.apply.is_empty() {
            let mut state = self.state.write();
            if let Some(r) = rd.rewind_to {
                state.rewind_views(r);
            }
            for e in &rd.apply {
                state.apply(&e.record);
            }
            let applied = state.applied();
            drop(state);
            self.in_flight.retain(|_, i| *i > applied);
        }
        if !rd.send_first {
            self.send_all(rd);
        }
        Ok(())
    }

    fn send_all(&self, rd: &Ready) {
        for (to, msg) in &rd.messages {
            self.out.send(*to, msg.clone());
        }
    }

    fn ack_upto(&mut self, acked: u64) {
        while let Some(entry) = self.acks.first_entry() {
            if *entry.key() > acked {
                break;
            }
            for origin in entry.remove() {
                self.reply(origin, Ok(()));
            }
        }
    }

    /// After a role change: a leader that stopped leading fails what it
    /// holds; a follower whose leader changed fails what it forwarded.
    fn follow_role(&mut self) {
        let role = self.node.role().clone();
        if role == self.role {
            return;
        }
        let was_leader = self.role == Role::Leader;
        self.role = role;
        if was_leader && !self.node.is_leader() {
            let acks = std::mem::take(&mut self.acks);
            for origin in acks.into_values().flatten() {
                self.reply(origin, Err(maybe_done()));
            }
            let queued = std::mem::take(&mut self.queued);
            for (change, origin) in queued {
                match origin {
                    // Not decided: another tracker may still take it.
                    Origin::Local(ack) => self.forward(change, ack, Instant::now()),
                    remote => self.reply(remote, Err(stopping_leader())),
                }
            }
            self.in_flight.clear();
        }
        if self.node.is_leader() {
            self.init_proposed = false;
        }
        let leader = self.node.leader();
        let lost: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, f)| Some(f.leader) != leader)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.give_up_forward(id);
        }
    }

    /// A forwarded change got no answer: sent again if that is harmless,
    /// else its client is told it may or may not have taken effect.
    fn give_up_forward(&mut self, id: u64) {
        let Some(f) = self.forwards.remove(&id) else {
            return;
        };
        match f.change {
            Some(change) => self.waiting.push_back((change, f.ack, f.since)),
            None => {
                let _ = f.ack.send(Err(maybe_done()));
            }
        }
    }

    /// Sends held changes once a leader is reachable (or takes them, as
    /// the leader); gives up on old ones.
    fn retry_waiting(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, f)| now.duration_since(f.sent) > FORWARD_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.give_up_forward(id);
        }
        let waiting = std::mem::take(&mut self.waiting);
        for (change, ack, since) in waiting {
            if now.duration_since(since) > WAIT_FOR_LEADER {
                let _ = ack.send(Err(ErrorCode::Unavailable(
                    "no tracker that orders changes is reachable".into(),
                )));
            } else if self.node.is_leader() {
                self.queued.push_back((change, Origin::Local(ack)));
            } else {
                self.forward(change, ack, since);
            }
        }
        if !self.queued.is_empty() {
            self.decide_queued();
        }
    }

    /// A clean stop: the others are told at once; what is pending is
    /// answered.
    fn shutdown(&mut self) {
        self.node.stop();
        self.flush();
        let acks = std::mem::take(&mut self.acks);
        for origin in acks.into_values().flatten() {
            self.reply(origin, Err(maybe_done()));
        }
        for (_, origin) in std::mem::take(&mut self.queued) {
            self.reply(origin, Err(stopping()));
        }
        for (_, ack, _) in std::mem::take(&mut self.waiting) {
            let _ = ack.send(Err(stopping()));
        }
        for (_, f) in std::mem::take(&mut self.forwards) {
            let _ = f.ack.send(Err(maybe_done()));
        }
        *self.availability.write() = Err("the tracker is shutting down".into());
    }
}

fn stopping_leader() -> ErrorCode {
    ErrorCode::Unavailable("the tracker stopped ordering changes; try again".into())
}

fn encode_all(records: Vec<Record>) -> Result<Vec<LogEntry>, ErrorCode> {
    records
        .into_iter()
        .map(|r| {
            let e = LogEntry::new(r)
                .map_err(|e| ErrorCode::BadRequest(format!("the change cannot be saved: {e}")))?;
            if e.bytes.len() > MAX_RECORD_LEN {
                return Err(ErrorCode::BadRequest(format!(
                    "the change is too large to replicate ({} bytes, at most {MAX_RECORD_LEN})",
                    e.bytes.len()
                )));
            }
            Ok(e)
        })
        .collect()
}

/// Starts the writer thread.
pub fn spawn(mut writer: Writer) -> Result<(WriterHandle, WriterThread), std::io::Error> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let thread = std::thread::Builder::new()
        .name("record-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok((WriterHandle { tx: tx.clone() }, WriterThread { tx, thread }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_records_are_refused_before_they_are_ordered() {
        let meta = fileshare_protocol::ids::FileMeta {
            name: "big".into(),
            size: 1,
            piece_len: fileshare_protocol::PIECE_LEN,
            hashes: vec![fileshare_protocol::PieceHash::of(b"x"); MAX_RECORD_LEN / 32 + 1],
        };
        let rec = Record::FileShared {
            group: "g".into(),
            meta,
            user: "u".into(),
        };
        assert!(matches!(
            encode_all(vec![rec]),
            Err(ErrorCode::BadRequest(_))
        ));
    }
}
