//! Opening and reading files: verified pieces of shared files are read on
//! the FUSE thread; a read that needs pieces waits for them in a task.
//! Files being written are read from their staging file.

use super::{errno, spawn, Handle, Inner};
use crate::engine::EngineError;
use crate::fuse::inodes::Node;
use crate::pieces::swarm::READ_AHEAD_PIECES;
use fileshare_protocol::PIECE_LEN;
use fuser::{Errno, FileHandle, FopenFlags, INodeNo, OpenFlags, ReplyData, ReplyOpen};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Read-ahead, in pieces, after the first sequential read of a handle.
const FIRST_READ_AHEAD: u32 = 4;

/// How much the read-ahead grows with each further sequential read. The
/// kernel sends a reader's first reads before any of them is answered, so
/// the window reaches every peer (a few requests each) by the second read
/// and its full size by the third: a cold read pulls from all its peers
/// from the start instead of waiting for the first pieces to arrive.
const READ_AHEAD_GROWTH: u32 = 4;

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

    pub(super) fn read(self: &Arc<Self>, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let (swarm, next, ahead) = match &*handle {
            Handle::Read { swarm, next, ahead } => (swarm, next, ahead),
            Handle::ReadStaged { file } | Handle::Write { reader: file, .. } => {
                let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
                return match read_full(file, &mut buf, offset) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(e) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
                };
            }
        };
        let prev = next.swap(offset + u64::from(size), Ordering::Relaxed);
        // Sequential, allowing for the kernel's parallel read-ahead requests.
        let sequential = offset == 0 || offset.abs_diff(prev) <= 4 * PIECE_LEN;
        let read_ahead = if sequential {
            let window = (ahead
                .load(Ordering::Relaxed)
                .saturating_mul(READ_AHEAD_GROWTH))
            .clamp(FIRST_READ_AHEAD, READ_AHEAD_PIECES);
            ahead.store(window, Ordering::Relaxed);
            window
        } else {
            ahead.store(0, Ordering::Relaxed);
            0
        };
        match self.engine.read_verified(swarm, offset, size, read_ahead) {
            Some(Ok(data)) => return reply.data(&data),
            Some(Err(e)) => return reply.error(errno(&e)),
            None => {}
        }
        let swarm = swarm.clone();
        spawn(
            self,
            "fuse-read",
            move |inner| async move { inner.engine.read(&swarm, offset, size, read_ahead).await },
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
