//! Files written through the mount. `create` stages a file in the store;
//! writes go to the staging file; when the last handle writing it closes,
//! it is hashed, moved into the store and shared, so nothing is shared half
//! written.
//!
//! `close` waits for `flush`, so the share happens in the flush of the last
//! writing handle: once `cp` returns, other members see the file. A flush
//! is the close of any one descriptor, though, and the writer may hold
//! others of the same open file: a shell's `>` opens the file, moves the
//! descriptor onto stdout and closes the first one before anything is
//! written. So a flush shares only when it is the creating process's (not
//! a forked child's), something was written, and that process holds no
//! other descriptor of the file (read from `/proc/PID/fd`; when that
//! cannot be read, the written bytes are shared). Anything else waits for
//! the release of the last handle (asynchronous to `close`), which shares
//! whatever is there, an empty `touch`ed file too. A file
//! under a temporary-looking name ([`super::names::is_temporary`]) is not
//! shared at close; it stays a local, unshared file until it is renamed
//! (`fuse/rename.rs`) or has stayed put for
//! [`super::names::TEMPORARY_GRACE`].

use super::names::{is_temporary, valid_name, TEMPORARY_GRACE};
use super::{errno, spawn, Handle, MountedFs, TTL};
use crate::fuse::inodes::{Node, ROOT};
use crate::store::prehash::Prehash;
use crate::store::Staging;
use fileshare_protocol::messages::tracker::FileEntry;
use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, ReplyCreate, ReplyEmpty, ReplyWrite,
};
use parking_lot::Mutex;
use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// A file being written, from `create` until it is shared or removed;
/// every handle open on it shares this.
pub(super) struct Staged {
    pub ino: u64,
    pub path: PathBuf,
    pub state: Mutex<StagedState>,
}

pub(super) struct StagedState {
    pub group: String,
    pub name: String,
    /// The staging file; `None` once it is being shared.
    pub file: Option<File>,
    /// Handles open for writing.
    pub writers: usize,
    /// Something was written or truncated: a close may share it.
    pub written: bool,
    /// It was renamed, maybe onto a file of this user's: share it in that
    /// file's place.
    pub replace: bool,
    /// Removed (`rm`, or replaced by a rename): never shared.
    pub removed: bool,
    /// Bumped by every rename, open and close, so a delayed share can tell
    /// that the file stayed put.
    pub generation: u64,
    /// The outcome of sharing, once it was tried.
    pub outcome: Option<Result<(), Errno>>,
    /// The errno of a write that failed: the staging file is gone then,
    /// every later write and the close fail alike, and nothing is shared.
    pub failed: Option<Errno>,
    /// What `chmod` and `utimens` set, shown until it is shared.
    pub perm: u16,
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
    /// Whole pieces hashed beside in-order writes, so that sharing at
    /// close hashes only the rest.
    pub prehash: Prehash,
}

impl MountedFs {
    pub(super) fn staged(&self, ino: u64) -> Option<Arc<Staged>> {
        self.staged.lock().get(&ino).cloned()
    }

    pub(super) fn create(
        self: &Arc<Self>,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        pid: u32,
        reply: ReplyCreate,
    ) {
        if parent.0 == ROOT {
            // The root holds groups only.
            return reply.error(Errno::EPERM);
        }
        let group = match self.group_of(parent) {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let name = match valid_name(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        if self.nodes.lock().find_staging(&group, &name).is_some() {
            return reply.error(Errno::EEXIST);
        }
        let staging = match self.engine.staging() {
            Ok(s) => s,
            Err(e) => return reply.error(errno(&e)),
        };
        let Staging { path, file } = staging;
        let reader = match file.try_clone() {
            Ok(r) => r,
            Err(e) => return reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
        };
        let ino = self.nodes.lock().add_staging(&group, &name, path.clone());
        let staged = Arc::new(Staged {
            ino,
            path: path.clone(),
            state: Mutex::new(StagedState {
                group: group.clone(),
                name: name.clone(),
                file: Some(file),
                writers: 1,
                written: false,
                replace: false,
                removed: false,
                generation: 0,
                outcome: None,
                failed: None,
                perm: u16::try_from(mode & !umask & 0o7777).unwrap_or(0o644),
                mtime: None,
                atime: None,
                prehash: Prehash::new(),
            }),
        });
        self.staged.lock().insert(ino, staged.clone());
        let node = Node::Staging { group, name, path };
        let fh = self.new_handle(Handle::Write {
            staged,
            reader,
            opener: process_of(pid),
        });
        reply.created(
            &TTL,
            &self.attr(ino, &node),
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }

    /// Opens a file being written (or written under a temporary name): for
    /// reading, or for writing while it is not being shared.
    pub(super) fn open_staged(
        &self,
        staged: Arc<Staged>,
        flags: i32,
        pid: u32,
    ) -> Result<u64, Errno> {
        let io = |e: std::io::Error| Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO));
        if flags & (libc::O_WRONLY | libc::O_RDWR) == 0 {
            let file = File::open(&staged.path).map_err(io)?;
            return Ok(self.new_handle(Handle::ReadStaged { file }));
        }
        let reader = {
            let mut st = staged.state.lock();
            if let Some(e) = st.failed {
                return Err(e);
            }
            let Some(file) = st.file.as_ref() else {
                // Being shared: shared files are immutable.
                return Err(Errno::EPERM);
            };
            if flags & libc::O_TRUNC != 0 {
                file.set_len(0).map_err(io)?;
                st.prehash.resized();
            }
            let reader = file.try_clone().map_err(io)?;
            st.written |= flags & libc::O_TRUNC != 0;
            st.writers += 1;
            st.generation += 1;
            reader
        };
        Ok(self.new_handle(Handle::Write {
            staged,
            reader,
            opener: process_of(pid),
        }))
    }

    pub(super) fn write(&self, fh: FileHandle, offset: u64, data: &[u8], reply: ReplyWrite) {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Write { staged, .. } = &*handle else {
            return reply.error(Errno::EBADF);
        };
        let mut st = staged.state.lock();
        if let Some(e) = st.failed {
            return reply.error(e);
        }
        let Some(file) = st.file.as_ref() else {
            // Already shared: shared files are immutable.
            return reply.error(Errno::EPERM);
        };
        match self.engine.write_staging(file, offset, data) {
            Ok(()) => {
                st.prehash.wrote(file, offset, data.len() as u64);
                st.written = true;
                reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX));
            }
            Err(errno) => {
                // Its blocks go now, though handles stay open until close.
                let _ = file.set_len(0);
                let _ = std::fs::remove_file(&staged.path);
                let e = Errno::from_i32(errno);
                tracing::warn!(
                    group = %st.group,
                    file = %st.name,
                    "a write failed ({}): the file is not shared",
                    std::io::Error::from_raw_os_error(errno)
                );
                st.failed = Some(e);
                reply.error(e)
            }
        }
    }

    pub(super) fn flush(self: &Arc<Self>, fh: FileHandle, pid: u32, reply: ReplyEmpty) {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Write { staged, opener, .. } = &*handle else {
            return reply.ok();
        };
        let process = process_of(pid);
        if process != *opener {
            // A child's copy of the descriptor closing (at its exec or
            // exit) while the opener writes on: not the end of the file.
            return reply.ok();
        }
        let path = {
            let st = staged.state.lock();
            // Another handle still writes, the name is temporary, or
            // nothing was written yet (a shell moving the descriptor onto
            // stdout): the share waits. A failed write is reported here.
            let unwritten = !st.written && st.failed.is_none();
            if st.writers > 1 || st.removed || is_temporary(&st.name) || unwritten {
                return reply.ok();
            }
            self.mountpoint.join(&st.group).join(&st.name)
        };
        if holds_another(process, staged.ino, &path) {
            // One of several descriptors of the file closing: the last
            // one's close shares it.
            return reply.ok();
        }
        let staged = staged.clone();
        spawn(
            self,
            "fuse-flush",
            move |fs| async move { fs.share_staged(&staged, false).await },
            move |r: Result<(), Errno>| super::reply_empty(reply, r),
        );
    }

    pub(super) fn release(self: &Arc<Self>, fh: FileHandle) {
        let Some(handle) = self.handles.lock().remove(&fh.0) else {
            return;
        };
        let Handle::Write { staged, .. } = &*handle else {
            return;
        };
        let (last, temporary) = {
            let mut st = staged.state.lock();
            st.writers = st.writers.saturating_sub(1);
            st.generation += 1;
            if st.removed && st.writers == 0 {
                self.staged.lock().remove(&staged.ino);
            }
            (st.writers == 0 && !st.removed, is_temporary(&st.name))
        };
        if !last {
            return;
        }
        let staged = staged.clone();
        if temporary {
            self.share_later(staged);
        } else {
            // Closed without a flush that shared it (or while another
            // handle was open then): share now.
            spawn(
                self,
                "fuse-release",
                move |fs| async move { fs.share_staged(&staged, false).await },
                |_| {},
            );
        }
    }

    /// Shares a closed file under a temporary name once it has stayed put
    /// for [`TEMPORARY_GRACE`].
    pub(super) fn share_later(self: &Arc<Self>, staged: Arc<Staged>) {
        let generation = staged.state.lock().generation;
        spawn(
            self,
            "fuse-share-later",
            move |fs| async move {
                tokio::time::sleep(TEMPORARY_GRACE).await;
                let put = {
                    let st = staged.state.lock();
                    st.generation == generation && st.writers == 0 && !st.removed
                };
                if put {
                    let _ = fs.share_staged(&staged, false).await;
                }
            },
            |()| {},
        );
    }

    /// Hashes, stores and shares a written file under its current name; the
    /// inode becomes the shared file. On failure the file is dropped, or,
    /// with `keep`, stays as it was (a rename that could not share it).
    pub(super) async fn share_staged(&self, staged: &Staged, keep: bool) -> Result<(), Errno> {
        let (group, name, file, replace, prehash) = {
            let mut st = staged.state.lock();
            if st.removed {
                return Ok(());
            }
            if let Some(e) = st.failed {
                // Remembered from the write: nothing is shared.
                st.file = None;
                st.outcome = Some(Err(e));
                drop(st);
                self.nodes.lock().drop_staging(staged.ino);
                self.staged.lock().remove(&staged.ino);
                return Err(e);
            }
            let Some(file) = st.file.take() else {
                // Shared, or being shared by another call.
                return st.outcome.unwrap_or(Ok(()));
            };
            let prehash = std::mem::take(&mut st.prehash);
            (st.group.clone(), st.name.clone(), file, st.replace, prehash)
        };
        // A second name for the bytes, so a refused share loses nothing.
        let kept = staged.path.with_extension("keep");
        let keep = keep && std::fs::hard_link(&staged.path, &kept).is_ok();
        let staging = Staging {
            path: staged.path.clone(),
            file,
        };
        let result = match self
            .engine
            .share_staging(&group, &name, staging, prehash, replace)
            .await
        {
            Ok(swarm) => {
                let f = &swarm.file;
                let entry = FileEntry {
                    group: group.clone(),
                    name: name.clone(),
                    size: f.layout.size(),
                    id: f.id,
                    peers_online: 1,
                    holders: 1,
                };
                self.nodes.lock().promote(staged.ino, &group, entry);
                self.staged.lock().remove(&staged.ino);
                tracing::info!(group = %group, file = %name, "shared");
                if keep {
                    let _ = std::fs::remove_file(&kept);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(group = %group, file = %name, "cannot share: {e:#}");
                let restored =
                    keep && std::fs::rename(&kept, &staged.path).is_ok() && self.restore(staged);
                if !restored {
                    self.nodes.lock().drop_staging(staged.ino);
                    self.staged.lock().remove(&staged.ino);
                }
                Err(errno(&e))
            }
        };
        if result.is_ok() || !keep {
            staged.state.lock().outcome = Some(result);
        }
        result
    }

    /// Reopens a staging file whose share was refused.
    fn restore(&self, staged: &Staged) -> bool {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&staged.path)
        {
            Ok(f) => {
                staged.state.lock().file = Some(f);
                true
            }
            Err(_) => false,
        }
    }

    /// `rm` of a file being written or not shared yet: it is never shared.
    /// Handles still open on it keep writing into the removed file.
    pub(super) fn remove_staged(&self, staged: &Staged) {
        let writers = {
            let mut st = staged.state.lock();
            st.removed = true;
            st.generation += 1;
            st.writers
        };
        self.nodes.lock().drop_staging(staged.ino);
        if writers == 0 {
            self.staged.lock().remove(&staged.ino);
        }
        let _ = std::fs::remove_file(&staged.path);
    }
}

/// Whether process `pid` still holds a descriptor of the mount's inode
/// `ino` at `path` (both must match: another file system's inode numbers
/// are their own). A process whose descriptors cannot be read holds none.
fn holds_another(pid: u32, ino: u64, path: &std::path::Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let same_ino = std::fs::read_to_string(info).ok().is_some_and(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("ino:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                == Some(ino)
        });
        same_ino && std::fs::read_link(fd.path()).is_ok_and(|target| target == path)
    })
}

/// The process of thread `tid` (the kernel names the calling thread in a
/// request); `tid` itself if it cannot be told.
fn process_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(tid)
}
