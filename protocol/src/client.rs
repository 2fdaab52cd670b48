//! A tracker client shared by the CLI, the daemon and the trackers' tests.
//!
//! One connection carries any number of concurrent calls, matched by request
//! id. When the tracker in use stops answering, the client moves to the next
//! one of the trackers file and stays there; the caller sees an error only
//! when no tracker answers, or when a call that must not be repeated was cut
//! off mid-flight.
//!
//! One generic [`TrackerClient::call`] takes any request struct and returns
//! what that request's reply carries ([`TrackerCall`]), so a reply of the
//! wrong kind is turned into an error once rather than matched away at
//! every caller, and a new request needs no method here.
//!
//! At most one connect attempt runs at a time, in a task of its own and
//! without holding a lock: callers that need a connection while one is being
//! opened wait for that attempt's outcome, and may stop waiting (a caller's
//! timeout) without stopping the attempt or delaying anyone else.
//!
//! Every connection is TLS 1.3 and the tracker's key is pinned: to the
//! fingerprint its line of the trackers file gives, or else to the key
//! remembered for it in the known keys file (the first one seen is
//! remembered, as ssh does). A tracker presenting another key is not
//! skipped quietly for the next one: the call fails with
//! [`ClientError::Untrusted`], naming both keys.

mod error;
mod link;

/// What [`TrackerClient::call`] returns for an announce, where the
/// daemon has always taken it from.
pub use crate::messages::tracker::Announced;
pub use error::ClientError;

use crate::error::ErrorCode;
use crate::identity::Identity;
use crate::messages::tracker::{Notice, TrackerCall, TrackerReply, TrackerRequest};
use crate::trackers_file::TrackerEntry;
use link::{CallError, Link, OpenError, Trust};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// The pause after every tracker answered `Unavailable` in a row.
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(200);

/// A connect attempt's outcome: the new link, or why none was opened.
type Connected = Result<Arc<Link>, OpenError>;

/// The state the client shares with its connect attempt's task.
struct Shared {
    trackers: Vec<TrackerEntry>,
    addrs: Vec<String>,
    trust: Trust,
    timeout: Duration,
    preferred: AtomicUsize,
    /// The last refused key that was logged: a daemon retries often, and
    /// says it once.
    refused: Mutex<Option<String>>,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    live: Option<Arc<Link>>,
    /// The connect attempt under way; it publishes its outcome once.
    attempt: Option<watch::Receiver<Option<Connected>>>,
}

impl Shared {
    /// Never held across an await, so poisoning cannot leave it half-done.
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns the one connect attempt; the caller records the receiver in
    /// the slot while still holding it.
    fn start_attempt(self: &Arc<Self>) -> watch::Receiver<Option<Connected>> {
        let (tx, rx) = watch::channel(None);
        let attempt = Attempt {
            shared: self.clone(),
            tx,
        };
        tokio::spawn(async move {
            let connected = attempt.shared.connect().await;
            attempt.tx.send_replace(Some(connected));
        });
        rx
    }

    /// A new link to the first tracker that answers, starting from the
    /// preferred one.
    async fn connect(&self) -> Connected {
        let n = self.trackers.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = String::from("no trackers configured");
        for k in 0..n {
            let index = (start + k) % n;
            let addr = &self.addrs[index];
            match Link::open(&self.trackers[index], index, &self.trust, self.timeout).await {
                Ok(link) => {
                    if k != 0 {
                        tracing::warn!(tracker = %addr, "switched to another tracker");
                    }
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(Arc::new(link));
                }
                Err(OpenError::Unreachable(e)) => {
                    tracing::debug!(tracker = %addr, "cannot reach tracker: {e}");
                    last = format!("{addr}: {e}");
                }
                Err(OpenError::Untrusted(why)) => {
                    let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
                    if refused.as_deref() != Some(why.as_str()) {
                        tracing::warn!(tracker = %addr, "{why}");
                        *refused = Some(why.clone());
                    }
                    return Err(OpenError::Untrusted(why));
                }
            }
        }
        Err(OpenError::Unreachable(last))
    }
}

/// The connect attempt under way. However its task ends (done, or dropped
/// with its runtime), dropping this frees the slot for the next attempt and
/// installs the link it opened.
struct Attempt {
    shared: Arc<Shared>,
    tx: watch::Sender<Option<Connected>>,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let mut slot = self.shared.slot();
        // Only the running attempt ever fills `attempt`, so it is ours.
        slot.attempt = None;
        if let Some(Ok(link)) = &*self.tx.borrow() {
            slot.live = Some(link.clone());
        }
    }
}

/// A handle to the tracker cluster; cheap to share behind an `Arc`.
pub struct TrackerClient {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// Drawn at random: names this client's writes to the cluster, which
    /// keeps the answer to its last one (see [`TrackerRequest::Once`]).
    client_id: u64,
    next_seq: AtomicU64,
    /// Given each notice a reply carries; `None`: logged as a warning.
    on_notice: Option<NoticeHook>,
}

/// What a client does with the notices the trackers hand its user.
type NoticeHook = Arc<dyn Fn(&Notice) + Send + Sync>;

impl TrackerClient {
    /// `trackers` in trackers-file order; `timeout` bounds each connect and
    /// each call on one tracker before the next is tried. Keys of trackers
    /// the file does not pin are remembered in (and checked against) the
    /// file `known_keys`; `identity`, if given, is presented to the
    /// trackers (a daemon's, so its announces are its own).
    pub fn new(
        trackers: Vec<TrackerEntry>,
        known_keys: impl Into<PathBuf>,
        identity: Option<Identity>,
        timeout: Duration,
    ) -> Self {
        TrackerClient {
            shared: Arc::new(Shared {
                addrs: trackers.iter().map(|t| t.addr.clone()).collect(),
                trackers,
                trust: Trust {
                    known_keys: known_keys.into(),
                    identity,
                },
                timeout,
                preferred: AtomicUsize::new(0),
                refused: Mutex::new(None),
                slot: Mutex::new(Slot::default()),
            }),
            next_id: AtomicU64::new(1),
            client_id: client_id(),
            next_seq: AtomicU64::new(1),
            on_notice: None,
        }
    }

    /// Hands every notice a reply carries to `hook` (a command prints it)
    /// instead of logging it as a warning (what a daemon does). A notice
    /// is handed over once: the trackers forget it once it is sent.
    pub fn on_notice(mut self, hook: impl Fn(&Notice) + Send + Sync + 'static) -> Self {
        self.on_notice = Some(Arc::new(hook));
        self
    }

    pub fn addrs(&self) -> &[String] {
        &self.shared.addrs
    }

    /// The tracker currently in use, as written in the trackers file.
    pub fn current(&self) -> &str {
        let addrs = self.addrs();
        let i = self.shared.preferred.load(Ordering::Relaxed) % addrs.len().max(1);
        addrs.get(i).map(String::as_str).unwrap_or("")
    }

    /// The live link, or the outcome of the connect attempt under way,
    /// starting one if none is.
    async fn link(&self) -> Result<Arc<Link>, ClientError> {
        loop {
            let mut attempt = {
                let mut slot = self.shared.slot();
                if let Some(link) = slot.live.as_ref().filter(|l| !l.is_closed()) {
                    return Ok(link.clone());
                }
                slot.live = None;
                match &slot.attempt {
                    Some(rx) => rx.clone(),
                    None => {
                        let rx = self.shared.start_attempt();
                        slot.attempt = Some(rx.clone());
                        rx
                    }
                }
            };
            let outcome = attempt
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|o| o.clone());
            match outcome {
                Some(Ok(link)) => return Ok(link),
                Some(Err(OpenError::Unreachable(last))) => {
                    return Err(ClientError::Unreachable {
                        tried: self.addrs().join(", "),
                        last,
                    })
                }
                Some(Err(OpenError::Untrusted(why))) => return Err(ClientError::Untrusted(why)),
                // The attempt's task was dropped unfinished (its runtime
                // shut down) and has freed the slot: start another.
                None => continue,
            }
        }
    }

    /// Drops `failed` if it is still the live link, and prefers the next
    /// tracker.
    fn fail_over(&self, failed: &Arc<Link>) {
        let mut slot = self.shared.slot();
        if slot.live.as_ref().is_some_and(|l| Arc::ptr_eq(l, failed)) {
            slot.live = None;
            let next = (failed.index + 1) % self.addrs().len().max(1);
            self.shared.preferred.store(next, Ordering::Relaxed);
        }
    }

    /// Sends `req` and returns what its reply carries, failing over between
    /// trackers as needed; a reply of another kind than the request expects
    /// is [`ClientError::UnexpectedReply`]. The one way to ask the trackers
    /// anything: the caller builds the request struct, which carries its
    /// session, and the request's type says what comes back.
    pub async fn call<R: TrackerCall>(&self, req: R) -> Result<R::Reply, ClientError> {
        let reply = match self.send(req.into()).await? {
            TrackerReply::Noted { notices, reply } => {
                for n in &notices {
                    match &self.on_notice {
                        Some(hook) => hook(n),
                        None => tracing::warn!("the trackers say: {n}"),
                    }
                }
                *reply
            }
            reply => reply,
        };
        Ok(R::reply(reply)?)
    }

    /// Sends `req` and returns the tracker's answer, whatever its kind.
    async fn send(&self, req: TrackerRequest) -> Result<TrackerReply, ClientError> {
        // A write that must not take effect twice carries this client's id
        // and sequence number, so it can be sent again after a failover.
        let req = if req.is_idempotent() {
            req
        } else {
            TrackerRequest::Once {
                client: self.client_id,
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                request: Box::new(req),
            }
        };
        let addrs = self.addrs();
        let trackers = addrs.len().max(1);
        let rounds = trackers * 3;
        let timeout = self.shared.timeout;
        let mut last = String::new();
        let mut unavailable = 0;
        for _ in 0..rounds {
            let link = self.link().await?;
            let addr = &addrs[link.index];
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            match link.call(id, &req, timeout).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(ErrorCode::Unavailable(why))) => {
                    tracing::debug!(tracker = %addr, "tracker unavailable: {why}");
                    last = format!("{addr}: {why}");
                    self.fail_over(&link);
                    // Every tracker asked said it is not ready (a cluster
                    // choosing a new leader, a tracker catching up): give
                    // them a moment before the next round.
                    unavailable += 1;
                    if unavailable % trackers == 0 {
                        tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                    }
                }
                Ok(Err(code)) => return Err(ClientError::Refused(code)),
                Err(CallError::NotSent(why)) => {
                    last = format!("{addr}: {why}");
                    self.fail_over(&link);
                }
                Err(CallError::Lost(why)) => {
                    tracing::warn!(tracker = %addr, "lost tracker: {why}");
                    last = format!("{addr}: {why}");
                    self.fail_over(&link);
                    if !req.is_idempotent() {
                        return Err(ClientError::Interrupted);
                    }
                }
            }
        }
        Err(ClientError::Unreachable {
            tried: addrs.join(", "),
            last,
        })
    }
}

#[cfg(test)]
mod tests;

/// A random client id: 64 bits, so two clients of one cluster practically
/// never draw the same.
fn client_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No randomness: the time and the process make a unique enough id.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let low = u64::try_from(t & u128::from(u64::MAX)).unwrap_or(0);
        return low ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_le_bytes(b)
}
