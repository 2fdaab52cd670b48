//! Opening and reading files: verified pieces of shared files are read on
//! the FUSE thread; a read that needs pieces waits for them in a task.
//! Files being written are read from their staging file. A file held
//! whole is opened for the kernel to read directly (see [`super::passthrough`]).

use super::{errno, spawn, Handle, MountedFs};
use crate::engine::read_stream::ReadNow;
use crate::engine::EngineError;
use crate::fuse::inodes::Node;
use crate::fuse::passthrough::Opened;
use fuser::{Errno, FileHandle, FopenFlags, INodeNo, OpenFlags, ReplyData, ReplyOpen};
use std::sync::Arc;

impl MountedFs {
    pub(super) fn open(
        self: &Arc<Self>,
        ino: INodeNo,
        flags: OpenFlags,
        pid: u32,
        reply: ReplyOpen,
    ) {
        let (group, entry) = match self.node(ino) {
            Ok(Node::File { group, entry }) => (group, entry),
            Ok(Node::Staging { .. }) => {
                let opened = match self.staged(ino.0) {
                    Some(staged) => self.open_staged(staged, flags.0, pid),
                    None => Err(Errno::ENOENT),
                };
                return match opened {
                    Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                    Err(e) => reply.error(e),
                };
            }
            Ok(_) => return reply.error(Errno::EISDIR),
            Err(e) => return reply.error(e),
        };
        if flags.0 & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC) != 0 {
            // Shared files are immutable.
            return reply.error(Errno::EPERM);
        }
        let through_daemon = match self.kernel_reads.open(ino.0, &entry, &self.engine, &reply) {
            Opened::Kernel(open) => {
                let backing = open.backing.clone();
                let fh = self.new_handle(Handle::Kernel(open));
                return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), backing.id());
            }
            Opened::Daemon(open) => open,
        };
        spawn(
            self,
            "fuse-open",
            move |fs| async move {
                let stream = fs
                    .engine
                    .open_read(&group, &entry)
                    .await
                    .map_err(|e| errno(&e))?;
                Ok(fs.new_handle(Handle::Read(Arc::new(stream), through_daemon)))
            },
            move |r: Result<u64, Errno>| match r {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(e),
            },
        );
    }

    pub(super) fn read(self: &Arc<Self>, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let stream = match &*handle {
            Handle::Read(stream, _) => stream,
            Handle::ReadStaged { file } | Handle::Write { reader: file, .. } => {
                return reply_read(reply, file, offset, size);
            }
            // The kernel reads these itself; answered all the same.
            Handle::Kernel(open) => {
                return reply_read(reply, open.backing.swarm().file.data_file(), offset, size);
            }
        };
        let counted = handle.clone();
        let answer = move |r: Result<&[u8], EngineError>| match r {
            Ok(data) => {
                if let Handle::Read(_, through_daemon) = &*counted {
                    through_daemon.count_read(data.len());
                }
                reply.data(data)
            }
            Err(e) => reply.error(errno(&e)),
        };
        let pending = match stream.read(offset, size, answer) {
            ReadNow::Done => return,
            ReadNow::Wait(pending) => pending,
        };
        spawn(self, "fuse-read", move |_| pending.finish(), |()| {});
    }
}

/// Answers a read from `file`.
fn reply_read(reply: ReplyData, file: &std::fs::File, offset: u64, size: u32) {
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
    match read_full(file, &mut buf, offset) {
        Ok(n) => reply.data(&buf[..n]),
        Err(e) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends.
fn read_full(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
