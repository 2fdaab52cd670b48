//! The temporary twin of a `download-file` destination:
//! `.NAME.XXXXXXXX.part` beside it (`NAME` the destination's file name, `X`
//! eight lowercase hex digits), given its full size before anything is
//! fetched, filled from the store as pieces are verified (copied in the
//! kernel, not hashed again: the store's log vouches for them) and
//! written back to the disk as they are copied, synced once at the end
//! and renamed over the destination.
//! Any failure, or the daemon stopping, removes it.
//!
//! A daemon killed mid-download cannot remove it, so every twin holds an
//! `flock` while its download lives: the next download into a directory,
//! and the next start for the directories of the jobs it resumes, remove
//! the twins there that no one holds ([`remove_stale`]). Only names of this
//! exact pattern are touched.

use crate::engine::download_jobs::DownloadError;
use crate::store::StoredFile;
use crate::units::human_bytes;
use fileshare_protocol::ids::hex;
use fileshare_protocol::Bitfield;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Whether `name` is one of our temporary twins: `.`, a non-empty name,
/// `.`, eight lowercase hex digits, `.part`.
pub(super) fn is_partial_name(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b".") else {
        return false;
    };
    let Some(stem) = rest.strip_suffix(b".part") else {
        return false;
    };
    let Some((base, tag)) = stem.len().checked_sub(9).map(|i| stem.split_at(i)) else {
        return false;
    };
    !base.is_empty()
        && tag[0] == b'.'
        && tag[1..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// `flock`s `file` exclusively; with `try_only`, fails at once with
/// `EWOULDBLOCK` if someone holds it.
fn lock(file: &File, try_only: bool) -> std::io::Result<()> {
    let op = if try_only {
        libc::LOCK_EX | libc::LOCK_NB
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes the temporary twins in `dir` that no live download holds: the
/// leftovers of a daemon that was killed. Returns how many went.
pub(super) fn remove_stale(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        if !is_partial_name(e.file_name().as_bytes()) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = e.path();
        let Ok(f) = File::open(&path) else {
            continue;
        };
        if lock(&f, true).is_ok() && std::fs::remove_file(&path).is_ok() {
            tracing::info!(file = %path.display(), "removed the leftover of an interrupted download");
            removed += 1;
        }
    }
    removed
}

pub(super) fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The destination's temporary twin; removed on drop unless committed.
/// It holds an `flock` on its file for as long as it lives, so a
/// `.NAME.XXXXXXXX.part` no process holds is a leftover.
pub(super) struct Partial {
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
    /// Pieces copied in so far.
    copied: Bitfield,
    committed: bool,
}

impl Partial {
    /// Creates the temporary file beside `dest` with room for `size` bytes,
    /// after removing the leftovers of earlier downloads in its directory.
    pub(super) fn create(dest: &Path, name: &str, size: u64) -> Result<Partial, DownloadError> {
        let dir = dest.parent().unwrap_or(Path::new("/"));
        remove_stale(dir);
        let mut rnd = [0u8; 4];
        let _ = getrandom::fill(&mut rnd);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(dest.file_name().unwrap_or(name.as_ref()));
        tmp_name.push(format!(".{}.part", hex(&rnd)));
        let tmp = dir.join(tmp_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|f| {
                // Under the daemon's owner-only umask: give the download the
                // mode the user's own umask would.
                let mode = std::fs::Permissions::from_mode(crate::umask::user_file_mode());
                f.set_permissions(mode)?;
                lock(&f, false)?;
                Ok(f)
            })
            .map_err(|error| DownloadError::Write {
                path: dest.display().to_string(),
                error,
            })?;
        let partial = Partial {
            tmp,
            dest: dest.to_path_buf(),
            file,
            copied: Bitfield::new(0),
            committed: false,
        };
        if size > 0 {
            let len = libc::off_t::try_from(size).unwrap_or(libc::off_t::MAX);
            // SAFETY: the descriptor is open for writing and owned by `file`.
            let r = unsafe { libc::fallocate(partial.file.as_raw_fd(), 0, 0, len) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if is_no_space(&e) || e.raw_os_error() == Some(libc::EFBIG) {
                    return Err(DownloadError::NoSpace {
                        name: name.to_string(),
                        size: human_bytes(size),
                        dir: dir.display().to_string(),
                    });
                }
                // Filesystems without fallocate: space is checked as we write.
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                ) {
                    return Err(partial.write_error(e));
                }
            }
        }
        Ok(partial)
    }

    fn write_error(&self, e: std::io::Error) -> DownloadError {
        if is_no_space(&e) {
            DownloadError::NoSpace {
                name: self
                    .dest
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size: self
                    .file
                    .metadata()
                    .map(|m| human_bytes(m.len()))
                    .unwrap_or_default(),
                dir: self
                    .dest
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            }
        } else {
            DownloadError::Write {
                path: self.dest.display().to_string(),
                error: e,
            }
        }
    }

    /// Copies the pieces of `src` that `have` says are verified and that
    /// are not copied yet. Returns how many it copied.
    pub(super) fn copy_verified(
        &mut self,
        src: &StoredFile,
        have: &Bitfield,
    ) -> Result<u32, DownloadError> {
        let n = src.layout.num_pieces();
        if self.copied.len() != n {
            self.copied = Bitfield::new(n);
        }
        let mut copied = 0;
        for p in src.layout.pieces() {
            if !have.get(p.get()) || self.copied.get(p.get()) {
                continue;
            }
            src.copy_piece_to(p, &self.file)
                .map_err(|error| DownloadError::Store {
                    piece: p,
                    name: src.meta.name.clone(),
                    error,
                })?
                .map_err(|e| self.write_error(e))?;
            // Written back as it goes (a filesystem that cannot say so is
            // synced at the end all the same).
            let _ = crate::store::disk::start_writeback(
                &self.file,
                src.layout.piece_offset(p),
                src.layout.piece_size(p),
            );
            self.copied.set(p.get());
            copied += 1;
        }
        Ok(copied)
    }

    /// Copies what is left of `src` (every piece verified by now), then
    /// syncs once and renames over the destination.
    pub(super) fn commit(mut self, src: &StoredFile) -> Result<(), DownloadError> {
        self.copy_verified(src, &Bitfield::full(src.layout.num_pieces()))?;
        self.file
            .set_len(src.layout.size())
            .and_then(|()| self.file.sync_all())
            .map_err(|e| self.write_error(e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| self.write_error(e))?;
        self.committed = true;
        if let Some(dir) = self.dest.parent() {
            // The rename is durable once the directory is.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use fileshare_protocol::PIECE_LEN;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    fn stored(dir: &Path, bytes: &[u8]) -> Arc<StoredFile> {
        let store = Store::open(dir).unwrap();
        let st = store.staging().unwrap();
        st.file.write_all_at(bytes, 0).unwrap();
        let meta = Store::hash_file(&st.file, "a.bin").unwrap();
        store.import_staging("g", &meta, &st.path).unwrap()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn destination_appears_whole_and_temp_is_gone() {
        let store_dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..PIECE_LEN * 2 + 3).map(|i| (i % 253) as u8).collect();
        let src = stored(store_dir.path(), &bytes);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("a.bin");
        let p = Partial::create(&dest, "a.bin", src.layout.size()).unwrap();
        assert!(!dest.exists());
        p.commit(&src).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        assert_eq!(leftovers(out.path()), vec!["a.bin".to_string()]);
    }

    #[test]
    fn dropped_partial_leaves_nothing() {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("x");
        let p = Partial::create(&dest, "x", 1000).unwrap();
        drop(p);
        assert!(leftovers(out.path()).is_empty());
    }

    #[test]
    fn missing_directory_is_one_clear_line() {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("nope/x");
        let err = Partial::create(&dest, "x", 10).err().unwrap().to_string();
        assert!(err.starts_with("cannot write "), "{err}");
        assert!(err.ends_with("No such file or directory"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn only_unheld_twins_of_our_pattern_are_removed() {
        for (name, ours) in [
            (".a.bin.0123abcd.part", true),
            (".x.deadbeef.part", true),
            (".a.b.c.00000000.part", true),
            ("..00000000.part", false),
            (".a.bin.0123ABCD.part", false),
            (".a.bin.0123abc.part", false),
            ("a.bin.0123abcd.part", false),
            (".a.bin.0123abcd.partial", false),
            (".a.bin.part", false),
        ] {
            assert_eq!(is_partial_name(name.as_bytes()), ours, "{name}");
        }
        let out = tempfile::tempdir().unwrap();
        for name in [".old.bin.0123abcd.part", ".notours.part", "keep.bin"] {
            std::fs::write(out.path().join(name), b"x").unwrap();
        }
        // A live download's twin is held: it stays.
        let live = Partial::create(&out.path().join("new.bin"), "new.bin", 10).unwrap();
        let live_name = live.tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(remove_stale(out.path()), 0, "create removed the stale one");
        let mut want = vec![live_name, ".notours.part".into(), "keep.bin".into()];
        want.sort();
        assert_eq!(leftovers(out.path()), want);
        drop(live);
        assert_eq!(leftovers(out.path()), vec![".notours.part", "keep.bin"]);
    }
}
