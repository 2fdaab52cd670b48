//! The token bucket that paces both directions: one shared by every peer
//! link for `--max-download-rate`, and the one the upload scheduler
//! (`upload_scheduler.rs`) pays from for `--max-upload-rate`.
//!
//! Time is tokio's clock, so tests with paused time see the bucket refill.

use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Tokens available (negative: owed) and when last refilled.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` bytes per second; bursts up to `burst` bytes. Starts full.
    pub fn new(rate: u64, burst: u64) -> Self {
        TokenBucket {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            state: Mutex::new((burst.max(1) as f64, Instant::now())),
        }
    }

    /// Takes `n` bytes' worth of tokens at once, going into debt if the
    /// bucket holds fewer, and returns how long until the debt is paid.
    pub fn charge(&self, n: u64) -> Duration {
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
    }

    /// How long until the bucket is out of debt, taking nothing.
    pub fn until_paid(&self) -> Duration {
        self.charge(0)
    }

    /// Reserves `n` bytes and waits until the bucket has paid for them.
    /// Reserving first keeps concurrent callers in order.
    pub async fn take(&self, n: u64) {
        let wait = self.charge(n);
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
        let t = TokenBucket::new(1000, 100);
        let start = Instant::now();
        for _ in 0..10 {
            t.take(100).await;
        }
        let took = start.elapsed();
        // 1000 bytes at 1000 B/s with a 100-byte burst: about 0.9 s.
        assert!(took >= Duration::from_millis(850), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn refills_with_time_up_to_the_burst() {
        let t = TokenBucket::new(1000, 1000);
        // Full at first: a burst goes at once, the next second is owed.
        assert_eq!(t.charge(1000), Duration::ZERO);
        assert_eq!(t.charge(500), Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(t.until_paid(), Duration::ZERO);
        // Idle for longer than a burst takes to refill: full, not more.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(t.charge(1000), Duration::ZERO);
        assert_eq!(t.charge(1), Duration::from_millis(1));
        // Half refilled after half a second (less the byte owed).
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(t.charge(499), Duration::ZERO);
        assert_eq!(t.charge(1000), Duration::from_secs(1));
    }
}
