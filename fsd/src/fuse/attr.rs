//! Attributes: what `stat` shows of groups, shared files and files being
//! written, and `setattr`.

use super::Inner;
use crate::fuse::inodes::Node;
use fileshare_protocol::PIECE_LEN;
use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};
use std::sync::Arc;

impl Inner {
    /// A node's attributes; a file being written is `stat`ed, so call this
    /// on a FUSE thread, or through [`Inner::attr_in_task`].
    pub(super) fn attr(&self, ino: u64, node: &Node) -> FileAttr {
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
    pub(super) async fn attr_in_task(
        self: &Arc<Self>,
        ino: u64,
        node: Node,
    ) -> Result<FileAttr, Errno> {
        if !matches!(node, Node::Staging { .. }) {
            return Ok(self.attr(ino, &node));
        }
        let inner = self.clone();
        self.tasks
            .blocking(move || inner.attr(ino, &node))
            .await
            .map_err(|_| Errno::EIO)
    }

    /// Modes and times are accepted and ignored so `cp -p` works; sizes
    /// change only while a file is being written.
    pub(super) fn setattr(
        &self,
        ino: INodeNo,
        _mode: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        if let Some(size) = size {
            match &node {
                Node::Staging { path, .. } => {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_len(size))
                        .map_err(|_| Errno::EIO)?;
                }
                Node::File { entry, .. } if entry.size == size => {}
                Node::File { .. } => return Err(Errno::EPERM),
                _ => return Err(Errno::EISDIR),
            }
        }
        Ok(self.attr(ino.0, &node))
    }
}
