//! The relay, the last way for two daemons that cannot dial each other
//! (both behind NAT, no punched path): a reader asks for a relayed
//! connection ([`TrackerRequest::Relay`]), the tracker opens a slot for its
//! nonce and calls the holder; both connect to this tracker's own port,
//! send [`RELAY_MAGIC`], the nonce and their side, and the tracker copies
//! bytes between the two connections.
//!
//! What runs inside is the peers' own TLS, end to end: the reader pins the
//! holder's key and the holder requires the reader's, so the relay sees
//! ciphertext only and cannot pose as either peer; the most it can do is
//! drop or delay bytes. The nonce only pairs two connections.
//!
//! Each user may have at most `pairs_per_user` relayed connections open or
//! waiting (counted for both users of a pair), and the bytes each user's
//! daemons send through the relay are limited to `rate` per second over
//! all of them (`--relay-rate`, `--relay-pairs-per-user`). A rate of 0
//! turns the relay off.
//!
//! [`TrackerRequest::Relay`]: fileshare_protocol::messages::TrackerRequest::Relay

use fileshare_protocol::messages::tracker::{RELAY_MAGIC, RELAY_PREAMBLE};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How long a slot waits for both sides to connect.
pub const SLOT_TTL: Duration = Duration::from_secs(20);

/// How long a relay connection may take to send its preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes copied per read.
const CHUNK: usize = 64 * 1024;

/// Slots open at once, over all users.
const MAX_SLOTS: usize = 10_000;

/// What the relay allows each user.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Bytes per second each user's daemons may send through the relay,
    /// over all their relayed connections; 0 turns the relay off.
    pub rate: u64,
    /// Relayed connections (open or waiting for their second side) one
    /// user may have.
    pub pairs_per_user: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            rate: 10_000_000,
            pairs_per_user: 16,
        }
    }
}

/// A token bucket: `rate` bytes per second, a burst of one second's worth.
/// On tokio's clock, so tests can run it on paused time.
struct Bucket {
    rate: f64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket {
            rate: rate as f64,
            state: Mutex::new((rate as f64, tokio::time::Instant::now())),
        }
    }

    /// Takes `n` bytes' worth, sleeping while the bucket is short.
    async fn take(&self, n: usize) {
        let wait = {
            let mut st = self.state.lock();
            let now = tokio::time::Instant::now();
            let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
            st.0 = (st.0 + refill).min(self.rate);
            st.1 = now;
            st.0 -= n as f64;
            (st.0 < 0.0).then(|| Duration::from_secs_f64(-st.0 / self.rate))
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}

struct UserUse {
    pairs: usize,
    bucket: Arc<Bucket>,
}

/// The side that arrived first, waiting for the other.
struct Waiting {
    side: u8,
    partner: oneshot::Sender<TcpStream>,
}

struct Slot {
    users: [String; 2],
    created: Instant,
    waiting: Option<Waiting>,
}

pub struct Relay {
    limits: RelayLimits,
    slots: Mutex<HashMap<[u8; 16], Slot>>,
    users: Mutex<HashMap<String, UserUse>>,
    /// Bytes forwarded since start, both directions.
    pub forwarded: AtomicU64,
}

/// Gives a user's pair back however the pair ends.
struct PairGuard<'a> {
    relay: &'a Relay,
    users: [String; 2],
}

impl Drop for PairGuard<'_> {
    fn drop(&mut self) {
        self.relay.release(&self.users);
    }
}

impl Relay {
    pub fn new(limits: RelayLimits) -> Relay {
        Relay {
            limits,
            slots: Mutex::default(),
            users: Mutex::default(),
            forwarded: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.limits.rate > 0
    }

    /// Opens a slot for `nonce` between `reader` (side 0) and `holder`
    /// (side 1), counted against both users' pairs.
    pub fn open_slot(&self, nonce: [u8; 16], reader: &str, holder: &str) -> Result<(), String> {
        if !self.enabled() {
            return Err("this tracker does not relay (--relay-rate 0)".into());
        }
        self.sweep();
        let mut slots = self.slots.lock();
        if slots.len() >= MAX_SLOTS {
            return Err("the relay is full; try again later".into());
        }
        if slots.contains_key(&nonce) {
            return Err("this relay nonce is in use".into());
        }
        let mut users = self.users.lock();
        for u in [reader, holder] {
            let pairs = users.get(u).map_or(0, |x| x.pairs);
            if pairs >= self.limits.pairs_per_user {
                return Err(format!(
                    "{u} has {pairs} relayed connections, the most one user may have \
                     (--relay-pairs-per-user {})",
                    self.limits.pairs_per_user
                ));
            }
        }
        let pair = [reader.to_string(), holder.to_string()];
        for u in &pair {
            let rate = self.limits.rate;
            let entry = users.entry(u.clone()).or_insert_with(|| UserUse {
                pairs: 0,
                bucket: Arc::new(Bucket::new(rate)),
            });
            entry.pairs += 1;
        }
        slots.insert(
            nonce,
            Slot {
                users: pair,
                created: Instant::now(),
                waiting: None,
            },
        );
        Ok(())
    }

    /// Drops slots nobody completed in time.
    fn sweep(&self) {
        let now = Instant::now();
        let stale: Vec<[String; 2]> = {
            let mut slots = self.slots.lock();
            let gone: Vec<[u8; 16]> = (slots.iter())
                .filter(|(_, s)| now.duration_since(s.created) >= SLOT_TTL)
                .map(|(n, _)| *n)
                .collect();
            (gone.iter())
                .filter_map(|n| slots.remove(n))
                .map(|s| s.users)
                .collect()
        };
        for users in stale {
            self.release(&users);
        }
    }

    fn release(&self, pair: &[String; 2]) {
        let mut users = self.users.lock();
        for u in pair {
            if let Some(x) = users.get_mut(u) {
                x.pairs = x.pairs.saturating_sub(1);
                if x.pairs == 0 {
                    users.remove(u);
                }
            }
        }
    }

    fn bucket(&self, user: &str) -> Arc<Bucket> {
        let rate = self.limits.rate;
        (self.users.lock())
            .get(user)
            .map_or_else(|| Arc::new(Bucket::new(rate)), |x| x.bucket.clone())
    }

    /// Serves one connection that began with [`RELAY_MAGIC`]: pairs it
    /// with the other side of its slot and forwards until either closes.
    pub async fn serve(&self, mut stream: TcpStream) {
        let mut pre = [0u8; RELAY_PREAMBLE];
        let read = tokio::time::timeout(PREAMBLE_TIMEOUT, stream.read_exact(&mut pre)).await;
        if !matches!(read, Ok(Ok(_))) || pre[..4] != RELAY_MAGIC || pre[20] > 1 {
            tracing::debug!("dropping a relay connection with a bad preamble");
            return;
        }
        let nonce: [u8; 16] = pre[4..20].try_into().unwrap_or_default();
        let side = pre[20];
        let (rx, users) = {
            let mut slots = self.slots.lock();
            let Some(slot) = slots.get_mut(&nonce) else {
                tracing::debug!("dropping a relay connection for no open slot");
                return;
            };
            match slot.waiting.take() {
                None => {
                    let (tx, rx) = oneshot::channel();
                    slot.waiting = Some(Waiting { side, partner: tx });
                    (rx, slot.users.clone())
                }
                Some(w) if w.side != side => {
                    // Second side: hand this stream to the first's task.
                    slots.remove(&nonce);
                    let _ = w.partner.send(stream);
                    return;
                }
                Some(w) => {
                    // The same side twice: keep the first.
                    slot.waiting = Some(w);
                    return;
                }
            }
        };
        let left = SLOT_TTL.saturating_sub(PREAMBLE_TIMEOUT);
        let other = match tokio::time::timeout(left, rx).await {
            Ok(Ok(s)) => s,
            _ => {
                if self.slots.lock().remove(&nonce).is_some() {
                    self.release(&users);
                }
                tracing::debug!("the other side of a relay slot never came");
                return;
            }
        };
        let _pair = PairGuard {
            relay: self,
            users: users.clone(),
        };
        let (first, second) = (stream, other);
        // Each direction is charged to the user whose daemon sends it.
        let (first_user, second_user) = if side == 0 {
            (&users[0], &users[1])
        } else {
            (&users[1], &users[0])
        };
        let started = Instant::now();
        let (fr, fw) = first.into_split();
        let (sr, sw) = second.into_split();
        let (a, b) = tokio::join!(
            self.pump(fr, sw, self.bucket(first_user)),
            self.pump(sr, fw, self.bucket(second_user)),
        );
        tracing::debug!(
            bytes = a + b,
            ms = fileshare_protocol::millis(started.elapsed()),
            "relayed connection ended"
        );
    }

    /// Copies one direction until its reader ends, then ends the writer.
    async fn pump(
        &self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        bucket: Arc<Bucket>,
    ) -> u64 {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            bucket.take(n).await;
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
            total += n as u64;
            self.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A relay on a local port; returns its address.
    async fn serve(relay: Arc<Relay>) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let r = relay.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    let _ = s.peek(&mut first).await;
                    r.serve(s).await;
                });
            }
        });
        addr
    }

    async fn side(addr: std::net::SocketAddr, nonce: [u8; 16], side: u8) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut pre = RELAY_MAGIC.to_vec();
        pre.extend_from_slice(&nonce);
        pre.push(side);
        s.write_all(&pre).await.unwrap();
        s
    }

    #[tokio::test]
    async fn two_sides_of_a_slot_are_joined_and_others_are_not() {
        let relay = Arc::new(Relay::new(RelayLimits::default()));
        let addr = serve(relay.clone()).await;
        let nonce = [7; 16];
        // No slot: dropped.
        let mut stray = side(addr, [1; 16], 0).await;
        let mut b = [0u8; 1];
        assert_eq!(stray.read(&mut b).await.unwrap(), 0);
        relay.open_slot(nonce, "alice", "bob").unwrap();
        let mut a = side(addr, nonce, 0).await;
        let mut h = side(addr, nonce, 1).await;
        a.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        h.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        h.write_all(b"back").await.unwrap();
        let mut got = [0u8; 4];
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back");
        drop(a);
        assert_eq!(
            h.read(&mut b).await.unwrap(),
            0,
            "closing one side ends both"
        );
        // The slot is used up.
        let mut again = side(addr, nonce, 0).await;
        assert_eq!(again.read(&mut b).await.unwrap(), 0);
    }

    #[test]
    fn pairs_per_user_are_capped_and_given_back() {
        let relay = Relay::new(RelayLimits {
            rate: 1,
            pairs_per_user: 2,
        });
        relay.open_slot([1; 16], "alice", "bob").unwrap();
        relay.open_slot([2; 16], "alice", "carol").unwrap();
        let why = relay.open_slot([3; 16], "dave", "alice").unwrap_err();
        assert!(why.contains("--relay-pairs-per-user 2"), "{why}");
        relay.open_slot([4; 16], "bob", "carol").unwrap();
        let users = relay.slots.lock().remove(&[1; 16]).unwrap().users;
        relay.release(&users);
        relay.open_slot([3; 16], "dave", "alice").unwrap();
        let off = Relay::new(RelayLimits {
            rate: 0,
            pairs_per_user: 2,
        });
        assert!(off.open_slot([1; 16], "a", "b").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_holds_its_rate() {
        let b = Bucket::new(1_000_000);
        let t = tokio::time::Instant::now();
        // One second's burst, then a second at the rate.
        for _ in 0..20 {
            b.take(100_000).await;
        }
        let secs = t.elapsed().as_secs_f64();
        assert!((0.99..1.01).contains(&secs), "{secs} s");
    }
}
