//! Accepting connections and serving requests on them.
//!
//! Every connection is TLS 1.3 with this tracker's key; a client may
//! present a key of its own (a daemon always does), and its fingerprint
//! goes with each of its requests ([`Caller::client_key`]).
//!
//! A connection from another tracker of the cluster (it says
//! `Role::Tracker { no }`) must present tracker `no`'s key: the one the
//! trackers file pins, or else the one first seen for it and remembered in
//! the data directory. Then it is handed to the replication transport, with
//! this tracker's [`Inbox`]: gossip to [`cmd::peer::apply_gossip`], the
//! rest to the consensus node. Any other key is closed at once, having
//! been read nothing, and logged once per claimed number and address in
//! [`REFUSAL_LOG_INTERVAL`]. A client connection is only ever read as
//! client requests, so it can never carry a cluster message.
//! Connections over `--max-connections`, or over
//! `--max-connections-per-address` from one address, are closed as soon as
//! they are accepted (see [`ConnLimits`]).
//! Each client connection gets a handler: a read loop that spawns one task per
//! request (at most [`MAX_IN_FLIGHT`] at a time, and no more than
//! [`QUEUED_REPLY_BYTES`] of replies not yet written) and a writer task that
//! sends replies in the order they complete, each with its request's id.
//! A client that sends no frame for `--idle-timeout` is closed; daemons ping.
//! A frame that cannot be read or decoded ends that connection only, after
//! one log line and without a reply; nothing a client sends can panic the
//! process. On shutdown, handlers stop reading, finish the requests in
//! flight, flush their replies and close.

use crate::cmd::{self, Caller};
use crate::consensus::transport::{self, Inbox};
use crate::shared::Shared;
use fileshare_protocol::conn_limits::ConnLimits;
use fileshare_protocol::connection::FrameWriter;
use fileshare_protocol::known_keys::{KnownKeysError, TrackerTrust};
use fileshare_protocol::messages::tracker::RELAY_MAGIC;
use fileshare_protocol::messages::{
    ClusterMsg, Reply, Request, Role, TrackerRequest, TrackerResult,
};
use fileshare_protocol::tls::{self, SecureConnection, ServerTls, TlsError};
use fileshare_protocol::{ErrorCode, Fingerprint, ProtocolError, MAX_FRAME_LEN};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Requests of one connection processed at once; the read loop waits for
/// a slot, so a flooding client slows only itself.
pub const MAX_IN_FLIGHT: usize = 128;

/// Bytes of replies one connection may have computed but not yet written:
/// a client that does not read stops being read. A request that may
/// answer with a listing reserves a whole frame, any other
/// [`SMALL_REPLY`], until its reply is written.
pub const QUEUED_REPLY_BYTES: usize = 4 * MAX_FRAME_LEN;

/// What a reply that is not a listing reserves of [`QUEUED_REPLY_BYTES`].
const SMALL_REPLY: usize = 16 * 1024;

/// The budget's unit: semaphores count in `u32`.
const BUDGET_UNIT: usize = 1024;

/// How long an accepted connection may take to show its first byte
/// (which tells a relayed connection from a TLS one).
const RELAY_SORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often refused connections are logged at most.
const CAP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long, once shutdown starts, a connection may take to accept its
/// last replies.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often a refused tracker connection from one address, claiming one
/// number, is logged: an impostor redials every half second.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(600);

/// Who is let in: this tracker's TLS setup, and how each tracker of the
/// trackers file (by number, from 1) is recognised.
pub struct Admission {
    tls: ServerTls,
    trackers: Vec<TrackerTrust>,
    /// When a refusal was last logged, by claimed number and address.
    logged: Mutex<HashMap<(u32, IpAddr), Instant>>,
}

impl Admission {
    /// `trackers` in trackers-file order.
    pub fn new(tls: ServerTls, trackers: Vec<TrackerTrust>) -> Admission {
        Admission {
            tls,
            trackers,
            logged: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a client that presented `key` is tracker `no`: the key must
    /// be the one pinned for it, or the one this tracker learned by
    /// dialling it (never learned here). `Ok(false)`: not learned yet,
    /// which happens at start-up, before this tracker's own dial got
    /// through; the other side dials again.
    fn is_tracker(&self, no: u32, key: Option<Fingerprint>) -> Result<bool, String> {
        let trust = usize::try_from(no)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| self.trackers.get(i))
            .ok_or_else(|| format!("there is no tracker {no}"))?;
        let key = key.ok_or("it presented no key")?;
        match trust.check_incoming(key) {
            Ok(()) => Ok(true),
            Err(KnownKeysError::NotLearned { .. }) => Ok(false),
            Err(e) => Err(fileshare_protocol::error::chain(&e)),
        }
    }

    /// Logs a refused tracker connection, unless the same claim from the
    /// same address was logged in the last [`REFUSAL_LOG_INTERVAL`].
    fn log_refusal(&self, no: u32, from: SocketAddr, why: &str) {
        let now = Instant::now();
        let fresh = {
            let mut logged = self.logged.lock();
            // Bounded: a flood of addresses forgets the oldest news.
            if logged.len() >= 1024 {
                logged.retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
                if logged.len() >= 1024 {
                    logged.clear();
                }
            }
            match logged.get(&(no, from.ip())) {
                Some(at) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => false,
                _ => {
                    logged.insert((no, from.ip()), now);
                    true
                }
            }
        };
        if fresh {
            tracing::warn!(
                peer = %from,
                "refused a connection claiming to be tracker {no}: {why}; it gets nothing \
                 (further attempts are not logged for {} s)",
                REFUSAL_LOG_INTERVAL.as_secs()
            );
        } else {
            tracing::debug!(peer = %from, "refused a connection claiming to be tracker {no}: {why}");
        }
    }
}

/// Serves `listeners` until `shutdown` completes, then waits for every
/// connection to finish its requests in flight.
pub async fn run(
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
    admission: Admission,
    shutdown: impl Future,
) {
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let limits = ConnLimits::new(
        shared.settings.limits.connections,
        shared.settings.limits.connections_per_address,
    );
    let mut server = Listener {
        listeners,
        shared,
        limits,
        admission: Arc::new(admission),
        last_cap_log: None,
        cancel: cancel.clone(),
        tasks: tasks.clone(),
    };
    tokio::select! {
        () = server.run() => {}
        _ = shutdown => tracing::info!("shutting down"),
    }
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
}

struct Listener {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    limits: ConnLimits,
    last_cap_log: Option<Instant>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Listener {
    /// Accepts forever. Accept errors (out of file descriptors, mostly) are
    /// retried with backoff rather than ending the tracker.
    async fn run(&mut self) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let (stream, addr) = match accept_any(&self.listeners).await {
                Ok((s, a)) => {
                    backoff = Duration::from_millis(10);
                    // A dual-stack listener shows IPv4 clients as mapped
                    // IPv6 addresses: limits and offers use the IPv4 one.
                    (s, SocketAddr::new(a.ip().to_canonical(), a.port()))
                }
                Err(e) => {
                    tracing::warn!("accept failed, retrying in {backoff:?}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let slot = match self.limits.admit(addr.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    let now = Instant::now();
                    if self
                        .last_cap_log
                        .is_none_or(|at| now.duration_since(at) >= CAP_LOG_INTERVAL)
                    {
                        self.last_cap_log = Some(now);
                        tracing::warn!(peer = %addr, "closing a new connection: {why}");
                    }
                    drop(stream);
                    continue;
                }
            };
            let handler = Handler {
                shared: self.shared.clone(),
                admission: self.admission.clone(),
                addr,
                cancel: self.cancel.clone(),
                tasks: self.tasks.clone(),
            };
            self.tasks.spawn(async move {
                handler.run(stream).await;
                drop(slot);
            });
        }
    }
}

/// The next connection on any of `listeners`.
async fn accept_any(listeners: &[TcpListener]) -> std::io::Result<(TcpStream, SocketAddr)> {
    std::future::poll_fn(|cx| {
        for l in listeners {
            if let std::task::Poll::Ready(r) = l.poll_accept(cx) {
                return std::task::Poll::Ready(r);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

struct Handler {
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    addr: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Handler {
    async fn run(self, stream: TcpStream) {
        let me = Role::Tracker {
            no: self.shared.settings.tracker_no,
        };
        // A relayed connection starts with the relay's magic, any other
        // with a TLS handshake record.
        let mut first = [0u8; 1];
        let peeked = tokio::select! {
            r = tokio::time::timeout(RELAY_SORT_TIMEOUT, stream.peek(&mut first)) => r,
            () = self.cancel.cancelled() => return,
        };
        if matches!(peeked, Ok(Ok(1))) && first[0] == RELAY_MAGIC[0] {
            tokio::select! {
                () = self.shared.relay.serve(stream) => {}
                () = self.cancel.cancelled() => {}
            }
            return;
        }
        let accepted = tokio::select! {
            r = tls::accept(stream, &self.admission.tls, me) => r,
            () = self.cancel.cancelled() => return,
        };
        let (conn, key) = match accepted {
            Ok((conn, Role::Client, key)) => (conn, key),
            Ok((conn, Role::Tracker { no }, key)) => {
                return self.serve_tracker(conn, no, key).await
            }
            Ok((_, other, _)) => {
                tracing::info!(peer = %self.addr, "closing connection: {other:?} is not a client");
                return;
            }
            // Probes, scanners and clients that gave up mid-handshake are
            // common and say nothing about this tracker.
            Err(e @ (TlsError::Handshake { .. } | TlsError::Timeout { .. })) => {
                let e = fileshare_protocol::error::chain(&e);
                tracing::debug!(peer = %self.addr, "closing connection: {e}");
                return;
            }
            Err(e) => {
                let e = fileshare_protocol::error::chain(&e);
                tracing::info!(peer = %self.addr, "closing connection: {e}");
                return;
            }
        };
        self.serve_client(conn, key).await;
    }

    /// Hands a connection from tracker `no` to the replication transport,
    /// if it is that tracker.
    async fn serve_tracker(self, conn: SecureConnection, no: u32, key: Option<Fingerprint>) {
        let size = self.shared.settings.cluster_size;
        if no == 0 || no > size || no == self.shared.settings.tracker_no {
            let why = format!("it is not another tracker of the {size} in the trackers file");
            self.admission.log_refusal(no, self.addr, &why);
            return;
        }
        match self.admission.is_tracker(no, key) {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(
                    tracker = no,
                    peer = %self.addr,
                    "tracker {no}'s key is not learned yet (this tracker learns it by dialling): \
                     closed"
                );
                return;
            }
            Err(why) => {
                self.admission.log_refusal(no, self.addr, &why);
                return;
            }
        }
        let (reader, _writer) = conn.into_split();
        transport::serve_inbound(no, reader, self.shared.clone(), self.cancel.clone()).await;
    }

    /// Reads client requests, and only those, until the client leaves.
    async fn serve_client(self, conn: SecureConnection, key: Option<Fingerprint>) {
        let (mut reader, writer) = conn.into_split();
        reader.set_idle_timeout(Some(self.shared.settings.limits.idle_timeout));
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let writer = tokio::spawn(write_replies(writer, rx, self.addr));
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let budget = Arc::new(Semaphore::new(QUEUED_REPLY_BYTES / BUDGET_UNIT));
        let caller = Caller {
            addr: Some(self.addr),
            key,
        };
        loop {
            let frame = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                f = reader.read_frame::<Request<TrackerRequest>>() => f,
            };
            let req = match frame {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) => {
                    log_bad_frame(&self.addr, &e);
                    break;
                }
            };
            let permit = tokio::select! {
                p = in_flight.clone().acquire_owned() => p,
                () = self.cancel.cancelled() => break,
            };
            let Ok(permit) = permit else { break };
            let units = u32::try_from(reply_reserve(&req.body) / BUDGET_UNIT).unwrap_or(u32::MAX);
            let reserved = tokio::select! {
                r = budget.clone().acquire_many_owned(units) => r,
                () = self.cancel.cancelled() => break,
            };
            let Ok(reserved) = reserved else { break };
            let tx = tx.clone();
            let shared = self.shared.clone();
            self.tasks.spawn(async move {
                let body = cmd::dispatch(&shared, &caller, req.body).await;
                drop(permit);
                let _ = tx.send((Reply { id: req.id, body }, reserved)).await;
            });
        }
        // The writer ends once every request task has sent its reply. A
        // client that stopped reading could hold it forever: at shutdown it
        // gets a grace period, then its replies are dropped.
        drop(tx);
        let mut writer = writer;
        tokio::select! {
            _ = &mut writer => {}
            () = async {
                self.cancel.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::info!(peer = %self.addr, "dropping replies the client does not read");
                writer.abort();
            }
        }
    }
}

impl Inbox for Shared {
    fn gossip(&self, msg: ClusterMsg) {
        cmd::peer::apply_gossip(self, msg);
    }

    async fn deliver(&self, from: u32, msg: ClusterMsg) -> bool {
        self.node.deliver(from, msg);
        true
    }
}

fn log_bad_frame(addr: &SocketAddr, e: &ProtocolError) {
    match e {
        ProtocolError::Io(_) => tracing::debug!(peer = %addr, "connection lost: {e}"),
        _ => tracing::warn!(peer = %addr, "closing connection after a bad frame: {e}"),
    }
}

/// What a request's reply may take of [`QUEUED_REPLY_BYTES`]: a whole frame
/// for listings, little for the rest.
fn reply_reserve(req: &TrackerRequest) -> usize {
    use TrackerRequest as R;
    match req {
        R::ListGroups { .. }
        | R::ListRequests { .. }
        | R::ListFiles { .. }
        | R::Search { .. }
        | R::Locate { .. } => MAX_FRAME_LEN,
        _ => SMALL_REPLY,
    }
}

/// A reply, and its reservation of the connection's budget, released once
/// the reply is written.
type Queued = (Reply<TrackerResult>, OwnedSemaphorePermit);

async fn write_replies<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut rx: mpsc::Receiver<Queued>,
    addr: SocketAddr,
) {
    while let Some((reply, _reserved)) = rx.recv().await {
        let id = reply.id;
        let sent = match writer.write_frame(&reply).await {
            Err(ProtocolError::FrameTooLarge { .. } | ProtocolError::Encode(_)) => {
                // Nothing was written; the client still gets an answer.
                let body: TrackerResult =
                    Err(ErrorCode::Internal("the reply is too large to send".into()));
                writer.write_frame(&Reply { id, body }).await
            }
            other => other,
        };
        if let Err(e) = sent {
            tracing::debug!(peer = %addr, "cannot send reply: {e}");
            // Keep draining so request tasks never wait on a dead socket.
            while rx.recv().await.is_some() {}
            return;
        }
    }
    let _ = writer.shutdown().await;
}
