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
mod mapped;
pub mod prehash;
mod rename;
mod space;
mod stored_file;

pub use space::Space;
use stored_file::{mtime_of, MetaRecord};
pub use stored_file::{Source, StoredFile};

use crate::store::log::PieceLog;
use fileshare_protocol::ids::{FileMeta, Layout, PieceHash};
use fileshare_protocol::{codec, Bitfield, FileId};
use parking_lot::{Mutex, RwLock};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
