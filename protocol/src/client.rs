//! A tracker client shared by the CLI, the daemon and the trackers' tests.
//!
//! One connection carries any number of concurrent calls, matched by request
//! id. When the tracker in use stops answering, the client moves to the next
//! one of the trackers file and stays there; the caller sees an error only
//! when no tracker answers, or when a call that must not be repeated was cut
//! off mid-flight.
//!
//! Each request has a typed method returning what that request's reply
//! carries, so a reply of the wrong kind is turned into an error once, here,
//! rather than matched away at every caller.
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

pub use error::ClientError;

use crate::error::ErrorCode;
use crate::identity::Identity;
use crate::ids::{FileId, FileMeta, PeerId};
use crate::messages::ticket::{Ticket, TicketKey};
use crate::messages::tracker::{
    Call, FileEntry, GroupInfo, Holding, PeerLocation, Reach, SessionToken, TrackerReply,
    TrackerRequest,
};
use crate::trackers_file::TrackerEntry;
use link::{CallError, Link, OpenError, Trust};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// A new session, as [`TrackerClient::login`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub token: SessionToken,
    /// The user name as the tracker spells it.
    pub user: String,
    pub expires_unix_ms: u64,
}

/// A file's metadata and the online peers holding any of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub meta: FileMeta,
    pub peers: Vec<PeerLocation>,
}

/// An announce's answer, as [`TrackerClient::announce`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// When the next announce is due.
    pub interval: Duration,
    /// The address the tracker offers this peer at.
    pub offered: String,
    /// The address the announce's connection came from.
    pub seen: String,
    pub reach: Reach,
}

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
}

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
        }
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

    /// Sends `req` and returns the tracker's answer, failing over between
    /// trackers as needed. Private: callers use the typed methods, so no
    /// caller ever matches on a reply of the wrong kind.
    async fn call(&self, req: TrackerRequest) -> Result<TrackerReply, ClientError> {
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

    /// Sends `req` and keeps what `extract` takes out of the reply; any
    /// other kind of reply is the one place an `UnexpectedReply` is made.
    async fn call_as<T>(
        &self,
        req: TrackerRequest,
        extract: fn(TrackerReply) -> Option<T>,
    ) -> Result<T, ClientError> {
        let request = req.name();
        let reply = self.call(req).await?;
        let name = reply.name();
        extract(reply).ok_or(ClientError::UnexpectedReply {
            request,
            reply: name,
        })
    }

    /// [`Self::call_as`] for the requests answered with a bare `Done`.
    async fn call_done(&self, req: TrackerRequest) -> Result<(), ClientError> {
        self.call_as(req, |r| matches!(r, TrackerReply::Done).then_some(()))
            .await
    }

    pub async fn create_user(&self, user: &str, password: &str) -> Result<(), ClientError> {
        self.call_done(TrackerRequest::CreateUser {
            user: user.into(),
            password: password.into(),
        })
        .await
    }

    pub async fn login(&self, user: &str, password: &str) -> Result<Login, ClientError> {
        let req = TrackerRequest::Login {
            user: user.into(),
            password: password.into(),
        };
        self.call_as(req, |r| match r {
            TrackerReply::Session {
                token,
                user,
                expires_unix_ms,
            } => Some(Login {
                token,
                user,
                expires_unix_ms,
            }),
            _ => None,
        })
        .await
    }

    pub async fn logout(&self, session: SessionToken) -> Result<(), ClientError> {
        self.call_done(TrackerRequest::Logout { session }).await
    }

    pub async fn create_group(
        &self,
        session: SessionToken,
        group: &str,
    ) -> Result<(), ClientError> {
        let group = group.into();
        self.call_done(TrackerRequest::CreateGroup { session, group })
            .await
    }

    /// Every group, with the caller's standing in each.
    pub async fn list_groups(&self, session: SessionToken) -> Result<Vec<GroupInfo>, ClientError> {
        self.call_as(TrackerRequest::ListGroups { session }, |r| match r {
            TrackerReply::Groups(g) => Some(g),
            _ => None,
        })
        .await
    }

    /// Asks to join `group`; its owner decides.
    pub async fn join_group(&self, session: SessionToken, group: &str) -> Result<(), ClientError> {
        let group = group.into();
        self.call_done(TrackerRequest::JoinGroup { session, group })
            .await
    }

    pub async fn leave_group(&self, session: SessionToken, group: &str) -> Result<(), ClientError> {
        let group = group.into();
        self.call_done(TrackerRequest::LeaveGroup { session, group })
            .await
    }

    /// The users waiting to join `group` (its owner only).
    pub async fn list_requests(
        &self,
        session: SessionToken,
        group: &str,
    ) -> Result<Vec<String>, ClientError> {
        let group = group.into();
        self.call_as(
            TrackerRequest::ListRequests { session, group },
            |r| match r {
                TrackerReply::Requests(users) => Some(users),
                _ => None,
            },
        )
        .await
    }

    pub async fn accept_request(
        &self,
        session: SessionToken,
        group: &str,
        user: &str,
    ) -> Result<(), ClientError> {
        let (group, user) = (group.into(), user.into());
        self.call_done(TrackerRequest::AcceptRequest {
            session,
            group,
            user,
        })
        .await
    }

    pub async fn reject_request(
        &self,
        session: SessionToken,
        group: &str,
        user: &str,
    ) -> Result<(), ClientError> {
        let (group, user) = (group.into(), user.into());
        self.call_done(TrackerRequest::RejectRequest {
            session,
            group,
            user,
        })
        .await
    }

    /// Takes `user` out of `group` (its owner only).
    pub async fn remove_member(
        &self,
        session: SessionToken,
        group: &str,
        user: &str,
    ) -> Result<(), ClientError> {
        let (group, user) = (group.into(), user.into());
        self.call_done(TrackerRequest::RemoveMember {
            session,
            group,
            user,
        })
        .await
    }

    pub async fn list_files(
        &self,
        session: SessionToken,
        group: &str,
    ) -> Result<Vec<FileEntry>, ClientError> {
        let group = group.into();
        self.call_as(TrackerRequest::ListFiles { session, group }, |r| match r {
            TrackerReply::Files(files) => Some(files),
            _ => None,
        })
        .await
    }

    /// Files whose name contains `pattern`, in every group of the caller.
    pub async fn search(
        &self,
        session: SessionToken,
        pattern: &str,
    ) -> Result<Vec<FileEntry>, ClientError> {
        let pattern = pattern.into();
        self.call_as(TrackerRequest::Search { session, pattern }, |r| match r {
            TrackerReply::Files(files) => Some(files),
            _ => None,
        })
        .await
    }

    pub async fn share_file(
        &self,
        session: SessionToken,
        group: &str,
        meta: FileMeta,
    ) -> Result<(), ClientError> {
        let group = group.into();
        self.call_done(TrackerRequest::ShareFile {
            session,
            group,
            meta,
        })
        .await
    }

    pub async fn stop_share(
        &self,
        session: SessionToken,
        group: &str,
        name: &str,
    ) -> Result<(), ClientError> {
        let (group, name) = (group.into(), name.into());
        self.call_done(TrackerRequest::StopShare {
            session,
            group,
            name,
        })
        .await
    }

    /// Moves this user's holding of `from` to the name `to`, in one step.
    pub async fn rename_share(
        &self,
        session: SessionToken,
        group: &str,
        from: &str,
        to: &str,
    ) -> Result<(), ClientError> {
        let (group, from, to) = (group.into(), from.into(), to.into());
        self.call_done(TrackerRequest::RenameShare {
            session,
            group,
            from,
            to,
        })
        .await
    }

    /// Shares `meta`, replacing this user's own different file of that name
    /// in the same step.
    pub async fn replace_share(
        &self,
        session: SessionToken,
        group: &str,
        meta: FileMeta,
    ) -> Result<(), ClientError> {
        let group = group.into();
        self.call_done(TrackerRequest::ReplaceShare {
            session,
            group,
            meta,
        })
        .await
    }

    pub async fn locate(
        &self,
        session: SessionToken,
        group: &str,
        name: &str,
    ) -> Result<Location, ClientError> {
        let (group, name) = (group.into(), name.into());
        let req = TrackerRequest::Locate {
            session,
            group,
            name,
        };
        self.call_as(req, |r| match r {
            TrackerReply::Location { meta, peers } => Some(Location { meta, peers }),
            _ => None,
        })
        .await
    }

    /// Offers this peer at `addr` (and at `also`, its addresses in other
    /// address families) with everything it holds; returns the tracker's
    /// interval until the next announce is due and how the tracker sees
    /// this peer.
    pub async fn announce(
        &self,
        session: SessionToken,
        peer: PeerId,
        addr: &str,
        also: &[String],
        holdings: Vec<Holding>,
    ) -> Result<Announced, ClientError> {
        let req = TrackerRequest::Announce {
            session,
            peer,
            addr: addr.into(),
            also: also.to_vec(),
            holdings,
        };
        self.call_as(req, |r| match r {
            TrackerReply::Announced {
                interval_secs,
                offered,
                seen,
                reach,
            } => Some(Announced {
                interval: Duration::from_secs(u64::from(interval_secs)),
                offered,
                seen,
                reach,
            }),
            _ => None,
        })
        .await
    }

    /// Asks `holder` (through the tracker) to dial this peer back.
    pub async fn call_back(
        &self,
        session: SessionToken,
        group: &str,
        holder: PeerId,
        nonce: [u8; 16],
    ) -> Result<(), ClientError> {
        self.call_done(TrackerRequest::CallBack {
            session,
            group: group.into(),
            holder,
            nonce,
        })
        .await
    }

    /// Asks the tracker to call `holder` to punch a path to this peer
    /// (both dialling each other's offered address at once).
    pub async fn punch(
        &self,
        session: SessionToken,
        group: &str,
        holder: PeerId,
        nonce: [u8; 16],
    ) -> Result<(), ClientError> {
        self.call_done(TrackerRequest::Punch {
            session,
            group: group.into(),
            holder,
            nonce,
        })
        .await
    }

    /// Asks the tracker to relay between this peer and `holder`: both
    /// then connect to the tracker's relay with `nonce`.
    pub async fn relay(
        &self,
        session: SessionToken,
        group: &str,
        holder: PeerId,
        nonce: [u8; 16],
    ) -> Result<(), ClientError> {
        self.call_done(TrackerRequest::Relay {
            session,
            group: group.into(),
            holder,
            nonce,
        })
        .await
    }

    /// The calls other peers placed for `peer`, waiting up to `wait` for
    /// one (keep it under the client's timeout).
    pub async fn await_calls(
        &self,
        session: SessionToken,
        peer: PeerId,
        wait: Duration,
    ) -> Result<Vec<Call>, ClientError> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let req = TrackerRequest::AwaitCalls {
            session,
            peer,
            wait_ms,
        };
        self.call_as(req, |r| match r {
            TrackerReply::Calls(c) => Some(c),
            _ => None,
        })
        .await
    }

    /// Pieces of `file` this peer verified since its last announce.
    pub async fn report_pieces(
        &self,
        session: SessionToken,
        peer: PeerId,
        file: FileId,
        pieces: Vec<u32>,
    ) -> Result<(), ClientError> {
        self.call_done(TrackerRequest::ReportPieces {
            session,
            peer,
            file,
            pieces,
        })
        .await
    }

    pub async fn leave_network(
        &self,
        session: SessionToken,
        peer: PeerId,
    ) -> Result<(), ClientError> {
        self.call_done(TrackerRequest::LeaveNetwork { session, peer })
            .await
    }

    /// A ticket for this user's daemon `holder` in `group` (members only).
    pub async fn issue_ticket(
        &self,
        session: SessionToken,
        group: &str,
        holder: PeerId,
    ) -> Result<Ticket, ClientError> {
        let group = group.into();
        let req = TrackerRequest::IssueTicket {
            session,
            group,
            holder,
        };
        self.call_as(req, |r| match r {
            TrackerReply::Ticket(t) => Some(t),
            _ => None,
        })
        .await
    }

    /// The cluster's public key, which checks every ticket it issues.
    pub async fn ticket_key(&self) -> Result<TicketKey, ClientError> {
        self.call_as(TrackerRequest::TicketKey, |r| match r {
            TrackerReply::TicketKey(k) => Some(k),
            _ => None,
        })
        .await
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
