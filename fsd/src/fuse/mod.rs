//! The FUSE layer: groups as directories, shared files as read-only files,
//! `cp` in to share, `rm` to stop sharing, `mkdir` to create a group.
//!
//! Every call that may touch the network moves its reply into a task on the
//! daemon's runtime (under the FUSE node of the task tree, see
//! [`crate::tasks`]), so a slow peer or tracker never holds a FUSE thread;
//! reads of verified pieces are answered on the FUSE thread directly. FUSE
//! threads may block on files; the tasks leave that to the blocking pool.
//!
//! Everything else is asked of the [`Engine`]: listings, groups, opening,
//! reading, sharing and unsharing.
//!
//! # Layout
//! - this module: the state of the mount and the [`Filesystem`] dispatch,
//!   one line per operation into the file that owns it;
//! - [`inodes`]: the inode table;
//! - [`attr`]: attributes, `setattr`, `statfs`;
//! - [`dir`]: lookups, listings, `mkdir`, `rmdir`, `unlink`;
//! - [`names`]: valid names and the rule for temporary-looking ones;
//! - [`read`]: opening and reading files;
//! - [`passthrough`]: files held whole, read by the kernel directly;
//! - [`write`]: files being written (staging) and the close that shares;
//! - [`rename`]: `mv` within a group;
//! - [`xattr`]: the `user.fileshare.*` attributes.
//!
//! The README's "The mount, call by call" lists what every operation does.

mod attr;
mod dir;
pub mod inodes;
pub mod names;
pub mod passthrough;
mod read;
mod rename;
mod write;
mod xattr;

use crate::engine::read_stream::ReadStream;
use crate::engine::{Engine, EngineError};
use crate::fuse::inodes::{Node, Nodes};
use crate::fuse::passthrough::{DaemonOpen, KernelOpen, KernelReads};
use crate::fuse::write::Staged;
use crate::tasks::Tasks;
use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, INodeNo, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the kernel may cache names and attributes. Short, because other
/// members change listings; file contents are immutable and cached longer
/// through `FOPEN_KEEP_CACHE`.
const TTL: Duration = Duration::from_secs(1);

enum Handle {
    /// A shared file read through the daemon: its reads, their
    /// read-ahead and their waits.
    Read(Arc<ReadStream>, DaemonOpen),
    /// A shared file held whole, read by the kernel from its backing file.
    Kernel(KernelOpen),
    /// A file being written, or not shared yet, opened for reading.
    ReadStaged { file: std::fs::File },
    /// A file being written; `reader` reads it back (the same open file,
    /// so it reads on after the file is shared).
    Write {
        staged: Arc<Staged>,
        reader: std::fs::File,
        /// The process that opened it: only its own close shares the file,
        /// not that of a child it forked (a `CLOEXEC` descriptor is closed,
        /// and flushed, by every exec).
        opener: u32,
    },
}

/// The filesystem itself: its nodes, open handles and files being written,
/// over the engine. [`FileShareFs`] hands each kernel call to it, on a task
/// where the call waits on the network.
struct MountedFs {
    engine: Arc<Engine>,
    /// Passthrough: whether the kernel reads files held whole directly.
    kernel_reads: Arc<KernelReads>,
    /// The FUSE node of the task tree.
    tasks: Tasks,
    nodes: Mutex<Nodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Files being written or not shared yet, by inode.
    staged: Mutex<HashMap<u64, Arc<Staged>>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    started: SystemTime,
    /// Where it is mounted (resolved), to know a writer's descriptors of
    /// a file by their path.
    mountpoint: std::path::PathBuf,
}

pub struct FileShareFs {
    fs: Arc<MountedFs>,
}

fn errno(e: &EngineError) -> Errno {
    Errno::from_i32(e.errno())
}

impl FileShareFs {
    pub fn new(engine: Arc<Engine>, tasks: Tasks, mountpoint: &std::path::Path) -> Self {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        FileShareFs {
            fs: Arc::new(MountedFs {
                engine,
                kernel_reads: KernelReads::new(),
                tasks,
                nodes: Mutex::new(Nodes::new()),
                handles: Mutex::new(HashMap::new()),
                staged: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                uid,
                gid,
                started: SystemTime::now(),
                mountpoint: std::fs::canonicalize(mountpoint)
                    .unwrap_or_else(|_| mountpoint.to_path_buf()),
            }),
        }
    }
}

impl FileShareFs {
    /// Whether files held whole are read by the kernel directly, for the
    /// dashboard and `fsd status`.
    pub fn kernel_reads(&self) -> Arc<KernelReads> {
        self.fs.kernel_reads.clone()
    }
}

impl MountedFs {
    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        self.nodes.lock().get(ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn group_of(&self, parent: INodeNo) -> Result<String, Errno> {
        match self.node(parent)? {
            Node::Group(g) => Ok(g),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Arc::new(h));
        fh
    }
}

/// Runs `f` as the task `name` and hands its result to `done`. Cancelled
/// at shutdown, the reply is dropped, which answers `EIO`.
fn spawn<T, F, D>(
    fs: &Arc<MountedFs>,
    name: &'static str,
    f: impl FnOnce(Arc<MountedFs>) -> F + Send + 'static,
    done: D,
) where
    F: std::future::Future<Output = T> + Send + 'static,
    D: FnOnce(T) + Send + 'static,
    T: Send + 'static,
{
    let task = fs.clone();
    fs.tasks.spawn(name, async move {
        let out = f(task).await;
        done(out);
    });
}

/// Replies `ok` or the error.
fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FileShareFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large reads: the kernel asks for up to 1 MiB at a time and reads
        // ahead as far, so one FUSE round trip moves two pieces' worth.
        let _ = config
            .set_max_readahead(1 << 20)
            .or_else(|max| config.set_max_readahead(max));
        let _ = config
            .set_max_write(1 << 20)
            .or_else(|max| config.set_max_write(max));
        let _ = config.set_max_background(64);
        self.fs.kernel_reads.negotiate(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.fs.lookup(parent, name, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.node(ino) {
            Ok(node) => reply.attr(&TTL, &self.fs.attr(ino.0, &node)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.fs.setattr(ino, mode, size, atime, mtime) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.fs.mkdir(parent, name, reply);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files come through `create`; nothing else is shared.
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.fs.rmdir(parent, name, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.fs
            .rename(parent, name, newparent, newname, flags, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.fs.unlink(parent, name, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.fs.open(ino, flags, req.pid(), reply);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.fs.read(fh, offset, size, reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.fs.create(parent, name, mode, umask, req.pid(), reply);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.fs.write(fh, offset, data, reply);
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.fs.flush(fh, req.pid(), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsync(fh, datasync));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.access(ino, mask));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.fs.readdir(ino, offset, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.fs.statfs(reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        // The `user.fileshare.*` attributes are the network's.
        reply.error(Errno::ENOTSUP);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOTSUP);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.fs.getxattr(ino, name, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.fs.listxattr(ino, size, reply);
    }
}
