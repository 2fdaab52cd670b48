//! `fileshare-tracker`: accounts, groups, memberships and the index of
//! shared files, durable on disk and replicated to every tracker of the
//! trackers file, plus the soft state of which daemons are online with
//! which pieces, gossiped between trackers.
//!
//! Durable state is one ordered sequence of records. The cluster's leader
//! decides a change into records against the current state and appends
//! them to its log in one durable transaction; every other tracker that is
//! up appends them too, and only once all have them is the change applied
//! and, once all have applied it, acknowledged. Start-up replays the log,
//! so the state is a pure function of it. See `replication/STATE.md`.
//!
//! # Layout
//! By what each part owns, from the edge in:
//! - [`server`]: listener, per-connection handlers, shutdown; another
//!   tracker's connection goes to the replication transport.
//! - [`cmd`]: one function per request, grouped by family, returning typed
//!   replies.
//! - [`shared`]: what handlers share; start-up from disk.
//! - [`writer`]: the group-commit thread tying the durable state, the
//!   record log on disk ([`writer::store`], redb, with checksums) and the
//!   replication core together.
//! - [`replication`]: the replicated log: its core, with no I/O, and the
//!   connections between trackers.
//! - [`state`]: the durable state, pure: the record type
//!   ([`state::records`]), the state and `apply`, its only mutator, and
//!   deciding a change into records ([`state::change`]).
//! - [`peers`]: online daemons and their pieces (soft state, memory only).
//! - [`auth`]: password hashing, tokens, login throttling.
//! - [`error`]: this crate's error type.
//!
//! # Dependencies
//! They go one way, from the edge in: [`server`] → [`cmd`] → [`shared`] →
//! [`writer`] → [`replication`] → [`state`], with [`auth`], [`peers`] and
//! [`error`] used from the side; no two modules import each other,
//! directly or through others. The replication transport owns the gossip
//! and the delivery between trackers and imports nothing of the tracker
//! above it: the writer sends through its `Outbox`, handlers gossip
//! through `Shared::gossip`, and the server, which accepts the other
//! trackers' connections, hands the transport an `Inbox` (news about
//! daemons to `cmd::peer::apply_gossip`, everything else to the writer).
#![warn(clippy::cast_possible_truncation)]

pub mod auth;
pub mod cmd;
pub mod consensus;
pub mod error;
pub mod peers;
pub mod replication;
pub mod server;
pub mod shared;
pub mod state;
pub mod writer;

pub use error::TrackerError;
pub use shared::{Limits, Settings, Shared};

use fileshare_protocol::known_keys::TrackerTrust;
use fileshare_protocol::tls::{ClientCerts, ServerTls};
use fileshare_protocol::{trackers_file, Identity};
use replication::transport::Transport;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the replication core's clock moves.
const TICK: Duration = Duration::from_millis(50);

/// This tracker's key and certificate in its data directory:
/// `tracker.key.der` and `tracker.cert.der`.
pub const IDENTITY: &str = "tracker";

/// The other trackers' keys remembered on first use, in the data
/// directory, for trackers the trackers file does not pin.
pub const KNOWN_KEYS: &str = "known_keys";

/// This tracker's identity, kept in `data_dir` (created on first use).
pub fn identity(data_dir: &Path) -> Result<Identity, TrackerError> {
    Identity::load_or_create(data_dir, IDENTITY)
        .map_err(|e| TrackerError::Identity(fileshare_protocol::error::chain(&e)))
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
        .map_err(|e| TrackerError::Identity(e.to_string()))??;
    if let Some(pinned) = mine.fingerprint.filter(|&p| p != identity.fingerprint()) {
        return Err(TrackerError::NotPinnedKey {
            no,
            path: config.trackers_file.clone(),
            dir: config.data_dir.clone(),
            pinned,
            own: identity.fingerprint(),
        });
    }
    let tls = ServerTls::new(&identity, ClientCerts::Optional)
        .map_err(|e| TrackerError::Identity(fileshare_protocol::error::chain(&e)))?;
    let known_keys = config.data_dir.join(KNOWN_KEYS);
    let trust: Vec<TrackerTrust> = entries
        .iter()
        .map(|e| TrackerTrust::new(e, &known_keys))
        .collect();
    let size = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let mut settings = config.settings.clone();
    settings.cluster_size = size;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let transport = if size > 1 {
        Transport::start(no, &trust, &identity, &cancel, &tasks)
    } else {
        Transport::none()
    };
    // Replay before listening, so a client that connects sees the state.
    let data_dir = config.data_dir.clone();
    let (shared, writer) =
        tokio::task::spawn_blocking(move || Shared::open(&data_dir, settings, transport))
            .await
            .map_err(|e| TrackerError::BugWriterGone(e.to_string()))??;
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(error) => {
            cancel.cancel();
            writer.stop().await;
            tasks.close();
            tasks.wait().await;
            return Err(TrackerError::Bind { addr, error });
        }
    };
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
    {
        let shared = shared.clone();
        let cancel = cancel.child_token();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => if !shared.tick() { return },
                }
            }
        });
    }
    let admission = server::Admission::new(tls, trust);
    server::run(listener, shared.clone(), admission, shutdown).await;
    // The writer tells the others it stops; the dialers flush that, then end.
    drop(shared);
    writer.stop().await;
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("tracker {no} stopped");
    Ok(())
}
