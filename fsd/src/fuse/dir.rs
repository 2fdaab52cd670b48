//! Directories: the root lists the user's groups, a group lists its shared
//! files and this user's files being written (or not shared yet); `mkdir`
//! in the root creates a group, `rm` stops sharing, `rmdir` is refused.

use super::names::valid_name;
use super::{errno, spawn, MountedFs, TTL};
use crate::fuse::inodes::{Node, ROOT};
use fuser::{
    Errno, FileAttr, FileType, Generation, INodeNo, ReplyDirectory, ReplyEmpty, ReplyEntry,
};
use std::ffi::OsStr;
use std::sync::Arc;

impl MountedFs {
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

    /// A group's entries: its shared files and this user's unfinished
    /// writes, which hide a shared file of the same name here (a save over
    /// it that is not shared yet).
    async fn list_group(&self, group: &str) -> Result<Vec<(String, u64, FileType)>, Errno> {
        let files = self.engine.list_files(group).await.map_err(|e| errno(&e))?;
        let mut nodes = self.nodes.lock();
        let staging = nodes.staging_in(group);
        let mut out: Vec<(String, u64, FileType)> = files
            .iter()
            .filter(|f| !staging.iter().any(|(n, _)| *n == f.name))
            .map(|f| (f.name.clone(), nodes.file(group, f), FileType::RegularFile))
            .collect();
        out.extend(
            staging
                .into_iter()
                .map(|(name, ino)| (name, ino, FileType::RegularFile)),
        );
        Ok(out)
    }

    /// The inode and node of `name` in directory `parent`.
    pub(super) async fn find(&self, parent: INodeNo, name: &str) -> Result<(u64, Node), Errno> {
        let entries = match self.node(parent)? {
            Node::Root => self.list_root().await?,
            Node::Group(g) => {
                let staging = self.nodes.lock().find_staging(&g, name);
                if let Some(ino) = staging {
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
        let name = match valid_name(name) {
            Ok(n) => n.to_string(),
            Err(Errno::ENAMETOOLONG) => return reply.error(Errno::ENAMETOOLONG),
            Err(_) => return reply.error(Errno::ENOENT),
        };
        spawn(
            self,
            "fuse-lookup",
            move |fs| async move {
                let (ino, node) = fs.find(parent, &name).await?;
                fs.attr_in_task(ino, node).await
            },
            move |r: Result<FileAttr, Errno>| match r {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            },
        );
    }

    pub(super) fn mkdir(self: &Arc<Self>, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match valid_name(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        if parent.0 != ROOT {
            // Groups hold files only.
            return reply.error(Errno::EPERM);
        }
        spawn(
            self,
            "fuse-mkdir",
            move |fs| async move {
                fs.engine.create_group(&name).await.map_err(|e| errno(&e))?;
                tracing::info!(group = %name, "group created");
                let ino = fs.nodes.lock().group(&name);
                Ok(fs.attr(ino, &Node::Group(name)))
            },
            move |r: Result<FileAttr, Errno>| match r {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            },
        );
    }

    /// `rm`: a file being written or not shared yet is dropped; a shared
    /// file stops being shared by this user. `EPERM` for a file only others
    /// share.
    pub(super) fn unlink(self: &Arc<Self>, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let group = match self.group_of(parent) {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(Errno::ENOENT);
        };
        let staging = self.nodes.lock().find_staging(&group, &name);
        if let Some(staged) = staging.and_then(|ino| self.staged(ino)) {
            self.remove_staged(&staged);
            return reply.ok();
        }
        spawn(
            self,
            "fuse-unlink",
            move |fs| async move {
                match fs.engine.unshare(&group, &name).await {
                    Ok(()) => {}
                    Err(e) if e.errno() == libc::ENOENT => {
                        // Listed, but not this user's to remove.
                        let listed = fs.engine.list_files(&group).await;
                        if listed.is_ok_and(|l| l.iter().any(|f| f.name == name)) {
                            return Err(Errno::EPERM);
                        }
                        return Err(Errno::ENOENT);
                    }
                    Err(e) => return Err(errno(&e)),
                }
                tracing::info!(group = %group, file = %name, "stopped sharing");
                Ok(())
            },
            move |r: Result<(), Errno>| super::reply_empty(reply, r),
        );
    }

    /// `rmdir` of a group: `ENOTEMPTY` while it lists files, else `EPERM`:
    /// leaving a group is `fsd leave-group`, never a side effect of `rm -r`.
    pub(super) fn rmdir(self: &Arc<Self>, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(Errno::ENOENT);
        };
        spawn(
            self,
            "fuse-rmdir",
            move |fs| async move {
                let (_, node) = fs.find(parent, &name).await?;
                let Node::Group(g) = node else {
                    return Err(Errno::ENOTDIR);
                };
                if fs.list_group(&g).await?.is_empty() {
                    Err(Errno::EPERM)
                } else {
                    Err(Errno::ENOTEMPTY)
                }
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
            move |fs| async move {
                match &node {
                    Node::Root => fs.list_root().await,
                    Node::Group(g) => fs.list_group(g).await,
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
