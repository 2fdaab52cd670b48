//! A token bucket shared by every peer link, for `--max-download-rate`.
//! (`--max-upload-rate` is paced by the upload scheduler, `uploads.rs`,
//! which also chooses which request to serve.)

use parking_lot::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    rate: f64,
    burst: f64,
    /// Tokens available (negative: reserved ahead) and when last refilled.
    state: Mutex<(f64, Instant)>,
}

impl Throttle {
    /// `rate` bytes per second; bursts up to `burst` bytes.
    pub fn new(rate: u64, burst: u64) -> Self {
        Throttle {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            state: Mutex::new((burst as f64, Instant::now())),
        }
    }

    /// Reserves `n` bytes and waits until the bucket has paid for them.
    /// Reserving first keeps concurrent callers in order.
    pub async fn take(&self, n: u64) {
        let wait = {
            let mut st = self.state.lock();
            let now = Instant::now();
            let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
            st.0 = (st.0 + refill).min(self.burst) - n as f64;
            st.1 = now;
            if st.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-st.0 / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate() {
        let t = Throttle::new(1000, 100);
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            t.take(100).await;
        }
        let took = start.elapsed();
        // 1000 bytes at 1000 B/s with a 100-byte burst: about 0.9 s.
        assert!(took >= Duration::from_millis(850), "{took:?}");
    }
}
