//! A tracker client shared by the CLI, the daemon and the trackers' tests.
//!
//! One connection carries any number of concurrent calls, matched by request
//! id. When the tracker in use stops answering, the client moves to the next
//! one of the trackers file and stays there; the caller sees an error only
//! when no tracker answers, or when a call that must not be repeated was cut
//! off mid-flight.

use crate::connection::{FrameWriter, TcpConnection};
use crate::error::{ErrorCode, ProtocolError};
use crate::messages::tracker::{TrackerReply, TrackerRequest, TrackerResult};
use crate::messages::{Reply, Request, Role};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The tracker answered with a refusal.
    #[error("{0}")]
    Refused(ErrorCode),
    #[error("no tracker answered (tried {tried}): {last}")]
    Unreachable { tried: String, last: String },
    #[error(
        "the tracker connection broke during the request; it may or may not have taken effect"
    )]
    Interrupted,
}

impl ClientError {
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            ClientError::Refused(c) => Some(c),
            _ => None,
        }
    }
}

/// The pause after every tracker answered `Unavailable` in a row.
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(200);

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<TrackerResult>>>>>;

/// One live connection to one tracker.
struct Link {
    index: usize,
    writer: tokio::sync::Mutex<FrameWriter<OwnedWriteHalf>>,
    /// `None` once the reader has seen the connection end.
    pending: Pending,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

enum CallError {
    /// Nothing reached the tracker: safe to retry anywhere.
    NotSent(String),
    /// Sent, then the link failed before the reply.
    Lost(String),
}

impl Link {
    async fn open(addr: &str, index: usize, timeout: Duration) -> Result<Link, ProtocolError> {
        let (conn, _) = TcpConnection::connect(addr, Role::Client, timeout).await?;
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
        Ok(Link {
            index,
            writer: tokio::sync::Mutex::new(writer),
            pending,
            reader,
        })
    }

    fn is_closed(&self) -> bool {
        self.pending.lock().map(|p| p.is_none()).unwrap_or(true)
    }

    async fn call(
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

/// A handle to the tracker cluster; cheap to share behind an `Arc`.
pub struct TrackerClient {
    addrs: Vec<String>,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    preferred: AtomicUsize,
    next_id: AtomicU64,
    timeout: Duration,
}

impl TrackerClient {
    /// `addrs` in trackers-file order; `timeout` bounds each connect and each
    /// call on one tracker before the next is tried.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Self {
        TrackerClient {
            addrs,
            link: tokio::sync::Mutex::new(None),
            preferred: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            timeout,
        }
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The tracker currently in use, as written in the trackers file.
    pub fn current(&self) -> &str {
        let i = self.preferred.load(Ordering::Relaxed) % self.addrs.len().max(1);
        self.addrs.get(i).map(String::as_str).unwrap_or("")
    }

    /// The live link, or a new one to the first tracker that answers,
    /// starting from the preferred one.
    async fn link(&self) -> Result<Arc<Link>, ClientError> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref() {
            if !link.is_closed() {
                return Ok(link.clone());
            }
        }
        *slot = None;
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = String::from("no trackers configured");
        for k in 0..self.addrs.len() {
            let index = (start + k) % self.addrs.len();
            let addr = &self.addrs[index];
            match Link::open(addr, index, self.timeout).await {
                Ok(link) => {
                    if index != start % self.addrs.len() {
                        tracing::warn!(tracker = %addr, "switched to another tracker");
                    }
                    self.preferred.store(index, Ordering::Relaxed);
                    let link = Arc::new(link);
                    *slot = Some(link.clone());
                    return Ok(link);
                }
                Err(e) => {
                    tracing::debug!(tracker = %addr, "cannot reach tracker: {e:#}");
                    last = format!("{addr}: {e}");
                }
            }
        }
        Err(ClientError::Unreachable {
            tried: self.addrs.join(", "),
            last,
        })
    }

    /// Drops `failed` if it is still the live link, and prefers the next
    /// tracker.
    async fn fail_over(&self, failed: &Arc<Link>) {
        let mut slot = self.link.lock().await;
        if slot.as_ref().is_some_and(|l| Arc::ptr_eq(l, failed)) {
            *slot = None;
            let next = (failed.index + 1) % self.addrs.len().max(1);
            self.preferred.store(next, Ordering::Relaxed);
        }
    }

    /// Sends `req` and returns the tracker's answer, failing over between
    /// trackers as needed.
    pub async fn call(&self, req: TrackerRequest) -> Result<TrackerReply, ClientError> {
        let trackers = self.addrs.len().max(1);
        let rounds = trackers * 3;
        let mut last = String::new();
        let mut unavailable = 0;
        for _ in 0..rounds {
            let link = self.link().await?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            match link.call(id, &req, self.timeout).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(ErrorCode::Unavailable(why))) => {
                    tracing::debug!(tracker = %self.addrs[link.index], "tracker unavailable: {why}");
                    last = format!("{}: {why}", self.addrs[link.index]);
                    self.fail_over(&link).await;
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
                    last = format!("{}: {why}", self.addrs[link.index]);
                    self.fail_over(&link).await;
                }
                Err(CallError::Lost(why)) => {
                    tracing::warn!(tracker = %self.addrs[link.index], "lost tracker: {why}");
                    last = format!("{}: {why}", self.addrs[link.index]);
                    self.fail_over(&link).await;
                    if !req.is_idempotent() {
                        return Err(ClientError::Interrupted);
                    }
                }
            }
        }
        Err(ClientError::Unreachable {
            tried: self.addrs.join(", "),
            last,
        })
    }
}
