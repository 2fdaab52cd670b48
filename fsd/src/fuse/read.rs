//! Opening and reading files: verified pieces of shared files are read on
//! the FUSE thread; a read that needs pieces waits for them in a task.
//! Files being written are read from their staging file.

use super::{errno, spawn, Handle, Inner};
use crate::engine::read_stream::ReadNow;
use crate::engine::EngineError;
use crate::fuse::inodes::Node;
use fuser::{Errno, FileHandle, FopenFlags, INodeNo, OpenFlags, ReplyData, ReplyOpen};
use std::sync::Arc;

impl Inner {
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
        spawn(
            self,
            "fuse-open",
            move |inner| async move {
                let stream = inner
                    .engine
                    .open_read(&group, &entry)
                    .await
                    .map_err(|e| errno(&e))?;
                Ok(inner.new_handle(Handle::Read(Arc::new(stream))))
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
            Handle::Read(stream) => stream,
            Handle::ReadStaged { file } | Handle::Write { reader: file, .. } => {
                let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
                return match read_full(file, &mut buf, offset) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(e) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
                };
            }
        };
        let pending = match stream.read(offset, size) {
            ReadNow::Done(Ok(data)) => return reply.data(&data),
            ReadNow::Done(Err(e)) => return reply.error(errno(&e)),
            ReadNow::Wait(pending) => pending,
        };
        spawn(
            self,
            "fuse-read",
            move |_| pending.finish(),
            move |r: Result<Vec<u8>, EngineError>| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            },
        );
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
