//! How this daemon reaches its peers and is reached by them, through
//! routers that translate addresses (NAT) and drop connections from
//! outside. However a connection is opened, what runs on it is the same
//! TLS peer connection with the same tickets: the reader is the TLS
//! client and pins the holder's key, the holder the TLS server.
//!
//! - [`Path::Direct`]: the reader dials the address the tracker offers.
//! - [`Path::Reverse`]: the tracker could not dial the holder, so the
//!   reader asks it (through the tracker) to dial the reader instead
//!   ([`reverse`]).
//! - [`Path::Punched`]: both are behind NAT; the tracker calls the holder
//!   and both dial each other at once ([`punch`]).
//! - [`Path::Relayed`]: neither can dial the other; both connect to the
//!   tracker's relay, which forwards the TLS bytes ([`relay`]). The reader
//!   keeps trying the direct path ([`direct_when_open`]) and moves there
//!   once it opens.
//!
//! The path of each connection is kept by peer address, for `getfattr`
//! (`user.fileshare.paths`) and the dashboard.

pub mod family;
pub mod mapping;
pub mod punch;
pub mod relay;
pub mod reverse;

use crate::net::fetch::{FetchCtx, PEER_TIMEOUT};
use fileshare_protocol::client::Announced;
use fileshare_protocol::error::chain;
use fileshare_protocol::messages::tracker::{CallKind, PeerLocation, Reach as Seen};
use fileshare_protocol::messages::Role;
use fileshare_protocol::tls::{self, ClientTls, SecureConnection, TlsError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Which way a peer connection was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// This daemon dialled the holder.
    Direct,
    /// The holder dialled this daemon, asked through the tracker.
    Reverse,
    /// Both dialled each other at once through their routers.
    Punched,
    /// Through the tracker's relay: neither could dial the other.
    Relayed,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Reverse => "reverse",
            Path::Punched => "punched",
            Path::Relayed => "relayed",
        }
    }
}

/// A peer connection as opened: the TLS connection, the holder's role,
/// the address it is known by and the way it was opened.
pub struct Opened {
    pub conn: SecureConnection,
    pub role: Role,
    pub addr: String,
    pub path: Path,
}

/// How often a relayed link tries to dial the holder directly (its
/// router may have begun forwarding a port, or its firewall opened).
pub const DIRECT_RETRY: Duration = Duration::from_secs(5);

/// Addresses whose path is remembered at most; beyond, the map restarts.
const MAX_PATHS: usize = 4096;

/// What the fetching and the serving sides share.
#[derive(Default)]
pub struct Reach {
    /// Reverse connections this daemon waits for, by the nonce the holder
    /// will send first.
    pending: Mutex<HashMap<[u8; 16], oneshot::Sender<TcpStream>>>,
    /// The path of the latest connection to each peer address.
    paths: Mutex<HashMap<String, Path>>,
    /// Where this daemon's peer server listens (punched paths leave
    /// from it).
    listen: std::sync::OnceLock<SocketAddr>,
    /// The public port the router forwards here, if it does.
    mapped: Mutex<Option<mapping::Mapped>>,
    /// The router's mapping, to renew and to remove on stop.
    held: Mutex<Option<mapping::Held>>,
    /// Where peers may reach this daemon in address families other than
    /// the one it reaches the tracker in (announced besides its address).
    also: Mutex<Vec<String>>,
}

/// Removes a pending nonce however the wait ends.
struct Pending<'a> {
    reach: &'a Reach,
    nonce: [u8; 16],
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.reach.pending.lock().remove(&self.nonce);
    }
}

/// The peer server's listener on `addr`, its port shareable
/// (`SO_REUSEPORT`) with the sockets that punch paths from it. On `[::]`
/// it takes both address families, whatever the system's default.
pub fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let addr: SocketAddr = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr:?} names no address"),
        )
    })?;
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        let s = tokio::net::TcpSocket::new_v6()?;
        socket2::SockRef::from(&s).set_only_v6(!addr.ip().is_unspecified())?;
        s
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

impl Reach {
    /// Records the path a connection to `addr` took.
    pub fn note_path(&self, addr: &str, path: Path) {
        let mut paths = self.paths.lock();
        if paths.len() >= MAX_PATHS && !paths.contains_key(addr) {
            paths.clear();
        }
        paths.insert(addr.to_string(), path);
    }

    /// Where the peer server listens, once bound.
    pub fn set_listen(&self, addr: SocketAddr) {
        let _ = self.listen.set(addr);
    }

    pub fn set_mapped(&self, mapped: Option<mapping::Mapped>) {
        *self.mapped.lock() = mapped;
    }

    pub fn mapped(&self) -> Option<mapping::Mapped> {
        *self.mapped.lock()
    }

    /// What to announce: `addr` with the router's public port where it
    /// forwards one.
    pub fn announce_addr(&self, addr: &str) -> String {
        match (self.mapped(), addr.parse::<SocketAddr>()) {
            (Some(m), Ok(mut a)) => {
                a.set_port(m.port);
                a.to_string()
            }
            _ => addr.to_string(),
        }
    }

    /// Where peers may reach this daemon in the other address families.
    pub fn set_also(&self, also: Vec<String>) {
        *self.also.lock() = also;
    }

    pub fn also(&self) -> Vec<String> {
        self.also.lock().clone()
    }

    /// The path the latest connection to `addr` took, if any.
    pub fn path_of(&self, addr: &str) -> Option<Path> {
        self.paths.lock().get(addr).copied()
    }
}

/// How long a direct dial may take when the tracker has not yet found out
/// whether the holder can be dialled: a router that drops the attempt
/// should not hold the reader up for long before it asks for a call.
const UNKNOWN_DIAL: Duration = Duration::from_secs(3);

/// Why the holder could not be dialled directly.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("the tracker could not dial it either")]
    TrackerCouldNot,
    #[error("{}", chain(.0))]
    Dial(TlsError),
}

/// Every way to a holder failed: each attempt's cause is kept, the
/// relay's (the last) as the source.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach {addr} directly ({direct}), nor have it dial back ({}), nor punch a \
     path ({}), nor through the relay: {relay}",
    chain(.reverse),
    chain(.punch)
)]
pub struct Unreachable {
    pub addr: String,
    pub direct: DirectError,
    pub reverse: reverse::ReverseError,
    pub punch: punch::PunchError,
    #[source]
    pub relay: relay::RelayError,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Unreachable(Box<Unreachable>),
    #[error("connected to {addr}, but: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: TlsError,
    },
}

/// Opens the TLS peer connection to `remote` (a holder in `group`) as
/// `me`: directly unless the tracker could not dial it, else by asking it
/// to dial back. Returns the connection, the holder's role and the address
/// it is known by (another family's, where that was dialled).
pub async fn open(
    ctx: &FetchCtx,
    group: &str,
    remote: &PeerLocation,
    tls: &ClientTls,
    me: Role,
) -> Result<Opened, OpenError> {
    if let Some(better) = family::preferred(remote) {
        match tls::connect(&better, tls, me.clone(), PEER_TIMEOUT).await {
            Ok((conn, role, _)) => {
                ctx.reach.note_path(&better, Path::Direct);
                return Ok(Opened {
                    conn,
                    role,
                    addr: better,
                    path: Path::Direct,
                });
            }
            Err(e) => {
                let e = chain(&e);
                tracing::debug!(peer = %remote.addr, "cannot dial it at {better}: {e}");
            }
        }
    }
    let direct = match remote.reach {
        Seen::Unreachable => DirectError::TrackerCouldNot,
        known => {
            let timeout = if known == Seen::Direct {
                PEER_TIMEOUT
            } else {
                UNKNOWN_DIAL
            };
            match tls::connect(&remote.addr, tls, me.clone(), timeout).await {
                Ok((conn, role, _)) => {
                    ctx.reach.note_path(&remote.addr, Path::Direct);
                    return Ok(Opened {
                        conn,
                        role,
                        addr: remote.addr.clone(),
                        path: Path::Direct,
                    });
                }
                Err(e) => DirectError::Dial(e),
            }
        }
    };
    let (stream, path) = match reverse::request(&ctx.reach, &ctx.tracker, group, remote.peer).await
    {
        Ok(s) => (s, Path::Reverse),
        Err(reverse) => match punch_to(ctx, group, remote).await {
            Ok(s) => (s, Path::Punched),
            Err(punch) => {
                tracing::debug!(peer = %remote.addr, "no punched path: {}; relaying", chain(&punch));
                let stream = relay::request(&ctx.tracker, group, remote.peer)
                    .await
                    .map_err(|relay| {
                        OpenError::Unreachable(Box::new(Unreachable {
                            addr: remote.addr.clone(),
                            direct,
                            reverse,
                            punch,
                            relay,
                        }))
                    })?;
                (stream, Path::Relayed)
            }
        },
    };
    let (conn, role, _) = tls::connect_over(stream, &remote.addr, tls, me, PEER_TIMEOUT)
        .await
        .map_err(|source| OpenError::Handshake {
            addr: remote.addr.clone(),
            source,
        })?;
    ctx.reach.note_path(&remote.addr, path);
    Ok(Opened {
        conn,
        role,
        addr: remote.addr.clone(),
        path,
    })
}

/// Dials `remote` directly every [`DIRECT_RETRY`] until it answers, for a
/// relayed link to move to: the tracker's verdict on the holder stands for
/// minutes, a router's new forward or an opened firewall does not wait.
pub async fn direct_when_open(
    ctx: &FetchCtx,
    remote: &PeerLocation,
    tls: &ClientTls,
    me: Role,
) -> Opened {
    let addr = family::preferred(remote).unwrap_or_else(|| remote.addr.clone());
    loop {
        tokio::time::sleep(DIRECT_RETRY).await;
        if let Ok((conn, role, _)) = tls::connect(&addr, tls, me.clone(), UNKNOWN_DIAL).await {
            ctx.reach.note_path(&addr, Path::Direct);
            return Opened {
                conn,
                role,
                addr,
                path: Path::Direct,
            };
        }
    }
}

/// One line on how peers reach this daemon, from the tracker's answer to
/// its last announce and the router's port mapping: for `fsd status` and
/// the dashboard.
pub fn describe(seen: Option<&Announced>, mapped: Option<mapping::Mapped>) -> String {
    let Some(a) = seen else {
        return "not known yet: no tracker has answered an announce".into();
    };
    let through = mapped.filter(|m| a.offered.ends_with(&format!(":{}", m.port)));
    match a.reach {
        Seen::Direct if through.is_some() => {
            let by = through.map(|m| m.by.to_string()).unwrap_or_default();
            format!("reachable at {} (port mapped by {by})", a.offered)
        }
        Seen::Direct => format!("reachable at {} (direct)", a.offered),
        Seen::Unknown => format!("checking: the tracker is dialling {}", a.offered),
        Seen::Unreachable => format!(
            "behind NAT or a firewall, not reachable at {} (the tracker sees {}): reverse \
             connections, punched paths and relay",
            a.offered, a.seen
        ),
    }
}

/// Asks the tracker to call `remote` to punch, and punches from here.
async fn punch_to(
    ctx: &FetchCtx,
    group: &str,
    remote: &PeerLocation,
) -> Result<TcpStream, punch::PunchError> {
    if ctx.reach.listen.get().is_none() {
        return Err(punch::PunchError::NoListener);
    }
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(punch::PunchError::Nonce)?;
    let ask = (ctx.tracker).place_call(CallKind::Punch, group, remote.peer, nonce);
    ask.await.map_err(punch::PunchError::Refused)?;
    punch::punch(&ctx.reach, &remote.addr, nonce, punch::Side::Reader).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_holder_names_every_attempt_and_keeps_the_relays_cause() {
        let relay = relay::RelayError::Connect {
            addr: "192.0.2.1:7".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let e = OpenError::Unreachable(Box::new(Unreachable {
            addr: "198.51.100.9:4000".into(),
            direct: DirectError::TrackerCouldNot,
            reverse: reverse::ReverseError::NoCall,
            punch: punch::PunchError::Timeout("198.51.100.9:4000".into()),
            relay,
        }));
        let text = e.to_string();
        for part in [
            "198.51.100.9:4000",
            "the tracker could not dial it either",
            "did not dial back",
            "no path to 198.51.100.9:4000 opened",
            "cannot connect to the relay at 192.0.2.1:7",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
        let source = std::error::Error::source(&e).expect("the relay's error is the source");
        assert!(source.downcast_ref::<relay::RelayError>().is_some());
        match &e {
            OpenError::Unreachable(u) => assert!(matches!(u.punch, punch::PunchError::Timeout(_))),
            other => panic!("not Unreachable: {other}"),
        }
    }
}
