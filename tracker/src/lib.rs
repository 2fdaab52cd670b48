//! `fileshare-tracker`: accounts, groups, memberships and the index of
//! shared files, durable on disk, plus the soft state of which daemons are
//! online with which pieces.
//!
//! Durable state is one ordered sequence of records. A change is decided
//! into records against the current state, the records are appended to the
//! log in one durable transaction, and only then applied to the in-memory
//! state and acknowledged. Start-up replays the log, so the state is a pure
//! function of it; replicating the log between trackers later needs no
//! change to deciding or applying.
//!
//! # Layout
//! - [`server`]: listener, per-connection handlers, shutdown.
//! - [`cmd`]: one function per request, grouped by family, returning typed
//!   replies.
//! - [`shared`]: what handlers share; start-up from disk.
//! - [`change`]: deciding a change into records (pure).
//! - [`records`]: the durable record type.
//! - [`state`]: the state and `apply`, its only mutator (pure).
//! - [`store`]: the record log on disk (redb), with checksums.
//! - [`writer`]: the group-commit thread tying the last four together.
//! - [`peers`]: online daemons and their pieces (memory only).
//! - [`auth`]: password hashing, tokens, login throttling, tickets.
//! - [`error`]: this crate's error type.
#![warn(clippy::cast_possible_truncation)]

pub mod auth;
pub mod change;
pub mod cmd;
pub mod error;
pub mod peers;
pub mod records;
pub mod replication;
pub mod server;
pub mod shared;
pub mod state;
pub mod store;
pub mod writer;

pub use error::TrackerError;
pub use shared::{Settings, Shared};

use fileshare_protocol::trackers_file;
use std::future::Future;
use std::path::PathBuf;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    let addrs = trackers_file::load(&config.trackers_file)?;
    let addr = usize::try_from(no)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| addrs.get(i))
        .ok_or_else(|| TrackerError::NoSuchTracker {
            no,
            path: config.trackers_file.clone(),
            count: addrs.len(),
        })?
        .clone();
    // Replay before listening, so a client that connects sees the state.
    let data_dir = config.data_dir.clone();
    let settings = config.settings.clone();
    let (shared, writer) = tokio::task::spawn_blocking(move || Shared::open(&data_dir, settings))
        .await
        .map_err(|e| TrackerError::BugWriterGone(e.to_string()))??;
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(error) => {
            writer.stop().await;
            return Err(TrackerError::Bind { addr, error });
        }
    };
    tracing::info!(
        "tracker {no} listening on {addr}, data in {}",
        config.data_dir.display()
    );
    let cancel = CancellationToken::new();
    let sweeper = {
        let shared = shared.clone();
        let cancel = cancel.child_token();
        tokio::spawn(async move { shared.sweep_peers(cancel).await })
    };
    server::run(listener, shared.clone(), shutdown).await;
    cancel.cancel();
    let _ = sweeper.await;
    drop(shared);
    writer.stop().await;
    tracing::info!("tracker {no} stopped");
    Ok(())
}
