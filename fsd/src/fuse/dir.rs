//! Directories: the root lists the user's groups, a group lists its shared
//! files and this user's files being written; `mkdir` in the root creates a
//! group, `rm` stops sharing.

use super::{errno, name_of, spawn, Inner, TTL};
use crate::fuse::inodes::{Node, ROOT};
use fuser::{
    Errno, FileAttr, FileType, Generation, INodeNo, ReplyDirectory, ReplyEmpty, ReplyEntry,
};
use std::ffi::OsStr;
use std::sync::Arc;

impl Inner {
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

    /// The inode and node of `name` in directory `parent`.
    pub(super) async fn find(&self, parent: INodeNo, name: &str) -> Result<(u64, Node), Errno> {
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

    pub(super) fn lookup(self: &Arc<Self>, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(Errno::ENOENT);
        };
        spawn(
            self,
            "fuse-lookup",
            move |inner| async move {
                let (ino, node) = inner.find(parent, &name).await?;
                inner.attr_in_task(ino, node).await
            },
            move |r: Result<FileAttr, Errno>| match r {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            },
        );
    }

    pub(super) fn mkdir(self: &Arc<Self>, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT {
            return reply.error(Errno::EPERM);
        }
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        spawn(
            self,
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

    pub(super) fn unlink(self: &Arc<Self>, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let group = match self.group_of(parent) {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(Errno::ENOENT);
        };
        spawn(
            self,
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
            move |r: Result<(), Errno>| super::reply_empty(reply, r),
        );
    }

    pub(super) fn readdir(self: &Arc<Self>, ino: INodeNo, offset: u64, reply: ReplyDirectory) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        spawn(
            self,
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
}
