//! The picker's rules as properties and examples (each test names the rule
//! it checks).

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

fn bf(n: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
    let mut b = Bitfield::new(n);
    for i in ones {
        b.set(i);
    }
    b
}

#[derive(Debug, Clone)]
struct Peer {
    have: Bitfield,
    complete: bool,
    slots: u32,
    in_flight: Vec<u32>,
    rate: f64,
    choked: bool,
}

/// A peer that is not a seed (whatever it has).
fn peer(have: Bitfield, slots: u32) -> Peer {
    let in_flight = Vec::new();
    Peer {
        have,
        complete: false,
        slots,
        in_flight,
        rate: 0.0,
        choked: false,
    }
}

/// A seed: every piece, and it says so.
fn seed(n: u32, slots: u32) -> Peer {
    Peer {
        complete: true,
        ..full(n, slots)
    }
}

fn full(n: u32, slots: u32) -> Peer {
    peer(Bitfield::full(n), slots)
}

#[derive(Debug, Clone)]
struct Case {
    n: u32,
    have: Bitfield,
    wanted: Bitfield,
    urgent: Vec<u32>,
    peers: Vec<Peer>,
    seed: u64,
    max_duplicates: u32,
    late: Bitfield,
}

impl Case {
    /// Want everything, have nothing, no urgency, no duplicates.
    fn new(n: u32, peers: Vec<Peer>) -> Self {
        Case {
            n,
            have: Bitfield::new(n),
            wanted: Bitfield::full(n),
            urgent: Vec::new(),
            peers,
            seed: 7,
            max_duplicates: 1,
            late: Bitfield::full(n),
        }
    }

    fn views(&self) -> Vec<PeerView<'_>> {
        self.peers
            .iter()
            .map(|p| PeerView {
                have: &p.have,
                complete: p.complete,
                free_slots: p.slots,
                in_flight: &p.in_flight,
                rate: p.rate,
                choked: p.choked,
            })
            .collect()
    }

    /// The picker's input for this case, with the peers' `views`.
    fn input<'a>(&'a self, views: &'a [PeerView<'a>]) -> PickInput<'a> {
        PickInput {
            num_pieces: self.n,
            have: &self.have,
            wanted: &self.wanted,
            urgent: &self.urgent,
            peers: views,
            seed: self.seed,
            max_duplicates: self.max_duplicates,
            late: &self.late,
        }
    }

    /// Runs the picker, checks every invariant, returns the requests.
    fn run(&self) -> Vec<Request> {
        let views = self.views();
        let input = self.input(&views);
        let out = pick(&input);
        assert_eq!(out, pick(&input), "not deterministic");
        check(self, &out);
        out
    }
}

/// Rules 1, 4 and 5 as properties of one call's output.
fn check(c: &Case, out: &[Request]) {
    let want = |p: u32| p < c.n && !c.have.get(p) && (c.wanted.get(p) || c.urgent.contains(&p));
    let mut pairs: HashSet<(usize, u32)> = HashSet::new();
    for (i, v) in c.peers.iter().enumerate() {
        pairs.extend(v.in_flight.iter().map(|&p| (i, p)));
    }
    let mut used = vec![0u32; c.peers.len()];
    for r in out {
        let v = &c.peers[r.peer];
        assert!(want(r.piece), "{r:?}: not wanted or already had");
        assert!(v.have.get(r.piece), "{r:?}: peer lacks it");
        assert!(pairs.insert((r.peer, r.piece)), "{r:?}: already asked");
        used[r.peer] += 1;
        assert!(used[r.peer] <= v.slots, "{r:?}: over free_slots");
    }
    let mut count = vec![0usize; c.n as usize];
    for &(_, p) in pairs.iter().filter(|&&(_, p)| p < c.n) {
        count[p as usize] += 1;
    }
    let copies = |p: u32| count[p as usize];
    let max = c.max_duplicates.max(1) as usize;
    for r in out {
        assert!(copies(r.piece) <= max, "{r:?}: too many copies");
    }
    // No peer with a free slot left while it has work it could do.
    let fetchable: Vec<u32> = (0..c.n)
        .filter(|&p| want(p) && c.peers.iter().any(|v| v.have.get(p)))
        .collect();
    let end_game = fetchable.iter().all(|&p| copies(p) > 0);
    // Rule 6: a seed is asked for what a non-seed offers only when
    // every such peer is busy (no free slot left) or asked already.
    for r in out.iter().filter(|r| c.peers[r.peer].complete) {
        for (i, v) in c.peers.iter().enumerate() {
            if !v.complete && !v.choked && v.have.get(r.piece) {
                let busy = used[i] == v.slots || pairs.contains(&(i, r.piece));
                assert!(busy, "{r:?}: asked of a seed while peer {i} could serve it");
            }
        }
    }
    for (i, v) in c.peers.iter().enumerate() {
        if used[i] == v.slots {
            continue;
        }
        for &p in fetchable.iter().filter(|&&p| v.have.get(p)) {
            assert!(copies(p) > 0, "peer {i} idle, piece {p} unrequested");
            if end_game && !pairs.contains(&(i, p)) && c.late.get(p) {
                assert!(copies(p) >= max, "end game: peer {i} idle, could dup {p}");
            }
        }
    }
}

fn pieces_of(out: &[Request]) -> Vec<u32> {
    out.iter().map(|r| r.piece).collect()
}

/// Rule 3.
#[test]
fn rarest_first() {
    // Availability: piece 0 → 4 peers, 1 → 3, 2 → 2, 3 → 3.
    let n = 4;
    let mut c = Case::new(n, vec![full(n, 0), peer(bf(n, [0, 1, 3]), 0)]);
    c.peers.extend([peer(bf(n, [0]), 0), full(n, 4)]);
    let out = c.run();
    assert_eq!(out[0].piece, 2);
    let mid: HashSet<u32> = pieces_of(&out[1..3]).into_iter().collect();
    assert_eq!(mid, HashSet::from([1, 3]));
    assert_eq!(out[3].piece, 0);
    // With one slot, only the rarest is asked for.
    c.peers[3].slots = 1;
    assert_eq!(pieces_of(&c.run()), vec![2]);
}

/// Rule 2, before rule 3.
#[test]
fn urgent_first_in_given_order() {
    let n = 20;
    // Piece 3 is the rarest (one holder), yet urgent pieces come first.
    let mut c = Case::new(n, vec![full(n, 5)]);
    c.peers.push(peer(bf(n, (0..n).filter(|&p| p != 3)), 0));
    c.urgent = vec![12, 5, 17];
    let out = c.run();
    assert_eq!(out.len(), 5);
    assert_eq!(pieces_of(&out[..4]), vec![12, 5, 17, 3]);
}

/// Rule 2: queues grow as pieces are handed out.
#[test]
fn urgent_pieces_spread_over_peers() {
    let n = 16;
    let mut c = Case::new(n, vec![full(n, 8); 4]);
    c.wanted = Bitfield::new(n);
    c.urgent = (0..8).collect();
    for (i, p) in c.peers.iter_mut().enumerate() {
        p.rate = 1e6 + i as f64 * 1e4; // similar rates
    }
    let out = c.run();
    assert_eq!(out.len(), 8);
    let first: HashSet<usize> = out[..4].iter().map(|r| r.peer).collect();
    assert_eq!(first.len(), 4, "{out:?}");
    for i in 0..4 {
        assert_eq!(out.iter().filter(|r| r.peer == i).count(), 2);
    }
}

/// Rule 2: the soonest finisher.
#[test]
fn urgent_prefers_faster_and_less_loaded_peer() {
    let n = 4;
    let mut c = Case::new(n, vec![full(n, 4), full(n, 4)]);
    c.wanted = Bitfield::new(n);
    c.urgent = vec![2];
    c.peers[1].rate = 5e6;
    c.peers[0].rate = 1e6;
    assert_eq!(c.run(), vec![Request { peer: 1, piece: 2 }]);
    // Peer 1 has 3 requests queued at 1.5 MB/s: peer 0 is now sooner.
    c.peers[1].in_flight = vec![0, 1, 3];
    c.peers[1].rate = 1.5e6;
    assert_eq!(c.run(), vec![Request { peer: 0, piece: 2 }]);
}

/// Rule 1.
#[test]
fn never_requests_a_piece_we_have() {
    let n = 10;
    let mut c = Case::new(n, vec![full(n, 10)]);
    c.have = bf(n, [0, 2, 4, 6, 8]);
    c.urgent = vec![2, 3];
    let mut got = pieces_of(&c.run());
    got.sort_unstable();
    assert_eq!(got, vec![1, 3, 5, 7, 9]);
}

/// Rule 1.
#[test]
fn nothing_from_a_peer_lacking_it() {
    let n = 6;
    let c = Case::new(n, vec![peer(bf(n, [0, 1]), 10), peer(bf(n, [4]), 10)]);
    let out = c.run();
    assert_eq!(out.len(), 3);
    for r in out {
        assert_eq!(r.peer, usize::from(r.piece == 4));
    }
}

/// Rule 1, also in the end game.
#[test]
fn no_duplicate_piece_to_one_peer() {
    let n = 5;
    let mut c = Case::new(n, vec![full(n, 10)]);
    c.peers[0].in_flight = vec![1, 3];
    c.max_duplicates = 3;
    c.urgent = vec![1, 1, 0, 0];
    let mut got = pieces_of(&c.run());
    got.sort_unstable();
    assert_eq!(got, vec![0, 2, 4]);
}

/// Rule 1.
#[test]
fn free_slots_respected() {
    let n = 50;
    let c = Case::new(n, vec![full(n, 3), full(n, 0)]);
    let out = c.run();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|r| r.peer == 0));
}

/// Rule 3: ties broken per daemon.
#[test]
fn seeds_give_different_orders_for_equally_rare_pieces() {
    let n = 64;
    let mut c = Case::new(n, vec![full(n, 8)]);
    let a = pieces_of(&c.run());
    c.seed = 8;
    let b = pieces_of(&c.run());
    assert_ne!(a, b);
    let overlap = a.iter().filter(|p| b.contains(p)).count();
    assert!(overlap < 4, "seeds 7 and 8 overlap in {overlap} of 8");
    assert!(a.windows(2).any(|w| w[0] > w[1]), "not shuffled: {a:?}");
}

/// Rule 3: with only seeds, a reader's window comes in reading order,
/// from where it waits, spread over the seeds, whatever the daemon's seed.
#[test]
fn only_seeds_give_a_readers_window_in_order_from_where_it_waits() {
    let n = 64;
    for seed_value in [7, 8, 9, 1234] {
        let mut c = Case::new(n, vec![seed(n, 3), seed(n, 3), seed(n, 3)]);
        c.seed = seed_value;
        c.wanted = bf(n, 20..40);
        c.urgent = vec![20];
        let out = c.run();
        assert_eq!(pieces_of(&out), (20..29).collect::<Vec<u32>>());
        // Each seed gets every third piece: all of them at once.
        for i in 0..3 {
            assert_eq!(out.iter().filter(|r| r.peer == i).count(), 3);
        }
    }
}

/// Rule 3: with only seeds, in order from a point of the daemon's own.
#[test]
fn only_seeds_give_pieces_in_order_from_a_point_of_each_daemon() {
    let n = 64;
    let mut c = Case::new(n, vec![seed(n, 4), seed(n, 4)]);
    let runs = |c: &Case| {
        let mut out = pieces_of(&c.run());
        out.sort_unstable();
        out
    };
    let a = runs(&c);
    assert_eq!(a.len(), 8);
    // Eight consecutive pieces (wrapping around the end).
    let start = *a
        .iter()
        .find(|&&p| !a.contains(&((p + n - 1) % n)))
        .expect("a first piece");
    let want: Vec<u32> = {
        let mut v: Vec<u32> = (0..8).map(|k| (start + k) % n).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(a, want);
    c.seed = 8;
    let b = runs(&c);
    let overlap = a.iter().filter(|p| b.contains(p)).count();
    assert!(overlap < 4, "seeds 7 and 8 overlap in {overlap} of 8");
}

/// Rules 3 and 4: a starved peer is preferred.
#[test]
fn sole_source_peer_gets_its_piece() {
    // Piece 0 is on peers 0 and 1; peer 1 has nothing else to do, peer 0
    // (faster) has pieces 1 and 2 too, which nobody else can serve now.
    let n = 3;
    let mut c = Case::new(n, vec![full(n, 2), peer(bf(n, [0]), 1)]);
    c.peers.extend([peer(bf(n, [1]), 0), peer(bf(n, [2]), 0)]);
    c.peers[0].rate = 1e7;
    c.peers[1].rate = 1e5;
    for seed in 0..16 {
        c.seed = seed;
        let mut out = c.run();
        out.sort_unstable();
        let want = [(0, 1), (0, 2), (1, 0)].map(|(peer, piece)| Request { peer, piece });
        assert_eq!(out, want);
    }
}

/// Rule 6.
#[test]
fn seeds_carry_what_nobody_else_offers_first() {
    let n = 8;
    // Peer 0 is the seed; peer 1 has pieces 0..4.
    let mut c = Case::new(n, vec![seed(n, 8), peer(bf(n, 0..4), 8)]);
    c.peers[0].rate = 1e9;
    c.peers[1].rate = 1.0;
    let out = c.run();
    for r in &out {
        assert_eq!(r.peer, usize::from(r.piece < 4), "{r:?}");
    }
    assert_eq!(out.len(), 8);
    // With two free slots at peer 1, the seed gets the other two.
    c.peers[1].slots = 2;
    let from_seed: Vec<u32> = (c.run().iter())
        .filter(|r| r.peer == 0)
        .map(|r| r.piece)
        .collect();
    assert_eq!(from_seed.iter().filter(|&&p| p < 4).count(), 2);
    // Urgent pieces too: the seed is the last choice, not none.
    c.urgent = vec![2];
    c.peers[1].slots = 0;
    assert_eq!(c.run()[0], Request { peer: 0, piece: 2 });
    c.peers[1].slots = 1;
    assert_eq!(c.run()[0], Request { peer: 1, piece: 2 });
    // A peer with every piece that does not say so is no seed.
    let mut c = Case::new(n, vec![full(n, 8), seed(n, 8)]);
    c.peers[0].rate = 1.0;
    c.peers[1].rate = 1e9;
    assert!(c.run().iter().all(|r| r.peer == 0));
}

/// Rule 5, and [`cancellations`].
#[test]
fn end_game_duplicates_then_cancels() {
    let n = 4;
    let mut c = Case::new(n, vec![full(n, 0), full(n, 3)]);
    c.have = bf(n, [0]);
    c.max_duplicates = 2;
    // Not end game while piece 2 has no request: with one free slot,
    // only it is asked for.
    c.peers[0].in_flight = vec![3, 1];
    c.peers[1].slots = 1;
    assert_eq!(c.run(), vec![Request { peer: 1, piece: 2 }]);
    c.peers[1].slots = 3;
    // Everything in flight: duplicate, urgent first, then oldest.
    c.peers[0].in_flight = vec![3, 1, 2];
    c.urgent = vec![2];
    let out = c.run();
    assert_eq!(pieces_of(&out), vec![2, 3, 1]);
    assert!(out.iter().all(|r| r.peer == 1));
    // Limited to max_duplicates: nothing more once both peers have all.
    let mut after = c.clone();
    after.peers[1].in_flight = pieces_of(&out);
    assert!(after.run().is_empty());
    // Piece 3 arrives from peer 1: cancel it at peer 0, not at peer 1.
    let views = after.views();
    assert_eq!(
        cancellations(3, 1, &views),
        vec![Request { peer: 0, piece: 3 }]
    );
    assert!(cancellations(0, 1, &views).is_empty());
    // Without duplicates allowed, the end game does nothing; nor for
    // pieces that are not late.
    c.max_duplicates = 1;
    assert!(c.run().is_empty());
    c.max_duplicates = 2;
    c.late = bf(n, [1]);
    assert_eq!(c.run(), vec![Request { peer: 1, piece: 1 }]);
}

/// Rule 5: pieces no peer has do not hold the end game back.
#[test]
fn end_game_is_not_blocked_by_a_piece_nobody_has() {
    let n = 3;
    let mut c = Case::new(n, vec![peer(bf(n, [0, 1]), 0), peer(bf(n, [0, 1]), 1)]);
    c.peers[0].in_flight = vec![0, 1];
    c.max_duplicates = 2;
    assert_eq!(c.run(), vec![Request { peer: 1, piece: 0 }]);
}

/// Rule 1: urgent pieces count as wanted.
#[test]
fn nothing_requested_when_nothing_wanted() {
    let n = 10;
    let mut c = Case::new(n, vec![full(n, 10)]);
    c.wanted = Bitfield::new(n);
    c.max_duplicates = 2;
    assert!(c.run().is_empty());
    // Urgent pieces count as wanted (duplicates and out of range ignored).
    c.urgent = vec![6, 6, 99];
    assert_eq!(c.run(), vec![Request { peer: 0, piece: 6 }]);
    c.wanted = Bitfield::full(n);
    c.have = Bitfield::full(n);
    c.urgent = vec![1, 2];
    assert!(c.run().is_empty());
    let empty = Case::new(0, vec![]);
    assert!(empty.run().is_empty());
}

#[test]
fn scales_to_many_pieces_and_peers() {
    let n = 4096;
    let peers = (0..32u32)
        .map(|i| peer(bf(n, (0..n).filter(|p| (p + i) % 3 != 0)), 16))
        .collect();
    let c = Case::new(n, peers);
    assert_eq!(c.run().len(), 32 * 16);
}

/// A bitfield with a random density of random bits.
fn arb_bits(n: u32) -> impl Strategy<Value = Bitfield> {
    let bytes = prop::collection::vec(any::<u8>(), n as usize);
    (0u8..=100, bytes).prop_map(move |(d, b)| bf(n, (0..n).filter(|&i| b[i as usize] % 100 < d)))
}

fn arb_case() -> impl Strategy<Value = Case> {
    (1u32..300, 1usize..=8)
        .prop_flat_map(|(n, np)| {
            let rate = prop_oneof![Just(0.0), 1.0..1e7f64];
            let in_flight = prop::collection::vec(0..n, 0..6);
            let have = prop_oneof![arb_bits(n), Just(Bitfield::full(n))];
            let flags = (any::<bool>(), prop::bool::weighted(0.2));
            let peer = (have, 0u32..6, in_flight, rate, flags).prop_map(
                |(have, slots, mut in_flight, rate, (seed, choked))| {
                    // A queue holds a piece once: the swarm never asks one
                    // peer twice for the same piece.
                    let mut seen = std::collections::HashSet::new();
                    in_flight.retain(|p| seen.insert(*p));
                    Peer {
                        complete: seed && have.is_full(),
                        have,
                        slots,
                        in_flight,
                        rate,
                        choked,
                    }
                },
            );
            let urgent = prop::collection::vec(0..n + 3, 0..8);
            let peers = prop::collection::vec(peer, np);
            let rest = (any::<u64>(), 0u32..4, any::<bool>());
            let bits = (arb_bits(n), arb_bits(n), arb_bits(n));
            (Just(n), bits, urgent, peers, rest)
        })
        .prop_map(
            |(n, (have, wanted, late), urgent, peers, (seed, max_duplicates, saturate))| {
                let mut c = Case {
                    n,
                    have,
                    wanted,
                    urgent,
                    peers,
                    seed,
                    max_duplicates,
                    late,
                };
                if saturate {
                    // Every fetchable wanted piece in flight somewhere: end game.
                    for p in (0..n).filter(|&p| !c.have.get(p) && c.wanted.get(p)) {
                        if let Some(v) = c.peers.iter_mut().find(|v| v.have.get(p)) {
                            if !v.in_flight.contains(&p) {
                                v.in_flight.push(p);
                            }
                        }
                    }
                }
                c
            },
        )
}

proptest! {
    /// Rules 1, 4 and 5 (checked by every `run`), and [`cancellations`].
    #[test]
    fn invariants_hold(c in arb_case()) {
        let out = c.run();
        // Once sent, a delivery cancels exactly the other copies.
        let mut sent = c.clone();
        for r in &out {
            sent.peers[r.peer].in_flight.push(r.piece);
        }
        let views = sent.views();
        for r in &out {
            let cancel = cancellations(r.piece, r.peer, &views);
            let copies = views.iter().filter(|v| v.in_flight.contains(&r.piece)).count();
            prop_assert_eq!(cancel.len(), copies - 1);
            prop_assert!(cancel.iter().all(|x| x.peer != r.peer && x.piece == r.piece));
        }
    }
}

/// Runs [`moves`] on a case and checks rule 7's invariants.
fn run_moves(c: &Case) -> Vec<Move> {
    let views = c.views();
    let input = c.input(&views);
    let out = moves(&input);
    assert_eq!(out, moves(&input), "not deterministic");
    let mut taken = vec![0u32; c.peers.len()];
    for m in &out {
        let (from, to) = (&c.peers[m.from], &c.peers[m.to]);
        let pos = (from.in_flight.iter().position(|&p| p == m.piece))
            .unwrap_or_else(|| panic!("{m:?}: not in flight there"));
        assert!(pos >= MOVE_FROM, "{m:?}: may be on its way already");
        assert!(to.have.get(m.piece) && !to.in_flight.contains(&m.piece));
        assert!(from.rate > 0.0 && to.rate > 0.0, "{m:?}: rate unknown");
        taken[m.to] += 1;
        assert!(taken[m.to] <= to.slots, "{m:?}: over free_slots");
        let moved_to = (out.iter()).filter(|n| n.piece == m.piece).count();
        assert_eq!(moved_to, 1, "{m:?}: moved twice");
    }
    out
}

/// Rule 7: at the end, a peer about to idle takes over the tail of a long
/// queue, once per piece, never its head.
#[test]
fn an_idle_peer_takes_over_the_tail_of_a_long_queue() {
    let n = 8;
    let mut long = seed(n, 0);
    long.in_flight = vec![0, 1, 2, 3, 4, 5];
    long.rate = 1e6;
    let mut idle = seed(n, 4);
    idle.rate = 1e6;
    let mut c = Case::new(n, vec![long, idle]);
    c.wanted = bf(n, 0..6);
    let got = run_moves(&c);
    // The idle peer takes the last piece, then the one before: two in
    // flight, it idles no more.
    let moved: Vec<(usize, usize, u32)> = got.iter().map(|m| (m.from, m.to, m.piece)).collect();
    assert_eq!(moved, vec![(0, 1, 5), (0, 1, 4)]);
    // Not while wanted pieces wait for a request: rule 4 gives those out.
    let mut c2 = c.clone();
    c2.peers[0].in_flight.pop();
    assert!(run_moves(&c2).is_empty());
    // Not to a peer much slower than the one it would take from.
    let mut c3 = c.clone();
    c3.peers[1].rate = 1e5;
    assert!(run_moves(&c3).is_empty());
    // Not to a seed when another peer offers the piece (rule 6).
    let mut c4 = c.clone();
    c4.peers[0].complete = false;
    assert!(run_moves(&c4).is_empty());
}

proptest! {
    /// Rule 7's invariants on arbitrary cases.
    #[test]
    fn moves_are_sound(c in arb_case()) {
        run_moves(&c);
    }
}
