//! The piece store under `HOME/store/`: one directory per file id holding
//! the file's metadata (`meta`), its bytes (`data`, sparse while incomplete)
//! and an append-only log of verified pieces (`have`).
//!
//! A piece's bytes are written before its index is appended to the log, so
//! after a crash of the daemon every logged piece is on disk; pieces
//! verified but not yet logged are simply fetched again.

mod rename;
mod space;

pub use space::Space;

use fileshare_protocol::ids::{FileMeta, Layout};
use fileshare_protocol::{codec, Bitfield, FileId, PieceIndex};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        matches!(self, StoreError::Io { error, .. } if error.raw_os_error() == Some(libc::ENOSPC))
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
    dir: PathBuf,
    data: File,
    have_log: Mutex<File>,
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
        let mut buf = vec![0u8; len];
        self.check_source()?;
        self.data
            .read_exact_at(&mut buf, offset)
            .map_err(|e| StoreError::io(&self.data_path(), e))?;
        Ok(buf)
    }

    /// Reads one whole piece.
    pub fn read_piece(&self, piece: PieceIndex) -> Result<Vec<u8>, StoreError> {
        let len = usize::try_from(self.layout.piece_size(piece)).unwrap_or(0);
        self.read_at(self.layout.piece_offset(piece), len)
    }

    /// Writes a verified piece, then logs it as had.
    pub fn write_piece(&self, piece: PieceIndex, data: &[u8]) -> Result<(), StoreError> {
        self.data
            .write_all_at(data, self.layout.piece_offset(piece))
            .map_err(|e| StoreError::io(&self.data_path(), e))?;
        let mut log = self.have_log.lock();
        log.write_all(&piece.get().to_le_bytes())
            .map_err(|e| StoreError::io(&self.dir.join("have"), e))
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
        let file = self.open_entry(id, rec)?;
        let have = self.read_have(&file)?;
        Ok((file, have))
    }

    fn read_have(&self, file: &StoredFile) -> Result<Bitfield, StoreError> {
        let path = file.dir.join("have");
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| StoreError::io(&path, e))?;
        let mut have = Bitfield::new(file.layout.num_pieces());
        for chunk in bytes.chunks_exact(4) {
            have.set(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
        }
        Ok(have)
    }

    fn open_entry(&self, id: FileId, rec: MetaRecord) -> Result<Arc<StoredFile>, StoreError> {
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
        let log_path = dir.join("have");
        let have_log = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(|e| StoreError::io(&log_path, e))?;
        Ok(Arc::new(StoredFile {
            id,
            group: rec.group,
            groups: Mutex::new(groups),
            meta: rec.meta,
            layout,
            source: rec.source,
            dir,
            data,
            have_log: Mutex::new(have_log),
        }))
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
        self.write_meta(&dir, &rec)?;
        let file = self.open_entry(id, rec)?;
        let have = Bitfield::new(file.layout.num_pieces());
        Ok((file, have))
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
    /// piece of `file`.
    pub fn hash_file(file: &File, name: &str) -> Result<FileMeta, std::io::Error> {
        use fileshare_protocol::ids::PieceHash;
        use fileshare_protocol::PIECE_LEN;
        let size = file.metadata()?.len();
        let layout = Layout::new(size, PIECE_LEN).map_err(std::io::Error::other)?;
        let mut hashes = Vec::with_capacity(layout.num_pieces() as usize);
        let mut buf = vec![0u8; usize::try_from(PIECE_LEN).unwrap_or(512 * 1024)];
        for p in layout.pieces() {
            let len = usize::try_from(layout.piece_size(p)).unwrap_or(0);
            file.read_exact_at(&mut buf[..len], layout.piece_offset(p))?;
            hashes.push(PieceHash::of(&buf[..len]));
        }
        Ok(FileMeta {
            name: name.to_string(),
            size,
            piece_len: PIECE_LEN,
            hashes,
        })
    }

    /// Moves a finished staging file into the store as a complete file.
    pub fn import_staging(
        &self,
        group: &str,
        meta: &FileMeta,
        staging: &Path,
    ) -> Result<Arc<StoredFile>, StoreError> {
        let id = meta.id();
        let dir = self.dir_of(&id);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        std::fs::rename(staging, dir.join("data")).map_err(|e| StoreError::io(staging, e))?;
        self.finish_complete(
            dir,
            MetaRecord {
                group: group.to_string(),
                meta: meta.clone(),
                source: Source::Store,
            },
        )
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
        )
    }

    fn finish_complete(
        &self,
        dir: PathBuf,
        rec: MetaRecord,
    ) -> Result<Arc<StoredFile>, StoreError> {
        let id = rec.meta.id();
        self.write_meta(&dir, &rec)?;
        // A new share starts in its own group; the engine adds the groups it
        // was already shared in.
        match std::fs::remove_file(dir.join("groups")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io(&dir.join("groups"), e))
            }
            _ => {}
        }
        let log_path = dir.join("have");
        let mut log = Vec::new();
        for i in 0..rec.meta.hashes.len() {
            log.extend_from_slice(&u32::try_from(i).unwrap_or(u32::MAX).to_le_bytes());
        }
        std::fs::write(&log_path, log).map_err(|e| StoreError::io(&log_path, e))?;
        self.open_entry(id, rec)
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

#[cfg(test)]
mod tests {
    use super::*;
    use fileshare_protocol::PIECE_LEN;

    #[test]
    fn staged_file_round_trips_and_fetched_pieces_survive_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let st = store.staging().unwrap();
        let bytes: Vec<u8> = (0..PIECE_LEN * 2 + 7).map(|i| (i % 251) as u8).collect();
        st.file.write_all_at(&bytes, 0).unwrap();
        let meta = Store::hash_file(&st.file, "a.bin").unwrap();
        assert_eq!(meta.hashes.len(), 3);
        let f = store.import_staging("g", &meta, &st.path).unwrap();
        assert_eq!(
            f.read_at(PIECE_LEN - 2, 4).unwrap(),
            bytes[usize::try_from(PIECE_LEN - 2).unwrap()..][..4]
        );

        let other = tempfile::tempdir().unwrap();
        let store2 = Store::open(other.path()).unwrap();
        let (g, have) = store2.create("g", &meta).unwrap();
        assert_eq!(have.count(), 0);
        let p1 = g.layout.validate(1).unwrap();
        g.write_piece(p1, &f.read_piece(p1).unwrap()).unwrap();
        drop(g);
        let all = store2.load_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.ones().collect::<Vec<_>>(), vec![1]);
        assert_eq!(all[0].0.read_piece(p1).unwrap(), f.read_piece(p1).unwrap());
        store2.remove(&meta.id()).unwrap();
        assert!(store2.load_all().is_empty());
    }
}
