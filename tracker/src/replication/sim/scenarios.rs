//! The scenarios the replication core is tested on: start-up, failures
//! and restarts of leaders and followers, partitions, pauses, lossy links,
//! and randomized crashes and partitions, each checked for lost
//! acknowledgements and diverging logs.

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
