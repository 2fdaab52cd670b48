//! Punched paths, for two daemons both behind NAT: the tracker calls the
//! holder, and both dial each other's offered address (the public address
//! the tracker saw, with the announced port) from their own listening
//! port, for a few seconds, until the SYNs cross (TCP simultaneous open).
//! Each router then holds a mapping for the outgoing SYN, so the other's
//! SYN passes as its reply. This needs routers that keep the source port
//! (Linux masquerade does, where the port is free; so do most home
//! routers) and a stateful firewall that lets replies in; a router that
//! picks a random port per connection defeats it, and the relay remains.
//!
//! TCP rather than UDP: the peer protocol and its TLS run on TCP as they
//! are, with no second transport (QUIC or a reliable layer over UDP) to
//! add; routers keep TCP mappings far longer than UDP ones; and the
//! daemon's listening port is already the one the tracker offers.
//!
//! Whichever way the connection forms (both connects meet, or one side's
//! SYN reaches the other's listener, which sorts it out by its first
//! bytes), both sides first send their magic and the nonce: the reader
//! [`MAGIC`], the holder the reverse connections' magic. Then the reader
//! is the TLS client, as everywhere.

use super::{reverse, Pending, Reach};
use crate::trackers::LinkError;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// What the reader sends first on a punched connection, before the nonce.
pub const MAGIC: [u8; 4] = *b"FSP\x01";

/// How long both sides keep dialling.
pub const WINDOW: Duration = Duration::from_secs(6);

/// One connect attempt's limit, and the least pause after a refused one
/// (plus up to as much again at random: a router that refuses a SYN
/// from outside with a reset would otherwise keep both sides' retries in
/// step, each SYN arriving just before the other leaves).
const ATTEMPT: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_millis(100);

/// How long the other side's magic may take once connected.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which end of the connection this daemon is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Reader,
    Holder,
}

#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    #[error("this daemon's listening address is not known yet")]
    NoListener,
    #[error("{0:?} is not an ip:port address")]
    BadAddress(String),
    #[error("no path to {0} opened within {secs} s", secs = WINDOW.as_secs())]
    Timeout(String),
    #[error("the other side sent no valid preamble")]
    Preamble,
    #[error("no random nonce for the call: {0}")]
    Nonce(getrandom::Error),
    #[error("the tracker would not call the holder to punch: {0}")]
    Refused(#[source] LinkError),
}

enum Got {
    /// Our connect completed: the other's preamble is still to read.
    Connected(TcpStream),
    /// Our listener took it, and read the other's preamble.
    Accepted(TcpStream),
}

/// Dials `remote` from this daemon's listening port until a connection
/// forms either way, then exchanges preambles for `nonce`.
pub async fn punch(
    reach: &Reach,
    remote: &str,
    nonce: [u8; 16],
    side: Side,
) -> Result<TcpStream, PunchError> {
    let to: SocketAddr = remote
        .parse()
        .map_err(|_| PunchError::BadAddress(remote.to_string()))?;
    let listen = *reach.listen.get().ok_or(PunchError::NoListener)?;
    let local = super::family::punch_from(listen, to);
    let (tx, mut rx) = oneshot::channel();
    reach.pending.lock().insert(nonce, tx);
    let _pending = Pending { reach, nonce };
    let deadline = tokio::time::Instant::now() + WINDOW;
    let got = loop {
        if tokio::time::Instant::now() >= deadline {
            return Err(PunchError::Timeout(remote.to_string()));
        }
        let attempt = async {
            let s = if local.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            s.set_reuseaddr(true)?;
            s.set_reuseport(true)?;
            s.bind(local)?;
            s.connect(to).await
        };
        tokio::select! {
            r = &mut rx => match r {
                Ok(s) => break Got::Accepted(s),
                Err(_) => return Err(PunchError::Preamble),
            },
            r = tokio::time::timeout(ATTEMPT, attempt) => match r {
                Ok(Ok(s)) => break Got::Connected(s),
                Ok(Err(e)) => {
                    tracing::trace!(%to, "punch attempt: {e}");
                    let mut b = [0u8; 1];
                    let _ = getrandom::fill(&mut b);
                    let jitter = RETRY * u32::from(b[0]) / 255;
                    tokio::time::sleep(RETRY + jitter).await;
                }
                Err(_) => {}
            },
        }
    };
    let (mine, theirs) = match side {
        Side::Reader => (MAGIC, reverse::MAGIC),
        Side::Holder => (reverse::MAGIC, MAGIC),
    };
    let mut pre = [0u8; 20];
    pre[..4].copy_from_slice(&mine);
    pre[4..].copy_from_slice(&nonce);
    let exchange = async {
        match got {
            Got::Accepted(mut s) => {
                s.write_all(&pre).await?;
                std::io::Result::Ok(Some(s))
            }
            Got::Connected(mut s) => {
                s.write_all(&pre).await?;
                let mut back = [0u8; 20];
                s.read_exact(&mut back).await?;
                Ok((back[..4] == theirs && back[4..] == nonce).then_some(s))
            }
        }
    };
    match tokio::time::timeout(PREAMBLE_TIMEOUT, exchange).await {
        Ok(Ok(Some(s))) => Ok(s),
        _ => Err(PunchError::Preamble),
    }
}
