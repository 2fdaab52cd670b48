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

pub mod inodes;

use crate::engine::{Engine, EngineError};
use crate::fuse::inodes::{Node, Nodes, ROOT};
use crate::pieces::swarm::{Swarm, READ_AHEAD_PIECES};
use crate::store::Staging;
use crate::tasks::Tasks;
use fileshare_protocol::ids::check_name;
use fileshare_protocol::messages::tracker::FileEntry;
use fileshare_protocol::PIECE_LEN;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the kernel may cache names and attributes. Short, because other
/// members change listings; file contents are immutable and cached longer
/// through `FOPEN_KEEP_CACHE`.
const TTL: Duration = Duration::from_secs(1);

/// Read-ahead, in pieces, after the first sequential read of a handle.
const FIRST_READ_AHEAD: u32 = 2;

enum Handle {
    Read {
        swarm: Arc<Swarm>,
        /// Where the last read ended, to tell sequential reads from seeks.
        next: AtomicU64,
        /// The read-ahead window in pieces: it starts small so the first
        /// read's pieces are not queued behind read-ahead traffic, and
        /// doubles with every sequential read, like the kernel's own.
        ahead: AtomicU32,
    },
    Write {
        group: String,
        name: String,
        ino: u64,
        staging: Mutex<Option<Staging>>,
        /// The outcome of sharing, once the file was closed.
        shared: Mutex<Option<Result<(), Errno>>>,
    },
}

struct Inner {
    engine: Arc<Engine>,
    /// The FUSE node of the task tree.
    tasks: Tasks,
    nodes: Mutex<Nodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

pub struct FileShareFs {
    inner: Arc<Inner>,
}

fn errno(e: &EngineError) -> Errno {
    Errno::from_i32(e.errno())
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    let s = name.to_str().ok_or(Errno::EINVAL)?;
    check_name(s).map_err(|_| Errno::EINVAL)?;
    Ok(s)
}

impl FileShareFs {
    pub fn new(engine: Arc<Engine>, tasks: Tasks) -> Self {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        FileShareFs {
            inner: Arc::new(Inner {
                engine,
                tasks,
                nodes: Mutex::new(Nodes::new()),
                handles: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                uid,
                gid,
                started: SystemTime::now(),
            }),
        }
    }
}

impl Inner {
    /// A node's attributes; a file being written is `stat`ed, so call this
    /// on a FUSE thread, or through [`Inner::attr_in_task`].
    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, size, perm, nlink) = match node {
            Node::Root | Node::Group(_) => (FileType::Directory, 0, 0o755, 2),
            Node::File { entry, .. } => (FileType::RegularFile, entry.size, 0o444, 1),
            Node::Staging { path, .. } => (
                FileType::RegularFile,
                std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                0o644,
                1,
            ),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
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

    /// [`Inner::attr`] from a task: the `stat` runs on the blocking pool.
    async fn attr_in_task(self: &Arc<Self>, ino: u64, node: Node) -> Result<FileAttr, Errno> {
        if !matches!(node, Node::Staging { .. }) {
            return Ok(self.attr(ino, &node));
        }
        let inner = self.clone();
        self.tasks
            .blocking(move || inner.attr(ino, &node))
            .await
            .map_err(|_| Errno::EIO)
    }

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

    /// The root's entries: the groups this user belongs to.
    async fn list_root(&self) -> Result<Vec<(String, u64, FileType)>, Errno> {
        let groups = self.engine.list_groups().await.map_err(|e| {
            tracing::warn!("cannot list groups: {e:#}");
            Errno::EIO
        })?;
        let mut nodes = self.nodes.lock();
        Ok(groups
            .into_iter()
            .map(|g| {
                let ino = nodes.group(&g);
                (g, ino, FileType::Directory)
            })
            .collect())
    }

    /// A group's entries: its shared files and this user's unfinished writes.
    async fn list_group(&self, group: &str) -> Result<Vec<(String, u64, FileType)>, Errno> {
        let files = self.engine.list_files(group).await.map_err(|e| errno(&e))?;
        let mut nodes = self.nodes.lock();
        let mut out: Vec<(String, u64, FileType)> = files
            .iter()
            .map(|f| (f.name.clone(), nodes.file(group, f), FileType::RegularFile))
            .collect();
        for (name, ino) in nodes.staging_in(group) {
            if !out.iter().any(|(n, _, _)| *n == name) {
                out.push((name, ino, FileType::RegularFile));
            }
        }
        Ok(out)
    }

    async fn lookup(&self, parent: INodeNo, name: &str) -> Result<(u64, Node), Errno> {
        let entries = match self.node(parent)? {
            Node::Root => self.list_root().await?,
            Node::Group(g) => {
                if let Some(ino) = self.nodes.lock().find_staging(&g, name) {
                    let node = self.node(INodeNo(ino))?;
                    return Ok((ino, node));
                }
                self.list_group(&g).await?
            }
            _ => return Err(Errno::ENOTDIR),
        };
        let ino = entries
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, ino, _)| ino)
            .ok_or(Errno::ENOENT)?;
        let node = self.node(INodeNo(ino))?;
        Ok((ino, node))
    }

    /// Shares a closed write; the inode becomes the shared file.
    async fn finish_write(&self, h: &Handle) -> Result<(), Errno> {
        let Handle::Write {
            group,
            name,
            ino,
            staging,
            shared,
        } = h
        else {
            return Ok(());
        };
        if let Some(done) = *shared.lock() {
            return done;
        }
        let Some(st) = staging.lock().take() else {
            return Ok(());
        };
        let result = match self.engine.share_staging(group, name, st).await {
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
                self.nodes.lock().promote(*ino, group, entry);
                tracing::info!(group = %group, file = %name, "shared");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(group = %group, file = %name, "cannot share: {e:#}");
                self.nodes.lock().drop_staging(*ino);
                Err(errno(&e))
            }
        };
        *shared.lock() = Some(result);
        result
    }
}

/// Runs `f` as the task `name` and hands its result to `done`. Cancelled
/// at shutdown, the reply is dropped, which answers `EIO`.
fn spawn<T, F, D>(
    inner: &Arc<Inner>,
    name: &'static str,
    f: impl FnOnce(Arc<Inner>) -> F + Send + 'static,
    done: D,
) where
    F: std::future::Future<Output = T> + Send + 'static,
    D: FnOnce(T) + Send + 'static,
    T: Send + 'static,
{
    let task = inner.clone();
    inner.tasks.spawn(name, async move {
        let out = f(task).await;
        done(out);
    });
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
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(Errno::ENOENT);
        };
        spawn(
            &self.inner,
            "fuse-lookup",
            move |inner| async move {
                let (ino, node) = inner.lookup(parent, &name).await?;
                inner.attr_in_task(ino, node).await
            },
            move |r: Result<FileAttr, Errno>| match r {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inner.node(ino) {
            Ok(node) => reply.attr(&TTL, &self.inner.attr(ino.0, &node)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let node = match self.inner.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // Modes and times are accepted and ignored so `cp -p` works; sizes
        // change only while a file is being written.
        if let Some(size) = size {
            match &node {
                Node::Staging { path, .. } => {
                    let r = std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_len(size));
                    if r.is_err() {
                        return reply.error(Errno::EIO);
                    }
                }
                Node::File { entry, .. } if entry.size == size => {}
                Node::File { .. } => return reply.error(Errno::EPERM),
                _ => return reply.error(Errno::EISDIR),
            }
        }
        reply.attr(&TTL, &self.inner.attr(ino.0, &node));
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
        if parent.0 != ROOT {
            return reply.error(Errno::EPERM);
        }
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        spawn(
            &self.inner,
            "fuse-mkdir",
            move |inner| async move {
                inner
                    .engine
                    .create_group(&name)
                    .await
                    .map_err(|e| errno(&e))?;
                tracing::info!(group = %name, "group created");
                let ino = inner.nodes.lock().group(&name);
                Ok(inner.attr(ino, &Node::Group(name)))
            },
            move |r: Result<FileAttr, Errno>| match r {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        // Leaving a group is `fsd leave-group`, never a side effect of rm -r.
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let group = match self.inner.group_of(parent) {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(Errno::ENOENT);
        };
        spawn(
            &self.inner,
            "fuse-unlink",
            move |inner| async move {
                inner
                    .engine
                    .unshare(&group, &name)
                    .await
                    .map_err(|e| errno(&e))?;
                tracing::info!(group = %group, file = %name, "stopped sharing");
                Ok(())
            },
            move |r: Result<(), Errno>| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (group, entry) = match self.inner.node(ino) {
            Ok(Node::File { group, entry }) => (group, entry),
            Ok(Node::Staging { .. }) => return reply.error(Errno::EBUSY),
            Ok(_) => return reply.error(Errno::EISDIR),
            Err(e) => return reply.error(e),
        };
        if flags.0 & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC) != 0 {
            // Shared files are immutable.
            return reply.error(Errno::EPERM);
        }
        spawn(
            &self.inner,
            "fuse-open",
            move |inner| async move {
                let swarm = inner
                    .engine
                    .open(&group, &entry)
                    .await
                    .map_err(|e| errno(&e))?;
                Ok(inner.new_handle(Handle::Read {
                    swarm,
                    next: AtomicU64::new(0),
                    ahead: AtomicU32::new(0),
                }))
            },
            move |r: Result<u64, Errno>| match r {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(e),
            },
        );
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
        let handle = match self.inner.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Read { swarm, next, ahead } = &*handle else {
            return reply.error(Errno::EBADF);
        };
        let prev = next.swap(offset + u64::from(size), Ordering::Relaxed);
        // Sequential, allowing for the kernel's parallel read-ahead requests.
        let sequential = offset == 0 || offset.abs_diff(prev) <= 4 * PIECE_LEN;
        let read_ahead = if sequential {
            let window =
                (ahead.load(Ordering::Relaxed) * 2).clamp(FIRST_READ_AHEAD, READ_AHEAD_PIECES);
            ahead.store(window, Ordering::Relaxed);
            window
        } else {
            ahead.store(0, Ordering::Relaxed);
            0
        };
        match self
            .inner
            .engine
            .read_verified(swarm, offset, size, read_ahead)
        {
            Some(Ok(data)) => return reply.data(&data),
            Some(Err(e)) => return reply.error(errno(&e)),
            None => {}
        }
        let swarm = swarm.clone();
        spawn(
            &self.inner,
            "fuse-read",
            move |inner| async move { inner.engine.read(&swarm, offset, size, read_ahead).await },
            move |r: Result<Vec<u8>, EngineError>| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let group = match self.inner.group_of(parent) {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        if self
            .inner
            .nodes
            .lock()
            .find_staging(&group, &name)
            .is_some()
        {
            return reply.error(Errno::EBUSY);
        }
        let staging = match self.inner.engine.staging() {
            Ok(s) => s,
            Err(e) => return reply.error(errno(&e)),
        };
        let ino = self
            .inner
            .nodes
            .lock()
            .add_staging(&group, &name, staging.path.clone());
        let node = Node::Staging {
            group: group.clone(),
            name: name.clone(),
            path: staging.path.clone(),
        };
        let fh = self.inner.new_handle(Handle::Write {
            group,
            name,
            ino,
            staging: Mutex::new(Some(staging)),
            shared: Mutex::new(None),
        });
        reply.created(
            &TTL,
            &self.inner.attr(ino, &node),
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
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
        let handle = match self.inner.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Write { staging, .. } = &*handle else {
            return reply.error(Errno::EBADF);
        };
        let guard = staging.lock();
        let Some(st) = guard.as_ref() else {
            // Already shared: shared files are immutable.
            return reply.error(Errno::EPERM);
        };
        // A failed write is remembered: the close fails alike, unshared.
        match self.inner.engine.write_staging(st, offset, data) {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(errno) => reply.error(Errno::from_i32(errno)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let handle = match self.inner.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        if !matches!(&*handle, Handle::Write { .. }) {
            return reply.ok();
        }
        // `close` waits for flush, so sharing here means that once `cp`
        // returns, other members see the file.
        spawn(
            &self.inner,
            "fuse-flush",
            move |inner| async move { inner.finish_write(&handle).await },
            move |r: Result<(), Errno>| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
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
        let handle = self.inner.handles.lock().remove(&fh.0);
        if let Some(handle) = handle {
            if matches!(&*handle, Handle::Write { .. }) {
                spawn(
                    &self.inner,
                    "fuse-release",
                    move |inner| async move { inner.finish_write(&handle).await },
                    |_| {},
                );
            }
        }
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let node = match self.inner.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        spawn(
            &self.inner,
            "fuse-readdir",
            move |inner| async move {
                match &node {
                    Node::Root => inner.list_root().await,
                    Node::Group(g) => inner.list_group(g).await,
                    _ => Err(Errno::ENOTDIR),
                }
            },
            move |r: Result<Vec<(String, u64, FileType)>, Errno>| {
                let entries = match r {
                    Ok(e) => e,
                    Err(e) => return reply.error(e),
                };
                let mut reply = reply;
                let all = [
                    (".".to_string(), ino.0, FileType::Directory),
                    ("..".to_string(), ROOT, FileType::Directory),
                ]
                .into_iter()
                .chain(entries);
                for (i, (name, ino, kind)) in all
                    .enumerate()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                {
                    if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            },
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = match self.inner.xattrs(ino) {
            Ok(attrs) => attrs
                .into_iter()
                .find(|(k, _)| OsStr::new(k) == name)
                .map(|(_, v)| v),
            Err(e) => return reply.error(e),
        };
        let Some(value) = value else {
            return reply.error(Errno::NO_XATTR);
        };
        xattr_reply(reply, size, value.as_bytes());
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = match self.inner.xattrs(ino) {
            Ok(attrs) => attrs
                .into_iter()
                .flat_map(|(k, _)| k.into_bytes().into_iter().chain([0]))
                .collect::<Vec<u8>>(),
            Err(e) => return reply.error(e),
        };
        xattr_reply(reply, size, &names);
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len <= size {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

impl Inner {
    /// The `user.fileshare.*` attributes of a file, for `getfattr -d`.
    fn xattrs(&self, ino: INodeNo) -> Result<Vec<(String, String)>, Errno> {
        let Node::File { entry, .. } = self.node(ino)? else {
            return Ok(Vec::new());
        };
        let mut out = vec![
            ("user.fileshare.id".to_string(), entry.id.to_hex()),
            (
                "user.fileshare.peers_online".to_string(),
                entry.peers_online.to_string(),
            ),
        ];
        if let Some(swarm) = self.engine.swarm(&entry.id) {
            let have = swarm.have();
            out.push((
                "user.fileshare.pieces".into(),
                format!("{}/{}", have.count(), have.len()),
            ));
            let fetched: Vec<String> = swarm
                .counters()
                .into_iter()
                .map(|(addr, c)| {
                    format!(
                        "{addr} bytes={} pieces={} failures={}",
                        c.bytes, c.pieces, c.failures
                    )
                })
                .collect();
            out.push(("user.fileshare.fetched".into(), fetched.join("; ")));
            let count = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed).to_string();
            out.push(("user.fileshare.uploaded".into(), count(&swarm.uploaded)));
            out.push((
                "user.fileshare.duplicates".into(),
                count(&swarm.duplicate_bytes),
            ));
        } else {
            let n = entry.size.div_ceil(PIECE_LEN);
            out.push(("user.fileshare.pieces".into(), format!("0/{n}")));
            out.push(("user.fileshare.fetched".into(), String::new()));
            out.push(("user.fileshare.uploaded".into(), "0".into()));
            out.push(("user.fileshare.duplicates".into(), "0".into()));
        }
        Ok(out)
    }
}
