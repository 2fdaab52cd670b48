//! The connections between trackers: the only place consensus does I/O.
//!
//! Every tracker dials every other one (as `Role::Tracker { no }`) and
//! sends only on the connection it dialed; what it receives comes in on the
//! connections the others dialed, accepted by the client listener
//! ([`crate::server`]) and handed to [`serve_inbound`]. So each direction
//! has its own connection, and a broken one is redialed by its sender.
//!
//! Every connection is TLS 1.3 and both ends are the trackers they claim to
//! be: a dialer presents this tracker's key and requires the other's key to
//! be the one the trackers file pins for it, or else the one first seen for
//! it and remembered in the data directory. A tracker presenting another
//! key is never sent anything; the server admits inbound connections by
//! the same rule (see [`crate::server`]).
//!
//! This module owns the gossip and the delivery between trackers and
//! imports nothing of the tracker above it: the node sends
//! through an [`Outbox`], handlers gossip through
//! [`Transport::broadcast`], and [`serve_inbound`] routes what arrives to
//! an [`Inbox`] (soft-state news to [`Inbox::gossip`], the rest to
//! [`Inbox::deliver`]), which the server supplies.
//!
//! Sending never blocks the sender: each peer has a bounded queue,
//! and a message that does not fit (the peer is slow or away) is dropped.
//! The engine calls again whatever matters, so a lost message
//! costs time, never correctness. While a peer is away its queue is
//! drained, so it does not get a backlog of stale messages on reconnect.

use fileshare_protocol::connection::FrameReader;
use fileshare_protocol::known_keys::TrackerTrust;
use fileshare_protocol::messages::{ClusterMsg, Role};
use fileshare_protocol::tls::{self, ClientTls, TlsError};
use fileshare_protocol::{Identity, ProtocolError};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Messages queued for one peer before new ones are dropped.
const QUEUE: usize = 4096;

/// Most queued messages written before one flush.
const BURST: usize = 64;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits between connection attempts, doubling up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Where the node sends the engine's calls and its own messages.
pub trait Outbox: Send + Sync {
    /// Queues `msg` for tracker `to`; false if it was dropped.
    fn send(&self, to: u32, msg: ClusterMsg) -> bool;
    /// Whether the connection to `to` is up right now.
    fn connected(&self, to: u32) -> bool;
}

/// Where what the other trackers send goes.
pub trait Inbox: Send + Sync {
    /// Applies another tracker's news about a daemon (soft state).
    fn gossip(&self, msg: ClusterMsg);
    /// Hands a message from tracker `from` to the node; false once
    /// it stopped.
    fn deliver(&self, from: u32, msg: ClusterMsg) -> impl Future<Output = bool> + Send;
}

struct Link {
    tx: mpsc::Sender<ClusterMsg>,
    connected: Arc<AtomicBool>,
}

/// The outgoing side: one queue and one dialing task per other tracker.
pub struct Transport {
    links: BTreeMap<u32, Link>,
}

impl Transport {
    /// A transport to nobody: a tracker alone in its trackers file.
    pub fn none() -> Arc<Transport> {
        Arc::new(Transport {
            links: BTreeMap::new(),
        })
    }

    /// Starts dialing every tracker of `trackers` (trackers-file order)
    /// but `me`, as `identity` and pinning each one's key as its trust
    /// says, until `cancel`; the tasks are tracked by `tasks`.
    pub fn start(
        me: u32,
        trackers: &[TrackerTrust],
        identity: &Identity,
        cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Transport> {
        let mut links = BTreeMap::new();
        for (i, trust) in trackers.iter().enumerate() {
            let Ok(no) = u32::try_from(i + 1) else { break };
            if no == me {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            let connected = Arc::new(AtomicBool::new(false));
            tasks.spawn(dial(
                Dialer {
                    me,
                    no,
                    trust: trust.clone(),
                    identity: identity.clone(),
                },
                rx,
                connected.clone(),
                cancel.clone(),
            ));
            links.insert(no, Link { tx, connected });
        }
        Arc::new(Transport { links })
    }

    /// Gossip to every tracker that is connected.
    pub fn broadcast(&self, msg: &ClusterMsg) {
        for (no, link) in &self.links {
            if link.connected.load(Ordering::Relaxed) && link.tx.try_send(msg.clone()).is_err() {
                tracing::debug!(tracker = no, "gossip dropped: queue full");
            }
        }
    }
}

impl Outbox for Transport {
    fn send(&self, to: u32, msg: ClusterMsg) -> bool {
        self.links
            .get(&to)
            .is_some_and(|l| l.tx.try_send(msg).is_ok())
    }

    fn connected(&self, to: u32) -> bool {
        self.links
            .get(&to)
            .is_some_and(|l| l.connected.load(Ordering::Relaxed))
    }
}

/// Who dials whom, and how the other's key is checked.
struct Dialer {
    me: u32,
    no: u32,
    trust: TrackerTrust,
    identity: Identity,
}

/// Keeps a connection to tracker `no` and writes its queue to it.
async fn dial(
    d: Dialer,
    mut rx: mpsc::Receiver<ClusterMsg>,
    connected: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let (me, no) = (d.me, d.no);
    let addr = d.trust.addr().to_string();
    let tls = match ClientTls::new(Some(&d.identity), d.trust.pin()) {
        Ok(tls) => tls,
        Err(e) => {
            tracing::error!(tracker = no, "cannot set up TLS to tracker {no}: {e}");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    let mut reported = false;
    // The last refusal of the other's key that was logged: an impostor
    // redialed every half second is logged once, not at every attempt.
    let mut refused: Option<String> = None;
    loop {
        let attempt = tokio::select! {
            () = cancel.cancelled() => break,
            r = tls::connect(&addr, &tls, Role::Tracker { no: me }, CONNECT_TIMEOUT) => r,
        };
        let checked = attempt.and_then(|(conn, role, seen)| {
            d.trust.check(seen)?;
            Ok((conn, role))
        });
        let (conn, role) = match checked {
            Ok(ok) => ok,
            Err(e) => {
                let text = fileshare_protocol::error::chain(&e);
                if is_wrong_key(&e) {
                    if refused.as_deref() != Some(text.as_str()) {
                        tracing::warn!(
                            tracker = no,
                            %addr,
                            "not talking to tracker {no}: {text}; it is sent nothing"
                        );
                        refused = Some(text);
                    }
                } else if !reported {
                    tracing::debug!(tracker = no, %addr, "cannot reach tracker: {text}");
                    reported = true;
                }
                // What was queued while it is away would be stale.
                while rx.try_recv().is_ok() {}
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if role != (Role::Tracker { no }) {
            tracing::warn!(
                tracker = no,
                %addr,
                "{addr} answered as {role:?}, not as tracker {no}: check the trackers file"
            );
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(BACKOFF_MAX) => {}
            }
            continue;
        }
        tracing::info!(tracker = no, %addr, "connected to tracker {no}");
        reported = false;
        refused = None;
        backoff = BACKOFF_MIN;
        connected.store(true, Ordering::Relaxed);
        let (_, mut writer) = conn.into_split();
        let mut stopping = false;
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                () = cancel.cancelled(), if !stopping => {
                    // Flush what is queued (a last status says we stop),
                    // briefly, then leave.
                    stopping = true;
                    continue;
                }
                () = tokio::time::sleep(Duration::from_millis(200)), if stopping => None,
            };
            let Some(msg) = msg else { break };
            // What queued up meanwhile goes with it, in one flush.
            let mut written = writer.queue_frame(&msg).await;
            for _ in 1..BURST {
                if written.is_err() {
                    break;
                }
                let Ok(msg) = rx.try_recv() else { break };
                written = writer.queue_frame(&msg).await;
            }
            if let Err(e) = written.and(writer.flush().await) {
                tracing::info!(tracker = no, "connection to tracker {no} lost: {e}");
                break;
            }
        }
        connected.store(false, Ordering::Relaxed);
        if stopping || cancel.is_cancelled() {
            let _ = writer.shutdown().await;
            break;
        }
    }
    connected.store(false, Ordering::Relaxed);
}

/// Whether the other end is up but is not the tracker it should be.
fn is_wrong_key(e: &TlsError) -> bool {
    matches!(
        e,
        TlsError::KeyMismatch { .. } | TlsError::PeerMismatch { .. } | TlsError::Trust(_)
    )
}

/// Reads what tracker `from` sends on a connection it dialed, until it
/// closes or `cancel`: gossip goes to [`Inbox::gossip`], the rest to
/// [`Inbox::deliver`]. A frame that cannot be read ends the connection.
pub async fn serve_inbound<R: AsyncRead + Unpin, I: Inbox>(
    from: u32,
    mut reader: FrameReader<R>,
    inbox: Arc<I>,
    cancel: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            f = reader.read_frame::<ClusterMsg>() => f,
        };
        let msg = match frame {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(ProtocolError::Io(e)) => {
                tracing::debug!(tracker = from, "connection from tracker {from} lost: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!(
                    tracker = from,
                    "closing connection from tracker {from}: {e}"
                );
                return;
            }
        };
        match msg {
            ClusterMsg::PeerAnnounced { .. }
            | ClusterMsg::PiecesReported { .. }
            | ClusterMsg::PeerLeft { .. } => inbox.gossip(msg),
            other => {
                if !inbox.deliver(from, other).await {
                    return;
                }
            }
        }
    }
}
