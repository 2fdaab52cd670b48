//! One simulated reader's fetch side: its links to its neighbours as the
//! daemon's swarm keeps them (`fsd/src/pieces/swarm/fetch_link.rs`: what
//! is in flight, the measured rate, the `Busy` deferrals, lateness) and
//! the scheduling step that hands them to the daemon's own picker
//! ([`picker::pick`] and [`picker::moves`]) with the daemon's constants.

use fileshare_protocol::{Bitfield, PIECE_LEN};
use fsd::pieces::picker::{self, PeerView, PickInput};
use fsd::pieces::swarm::{
    BUSY_DEFER, END_GAME_PIECES, END_LATE_MIN, INITIAL_SLOTS, LATE_MAX, LATE_MIN, MOVE_PIECES,
    PIPELINE, RATE_SAMPLE, READ_AHEAD_PIECES, SLOTS_PER_PEER,
};
use std::time::Duration;

/// How long a refused piece is not asked of its peer again.
pub fn busy_defer_us() -> u64 {
    us(BUSY_DEFER)
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// This reader's fetch state towards one neighbour.
pub struct Link {
    pub peer: usize,
    pub in_flight: Vec<u32>,
    asked_at: Vec<u64>,
    deferred: Vec<(u32, u64)>,
    rate: f64,
    last_piece: Option<u64>,
    sample_bytes: u64,
    sample_at: Option<u64>,
    /// Bytes verified from this neighbour, in all (tit-for-tat).
    pub received: u64,
}

impl Link {
    pub fn new(peer: usize) -> Self {
        Link {
            peer,
            in_flight: Vec::new(),
            asked_at: Vec::new(),
            deferred: Vec::new(),
            rate: 0.0,
            last_piece: None,
            sample_bytes: 0,
            sample_at: None,
            received: 0,
        }
    }

    /// `FetchLink::slots`; `seed`: the neighbour has every piece.
    fn slots(&self, seed: bool) -> u32 {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return INITIAL_SLOTS;
        }
        let want = (self.rate * PIPELINE.as_secs_f64() / PIECE_LEN as f64).ceil();
        let least = if seed { INITIAL_SLOTS } else { 1 };
        (want as u32).clamp(least, SLOTS_PER_PEER)
    }

    /// `FetchLink::measure`.
    pub fn measure(&mut self, bytes: u64, now: u64) {
        if let Some(at) = self.sample_at {
            self.sample_bytes += bytes;
            let dt = now.saturating_sub(at);
            let first = self.rate == 0.0
                && dt > 0
                && self.sample_bytes >= u64::from(INITIAL_SLOTS) * PIECE_LEN;
            if dt >= us(RATE_SAMPLE) || first {
                let inst = self.sample_bytes as f64 / (dt as f64 / 1e6);
                self.rate = if self.rate == 0.0 {
                    inst
                } else {
                    0.5 * self.rate + 0.5 * inst
                };
                self.sample_bytes = 0;
                self.sample_at = Some(now);
            }
        } else {
            self.sample_at = Some(now);
        }
        self.last_piece = Some(now);
    }

    pub fn ask(&mut self, piece: u32, now: u64) {
        self.in_flight.push(piece);
        self.asked_at.push(now);
    }

    /// The request is answered, refused or cancelled; whether it was in
    /// flight.
    pub fn forget(&mut self, piece: u32) -> bool {
        match self.in_flight.iter().position(|&p| p == piece) {
            Some(i) => {
                self.in_flight.remove(i);
                self.asked_at.remove(i);
                true
            }
            None => false,
        }
    }

    /// Refused `Busy`: not asked of this neighbour for `defer_us`
    /// ([`BUSY_DEFER`] but in experiments).
    pub fn defer(&mut self, piece: u32, now: u64, defer_us: u64) {
        self.forget(piece);
        self.deferred.retain(|&(p, _)| p != piece);
        self.deferred.push((piece, now + defer_us));
    }

    /// `FetchLink::late`.
    fn late(&self, pos: usize, now: u64, least: u64) -> bool {
        let Some(&at) = self.asked_at.get(pos) else {
            return false;
        };
        let mut after = least;
        if self.rate > 0.0 && self.rate.is_finite() {
            let queue = 3.0 * (pos + 1) as f64 * PIECE_LEN as f64 / self.rate;
            after = after.max((queue.min(LATE_MAX.as_secs_f64()) * 1e6) as u64);
        }
        let since = self.last_piece.map_or(at, |t| t.max(at));
        now.saturating_sub(since) >= after || now.saturating_sub(at) >= us(LATE_MAX)
    }

    /// The link's 250 ms tick (`Swarm::tick_at`): whether deferrals ran
    /// out or a request is late, so the reader schedules again.
    pub fn tick(&mut self, now: u64) -> bool {
        let before = self.deferred.len();
        self.deferred.retain(|&(_, until)| until > now);
        let late = (0..self.in_flight.len()).any(|pos| self.late(pos, now, us(END_LATE_MIN)));
        self.deferred.len() != before || late
    }
}

/// How a reader reads: through its mount, front to back (the read-ahead
/// window and the pieces a read waits on), or the whole file at once as
/// `fsd download-file` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Mount,
    Download,
}

/// What one scheduling step sends: requests, and moves (cancel at
/// `from`, ask `to`), in link numbers.
#[derive(Default)]
pub struct Sends {
    pub requests: Vec<(usize, u32)>,
    pub moves: Vec<(usize, usize, u32)>,
}

/// The scheduling step (`Swarm::schedule_at`) of a reader holding `have`,
/// with `links` to neighbours whose offers are `shown(peer)`. Records the
/// requests in the links and returns them.
pub fn schedule(
    have: &Bitfield,
    links: &mut [Link],
    shown: impl Fn(usize) -> Bitfield,
    reading: Reading,
    seed: u64,
    now: u64,
) -> Sends {
    let n = have.len();
    let missing = n - have.count();
    let mut sends = Sends::default();
    if links.is_empty() || missing == 0 {
        return sends;
    }
    // With no free slot anywhere the picker hands out nothing and moves
    // nothing: skip building its input.
    let free = |l: &Link| {
        let full = shown(l.peer).is_full();
        l.slots(full) > u32::try_from(l.in_flight.len()).unwrap_or(u32::MAX)
    };
    if !links.iter().any(free) {
        return sends;
    }
    let (urgent, wanted) = match reading {
        Reading::Mount => {
            // A 1 MiB read waits on the first two pieces from where the
            // reader is; the read-ahead window runs on from there.
            let pos = (0..n).find(|&p| !have.get(p)).unwrap_or(n);
            let urgent: Vec<u32> = (pos..(pos + 2).min(n)).filter(|&p| !have.get(p)).collect();
            let mut wanted = Bitfield::new(n);
            for p in pos..(pos + READ_AHEAD_PIECES).min(n) {
                wanted.set(p);
            }
            (urgent, wanted)
        }
        Reading::Download => (Vec::new(), Bitfield::full(n)),
    };
    let end = missing <= END_GAME_PIECES;
    let least = us(if end { END_LATE_MIN } else { LATE_MIN });
    let mut late = Bitfield::new(n);
    for l in links.iter() {
        for (pos, &p) in l.in_flight.iter().enumerate() {
            if (end || urgent.contains(&p)) && l.late(pos, now, least) {
                late.set(p);
            }
        }
    }
    let offers: Vec<(Bitfield, bool)> = (links.iter())
        .map(|l| {
            let mut o = shown(l.peer);
            let full = o.is_full();
            for &(p, until) in &l.deferred {
                if until > now {
                    o.clear(p);
                }
            }
            (o, full)
        })
        .collect();
    let input = |peers: &'_ [PeerView<'_>], f: &mut dyn FnMut(&PickInput)| {
        f(&PickInput {
            num_pieces: n,
            have,
            wanted: &wanted,
            urgent: &urgent,
            peers,
            seed,
            max_duplicates: 2,
            late: &late,
        });
    };
    let mut requests = Vec::new();
    input(&views(links, &offers), &mut |i| requests = picker::pick(i));
    for r in requests {
        links[r.peer].ask(r.piece, now);
        sends.requests.push((r.peer, r.piece));
    }
    if missing <= MOVE_PIECES {
        let mut moves = Vec::new();
        input(&views(links, &offers), &mut |i| moves = picker::moves(i));
        for m in moves {
            links[m.from].forget(m.piece);
            links[m.to].ask(m.piece, now);
            sends.moves.push((m.from, m.to, m.piece));
        }
    }
    sends
}

/// What the picker sees of each link: its offer (`Have`s less the
/// deferred pieces), whether it is a seed, its free slots.
fn views<'a>(links: &'a [Link], offers: &'a [(Bitfield, bool)]) -> Vec<PeerView<'a>> {
    (links.iter().zip(offers))
        .map(|(l, (o, full))| PeerView {
            have: o,
            complete: *full,
            free_slots: l
                .slots(*full)
                .saturating_sub(u32::try_from(l.in_flight.len()).unwrap_or(u32::MAX)),
            in_flight: &l.in_flight,
            rate: l.rate,
            // The simulated uploaders send no choke notices.
            choked: false,
        })
        .collect()
}
