//! Attributes: what `stat` shows of groups, shared files and files being
//! written; `setattr`, `access`, `fsync` and `statfs`.
//!
//! The mount's root is owner-only (0700): the kernel, which checks every
//! access against these modes, keeps other users out. Shared files are
//! immutable: they show mode 0444 and the mount's start time. `chmod`, `chown` and `utimens` are accepted on every file and
//! group so `cp -a`, `tar -x` and `rsync -a` work; on a file being written
//! (or not shared yet) the mode and times are kept and shown until it is
//! shared, elsewhere they change nothing. Owners are never changed: every
//! entry belongs to the user who mounted.

use super::{Handle, MountedFs};
use crate::fuse::inodes::Node;
use fileshare_protocol::ids::MAX_NAME_LEN;
use fileshare_protocol::PIECE_LEN;
use fuser::{AccessFlags, Errno, FileAttr, FileHandle, FileType, INodeNo, ReplyStatfs, TimeOrNow};
use std::sync::Arc;
use std::time::SystemTime;

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl MountedFs {
    /// A node's attributes; a file being written is `stat`ed, so call this
    /// on a FUSE thread, or through [`MountedFs::attr_in_task`].
    pub(super) fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (mut atime, mut mtime) = (self.started, self.started);
        let (kind, size, perm, nlink) = match node {
            // Owner-only: the kernel keeps everyone else out (see
            // `default_permissions` in mount/mod.rs).
            Node::Root => (FileType::Directory, 0, 0o700, 2),
            Node::Group(_) => (FileType::Directory, 0, 0o755, 2),
            Node::File { entry, .. } => (FileType::RegularFile, entry.size, 0o444, 1),
            Node::Staging { path, .. } => {
                let md = std::fs::metadata(path).ok();
                let size = md.as_ref().map_or(0, |m| m.len());
                let written = md.and_then(|m| m.modified().ok());
                let mut perm = 0o644;
                if let Some(staged) = self.staged(ino) {
                    let st = staged.state.lock();
                    perm = st.perm;
                    mtime = st.mtime.or(written).unwrap_or(mtime);
                    atime = st.atime.unwrap_or(mtime);
                }
                (FileType::RegularFile, size, perm, 1)
            }
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime,
            mtime,
            ctime: mtime,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: u32::try_from(PIECE_LEN).unwrap_or(4096),
        }
    }

    /// [`MountedFs::attr`] from a task: the `stat` runs on the blocking pool.
    pub(super) async fn attr_in_task(
        self: &Arc<Self>,
        ino: u64,
        node: Node,
    ) -> Result<FileAttr, Errno> {
        if !matches!(node, Node::Staging { .. }) {
            return Ok(self.attr(ino, &node));
        }
        let fs = self.clone();
        self.tasks
            .blocking(move || fs.attr(ino, &node))
            .await
            .map_err(|_| Errno::EIO)
    }

    /// Sizes change only while a file is being written (`EPERM` on a
    /// shared file, unless the size is its own); modes and times are kept
    /// on files being written and accepted elsewhere (see the module doc).
    pub(super) fn setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        match &node {
            Node::Staging { .. } => {
                let staged = self.staged(ino.0).ok_or(Errno::ENOENT)?;
                let mut st = staged.state.lock();
                if let Some(size) = size {
                    let file = st.file.as_ref().ok_or(Errno::EPERM)?;
                    file.set_len(size)
                        .map_err(|e| Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO)))?;
                    st.prehash.resized();
                    st.written = true;
                }
                if let Some(mode) = mode {
                    st.perm = u16::try_from(mode & 0o7777).unwrap_or(0o644);
                }
                if let Some(t) = mtime {
                    st.mtime = Some(time_of(t));
                }
                if let Some(t) = atime {
                    st.atime = Some(time_of(t));
                }
            }
            Node::File { entry, .. } => {
                if size.is_some_and(|s| s != entry.size) {
                    return Err(Errno::EPERM);
                }
            }
            Node::Root | Node::Group(_) => {
                if size.is_some() {
                    return Err(Errno::EISDIR);
                }
            }
        }
        Ok(self.attr(ino.0, &node))
    }

    /// `access(2)`, when the kernel asks (the mount's `default_permissions`
    /// has it answer from the modes itself): shared files are readable,
    /// not writable; files being written are both; directories can be
    /// entered and, the root and the groups, written (`mkdir` makes a
    /// group, `cp` shares). Nothing is executable.
    pub(super) fn access(&self, ino: INodeNo, mask: AccessFlags) -> Result<(), Errno> {
        let node = self.node(ino)?;
        let denied = match node {
            Node::Root | Node::Group(_) => AccessFlags::empty(),
            Node::File { .. } => AccessFlags::W_OK | AccessFlags::X_OK,
            Node::Staging { .. } => AccessFlags::X_OK,
        };
        if mask.intersects(denied) {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    /// Writes of a file being written reach the disk; shared files are on
    /// disk already.
    pub(super) fn fsync(&self, fh: FileHandle, datasync: bool) -> Result<(), Errno> {
        let handle = self.handle(fh)?;
        let Handle::Write { staged, .. } = &*handle else {
            return Ok(());
        };
        let st = staged.state.lock();
        let Some(file) = st.file.as_ref() else {
            return Ok(());
        };
        let r = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        r.map_err(|e| Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    /// `df`: the room of the store's filesystem ([`crate::engine::Engine::space`]).
    pub(super) fn statfs(self: &Arc<Self>, reply: ReplyStatfs) {
        super::spawn(
            self,
            "fuse-statfs",
            |fs| async move { fs.engine.space().await },
            move |r| match r {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.bfree,
                    s.bavail,
                    s.files,
                    s.ffree,
                    s.bsize,
                    u32::try_from(MAX_NAME_LEN).unwrap_or(255),
                    s.frsize,
                ),
                Err(e) => {
                    tracing::warn!("cannot tell the store's room: {e:#}");
                    reply.error(Errno::EIO)
                }
            },
        );
    }
}
