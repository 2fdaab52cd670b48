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

#[cfg(test)]
mod tests {
    use super::*;

    /// The random schedules of each randomized test: `SIM_SEEDS` of them
    /// (default 60), from `SIM_SEED_FROM` (default 1).
    fn seeds() -> std::ops::RangeInclusive<u64> {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default)
        };
        let from = var("SIM_SEED_FROM", 1);
        from..=from + var("SIM_SEEDS", 60) - 1
    }

    fn write_n(sim: &mut Sim, n: usize) {
        sim.until("a leader", 4000, |s| !s.leaders().is_empty());
        for _ in 0..n {
            sim.write();
            sim.step();
        }
    }

    #[test]
    fn a_fresh_cluster_starts_once_every_tracker_is_up() {
        let mut sim = Sim::new(3);
        sim.kill(3);
        sim.run_ms(3000);
        assert!(sim.leaders().is_empty(), "{}", sim.describe());
        sim.start(3);
        sim.settle(3000);
        assert_eq!(sim.leaders(), vec![1]);
        write_n(&mut sim, 20);
        sim.settle(2000);
        sim.check();
        assert_eq!(sim.acked.len(), 20);
    }

    #[test]
    fn one_tracker_serves_at_once() {
        let mut sim = Sim::new(1);
        sim.settle(100);
        write_n(&mut sim, 5);
        sim.check();
        assert_eq!(sim.acked.len(), 5);
    }

    #[test]
    fn views_change_on_failures() {
        let mut sim = Sim::new(3);
        sim.settle(3000);
        write_n(&mut sim, 10);
        sim.kill(3);
        // The leader waits for 3 until it is found down, then goes on.
        write_n(&mut sim, 10);
        sim.until("3 left out of the view", 3000, |s| {
            s.node(1)
                .and_then(|n| n.log().last_view().map(|(_, v)| v.members.clone()))
                == Some(vec![1, 2])
        });
        sim.settle(2000);
        assert_eq!(sim.acked.len(), 20);
        sim.check();
        sim.kill(1);
        sim.until("2 takes over alone", 3000, |s| s.leaders() == vec![2]);
        write_n(&mut sim, 10);
        sim.settle(2000);
        sim.check();
        assert_eq!(sim.acked.len(), 30);
        let view = sim.node(2).unwrap().log().last_view().unwrap().1.clone();
        assert_eq!(view.members, vec![2]);
    }

    #[test]
    fn nothing_acknowledged_is_lost_across_leader_failures() {
        for kill_at in [3, 7, 12] {
            let mut sim = Sim::new(3);
            sim.settle(3000);
            // A write every step for 3 s; the leader dies early on.
            for i in 0..300 {
                sim.write();
                if i == kill_at {
                    let l = sim.leaders()[0];
                    sim.kill(l);
                }
                sim.step();
            }
            sim.settle(4000);
            sim.check();
            assert!(sim.acked.len() > 100, "{}", sim.acked.len());
            // The old leader comes back and agrees.
            let down: Vec<u32> = (1..=3).filter(|n| sim.node(*n).is_none()).collect();
            for n in down {
                sim.start(n);
            }
            sim.settle(4000);
            sim.check();
        }
    }

    #[test]
    fn a_restarted_tracker_catches_up_before_serving() {
        let mut sim = Sim::new(2);
        sim.settle(3000);
        write_n(&mut sim, 10);
        sim.kill(2);
        write_n(&mut sim, 200);
        sim.start(2);
        assert!(!sim.serving(2), "serves before catching up");
        sim.settle(4000);
        sim.check();
        assert_eq!(sim.names(2).len(), 210);
    }

    #[test]
    fn both_killed_and_restarted_in_turn() {
        let mut sim = Sim::new(2);
        sim.settle(3000);
        write_n(&mut sim, 10);
        sim.kill(1);
        write_n(&mut sim, 10);
        sim.settle(3000);
        sim.kill(2);
        // 1 was not the last one up: it must not serve its old state alone.
        sim.start(1);
        sim.run_ms(3000);
        assert!(!sim.serving(1), "{}", sim.describe());
        sim.start(2);
        sim.settle(4000);
        sim.check();
        // The last writes before 1 died reached 2 and count, though 1 could
        // not acknowledge them.
        assert_eq!(sim.names(1).len(), 20);

        // Now both go down together and come back in the other order.
        sim.kill(2);
        sim.kill(1);
        sim.start(2);
        sim.run_ms(2000);
        sim.start(1);
        sim.settle(4000);
        write_n(&mut sim, 5);
        sim.settle(2000);
        sim.check();
        assert_eq!(sim.names(1).len(), 25);
    }

    #[test]
    fn a_partition_is_detected_on_heal_and_one_side_yields() {
        let mut sim = Sim::new(2);
        sim.settle(3000);
        write_n(&mut sim, 5);
        sim.partition(&[1], &[2]);
        sim.until("both sides lead", 4000, |s| s.leaders().len() == 2);
        // Each side accepts writes of its own.
        for _ in 0..5 {
            for l in [1, 2] {
                sim.write_to(l, &format!("side{l}"));
            }
            sim.step();
        }
        let before2 = sim.names(2);
        sim.heal();
        sim.until("one side refuses", 4000, |s| {
            (1..=2).any(|n| matches!(s.role(n), Some(Role::Refused(_))))
        });
        let refused: Vec<u32> = (1..=2)
            .filter(|n| matches!(sim.role(*n), Some(Role::Refused(_))))
            .collect();
        assert_eq!(refused, vec![2], "the higher-numbered side yields");
        let Some(Role::Refused(why)) = sim.role(2) else {
            unreachable!()
        };
        assert!(why.contains("split brain"), "{why}");
        assert!(!sim.serving(2));
        // Nothing was merged: 2 still has exactly what it had.
        assert!(sim.names(2).starts_with(&before2));
        assert_eq!(sim.leaders(), vec![1]);
    }

    #[test]
    fn a_partition_with_writes_on_one_side_only_heals_by_itself() {
        let mut sim = Sim::new(2);
        sim.settle(3000);
        write_n(&mut sim, 5);
        sim.partition(&[1], &[2]);
        sim.until("both sides lead", 4000, |s| s.leaders().len() == 2);
        // Only tracker 2's side is written to. Tracker 1 would win a tie,
        // but it acknowledged nothing 2 lacks, so it yields and catches up.
        for _ in 0..5 {
            sim.write_to(2, "only2");
            sim.step();
        }
        sim.heal();
        sim.settle(5000);
        sim.check();
        assert_eq!(sim.names(1).len(), 10);
        assert_eq!(sim.leaders(), vec![2]);
    }

    #[test]
    fn a_leader_stopped_for_a_while_yields_without_losing_anything() {
        let mut sim = Sim::new(2);
        sim.settle(3000);
        write_n(&mut sim, 5);
        // Writes appended by the leader but not sent yet when it stops.
        sim.write();
        sim.write();
        sim.queue.retain(|(from, _, _)| *from != 1);
        sim.pause(1);
        sim.until("2 takes over", 3000, |s| s.leaders() == vec![2]);
        write_n(&mut sim, 5);
        sim.resume(1);
        sim.settle(4000);
        sim.check();
        assert!(
            !sim.trace.iter().any(|t| t.contains("split brain")),
            "{}",
            sim.trace.join("\n")
        );
        assert_eq!(sim.names(1), sim.names(2));
    }

    #[test]
    fn lossy_links_lose_nothing_acknowledged() {
        let mut sim = Sim::new(3);
        sim.drop_one_in(7);
        sim.settle(6000);
        for i in 0..300 {
            sim.write();
            if i == 30 {
                let l = sim.leaders().first().copied().unwrap_or(1);
                sim.kill(l);
            }
            sim.step();
        }
        sim.drop_one_in(0);
        sim.settle(6000);
        sim.check();
        assert!(sim.acked.len() >= 100, "{}", sim.acked.len());
    }

    #[test]
    fn a_slow_follower_is_left_out_and_taken_back() {
        let mut sim = Sim::new(3);
        sim.settle(3000);
        sim.partition(&[3], &[1, 2]);
        write_n(&mut sim, 30);
        sim.until("3 left out", 3000, |s| {
            s.node(1)
                .and_then(|n| n.log().last_view().map(|(_, v)| v.members.clone()))
                == Some(vec![1, 2])
        });
        sim.run_ms(500);
        assert_eq!(sim.acked.len(), 30);
        sim.heal();
        sim.settle(5000);
        sim.check();
        assert_eq!(sim.names(3).len(), 30);
    }

    /// Random crash and restart schedules (no partitions): no tracker ever
    /// refuses, and every acknowledged write survives on every tracker.
    #[test]
    fn random_crashes_lose_nothing_acknowledged() {
        for seed in seeds() {
            let n = 2 + u32::try_from(seed % 2).unwrap();
            let mut sim = Sim::new(n);
            sim.rng ^= seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            sim.settle(4000);
            sim.drop_one_in(20);
            for _ in 0..1500 {
                let r = sim.random() % 1000;
                if r < 400 {
                    sim.write();
                } else if r < 415 {
                    let no = 1 + u32::try_from(sim.random() % u64::from(n)).unwrap();
                    if sim.node(no).is_some() {
                        sim.kill(no);
                    }
                } else if r < 440 {
                    let no = 1 + u32::try_from(sim.random() % u64::from(n)).unwrap();
                    if sim.node(no).is_none() {
                        sim.start(no);
                    }
                }
                sim.step();
                for no in 1..=n {
                    assert!(
                        !matches!(sim.role(no), Some(Role::Refused(_))),
                        "seed {seed}: {no} refused after crashes only\n{}\n{}",
                        sim.describe(),
                        sim.trace.join("\n")
                    );
                }
            }
            for no in 1..=n {
                if sim.node(no).is_none() {
                    sim.start(no);
                }
            }
            sim.drop_one_in(0);
            sim.settle(8000);
            sim.check();
        }
    }

    /// Random partitions and stopped processes as well as crashes: a split
    /// cluster may accept writes on both sides, but no acknowledged write
    /// is dropped silently: one missing from the trackers that serve is on
    /// one that refuses.
    #[test]
    fn random_partitions_never_merge_silently() {
        for seed in seeds() {
            let n = 2 + u32::try_from(seed % 2).unwrap();
            let mut sim = Sim::new(n);
            sim.rng ^= seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
            sim.settle(4000);
            for _ in 0..1500 {
                let r = sim.random() % 1000;
                if r < 400 {
                    // Writes reach whichever side a client is on.
                    let leaders = sim.leaders();
                    if !leaders.is_empty() {
                        let pick = usize::try_from(sim.random()).unwrap() % leaders.len();
                        sim.write_to(leaders[pick], "p");
                    }
                } else if r < 404 {
                    let no = 1 + u32::try_from(sim.random() % u64::from(n)).unwrap();
                    let rest: Vec<u32> = (1..=n).filter(|x| *x != no).collect();
                    sim.heal();
                    sim.partition(&[no], &rest);
                } else if r < 410 {
                    sim.heal();
                } else if r < 414 {
                    let no = 1 + u32::try_from(sim.random() % u64::from(n)).unwrap();
                    if sim.node(no).is_some() {
                        sim.kill(no);
                    }
                } else if r < 430 {
                    let no = 1 + u32::try_from(sim.random() % u64::from(n)).unwrap();
                    if sim.node(no).is_none() {
                        sim.start(no);
                    }
                } else if r < 433 {
                    let no = 1 + u32::try_from(sim.random() % u64::from(n)).unwrap();
                    sim.pause(no);
                } else if r < 440 {
                    let no = 1 + u32::try_from(sim.random() % u64::from(n)).unwrap();
                    if sim.paused.contains(&no) {
                        sim.resume(no);
                    }
                }
                sim.step();
            }
            for no in 1..=n {
                if sim.paused.contains(&no) {
                    sim.resume(no);
                }
            }
            sim.heal();
            for no in 1..=n {
                if sim.node(no).is_none() {
                    sim.start(no);
                }
            }
            sim.settle(8000);
            let serving: Vec<u32> = (1..=n).filter(|x| sim.serving(*x)).collect();
            assert!(!serving.is_empty(), "seed {seed}\n{}", sim.describe());
            let first = sim.names(serving[0]);
            let mut everywhere: BTreeSet<String> = first.iter().cloned().collect();
            for no in &serving {
                assert_eq!(
                    sim.names(*no),
                    first,
                    "seed {seed}: serving trackers differ\n{}\n{}",
                    sim.describe(),
                    sim.trace.join("\n")
                );
            }
            for no in (1..=n).filter(|x| matches!(sim.role(*x), Some(Role::Refused(_)))) {
                everywhere.extend(sim.names(no));
            }
            let lost: Vec<&String> = sim
                .acked
                .iter()
                .filter(|a| !everywhere.contains(*a))
                .collect();
            assert!(
                lost.is_empty(),
                "seed {seed}: acknowledged writes vanished: {lost:?}\n{}\n{}",
                sim.describe(),
                sim.trace.join("\n")
            );
        }
    }
}
