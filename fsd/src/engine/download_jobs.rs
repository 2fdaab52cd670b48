//! Whole-file downloads for `fsd download-file`: the same swarm a FUSE read
//! would use, told to want every piece, then copied to the destination.
//!
//! The destination appears complete or not at all: a hidden temporary file
//! beside it ([`super::partial`]) is given its full size before anything is
//! fetched, so a read-only or full place fails at once; pieces are copied
//! into it as they are verified (in the kernel, not hashed again), and once
//! every piece is, the file is synced and renamed over the destination, and
//! the directory is synced.
//! Any failure, or the daemon stopping, removes the temporary file.
//!
//! A job holds its file's pieces ([`Swarm::pin`]) until it has copied them,
//! so the cache budget never evicts what it still needs. Jobs are recorded
//! in the store ([`crate::store::jobs`]) from their start until they
//! complete or fail: a daemon stopped or killed mid-download resumes them
//! at its next start from the pieces the store holds ([`Engine::start`]).
//!
//! Each job is a task under the engine's token; its file work runs on the
//! blocking pool. The engine owns the jobs ([`Engine::start_download`]).

use crate::engine::download_status::{DownloadState, DownloadStatus};
use crate::engine::partial::{remove_stale, Partial};
use crate::engine::{Engine, EngineError};
use crate::pieces::swarm::Swarm;
use crate::store::jobs::JobRecord;
use crate::store::{Store, StoreError};
use crate::trackers::LinkError;
use fileshare_protocol::ids::check_name;
use fileshare_protocol::messages::tracker::FileEntry;
use fileshare_protocol::PieceIndex;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a running download refreshes its progress and rate.
const TICK: Duration = Duration::from_millis(250);

/// The longest a progress request waits for its download to end before it
/// answers with the progress so far.
pub const PROGRESS_HOLD: Duration = Duration::from_millis(200);

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
        piece: PieceIndex,
        name: String,
        error: StoreError,
    },
    #[error("cannot store the pieces of {name}: {}", os_text(&std::io::Error::from_raw_os_error(*.errno)))]
    Unstorable { name: String, errno: i32 },
    #[error("stopped: {0}")]
    Stopped(&'static str),
    #[error("no download with id {0}")]
    NoSuchDownload(u64),
}

/// An I/O error as the one line a user reads, without Rust's
/// "(os error N)" suffix.
pub(super) fn os_text(e: &std::io::Error) -> String {
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
    /// What the store records of it, while it is to be resumed.
    record: JobRecord,
    recorded: AtomicBool,
    /// Woken when the job completes or fails, for held progress requests.
    ended: tokio::sync::Notify,
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
            dest: self.dest.clone(),
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
    swarm.held_bytes()
}

const STOPPING: DownloadError = DownloadError::Stopped("the daemon is stopping");

/// Every download of this daemon's life, running and finished.
#[derive(Default)]
pub struct Downloads {
    jobs: Arc<Mutex<Vec<Arc<Job>>>>,
    next_id: AtomicU64,
    /// Serialises rewrites of the store's record of jobs.
    saving: Arc<Mutex<()>>,
}

/// Holds a swarm's pieces for a job: unpinned on drop.
struct Pinned(Arc<Swarm>);

impl Pinned {
    fn new(swarm: Arc<Swarm>) -> Pinned {
        swarm.pin();
        Pinned(swarm)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.0.unpin();
    }
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
        let entry = find_entry(engine, group, name, |_| true).await?;
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
            .map_err(|_| STOPPING)??;
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
            .map_err(|_| STOPPING)??;
        let swarm = engine.open(group, &entry).await?;
        let record = JobRecord::new(group, name, &dest, entry.id, entry.size);
        tracing::info!(group = %group, file = %name, dest = %dest.display(), "download started");
        Ok(self.launch(engine, record, swarm, partial).await)
    }

    /// Starts the job's task, recorded in the store until it ends.
    async fn launch(
        &self,
        engine: &Arc<Engine>,
        record: JobRecord,
        swarm: Arc<Swarm>,
        partial: Partial,
    ) -> DownloadStatus {
        let pinned = Pinned::new(swarm.clone());
        if !swarm.is_complete() {
            swarm.want_all();
            engine.ensure_discovery(&swarm);
        }
        let job = self.add_job(&record, DownloadState::Fetching, Some(&swarm), true);
        self.save(engine).await;
        let status = job.status();
        engine
            .tasks
            .spawn("download", drive(engine.clone(), job, pinned, partial));
        status
    }

    fn add_job(
        &self,
        record: &JobRecord,
        state: DownloadState,
        swarm: Option<&Swarm>,
        recorded: bool,
    ) -> Arc<Job> {
        let job = Arc::new(Job {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            group: record.group.clone(),
            name: record.name.clone(),
            dest: record.dest(),
            size: record.size,
            started: Instant::now(),
            progress: Mutex::new(Progress {
                state,
                done: swarm.map_or(0, verified_bytes),
                rate: 0.0,
                peers: swarm.map_or(0, |s| u32::try_from(s.links()).unwrap_or(u32::MAX)),
            }),
            record: record.clone(),
            ended: tokio::sync::Notify::new(),
            recorded: AtomicBool::new(recorded),
        });
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
        job
    }

    /// Rewrites the store's record of the jobs to resume.
    async fn save(&self, engine: &Engine) {
        let (jobs, saving, store) = (self.jobs.clone(), self.saving.clone(), engine.store.clone());
        let saved = engine
            .tasks
            .blocking(move || {
                let _one = saving.lock();
                let records: Vec<JobRecord> = (jobs.lock().iter())
                    .filter(|j| j.recorded.load(Ordering::Acquire))
                    .map(|j| j.record.clone())
                    .collect();
                store.set_jobs(&records)
            })
            .await;
        if let Ok(Err(e)) = saved {
            tracing::warn!("cannot record the downloads to resume: {e:#}");
        }
    }

    /// Resumes the jobs a stopped daemon recorded, from what the store
    /// holds; those that cannot be resumed are shown failed and forgotten.
    pub async fn resume(&self, engine: &Arc<Engine>) {
        let records = engine
            .with_store(|s| Ok(s.jobs()))
            .await
            .unwrap_or_default();
        for record in records {
            let (group, name) = (record.group.clone(), record.name.clone());
            if let Err(e) = self.resume_one(engine, record.clone()).await {
                tracing::warn!(group = %group, file = %name, "cannot resume the download: {e}");
                let swarm = engine.registry.get(&record.file);
                let failed = DownloadState::Failed(e.to_string());
                self.add_job(&record, failed, swarm.as_deref(), false);
            }
        }
        self.save(engine).await;
    }

    async fn resume_one(
        &self,
        engine: &Arc<Engine>,
        record: JobRecord,
    ) -> Result<(), DownloadError> {
        let rec = record.clone();
        let (partial, done) = engine
            .tasks
            .blocking(move || prepare_resume(&rec))
            .await
            .map_err(|_| STOPPING)??;
        let swarm = match engine.registry.get(&record.file) {
            Some(s) if !s.cancel.is_cancelled() => s,
            _ => {
                let entry =
                    find_entry(engine, &record.group, &record.name, |e| e.id == record.file)
                        .await?;
                engine.open(&record.group, &entry).await?
            }
        };
        let Some(partial) = partial else {
            // It had landed whole before the daemon stopped.
            let millis = fileshare_protocol::millis(done);
            self.add_job(
                &record,
                DownloadState::Complete { millis },
                Some(&swarm),
                false,
            );
            return Ok(());
        };
        tracing::info!(group = %record.group, file = %record.name, dest = %record.dest().display(), pieces = swarm.have().count(), "download resumed");
        self.launch(engine, record, swarm, partial).await;
        Ok(())
    }

    /// The job's status once it ended, or after `hold` if it is still
    /// running: a client that asks again at once learns of the end when it
    /// happens, without asking many times a second.
    pub async fn status_held(
        &self,
        id: u64,
        hold: Duration,
    ) -> Result<DownloadStatus, DownloadError> {
        let job = (self.jobs.lock().iter())
            .find(|j| j.id == id)
            .cloned()
            .ok_or(DownloadError::NoSuchDownload(id))?;
        let ended = job.ended.notified();
        tokio::pin!(ended);
        // Registered before the state is looked at: an end in between wakes it.
        ended.as_mut().enable();
        if job.is_active() {
            let _ = tokio::time::timeout(hold, ended).await;
        }
        Ok(job.status())
    }

    pub fn all(&self) -> Vec<DownloadStatus> {
        self.jobs.lock().iter().map(|j| j.status()).collect()
    }
}

/// The listed file `name` of `group` that `accept` takes, listing again if
/// the cached listing lacks it.
async fn find_entry(
    engine: &Engine,
    group: &str,
    name: &str,
    accept: impl Fn(&FileEntry) -> bool,
) -> Result<FileEntry, DownloadError> {
    let find = |files: Vec<FileEntry>| files.into_iter().find(|f| f.name == name && accept(f));
    if let Some(e) = find(engine.tracker.files(group).await?) {
        return Ok(e);
    }
    // The cached listing may predate a share made a moment ago.
    engine.tracker.invalidate(Some(group));
    find(engine.tracker.files(group).await?).ok_or_else(|| DownloadError::NoSuchFile {
        group: group.to_string(),
        name: name.to_string(),
    })
}

/// Gets a recorded job's destination ready again: the leftovers of the
/// interrupted attempt go, and a new temporary file is made, unless the
/// destination already holds the whole file (then `None`, and the time it
/// took to check).
fn prepare_resume(rec: &JobRecord) -> Result<(Option<Partial>, Duration), DownloadError> {
    let start = Instant::now();
    let dest = rec.dest();
    if let Some(dir) = dest.parent() {
        remove_stale(dir);
    }
    let landed = std::fs::File::open(&dest)
        .and_then(|f| Store::hash_file(&f, &rec.name))
        .is_ok_and(|meta| meta.id() == rec.file);
    if landed {
        return Ok((None, start.elapsed()));
    }
    Ok((
        Some(Partial::create(&dest, &rec.name, rec.size)?),
        start.elapsed(),
    ))
}

/// Follows one download to its end: progress while fetching, then the copy.
/// When the daemon stops, the task is dropped, and with it the temporary
/// file; the job stays recorded, to be resumed.
async fn drive(engine: Arc<Engine>, job: Arc<Job>, mut pinned: Pinned, partial: Partial) {
    // Verified pieces are copied while the rest arrive, so little is left
    // to copy at the end.
    let copying = pinned.0.clone();
    let mut partial = Some(partial);
    let result = {
        let fetching = fetch(&engine, &job, &mut pinned);
        tokio::pin!(fetching);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut fetching => break r,
                _ = tick.tick() => {
                    let Some(mut p) = partial.take() else { break Err(STOPPING) };
                    let (file, have) = (copying.file.clone(), copying.have());
                    let copied = engine.tasks.blocking(move || {
                        // Best effort: what fails here is copied, or
                        // reported, at the end.
                        if let Err(e) = p.copy_verified(&file, &have) {
                            tracing::debug!("copy while fetching: {e}");
                        }
                        p
                    });
                    match copied.await {
                        Ok(p) => partial = Some(p),
                        Err(_) => break Err(STOPPING),
                    }
                }
            }
        }
    };
    let swarm = pinned.0.clone();
    let result = match (result, partial) {
        (Ok(()), Some(partial)) => {
            {
                let mut p = job.progress.lock();
                p.state = DownloadState::Writing;
                p.done = job.size;
                p.peers = u32::try_from(swarm.counters().len()).unwrap_or(u32::MAX);
            }
            let file = swarm.file.clone();
            engine
                .tasks
                .blocking(move || partial.commit(&file))
                .await
                .unwrap_or(Err(STOPPING))
        }
        (Ok(()), None) => Err(STOPPING),
        (Err(e), _) => Err(e),
    };
    drop(pinned);
    let stopping = engine.tasks.token().is_cancelled();
    {
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
    job.ended.notify_waiters();
    if !stopping {
        job.recorded.store(false, Ordering::Release);
        engine.downloads.save(&engine).await;
    }
}

/// Waits until every piece is verified, keeping the progress current.
async fn fetch(engine: &Arc<Engine>, job: &Job, pinned: &mut Pinned) -> Result<(), DownloadError> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = (Instant::now(), verified_bytes(&pinned.0));
    let failures = pinned.0.store_failures();
    // Each verified piece wakes the loop, so the end is seen when it comes.
    let mut verified = pinned.0.subscribe();
    loop {
        let swarm = pinned.0.clone();
        if swarm.is_complete() {
            return Ok(());
        }
        if swarm.store_failures() > failures {
            // The store is full or failing: a piece was lost on arrival.
            return Err(DownloadError::Unstorable {
                name: job.name.clone(),
                errno: swarm.last_store_errno(),
            });
        }
        tokio::select! {
            // Stopping cancels every swarm too: say which it was.
            biased;
            () = engine.tasks.token().cancelled() => return Err(STOPPING),
            _ = tick.tick() => {}
            // Never closed while `pinned` holds the swarm, its sender.
            r = verified.recv() => {
                if !matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    continue;
                }
            }
            () = swarm.cancel.cancelled() => {
                // Shared again under the same content: follow the new swarm.
                match engine.registry.get(&swarm.file.id) {
                    Some(s) if !s.cancel.is_cancelled() => {
                        s.want_all();
                        engine.ensure_discovery(&s);
                        verified = s.subscribe();
                        *pinned = Pinned::new(s);
                        continue;
                    }
                    _ => return Err(DownloadError::Stopped("the file was unshared here")),
                }
            }
        }
        let now = Instant::now();
        let done = verified_bytes(&swarm);
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

#[cfg(test)]
mod tests {
    use super::*;
    use fileshare_protocol::FileId;

    fn job(d: &Downloads) -> Arc<Job> {
        let rec = JobRecord::new("g", "a.bin", Path::new("/tmp/a.bin"), FileId([7; 32]), 10);
        d.add_job(&rec, DownloadState::Fetching, None, false)
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_progress_request_answers_when_the_job_ends() {
        let d = Downloads::default();
        let j = job(&d);
        let t0 = tokio::time::Instant::now();
        let s = d.status_held(j.id, PROGRESS_HOLD).await.unwrap();
        assert_eq!(s.state, DownloadState::Fetching);
        assert_eq!(
            t0.elapsed(),
            PROGRESS_HOLD,
            "a running job: held the whole time"
        );

        let ender = j.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            ender.progress.lock().state = DownloadState::Complete { millis: 5 };
            ender.ended.notify_waiters();
        });
        let t1 = tokio::time::Instant::now();
        let s = d.status_held(j.id, PROGRESS_HOLD).await.unwrap();
        assert_eq!(s.state, DownloadState::Complete { millis: 5 });
        assert_eq!(
            t1.elapsed(),
            Duration::from_millis(30),
            "answered at the end"
        );

        let t2 = tokio::time::Instant::now();
        d.status_held(j.id, PROGRESS_HOLD).await.unwrap();
        assert_eq!(t2.elapsed(), Duration::ZERO, "an ended job is not held");
        assert!(matches!(
            d.status_held(99, PROGRESS_HOLD).await,
            Err(DownloadError::NoSuchDownload(99))
        ));
    }
}
