//! How daemons are reached: whether this tracker could dial each daemon's
//! offered address (a probe, a TLS handshake that must show the daemon's
//! own key, so a port that accepts for someone else does not count), and
//! the calls readers place for holders they cannot dial, waiting for the
//! holder's next [`TrackerRequest::AwaitCalls`].
//!
//! Soft state like [`crate::peers`]: bounded, swept, never replicated. A
//! daemon polls the tracker it uses; a call reaches a holder through the
//! tracker the reader asked, so both must use the same one (daemons prefer
//! the first tracker of the file).
//!
//! [`TrackerRequest::AwaitCalls`]: fileshare_protocol::messages::TrackerRequest::AwaitCalls

pub mod relay;

use fileshare_protocol::messages::tracker::{Call, Reach};
use fileshare_protocol::tls::{self, ClientTls, Pin};
use fileshare_protocol::PeerId;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// How long one probe may take (TCP connect and TLS handshake).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a probe's outcome stands before the next announce probes
/// again (a router's mapping may come or go).
pub const PROBE_TTL: Duration = Duration::from_secs(300);

/// Probes in flight at once; an announce that finds none free leaves the
/// address `Unknown` and the next announce tries again.
const PROBES_AT_ONCE: usize = 64;

/// Addresses remembered; beyond this the oldest half is forgotten.
const MAX_PROBED: usize = 100_000;

/// Calls waiting for one holder; older ones are dropped first.
const CALLS_PER_PEER: usize = 64;

/// A call not collected within this long is dropped (the reader has given
/// up on it by then).
const CALL_TTL: Duration = Duration::from_secs(20);

/// The longest a daemon's `AwaitCalls` is held open, below the clients'
/// call timeout.
pub const MAX_WAIT: Duration = Duration::from_secs(3);

/// Holders with calls waiting at most; more are refused.
const MAX_MAILBOXES: usize = 100_000;

struct Probe {
    reach: Reach,
    at: Instant,
}

#[derive(Default)]
struct Mailbox {
    calls: VecDeque<(Instant, Call)>,
    news: Arc<Notify>,
}

pub struct Reachability {
    probes: Arc<Mutex<HashMap<(PeerId, String), Probe>>>,
    probing: Arc<Semaphore>,
    mailboxes: Mutex<HashMap<PeerId, Mailbox>>,
}

impl Default for Reachability {
    fn default() -> Self {
        Reachability {
            probes: Arc::default(),
            probing: Arc::new(Semaphore::new(PROBES_AT_ONCE)),
            mailboxes: Mutex::default(),
        }
    }
}

impl Reachability {
    /// What the last probe of `peer` at `addr` found.
    pub fn of(&self, peer: &PeerId, addr: &str) -> Reach {
        (self.probes.lock())
            .get(&(*peer, addr.to_string()))
            .map_or(Reach::Unknown, |p| p.reach)
    }

    /// What is known of `peer` at `addr`, starting a probe (on the current
    /// runtime) when nothing recent is.
    pub fn check(&self, peer: PeerId, addr: &str) -> Reach {
        let key = (peer, addr.to_string());
        let now = Instant::now();
        {
            let mut probes = self.probes.lock();
            match probes.get(&key) {
                Some(p) if p.reach == Reach::Unknown || now.duration_since(p.at) < PROBE_TTL => {
                    return p.reach
                }
                _ => {}
            }
            let Ok(permit) = self.probing.clone().try_acquire_owned() else {
                return probes.get(&key).map_or(Reach::Unknown, |p| p.reach);
            };
            if probes.len() >= MAX_PROBED {
                let mut ats: Vec<Instant> = probes.values().map(|p| p.at).collect();
                ats.sort_unstable();
                let cut = ats[ats.len() / 2];
                probes.retain(|_, p| p.at > cut);
            }
            // Marked in flight by its start time: `Unknown`, or the earlier
            // outcome, which stands until this one replaces it.
            let was = match probes.get_mut(&key) {
                Some(p) => {
                    p.at = now;
                    p.reach
                }
                None => {
                    probes.insert(
                        key.clone(),
                        Probe {
                            reach: Reach::Unknown,
                            at: now,
                        },
                    );
                    Reach::Unknown
                }
            };
            let table = self.probes.clone();
            tokio::spawn(async move {
                let reach = probe(&key.0, &key.1).await;
                tracing::debug!(peer = %key.0, addr = %key.1, "probed: {reach:?}");
                table.lock().insert(
                    key,
                    Probe {
                        reach,
                        at: Instant::now(),
                    },
                );
                drop(permit);
            });
            was
        }
    }

    /// Records an outcome as if a probe had just found it.
    #[cfg(test)]
    pub fn set(&self, peer: PeerId, addr: &str, reach: Reach) {
        let at = Instant::now();
        (self.probes.lock()).insert((peer, addr.to_string()), Probe { reach, at });
    }

    /// Queues `call` for `holder` and wakes its waiting `AwaitCalls`.
    pub fn place(&self, holder: PeerId, call: Call) -> Result<(), String> {
        let mut boxes = self.mailboxes.lock();
        if boxes.len() >= MAX_MAILBOXES && !boxes.contains_key(&holder) {
            let now = Instant::now();
            boxes.retain(|_, b| {
                b.calls.retain(|(at, _)| now.duration_since(*at) < CALL_TTL);
                !b.calls.is_empty()
            });
            if boxes.len() >= MAX_MAILBOXES {
                return Err("too many calls are waiting; try again later".into());
            }
        }
        let b = boxes.entry(holder).or_default();
        if b.calls.len() >= CALLS_PER_PEER {
            b.calls.pop_front();
        }
        b.calls.push_back((Instant::now(), call));
        b.news.notify_one();
        Ok(())
    }

    /// The calls waiting for `peer`, waiting up to `wait` (at most
    /// [`MAX_WAIT`]) for one to come.
    pub async fn collect(&self, peer: PeerId, wait: Duration) -> Vec<Call> {
        let news = {
            let mut boxes = self.mailboxes.lock();
            let b = boxes.entry(peer).or_default();
            if let Some(calls) = take_fresh(b) {
                return calls;
            }
            b.news.clone()
        };
        let _ = tokio::time::timeout(wait.min(MAX_WAIT), news.notified()).await;
        let mut boxes = self.mailboxes.lock();
        let calls = boxes
            .get_mut(&peer)
            .and_then(take_fresh)
            .unwrap_or_default();
        if boxes.get(&peer).is_some_and(|b| b.calls.is_empty()) {
            boxes.remove(&peer);
        }
        calls
    }
}

/// The calls of `b` still fresh, if any; empties it.
fn take_fresh(b: &mut Mailbox) -> Option<Vec<Call>> {
    let now = Instant::now();
    let calls: Vec<Call> = (b.calls.drain(..))
        .filter(|(at, _)| now.duration_since(*at) < CALL_TTL)
        .map(|(_, c)| c)
        .collect();
    (!calls.is_empty()).then_some(calls)
}

/// Dials `addr` and completes TLS, requiring `peer`'s key.
async fn probe(peer: &PeerId, addr: &str) -> Reach {
    let Ok(tls) = ClientTls::new(None, Pin::Peer(*peer)) else {
        return Reach::Unknown;
    };
    match tls::connect_stream(addr, &tls, PROBE_TIMEOUT).await {
        Ok(_) => Reach::Direct,
        Err(_) => Reach::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fileshare_protocol::messages::tracker::CallKind;

    fn call(n: u8) -> Call {
        Call {
            from: PeerId([n; 16]),
            addr: "203.0.113.1:7".into(),
            nonce: [n; 16],
            how: CallKind::DialBack,
        }
    }

    #[tokio::test]
    async fn a_waiting_holder_gets_the_call_placed_for_it() {
        let r = Arc::new(Reachability::default());
        let holder = PeerId([9; 16]);
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.collect(holder, Duration::from_secs(3)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.place(holder, call(1)).unwrap();
        assert_eq!(waiting.await.unwrap(), vec![call(1)]);
        // Nothing left, and nothing for anyone else.
        let t = Instant::now();
        assert!(r
            .collect(holder, Duration::from_millis(50))
            .await
            .is_empty());
        assert!(t.elapsed() >= Duration::from_millis(50));
        r.place(holder, call(2)).unwrap();
        assert!(r
            .collect(PeerId([1; 16]), Duration::from_millis(10))
            .await
            .is_empty());
        assert_eq!(r.collect(holder, Duration::ZERO).await, vec![call(2)]);
    }

    #[tokio::test]
    async fn calls_per_holder_are_capped() {
        let r = Reachability::default();
        let holder = PeerId([9; 16]);
        for n in 0..=u8::try_from(CALLS_PER_PEER).unwrap() {
            r.place(holder, call(n)).unwrap();
        }
        let got = r.collect(holder, Duration::ZERO).await;
        assert_eq!(got.len(), CALLS_PER_PEER);
        assert_eq!(got[0], call(1), "the oldest goes first");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let r = Reachability::default();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let peer = PeerId([3; 16]);
        assert_eq!(r.check(peer, &addr), Reach::Unknown);
        for _ in 0..200 {
            if r.of(&peer, &addr) != Reach::Unknown {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(r.of(&peer, &addr), Reach::Unreachable);
    }
}
