//! `rename(2)` within a group: `mv`, rsync's and editors' temporary files.
//!
//! - A file being written, or written under a temporary name and not shared
//!   yet, takes the new name. If it is closed and the new name does not
//!   look temporary, it is shared now, under the new name, before the
//!   rename returns; its temporary name never reaches the other members.
//!   Still open, it is shared under the new name when it is closed.
//! - A file this user shares is renamed with one tracker change
//!   ([`crate::engine::Engine::rename`]): other members see the new name
//!   and no longer the old one, never both, never neither.
//! - Onto an existing name, as rename(2): a file of this user's alone is
//!   replaced, in the same tracker change; a file another member shares is
//!   `EPERM` (as in a sticky directory such as /tmp); a file not shared yet
//!   is dropped. `RENAME_NOREPLACE` gives `EEXIST`.
//! - Across groups `EXDEV` (so `mv` copies, then removes); groups are not
//!   renamed and files do not go to the root (`EPERM`); `RENAME_EXCHANGE`
//!   is `EINVAL`.

use super::names::{is_temporary, valid_name};
use super::write::Staged;
use super::{errno, spawn, MountedFs};
use crate::fuse::inodes::Node;
use fileshare_protocol::messages::tracker::FileEntry;
use fuser::{Errno, INodeNo, RenameFlags, ReplyEmpty};
use std::ffi::OsStr;
use std::sync::Arc;

/// The errno of a refused rename or save: the tracker's `NameTaken` (a name
/// another member shares) is `EPERM` here.
fn refused(e: Errno) -> Errno {
    if e == Errno::EEXIST {
        Errno::EPERM
    } else {
        e
    }
}

impl MountedFs {
    pub(super) fn rename(
        self: &Arc<Self>,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (from, to) = match (name.to_str(), valid_name(newname)) {
            (Some(f), Ok(t)) => (f.to_string(), t.to_string()),
            (None, _) => return reply.error(Errno::ENOENT),
            (_, Err(e)) => return reply.error(e),
        };
        let group = match (self.node(parent), self.node(newparent)) {
            (Ok(Node::Group(a)), Ok(Node::Group(b))) if a == b => a,
            (Ok(Node::Group(_)), Ok(Node::Group(_))) => return reply.error(Errno::EXDEV),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
            _ => return reply.error(Errno::EPERM),
        };
        spawn(
            self,
            "fuse-rename",
            move |fs| async move {
                let (ino, node) = fs.find(parent, &from).await?;
                let target = match fs.find(newparent, &to).await {
                    Ok(t) => Some(t),
                    Err(e) if e == Errno::ENOENT => None,
                    Err(e) => return Err(e),
                };
                if from == to {
                    return Ok(());
                }
                if noreplace && target.is_some() {
                    return Err(Errno::EEXIST);
                }
                let target_staged = match &target {
                    Some((t, Node::Staging { .. })) => fs.staged(*t),
                    _ => None,
                };
                match node {
                    Node::Staging { .. } => {
                        let staged = fs.staged(ino).ok_or(Errno::ENOENT)?;
                        fs.rename_staged(&staged, &from, &to, target_staged).await
                    }
                    Node::File { .. } => {
                        let swarm = fs
                            .engine
                            .rename(&group, &from, &to)
                            .await
                            .map_err(|e| refused(errno(&e)))?;
                        if let Some(t) = target_staged {
                            fs.remove_staged(&t);
                        }
                        let f = &swarm.file;
                        let entry = FileEntry {
                            group: group.clone(),
                            name: to.clone(),
                            size: f.layout.size(),
                            id: f.id,
                            peers_online: 1,
                            holders: 1,
                        };
                        fs.nodes.lock().rename_file(ino, &group, entry);
                        tracing::info!(group = %group, from = %from, to = %to, "renamed");
                        Ok(())
                    }
                    Node::Root | Node::Group(_) => Err(Errno::EPERM),
                }
            },
            move |r: Result<(), Errno>| super::reply_empty(reply, r),
        );
    }

    /// A file being written (or not shared yet) takes the name `to`; closed
    /// under a name that does not look temporary, it is shared now, and if
    /// that is refused it keeps its old name.
    async fn rename_staged(
        self: &Arc<Self>,
        staged: &Arc<Staged>,
        from: &str,
        to: &str,
        target: Option<Arc<Staged>>,
    ) -> Result<(), Errno> {
        let share_now = {
            let mut st = staged.state.lock();
            if st.file.is_none() {
                // Being shared right now.
                return Err(Errno::EBUSY);
            }
            st.name = to.to_string();
            st.replace = true;
            st.generation += 1;
            st.writers == 0 && !is_temporary(to)
        };
        if let Some(t) = target.filter(|t| !Arc::ptr_eq(t, staged)) {
            self.remove_staged(&t);
        }
        self.nodes.lock().rename_staging(staged.ino, to);
        let writers = staged.state.lock().writers;
        if !share_now {
            if writers == 0 {
                self.share_later(staged.clone());
            }
            return Ok(());
        }
        match self.share_staged(staged, true).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if self.staged(staged.ino).is_some() {
                    staged.state.lock().name = from.to_string();
                    self.nodes.lock().rename_staging(staged.ino, from);
                }
                Err(refused(e))
            }
        }
    }
}
