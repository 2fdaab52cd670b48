//! Everything the request handlers share, and how it comes up from disk.
//!
//! Lock order: `state` before `peers`; `throttle` is never held with
//! either. No lock is held across an `.await`. See STATE.md.

use crate::auth;
use crate::change::Change;
use crate::error::TrackerError;
use crate::peers::Peers;
use crate::records::Record;
use crate::state::State;
use crate::store::Store;
use crate::writer::{self, WriterHandle, WriterThread};
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::ErrorCode;
use parking_lot::{Mutex, RwLock};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Knobs, mostly for tests.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This tracker's 1-based number in the trackers file.
    pub tracker_no: u32,
    pub session_ttl: Duration,
    pub announce_interval: Duration,
    pub ticket_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tracker_no: 1,
            session_ttl: Duration::from_secs(7 * 24 * 3600),
            announce_interval: Duration::from_secs(5),
            ticket_ttl: Duration::from_secs(600),
        }
    }
}

/// The file of the record log inside the data directory.
pub const STORE_FILE: &str = "records.redb";

pub struct Shared {
    /// Durable state; only the writer thread changes it.
    pub(crate) state: Arc<RwLock<State>>,
    pub(crate) peers: RwLock<Peers>,
    pub(crate) writer: WriterHandle,
    pub(crate) throttle: Mutex<auth::Throttle>,
    /// Bounds concurrent argon2 runs: each takes ~19 MiB and a core.
    pub(crate) hashing: Semaphore,
    pub(crate) settings: Settings,
}

impl Shared {
    /// Opens the log in `data_dir` (created if missing), replays it, starts
    /// the writer. Blocking: call it on the blocking pool.
    pub fn open(
        data_dir: &Path,
        settings: Settings,
    ) -> Result<(Arc<Shared>, WriterThread), TrackerError> {
        std::fs::create_dir_all(data_dir).map_err(|error| TrackerError::DataDir {
            path: data_dir.to_path_buf(),
            error,
        })?;
        let mut store = Store::open(&data_dir.join(STORE_FILE))?;
        let mut state = State::default();
        store.read_all(|_, r| state.apply(&r))?;
        if state.secret().is_none() {
            let secret = auth::random::<32>().map_err(|e| TrackerError::Random(e.to_string()))?;
            let rec = Record::ClusterInit { secret };
            store.append(std::slice::from_ref(&rec))?;
            state.apply(&rec);
        }
        tracing::info!(
            records = state.applied(),
            users = state.user_count(),
            "state replayed"
        );
        let state = Arc::new(RwLock::new(state));
        let (writer, thread) = writer::spawn(store, state.clone())
            .map_err(|e| TrackerError::BugWriterGone(e.to_string()))?;
        let hashing = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shared = Shared {
            state,
            peers: RwLock::new(Peers::new(settings.announce_interval)),
            writer,
            throttle: Mutex::new(auth::Throttle::default()),
            hashing: Semaphore::new(hashing),
            settings,
        };
        Ok((Arc::new(shared), thread))
    }

    /// The user of a valid, unexpired session.
    pub fn session_user(&self, token: &SessionToken) -> Result<String, ErrorCode> {
        let hash = auth::token_hash(token);
        self.state
            .read()
            .session(&hash, auth::now_unix_ms())
            .map(|s| s.user.clone())
            .ok_or(ErrorCode::InvalidSession)
    }

    /// Waits until `change` is durable and visible, or refused.
    pub async fn submit(&self, change: Change) -> Result<(), ErrorCode> {
        self.writer.submit(change).await
    }

    /// Runs argon2 work on the blocking pool, a few at a time.
    pub async fn hash_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ErrorCode> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| ErrorCode::Unavailable("the tracker is shutting down".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ErrorCode::Internal(format!("password check failed: {e}")))
    }

    /// Forgets peers that stopped announcing, every interval until
    /// cancelled.
    pub async fn sweep_peers(&self, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.announce_interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let gone = self.peers.write().sweep(std::time::Instant::now());
                    if gone > 0 {
                        tracing::debug!(gone, "offline peers forgotten");
                    }
                }
            }
        }
    }
}
