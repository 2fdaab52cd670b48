//! The piece store under `HOME/store/`: one directory per file id holding
//! the file's metadata (`meta`), its bytes (`data`, sparse while incomplete
//! or after evictions), the log of verified pieces (`verified`, see
//! [`log`]), and `fetched` for a file fetched from others rather than
//! shared by this user: only those are a cache, whose pieces may be evicted
//! (a hole punched, a `Lost` record durable first).
//!
//! Durability: a piece's bytes are written, then its `Add` is appended to
//! the log, with no sync. Sync points ([`StoredFile::sync`], batched by the
//! engine) `fdatasync` the data and then record which adds they cover.
//! Loading a file hashes again every piece recorded after the last sync
//! point covering it (only an unclean stop leaves any), so bytes a power
//! loss took are fetched again, never served.
//!
//! `downloads` (see [`jobs`]) lists the `download-file` jobs to resume.

pub mod disk;
pub mod jobs;
pub mod log;
pub mod prehash;
mod rename;
mod space;

pub use space::Space;

use crate::store::log::PieceLog;
use fileshare_protocol::ids::{FileMeta, Layout, PieceHash};
use fileshare_protocol::{codec, Bitfield, FileId, PieceIndex};
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The log of verified pieces in an entry.
const LOG: &str = "verified";
/// The log of daemons before sync points: read once, then replaced.
const LEGACY_LOG: &str = "have";
/// Present in the entry of a file fetched from others (a cache entry).
const FETCHED: &str = "fetched";

/// Causes are in the messages, never also a `source`, so an error chain
/// (`{e:#}`) names each once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path} is damaged: {why}")]
    Damaged { path: String, why: String },
    #[error("{path} is damaged: {error}")]
    Decode {
        path: String,
        error: fileshare_protocol::ProtocolError,
    },
    #[error("cannot record the metadata in {path}: {error}")]
    Encode {
        path: String,
        error: fileshare_protocol::ProtocolError,
    },
    #[error("{path} changed since it was shared (size or modification time differs)")]
    SourceChanged { path: String },
}

impl StoreError {
    fn io(path: &Path, error: std::io::Error) -> Self {
        StoreError::Io {
            path: path.display().to_string(),
            error,
        }
    }

    /// Whether the disk is full, so callers can say so plainly.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::Io { error, .. }
            if matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }

    /// The errno a file-system call reports for it: `ENOSPC` for a full
    /// disk, `EIO` for anything else.
    pub fn errno(&self) -> i32 {
        if self.is_no_space() {
            libc::ENOSPC
        } else {
            libc::EIO
        }
    }
}

/// Where a stored file's bytes live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// In the store (`data`), written by `cp` or fetched from peers.
    Store,
    /// Shared in place by `fsd upload-file`: the user's own file, which must
    /// keep the size and modification time it had when it was hashed.
    InPlace {
        path: PathBuf,
        size: u64,
        mtime_ns: i128,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetaRecord {
    group: String,
    meta: FileMeta,
    source: Source,
}

/// One file of the store. Reads and writes are positional, so any number of
/// tasks may use it at once.
pub struct StoredFile {
    pub id: FileId,
    /// The group it was first shared or fetched in: where it is located and
    /// fetched from.
    pub group: String,
    /// Every group this user shares it in, `group` included: the same bytes
    /// under the same name are one file id, and members of any of these
    /// groups may fetch it from here. Persisted in the entry's `groups` file.
    groups: Mutex<std::collections::BTreeSet<String>>,
    pub meta: FileMeta,
    pub layout: Layout,
    pub source: Source,
    /// Fetched from others: a cache entry whose pieces may be evicted.
    fetched: bool,
    dir: PathBuf,
    data: File,
    log: Mutex<PieceLog>,
    /// Serialises sync points and compactions of the log.
    syncing: Mutex<()>,
    /// Held shared while verified bytes are read or written, exclusively
    /// while holes are punched: a reader that saw a piece verified under
    /// it reads that piece's bytes, never a hole.
    holes: RwLock<()>,
}

impl std::fmt::Debug for StoredFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredFile({}/{} {})",
            self.group, self.meta.name, self.id
        )
    }
}

impl StoredFile {
    /// Whether members of `group` may fetch it from here.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.lock().contains(group)
    }

    /// Every group this user shares it in.
    pub fn groups(&self) -> Vec<String> {
        self.groups.lock().iter().cloned().collect()
    }

    /// Shares it in one more group too.
    pub fn add_group(&self, group: &str) -> Result<(), StoreError> {
        let mut groups = self.groups.lock();
        if groups.insert(group.to_string()) {
            self.write_groups(&groups)?;
        }
        Ok(())
    }

    /// Stops sharing it in `group`; returns how many groups remain.
    pub fn remove_group(&self, group: &str) -> Result<usize, StoreError> {
        let mut groups = self.groups.lock();
        if groups.remove(group) {
            self.write_groups(&groups)?;
        }
        Ok(groups.len())
    }

    fn write_groups(&self, groups: &std::collections::BTreeSet<String>) -> Result<(), StoreError> {
        let mut text = String::new();
        for g in groups {
            text.push_str(g);
            text.push('\n');
        }
        let tmp = self.dir.join("groups.tmp");
        std::fs::write(&tmp, text).map_err(|e| StoreError::io(&tmp, e))?;
        std::fs::rename(&tmp, self.dir.join("groups")).map_err(|e| StoreError::io(&tmp, e))
    }

    /// Reads `len` bytes at `offset` (clipped to the file). The caller has
    /// checked that the pieces covering the range are verified.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let end = offset.saturating_add(len as u64).min(self.layout.size());
        let len = usize::try_from(end.saturating_sub(offset)).unwrap_or(0);
        self.check_source()?;
        disk::read_exact_at(&self.data, offset, len)
            .map_err(|e| StoreError::io(&self.data_path(), e))
    }

    /// Copies a verified piece to the same place in `to`, in the kernel
    /// where it can: no second hash, the log vouches for the bytes (pieces
    /// logged after the last sync point were hashed again at load). The
    /// outer error is the store's; the inner one the copy's, most likely
    /// `to`'s (a full disk).
    pub fn copy_piece_to(
        &self,
        piece: PieceIndex,
        to: &File,
    ) -> Result<std::io::Result<()>, StoreError> {
        let _held = self.read_guard();
        self.check_source()?;
        let (offset, len) = (
            self.layout.piece_offset(piece),
            self.layout.piece_size(piece),
        );
        Ok(disk::copy_range(&self.data, to, offset, len))
    }

    /// Reads one whole piece.
    pub fn read_piece(&self, piece: PieceIndex) -> Result<Vec<u8>, StoreError> {
        let len = usize::try_from(self.layout.piece_size(piece)).unwrap_or(0);
        self.read_at(self.layout.piece_offset(piece), len)
    }

    /// Writes a verified piece, then logs it as had (not yet synced). Call
    /// it under [`StoredFile::read_guard`].
    pub fn write_piece(&self, piece: PieceIndex, data: &[u8]) -> Result<(), StoreError> {
        self.data
            .write_all_at(data, self.layout.piece_offset(piece))
            .map_err(|e| StoreError::io(&self.data_path(), e))?;
        self.log
            .lock()
            .add(piece.get())
            .map_err(|e| StoreError::io(&self.dir.join(LOG), e))
    }

    /// Whether it was fetched from others (its pieces may be evicted), not
    /// shared by this user.
    pub fn is_fetched(&self) -> bool {
        self.fetched
    }

    /// Held while verified bytes are read or written.
    pub fn read_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.holes.read()
    }

    /// Held while holes are punched: no verified read or write runs.
    pub fn punch_guard(&self) -> RwLockWriteGuard<'_, ()> {
        self.holes.write()
    }

    /// Pieces logged since the last sync point, and since when.
    pub fn pending(&self) -> (usize, Option<Instant>) {
        self.log.lock().pending()
    }

    /// A sync point: the data is synced, then the log records which pieces
    /// that covers. Returns whether there was anything to sync.
    pub fn sync(&self) -> Result<bool, StoreError> {
        let _one = self.syncing.lock();
        let mark = {
            let log = self.log.lock();
            if log.pending().0 == 0 {
                return Ok(false);
            }
            log.mark()
        };
        if self.source == Source::Store {
            self.data
                .sync_data()
                .map_err(|e| StoreError::io(&self.data_path(), e))?;
        }
        let log_path = self.dir.join(LOG);
        let mut log = self.log.lock();
        log.synced(mark).map_err(|e| StoreError::io(&log_path, e))?;
        if log.wants_compaction() {
            log.compact().map_err(|e| StoreError::io(&log_path, e))?;
        }
        Ok(true)
    }

    /// Durably records that `pieces` are gone, before their holes are
    /// punched.
    pub fn record_lost(&self, pieces: &[u32]) -> Result<(), StoreError> {
        self.log
            .lock()
            .lost(pieces)
            .map_err(|e| StoreError::io(&self.dir.join(LOG), e))
    }

    /// Records `pieces` as held again: an eviction recorded them lost and
    /// then kept them.
    pub fn record_kept(&self, pieces: &[u32]) -> Result<(), StoreError> {
        self.log
            .lock()
            .add_all(pieces)
            .map_err(|e| StoreError::io(&self.dir.join(LOG), e))
    }

    /// Frees the blocks of `pieces` (recorded lost first). Call it under
    /// [`StoredFile::punch_guard`].
    pub fn punch(&self, pieces: &[u32]) -> Result<(), StoreError> {
        if self.source != Source::Store {
            return Ok(());
        }
        for &i in pieces {
            let Some(p) = self.layout.validate(i) else {
                continue;
            };
            disk::punch_hole(
                &self.data,
                self.layout.piece_offset(p),
                self.layout.piece_size(p),
            )
            .map_err(|e| StoreError::io(&self.data_path(), e))?;
        }
        Ok(())
    }

    /// Bytes of the data file on disk (holes excluded): none for a file
    /// shared in place.
    pub fn allocated(&self) -> u64 {
        match self.source {
            Source::Store => disk::allocated(&self.data).unwrap_or(0),
            Source::InPlace { .. } => 0,
        }
    }

    fn data_path(&self) -> PathBuf {
        match &self.source {
            Source::Store => self.dir.join("data"),
            Source::InPlace { path, .. } => path.clone(),
        }
    }

    /// Refuses to serve an in-place file whose size or mtime changed.
    pub fn check_source(&self) -> Result<(), StoreError> {
        if let Source::InPlace {
            path,
            size,
            mtime_ns,
        } = &self.source
        {
            let md = std::fs::metadata(path).map_err(|e| StoreError::io(path, e))?;
            if md.len() != *size || mtime_of(&md) != *mtime_ns {
                return Err(StoreError::SourceChanged {
                    path: path.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Bytes on disk that belong to the store (not the user's in-place file).
    pub fn disk_path(&self) -> &Path {
        &self.dir
    }
}

fn mtime_of(md: &std::fs::Metadata) -> i128 {
    i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec())
}

/// A file being written through the mount, before it is hashed and shared.
pub struct Staging {
    pub path: PathBuf,
    pub file: File,
}

pub struct Store {
    root: PathBuf,
}

/// How an entry's log starts when it is opened.
enum LogInit {
    /// Replay the log on disk, checking again what it is unsure of.
    Recover,
    /// A new log: `synced` held and durable, `unsynced` held, not yet synced.
    Fresh {
        synced: Bitfield,
        unsynced: Bitfield,
    },
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for d in [root.to_path_buf(), root.join("staging")] {
            std::fs::create_dir_all(&d).map_err(|e| StoreError::io(&d, e))?;
        }
        // Leftovers of writes that never finished are never shared.
        if let Ok(entries) = std::fs::read_dir(root.join("staging")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_of(&self, id: &FileId) -> PathBuf {
        self.root.join(id.to_hex())
    }

    /// Every stored file with the pieces its log says are verified.
    /// Damaged entries are skipped with a log line, never fatal.
    pub fn load_all(&self) -> Vec<(Arc<StoredFile>, Bitfield)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().and_then(FileId::from_hex) else {
                continue;
            };
            match self.load(id) {
                Ok(x) => out.push(x),
                Err(err) => tracing::warn!("skipping stored file {id}: {err:#}"),
            }
        }
        out
    }

    fn load(&self, id: FileId) -> Result<(Arc<StoredFile>, Bitfield), StoreError> {
        let dir = self.dir_of(&id);
        let meta_path = dir.join("meta");
        let bytes = std::fs::read(&meta_path).map_err(|e| StoreError::io(&meta_path, e))?;
        let rec: MetaRecord = codec::decode(&bytes).map_err(|error| StoreError::Decode {
            path: meta_path.display().to_string(),
            error,
        })?;
        if rec.meta.id() != id {
            return Err(StoreError::Damaged {
                path: meta_path.display().to_string(),
                why: "metadata does not match the directory's id".into(),
            });
        }
        self.open_entry(id, rec, LogInit::Recover)
    }

    fn open_entry(
        &self,
        id: FileId,
        rec: MetaRecord,
        init: LogInit,
    ) -> Result<(Arc<StoredFile>, Bitfield), StoreError> {
        let dir = self.dir_of(&id);
        let layout = rec.meta.layout().map_err(|why| StoreError::Damaged {
            path: dir.display().to_string(),
            why,
        })?;
        let data = match &rec.source {
            Source::Store => {
                let p = dir.join("data");
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&p)
                    .map_err(|e| StoreError::io(&p, e))?;
                f.set_len(layout.size())
                    .map_err(|e| StoreError::io(&p, e))?;
                f
            }
            Source::InPlace { path, .. } => {
                File::open(path).map_err(|e| StoreError::io(path, e))?
            }
        };
        // Without a `groups` file it is shared in its first group alone.
        // Names are checked before anything is stored, so a line is a group.
        let groups: std::collections::BTreeSet<String> =
            match std::fs::read_to_string(dir.join("groups")) {
                Ok(text) => text
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
                Err(_) => [rec.group.clone()].into(),
            };
        let log_path = dir.join(LOG);
        let (log, have) = match init {
            LogInit::Recover => recover_log(&dir, &rec, layout, &data)?,
            LogInit::Fresh { synced, unsynced } => {
                let log = PieceLog::create(&log_path, layout.num_pieces(), &synced, &unsynced)
                    .map_err(|e| StoreError::io(&log_path, e))?;
                let mut have = synced;
                for i in unsynced.ones() {
                    have.set(i);
                }
                (log, have)
            }
        };
        let fetched = dir.join(FETCHED).exists();
        let file = Arc::new(StoredFile {
            id,
            group: rec.group,
            groups: Mutex::new(groups),
            meta: rec.meta,
            layout,
            source: rec.source,
            fetched,
            dir,
            data,
            log: Mutex::new(log),
            syncing: Mutex::new(()),
            holes: RwLock::new(()),
        });
        Ok((file, have))
    }

    fn write_meta(&self, dir: &Path, rec: &MetaRecord) -> Result<(), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let bytes = codec::encode(rec).map_err(|error| StoreError::Encode {
            path: dir.display().to_string(),
            error,
        })?;
        let tmp = dir.join("meta.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| StoreError::io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join("meta")).map_err(|e| StoreError::io(dir, e))
    }

    /// An entry for a file to be fetched from peers (nothing verified yet).
    /// Returns the existing entry and its pieces if there is one.
    pub fn create(
        &self,
        group: &str,
        meta: &FileMeta,
    ) -> Result<(Arc<StoredFile>, Bitfield), StoreError> {
        let id = meta.id();
        if let Ok(existing) = self.load(id) {
            return Ok(existing);
        }
        let rec = MetaRecord {
            group: group.to_string(),
            meta: meta.clone(),
            source: Source::Store,
        };
        let dir = self.dir_of(&id);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let marker = dir.join(FETCHED);
        std::fs::write(&marker, b"").map_err(|e| StoreError::io(&marker, e))?;
        self.write_meta(&dir, &rec)?;
        let n = meta.hashes.len();
        let none = Bitfield::new(u32::try_from(n).unwrap_or(u32::MAX));
        let init = LogInit::Fresh {
            synced: none.clone(),
            unsynced: none,
        };
        self.open_entry(id, rec, init)
    }

    /// A new staging file for a write through the mount.
    pub fn staging(&self) -> Result<Staging, StoreError> {
        let mut rnd = [0u8; 8];
        let _ = getrandom::fill(&mut rnd);
        let path = self
            .root
            .join("staging")
            .join(fileshare_protocol::ids::hex(&rnd));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(Staging { path, file })
    }

    /// Hashes a file's bytes into metadata: `name` and the SHA-256 of every
    /// piece of `file`. A file of a few MiB or more is hashed on every core
    /// (up to four), each thread a contiguous run of pieces, so sharing a
    /// large file waits for the disk more than for one core.
    pub fn hash_file(file: &File, name: &str) -> Result<FileMeta, std::io::Error> {
        Self::hash_file_after(file, name, Vec::new())
    }

    /// [`Store::hash_file`] where the hashes of the first pieces are known
    /// already (hashed while the file was written, see [`prehash`]).
    pub fn hash_file_after(
        file: &File,
        name: &str,
        mut done: Vec<PieceHash>,
    ) -> Result<FileMeta, std::io::Error> {
        use fileshare_protocol::PIECE_LEN;
        let size = file.metadata()?.len();
        let layout = Layout::new(size, PIECE_LEN).map_err(std::io::Error::other)?;
        let n = layout.num_pieces();
        done.truncate(n as usize);
        let first = u32::try_from(done.len()).unwrap_or(n);
        let hash_run = |from: u32, to: u32| -> std::io::Result<Vec<PieceHash>> {
            let mut buf = vec![0u8; usize::try_from(PIECE_LEN).unwrap_or(512 * 1024)];
            (from..to)
                .filter_map(|i| layout.validate(i))
                .map(|p| {
                    let len = usize::try_from(layout.piece_size(p)).unwrap_or(0);
                    file.read_exact_at(&mut buf[..len], layout.piece_offset(p))?;
                    Ok(PieceHash::of(&buf[..len]))
                })
                .collect()
        };
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get().min(4));
        let left = n - first;
        let threads = if left >= 8 {
            u32::try_from(cores).unwrap_or(1)
        } else {
            1
        };
        let hashes = if threads <= 1 {
            hash_run(first, n)?
        } else {
            let bounds: Vec<(u32, u32)> = (0..threads)
                .map(|t| {
                    let at = |k: u32| {
                        first
                            + u32::try_from(u64::from(left) * u64::from(k) / u64::from(threads))
                                .unwrap_or(left)
                    };
                    (at(t), at(t + 1))
                })
                .collect();
            let runs = std::thread::scope(|s| {
                let handles: Vec<_> = (bounds.iter())
                    .map(|&(a, b)| s.spawn(move || hash_run(a, b)))
                    .collect();
                (handles.into_iter())
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(std::io::Error::other("hashing thread panicked"))
                        })
                    })
                    .collect::<Vec<_>>()
            });
            let mut all = Vec::with_capacity(left as usize);
            for run in runs {
                all.extend(run?);
            }
            all
        };
        done.extend(hashes);
        Ok(FileMeta {
            name: name.to_string(),
            size,
            piece_len: PIECE_LEN,
            hashes: done,
        })
    }

    /// Moves a finished staging file into the store as a complete file.
    /// Its bytes are synced by the next sync point; until then its pieces
    /// are checked again after an unclean stop, like fetched ones.
    pub fn import_staging(
        &self,
        group: &str,
        meta: &FileMeta,
        staging: &Path,
    ) -> Result<Arc<StoredFile>, StoreError> {
        let id = meta.id();
        let dir = self.dir_of(&id);
        let existed = dir.exists();
        let imported = std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(&dir, e))
            .and_then(|()| {
                std::fs::rename(staging, dir.join("data")).map_err(|e| StoreError::io(staging, e))
            })
            .and_then(|()| {
                let rec = MetaRecord {
                    group: group.to_string(),
                    meta: meta.clone(),
                    source: Source::Store,
                };
                self.finish_complete(dir.clone(), rec, false)
            });
        if imported.is_err() && !existed {
            let _ = std::fs::remove_dir_all(&dir);
        }
        imported
    }

    /// Records a user's file shared in place; its bytes stay where they are.
    pub fn import_in_place(
        &self,
        group: &str,
        meta: &FileMeta,
        path: &Path,
        md: &std::fs::Metadata,
    ) -> Result<Arc<StoredFile>, StoreError> {
        let dir = self.dir_of(&meta.id());
        self.finish_complete(
            dir,
            MetaRecord {
                group: group.to_string(),
                meta: meta.clone(),
                source: Source::InPlace {
                    path: path.to_path_buf(),
                    size: md.len(),
                    mtime_ns: mtime_of(md),
                },
            },
            true,
        )
    }

    /// Records a complete file this user shares; `durable` if its bytes
    /// need no sync point (the user's own file, shared in place).
    fn finish_complete(
        &self,
        dir: PathBuf,
        rec: MetaRecord,
        durable: bool,
    ) -> Result<Arc<StoredFile>, StoreError> {
        let id = rec.meta.id();
        self.write_meta(&dir, &rec)?;
        // A new share starts in its own group; the engine adds the groups it
        // was already shared in. Shared by this user, it is no cache entry.
        for name in ["groups", FETCHED, LEGACY_LOG] {
            match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::io(&dir.join(name), e))
                }
                _ => {}
            }
        }
        let n = u32::try_from(rec.meta.hashes.len()).unwrap_or(u32::MAX);
        let (all, none) = (Bitfield::full(n), Bitfield::new(n));
        let init = if durable {
            LogInit::Fresh {
                synced: all,
                unsynced: none,
            }
        } else {
            LogInit::Fresh {
                synced: none,
                unsynced: all,
            }
        };
        Ok(self.open_entry(id, rec, init)?.0)
    }

    /// Deletes a file's entry and, for files in the store, its bytes.
    pub fn remove(&self, id: &FileId) -> Result<(), StoreError> {
        let dir = self.dir_of(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&dir, e)),
        }
    }

    /// The metadata of `file` as mtime-checked when shared in place.
    pub fn metadata_of(path: &Path) -> Result<std::fs::Metadata, StoreError> {
        std::fs::metadata(path).map_err(|e| StoreError::io(path, e))
    }
}

/// Opens an entry's log, replaying it: pieces recorded after the last sync
/// point covering them (an unclean stop) are hashed again, those that no
/// longer match are dropped, the bytes are synced and the log is rewritten
/// as one sync point. An older daemon's log is read the same way, all of it
/// unsure.
fn recover_log(
    dir: &Path,
    rec: &MetaRecord,
    layout: Layout,
    data: &File,
) -> Result<(PieceLog, Bitfield), StoreError> {
    let n = layout.num_pieces();
    let path = dir.join(LOG);
    let read = |p: &Path| match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(p, e)),
    };
    let legacy_path = dir.join(LEGACY_LOG);
    let (state, legacy) = match read(&path)? {
        Some(bytes) => (log::replay(&bytes, n), false),
        None => match read(&legacy_path)? {
            Some(bytes) => (log::replay_legacy(&bytes, n), true),
            None => (log::replay(&[], n), false),
        },
    };
    if state.tidy && state.unsure.count() == 0 {
        let log = PieceLog::open(&path, n, &state).map_err(|e| StoreError::io(&path, e))?;
        return Ok((log, state.have));
    }
    let mut have = state.have.clone();
    let unsure: Vec<u32> = state.unsure.ones().collect();
    if !unsure.is_empty() {
        let mut buf = Vec::new();
        let mut bad = Vec::new();
        for &i in &unsure {
            let Some(p) = layout.validate(i) else {
                continue;
            };
            buf.resize(usize::try_from(layout.piece_size(p)).unwrap_or(0), 0);
            let ok = data.read_exact_at(&mut buf, layout.piece_offset(p)).is_ok()
                && rec.meta.hashes.get(p.usize()) == Some(&PieceHash::of(&buf));
            if !ok {
                have.clear(i);
                bad.push(i);
            }
        }
        if bad.is_empty() {
            tracing::info!(file = %rec.meta.name, checked = unsure.len(), "pieces recorded since the last sync point checked again: all intact");
        } else {
            tracing::warn!(file = %rec.meta.name, checked = unsure.len(), ?bad, "pieces recorded since the last sync point no longer match their hash; fetching them again");
        }
        if rec.source == Source::Store {
            data.sync_data()
                .map_err(|e| StoreError::io(&dir.join("data"), e))?;
        }
    }
    let log = PieceLog::create(&path, n, &have, &Bitfield::new(n))
        .map_err(|e| StoreError::io(&path, e))?;
    if legacy {
        let _ = std::fs::remove_file(&legacy_path);
    }
    Ok((log, have))
}

#[cfg(test)]
mod tests;
