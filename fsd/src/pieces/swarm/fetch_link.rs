//! A fetch link (this daemon fetching one file's pieces from one peer) as
//! the swarm keeps it: what the peer offers, what is in
//! flight to it and when each request went, and its measured rate, from
//! which its number of request slots and the lateness of a request follow.

use super::{
    FetchCmd, FetchLinkId, INITIAL_SLOTS, LATE_MAX, PIPELINE, RATE_SAMPLE, SLOTS_PER_PEER,
};
use fileshare_protocol::{Bitfield, PeerId, PIECE_LEN};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub(super) struct FetchLink {
    pub(super) key: FetchLinkId,
    pub(super) peer: PeerId,
    pub(super) addr: String,
    /// What the peer said it has (subscription).
    pub(super) have: Bitfield,
    /// Invariant: `have` minus the pieces in `deferred`; what the picker
    /// may ask this peer for.
    pub(super) offer: Bitfield,
    /// Pieces the peer refused `Busy`, and until when not to ask again.
    pub(super) deferred: Vec<(u32, Instant)>,
    pub(super) in_flight: Vec<u32>,
    /// When each request in `in_flight` was sent (same order).
    pub(super) asked_at: Vec<Instant>,
    pub(super) tx: mpsc::UnboundedSender<FetchCmd>,
    /// Bytes per second, smoothed.
    pub(super) rate: f64,
    pub(super) last_piece: Option<Instant>,
    /// Bytes verified since `sample_at`, for the next sample of `rate`.
    pub(super) sample_bytes: u64,
    pub(super) sample_at: Option<Instant>,
    /// When the link joined, and when it last delivered a piece this
    /// daemon had not verified yet (for rotation).
    pub(super) joined: Instant,
    pub(super) last_useful: Option<Instant>,
    /// Told to close (rotated out): asked for nothing more.
    pub(super) closing: bool,
    /// The peer chokes us (it said so): one request at a time, and only
    /// for what no other peer offers (the picker's rule 8).
    pub(super) choked: bool,
}

impl FetchLink {
    pub(super) fn new(
        key: FetchLinkId,
        peer: PeerId,
        addr: String,
        have: Bitfield,
        tx: mpsc::UnboundedSender<FetchCmd>,
    ) -> FetchLink {
        FetchLink {
            key,
            peer,
            addr,
            offer: have.clone(),
            have,
            deferred: Vec::new(),
            in_flight: Vec::new(),
            asked_at: Vec::new(),
            tx,
            rate: 0.0,
            last_piece: None,
            sample_bytes: 0,
            sample_at: None,
            joined: Instant::now(),
            last_useful: None,
            closing: false,
            choked: false,
        }
    }

    /// Requests to keep in flight: [`PIPELINE`] worth of the measured rate,
    /// between 1 and [`SLOTS_PER_PEER`]; at least [`INITIAL_SLOTS`] at a
    /// seed, which is asked only for pieces no other peer offers (the
    /// picker's rule 6): its uploads are shared among many requesters, so
    /// each one's rate from it is a fraction of what it sends, and a few
    /// such requests waiting there give it the choice of what goes out.
    // A float-to-int `as` saturates, which is what a slot count wants.
    #[allow(clippy::cast_possible_truncation)]
    pub(super) fn slots(&self) -> u32 {
        if self.choked {
            return 1;
        }
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return INITIAL_SLOTS;
        }
        let want = (self.rate * PIPELINE.as_secs_f64() / PIECE_LEN as f64).ceil();
        let least = if self.have.is_full() {
            INITIAL_SLOTS
        } else {
            1
        };
        (want as u32).clamp(least, SLOTS_PER_PEER)
    }

    /// A piece of `bytes` arrived at `now`: one more sample of the rate
    /// once [`RATE_SAMPLE`] has passed since the last. Pieces are verified
    /// in bursts when the machine is busy, so the time between two of them
    /// says little. The first sample ends sooner, after [`INITIAL_SLOTS`]
    /// pieces: until then a fast peer is held to that many requests.
    pub(super) fn measure(&mut self, bytes: u64, now: Instant) {
        self.last_useful = Some(now);
        if let Some(at) = self.sample_at {
            self.sample_bytes += bytes;
            let dt = now.saturating_duration_since(at);
            let first = self.rate == 0.0
                && !dt.is_zero()
                && self.sample_bytes >= u64::from(INITIAL_SLOTS) * PIECE_LEN;
            if dt >= RATE_SAMPLE || first {
                let inst = self.sample_bytes as f64 / dt.as_secs_f64();
                self.rate = if self.rate == 0.0 {
                    inst
                } else {
                    0.5 * self.rate + 0.5 * inst
                };
                self.sample_bytes = 0;
                self.sample_at = Some(now);
            }
        } else {
            // The first piece starts the first sample.
            self.sample_at = Some(now);
        }
        self.last_piece = Some(now);
    }

    pub(super) fn free_slots(&self) -> u32 {
        if self.closing {
            return 0;
        }
        self.slots()
            .saturating_sub(u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX))
    }

    pub(super) fn ask(&mut self, piece: u32, now: Instant) {
        self.in_flight.push(piece);
        self.asked_at.push(now);
    }

    /// The request for `piece` is answered, refused or cancelled.
    pub(super) fn forget(&mut self, piece: u32) {
        if let Some(i) = self.in_flight.iter().position(|&p| p == piece) {
            self.in_flight.remove(i);
            self.asked_at.remove(i);
        }
    }

    /// Whether the request at `pos` in `in_flight` is late at `now`
    /// ([`LATE_MIN`], or `least` near the end of the file). A link whose
    /// rate is not measured yet (it takes two pieces, and in a large swarm
    /// most links deliver only a few) is taken to go at `typical`, the
    /// file's other links' rate: on slow uplinks a first piece takes
    /// seconds, and asking another peer for it after `least` would copy
    /// pieces on their way.
    pub(super) fn late(&self, pos: usize, now: Instant, least: Duration, typical: f64) -> bool {
        let Some(&at) = self.asked_at.get(pos) else {
            return false;
        };
        let known = |r: f64| r > 0.0 && r.is_finite();
        let rate = if known(self.rate) { self.rate } else { typical };
        let mut after = least;
        if known(rate) {
            let queue = 3.0 * (pos + 1) as f64 * PIECE_LEN as f64 / rate;
            after = after.max(Duration::from_secs_f64(queue.min(LATE_MAX.as_secs_f64())));
        }
        let since = self.last_piece.map_or(at, |t| t.max(at));
        now.saturating_duration_since(since) >= after
            || now.saturating_duration_since(at) >= LATE_MAX
    }
}

/// The mean measured rate of the links, 0 when none is measured: what a
/// link not measured yet is taken to deliver (as the picker does).
pub(super) fn typical_rate(links: &[FetchLink]) -> f64 {
    let known = || (links.iter().map(|l| l.rate)).filter(|r| *r > 0.0 && r.is_finite());
    match known().count() {
        0 => 0.0,
        k => known().sum::<f64>() / k as f64,
    }
}

/// Why a piece that arrived was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waste {
    /// Another copy was verified first.
    Verified,
    /// The swarm cancelled the request (a copy arrived elsewhere, or the
    /// request moved to another peer) and the peer had sent it already.
    Cancelled,
    /// The link gave up on it as stuck and asked another peer.
    Stuck,
}
