//! Transfer rates, for the dashboard and `fsd status`: a task samples the
//! daemon's byte counters every [`SAMPLE`] and turns their growth into
//! smoothed rates, per file, per peer and in total, keeping the totals of
//! the last [`HISTORY`] samples for the chart.
//!
//! The counters only grow (bytes verified from peers, bytes written to
//! peers); a counter that went down belongs to a swarm that was dropped and
//! made again, and counts from its new value.

use crate::net::upload_scheduler::Uploads;
use crate::pieces::registry::Registry;
use crate::trackers::now_ms;
use fileshare_protocol::{FileId, PeerId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the counters are read.
pub const SAMPLE: Duration = Duration::from_secs(1);

/// Samples of the total rates kept for the chart: five minutes.
pub const HISTORY: usize = 300;

/// Weight of the newest sample in a smoothed rate: a rate follows a change
/// within two or three samples and does not flicker between them.
const SMOOTHING: f64 = 0.5;

/// Total rates at one instant, in bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: u64,
    pub down: u64,
    pub up: u64,
}

/// One counter's last value and its smoothed rate.
#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    total: u64,
    rate: f64,
}

impl Counter {
    fn advance(&mut self, total: u64, secs: f64) {
        let grown = total.saturating_sub(self.total) as f64;
        let inst = if total < self.total {
            0.0
        } else {
            grown / secs
        };
        self.rate = SMOOTHING * inst + (1.0 - SMOOTHING) * self.rate;
        // Below a byte per second is nothing: a stopped transfer shows 0.
        if self.rate < 1.0 {
            self.rate = 0.0;
        }
        self.total = total;
    }

    // A float-to-int `as` saturates, which is what a rate display wants.
    #[allow(clippy::cast_possible_truncation)]
    fn bps(&self) -> u64 {
        self.rate as u64
    }
}

/// Counters of one kind of thing (files, peers) by key.
struct Counters<K>(HashMap<K, Counter>);

impl<K: Hash + Eq + Copy> Counters<K> {
    /// Advances every counter in `now` and drops those no longer present.
    fn advance(&mut self, now: &[(K, u64)], secs: f64) {
        let mut next = HashMap::with_capacity(now.len());
        for &(k, total) in now {
            // A counter seen for the first time starts at its value: what it
            // counted before this meter ran is not a rate.
            let mut c = self
                .0
                .get(&k)
                .copied()
                .unwrap_or(Counter { total, rate: 0.0 });
            c.advance(total, secs);
            next.insert(k, c);
        }
        self.0 = next;
    }

    fn bps(&self, k: &K) -> u64 {
        self.0.get(k).map_or(0, Counter::bps)
    }

    fn sum(&self) -> u64 {
        self.0.values().map(Counter::bps).sum()
    }
}

impl<K> Default for Counters<K> {
    fn default() -> Self {
        Counters(HashMap::new())
    }
}

#[derive(Default)]
struct State {
    last: Option<Instant>,
    file_down: Counters<FileId>,
    file_up: Counters<FileId>,
    peer_up: Counters<PeerId>,
    history: VecDeque<Sample>,
}

/// The rates, shared by the sampling task and every reader.
#[derive(Default)]
pub struct Meter {
    state: Mutex<State>,
}

/// The byte counters at one instant, as [`Meter::record`] takes them.
#[derive(Debug, Default)]
pub struct Reading {
    /// Per file: verified bytes received, bytes sent.
    pub files: Vec<(FileId, u64, u64)>,
    /// Per peer: bytes sent to it over every file.
    pub peers_up: Vec<(PeerId, u64)>,
}

impl Meter {
    /// Takes one reading of the counters at `now` (`at_ms` on the clock).
    pub fn record(&self, reading: &Reading, now: Instant, at_ms: u64) {
        let mut st = self.state.lock();
        let secs = st
            .last
            .map_or(SAMPLE.as_secs_f64(), |l| {
                now.duration_since(l).as_secs_f64()
            })
            .max(1e-3);
        st.last = Some(now);
        let down: Vec<_> = reading.files.iter().map(|&(f, d, _)| (f, d)).collect();
        let up: Vec<_> = reading.files.iter().map(|&(f, _, u)| (f, u)).collect();
        st.file_down.advance(&down, secs);
        st.file_up.advance(&up, secs);
        st.peer_up.advance(&reading.peers_up, secs);
        let sample = Sample {
            at_ms,
            down: st.file_down.sum(),
            up: st.file_up.sum(),
        };
        if st.history.len() == HISTORY {
            st.history.pop_front();
        }
        st.history.push_back(sample);
    }

    /// A file's download and upload rates.
    pub fn file(&self, id: &FileId) -> (u64, u64) {
        let st = self.state.lock();
        (st.file_down.bps(id), st.file_up.bps(id))
    }

    /// The upload rate to one peer.
    pub fn peer_up(&self, peer: &PeerId) -> u64 {
        self.state.lock().peer_up.bps(peer)
    }

    /// Every peer sent to at a rate above zero now, with that rate.
    pub fn peers_up(&self) -> Vec<(PeerId, u64)> {
        let st = self.state.lock();
        st.peer_up
            .0
            .iter()
            .map(|(p, c)| (*p, c.bps()))
            .filter(|&(_, r)| r > 0)
            .collect()
    }

    /// The latest total rates.
    pub fn total(&self) -> Sample {
        self.state
            .lock()
            .history
            .back()
            .copied()
            .unwrap_or_default()
    }

    /// The total rates of the last minutes, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.state.lock().history.iter().copied().collect()
    }
}

/// Reads the counters of every swarm and of the upload scheduler.
pub fn read(registry: &Registry, uploads: &Uploads) -> Reading {
    Reading {
        files: registry
            .all()
            .iter()
            .map(|s| {
                let up = s.uploaded.load(std::sync::atomic::Ordering::Relaxed);
                (s.file.id, s.view().received, up)
            })
            .collect(),
        peers_up: uploads.sent_to(),
    }
}

/// Samples every [`SAMPLE`] until `stop` is cancelled.
pub async fn run(
    meter: Arc<Meter>,
    registry: Arc<Registry>,
    uploads: Arc<Uploads>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        meter.record(&read(&registry, &uploads), Instant::now(), now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(down: u64, up: u64) -> Reading {
        Reading {
            files: vec![(FileId([1; 32]), down, up)],
            peers_up: vec![(PeerId([2; 16]), up)],
        }
    }

    #[test]
    fn rates_follow_the_counters_and_fall_to_zero() {
        let m = Meter::default();
        let t0 = Instant::now();
        // What was counted before the meter ran is not a rate.
        m.record(&reading(50 << 20, 7 << 20), t0, 0);
        assert_eq!(m.total(), Sample::default());
        let mut t = t0;
        for i in 1..=10u64 {
            t += SAMPLE;
            m.record(&reading((50 << 20) + i * (1 << 20), 7 << 20), t, i);
        }
        let (down, up) = m.file(&FileId([1; 32]));
        assert!(down > 1_000_000 && down <= 1 << 20, "{down}");
        assert_eq!(up, 0);
        assert_eq!(m.total().down, down);
        for _ in 0..30 {
            t += SAMPLE;
            m.record(&reading(60 << 20, 7 << 20), t, 0);
        }
        assert_eq!(m.total().down, 0, "a stopped transfer shows 0");
        assert_eq!(m.history().len(), 41);
    }

    #[test]
    fn history_is_bounded_and_counters_that_shrink_restart() {
        let m = Meter::default();
        let mut t = Instant::now();
        for i in 0..(HISTORY as u64 + 20) {
            t += SAMPLE;
            m.record(&reading(i << 20, i << 10), t, i);
        }
        assert_eq!(m.history().len(), HISTORY);
        assert!(m.peer_up(&PeerId([2; 16])) > 0);
        // A swarm made again counts from zero: no huge or negative rate.
        t += SAMPLE;
        m.record(&reading(0, 0), t, 0);
        let (down, _) = m.file(&FileId([1; 32]));
        assert!(down <= 1 << 20, "{down}");
    }
}
