//! The simulated swarm: one source and many readers of one file on a
//! network of uplinks, advanced in ticks with an event queue between them.
//!
//! - **Network.** Each peer's uplink sends one piece at a time at its rate,
//!   back to back while it has granted pieces; downlinks are unlimited.
//!   Every message (request, refusal, cancel, `Have`) and every piece's
//!   last byte takes `latency` to arrive. Events carry exact times; the
//!   daemons' decisions (the pacer's steps, the picker) run at tick
//!   boundaries, so each decision may wait up to one tick.
//! - **Membership.** A reader announces itself when it joins (holding
//!   nothing) and Locates a round trip later; the tracker knows what each
//!   peer has `latency` after it verified it. A Locate is the tracker's own sample
//!   ([`fileshare_tracker::sample::sample`]) over every announced peer but
//!   the asker, with the asker's pieces, at most `locate_peers` of them.
//! - **Connections.** A connection is a fetch link both ways: either end
//!   may fetch from the other. Each peer holds at most `budget` of them; a
//!   peer with a full budget refuses new ones. A reader connects to the
//!   peers of its Locate on joining, and Locates again every 250 ms while
//!   it has fewer than `budget` connections and lacks pieces. A peer that
//!   completes drops its connections to other complete peers (two seeds
//!   have nothing to trade), which frees room for readers still fetching.

use crate::fetcher::{self, Link, Reading};
use crate::uploader::{Answer, Uploader};
use fileshare_protocol::{Bitfield, Layout, PIECE_LEN};
use fileshare_tracker::sample::sample;
use fsd::pieces::swarm::READ_AHEAD_PIECES;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// How often a link ticks, a reader short of connections Locates, and
/// the first choke rotation's spread.
const PERIOD_US: u64 = 250_000;

/// What one run simulates.
#[derive(Debug, Clone)]
pub struct Params {
    pub readers: usize,
    pub pieces: u32,
    /// Uplink rates in bytes per second.
    pub source_rate: f64,
    pub reader_rate: f64,
    pub latency_us: u64,
    pub tick_us: u64,
    /// Connections one peer holds at most.
    pub budget: usize,
    /// Peers a Locate answers at most.
    pub locate_peers: usize,
    /// Readers join one after another over this long (0: all at once),
    /// in a random order.
    pub arrivals_over_us: u64,
    pub reading: Reading,
    /// False only in experiments (`BENCH_SIM_CHOKE=0`): no peer chokes.
    pub choking: bool,
    /// How long a refused piece is not asked of that peer again: the
    /// daemon's `BUSY_DEFER` but in experiments.
    pub defer_us: u64,
    /// Count why uplinks idle (costly: for small runs).
    pub trace: bool,
    pub seed: u64,
    /// The run stops here, finished or not.
    pub max_us: u64,
}

/// What one run measured. Peer 0 is the source.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub joined_us: Vec<u64>,
    /// When each reader verified its last piece (index 0 unused).
    pub finished_us: Vec<Option<u64>>,
    /// Pieces each peer uploaded.
    pub uploaded: Vec<u64>,
    /// Pieces that arrived at a reader that had them already.
    pub duplicates: u64,
    pub received: u64,
    pub locates: u64,
    /// Requests that reached an uploader, and those it refused by its
    /// order (`Busy`) and because it chokes the requester.
    pub requests: u64,
    pub busy: u64,
    pub choked: u64,
    pub picks: u64,
    /// With `trace`: reader-ticks of idle uplinks with nothing a
    /// neighbour wants, with something but no request, with requests
    /// waiting; and the ticks.
    pub idle: [u64; 3],
    pub ticks: u64,
    /// When the last reader to get a piece got its first.
    pub first_piece_us: u64,
    /// When the source had sent every piece once.
    pub source_all_us: Option<u64>,
    /// Scheduling steps that sent nothing.
    pub empty_picks: u64,
    /// Connections per reader when it finished: mean, fewest.
    pub links_mean: f64,
    pub links_min: usize,
}

impl Outcome {
    pub fn last_finish_us(&self) -> Option<u64> {
        self.finished_us[1..]
            .iter()
            .try_fold(0, |m, f| f.map(|f| m.max(f)))
    }
}

enum Ev {
    Join(usize),
    Locate(usize),
    Request {
        reader: usize,
        up: usize,
        piece: u32,
    },
    Refused {
        reader: usize,
        up: usize,
        piece: u32,
    },
    Cancel {
        reader: usize,
        up: usize,
        piece: u32,
    },
    Written {
        up: usize,
        reader: usize,
        piece: u32,
    },
    Arrive {
        reader: usize,
        up: usize,
        piece: u32,
    },
    Shown {
        peer: usize,
        piece: u32,
    },
}

struct Timed(u64, u64, Ev);

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

/// A splitmix64 stream.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Peer {
    rate: f64,
    joined: bool,
    have: Bitfield,
    /// What its neighbours and the tracker know it has.
    shown: Bitfield,
    links: Vec<Link>,
    up: Uploader,
    /// When the uplink finishes what it was given.
    busy_until: u64,
    next_tick: u64,
    seed: u64,
    /// The first piece it lacks: where its reader is.
    pos: u32,
}

pub struct World {
    p: Params,
    layout: Layout,
    peers: Vec<Peer>,
    announced: Vec<usize>,
    queue: BinaryHeap<Reverse<Timed>>,
    seq: u64,
    dirty: Vec<bool>,
    dirty_list: Vec<usize>,
    stepping: Vec<bool>,
    step_list: Vec<usize>,
    rng: Rng,
    /// Pieces the source has sent at least once.
    source_sent: Bitfield,
    out: Outcome,
}

impl World {
    pub fn new(p: Params) -> Self {
        let layout = Layout::new(u64::from(p.pieces) * PIECE_LEN, PIECE_LEN).expect("a layout");
        let mut rng = Rng(p.seed);
        let n = p.readers + 1;
        let peers = (0..n)
            .map(|i| {
                let rate = if i == 0 { p.source_rate } else { p.reader_rate };
                let have = if i == 0 {
                    Bitfield::full(p.pieces)
                } else {
                    Bitfield::new(p.pieces)
                };
                let first_rotation = rng.next() % 2_000_000;
                Peer {
                    rate,
                    joined: false,
                    shown: have.clone(),
                    have,
                    links: Vec::new(),
                    up: Uploader::new(rate, p.pieces, PIECE_LEN, first_rotation, p.choking),
                    busy_until: 0,
                    next_tick: rng.next() % PERIOD_US,
                    seed: rng.next(),
                    pos: 0,
                }
            })
            .collect();
        let mut w = World {
            layout,
            peers,
            announced: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            dirty: vec![false; n],
            dirty_list: Vec::new(),
            stepping: vec![false; n],
            step_list: Vec::new(),
            rng,
            source_sent: Bitfield::new(p.pieces),
            out: Outcome {
                joined_us: vec![0; n],
                finished_us: vec![None; n],
                uploaded: vec![0; n],
                ..Outcome::default()
            },
            p,
        };
        w.peers[0].joined = true;
        w.announced.push(0);
        let mut order: Vec<usize> = (1..n).collect();
        for k in 0..order.len() {
            let j = k + w.rng.below(order.len() - k);
            order.swap(k, j);
        }
        for (k, r) in order.into_iter().enumerate() {
            let at = w.p.arrivals_over_us * k as u64 / w.p.readers.max(1) as u64;
            w.out.joined_us[r] = at;
            w.at(at, Ev::Join(r));
        }
        w
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Timed(t, self.seq, ev)));
    }

    fn mark(&mut self, r: usize) {
        if r != 0 && !self.dirty[r] {
            self.dirty[r] = true;
            self.dirty_list.push(r);
        }
    }

    fn wake_uploader(&mut self, u: usize) {
        if !self.stepping[u] {
            self.stepping[u] = true;
            self.step_list.push(u);
        }
    }

    /// Counts the readers whose uplinks idle at `now`: with nothing a
    /// neighbour wants, with something but no request for it, or with
    /// requests waiting.
    fn trace_idle(&mut self, now: u64) {
        for r in 1..self.peers.len() {
            let peer = &self.peers[r];
            if !peer.joined || peer.busy_until > now {
                continue;
            }
            let offers = (peer.links.iter()).any(|l| {
                let w = l.peer;
                (0..self.p.pieces).any(|p| peer.have.get(p) && self.wants(w, p))
            });
            let k = if peer.up.has_waiting() {
                2
            } else if offers {
                1
            } else {
                0
            };
            self.out.idle[k] += 1;
        }
        self.out.ticks += 1;
    }

    /// Whether reader `r` would ask for `piece`: it lacks it, and reads
    /// the whole file or has it in its read-ahead window. A neighbour's
    /// news of any other piece cannot change what the picker asks.
    fn wants(&self, r: usize, piece: u32) -> bool {
        let peer = &self.peers[r];
        !peer.have.get(piece)
            && (self.p.reading == Reading::Download
                || (peer.pos..peer.pos + READ_AHEAD_PIECES).contains(&piece))
    }

    fn link(&mut self, of: usize, to: usize) -> Option<&mut Link> {
        self.peers[of].links.iter_mut().find(|l| l.peer == to)
    }

    /// Runs until every reader has the file or `max_us`.
    pub fn run(mut self) -> Outcome {
        let mut now = 0;
        let mut done = 0;
        let mut links_sum = 0usize;
        self.out.links_min = usize::MAX;
        while now <= self.p.max_us && done < self.p.readers {
            while self.queue.peek().is_some_and(|Reverse(t)| t.0 <= now) {
                let Some(Reverse(Timed(at, _, ev))) = self.queue.pop() else {
                    break;
                };
                if let Some(r) = self.handle(at, ev) {
                    done += 1;
                    links_sum += self.peers[r].links.len();
                    self.out.links_min = self.out.links_min.min(self.peers[r].links.len());
                    self.completed(r);
                }
            }
            self.periodic(now);
            self.step_uploaders(now);
            self.schedule_readers(now);
            if self.p.trace {
                self.trace_idle(now);
            }
            now += self.p.tick_us;
        }
        // Pieces already on their way still arrive (as duplicates).
        while let Some(Reverse(Timed(at, _, ev))) = self.queue.pop() {
            if matches!(ev, Ev::Written { .. } | Ev::Arrive { .. }) {
                self.handle(at, ev);
            }
        }
        self.out.links_mean = links_sum as f64 / done.max(1) as f64;
        self.out
    }

    /// Handles one event at its time `at`; returns a reader that just
    /// completed.
    fn handle(&mut self, at: u64, ev: Ev) -> Option<usize> {
        let lat = self.p.latency_us;
        match ev {
            // Announced at once, it Locates a round trip later: readers
            // starting together are all in the membership by then.
            Ev::Join(r) => {
                self.peers[r].joined = true;
                self.announced.push(r);
                self.at(at + 2 * lat, Ev::Locate(r));
            }
            Ev::Locate(r) => self.locate(r),
            Ev::Request { reader, up, piece } => {
                if self.link(up, reader).is_some() {
                    let layout = self.layout;
                    self.out.requests += 1;
                    match self.peers[up].up.admit(reader as u64, piece, &layout, at) {
                        Some(_) => {
                            self.out.choked += 1;
                            self.at(at + lat, Ev::Refused { reader, up, piece });
                        }
                        None => self.wake_uploader(up),
                    }
                }
            }
            Ev::Refused { reader, up, piece } => {
                let defer_us = self.p.defer_us;
                if let Some(l) = self.link(reader, up) {
                    if l.in_flight.contains(&piece) {
                        l.defer(piece, at, defer_us);
                        self.mark(reader);
                    }
                }
            }
            Ev::Cancel { reader, up, piece } => self.peers[up].up.cancel(reader as u64, piece),
            Ev::Written { up, reader, piece } => {
                if up == 0 && !self.source_sent.get(piece) {
                    self.source_sent.set(piece);
                    if self.source_sent.is_full() {
                        self.out.source_all_us = Some(at);
                    }
                }
                self.peers[up].up.written(reader as u64, PIECE_LEN);
                self.out.uploaded[up] += 1;
                self.at(at + lat, Ev::Arrive { reader, up, piece });
                self.wake_uploader(up);
            }
            Ev::Arrive { reader, up, piece } => return self.arrive(reader, up, piece, at),
            Ev::Shown { peer, piece } => {
                self.peers[peer].shown.set(piece);
                for k in 0..self.peers[peer].links.len() {
                    let w = self.peers[peer].links[k].peer;
                    if self.wants(w, piece) {
                        self.mark(w);
                    }
                }
            }
        }
        None
    }

    fn arrive(&mut self, reader: usize, up: usize, piece: u32, at: u64) -> Option<usize> {
        let lat = self.p.latency_us;
        self.out.received += 1;
        if let Some(l) = self.link(reader, up) {
            l.forget(piece);
            l.measure(PIECE_LEN, at);
            l.received += PIECE_LEN;
        }
        self.mark(reader);
        let peer = &mut self.peers[reader];
        if peer.have.get(piece) {
            self.out.duplicates += 1;
            return None;
        }
        peer.have.set(piece);
        if peer.have.count() == 1 {
            self.out.first_piece_us = self.out.first_piece_us.max(at);
        }
        while peer.pos < peer.have.len() && peer.have.get(peer.pos) {
            peer.pos += 1;
        }
        let cancels: Vec<usize> = (peer.links.iter_mut())
            .filter_map(|l| l.forget(piece).then_some(l.peer))
            .collect();
        let complete = peer.have.is_full();
        for u in cancels {
            self.at(
                at + lat,
                Ev::Cancel {
                    reader,
                    up: u,
                    piece,
                },
            );
        }
        self.at(
            at + lat,
            Ev::Shown {
                peer: reader,
                piece,
            },
        );
        if complete {
            self.out.finished_us[reader] = Some(at);
            return Some(reader);
        }
        None
    }

    /// A reader has the file: it drops its connections to complete peers.
    fn completed(&mut self, r: usize) {
        let seeds: Vec<usize> = (self.peers[r].links.iter())
            .map(|l| l.peer)
            .filter(|&w| self.peers[w].have.is_full())
            .collect();
        for w in seeds {
            self.disconnect(r, w);
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        self.peers[a].links.push(Link::new(b));
        self.peers[b].links.push(Link::new(a));
        self.mark(a);
        self.mark(b);
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            self.peers[x].links.retain(|l| l.peer != y);
            self.peers[x].up.forget(y as u64);
            self.mark(x);
        }
    }

    /// A Locate by `r`, and connections to the peers it names that have
    /// room for one.
    fn locate(&mut self, r: usize) {
        self.out.locates += 1;
        let seed = self.rng.next();
        let peers = &self.peers;
        let items: Vec<(usize, &Bitfield)> = (self.announced.iter())
            .filter(|&&i| i != r)
            .map(|&i| (i, &peers[i].shown))
            .collect();
        let named: Vec<usize> = sample(
            items,
            |(_, b)| b,
            Some(&peers[r].have),
            self.p.locate_peers,
            seed,
        )
        .into_iter()
        .map(|(i, _)| i)
        .collect();
        for w in named {
            let budget = self.p.budget;
            let linked = self.peers[r].links.iter().any(|l| l.peer == w);
            if self.peers[r].links.len() < budget && self.peers[w].links.len() < budget && !linked {
                self.connect(r, w);
            }
        }
    }

    /// Every [`PERIOD_US`] per peer: the links' ticks and a Locate when
    /// short of connections; choke rotations when due.
    fn periodic(&mut self, now: u64) {
        let mut answers = Vec::new();
        for i in 0..self.peers.len() {
            if !self.peers[i].joined {
                continue;
            }
            if self.peers[i].up.next_rotation <= now {
                let peer = &mut self.peers[i];
                let links = &peer.links;
                let received = |conn: u64| {
                    (links.iter().find(|l| l.peer as u64 == conn)).map_or(0, |l| l.received)
                };
                peer.up.rotate(now, received, &mut answers);
                self.answer(i, &mut answers, now);
                self.wake_uploader(i);
            }
            if i == 0 || self.peers[i].next_tick > now || self.peers[i].have.is_full() {
                continue;
            }
            self.peers[i].next_tick = now + PERIOD_US;
            let mut again = false;
            for l in &mut self.peers[i].links {
                again |= l.tick(now);
            }
            if again {
                self.mark(i);
            }
            if self.peers[i].links.len() < self.p.budget {
                self.locate(i);
            }
        }
    }

    /// Sends the uploader's answers: refusals back to their readers,
    /// served pieces onto its uplink.
    fn answer(&mut self, u: usize, answers: &mut Vec<(u64, u32, Answer)>, now: u64) {
        let lat = self.p.latency_us;
        let piece_us = (PIECE_LEN as f64 / self.peers[u].rate * 1e6).round() as u64;
        for (conn, piece, a) in answers.drain(..) {
            let reader = conn as usize;
            match a {
                Answer::Serve => {
                    let peer = &mut self.peers[u];
                    let start = peer.busy_until.max(now);
                    peer.busy_until = start + piece_us;
                    let t = peer.busy_until;
                    self.at(
                        t,
                        Ev::Written {
                            up: u,
                            reader,
                            piece,
                        },
                    );
                }
                Answer::Busy | Answer::Choked => {
                    if a == Answer::Busy {
                        self.out.busy += 1;
                    } else {
                        self.out.choked += 1;
                    }
                    self.at(
                        now + lat,
                        Ev::Refused {
                            reader,
                            up: u,
                            piece,
                        },
                    );
                }
            }
        }
    }

    fn step_uploaders(&mut self, now: u64) {
        let mut answers = Vec::new();
        for u in std::mem::take(&mut self.step_list) {
            self.stepping[u] = false;
            while self.peers[u].up.has_room() && self.peers[u].up.has_waiting() {
                let served = self.peers[u].up.step(now, &mut answers);
                self.answer(u, &mut answers, now);
                if !served {
                    break;
                }
            }
        }
    }

    fn schedule_readers(&mut self, now: u64) {
        let lat = self.p.latency_us;
        for r in std::mem::take(&mut self.dirty_list) {
            self.dirty[r] = false;
            if !self.peers[r].joined || self.peers[r].have.is_full() {
                continue;
            }
            self.out.picks += 1;
            let mut links = std::mem::take(&mut self.peers[r].links);
            let peers = &self.peers;
            let sends = fetcher::schedule(
                &peers[r].have,
                &mut links,
                |w| peers[w].shown.clone(),
                self.p.reading,
                peers[r].seed,
                now,
            );
            if sends.requests.is_empty() && sends.moves.is_empty() {
                self.out.empty_picks += 1;
            }
            for &(k, piece) in &sends.requests {
                let up = links[k].peer;
                self.at(
                    now + lat,
                    Ev::Request {
                        reader: r,
                        up,
                        piece,
                    },
                );
            }
            for &(from, to, piece) in &sends.moves {
                let (from, to) = (links[from].peer, links[to].peer);
                self.at(
                    now + lat,
                    Ev::Cancel {
                        reader: r,
                        up: from,
                        piece,
                    },
                );
                self.at(
                    now + lat,
                    Ev::Request {
                        reader: r,
                        up: to,
                        piece,
                    },
                );
            }
            self.peers[r].links = links;
        }
    }
}
