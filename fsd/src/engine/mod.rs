//! The engine: what the FUSE layer and the control socket ask for. It turns
//! "these bytes of this file" into piece waits, finds peers through the
//! trackers, shares and unshares files, and runs the download jobs.
//!
//! Its state is its own: callers use the operations of [`Engine`], and data
//! flows one way, from FUSE and the control socket through the engine to
//! peers and trackers. Its tasks run under the engine's node of the task
//! tree ([`crate::tasks`]), each swarm's under a token of its own, and its
//! file work (store entries, hashing, reads that waited for pieces) runs on
//! the bounded blocking pool.
//!
//! It also keeps the store within its budget ([`cache`]), makes the store's
//! bytes durable in batches ([`store_sync`]) and resumes the
//! `download-file` jobs a stopped daemon left ([`download_jobs`]).

mod discovery;
pub mod download_jobs;
pub mod download_status;
pub mod in_place;
mod partial;
pub mod read_stream;
mod rename;
mod single_flight;
mod store_sync;

use crate::engine::download_jobs::{DownloadError, Downloads};
use crate::engine::download_status::DownloadStatus;
use crate::engine::read_stream::ReadStream;
use crate::net::fetch::FetchCtx;
use crate::net::token_bucket::TokenBucket;
use crate::pieces::cache::Cache;
use crate::pieces::registry::Registry;
use crate::pieces::swarm::Swarm;
use crate::store::prehash::Prehash;
use crate::store::{Staging, Store, StoreError, StoredFile};
use crate::tasks::Tasks;
use crate::trackers::{LinkError, TrackerLink};
use fileshare_protocol::client::ClientError;
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::{
    CreateGroup, FileEntry, Holding, ReplaceShare, ShareFile, StopShare,
};
use fileshare_protocol::{ErrorCode, FileId, Identity, PieceIndex};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The shortest time between two announces made because pieces were
/// evicted.
const EVICTION_ANNOUNCE_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Tracker(#[from] LinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no peer served pieces {missing:?} within {secs} s")]
    Timeout { missing: Vec<PieceIndex>, secs: u64 },
    #[error("cannot store piece {piece}: {}", std::io::Error::from_raw_os_error(*.errno))]
    Unstorable { piece: PieceIndex, errno: i32 },
    #[error("no such file")]
    NotFound,
    #[error("hashing failed: {0}")]
    Hash(std::io::Error),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("not a file this daemon shares")]
    NotShared,
}

/// A request the engine made itself, refused or unanswered.
impl From<ClientError> for EngineError {
    fn from(e: ClientError) -> Self {
        EngineError::Tracker(e.into())
    }
}

impl EngineError {
    /// The errno a filesystem call reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            EngineError::Tracker(e) => match e.code() {
                Some(ErrorCode::NotMember(_)) | Some(ErrorCode::NotOwner(_)) => libc::EACCES,
                Some(ErrorCode::NoSuchFile { .. }) | Some(ErrorCode::NoSuchGroup(_)) => {
                    libc::ENOENT
                }
                Some(ErrorCode::NameTaken { .. }) | Some(ErrorCode::GroupExists(_)) => libc::EEXIST,
                Some(ErrorCode::NotSharer { .. }) => libc::EPERM,
                Some(ErrorCode::BadName { .. }) => libc::EINVAL,
                Some(ErrorCode::InvalidSession) => libc::EACCES,
                Some(ErrorCode::LimitReached { .. }) => libc::EDQUOT,
                Some(ErrorCode::Busy) => libc::EAGAIN,
                _ => libc::EIO,
            },
            EngineError::Store(e) if e.is_no_space() => libc::ENOSPC,
            EngineError::Store(_) | EngineError::Hash(_) => libc::EIO,
            EngineError::Timeout { .. } => libc::EIO,
            EngineError::Unstorable { errno, .. } => *errno,
            EngineError::NotFound => libc::ENOENT,
            EngineError::ShuttingDown => libc::EIO,
            EngineError::NotShared => libc::EPERM,
        }
    }
}

pub struct Engine {
    store: Arc<Store>,
    tracker: Arc<TrackerLink>,
    /// Shared with the peer server, which looks up what it may serve.
    registry: Arc<Registry>,
    link_ctx: Arc<FetchCtx>,
    read_timeout: Duration,
    /// The engine's node of the task tree.
    tasks: Tasks,
    /// Wakes the announce loop after a change worth telling the tracker.
    announce_now: tokio::sync::Notify,
    downloads: Downloads,
    /// The budget of fetched pieces, and eviction.
    cache: Arc<Cache>,
    /// First opens of a file, one at a time: one creates its store entry.
    opening: single_flight::SingleFlight<FileId>,
}

fn seed_of(swarm_id: &fileshare_protocol::FileId, me: &fileshare_protocol::PeerId) -> u64 {
    let mut s = [0u8; 8];
    for (i, b) in swarm_id.0.iter().chain(me.0.iter()).enumerate() {
        s[i % 8] ^= b.rotate_left(u32::try_from(i % 7).unwrap_or(0));
    }
    u64::from_le_bytes(s)
}

/// How an engine fetches and keeps pieces.
pub struct EngineConfig {
    /// At most this many bytes per second fetched, over all links.
    pub download: Option<TokenBucket>,
    /// A read gives up after this long without its pieces.
    pub read_timeout: Duration,
    /// At most this many bytes of files fetched from others are kept
    /// (default: a tenth of the store's file system, at most 50 GiB).
    pub cache_size: Option<u64>,
    /// How peers are reached, shared with the peer server.
    pub reach: Arc<crate::net::reach::Reach>,
    /// Links open at most, per file and over the daemon.
    pub links: crate::net::fetch::LinkBudget,
}

impl Engine {
    /// An engine over `store`, whose links present `identity` to peers,
    /// set as `config` says; its tasks run under `tasks`. Nothing runs until
    /// [`Engine::start`].
    pub fn new(
        store: Store,
        identity: Identity,
        tracker: Arc<TrackerLink>,
        registry: Arc<Registry>,
        config: EngineConfig,
        tasks: Tasks,
    ) -> Arc<Engine> {
        let EngineConfig {
            download,
            read_timeout,
            cache_size,
            reach,
            links,
        } = config;
        let budget = cache_size.unwrap_or_else(|| crate::store::disk::default_budget(store.root()));
        let cache = Arc::new(Cache::new(budget, registry.clone()));
        Arc::new(Engine {
            store: Arc::new(store),
            link_ctx: Arc::new(FetchCtx {
                my_id: tracker.peer,
                identity,
                tracker: tracker.clone(),
                download,
                cache: cache.clone(),
                reach,
                budget: Arc::new(links),
                offered_port: std::sync::atomic::AtomicU16::new(0),
            }),
            tracker,
            registry,
            read_timeout,
            tasks,
            announce_now: tokio::sync::Notify::new(),
            downloads: Downloads::default(),
            cache,
            opening: Default::default(),
        })
    }

    /// Starts the engine's own tasks: the announce loop (offering this peer
    /// at `addr`), the watcher of files shared in place, and tickets for
    /// every group up front, so the first read of a file costs no tracker
    /// round trip for one.
    pub fn start(self: &Arc<Self>, addr: String) {
        self.tasks
            .spawn("announce", self.clone().announce_loop(addr));
        self.tasks
            .spawn("store-sync", self.clone().store_sync_loop());
        self.tasks
            .spawn("resume-downloads", self.clone().resume_downloads());
        self.tasks
            .spawn("in-place-watch", in_place::watch(self.clone()));
        // The ticket key and a ticket for every group up front: a peer's
        // first request and the first read of a file then cost no tracker
        // round trip for one.
        let tracker = self.tracker.clone();
        self.tasks.spawn("ticket-prefetch", async move {
            if let Err(e) = tracker.ticket_key().await {
                tracing::debug!("no ticket key yet: {e:#}");
            }
            if let Ok(groups) = tracker.member_groups().await {
                for g in groups {
                    let _ = tracker.ticket(&g).await;
                }
            }
        });
    }

    /// The user this daemon runs for.
    pub fn user(&self) -> &str {
        &self.tracker.user
    }

    /// The groups this user belongs to.
    pub async fn list_groups(&self) -> Result<Vec<String>, EngineError> {
        Ok(self.tracker.member_groups().await?)
    }

    /// The files shared in `group` (a listing cached briefly).
    pub async fn list_files(&self, group: &str) -> Result<Vec<FileEntry>, EngineError> {
        Ok(self.tracker.files(group).await?)
    }

    /// Creates a group owned by this user.
    pub async fn create_group(&self, group: &str) -> Result<(), EngineError> {
        let t = &self.tracker;
        (t.client)
            .call(CreateGroup {
                session: t.session,
                group: group.into(),
            })
            .await?;
        t.invalidate(None);
        Ok(())
    }

    /// This daemon's swarm of a file, if it holds or fetches one.
    pub fn swarm(&self, id: &FileId) -> Option<Arc<Swarm>> {
        self.registry.get(id)
    }

    /// A new staging file for a write through the mount (file work: call
    /// it from a FUSE thread, not from a task).
    pub fn staging(&self) -> Result<Staging, EngineError> {
        Ok(self.store.staging()?)
    }

    /// The room the mount offers, as `df` shows it: the cache budget and
    /// its use.
    pub async fn space(&self) -> Result<crate::store::Space, EngineError> {
        let disk = self.with_store(|s| s.space()).await?;
        let (budget, used) = self.cache.usage();
        Ok(disk.within_budget(budget, used))
    }

    /// Writes into a file being written through the mount. When the disk is
    /// full, fetched pieces are evicted to make room and the write is tried
    /// once more. Returns the errno (file work: call it from a FUSE thread).
    pub fn write_staging(&self, file: &File, offset: u64, data: &[u8]) -> Result<(), i32> {
        let write = || {
            file.write_all_at(data, offset)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        };
        let mut written = write();
        if written == Err(libc::ENOSPC) && self.free_space(data.len() as u64) > 0 {
            written = write();
        }
        written
    }

    /// The engine's tasks under a swarm: they end with it.
    fn swarm_tasks(&self, swarm: &Swarm) -> Tasks {
        self.tasks.with_token(swarm.cancel.clone())
    }

    /// Runs `f` on the store on the blocking pool.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let store = self.store.clone();
        self.tasks
            .blocking(move || f(&store))
            .await
            .map_err(|_| EngineError::ShuttingDown)?
            .map_err(EngineError::from)
    }

    fn new_swarm(&self, file: Arc<StoredFile>, have: fileshare_protocol::Bitfield) -> Arc<Swarm> {
        let seed = seed_of(&file.id, &self.link_ctx.my_id);
        Arc::new(Swarm::new(
            file,
            have,
            seed,
            self.tasks.token().child_token(),
        ))
    }

    /// Offers everything in the store again (after a restart or remount).
    pub async fn load_store(&self) -> Result<usize, EngineError> {
        let all = self.with_store(|s| Ok(s.load_all())).await?;
        let n = all.len();
        for (file, have) in all {
            let swarm = self.new_swarm(file, have);
            self.registry.insert(swarm);
        }
        self.cache.recount();
        Ok(n)
    }

    /// The cache budget and the bytes of fetched pieces held now (for
    /// `fsd status` and the dashboard).
    pub fn cache_usage(&self) -> (u64, u64) {
        self.cache.usage()
    }

    /// The disk is full under a write: evicts fetched pieces (any that may
    /// go, whatever the budget) to free at least `bytes`. Returns the bytes
    /// freed (file work: call it from a FUSE thread, not from a task).
    pub fn free_space(&self, bytes: u64) -> u64 {
        self.cache.free(bytes)
    }

    /// The swarm of a listed file, creating its store entry on first use.
    pub async fn open(&self, group: &str, entry: &FileEntry) -> Result<Arc<Swarm>, EngineError> {
        if let Some(s) = self.registry.get(&entry.id) {
            return Ok(s);
        }
        // Concurrent first opens wait for the first: one locate, one entry.
        let mut turn = self.opening.turn(&entry.id).await;
        if let Some(s) = self.registry.get(&entry.id) {
            return Ok(s);
        }
        let (meta, peers) = self.tracker.locate(group, &entry.name).await?;
        let id = meta.id();
        if id != entry.id {
            // Changed since it was listed: wait for that file's first
            // opens instead (one turn held at a time, so none waits on
            // another in a circle).
            drop(turn);
            turn = self.opening.turn(&id).await;
        }
        let _turn = turn;
        if let Some(s) = self.registry.get(&id) {
            return Ok(s);
        }
        let (group_c, meta_c) = (group.to_string(), meta.clone());
        let (file, have) = self
            .with_store(move |s| s.create(&group_c, &meta_c))
            .await?;
        let swarm = self.new_swarm(file, have);
        self.registry.insert(swarm.clone());
        let swarm = self.registry.get(&id).unwrap_or(swarm);
        // Connecting while the kernel sends the first read saves a round
        // trip on the time to the first byte.
        self.connect(&swarm, peers);
        Ok(swarm)
    }

    /// Opens a listed file for reading: the stream the FUSE layer holds
    /// while the file is open.
    pub async fn open_read(
        self: &Arc<Self>,
        group: &str,
        entry: &FileEntry,
    ) -> Result<ReadStream, EngineError> {
        let swarm = self.open(group, entry).await?;
        Ok(ReadStream::new(self.clone(), swarm))
    }

    /// Hashes a file written through the mount (the pieces `prehash` has
    /// not hashed yet), stores it and shares it;
    /// with `replace`, in place of this user's own different file of that
    /// name, in one tracker change (rename(2) of a new file onto it).
    pub async fn share_staging(
        &self,
        group: &str,
        name: &str,
        staging: Staging,
        prehash: Prehash,
        replace: bool,
    ) -> Result<Arc<Swarm>, EngineError> {
        let (group_c, name_c) = (group.to_string(), name.to_string());
        let store = self.store.clone();
        let (meta, stored) = self
            .tasks
            .blocking(move || {
                let Staging { path, file } = staging;
                let imported = Store::hash_file_after(&file, &name_c, prehash.finish())
                    .map_err(EngineError::Hash)
                    .and_then(|meta| {
                        let stored = store.import_staging(&group_c, &meta, &path)?;
                        Ok((meta, stored))
                    });
                if imported.is_err() {
                    // Nothing half written stays behind.
                    let _ = std::fs::remove_file(&path);
                }
                imported
            })
            .await
            .map_err(|_| EngineError::ShuttingDown)??;
        self.publish(group, meta, stored, replace).await
    }

    /// Shares a file the user already has, where it lies.
    pub async fn share_in_place(
        &self,
        group: &str,
        path: &Path,
    ) -> Result<Arc<Swarm>, EngineError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(EngineError::NotFound)?
            .to_string();
        let (group_c, p) = (group.to_string(), path.to_path_buf());
        let store = self.store.clone();
        let (meta, stored) = self
            .tasks
            .blocking(move || {
                let hashed = std::fs::File::open(&p).and_then(|f| {
                    let md = f.metadata()?;
                    Ok((Store::hash_file(&f, &name)?, md))
                });
                let (meta, md) = hashed.map_err(EngineError::Hash)?;
                let stored = store.import_in_place(&group_c, &meta, &p, &md)?;
                Ok::<_, EngineError>((meta, stored))
            })
            .await
            .map_err(|_| EngineError::ShuttingDown)??;
        self.publish(group, meta, stored, false).await
    }

    async fn publish(
        &self,
        group: &str,
        meta: FileMeta,
        stored: Arc<StoredFile>,
        replace: bool,
    ) -> Result<Arc<Swarm>, EngineError> {
        let id = meta.id();
        let name = meta.name.clone();
        let (session, group_name) = (self.tracker.session, group.to_string());
        let shared = if replace {
            let share = ReplaceShare {
                session,
                group: group_name,
                meta,
            };
            self.tracker.client.call(share).await
        } else {
            let share = ShareFile {
                session,
                group: group_name,
                meta,
            };
            self.tracker.client.call(share).await
        };
        if let Err(e) = shared {
            if self.registry.get(&id).is_none() {
                let _ = self.with_store(move |s| s.remove(&id)).await;
            }
            return Err(e.into());
        }
        if replace {
            self.drop_replaced(group, &name, &id).await?;
        }
        // The same file already shared in other groups stays shared there.
        if let Some(old) = self.registry.get(&id) {
            let (stored, old) = (stored.clone(), old.file.clone());
            self.with_store(move |_| {
                for g in old.groups() {
                    stored.add_group(&g)?;
                }
                Ok(())
            })
            .await?;
        }
        let have = fileshare_protocol::Bitfield::full(stored.layout.num_pieces());
        let swarm = self.new_swarm(stored, have);
        if let Some(old) = self.registry.get(&id) {
            old.cancel.cancel();
        }
        self.registry.insert(swarm.clone());
        self.tracker.invalidate(Some(group));
        self.announce_now.notify_one();
        Ok(swarm)
    }

    /// Stops sharing this user's copy of `group/name` and frees its space.
    pub async fn unshare(&self, group: &str, name: &str) -> Result<(), EngineError> {
        let local = self
            .registry
            .all()
            .into_iter()
            .find(|s| s.file.in_group(group) && s.file.meta.name == name);
        let stop = StopShare {
            session: self.tracker.session,
            group: group.into(),
            name: name.into(),
        };
        let stopped = self.tracker.client.call(stop).await;
        match stopped {
            Ok(_) => {}
            // A copy this user only read (never a holder of) is still ours
            // to delete.
            Err(e) if e.code().is_some() && local.is_some() => {
                tracing::debug!(file = %name, "not a holder: {e:#}");
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(swarm) = local {
            let (file, g) = (swarm.file.clone(), group.to_string());
            if self.with_store(move |_| file.remove_group(&g)).await? > 0 {
                // Still shared in another group: keep the bytes.
                self.tracker.invalidate(Some(group));
                self.announce_now.notify_one();
                return Ok(());
            }
            let id = swarm.file.id;
            self.registry.remove(&id);
            swarm.cancel.cancel();
            self.with_store(move |s| s.remove(&id)).await?;
        }
        self.tracker.invalidate(Some(group));
        self.announce_now.notify_one();
        Ok(())
    }

    /// A fetched file this user became a holder of when it was complete
    /// lost pieces to eviction: it stops being one (the trackers then list
    /// only holders of the whole file), unless it is complete again.
    fn no_longer_holder(self: &Arc<Self>, swarm: Arc<Swarm>) {
        let engine = self.clone();
        self.tasks.spawn("stop-share", async move {
            if swarm.is_complete() || swarm.cancel.is_cancelled() {
                return;
            }
            let file = &swarm.file;
            let stop = StopShare {
                session: engine.tracker.session,
                group: file.group.clone(),
                name: file.meta.name.clone(),
            };
            match engine.tracker.client.call(stop).await {
                Ok(()) => {
                    tracing::info!(file = %file.meta.name, "pieces evicted; no longer a holder");
                    engine.tracker.invalidate(Some(&file.group));
                }
                Err(e) => {
                    tracing::debug!(file = %file.meta.name, "stop-share after eviction: {e:#}")
                }
            }
        });
    }

    /// Everything this peer can serve, for the announce.
    pub fn holdings(&self) -> Vec<Holding> {
        self.registry
            .all()
            .into_iter()
            .filter_map(|s| {
                let have = s.have();
                (have.count() > 0).then_some(Holding {
                    file: s.file.id,
                    have,
                })
            })
            .collect()
    }

    /// Starts fetching a whole file into `dest` for `fsd download-file`.
    pub async fn start_download(
        self: &Arc<Self>,
        group: &str,
        name: &str,
        dest: &Path,
    ) -> Result<DownloadStatus, DownloadError> {
        self.downloads.start(self, group, name, dest).await
    }

    /// Resumes the downloads a stopped daemon left (from [`Engine::start`]).
    async fn resume_downloads(self: Arc<Self>) {
        self.downloads.resume(&self).await;
    }

    /// One download's status, by id: once it ended, or after `hold` while
    /// it runs.
    pub async fn download_progress(
        &self,
        id: u64,
        hold: std::time::Duration,
    ) -> Result<DownloadStatus, DownloadError> {
        self.downloads.status_held(id, hold).await
    }

    /// How this daemon reaches peers: the path each connection took.
    pub fn reach(&self) -> &crate::net::reach::Reach {
        &self.link_ctx.reach
    }

    /// Every download of this daemon's life.
    pub fn downloads(&self) -> Vec<DownloadStatus> {
        self.downloads.all()
    }

    /// Keeps this peer announced while the daemon runs; logs when the
    /// trackers are lost and when they are back. Ends with the engine's
    /// token.
    async fn announce_loop(self: Arc<Self>, addr: String) {
        let mut lost = false;
        let mut next = tokio::time::Instant::now();
        let mut last_announce: Option<tokio::time::Instant> = None;
        let mut shrank = false;
        let mut announced = String::new();
        loop {
            let now = tokio::time::Instant::now();
            // A port mapping granted or lost: the trackers hear the new
            // address now, not at the next interval.
            let offered = self.link_ctx.reach.announce_addr(&addr);
            if let Ok(a) = offered.parse::<std::net::SocketAddr>() {
                (self.link_ctx.offered_port).store(a.port(), std::sync::atomic::Ordering::Relaxed);
            }
            if !lost && last_announce.is_some() && offered != announced {
                next = now;
            }
            // Evicted pieces: the trackers hear the true bitfields soon,
            // at most once per EVICTION_ANNOUNCE_GAP.
            shrank |= self.cache.take_shrank();
            if shrank && last_announce.is_none_or(|t| now >= t + EVICTION_ANNOUNCE_GAP) {
                next = now;
            }
            for swarm in self.cache.take_incomplete() {
                self.no_longer_holder(swarm);
            }
            if now >= next {
                shrank = false;
                let also = self.link_ctx.reach.also();
                match self
                    .tracker
                    .announce((&offered, &also), self.holdings())
                    .await
                {
                    Ok(i) => {
                        if lost {
                            tracing::info!(tracker = %self.tracker.client.current(), "tracker back; announced again");
                        }
                        lost = false;
                        last_announce = Some(now);
                        announced = offered;
                        next = now + i;
                    }
                    Err(e) => {
                        if !lost {
                            tracing::warn!("tracker lost: {e:#}");
                        }
                        lost = true;
                        next = now + Duration::from_secs(1);
                    }
                }
            } else if !lost {
                if let Err(e) = self.tracker.flush_reports().await {
                    tracing::debug!("piece report failed: {e:#}");
                    if e.code().is_some() {
                        // The tracker forgot us (it restarted): announce now.
                        next = now;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = self.announce_now.notified() => { next = tokio::time::Instant::now(); }
            }
        }
    }
}
