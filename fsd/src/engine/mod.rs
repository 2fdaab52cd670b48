//! The engine: what the FUSE layer and the control socket ask for. It turns
//! "these bytes of this file" into piece waits, finds peers through the
//! trackers, and shares and unshares files.

pub mod download_jobs;
pub mod in_place;

use crate::net::fetch::{self, LinkCtx};
use crate::pieces::registry::Registry;
use crate::pieces::swarm::Swarm;
use crate::store::{Staging, Store, StoreError};
use crate::trackers::{LinkError, TrackerLink};
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::{FileEntry, Holding, PeerLocation};
use fileshare_protocol::messages::TrackerRequest;
use fileshare_protocol::ErrorCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Peers one file is fetched from at most.
const MAX_LINKS: usize = 16;

/// How often a swarm that needs pieces asks the tracker for more peers.
/// Other readers of the same file are listed once they hold a piece, and
/// every one of them found early adds upload to the swarm, so this is short.
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(250);

/// Discovery rounds with nothing wanted before the task ends (30 s).
const IDLE_ROUNDS: u32 = 120;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Tracker(#[from] LinkError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no peer served pieces {missing:?} within {secs} s")]
    Timeout { missing: Vec<u32>, secs: u64 },
    #[error("no such file")]
    NotFound,
    #[error("hashing failed: {0}")]
    Hash(std::io::Error),
    #[error("the daemon is shutting down")]
    ShuttingDown,
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
                Some(ErrorCode::BadName { .. }) => libc::EINVAL,
                Some(ErrorCode::InvalidSession) => libc::EACCES,
                _ => libc::EIO,
            },
            EngineError::Store(e) if e.is_no_space() => libc::ENOSPC,
            EngineError::Store(_) | EngineError::Hash(_) => libc::EIO,
            EngineError::Timeout { .. } => libc::EIO,
            EngineError::NotFound => libc::ENOENT,
            EngineError::ShuttingDown => libc::EIO,
        }
    }
}

pub struct Engine {
    pub store: Store,
    pub tracker: Arc<TrackerLink>,
    pub registry: Arc<Registry>,
    pub link_ctx: Arc<LinkCtx>,
    pub read_timeout: Duration,
    pub shutdown: CancellationToken,
    /// Wakes the announce loop after a change worth telling the tracker.
    pub announce_now: tokio::sync::Notify,
}

fn seed_of(swarm_id: &fileshare_protocol::FileId, me: &fileshare_protocol::PeerId) -> u64 {
    let mut s = [0u8; 8];
    for (i, b) in swarm_id.0.iter().chain(me.0.iter()).enumerate() {
        s[i % 8] ^= b.rotate_left(u32::try_from(i % 7).unwrap_or(0));
    }
    u64::from_le_bytes(s)
}

impl Engine {
    fn new_swarm(
        &self,
        file: Arc<crate::store::StoredFile>,
        have: fileshare_protocol::Bitfield,
    ) -> Arc<Swarm> {
        let seed = seed_of(&file.id, &self.link_ctx.my_id);
        Arc::new(Swarm::new(file, have, seed, self.shutdown.child_token()))
    }

    /// Offers everything in the store again (after a restart or remount).
    pub fn load_store(&self) -> usize {
        let all = self.store.load_all();
        let n = all.len();
        for (file, have) in all {
            let swarm = self.new_swarm(file, have);
            self.registry.insert(swarm);
        }
        n
    }

    /// The swarm of a listed file, creating its store entry on first use.
    pub async fn open(&self, group: &str, entry: &FileEntry) -> Result<Arc<Swarm>, EngineError> {
        if let Some(s) = self.registry.get(&entry.id) {
            return Ok(s);
        }
        let (meta, peers) = self.tracker.locate(group, &entry.name).await?;
        let id = meta.id();
        if let Some(s) = self.registry.get(&id) {
            return Ok(s);
        }
        let (file, have) = self.store.create(group, &meta)?;
        let swarm = self.new_swarm(file, have);
        self.registry.insert(swarm.clone());
        let swarm = self.registry.get(&id).unwrap_or(swarm);
        // Connecting while the kernel sends the first read saves a round
        // trip on the time to the first byte.
        self.connect(&swarm, peers);
        Ok(swarm)
    }

    /// The bytes `[offset, offset+len)` of a file, fetched as needed.
    pub async fn read(
        self: &Arc<Self>,
        swarm: &Arc<Swarm>,
        offset: u64,
        len: u32,
        read_ahead: u32,
    ) -> Result<Vec<u8>, EngineError> {
        let waits = swarm.acquire_range(offset, u64::from(len), read_ahead);
        if !waits.is_empty() || read_ahead > 0 {
            self.ensure_discovery(swarm);
        }
        if !waits.is_empty() {
            let pieces: Vec<u32> = waits.iter().map(|(p, _)| *p).collect();
            let all = async {
                for (_, rx) in waits {
                    if rx.await.is_err() {
                        return Err(EngineError::ShuttingDown);
                    }
                }
                Ok(())
            };
            // No peer serves a user who left the group: refuse at once.
            let all = async {
                tokio::select! {
                    r = all => r,
                    e = self.tracker.membership_lost(&swarm.file.group) => {
                        Err(EngineError::Tracker(e))
                    }
                }
            };
            match tokio::time::timeout(self.read_timeout, all).await {
                Ok(Err(e @ EngineError::Tracker(_))) => {
                    swarm.forget_closed_waiters();
                    return Err(e);
                }
                Ok(r) => r?,
                Err(_) => {
                    swarm.forget_closed_waiters();
                    let missing: Vec<u32> = pieces
                        .into_iter()
                        .filter(|&p| swarm.still_needed(p))
                        .collect();
                    tracing::warn!(
                        file = %swarm.file.meta.name,
                        ?missing,
                        "read failed: no peer served these pieces within {} s",
                        self.read_timeout.as_secs()
                    );
                    return Err(EngineError::Timeout {
                        missing,
                        secs: self.read_timeout.as_secs(),
                    });
                }
            }
        }
        let file = swarm.file.clone();
        let len = usize::try_from(len).unwrap_or(0);
        tokio::task::spawn_blocking(move || file.read_at(offset, len))
            .await
            .map_err(|_| EngineError::ShuttingDown)?
            .map_err(EngineError::from)
    }

    /// Starts the swarm's peer discovery if it is not running, and wakes it.
    pub fn ensure_discovery(self: &Arc<Self>, swarm: &Arc<Swarm>) {
        swarm.discover.notify_one();
        if swarm.discovering.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = self.clone();
        let swarm = swarm.clone();
        tokio::spawn(async move {
            loop {
                engine.discover(&swarm).await;
                swarm.discovering.store(false, Ordering::Release);
                // A reader may have arrived while the task was ending.
                if swarm.cancel.is_cancelled()
                    || swarm.is_complete()
                    || !swarm.needs_pieces()
                    || swarm.discovering.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        });
    }

    /// Finds peers for a swarm while it needs pieces; when the file is
    /// complete, makes this user one more holder of it.
    async fn discover(self: &Arc<Self>, swarm: &Arc<Swarm>) {
        let file = swarm.file.clone();
        let mut idle_rounds = 0;
        let mut last_locate = None;
        loop {
            if swarm.is_complete() {
                let req = TrackerRequest::ShareFile {
                    session: self.tracker.session,
                    group: file.group.clone(),
                    meta: file.meta.clone(),
                };
                match self.tracker.call(req).await {
                    Ok(_) => tracing::info!(file = %file.meta.name, "complete; now shared"),
                    Err(e) => {
                        tracing::warn!(file = %file.meta.name, "complete, but cannot share it: {e:#}")
                    }
                }
                self.announce_now.notify_one();
                return;
            }
            if !swarm.needs_pieces() {
                // Nothing wanted for a while: stop asking the tracker; the
                // next read starts discovery again.
                idle_rounds += 1;
                if idle_rounds >= IDLE_ROUNDS {
                    return;
                }
            } else {
                idle_rounds = 0;
            }
            // Every read wakes this loop; ask the tracker at most once per
            // interval unless there is no peer at all.
            let due = last_locate.is_none_or(|t: tokio::time::Instant| {
                t.elapsed() >= DISCOVERY_INTERVAL || swarm.links() == 0
            });
            if due && swarm.needs_pieces() && swarm.links() < MAX_LINKS {
                last_locate = Some(tokio::time::Instant::now());
                match self.tracker.locate(&file.group, &file.meta.name).await {
                    Ok((meta, peers)) if meta.id() == file.id => self.connect(swarm, peers),
                    Ok(_) => {
                        tracing::warn!(file = %file.meta.name, "the tracker now lists other content under this name")
                    }
                    Err(e) => tracing::debug!(file = %file.meta.name, "locate failed: {e:#}"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
                () = swarm.discover.notified() => {}
                () = swarm.cancel.cancelled() => return,
            }
        }
    }

    /// Starts links to the located peers we are not linked to yet.
    fn connect(&self, swarm: &Arc<Swarm>, peers: Vec<PeerLocation>) {
        for p in peers {
            if p.peer == self.link_ctx.my_id
                || swarm.links() >= MAX_LINKS
                || !swarm.connect_started(p.peer)
            {
                continue;
            }
            tokio::spawn(fetch::run(swarm.clone(), self.link_ctx.clone(), p));
        }
    }

    /// Hashes a file written through the mount, stores it and shares it.
    pub async fn share_staging(
        &self,
        group: &str,
        name: &str,
        staging: Staging,
    ) -> Result<Arc<Swarm>, EngineError> {
        let name_owned = name.to_string();
        let Staging { path, file } = staging;
        let meta = tokio::task::spawn_blocking(move || Store::hash_file(&file, &name_owned))
            .await
            .map_err(|_| EngineError::ShuttingDown)?
            .map_err(EngineError::Hash)?;
        let stored = self.store.import_staging(group, &meta, &path)?;
        self.publish(group, meta, stored).await
    }

    /// Shares a file the user already has, where it lies.
    pub async fn share_in_place(
        &self,
        group: &str,
        path: &std::path::Path,
    ) -> Result<Arc<Swarm>, EngineError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(EngineError::NotFound)?
            .to_string();
        let p = path.to_path_buf();
        let (meta, md) = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&p)?;
            let md = f.metadata()?;
            let meta = Store::hash_file(&f, &name)?;
            Ok::<_, std::io::Error>((meta, md))
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)?
        .map_err(EngineError::Hash)?;
        let stored = self.store.import_in_place(group, &meta, path, &md)?;
        self.publish(group, meta, stored).await
    }

    async fn publish(
        &self,
        group: &str,
        meta: FileMeta,
        stored: Arc<crate::store::StoredFile>,
    ) -> Result<Arc<Swarm>, EngineError> {
        let id = meta.id();
        let req = TrackerRequest::ShareFile {
            session: self.tracker.session,
            group: group.to_string(),
            meta,
        };
        if let Err(e) = self.tracker.call(req).await {
            if self.registry.get(&id).is_none() {
                let _ = self.store.remove(&id);
            }
            return Err(e.into());
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
            .find(|s| s.file.group == group && s.file.meta.name == name);
        let stopped = self
            .tracker
            .call(TrackerRequest::StopShare {
                session: self.tracker.session,
                group: group.to_string(),
                name: name.to_string(),
            })
            .await;
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
            self.registry.remove(&swarm.file.id);
            swarm.cancel.cancel();
            self.store.remove(&swarm.file.id)?;
        }
        self.tracker.invalidate(Some(group));
        self.announce_now.notify_one();
        Ok(())
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

    /// Keeps this peer announced while the daemon runs; logs when the
    /// trackers are lost and when they are back.
    pub async fn announce_loop(self: Arc<Self>, addr: String) {
        let mut lost = false;
        let mut next = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= next {
                match self.tracker.announce(&addr, self.holdings()).await {
                    Ok(i) => {
                        if lost {
                            tracing::info!(tracker = %self.tracker.client.current(), "tracker back; announced again");
                        }
                        lost = false;
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
                () = self.shutdown.cancelled() => return,
            }
        }
    }
}
