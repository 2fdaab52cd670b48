//! One live connection to one tracker: opened over TLS with the tracker's
//! key pinned (see the parent module), then any number of calls in flight,
//! matched by request id.

use crate::connection::FrameWriter;
use crate::identity::Identity;
use crate::known_keys::{Seen, TrackerTrust};
use crate::messages::tracker::{AskTicketKey, TrackerRequest, TrackerResult};
use crate::messages::{Reply, Request, Role};
use crate::tls::{self, ClientTls, SecureStream, TlsError};
use crate::trackers_file::TrackerEntry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::WriteHalf;
use tokio::sync::oneshot;

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<TrackerResult>>>>>;

type Writer = Arc<tokio::sync::Mutex<FrameWriter<WriteHalf<SecureStream>>>>;

/// How often an open link pings its tracker, well within the trackers'
/// idle deadline (`--idle-timeout`, 120 s by default), so a daemon's link
/// stays up between its calls.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// The request id of pings; their replies match no call and are dropped.
const PING_ID: u64 = u64::MAX;

/// One live connection to one tracker.
pub(super) struct Link {
    pub(super) index: usize,
    writer: Writer,
    /// `None` once the reader has seen the connection end.
    pending: Pending,
    reader: tokio::task::JoinHandle<()>,
    pinger: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
        self.pinger.abort();
    }
}

pub(super) enum CallError {
    /// Nothing reached the tracker: safe to retry anywhere.
    NotSent(String),
    /// Sent, then the link failed before the reply.
    Lost(String),
}

/// Why a link could not be opened.
#[derive(Debug, Clone)]
pub(super) enum OpenError {
    /// Down, slow or not a FileShare tracker: try the next one.
    Unreachable(String),
    /// The wrong key, or no way to check it: stop and say so.
    Untrusted(String),
}

/// How this client proves who it is, and where it remembers tracker keys.
pub(super) struct Trust {
    pub(super) known_keys: PathBuf,
    pub(super) identity: Option<Identity>,
}

impl Link {
    /// Connects, completes TLS with the tracker's key pinned, and shakes
    /// hands, within `timeout` in all: a tracker that accepts but never
    /// answers is as dead as one that never accepts.
    pub(super) async fn open(
        entry: &TrackerEntry,
        index: usize,
        trust: &Trust,
        timeout: Duration,
    ) -> Result<Link, OpenError> {
        let pin = TrackerTrust::new(entry, &trust.known_keys);
        let tls = ClientTls::new(trust.identity.as_ref(), pin.pin())
            .map_err(|e| OpenError::Untrusted(crate::error::chain(&e)))?;
        let (conn, _, seen) = tls::connect(&entry.addr, &tls, Role::Client, timeout)
            .await
            .map_err(|e| open_error(&entry.addr, e))?;
        match pin.check(seen) {
            Ok(Seen::Known) => {}
            Ok(Seen::FirstSeen) => tracing::warn!(
                "remembered tracker {}'s key {seen} in {}; only this key is accepted from now on",
                entry.addr,
                trust.known_keys.display()
            ),
            Err(e) => return Err(OpenError::Untrusted(crate::error::chain(&e))),
        }
        let (mut reader, writer) = conn.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let for_reader = pending.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(reply)) = reader.read_frame::<Reply<TrackerResult>>().await {
                let tx = for_reader
                    .lock()
                    .ok()
                    .and_then(|mut p| p.as_mut().and_then(|p| p.remove(&reply.id)));
                if let Some(tx) = tx {
                    let _ = tx.send(reply.body);
                }
            }
            // Dropping the senders wakes every waiting caller.
            if let Ok(mut p) = for_reader.lock() {
                p.take();
            }
        });
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(writer));
        let pinger = tokio::spawn(ping(writer.clone()));
        Ok(Link {
            index,
            writer,
            pending,
            reader,
            pinger,
        })
    }

    pub(super) fn is_closed(&self) -> bool {
        self.pending.lock().map(|p| p.is_none()).unwrap_or(true)
    }

    pub(super) async fn call(
        &self,
        id: u64,
        body: &TrackerRequest,
        timeout: Duration,
    ) -> Result<TrackerResult, CallError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self
                .pending
                .lock()
                .map_err(|_| CallError::NotSent("poisoned".into()))?;
            let Some(map) = p.as_mut() else {
                return Err(CallError::NotSent("connection closed".into()));
            };
            map.insert(id, tx);
        }
        let request = Request { id, body };
        let sent = tokio::time::timeout(timeout, async {
            self.writer.lock().await.write_frame(&request).await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CallError::Lost(e.to_string())),
            Err(_) => return Err(CallError::Lost("timed out sending".into())),
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(CallError::Lost("connection closed".into())),
            Err(_) => {
                if let Ok(mut p) = self.pending.lock() {
                    if let Some(map) = p.as_mut() {
                        map.remove(&id);
                    }
                }
                Err(CallError::Lost(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }
}

/// Sends the cheapest request (`TicketKey`) every [`PING_INTERVAL`] until
/// the connection fails.
async fn ping(writer: Writer) {
    let ping = Request {
        id: PING_ID,
        body: TrackerRequest::from(AskTicketKey),
    };
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        if writer.lock().await.write_frame(&ping).await.is_err() {
            return;
        }
    }
}

/// Sorts a failed connection: a key that is not the pinned one is a hard
/// error; anything else means this tracker is not reachable now.
fn open_error(addr: &str, e: TlsError) -> OpenError {
    match e {
        TlsError::KeyMismatch { expected, seen, .. } => OpenError::Untrusted(format!(
            "tracker {addr} presented key {seen}, but the trackers file pins it to {expected}; \
             if its key really changed, put the new fingerprint on its line"
        )),
        e @ (TlsError::PeerMismatch { .. } | TlsError::Trust(_) | TlsError::Config(_)) => {
            OpenError::Untrusted(crate::error::chain(&e))
        }
        e => OpenError::Unreachable(crate::error::chain(&e)),
    }
}
