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
//!    something to trade. When every connected peer is a seed (a lone
//!    `download-file`, or a reader that has found only the source so far)
//!    there is nothing to trade yet and every piece is equally rare: pieces
//!    go in order, starting at the first urgent piece (where a reader
//!    waits: its read-ahead then comes in the order it is read) or else at
//!    a point drawn from the seed, and wrapping around, so a seed's disk
//!    reads run on sequentially (the kernel's
//!    read-ahead then serves them, where a shuffled order makes each seed
//!    read about twice what it sends) while two daemons still start apart. Each piece goes to a holder with a free slot,
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
//! 7. **Moves at the end**: [`moves`], asked after [`pick`] with the
//!    requests it made in flight, evens the queues out once every wanted
//!    piece that some peer has is in flight. A peer about to idle (fewer
//!    than [`MOVE_FROM`] requests in flight) takes over a request waiting
//!    at the tail of another peer's queue (never one of the first
//!    [`MOVE_FROM`], which that peer may be sending already) when, at the
//!    measured rates, it would deliver it at least a piece's time sooner:
//!    the request is cancelled at the first peer, which had not started
//!    it, and sent to the second. A moved request is among its new peer's
//!    first [`MOVE_FROM`], so it never moves again. The pieces are fetched
//!    once, and a reader's last pieces do not wait in one peer's queue
//!    while others idle. Rule 6 holds: a seed takes over no piece a
//!    non-seed offers. The swarm asks for moves only near the end of the
//!    file, where the read-ahead no longer keeps every peer busy.
//!
//! 8. **Choking peers**: no request moves to or from a peer that chokes us
//!    (it serves us only with upload nobody it unchokes takes, or a
//!    piece's first copy). The caller gives it one slot, and it is ranked
//!    like any other: its one request keeps us among its candidates when
//!    it chooses whom to unchoke (asking is what makes us one), and it
//!    stays the way out when the peers that do not choke us fail (ranked
//!    last, or kept from duplicates, a choking honest peer was not asked
//!    while liars failing fast had free slots).
//!
//! An urgent piece already in flight is only duplicated in the end game.
//! Nothing here times a request out; the link does (`fetch.rs`): a request
//! unanswered for eight pieces' time at its peer's measured rate (8 to
//! 20 s) is cancelled there and comes back here as that peer's refusal, so
//! it goes to another peer; a peer silent for the link's read timeout is
//! dropped and its requests return to the pool.
//!
//! # Cost
//! With `N` pieces, `P` peers and `F` requests in flight (input and output):
//! O(N·P) to count availability and hand out pieces, O(N log N) to sort,
//! O(min(D, P)·F·P) for the end game (`D = max_duplicates`), and for
//! [`moves`] O(N·P) plus O(P²) per request moved; O(N·P/8) bytes
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
    /// It chokes us: no request moves to or from it (rule 8).
    pub choked: bool,
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

/// Requests at a peer's queue positions below this are never moved (rule
/// 7): the peer may be sending them already (its upload scheduler grants a
/// connection two pieces ahead of its writes).
pub const MOVE_FROM: usize = 2;

/// How many requests at the tail of each peer's queue rule 7 looks at.
const MOVE_TAIL: usize = 4;

/// Cancel the request for `piece` at `peers[from]` and ask `peers[to]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub from: usize,
    pub to: usize,
    pub piece: u32,
}

/// Rule 7: requests to move from long queues to peers with free slots, in
/// order. Call it with the requests [`pick`] made already in flight.
/// O(M·P·MOVE_TAIL) for M moves.
pub fn moves(input: &PickInput) -> Vec<Move> {
    let mut s = State::new(input);
    if !s.all_in_flight() {
        return Vec::new();
    }
    let peers = input.peers;
    // Rule 8: nothing moves to or from a peer that chokes us.
    let known = |i: usize| peers[i].rate.is_finite() && peers[i].rate > 0.0 && !peers[i].choked;
    // Per peer: its queue as it stands, without the pieces moved away.
    let mut queue: Vec<Vec<u32>> = peers.iter().map(|v| v.in_flight.to_vec()).collect();
    let mut out = Vec::new();
    loop {
        // The best (gain, from, pos, to): the largest gain in seconds.
        let mut best: Option<(f64, usize, usize, usize)> = None;
        let idling = |s: &State, i: usize| s.slots[i] > 0 && s.queued[i] < MOVE_FROM;
        for to in (0..peers.len()).filter(|&i| idling(&s, i) && known(i)) {
            let at_to = (s.queued[to] + 2) as f64 / s.rate[to];
            for from in (0..peers.len()).filter(|&i| i != to && known(i)) {
                let q = &queue[from];
                let first = q.len().saturating_sub(MOVE_TAIL).max(MOVE_FROM);
                for (pos, &p) in q.iter().enumerate().skip(first) {
                    let movable = p < input.num_pieces
                        && s.want[p as usize]
                        && s.copies[p as usize] == 1
                        && peers[to].have.get(p)
                        && !s.asked[to].get(p)
                        && !s.shunned(to, p);
                    let gain = (pos + 1) as f64 / s.rate[from] - at_to;
                    if movable && gain > 0.0 && best.is_none_or(|b| gain > b.0) {
                        best = Some((gain, from, pos, to));
                    }
                }
            }
        }
        let Some((_, from, pos, to)) = best else {
            return out;
        };
        let piece = queue[from].remove(pos);
        s.asked[from].clear(piece);
        s.queued[from] -= 1;
        s.copies[piece as usize] -= 1;
        s.assign(to, piece);
        out.push(Move { from, to, piece });
    }
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
    /// Indexed by piece: some peer without every piece and not choking us
    /// offers it (rule 6).
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
        let partial: Vec<&PeerView> = (input.peers.iter())
            .filter(|v| !v.complete && !v.choked)
            .collect();
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

    /// Whether every wanted piece that some peer has is in flight.
    fn all_in_flight(&self) -> bool {
        (0..self.input.num_pieces).all(|p| {
            let p_us = p as usize;
            !self.want[p_us]
                || self.copies[p_us] > 0
                || !self.input.peers.iter().any(|v| v.have.get(p))
        })
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
        if peers.iter().all(|v| v.complete) {
            // Only seeds: nobody to trade with, so in order (from where a
            // reader waits, else from a point of this daemon's own), and
            // each seed reads on from where it was.
            let n = u64::from(self.input.num_pieces.max(1));
            let start = (self.urgent.iter().min())
                .map_or_else(|| tie_break(seed, 0) % n, |&p| u64::from(p));
            candidates.sort_unstable_by_key(|&p| (u64::from(p) + n - start) % n);
        } else {
            candidates.sort_unstable_by_key(|&p| (avail[p as usize], tie_break(seed, p)));
        }
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
#[path = "picker_tests.rs"]
mod tests;
