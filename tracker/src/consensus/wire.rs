//! The engine's calls over the trackers' own connections ([`Transport`]):
//! a call goes out as [`ClusterMsg::Raft`] on this tracker's connection to
//! the other, and its answer comes back as [`ClusterMsg::RaftReply`] on the
//! other's connection to this one, matched by the id chosen here.
//!
//! It also keeps when each other tracker was last heard from (any message),
//! which tells how many trackers this one reaches.

use crate::consensus::network::{Rpc, RpcReply, Wire, WireError};
use crate::consensus::transport::{Outbox, Transport};
use crate::consensus::NodeId;
use fileshare_protocol::codec;
use fileshare_protocol::messages::ClusterMsg;
use parking_lot::Mutex;
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Another tracker heard from within this long is in touch.
pub const IN_TOUCH: Duration = Duration::from_millis(1000);

pub struct TrackerWire {
    out: Arc<Transport>,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<RpcReply>>>,
    heard: Mutex<HashMap<NodeId, Instant>>,
}

/// Forgets a call whose caller stopped waiting.
struct Pending<'a> {
    wire: &'a TrackerWire,
    id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.wire.pending.lock().remove(&self.id);
    }
}

impl TrackerWire {
    pub fn new(out: Arc<Transport>) -> Arc<TrackerWire> {
        Arc::new(TrackerWire {
            out,
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
        })
    }

    /// Tracker `from` said something; true if it is the first word since
    /// it was out of touch (or since this tracker started).
    pub fn heard(&self, from: NodeId) -> bool {
        let before = self.heard.lock().insert(from, Instant::now());
        before.is_none_or(|t| t.elapsed() >= IN_TOUCH)
    }

    /// Whether tracker `no` was heard from within [`IN_TOUCH`] and this
    /// tracker can send to it.
    pub fn in_touch(&self, no: NodeId) -> bool {
        let heard = self.heard.lock().get(&no).copied();
        let to = u32::try_from(no).unwrap_or(u32::MAX);
        heard.is_some_and(|t| t.elapsed() < IN_TOUCH) && self.out.connected(to)
    }

    /// Hands the answer to call `id` to its caller.
    pub fn answered(&self, id: u64, body: &[u8]) {
        let Some(tx) = self.pending.lock().remove(&id) else {
            return;
        };
        match codec::decode::<RpcReply>(body) {
            Ok(reply) => {
                let _ = tx.send(reply);
            }
            Err(e) => tracing::warn!("an answer of another tracker's engine does not decode: {e}"),
        }
    }

    /// Sends `msg` to tracker `to`; false if it cannot now.
    pub fn send(&self, to: NodeId, msg: ClusterMsg) -> bool {
        let to = u32::try_from(to).unwrap_or(u32::MAX);
        self.out.send(to, msg)
    }
}

impl Wire for TrackerWire {
    async fn call(&self, to: NodeId, rpc: Rpc) -> Result<RpcReply, WireError> {
        let body = codec::encode(&rpc).map_err(|_| WireError::TooLarge { to, len: 0 })?;
        if body.len() > fileshare_protocol::MAX_FRAME_LEN - 64 {
            return Err(WireError::TooLarge {
                to,
                len: body.len(),
            });
        }
        if !self.out.connected(u32::try_from(to).unwrap_or(u32::MAX)) {
            return Err(WireError::Unreachable(to));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let _pending = Pending { wire: self, id };
        let msg = ClusterMsg::Raft {
            id,
            body: ByteBuf::from(body),
        };
        if !self.send(to, msg) {
            return Err(WireError::Unreachable(to));
        }
        rx.await.map_err(|_| WireError::NoAnswer(to))
    }
}
