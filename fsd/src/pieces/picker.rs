//! Which piece to request from which peer: a pure function of a snapshot.
//!
//! The swarm's scheduling step (`swarm.rs`) calls [`pick`] at the end of
//! every transition that can free a request slot or add work (a read
//! waiting, a piece verified or failed, a peer joining, leaving, offering a
//! piece or refusing one, a `Busy` deferral expiring); never on a timer. It
//! passes what we have, what we want, what a reader is blocked on, and for
//! every connected peer its bitfield, free request slots, requests in flight
//! and recent rate. [`pick`] returns the requests to send. Nothing here does
//! I/O, reads a clock or draws random numbers.
//!
//! # Rules
//! 1. **Only useful requests**: each is for a piece we lack and want (or
//!    that is urgent), from a peer that has it and was not asked for it
//!    already, within that peer's free slots.
//! 2. **Urgent pieces first**, in the caller's order (the piece a read is
//!    blocked on, then the read-ahead), those nobody is fetching yet. Each
//!    goes to the peer expected to deliver it soonest: the smallest
//!    `(queued + 1) / rate`, where `queued` counts its requests in flight
//!    including those handed out by this call. Queues grow as pieces are
//!    handed out, so consecutive urgent pieces land on different peers when
//!    rates are similar: a sequential read pulls from all peers.
//! 3. **Rarest first**: the other wanted pieces nobody is fetching, ordered by
//!    availability (how many connected peers have them), ties broken by a hash
//!    of `(seed, piece)`. Rare pieces are fetched while their few holders are
//!    still around, and since every daemon has its own seed, two daemons
//!    reading the same file fetch *different* pieces first and soon have
//!    something to trade. Each piece goes to a holder with a free slot,
//!    preferring a *starved* peer (one with at least as many free slots as
//!    unassigned pieces it could serve, which would idle if another peer took
//!    this one), then the soonest finisher as in rule 2.
//! 4. **No idle slot beside unclaimed work**: every wanted piece nobody is
//!    fetching is offered to every holder with a free slot, so no peer is
//!    left with a free slot while it has such a piece.
//! 5. **End game**: once every wanted missing piece that some peer has is in
//!    flight, free slots ask further peers for *late* pieces already in
//!    flight (the caller says which are late), up to `max_duplicates` peers
//!    per piece: urgent pieces first, then those with the fewest copies in
//!    flight, then the oldest (earliest position in some peer's
//!    `in_flight`). The last pieces then do not hang on one slow peer, and
//!    pieces on their way are not fetched twice. When a copy arrives,
//!    [`cancellations`] lists the requests to cancel.
//!
//! 6. **Seeds last**: a peer that has every piece (a seed, usually the
//!    file's source) is asked for a piece that a peer without every piece
//!    offers only when no such peer has a free slot, in every rule above.
//!    A seed's upload is the swarm's scarcest: it should carry the pieces
//!    nobody else has, and readers should fetch the rest from each other.
//!    What it gets asked beyond that, it serves only while it has nothing
//!    fresher to send (`net/upload_scheduler.rs`): a seed with upload to
//!    spare still speeds the swarm up.
//!
//! An urgent piece already in flight is only duplicated in the end game.
//! Nothing times a request out: one stuck on a slow peer stays in flight
//! until that peer answers it, its link ends (a peer silent for the link's
//! read timeout, `fetch.rs`, is dropped and its requests return to the
//! pool), or a copy from another peer arrives.
//!
//! # Cost
//! With `N` pieces, `P` peers and `F` requests in flight (input and output):
//! O(N·P) to count availability and hand out pieces, O(N log N) to sort,
//! O(min(D, P)·F·P) for the end game (`D = max_duplicates`); O(N·P/8) bytes
//! of per-peer in-flight bitfields. Never O(N²).

use fileshare_protocol::Bitfield;

/// What the picker needs to know about one connected peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerView<'a> {
    /// Pieces this peer offers (verified there).
    pub have: &'a Bitfield,
    /// It has every piece (a seed, such as the file's source): asked only
    /// for what no other peer offers (rule 6).
    pub complete: bool,
    /// How many more requests we may send it now.
    pub free_slots: u32,
    /// Pieces currently requested from this peer, oldest request first.
    pub in_flight: &'a [u32],
    /// Recent throughput estimate in bytes/s; 0 (or not finite) = unknown,
    /// then taken as the mean of the known rates.
    pub rate: f64,
}

/// A snapshot of one file's download state.
#[derive(Debug, Clone, Copy)]
pub struct PickInput<'a> {
    pub num_pieces: u32,
    /// Pieces we have verified.
    pub have: &'a Bitfield,
    /// Pieces we want at all: the whole file for a download, read-ahead
    /// windows for a mount. Urgent pieces count as wanted.
    pub wanted: &'a Bitfield,
    /// Pieces a reader is blocked on or about to need, most urgent first.
    pub urgent: &'a [u32],
    /// The index in this slice is the peer id in [`Request::peer`].
    pub peers: &'a [PeerView<'a>],
    /// Tie-break seed, different per daemon, so that different daemons
    /// fetch different equally rare pieces.
    pub seed: u64,
    /// End game: how many peers may have the same piece in flight at once.
    /// 0 and 1 both mean no duplicates.
    pub max_duplicates: u32,
    /// Pieces in flight for long enough to be asked of another peer too.
    pub late: &'a Bitfield,
}

/// Ask peer `peers[peer]` for `piece`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Request {
    pub peer: usize,
    pub piece: u32,
}

/// The requests to send now, in the order to send them (urgent first).
/// See the module documentation for the rules.
pub fn pick(input: &PickInput) -> Vec<Request> {
    let mut s = State::new(input);
    s.urgent_first();
    if s.rarest_first() {
        s.end_game();
    }
    s.out
}

/// When `piece` has been verified (delivered by `done_by`), the requests for
/// it still in flight to other peers, to cancel. O(F).
pub fn cancellations(piece: u32, done_by: usize, peers: &[PeerView]) -> Vec<Request> {
    peers
        .iter()
        .enumerate()
        .filter(|&(i, v)| i != done_by && v.in_flight.contains(&piece))
        .map(|(peer, _)| Request { peer, piece })
        .collect()
}

/// A splitmix64 hash of `(seed, piece)`: a per-daemon pseudo-random order.
fn tie_break(seed: u64, piece: u32) -> u64 {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut z = (seed ^ u64::from(piece).wrapping_mul(GOLDEN)).wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Working state of one [`pick`] call.
struct State<'i, 'a> {
    input: &'i PickInput<'a>,
    /// Indexed by piece: we lack it and want it (or it is urgent).
    want: Vec<bool>,
    /// Urgent pieces in order, deduplicated, in range.
    urgent: Vec<u32>,
    /// Indexed by piece: urgent.
    is_urgent: Vec<bool>,
    /// Indexed by piece: distinct peers it is in flight to (input + output).
    copies: Vec<usize>,
    /// Indexed by piece: smallest position in any peer's `in_flight`.
    age: Vec<usize>,
    /// Per peer: pieces in flight to it (input + output).
    asked: Vec<Bitfield>,
    /// Per peer: free slots left, and their sum.
    slots: Vec<u32>,
    slots_total: u64,
    /// Per peer: requests queued (input + output).
    queued: Vec<usize>,
    /// Per peer: rate, unknown ones replaced by the mean of known ones.
    rate: Vec<f64>,
    /// Indexed by piece: some peer without every piece offers it (rule 6).
    partial_has: Vec<bool>,
    out: Vec<Request>,
}

impl<'i, 'a> State<'i, 'a> {
    fn new(input: &'i PickInput<'a>) -> Self {
        let n = input.num_pieces;
        let len = n as usize;
        let mut is_urgent = vec![false; len];
        let urgent = (input.urgent.iter().copied())
            .filter(|&p| p < n && !std::mem::replace(&mut is_urgent[p as usize], true))
            .collect();
        let want = (0..n)
            .map(|p| !input.have.get(p) && (input.wanted.get(p) || is_urgent[p as usize]))
            .collect();
        let mut copies = vec![0; len];
        let mut age = vec![usize::MAX; len];
        let mut asked = Vec::with_capacity(input.peers.len());
        for v in input.peers {
            let mut a = Bitfield::new(n);
            for (pos, &p) in v.in_flight.iter().enumerate().filter(|&(_, &p)| p < n) {
                let p_us = p as usize;
                age[p_us] = age[p_us].min(pos);
                if !a.get(p) {
                    a.set(p);
                    copies[p_us] += 1;
                }
            }
            asked.push(a);
        }
        let known = |r: &f64| r.is_finite() && *r > 0.0;
        let rates = || input.peers.iter().map(|v| v.rate).filter(known);
        let default_rate = match rates().count() {
            0 => 1.0,
            k => rates().sum::<f64>() / k as f64,
        };
        let rate = (input.peers.iter())
            .map(|v| Some(v.rate).filter(known).unwrap_or(default_rate))
            .collect();
        let slots: Vec<u32> = input.peers.iter().map(|v| v.free_slots).collect();
        let partial: Vec<&PeerView> = input.peers.iter().filter(|v| !v.complete).collect();
        let partial_has = (0..n)
            .map(|p| partial.iter().any(|v| v.have.get(p)))
            .collect();
        State {
            input,
            want,
            urgent,
            is_urgent,
            copies,
            age,
            asked,
            slots_total: slots.iter().map(|&s| u64::from(s)).sum(),
            slots,
            queued: input.peers.iter().map(|v| v.in_flight.len()).collect(),
            rate,
            partial_has,
            out: Vec::new(),
        }
    }

    /// Rule 6: `peer` is a seed and another peer offers `piece`.
    fn shunned(&self, peer: usize, piece: u32) -> bool {
        self.input.peers[peer].complete && self.partial_has[piece as usize]
    }

    /// Expected time until `peer` would deliver one more piece, in
    /// piece-lengths per byte/s: smaller is sooner.
    fn eta(&self, peer: usize) -> f64 {
        (self.queued[peer] + 1) as f64 / self.rate[peer]
    }

    /// The peer to ask for `piece`: it has it, has a free slot and is not
    /// already asked for it. Minimises `(shunned, penalised(peer), eta)`
    /// (rule 6 first), then prefers more free slots, then the lower index.
    /// O(P).
    fn best_peer(&self, piece: u32, penalised: impl Fn(usize) -> bool) -> Option<usize> {
        let shunned = |i: usize| self.shunned(i, piece);
        (0..self.input.peers.len())
            .filter(|&i| {
                self.slots[i] > 0
                    && self.input.peers[i].have.get(piece)
                    && !self.asked[i].get(piece)
            })
            .min_by(|&a, &b| {
                (shunned(a).cmp(&shunned(b)))
                    .then(penalised(a).cmp(&penalised(b)))
                    .then(self.eta(a).total_cmp(&self.eta(b)))
                    .then(self.slots[b].cmp(&self.slots[a]))
                    .then(a.cmp(&b))
            })
    }

    fn assign(&mut self, peer: usize, piece: u32) {
        self.asked[peer].set(piece);
        self.copies[piece as usize] += 1;
        self.slots[peer] -= 1;
        self.slots_total -= 1;
        self.queued[peer] += 1;
        self.out.push(Request { peer, piece });
    }

    /// Rule 2: urgent pieces nobody is fetching, in the given order.
    fn urgent_first(&mut self) {
        for k in 0..self.urgent.len() {
            let p = self.urgent[k];
            if self.want[p as usize] && self.copies[p as usize] == 0 {
                if let Some(i) = self.best_peer(p, |_| false) {
                    self.assign(i, p);
                }
            }
        }
    }

    /// Rules 3 and 4: every other wanted piece nobody is fetching, rarest
    /// first. Returns whether every such piece that some peer has is now in
    /// flight (the end game condition).
    fn rarest_first(&mut self) -> bool {
        let peers = self.input.peers;
        let mut avail = vec![0usize; self.want.len()];
        let mut candidates = Vec::new();
        for p in 0..self.input.num_pieces {
            let p_us = p as usize;
            if self.want[p_us] && self.copies[p_us] == 0 {
                avail[p_us] = peers.iter().filter(|v| v.have.get(p)).count();
                if avail[p_us] > 0 {
                    candidates.push(p);
                }
            }
        }
        let seed = self.input.seed;
        candidates.sort_unstable_by_key(|&p| (avail[p as usize], tie_break(seed, p)));
        // Per peer: candidates it has that are not handed out yet.
        let mut open = vec![0u32; peers.len()];
        for &p in &candidates {
            for (i, o) in open.iter_mut().enumerate() {
                *o += u32::from(peers[i].have.get(p));
            }
        }
        let mut complete = true;
        for &p in &candidates {
            if self.slots_total == 0 {
                return false;
            }
            let slots = &self.slots;
            // Not starved (more open pieces than free slots): penalised.
            let best = self.best_peer(p, |i| open[i] > slots[i]);
            for (i, o) in open.iter_mut().enumerate() {
                *o -= u32::from(peers[i].have.get(p));
            }
            match best {
                Some(i) => self.assign(i, p),
                None => complete = false,
            }
        }
        complete
    }

    /// Rule 5: duplicate pieces in flight onto peers with free slots.
    fn end_game(&mut self) {
        let max = self.input.max_duplicates as usize;
        if max <= 1 || self.slots_total == 0 {
            return;
        }
        let late = self.input.late;
        let eligible = |s: &Self, p: u32| {
            let i = p as usize;
            s.want[i] && s.copies[i] >= 1 && s.copies[i] < max && late.get(p)
        };
        let mut order: Vec<u32> = (self.urgent.iter().copied())
            .filter(|&p| eligible(self, p))
            .collect();
        let seed = self.input.seed;
        let mut rest: Vec<u32> = (0..self.input.num_pieces)
            .filter(|&p| !self.is_urgent[p as usize] && eligible(self, p))
            .collect();
        rest.sort_unstable_by_key(|&p| {
            let p_us = p as usize;
            (self.copies[p_us], self.age[p_us], tie_break(seed, p))
        });
        order.extend(rest);
        // Each round gives each piece at most one more copy, so copies
        // spread evenly; at most min(max, P) rounds make progress.
        let mut progress = true;
        while progress && self.slots_total > 0 {
            progress = false;
            for &p in &order {
                if self.copies[p as usize] < max {
                    if let Some(i) = self.best_peer(p, |_| false) {
                        self.assign(i, p);
                        progress = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
                })
                .collect()
        }

        /// Runs the picker, checks every invariant, returns the requests.
        fn run(&self) -> Vec<Request> {
            let views = self.views();
            let input = PickInput {
                num_pieces: self.n,
                have: &self.have,
                wanted: &self.wanted,
                urgent: &self.urgent,
                peers: &views,
                seed: self.seed,
                max_duplicates: self.max_duplicates,
                late: &self.late,
            };
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
                if !v.complete && v.have.get(r.piece) {
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
        (0u8..=100, bytes)
            .prop_map(move |(d, b)| bf(n, (0..n).filter(|&i| b[i as usize] % 100 < d)))
    }

    fn arb_case() -> impl Strategy<Value = Case> {
        (1u32..300, 1usize..=8)
            .prop_flat_map(|(n, np)| {
                let rate = prop_oneof![Just(0.0), 1.0..1e7f64];
                let in_flight = prop::collection::vec(0..n, 0..6);
                let have = prop_oneof![arb_bits(n), Just(Bitfield::full(n))];
                let peer = (have, 0u32..6, in_flight, rate, any::<bool>()).prop_map(
                    |(have, slots, in_flight, rate, seed)| Peer {
                        complete: seed && have.is_full(),
                        have,
                        slots,
                        in_flight,
                        rate,
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
}
