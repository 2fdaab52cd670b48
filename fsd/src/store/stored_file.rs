//! One file of the store: its bytes, its groups, the log of its verified
//! pieces and the guards that keep readers from seeing punched holes.

use super::{disk, StoreError, LOG};
use crate::store::log::PieceLog;
use fileshare_protocol::ids::{FileMeta, Layout};
use fileshare_protocol::{FileId, PieceIndex};
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
pub(super) struct MetaRecord {
    pub(super) group: String,
    pub(super) meta: FileMeta,
    pub(super) source: Source,
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
    pub(super) groups: Mutex<std::collections::BTreeSet<String>>,
    pub meta: FileMeta,
    pub layout: Layout,
    pub source: Source,
    /// Fetched from others: a cache entry whose pieces may be evicted.
    pub(super) fetched: bool,
    pub(super) dir: PathBuf,
    pub(super) data: File,
    pub(super) log: Mutex<PieceLog>,
    /// Serialises sync points and compactions of the log.
    pub(super) syncing: Mutex<()>,
    /// Held shared while verified bytes are read or written, exclusively
    /// while holes are punched: a reader that saw a piece verified under
    /// it reads that piece's bytes, never a hole.
    pub(super) holes: RwLock<()>,
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

    /// Calls `f` with `len` bytes at `offset` (clipped to the file), for a
    /// FUSE reply: the store's own data file is mapped, not copied (see
    /// [`super::mapped`]); a file shared in place, or a range the mapping
    /// refuses, is read. The caller holds [`StoredFile::read_guard`] and has
    /// checked that the pieces covering the range are verified.
    pub fn with_range<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, StoreError> {
        let end = offset.saturating_add(len as u64).min(self.layout.size());
        let len = usize::try_from(end.saturating_sub(offset)).unwrap_or(0);
        if self.source == Source::Store {
            if let Some(mapped) = super::mapped::Mapped::new(&self.data, offset, len) {
                return Ok(f(mapped.bytes()));
            }
        }
        Ok(f(&self.read_at(offset, len)?))
    }

    /// The open data file (the user's own file for one shared in place):
    /// what the kernel reads directly once every piece is verified.
    pub fn data_file(&self) -> &File {
        &self.data
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
    pub fn record_lost(&self, pieces: &[PieceIndex]) -> Result<(), StoreError> {
        self.log
            .lock()
            .lost(&numbers(pieces))
            .map_err(|e| StoreError::io(&self.dir.join(LOG), e))
    }

    /// Records `pieces` as held again: an eviction recorded them lost and
    /// then kept them.
    pub fn record_kept(&self, pieces: &[PieceIndex]) -> Result<(), StoreError> {
        self.log
            .lock()
            .add_all(&numbers(pieces))
            .map_err(|e| StoreError::io(&self.dir.join(LOG), e))
    }

    /// Frees the blocks of `pieces` (recorded lost first). Call it under
    /// [`StoredFile::punch_guard`].
    pub fn punch(&self, pieces: &[PieceIndex]) -> Result<(), StoreError> {
        if self.source != Source::Store {
            return Ok(());
        }
        for &p in pieces {
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

pub(super) fn mtime_of(md: &std::fs::Metadata) -> i128 {
    i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec())
}

/// Piece numbers as the log records them.
fn numbers(pieces: &[PieceIndex]) -> Vec<u32> {
    pieces.iter().map(|p| p.get()).collect()
}
