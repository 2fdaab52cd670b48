//! A simulated cluster for testing the replication core: nodes with
//! in-memory "disks" that survive crashes, a network that delivers, drops
//! or cuts messages, and a clock that moves in steps. Like raft-rs's
//! harness/src/network.rs, it runs the real [`Node`] with nothing mocked
//! but the I/O.

use super::log::{Log, LogEntry, LogRead};
use super::node::{Config, Node, Role};
use crate::state::records::Record;
use fileshare_protocol::messages::cluster::ClusterMsg;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

/// Milliseconds per simulation step.
const STEP: u64 = 10;

#[derive(Default, Clone)]
struct Disk {
    entries: Vec<Vec<u8>>,
    commit: u64,
}

impl LogRead for Disk {
    fn read(&self, from: u64, max: usize, _max_bytes: usize) -> Result<Vec<Vec<u8>>, String> {
        let start = usize::try_from(from.saturating_sub(1)).map_err(|e| e.to_string())?;
        Ok(self.entries.iter().skip(start).take(max).cloned().collect())
    }
}

struct Member {
    disk: Disk,
    node: Option<Node>,
    /// What the state machine applied, in order.
    applied: Vec<Record>,
}

pub struct Sim {
    members: BTreeMap<u32, Member>,
    queue: VecDeque<(u32, u32, ClusterMsg)>,
    /// Directed links that lose everything.
    cut: HashSet<(u32, u32)>,
    /// Drop one message in this many (0: none).
    drop_one_in: u64,
    /// Stopped processes (SIGSTOP): no ticks; messages to them wait.
    paused: HashSet<u32>,
    rng: u64,
    pub now: u64,
    /// Names written, with the (leader, index) they were given.
    proposed: Vec<(u32, u64, String)>,
    /// Names some leader acknowledged.
    pub acked: BTreeSet<String>,
    written: u64,
    /// What happened, for failure messages.
    pub trace: Vec<String>,
}

fn name_of(r: &Record) -> Option<&str> {
    match r {
        Record::UserCreated { user, .. } => Some(user),
        _ => None,
    }
}

impl Sim {
    /// `n` trackers, all started on empty disks.
    pub fn new(n: u32) -> Sim {
        let mut sim = Sim {
            members: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: HashSet::new(),
            drop_one_in: 0,
            paused: HashSet::new(),
            rng: 0x2545_F491_4F6C_DD1D,
            now: 0,
            proposed: Vec::new(),
            acked: BTreeSet::new(),
            written: 0,
            trace: Vec::new(),
        };
        for no in 1..=n {
            sim.members.insert(
                no,
                Member {
                    disk: Disk::default(),
                    node: None,
                    applied: Vec::new(),
                },
            );
        }
        for no in 1..=n {
            sim.start(no);
        }
        sim
    }

    fn size(&self) -> u32 {
        u32::try_from(self.members.len()).unwrap()
    }

    /// Starts `no` from its disk, as a restarted process would.
    pub fn start(&mut self, no: u32) {
        let size = self.size();
        let now = self.now;
        self.trace.push(format!("{} {no}: started", self.now));
        let m = self.members.get_mut(&no).unwrap();
        assert!(m.node.is_none(), "{no} is running");
        let mut log = Log::default();
        m.applied.clear();
        for (i, bytes) in m.disk.entries.iter().enumerate() {
            let e = LogEntry::decode(bytes.clone()).unwrap();
            let applied = (i as u64) < m.disk.commit;
            if applied {
                m.applied.push(e.record.clone());
            }
            log.restore(e, applied);
        }
        log.restore_commit(m.disk.commit);
        m.node = Some(Node::new(Config::new(no, size), log, now));
        self.drain(no);
    }

    /// `kill -9`: what is on its disk stays, the rest is gone.
    pub fn kill(&mut self, no: u32) {
        self.trace.push(format!("{} {no}: killed", self.now));
        // Its clients saw their connection drop: not acknowledged.
        self.proposed.retain(|(l, _, _)| *l != no);
        self.members.get_mut(&no).unwrap().node = None;
        self.queue.retain(|(f, t, _)| *f != no && *t != no);
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&mut self, a: &[u32], b: &[u32]) {
        for x in a {
            for y in b {
                self.cut.insert((*x, *y));
                self.cut.insert((*y, *x));
            }
        }
    }

    /// SIGSTOP of `no`: it neither ticks nor reads until resumed.
    pub fn pause(&mut self, no: u32) {
        self.paused.insert(no);
    }

    /// SIGCONT: its clock jumps, and (the worst order) it ticks before it
    /// reads what was sent to it meanwhile.
    pub fn resume(&mut self, no: u32) {
        self.paused.remove(&no);
        let now = self.now;
        let m = self.members.get_mut(&no).unwrap();
        if let Some(node) = m.node.as_mut() {
            node.tick(now, &m.disk);
            self.drain(no);
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn drop_one_in(&mut self, n: u64) {
        self.drop_one_in = n;
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    pub fn node(&self, no: u32) -> Option<&Node> {
        self.members[&no].node.as_ref()
    }

    pub fn role(&self, no: u32) -> Option<Role> {
        self.node(no).map(|n| n.role().clone())
    }

    pub fn serving(&self, no: u32) -> bool {
        self.node(no).is_some_and(|n| n.serving().is_ok())
    }

    /// The serving leaders.
    pub fn leaders(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter(|(no, m)| {
                m.node.as_ref().is_some_and(|n| n.is_leader())
                    && self.serving(**no)
                    && !self.paused.contains(no)
            })
            .map(|(no, _)| *no)
            .collect()
    }

    /// Names applied by `no`, in order.
    pub fn names(&self, no: u32) -> Vec<String> {
        self.members[&no]
            .applied
            .iter()
            .filter_map(name_of)
            .map(str::to_string)
            .collect()
    }

    /// Runs the node's ready loop: persist, apply, send, acknowledge.
    fn drain(&mut self, no: u32) {
        loop {
            let m = self.members.get_mut(&no).unwrap();
            let Some(node) = m.node.as_mut() else { return };
            for note in node.take_notes() {
                self.trace.push(format!("{} {no}: {note:?}", self.now));
            }
            let rd = node.ready(&m.disk);
            if rd.is_empty() {
                self.record_acks(no, rd.acked);
                return;
            }
            if rd.send_first {
                for (to, msg) in &rd.messages {
                    self.queue.push_back((no, *to, msg.clone()));
                }
            }
            if let Some(p) = &rd.persist {
                if let Some(t) = p.truncate_from {
                    m.disk.entries.truncate(usize::try_from(t - 1).unwrap());
                }
                for (i, e) in &p.entries {
                    assert_eq!(*i, m.disk.entries.len() as u64 + 1, "gapless appends");
                    m.disk.entries.push(e.bytes.clone());
                }
                m.disk.commit = p.commit;
                node.persisted(m.disk.entries.len() as u64, p.commit);
            }
            if let Some(r) = rd.rewind_to {
                let keep = usize::try_from(r).unwrap();
                assert!(
                    m.applied[keep..]
                        .iter()
                        .all(|r| matches!(r, Record::View(_))),
                    "only views are ever rewound"
                );
                m.applied.truncate(keep);
            }
            for e in &rd.apply {
                m.applied.push(e.record.clone());
            }
            assert_eq!(m.applied.len() as u64, node.log().applied());
            if !rd.send_first {
                for (to, msg) in rd.messages {
                    self.queue.push_back((no, to, msg));
                }
            }
            self.record_acks(no, rd.acked);
        }
    }

    fn record_acks(&mut self, no: u32, acked: u64) {
        if !self.node(no).is_some_and(|n| n.is_leader()) {
            // It stepped down: its pending writes are failed, not acked.
            self.proposed.retain(|(l, _, _)| *l != no);
            return;
        }
        let done: Vec<String> = self
            .proposed
            .iter()
            .filter(|(l, i, _)| *l == no && *i <= acked)
            .map(|(_, _, n)| n.clone())
            .collect();
        self.proposed.retain(|(l, i, _)| !(*l == no && *i <= acked));
        for d in &done {
            self.trace.push(format!("{} {no}: acked {d}", self.now));
        }
        self.acked.extend(done);
    }

    /// One step of the clock: every message sent so far is delivered (or
    /// lost), then every node ticks.
    pub fn step(&mut self) {
        self.now += STEP;
        let (held, batch): (Vec<_>, Vec<_>) = self
            .queue
            .drain(..)
            .partition(|(_, to, _)| self.paused.contains(to));
        self.queue.extend(held);
        for (from, to, msg) in batch {
            if self.cut.contains(&(from, to)) {
                continue;
            }
            if self.drop_one_in > 0 && self.random().is_multiple_of(self.drop_one_in) {
                continue;
            }
            let now = self.now;
            let m = self.members.get_mut(&to).unwrap();
            if let Some(node) = m.node.as_mut() {
                node.step(now, from, msg, &m.disk);
                self.drain(to);
            }
        }
        let nos: Vec<u32> = self
            .members
            .keys()
            .copied()
            .filter(|n| !self.paused.contains(n))
            .collect();
        for no in nos {
            let now = self.now;
            let m = self.members.get_mut(&no).unwrap();
            if let Some(node) = m.node.as_mut() {
                node.tick(now, &m.disk);
                self.drain(no);
            }
        }
    }

    pub fn run_ms(&mut self, ms: u64) {
        for _ in 0..ms / STEP {
            self.step();
        }
    }

    /// Steps until `cond` holds, failing after `ms` of simulated time.
    pub fn until(&mut self, what: &str, ms: u64, cond: impl Fn(&Sim) -> bool) {
        for _ in 0..ms / STEP {
            if cond(self) {
                return;
            }
            self.step();
        }
        assert!(
            cond(self),
            "{what}: not after {ms} ms\n{}\n{:?}",
            self.describe(),
            self.queue
        );
    }

    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (no, m) in &self.members {
            match &m.node {
                Some(n) => s.push_str(&format!(
                    "  {no}: {:?} serving={:?} {:?} last={} commit={} applied={}\n",
                    n.role(),
                    n.serving(),
                    n.log().last_view().map(|(i, v)| (i, v.clone())),
                    n.log().last_index(),
                    n.log().commit(),
                    n.log().applied()
                )),
                None => s.push_str(&format!("  {no}: down\n")),
            }
        }
        s
    }

    /// A client write through the serving leader, if there is one.
    pub fn write(&mut self) -> Option<String> {
        let leader = *self.leaders().first()?;
        Some(self.write_to(leader, "w"))
    }

    /// A write proposed to leader `no` whether or not it serves, named
    /// `prefix-N`.
    pub fn write_to(&mut self, no: u32, prefix: &str) -> String {
        self.written += 1;
        let name = format!("{prefix}-{}", self.written);
        let entry = LogEntry::new(Record::UserCreated {
            user: name.clone(),
            phc: String::new(),
        })
        .unwrap();
        let m = self.members.get_mut(&no).unwrap();
        let node = m.node.as_mut().unwrap();
        let index = node.propose(vec![entry], &m.disk).unwrap();
        self.proposed.push((no, index, name.clone()));
        self.drain(no);
        name
    }

    /// Every acknowledged write is applied by every serving tracker, which
    /// all applied the same sequence, with no write twice.
    pub fn check(&self) {
        let serving: Vec<u32> = self
            .members
            .keys()
            .copied()
            .filter(|n| self.serving(*n))
            .collect();
        assert!(!serving.is_empty(), "nobody serves\n{}", self.describe());
        let first = self.names(serving[0]);
        let unique: BTreeSet<&String> = first.iter().collect();
        assert_eq!(unique.len(), first.len(), "a write applied twice");
        for no in &serving {
            let names = self.names(*no);
            assert_eq!(names, first, "trackers {} and {no} differ", serving[0]);
            let have: BTreeSet<&String> = names.iter().collect();
            let lost: Vec<_> = self.acked.iter().filter(|a| !have.contains(a)).collect();
            assert!(
                lost.is_empty(),
                "tracker {no} lost acknowledged {lost:?}\n{}",
                self.trace.join("\n")
            );
        }
    }

    /// Runs until every running, non-refused tracker serves and has
    /// applied as much as the others.
    pub fn settle(&mut self, ms: u64) {
        self.until("the cluster to settle", ms, |s| {
            let live: Vec<u32> = s
                .members
                .keys()
                .copied()
                .filter(|n| s.node(*n).is_some() && !matches!(s.role(*n), Some(Role::Refused(_))))
                .collect();
            let applied: BTreeSet<u64> = live
                .iter()
                .map(|n| s.node(*n).unwrap().log().applied())
                .collect();
            let views: HashSet<_> = live
                .iter()
                .map(|n| {
                    s.node(*n)
                        .unwrap()
                        .log()
                        .last_view()
                        .map(|(i, v)| (i, v.id))
                })
                .collect();
            live.iter().all(|n| s.serving(*n))
                && applied.len() == 1
                && views.len() == 1
                && s.queue.is_empty()
        });
    }
}

/// The core's tests: scenarios run on this harness.
#[cfg(test)]
mod scenarios;
