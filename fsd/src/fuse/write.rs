//! Files written through the mount: `create` stages them in the store,
//! writes go to the staging file, and the close shares them.

use super::{errno, name_of, spawn, Handle, Inner, TTL};
use crate::fuse::inodes::Node;
use fileshare_protocol::messages::tracker::FileEntry;
use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, ReplyCreate, ReplyEmpty, ReplyWrite,
};
use parking_lot::Mutex;
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

impl Inner {
    pub(super) fn create(self: &Arc<Self>, parent: INodeNo, name: &OsStr, reply: ReplyCreate) {
        let group = match self.group_of(parent) {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        if self.nodes.lock().find_staging(&group, &name).is_some() {
            return reply.error(Errno::EBUSY);
        }
        let staging = match self.engine.staging() {
            Ok(s) => s,
            Err(e) => return reply.error(errno(&e)),
        };
        let ino = self
            .nodes
            .lock()
            .add_staging(&group, &name, staging.path.clone());
        let node = Node::Staging {
            group: group.clone(),
            name: name.clone(),
            path: staging.path.clone(),
        };
        let fh = self.new_handle(Handle::Write {
            group,
            name,
            ino,
            staging: Mutex::new(Some(staging)),
            shared: Mutex::new(None),
        });
        reply.created(
            &TTL,
            &self.attr(ino, &node),
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }

    pub(super) fn write(&self, fh: FileHandle, offset: u64, data: &[u8], reply: ReplyWrite) {
        let handle = match self.handle(fh) {
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
        match st.file.write_all_at(data, offset) {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }

    pub(super) fn flush(self: &Arc<Self>, fh: FileHandle, reply: ReplyEmpty) {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        if !matches!(&*handle, Handle::Write { .. }) {
            return reply.ok();
        }
        // `close` waits for flush, so sharing here means that once `cp`
        // returns, other members see the file.
        spawn(
            self,
            "fuse-flush",
            move |inner| async move { inner.finish_write(&handle).await },
            move |r: Result<(), Errno>| super::reply_empty(reply, r),
        );
    }

    pub(super) fn release(self: &Arc<Self>, fh: FileHandle) {
        let handle = self.handles.lock().remove(&fh.0);
        if let Some(handle) = handle {
            if matches!(&*handle, Handle::Write { .. }) {
                spawn(
                    self,
                    "fuse-release",
                    move |inner| async move { inner.finish_write(&handle).await },
                    |_| {},
                );
            }
        }
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
