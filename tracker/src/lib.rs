//! `fileshare-tracker`: accounts, groups, memberships and the index of
//! shared files, durable on disk and replicated to every tracker of the
//! trackers file, plus the soft state of which daemons are online with
//! which pieces, gossiped between trackers.
//!
//! Durable state is a pure function of one replicated log of requested
//! changes, ordered and committed by openraft: every tracker decides each
//! committed change against the same state in the same order and applies
//! its records. The log, the vote and the snapshots live in the tracker's
//! redb file; a restart loads the last snapshot and applies what follows.
//! See `docs/replication.md` for what a cluster guarantees.
//!
//! # Layout
//! By what each part owns, from the edge in:
//! - [`server`]: listener, per-connection handlers, shutdown; another
//!   tracker's connection goes to the consensus transport.
//! - [`cmd`]: one function per request, grouped by family, returning typed
//!   replies.
//! - [`shared`]: what handlers share; start-up from disk.
//! - [`consensus`]: openraft's log store, state machine and network over
//!   the tracker's redb file and connections; this tracker's node (writes
//!   proposed or forwarded to the leader, the majority rule, a pair's
//!   tracker serving alone), and the transport between trackers.
//! - [`state`]: the durable state, pure: the record type
//!   ([`state::records`]), the state and `apply`, its only mutator, and
//!   deciding a change into records ([`state::change`]).
//! - [`reach`]: whether each daemon's offered address can be dialled, the
//!   calls readers place for holders they cannot dial, and the relay
//!   ([`reach::relay`]) for daemons that cannot reach each other (soft
//!   state, memory only).
//! - [`peers`]: online daemons and their pieces (soft state, memory only).
//! - [`sample`]: which holders one Locate hands out, pure.
//! - [`auth`]: password hashing, tokens, login throttling.
//! - [`error`]: this crate's error type.
//!
//! # Dependencies
//! Layers: server, cmd, shared, consensus, auth, state, reach, peers, sample, error
//!
//! They go one way, from the edge in (`scripts/modgraph.py` checks it): [`server`] → [`cmd`] → [`shared`] →
//! [`consensus`] → [`state`], with [`auth`], [`peers`] and [`error`] used
//! from the side; no two modules import each other, directly or through
//! others. The consensus transport owns the gossip and the delivery
//! between trackers and imports nothing of the tracker above it: handlers
//! gossip through `Shared::gossip`, and the server, which accepts the
//! other trackers' connections, hands the transport an `Inbox` (news about
//! daemons to `cmd::peer::apply_gossip`, everything else to the node).
#![warn(clippy::cast_possible_truncation)]

pub mod auth;
pub mod cmd;
pub mod consensus;
pub mod error;
pub mod peers;
pub mod reach;
pub mod sample;
pub mod server;
pub mod shared;
pub mod state;

pub use error::TrackerError;
pub use shared::{Limits, Settings, Shared};

use consensus::transport::Transport;
use fileshare_protocol::known_keys::TrackerTrust;
use fileshare_protocol::tls::{ClientCerts, ServerTls};
use fileshare_protocol::{trackers_file, Identity};
use std::future::Future;
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// This tracker's key and certificate in its data directory:
/// `tracker.key.der` and `tracker.cert.der`.
pub const IDENTITY: &str = "tracker";

/// The other trackers' keys remembered on first use, in the data
/// directory, for trackers the trackers file does not pin.
pub const KNOWN_KEYS: &str = "known_keys";

/// This tracker's identity, kept in `data_dir` (created on first use).
pub fn identity(data_dir: &Path) -> Result<Identity, TrackerError> {
    Identity::load_or_create(data_dir, IDENTITY).map_err(TrackerError::Identity)
}

/// Everything `fileshare-tracker` is started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub trackers_file: PathBuf,
    pub data_dir: PathBuf,
    pub settings: Settings,
}

/// Runs the tracker until `shutdown` completes, then stops cleanly: no new
/// connections, requests in flight answered, every acknowledged change on
/// disk, every task joined.
pub async fn run(config: Config, shutdown: impl Future) -> Result<(), TrackerError> {
    let no = config.settings.tracker_no;
    let entries = trackers_file::load_entries(&config.trackers_file)?;
    let mine = usize::try_from(no)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| entries.get(i))
        .ok_or_else(|| TrackerError::NoSuchTracker {
            no,
            path: config.trackers_file.clone(),
            count: entries.len(),
        })?
        .clone();
    let addr = mine.addr.clone();
    let data_dir = config.data_dir.clone();
    let identity = tokio::task::spawn_blocking(move || identity(&data_dir))
        .await
        .map_err(TrackerError::KeyTask)??;
    if let Some(pinned) = mine.fingerprint.filter(|&p| p != identity.fingerprint()) {
        return Err(TrackerError::NotPinnedKey {
            no,
            path: config.trackers_file.clone(),
            dir: config.data_dir.clone(),
            pinned,
            own: identity.fingerprint(),
        });
    }
    let tls =
        ServerTls::new(&identity, ClientCerts::Optional).map_err(TrackerError::KeyUnusable)?;
    let known_keys = config.data_dir.join(KNOWN_KEYS);
    let trust: Vec<TrackerTrust> = entries
        .iter()
        .map(|e| TrackerTrust::new(e, &known_keys))
        .collect();
    let size = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let unpinned: Vec<String> = (1..=size)
        .zip(&trust)
        .filter(|(n, t)| *n != no && !t.is_pinned())
        .map(|(n, _)| n.to_string())
        .collect();
    if !unpinned.is_empty() {
        tracing::warn!(
            "the trackers file pins no key for tracker(s) {}: each is trusted with the key it \
             shows when this tracker first dials it; pin them (`fileshare-tracker --fingerprint` \
             prints a tracker's) so no one else can be taken for them",
            unpinned.join(", ")
        );
    }
    let mut settings = config.settings.clone();
    settings.cluster_size = size;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let transport = if size > 1 {
        Transport::start(no, &trust, &identity, &cancel, &tasks)
    } else {
        Transport::none()
    };
    // Load before listening, so a client that connects sees the state.
    let (shared, node) = Shared::open(&config.data_dir, settings, transport).await?;
    let mut listeners = Vec::new();
    for at in std::iter::once(&addr).chain(&shared.settings.also_listen) {
        let bound = if *at == addr {
            TcpListener::bind(at).await
        } else {
            bind_also(at).await
        };
        match bound {
            Ok(l) => listeners.push(l),
            Err(error) => {
                drop(listeners);
                cancel.cancel();
                node.stop().await;
                tasks.close();
                tasks.wait().await;
                return Err(TrackerError::Bind {
                    addr: at.clone(),
                    error,
                });
            }
        }
    }
    let mut addr = addr;
    for also in &shared.settings.also_listen {
        addr.push_str(" and ");
        addr.push_str(also);
    }
    tracing::info!(
        "tracker {no} of {size} listening on {addr}, data in {}, key {}",
        config.data_dir.display(),
        identity.fingerprint()
    );
    {
        let shared = shared.clone();
        let cancel = cancel.child_token();
        tasks.spawn(async move { shared.sweep_peers(cancel).await });
    }
    let admission = server::Admission::new(tls, trust);
    server::run(listeners, shared.clone(), admission, shutdown).await;
    drop(shared);
    node.stop().await;
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("tracker {no} stopped");
    Ok(())
}

/// A listener on `addr` besides the trackers file's own address: one of
/// IPv6 takes IPv6 alone, so `[::]:7000` can sit beside `0.0.0.0:7000` or
/// the machine's IPv4 address on the same port.
async fn bind_also(addr: &str) -> std::io::Result<TcpListener> {
    let at = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr:?} names no address"),
        )
    })?;
    let s = if at.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        let s = tokio::net::TcpSocket::new_v6()?;
        socket2::SockRef::from(&s).set_only_v6(true)?;
        s
    };
    s.set_reuseaddr(true)?;
    s.bind(at)?;
    s.listen(1024)
}
