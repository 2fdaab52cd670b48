//! Reverse connections: a reader that cannot dial a holder (the tracker
//! lists it unreachable, or dialling failed) asks the tracker to have the
//! holder dial the reader, with a random nonce. The holder, which waits on
//! the tracker for such calls ([`answer`]), opens a TCP connection to the
//! reader's offered address, sends [`MAGIC`] and the nonce, then serves it
//! as any accepted peer connection: it is the TLS server, the reader the
//! TLS client that pins the holder's key. The reader's peer server sorts
//! such connections out of its accepted ones ([`sort`]) by their first
//! byte (a TLS connection starts with a handshake record, `0x16`) and
//! hands each to the link that waits for its nonce.
//!
//! The nonce only pairs a connection with the link that asked for it;
//! who is at the other end is proved by TLS, as on a direct connection.

use super::{punch, Pending, Reach};
use crate::net::serve::{self, ServeCtx};
use crate::trackers::{LinkError, TrackerLink};
use fileshare_protocol::messages::tracker::{AwaitCalls, Call, CallKind};
use fileshare_protocol::PeerId;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};

/// What a dialled-back connection starts with, before its nonce.
pub const MAGIC: [u8; 4] = *b"FSR\x01";

/// How long a reader waits for the holder to dial back.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long one wait for calls lasts on the tracker: under the tracker
/// client's call timeout, so a quiet wait is never taken for a lost
/// tracker.
const POLL: Duration = Duration::from_secs(3);

/// How long an accepted connection may take to show its first bytes.
const FIRST_BYTES: Duration = Duration::from_secs(10);

/// Dials back in flight at once; calls beyond are dropped (the readers
/// ask again).
const DIALS_AT_ONCE: usize = 16;

/// How long dialling a reader back may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReverseError {
    #[error("the tracker would not ask the holder to dial back: {0}")]
    Refused(#[source] LinkError),
    #[error("the holder did not dial back within {} s", WAIT.as_secs())]
    NoCall,
}

/// Asks `holder` (a member of `group`) to dial this daemon back, and
/// returns the connection it opens.
pub async fn request(
    reach: &Reach,
    tracker: &TrackerLink,
    group: &str,
    holder: PeerId,
) -> Result<TcpStream, ReverseError> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|_| ReverseError::NoCall)?;
    let (tx, rx) = oneshot::channel();
    reach.pending.lock().insert(nonce, tx);
    let _pending = Pending { reach, nonce };
    tracker
        .place_call(CallKind::DialBack, group, holder, nonce)
        .await
        .map_err(ReverseError::Refused)?;
    match tokio::time::timeout(WAIT, rx).await {
        Ok(Ok(stream)) => Ok(stream),
        _ => Err(ReverseError::NoCall),
    }
}

/// Sorts an accepted connection: a dialled-back one goes to the link
/// waiting for its nonce (and `None` is returned); any other is returned
/// for the peer server.
pub async fn sort(stream: TcpStream, reach: &Reach) -> Option<TcpStream> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTES, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == MAGIC[0] => {}
        // TLS, or nothing yet: the peer server's handshake deadline rules.
        _ => return Some(stream),
    }
    let mut stream = stream;
    let mut preamble = [0u8; 20];
    let read = tokio::time::timeout(FIRST_BYTES, stream.read_exact(&mut preamble)).await;
    let magic = &preamble[..4];
    if !matches!(read, Ok(Ok(_))) || (magic != MAGIC && magic != punch::MAGIC) {
        tracing::debug!("dropping a connection that began with neither TLS nor a call");
        return None;
    }
    let nonce: [u8; 16] = preamble[4..].try_into().ok()?;
    let waiting = reach.pending.lock().remove(&nonce);
    match waiting {
        Some(tx) => {
            let _ = tx.send(stream);
        }
        None => tracing::debug!("dropping a call-back nobody waits for"),
    }
    None
}

/// Waits on the tracker for calls and dials each caller back, serving
/// what it opens as an accepted peer connection. Runs until the server's
/// tasks end.
pub async fn answer(ctx: Arc<ServeCtx>) {
    let dials = Arc::new(Semaphore::new(DIALS_AT_ONCE));
    loop {
        let wait = AwaitCalls {
            session: ctx.tracker.session,
            peer: ctx.tracker.peer,
            wait_ms: u32::try_from(POLL.as_millis()).unwrap_or(u32::MAX),
        };
        let calls = match ctx.tracker.client.call(wait).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("waiting for calls failed: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for call in calls {
            let Ok(permit) = dials.clone().try_acquire_owned() else {
                tracing::debug!(peer = %call.from, "too many dials back; dropping a call");
                continue;
            };
            let conn_ctx = ctx.clone();
            ctx.tasks.spawn("dial-back", async move {
                dial_back(&conn_ctx, call).await;
                drop(permit);
            });
        }
    }
}

async fn dial_back(ctx: &Arc<ServeCtx>, call: Call) {
    match call.how {
        CallKind::DialBack => {}
        CallKind::Relay => {
            match super::relay::join(&ctx.tracker, call.nonce, 1).await {
                Ok(stream) => {
                    tracing::debug!(peer = %call.from, "joined a relay slot");
                    serve::serve_opened(stream, ctx).await;
                }
                Err(e) => tracing::debug!(peer = %call.from, "cannot join the relay: {e}"),
            }
            return;
        }
        CallKind::Punch => {
            let side = punch::Side::Holder;
            match punch::punch(&ctx.reach, &call.addr, call.nonce, side).await {
                Ok(stream) => {
                    tracing::debug!(peer = %call.from, addr = %call.addr, "punched a path");
                    serve::serve_opened(stream, ctx).await;
                }
                Err(e) => tracing::debug!(peer = %call.from, "cannot punch a path: {e}"),
            }
            return;
        }
    }
    let opened = tokio::time::timeout(DIAL_TIMEOUT, async {
        let mut s = TcpStream::connect(&call.addr).await?;
        let mut preamble = [0u8; 20];
        preamble[..4].copy_from_slice(&MAGIC);
        preamble[4..].copy_from_slice(&call.nonce);
        s.write_all(&preamble).await?;
        std::io::Result::Ok(s)
    })
    .await;
    let stream = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer = %call.from, addr = %call.addr, "cannot dial back: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %call.from, addr = %call.addr, "dialling back timed out");
            return;
        }
    };
    tracing::debug!(peer = %call.from, addr = %call.addr, "dialled back");
    serve::serve_opened(stream, ctx).await;
}
