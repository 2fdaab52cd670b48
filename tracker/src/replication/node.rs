//! The replication core: one tracker's part in the cluster, with no I/O.
//!
//! It takes events (a heartbeat tick, a message from another tracker, a
//! batch of records to order, "this much is on disk now") and hands back a
//! [`Ready`] batch: entries to persist, entries to apply, messages to send
//! and how far clients may be acknowledged. The driver persists, calls
//! [`Node::persisted`], applies, sends (a leader's messages go before its
//! own disk write, see [`Ready::send_first`]), and asks again until the
//! batch is empty. See STATE.md for the roles and their transitions.
//!
//! Ordering is primary-backup with views: the leader appends every entry
//! and sends it to every member of its view; an entry is committed once all
//! of them have it durably, and a client is acknowledged once all of them
//! have applied it. A silent member is dropped from the view by a new view
//! record; a silent leader is replaced by the member with the most recent
//! committed state. So every acknowledged change is on every member that is
//! up, and any single survivor can go on.

mod follower;
mod leader;
mod status;
mod succession;

use super::log::{view_rank, Log, LogEntry, LogRead};
use fileshare_protocol::messages::cluster::{
    AppendResult, ClusterMsg, LogPoint, MemberRole, Status, ViewId,
};
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
    /// Messages to send once the persist is done, or before it when
    /// `send_first` (a leader's appends: the followers then write to disk
    /// while the leader does; commit still needs the leader's own write).
    pub messages: Vec<(u32, ClusterMsg)>,
    pub send_first: bool,
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
    /// When `tick` last ran.
    last_tick_ms: u64,
    status_due_ms: u64,
    /// Invariant: `Some` exactly while leading: the view that started this
    /// leadership. Acknowledgements of older appends are ignored.
    leading_since: Option<ViewId>,
    /// The highest view epoch seen anywhere; new views go above it.
    max_epoch: u64,
    /// Recovering with no leader to follow: the trackers of the last views
    /// that are not reachable, which it waits for.
    waiting_for: Vec<u32>,
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
            last_tick_ms: now_ms,
            status_due_ms: now_ms,
            leading_since: None,
            max_epoch,
            waiting_for: Vec::new(),
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
            let why = if node.cfg.size == 1 {
                "the only tracker of the trackers file".to_string()
            } else {
                format!("the last view ({}) had no other tracker up", id.epoch)
            };
            node.note_info(format!("leading alone: {why}"));
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
            Role::Recovering { source: None } if !self.waiting_for.is_empty() => {
                let list: Vec<String> = self.waiting_for.iter().map(u32::to_string).collect();
                return Err(format!(
                    "this tracker is waiting for tracker(s) {}: it serves once they are \
                     reachable, since they may hold newer state (a new cluster starts once all \
                     its trackers are up)",
                    list.join(", ")
                ));
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
        if self.now_ms.saturating_sub(self.last_tick_ms) > self.cfg.fail_after_ms / 2 {
            // This tracker itself was stopped or starved: the silence it
            // sees is its own. Give everyone a fresh timeout, so what they
            // sent meanwhile is heard before anyone is judged down.
            let now = self.now_ms;
            for p in self.peers.values_mut() {
                if p.heard_ms.is_some() {
                    p.heard_ms = Some(now);
                }
            }
            self.leader_lost_ms = None;
        }
        self.last_tick_ms = self.now_ms;
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
        // What the disk now says, even if lower: truncation may lower it.
        self.durable_commit = commit;
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
        rd.send_first = self.role == Role::Leader;
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
}

/// For leading before any storage exists: a fresh view sends nothing old.
struct NoRead;

impl LogRead for NoRead {
    fn read(&self, _: u64, _: usize, _: usize) -> Result<Vec<Vec<u8>>, String> {
        Ok(Vec::new())
    }
}
