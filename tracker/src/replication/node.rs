//! The replication core: one tracker's part in the cluster, with no I/O.
//!
//! It takes events (a heartbeat tick, a message from another tracker, a
//! batch of records to order, "this much is on disk now") and hands back a
//! [`Ready`] batch: entries to persist, entries to apply, messages to send
//! and how far clients may be acknowledged. The driver persists first, then
//! applies, then sends, then calls [`Node::persisted`], and asks again until
//! the batch is empty. See STATE.md for the roles and their transitions.
//!
//! Ordering is primary-backup with views: the leader appends every entry
//! and sends it to every member of its view; an entry is committed once all
//! of them have it durably, and a client is acknowledged once all of them
//! have applied it. A silent member is dropped from the view by a new view
//! record; a silent leader is replaced by the member with the most recent
//! committed state. So every acknowledged change is on every member that is
//! up, and any single survivor can go on.

use super::log::{chain, view_rank, Log, LogEntry, LogRead};
use crate::records::Record;
use fileshare_protocol::messages::cluster::{
    AppendResult, ClusterMsg, LogPoint, MemberRole, Status, View, ViewId,
};
use serde_bytes::ByteBuf;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Timing and batching; the defaults suit trackers on one network.
#[derive(Debug, Clone)]
pub struct Config {
    /// This tracker's number, 1-based.
    pub me: u32,
    /// How many trackers the trackers file lists.
    pub size: u32,
    /// Between two status messages to every other tracker.
    pub heartbeat_ms: u64,
    /// A tracker not heard from for this long is down.
    pub fail_after_ms: u64,
    /// An append not acknowledged for this long is sent again.
    pub retry_ms: u64,
    pub max_append_entries: usize,
    pub max_append_bytes: usize,
    /// Entries sent to one member and not yet acknowledged, at most.
    pub max_unacked: u64,
}

impl Config {
    pub fn new(me: u32, size: u32) -> Config {
        Config {
            me,
            size,
            heartbeat_ms: 200,
            fail_after_ms: 1000,
            retry_ms: 400,
            max_append_entries: 4096,
            max_append_bytes: 1 << 20,
            max_unacked: 16384,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower { leader: u32 },
    Recovering { source: Option<u32> },
    Refused(String),
    Stopped,
}

/// What to make durable, in one transaction: drop entries from
/// `truncate_from` on, append `entries`, record `commit`.
#[derive(Debug)]
pub struct Persist {
    pub truncate_from: Option<u64>,
    pub entries: Vec<(u64, Arc<LogEntry>)>,
    pub commit: u64,
}

#[derive(Debug, Default)]
pub struct Ready {
    pub persist: Option<Persist>,
    /// Before applying: the state forgets views applied after this index.
    pub rewind_to: Option<u64>,
    /// Committed entries to apply, in order, after the persist.
    pub apply: Vec<Arc<LogEntry>>,
    /// Messages to send once the persist is done.
    pub messages: Vec<(u32, ClusterMsg)>,
    /// Leader: every entry up to this index is applied on every member.
    pub acked: u64,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_none()
            && self.rewind_to.is_none()
            && self.apply.is_empty()
            && self.messages.is_empty()
    }
}

/// Something worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Info(String),
    Warn(String),
    Error(String),
}

/// The leader's knowledge of one other tracker's log.
#[derive(Debug, Clone)]
struct Progress {
    /// Invariant: its log matches ours and is durable up to here.
    matched: u64,
    /// Invariant: `applied <= matched`.
    applied: u64,
    /// The next index to send.
    next: u64,
    sent_ms: u64,
    /// The commit index last sent to it.
    commit_sent: u64,
}

#[derive(Debug, Default)]
struct Peer {
    heard_ms: Option<u64>,
    status: Option<Status>,
    /// It said it is stopping: down until it says otherwise.
    stopping: bool,
    /// Its acknowledged state at this base is not in our log; it is not
    /// taken back until its base changes (say, an operator reset it).
    diverged_base: Option<LogPoint>,
    /// Leader only: members of the view and trackers catching up from us.
    progress: Option<Progress>,
}

/// Which tracker's state wins: the most recent committed view, then the
/// longest log, then the lowest number.
type Key = ((u64, Reverse<u32>), u64, Reverse<u32>);

fn key_of(st: &Status, no: u32) -> Key {
    (view_rank(st.committed_view), st.last.index, Reverse(no))
}

pub struct Node {
    cfg: Config,
    log: Log,
    role: Role,
    /// Every other tracker of the file.
    peers: BTreeMap<u32, Peer>,
    now_ms: u64,
    status_due_ms: u64,
    /// Invariant: `Some` exactly while leading: the view that started this
    /// leadership. Acknowledgements of older appends are ignored.
    leading_since: Option<ViewId>,
    /// The highest view epoch seen anywhere; new views go above it.
    max_epoch: u64,
    /// Follower: when our leader was first seen not leading. A successor
    /// is chosen only once every candidate has since sent a status, so all
    /// compare the same, final logs.
    leader_lost_ms: Option<u64>,
    /// Follower: an acknowledgement owed to `(leader, view)` once the
    /// pending entries are durable.
    owe_ack: Option<(u32, ViewId)>,
    /// Follower: our log matches the leader's up to here (checked by the
    /// hash chain of its last append). Entries after it may be left over
    /// from an older leader, so acknowledgements never claim them.
    matched_leader: u64,
    pending_truncate: Option<u64>,
    /// The commit index last written to disk.
    durable_commit: u64,
    rewind: Option<u64>,
    acked: u64,
    msgs: Vec<(u32, ClusterMsg)>,
    notes: Vec<Note>,
}

impl Node {
    /// A node over `log`, restored from disk. It leads at once if it is the
    /// only tracker, or if its last view says it was the last one up;
    /// otherwise it waits to learn who holds the latest state.
    pub fn new(cfg: Config, mut log: Log, now_ms: u64) -> Node {
        let me = cfg.me;
        let peers = (1..=cfg.size)
            .filter(|&n| n != me)
            .map(|n| (n, Peer::default()))
            .collect();
        let alone = log
            .last_view()
            .filter(|(_, v)| v.members == [me] && v.id.leader == me)
            .map(|(_, v)| v.id);
        let max_epoch = log.last_view().map_or(0, |(_, v)| v.id.epoch);
        if alone.is_some() {
            // In a view of one, every durable entry was committed at once.
            let last = log.last_index();
            log.raise_commit(last);
        }
        let durable_commit = log.commit();
        let mut node = Node {
            cfg,
            log,
            role: Role::Recovering { source: None },
            peers,
            now_ms,
            status_due_ms: now_ms,
            leading_since: None,
            max_epoch,
            leader_lost_ms: None,
            owe_ack: None,
            matched_leader: 0,
            pending_truncate: None,
            durable_commit,
            rewind: None,
            acked: 0,
            msgs: Vec::new(),
            notes: Vec::new(),
        };
        if let Some(id) = alone {
            node.role = Role::Leader;
            node.leading_since = Some(id);
            node.acked = node.log.commit();
            node.note_info(format!(
                "leading alone: the last view ({}) had no other tracker up",
                id.epoch
            ));
        } else if node.cfg.size == 1 {
            node.become_leader(vec![me], &NoRead);
        } else {
            node.note_info("waiting to reach the other trackers".into());
        }
        node
    }

    pub fn me(&self) -> u32 {
        self.cfg.me
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The tracker that orders this one's writes, while it serves.
    pub fn leader(&self) -> Option<u32> {
        match self.role {
            Role::Leader => Some(self.cfg.me),
            Role::Follower { leader } => Some(leader),
            _ => None,
        }
    }

    /// Entries appended but not yet committed.
    pub fn uncommitted(&self) -> u64 {
        self.log.last_index() - self.log.commit()
    }

    /// Whether this tracker may answer clients: it is a member of a view
    /// whose record it has applied (so it has applied everything committed
    /// before it) and that it still follows. Otherwise, why not.
    pub fn serving(&self) -> Result<(), String> {
        let me = self.cfg.me;
        let leader = match &self.role {
            Role::Leader => me,
            Role::Follower { leader } => *leader,
            Role::Recovering { source: Some(s) } => {
                return Err(format!("this tracker is catching up with tracker {s}"))
            }
            Role::Recovering { source: None } => {
                return Err(
                    "this tracker is waiting to reach the trackers that hold the latest state"
                        .into(),
                )
            }
            Role::Refused(why) => return Err(why.clone()),
            Role::Stopped => return Err("the tracker is shutting down".into()),
        };
        let joined = self
            .log
            .view_at(self.log.applied())
            .is_some_and(|(_, v)| v.has(me) && v.id.leader == leader);
        let current = self
            .log
            .last_view()
            .is_some_and(|(_, v)| v.has(me) && v.id.leader == leader);
        if joined && current {
            Ok(())
        } else {
            Err(format!("this tracker is catching up with tracker {leader}"))
        }
    }

    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    fn note_info(&mut self, s: String) {
        self.notes.push(Note::Info(s));
    }

    fn note_warn(&mut self, s: String) {
        self.notes.push(Note::Warn(s));
    }

    pub fn status(&self) -> Status {
        Status {
            role: match &self.role {
                Role::Leader => MemberRole::Leader,
                Role::Follower { leader } => MemberRole::Follower { leader: *leader },
                Role::Recovering { source } => MemberRole::Recovering { source: *source },
                Role::Refused(reason) => MemberRole::Refused {
                    reason: reason.clone(),
                },
                Role::Stopped => MemberRole::Stopping,
            },
            view: self.log.last_view().map(|(_, v)| v.clone()),
            committed_view: self.log.committed_view(),
            last: self.log.last(),
            commit: self.log.commit(),
            base: self.log.base(),
            applied: self.log.applied(),
            holds: self
                .peers
                .iter()
                .filter_map(|(n, p)| p.status.as_ref().map(|s| (*n, s.base)))
                .filter(|(_, b)| self.log.contains(b))
                .collect(),
        }
    }

    fn my_key(&self) -> Key {
        key_of(&self.status(), self.cfg.me)
    }

    fn up(&self, no: u32) -> bool {
        self.peers.get(&no).is_some_and(|p| {
            !p.stopping
                && p.heard_ms
                    .is_some_and(|h| self.now_ms.saturating_sub(h) < self.cfg.fail_after_ms)
        })
    }

    fn peer_status(&self, no: u32) -> Option<&Status> {
        self.peers.get(&no).and_then(|p| p.status.as_ref())
    }

    fn send(&mut self, to: u32, msg: ClusterMsg) {
        self.msgs.push((to, msg));
    }

    fn broadcast_status(&mut self) {
        let st = self.status();
        let to: Vec<u32> = self.peers.keys().copied().collect();
        for n in to {
            self.send(n, ClusterMsg::Status(st.clone()));
        }
        self.status_due_ms = self.now_ms + self.cfg.heartbeat_ms;
    }

    /// Announces a clean stop, so the others treat this tracker as down
    /// at once instead of after the failure timeout.
    pub fn stop(&mut self) {
        self.role = Role::Stopped;
        self.leading_since = None;
        self.broadcast_status();
    }

    /// Stops serving for good (until restarted), saying why: the disk
    /// failed, or the state conflicts with the cluster's.
    pub fn refuse(&mut self, reason: String) {
        self.notes
            .push(Note::Error(format!("refusing to serve: {reason}")));
        self.role = Role::Refused(reason);
        self.leading_since = None;
        for p in self.peers.values_mut() {
            p.progress = None;
        }
        self.broadcast_status();
    }

    /// Orders `entries` after the log; leader only. Returns the index of
    /// the last one.
    pub fn propose(
        &mut self,
        entries: Vec<LogEntry>,
        storage: &dyn LogRead,
    ) -> Result<u64, String> {
        if self.role != Role::Leader {
            return Err("not the leader".into());
        }
        for e in entries {
            self.log.append(Arc::new(e));
        }
        let to: Vec<u32> = self.progress_peers();
        for n in to {
            self.send_append(n, storage);
        }
        Ok(self.log.last_index())
    }

    fn progress_peers(&self) -> Vec<u32> {
        self.peers
            .iter()
            .filter(|(_, p)| p.progress.is_some())
            .map(|(n, _)| *n)
            .collect()
    }

    /// The periodic step: heartbeats, failure detection and what follows
    /// from it, retransmissions.
    pub fn tick(&mut self, now_ms: u64, storage: &dyn LogRead) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.now_ms >= self.status_due_ms {
            self.broadcast_status();
        }
        match self.role.clone() {
            Role::Leader => self.leader_tick(storage),
            Role::Follower { leader } => {
                let leading = self.up(leader)
                    && self
                        .peer_status(leader)
                        .is_some_and(|s| s.role == MemberRole::Leader);
                if leading {
                    self.leader_lost_ms = None;
                } else {
                    let since = *self.leader_lost_ms.get_or_insert(self.now_ms);
                    if self.now_ms.saturating_sub(since) >= 2 * self.cfg.heartbeat_ms {
                        self.take_over(leader, storage);
                    }
                }
            }
            Role::Recovering { .. } => self.recover(storage),
            Role::Refused(_) | Role::Stopped => {}
        }
    }

    /// A message from tracker `from`.
    pub fn step(&mut self, now_ms: u64, from: u32, msg: ClusterMsg, storage: &dyn LogRead) {
        if from == self.cfg.me || !self.peers.contains_key(&from) {
            return;
        }
        self.now_ms = self.now_ms.max(now_ms);
        if let Some(p) = self.peers.get_mut(&from) {
            p.heard_ms = Some(self.now_ms);
        }
        match msg {
            ClusterMsg::Status(st) => self.on_status(from, st, storage),
            ClusterMsg::Append {
                view,
                prev,
                entries,
                commit,
            } => self.on_append(from, view, prev, entries, commit),
            ClusterMsg::Appended { view, result } => self.on_appended(from, view, result, storage),
            ClusterMsg::Diverged { reason } => self.on_diverged(from, reason),
            // Forwarded writes and gossip are the driver's.
            _ => {}
        }
    }

    /// Entries up to `index` are durable now, with commit index `commit`.
    pub fn persisted(&mut self, index: u64, commit: u64) {
        self.log.set_persisted(index);
        self.durable_commit = self.durable_commit.max(commit);
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Whether the governing view is this tracker alone: then every durable
    /// entry is committed, on disk as in memory (see [`Node::new`]).
    fn alone(&self) -> bool {
        self.log
            .view_at(self.log.persisted())
            .is_some_and(|(_, v)| v.members == [self.cfg.me])
    }

    /// What to do now; see the module doc for the order.
    pub fn ready(&mut self, storage: &dyn LogRead) -> Ready {
        let mut rd = Ready::default();
        let entries = self.log.unpersisted();
        // A leader acknowledges a change only once its own disk says the
        // change is committed, so that after a restart it still knows what
        // it acknowledged (and refuses, rather than drop it, should a split
        // cluster have gone on without it).
        let commit_news =
            self.role == Role::Leader && self.log.commit() > self.durable_commit && !self.alone();
        if !entries.is_empty() || self.pending_truncate.is_some() || commit_news {
            rd.persist = Some(Persist {
                truncate_from: self.pending_truncate.take(),
                entries,
                commit: self.log.commit(),
            });
        }
        rd.rewind_to = self.rewind.take();
        rd.apply = self.log.take_to_apply();
        match self.role.clone() {
            Role::Leader => {
                let durable = if self.alone() {
                    self.log.persisted()
                } else {
                    self.durable_commit
                };
                let acked = self
                    .members_min(|p| p.applied, self.log.applied())
                    .min(durable);
                self.acked = self.acked.max(acked);
                let commit = self.log.commit();
                let behind: Vec<u32> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.progress.as_ref().is_some_and(|g| g.commit_sent < commit))
                    .map(|(n, _)| *n)
                    .collect();
                for n in behind {
                    self.send_append(n, storage);
                }
            }
            Role::Follower { leader } if !rd.apply.is_empty() && self.owe_ack.is_none() => {
                if let Some((_, v)) = self.log.last_view() {
                    if v.id.leader == leader {
                        self.owe_ack = Some((leader, v.id));
                    }
                }
            }
            _ => {}
        }
        if let Some((to, view)) = self.owe_ack.take() {
            let matched = self.matched_leader.min(self.log.last_index());
            let result = AppendResult::Ok {
                matched,
                applied: self.log.applied().min(matched),
            };
            self.send(to, ClusterMsg::Appended { view, result });
        }
        rd.acked = self.acked;
        rd.messages = std::mem::take(&mut self.msgs);
        rd
    }

    /// The minimum of `f` over the other members of the governing view
    /// (the last one durable here), and `mine`.
    fn members_min(&self, f: impl Fn(&Progress) -> u64, mine: u64) -> u64 {
        let Some((_, view)) = self.log.view_at(self.log.persisted()) else {
            return 0;
        };
        let mut m = mine;
        for n in &view.members {
            if *n == self.cfg.me {
                continue;
            }
            let v = self
                .peers
                .get(n)
                .and_then(|p| p.progress.as_ref())
                .map_or(0, &f);
            m = m.min(v);
        }
        m
    }

    fn maybe_commit(&mut self) {
        let persisted = self.log.persisted();
        let c = self.members_min(|p| p.matched, persisted);
        self.log.raise_commit(c);
    }

    // ---- leader ------------------------------------------------------

    fn become_leader(&mut self, members: Vec<u32>, storage: &dyn LogRead) {
        let me = self.cfg.me;
        let last_epoch = self.log.last_view().map_or(0, |(_, v)| v.id.epoch);
        let epoch = self.max_epoch.max(last_epoch) + 1;
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

    fn new_view(&mut self, epoch: u64, mut members: Vec<u32>) -> View {
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

    fn append_view(&mut self, view: &View) -> Option<u64> {
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
    fn start_point(&self, st: &Status) -> Option<u64> {
        if self.log.contains(&st.last) {
            Some(st.last.index + 1)
        } else if self.log.contains(&st.base) {
            Some(st.base.index + 1)
        } else {
            None
        }
    }

    fn leader_tick(&mut self, storage: &dyn LogRead) {
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
                let epoch = self.max_epoch.max(view.id.epoch) + 1;
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

    fn send_append(&mut self, to: u32, storage: &dyn LogRead) {
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

    fn on_appended(&mut self, from: u32, view: ViewId, result: AppendResult, st: &dyn LogRead) {
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
    fn diverged(&mut self, from: u32, st: &Status) {
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

    fn step_down(&mut self, why: String) {
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
    fn yields_to(&self, other: u32, st: &Status) -> bool {
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
    fn admit(&mut self, from: u32, st: &Status, storage: &dyn LogRead) {
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

    // ---- every role ----------------------------------------------------

    fn on_status(&mut self, from: u32, st: Status, storage: &dyn LogRead) {
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

    fn on_append(
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

    fn on_diverged(&mut self, from: u32, reason: String) {
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
    fn choose_source(&mut self) {
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
    fn take_over(&mut self, old: u32, storage: &dyn LogRead) {
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
    fn recover(&mut self, storage: &dyn LogRead) {
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
        if required.iter().all(|n| reachable.contains(n)) && best.1 == me {
            self.note_info(
                "every tracker of the last views is reachable and this one holds the latest state"
                    .into(),
            );
            self.become_leader(vec![me], storage);
        }
    }
}

/// For leading before any storage exists: a fresh view sends nothing old.
struct NoRead;

impl LogRead for NoRead {
    fn read(&self, _: u64, _: usize, _: usize) -> Result<Vec<Vec<u8>>, String> {
        Ok(Vec::new())
    }
}
