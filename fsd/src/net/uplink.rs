//! The uplink as the upload scheduler measures it, from the back-pressure
//! of its own writes: no rate flag, no socket counters, so it works the
//! same over plain TCP or TLS.
//!
//! Every piece granted to a connection is a *write* here from the moment it
//! is granted until its connection's writer returns from writing it (the
//! peer sockets keep little unsent data, see [`crate::net::upload_scheduler`],
//! so a write returns about when the uplink has taken it). Two things follow:
//! - **The window**: new writes are granted only while the bytes of the
//!   writes in flight are below [`Uplink::window`], what the uplink drains
//!   in [`TARGET_DRAIN`] at the measured rate (at least [`MIN_WINDOW`]). So
//!   a piece is chosen only shortly before the uplink can send it, and the
//!   choice ("a piece nobody has yet") is made with the freshest knowledge;
//!   the rest of the requests wait in the scheduler, where they can still
//!   be reordered, refused or cancelled, instead of in socket buffers.
//! - **The rate**: bytes written divided by the time during which some
//!   write was in flight (the uplink was busy), sampled over at least
//!   [`SAMPLE_BUSY`] and [`SAMPLE_WRITES`] writes, smoothed. A saturated
//!   uplink completes writes exactly as fast as it drains them.
//!
//! A write to a peer that reads slowly would hold the window for everyone:
//! after [`Uplink::stall_after`], once the uplink sent twice its bytes to
//! others meanwhile, it stops counting (it still completes, and its bytes
//! count nowhere), so the others go on. A write is slow for its reader's
//! sake only if the others are not: on an uplink slower than the window
//! per second every write is slow, and stalling them all would grant more
//! and more (each slower still) and never measure the rate. Writes that
//! nothing overtakes stall only after [`STALL_ALONE`] while the rate is
//! unknown.
//!
//! Pure bookkeeping: the caller passes the time.

use fileshare_protocol::PIECE_LEN;
use std::time::Duration;
use tokio::time::Instant;

/// The smallest window: two pieces, one being sent while the next one is
/// read from disk and handed over. With one, the uplink idles at each
/// hand-over, and longer after a connection that was idle (TCP restarts
/// it slowly).
pub const MIN_WINDOW: u64 = 2 * PIECE_LEN;

/// The largest window (fast links), so the scheduler keeps its choice.
pub const MAX_WINDOW: u64 = 64 * PIECE_LEN;

/// How long the bytes in flight should take to drain at the measured rate.
pub const TARGET_DRAIN: Duration = Duration::from_millis(50);

/// A sample of the rate covers at least this much busy time...
pub const SAMPLE_BUSY: Duration = Duration::from_millis(200);

/// ...and at least this many writes (one write is a whole piece).
pub const SAMPLE_WRITES: u32 = 3;

/// A write in flight for longer than this (and than eight windows at the
/// measured rate) while others overtook it is stalled by its reader: it
/// stops holding the window.
pub const STALL_MIN: Duration = Duration::from_secs(1);

/// A write that nothing overtook stalls after this while the rate is not
/// measured (after [`Uplink::stall_after`] once it is): two pieces take
/// 20 s at 50 KB/s, and a peer that never reads holds the window no longer.
pub const STALL_ALONE: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct Write {
    id: u64,
    bytes: u64,
    started: Instant,
    /// [`Uplink::done`] when it started: what the uplink sent since.
    done_before: u64,
    /// Still holds the window (not stalled).
    counted: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Uplink {
    writes: Vec<Write>,
    next_id: u64,
    /// Bytes of the counted writes.
    counted: u64,
    /// Bytes of every write written so far.
    done: u64,
    /// Measured bytes per second; 0 before the first sample.
    rate: f64,
    /// Busy time and bytes accumulated for the next sample.
    acc_busy: Duration,
    acc_bytes: u64,
    acc_writes: u32,
    /// When busy time was last accounted.
    last: Instant,
}

impl Uplink {
    pub fn new(now: Instant) -> Self {
        Uplink {
            writes: Vec::new(),
            next_id: 0,
            counted: 0,
            done: 0,
            rate: 0.0,
            acc_busy: Duration::ZERO,
            acc_bytes: 0,
            acc_writes: 0,
            last: now,
        }
    }

    /// The measured rate in bytes per second (0: not measured yet).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Bytes that may be in flight: [`TARGET_DRAIN`] at the measured rate,
    /// between [`MIN_WINDOW`] and [`MAX_WINDOW`].
    // A float-to-int `as` saturates, which is what a byte count wants.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn window(&self) -> u64 {
        let w = (self.rate * TARGET_DRAIN.as_secs_f64()) as u64;
        w.clamp(MIN_WINDOW, MAX_WINDOW)
    }

    /// How long a write may take before it stops holding the window.
    pub fn stall_after(&self) -> Duration {
        if self.rate > 0.0 {
            STALL_MIN.max(Duration::from_secs_f64(
                8.0 * self.window() as f64 / self.rate,
            ))
        } else {
            STALL_MIN
        }
    }

    /// Bytes of the writes that hold the window.
    pub fn in_flight(&self) -> u64 {
        self.counted
    }

    /// Whether one more write may start now.
    pub fn has_room(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.counted < self.window()
    }

    /// How long a write that nothing overtook may take.
    fn stall_alone(&self) -> Duration {
        match self.rate > 0.0 {
            true => self.stall_after(),
            false => STALL_ALONE,
        }
    }

    /// When a counted write may stall next, if any is in flight (one that
    /// waits to be overtaken is looked at again when another finishes).
    pub fn next_stall(&self) -> Option<Instant> {
        let (after, alone) = (self.stall_after(), self.stall_alone());
        (self.writes.iter())
            .filter(|w| w.counted)
            .map(|w| match self.overtaken(w) {
                true => w.started + after,
                false => w.started + alone,
            })
            .min()
    }

    /// The uplink sent twice `w`'s bytes to others since it started.
    fn overtaken(&self, w: &Write) -> bool {
        self.done.saturating_sub(w.done_before) >= 2 * w.bytes
    }

    /// A write of `bytes` starts; returns its id for [`Uplink::finish`].
    pub fn start(&mut self, bytes: u64, now: Instant) -> u64 {
        self.account(now);
        let id = self.next_id;
        self.next_id += 1;
        self.writes.push(Write {
            id,
            bytes,
            started: now,
            done_before: self.done,
            counted: true,
        });
        self.counted += bytes;
        id
    }

    /// Write `id` returned (or was dropped unwritten: `written` false, and
    /// it does not count toward the rate).
    pub fn finish(&mut self, id: u64, written: bool, now: Instant) {
        self.account(now);
        let Some(pos) = self.writes.iter().position(|w| w.id == id) else {
            return;
        };
        let w = self.writes.swap_remove(pos);
        if written {
            self.done += w.bytes;
        }
        if !w.counted {
            return;
        }
        self.counted -= w.bytes;
        if !written {
            return;
        }
        self.acc_bytes += w.bytes;
        self.acc_writes += 1;
        if self.acc_busy >= SAMPLE_BUSY && self.acc_writes >= SAMPLE_WRITES {
            let sample = self.acc_bytes as f64 / self.acc_busy.as_secs_f64();
            self.rate = if self.rate == 0.0 {
                sample
            } else {
                0.7 * self.rate + 0.3 * sample
            };
            self.acc_busy = Duration::ZERO;
            self.acc_bytes = 0;
            self.acc_writes = 0;
        }
    }

    /// Adds the time since the last event to the busy time if some counted
    /// write was in flight all along.
    fn account(&mut self, now: Instant) {
        if self.counted > 0 {
            self.acc_busy += now.saturating_duration_since(self.last);
        }
        self.last = now;
    }

    /// Stalled writes stop counting.
    fn expire(&mut self, now: Instant) {
        self.account(now);
        let (after, alone) = (self.stall_after(), self.stall_alone());
        for i in 0..self.writes.len() {
            let w = &self.writes[i];
            let age = now.saturating_duration_since(w.started);
            let stalled = age >= after && (self.overtaken(w) || age >= alone);
            if w.counted && stalled {
                let w = &mut self.writes[i];
                w.counted = false;
                self.counted -= w.bytes;
                tracing::debug!(bytes = w.bytes, "upload stalled by its reader");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PIECE_LEN;

    /// Pieces written back to back by a link of `rate` bytes/s, `parallel`
    /// at a time sharing it: the rate is measured within a few percent.
    fn saturate(rate: f64, parallel: usize) -> Uplink {
        let t0 = Instant::now();
        let mut u = Uplink::new(t0);
        let mut now = t0;
        let each = Duration::from_secs_f64(P as f64 * parallel as f64 / rate);
        let mut ids: Vec<u64> = (0..parallel).map(|_| u.start(P, now)).collect();
        for _ in 0..40 {
            now += each;
            for id in std::mem::take(&mut ids) {
                u.finish(id, true, now);
                ids.push(u.start(P, now));
            }
        }
        u
    }

    #[test]
    fn measures_the_drain_rate_of_a_saturated_uplink() {
        for (rate, parallel) in [(8e6, 1), (8e6, 2), (4e6, 3), (100e6, 4)] {
            let u = saturate(rate, parallel);
            let err = (u.rate() - rate).abs() / rate;
            assert!(err < 0.05, "{rate} x{parallel}: measured {}", u.rate());
        }
    }

    #[test]
    fn idle_time_is_not_counted() {
        let t0 = Instant::now();
        let mut u = Uplink::new(t0);
        let mut now = t0;
        // One piece every second, each sent in 50 ms: 10 MB/s when busy.
        for _ in 0..10 {
            let id = u.start(P, now);
            now += Duration::from_millis(50);
            u.finish(id, true, now);
            now += Duration::from_millis(950);
        }
        let want = P as f64 / 0.05;
        assert!((u.rate() - want).abs() / want < 0.05, "{}", u.rate());
    }

    #[test]
    fn the_window_follows_the_rate_within_bounds() {
        let mut u = Uplink::new(Instant::now());
        assert_eq!(u.window(), MIN_WINDOW, "unmeasured");
        u.rate = 8e6;
        assert_eq!(u.window(), MIN_WINDOW, "0.4 MB < two pieces");
        u.rate = 100e6;
        assert_eq!(u.window(), 5_000_000);
        u.rate = 1e12;
        assert_eq!(u.window(), MAX_WINDOW);
    }

    #[test]
    fn room_while_below_the_window_and_stalled_writes_let_go() {
        let t0 = Instant::now();
        let mut u = Uplink::new(t0);
        assert!(u.has_room(t0));
        let a = u.start(P, t0);
        assert!(u.has_room(t0));
        let _b = u.start(P, t0);
        assert!(!u.has_room(t0), "two pieces fill the smallest window");
        // Nothing overtook them: a slow uplink, not a slow reader.
        assert_eq!(u.next_stall(), Some(t0 + STALL_ALONE));
        assert!(!u.has_room(t0 + STALL_MIN));
        // Nothing at all moved for that long: neither holds the window.
        let later = t0 + STALL_ALONE;
        assert!(u.has_room(later));
        assert_eq!(u.in_flight(), 0);
        assert_eq!(u.next_stall(), None);
        // A stalled write finishing changes nothing, and is no sample.
        u.finish(a, true, later);
        assert_eq!(u.in_flight(), 0);
        assert_eq!(u.rate(), 0.0);
    }

    #[test]
    fn a_write_others_overtake_stalls_after_the_least_time() {
        let t0 = Instant::now();
        let mut u = Uplink::new(t0);
        let stuck = u.start(P, t0);
        let mut now = t0;
        // Others go through, 100 ms each, while `stuck` never returns.
        for _ in 0..30 {
            let id = u.start(P, now);
            now += Duration::from_millis(100);
            u.finish(id, true, now);
        }
        assert!(u.has_room(now));
        assert_eq!(u.in_flight(), 0, "the stuck write let go after STALL_MIN");
        u.finish(stuck, true, now);
        assert_eq!(u.in_flight(), 0);
    }

    #[test]
    fn an_uplink_slower_than_the_window_per_second_is_measured_and_nothing_stalls() {
        // Two pieces at a time sharing 0.5 MB/s: each takes two seconds,
        // longer than STALL_MIN, and none is slow for its reader.
        let rate = 0.5e6;
        let t0 = Instant::now();
        let mut u = Uplink::new(t0);
        let mut now = t0;
        let each = Duration::from_secs_f64(2.0 * P as f64 / rate);
        let mut ids = vec![u.start(P, now), u.start(P, now)];
        for _ in 0..10 {
            // The pacer looks every 100 ms: no room, nothing stalls.
            for _ in 0..each.as_millis() / 100 {
                now += Duration::from_millis(100);
                assert!(!u.has_room(now), "a slow write was taken as stalled");
            }
            for id in std::mem::take(&mut ids) {
                u.finish(id, true, now);
                ids.push(u.start(P, now));
            }
        }
        // Measured (within the error of samples that end in pairs).
        let sent = 2.0 * P as f64 / (each.as_millis() / 100 * 100) as f64 * 1e3;
        let err = (u.rate() - sent).abs() / sent;
        assert!(err < 0.2, "measured {} of {sent}", u.rate());
    }

    #[test]
    fn an_unwritten_grant_frees_its_room_without_a_sample() {
        let t0 = Instant::now();
        let mut u = Uplink::new(t0);
        for i in 0..10 {
            let id = u.start(P, t0);
            u.finish(id, false, t0 + Duration::from_secs(i));
        }
        assert_eq!(u.in_flight(), 0);
        assert_eq!(u.rate(), 0.0);
    }
}
