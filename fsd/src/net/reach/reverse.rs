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
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

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

/// Dials back, punches and relay joins in flight at once; calls beyond
/// are dropped (the readers ask again). A place is given back once the
/// connection is open, not when it ends: held while serving, 16 relayed
/// readers left no place for anyone else's call.
const DIALS_AT_ONCE: usize = 16;

/// Connections opened on calls served at once: as many as the peer server
/// serves of those it accepts.
const SERVED_AT_ONCE: usize = serve::MAX_CONNECTIONS;

/// What answering a call takes: a place among the dials in flight until
/// its connection is open, and one among the connections served until it
/// ends.
struct Places {
    dials: Arc<Semaphore>,
    served: Arc<Semaphore>,
}

impl Places {
    fn new(dials: usize, served: usize) -> Places {
        Places {
            dials: Arc::new(Semaphore::new(dials)),
            served: Arc::new(Semaphore::new(served)),
        }
    }

    /// Both places for one call, or `None` when either is full.
    fn take(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let dial = self.dials.clone().try_acquire_owned().ok()?;
        let served = self.served.clone().try_acquire_owned().ok()?;
        Some((dial, served))
    }
}

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
    let places = Places::new(DIALS_AT_ONCE, SERVED_AT_ONCE);
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
            let Some((dial, served)) = places.take() else {
                tracing::debug!(peer = %call.from, "too many calls in hand; dropping a call");
                continue;
            };
            let conn_ctx = ctx.clone();
            ctx.tasks.spawn("dial-back", async move {
                let opened = open_for(&conn_ctx, &call).await;
                drop(dial);
                if let Some(stream) = opened {
                    serve::serve_opened(stream, &conn_ctx).await;
                }
                drop(served);
            });
        }
    }
}

/// Opens the connection `call` asks for: dials the caller back, punches
/// a path to it or joins the relay. `None` (logged) if that failed.
async fn open_for(ctx: &Arc<ServeCtx>, call: &Call) -> Option<TcpStream> {
    match call.how {
        CallKind::DialBack => {}
        CallKind::Relay => {
            return match super::relay::join(&ctx.tracker, call.nonce, 1).await {
                Ok(stream) => {
                    tracing::debug!(peer = %call.from, "joined a relay slot");
                    Some(stream)
                }
                Err(e) => {
                    tracing::debug!(peer = %call.from, "cannot join the relay: {e}");
                    None
                }
            };
        }
        CallKind::Punch => {
            let side = punch::Side::Holder;
            return match punch::punch(&ctx.reach, &call.addr, call.nonce, side).await {
                Ok(stream) => {
                    tracing::debug!(peer = %call.from, addr = %call.addr, "punched a path");
                    Some(stream)
                }
                Err(e) => {
                    tracing::debug!(peer = %call.from, "cannot punch a path: {e}");
                    None
                }
            };
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
    match opened {
        Ok(Ok(s)) => {
            tracing::debug!(peer = %call.from, addr = %call.addr, "dialled back");
            Some(s)
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %call.from, addr = %call.addr, "cannot dial back: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %call.from, addr = %call.addr, "dialling back timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_whose_connection_is_open_gives_its_dial_place_back() {
        let places = Places::new(2, 3);
        let (d1, s1) = places.take().expect("first call");
        let (d2, _s2) = places.take().expect("second call");
        assert!(
            places.take().is_none(),
            "two dials in flight fill the places"
        );
        // The first call's connection is open and served: no longer a dial.
        drop(d1);
        let (_d3, _s3) = places.take().expect("the open connection's dial place");
        drop(d2);
        assert!(
            places.take().is_none(),
            "three connections served fill theirs"
        );
        drop(s1);
        assert!(places.take().is_some(), "a served connection ended");
    }
}
