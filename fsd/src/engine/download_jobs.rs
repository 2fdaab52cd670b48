//! Whole-file downloads for `fsd download-file`: the same swarm a FUSE read
//! would use, told to want every piece, then copied to the destination.
//!
//! The destination appears complete or not at all: a hidden temporary file
//! beside it ([`super::partial`]) is given its full size before anything is
//! fetched, so a read-only or full place fails at once; once every piece is
//! verified the pieces are hashed again as they are copied, the file is
//! synced and renamed over the destination, and the directory is synced.
//! Any failure, or the daemon stopping, removes the temporary file.
//!
//! Each job is a task under the engine's token; its file work runs on the
//! blocking pool. The engine owns the jobs ([`Engine::start_download`]).

use crate::control::{DownloadState, DownloadStatus, WirePath};
use crate::engine::partial::Partial;
use crate::engine::{Engine, EngineError};
use crate::pieces::swarm::Swarm;
use crate::store::StoreError;
use crate::trackers::LinkError;
use fileshare_protocol::ids::check_name;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a running download refreshes its progress and rate.
const TICK: Duration = Duration::from_millis(250);

/// Finished downloads remembered for `show-downloads`; older ones go first.
const KEEP_FINISHED: usize = 64;

/// Causes are in the messages, never also a `source`, so an error chain
/// (`{e:#}`) names each once.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Tracker(#[from] LinkError),
    #[error("no file {name} in group {group}")]
    NoSuchFile { group: String, name: String },
    #[error("invalid file name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("already downloading to {0}")]
    Busy(String),
    #[error("cannot write {path}: {}", os_text(.error))]
    Write { path: String, error: std::io::Error },
    #[error("cannot write {0}: is a directory")]
    IsDirectory(String),
    #[error("not enough space for {name} ({size}) in {dir}")]
    NoSpace {
        name: String,
        size: String,
        dir: String,
    },
    #[error("cannot read piece {piece} of {name} from the store: {error}")]
    Store {
        piece: u32,
        name: String,
        error: StoreError,
    },
    #[error("piece {piece} of {name} no longer matches its hash in the store")]
    Corrupt { piece: u32, name: String },
    #[error("stopped: {0}")]
    Stopped(&'static str),
    #[error("no download with id {0}")]
    NoSuchDownload(u64),
}

/// An I/O error as the one line a user reads, without Rust's
/// "(os error N)" suffix.
fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

struct Progress {
    state: DownloadState,
    done: u64,
    rate: f64,
    peers: u32,
}

struct Job {
    id: u64,
    group: String,
    name: String,
    dest: PathBuf,
    size: u64,
    started: Instant,
    progress: Mutex<Progress>,
}

impl Job {
    // A float-to-int `as` saturates, which is what a rate display wants.
    #[allow(clippy::cast_possible_truncation)]
    fn status(&self) -> DownloadStatus {
        let p = self.progress.lock();
        DownloadStatus {
            id: self.id,
            group: self.group.clone(),
            name: self.name.clone(),
            dest: WirePath::from(self.dest.as_path()),
            size: self.size,
            done: p.done,
            rate: p.rate as u64,
            peers: p.peers,
            state: p.state.clone(),
        }
    }

    fn is_active(&self) -> bool {
        matches!(
            self.progress.lock().state,
            DownloadState::Fetching | DownloadState::Writing
        )
    }
}

/// Bytes of the verified pieces.
fn verified_bytes(swarm: &Swarm) -> u64 {
    let layout = swarm.file.layout;
    swarm
        .have()
        .ones()
        .filter_map(|i| layout.validate(i))
        .map(|p| layout.piece_size(p))
        .sum()
}

/// Every download of this daemon's life, running and finished.
#[derive(Default)]
pub struct Downloads {
    jobs: Mutex<Vec<Arc<Job>>>,
    next_id: AtomicU64,
}

impl Downloads {
    /// Checks the request, prepares the destination and starts fetching.
    /// Errors about the file or the destination come back here, before
    /// anything is fetched.
    pub async fn start(
        &self,
        engine: &Arc<Engine>,
        group: &str,
        name: &str,
        dest: &Path,
    ) -> Result<DownloadStatus, DownloadError> {
        check_name(name).map_err(|why| DownloadError::BadName {
            name: name.to_string(),
            why,
        })?;
        let find = |files: Vec<fileshare_protocol::messages::tracker::FileEntry>| {
            files.into_iter().find(|f| f.name == name)
        };
        let entry = match find(engine.tracker.files(group).await?) {
            Some(e) => e,
            None => {
                // The cached listing may predate a share made a moment ago.
                engine.tracker.invalidate(Some(group));
                find(engine.tracker.files(group).await?).ok_or_else(|| {
                    DownloadError::NoSuchFile {
                        group: group.to_string(),
                        name: name.to_string(),
                    }
                })?
            }
        };
        let (dest_c, name_c) = (dest.to_path_buf(), name.to_string());
        let dest = engine
            .tasks
            .blocking(move || {
                let dest = if dest_c.is_dir() {
                    dest_c.join(name_c)
                } else {
                    dest_c
                };
                if dest.is_dir() {
                    return Err(DownloadError::IsDirectory(dest.display().to_string()));
                }
                Ok(dest)
            })
            .await
            .map_err(|_| DownloadError::Stopped("the daemon is stopping"))??;
        if self
            .jobs
            .lock()
            .iter()
            .any(|j| j.dest == dest && j.is_active())
        {
            return Err(DownloadError::Busy(dest.display().to_string()));
        }
        let (dest_c, name_c, size) = (dest.clone(), name.to_string(), entry.size);
        let partial = engine
            .tasks
            .blocking(move || Partial::create(&dest_c, &name_c, size))
            .await
            .map_err(|_| DownloadError::Stopped("the daemon is stopping"))??;
        let swarm = engine.open(group, &entry).await?;
        if !swarm.is_complete() {
            swarm.want_all();
            engine.ensure_discovery(&swarm);
        }
        let job = Arc::new(Job {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            group: group.to_string(),
            name: name.to_string(),
            dest,
            size: entry.size,
            started: Instant::now(),
            progress: Mutex::new(Progress {
                state: DownloadState::Fetching,
                done: verified_bytes(&swarm),
                rate: 0.0,
                peers: u32::try_from(swarm.links()).unwrap_or(u32::MAX),
            }),
        });
        tracing::info!(group = %group, file = %name, dest = %job.dest.display(), "download started");
        {
            let mut jobs = self.jobs.lock();
            jobs.push(job.clone());
            let finished = jobs.iter().filter(|j| !j.is_active()).count();
            if finished > KEEP_FINISHED {
                let mut drop_n = finished - KEEP_FINISHED;
                jobs.retain(|j| {
                    if drop_n > 0 && !j.is_active() {
                        drop_n -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        let status = job.status();
        engine
            .tasks
            .spawn("download", drive(engine.clone(), job, swarm, partial));
        Ok(status)
    }

    pub fn status(&self, id: u64) -> Result<DownloadStatus, DownloadError> {
        self.jobs
            .lock()
            .iter()
            .find(|j| j.id == id)
            .map(|j| j.status())
            .ok_or(DownloadError::NoSuchDownload(id))
    }

    pub fn all(&self) -> Vec<DownloadStatus> {
        self.jobs.lock().iter().map(|j| j.status()).collect()
    }
}

/// Follows one download to its end: progress while fetching, then the copy.
/// When the daemon stops, the task is dropped, and with it the temporary
/// file.
async fn drive(engine: Arc<Engine>, job: Arc<Job>, mut swarm: Arc<Swarm>, partial: Partial) {
    let result = fetch(&engine, &job, &mut swarm).await;
    let result = match result {
        Ok(()) => {
            {
                let mut p = job.progress.lock();
                p.state = DownloadState::Writing;
                p.done = job.size;
                p.peers = u32::try_from(swarm.counters().len()).unwrap_or(u32::MAX);
            }
            let file = swarm.file.clone();
            engine
                .tasks
                .blocking(move || partial.fill_and_commit(&file))
                .await
                .unwrap_or(Err(DownloadError::Stopped("the daemon is stopping")))
        }
        Err(e) => Err(e),
    };
    let mut p = job.progress.lock();
    match result {
        Ok(()) => {
            let millis = fileshare_protocol::millis(job.started.elapsed());
            tracing::info!(group = %job.group, file = %job.name, dest = %job.dest.display(), millis, "download complete");
            p.state = DownloadState::Complete { millis };
        }
        Err(e) => {
            tracing::warn!(group = %job.group, file = %job.name, "download failed: {e}");
            p.state = DownloadState::Failed(e.to_string());
        }
    }
}

/// Waits until every piece is verified, keeping the progress current.
async fn fetch(
    engine: &Arc<Engine>,
    job: &Job,
    swarm: &mut Arc<Swarm>,
) -> Result<(), DownloadError> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = (Instant::now(), verified_bytes(swarm));
    loop {
        if swarm.is_complete() {
            return Ok(());
        }
        tokio::select! {
            // Stopping cancels every swarm too: say which it was.
            biased;
            () = engine.tasks.token().cancelled() => {
                return Err(DownloadError::Stopped("the daemon is stopping"));
            }
            _ = tick.tick() => {}
            () = swarm.cancel.cancelled() => {
                // Shared again under the same content: follow the new swarm.
                match engine.registry.get(&swarm.file.id) {
                    Some(s) if !s.cancel.is_cancelled() => {
                        s.want_all();
                        engine.ensure_discovery(&s);
                        *swarm = s;
                        continue;
                    }
                    _ => return Err(DownloadError::Stopped("the file was unshared here")),
                }
            }
        }
        let now = Instant::now();
        let done = verified_bytes(swarm);
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let inst = done.saturating_sub(last.1) as f64 / dt;
        last = (now, done);
        let mut p = job.progress.lock();
        p.rate = if p.rate == 0.0 {
            inst
        } else {
            0.7 * p.rate + 0.3 * inst
        };
        p.done = done;
        p.peers = u32::try_from(swarm.links()).unwrap_or(u32::MAX);
    }
}
