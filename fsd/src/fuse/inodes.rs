//! The inode table of the mount: stable inode numbers for groups, shared
//! files (by group and content id) and files still being written.

use fileshare_protocol::messages::tracker::FileEntry;
use fileshare_protocol::FileId;
use std::collections::HashMap;
use std::path::PathBuf;

pub const ROOT: u64 = 1;

#[derive(Debug, Clone)]
pub enum Node {
    Root,
    Group(String),
    /// A shared file as the tracker lists it.
    File {
        group: String,
        entry: FileEntry,
    },
    /// A file being written through the mount, or written under a
    /// temporary name and not shared yet (see `fuse/write.rs`).
    Staging {
        group: String,
        name: String,
        path: PathBuf,
    },
}

#[derive(Default)]
pub struct Nodes {
    by_ino: HashMap<u64, Node>,
    groups: HashMap<String, u64>,
    files: HashMap<(String, FileId), u64>,
    staging: HashMap<(String, String), u64>,
    next: u64,
}

impl Nodes {
    pub fn new() -> Self {
        let mut n = Nodes {
            next: ROOT + 1,
            ..Default::default()
        };
        n.by_ino.insert(ROOT, Node::Root);
        n
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.by_ino.get(&ino)
    }

    fn alloc(&mut self, node: Node) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(ino, node);
        ino
    }

    pub fn group(&mut self, name: &str) -> u64 {
        if let Some(&ino) = self.groups.get(name) {
            return ino;
        }
        let ino = self.alloc(Node::Group(name.to_string()));
        self.groups.insert(name.to_string(), ino);
        ino
    }

    /// The inode of a listed file; the entry (sizes, peers) is refreshed.
    pub fn file(&mut self, group: &str, entry: &FileEntry) -> u64 {
        let key = (group.to_string(), entry.id);
        if let Some(&ino) = self.files.get(&key) {
            self.by_ino.insert(
                ino,
                Node::File {
                    group: group.to_string(),
                    entry: entry.clone(),
                },
            );
            return ino;
        }
        let ino = self.alloc(Node::File {
            group: group.to_string(),
            entry: entry.clone(),
        });
        self.files.insert(key, ino);
        ino
    }

    pub fn add_staging(&mut self, group: &str, name: &str, path: PathBuf) -> u64 {
        let ino = self.alloc(Node::Staging {
            group: group.to_string(),
            name: name.to_string(),
            path,
        });
        self.staging
            .insert((group.to_string(), name.to_string()), ino);
        ino
    }

    pub fn staging_in(&self, group: &str) -> Vec<(String, u64)> {
        self.staging
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, n), &ino)| (n.clone(), ino))
            .collect()
    }

    pub fn find_staging(&self, group: &str, name: &str) -> Option<u64> {
        self.staging
            .get(&(group.to_string(), name.to_string()))
            .copied()
    }

    /// A file being written takes the name `to` (its inode stays).
    pub fn rename_staging(&mut self, ino: u64, to: &str) {
        if let Some(Node::Staging { group, name, .. }) = self.by_ino.get_mut(&ino) {
            self.staging.remove(&(group.clone(), name.clone()));
            *name = to.to_string();
            self.staging.insert((group.clone(), to.to_string()), ino);
        }
    }

    /// A shared file was renamed: the same inode is now the file `entry`
    /// (a new id), so names the kernel cached keep working.
    pub fn rename_file(&mut self, ino: u64, group: &str, entry: FileEntry) {
        if let Some(Node::File { entry: old, .. }) = self.by_ino.get(&ino) {
            self.files.remove(&(group.to_string(), old.id));
        }
        self.files.insert((group.to_string(), entry.id), ino);
        self.by_ino.insert(
            ino,
            Node::File {
                group: group.to_string(),
                entry,
            },
        );
    }

    /// A written file became a shared one: same inode, now a file.
    pub fn promote(&mut self, ino: u64, group: &str, entry: FileEntry) {
        if let Some(Node::Staging { name, .. }) = self.by_ino.get(&ino) {
            self.staging.remove(&(group.to_string(), name.clone()));
        }
        self.files.insert((group.to_string(), entry.id), ino);
        self.by_ino.insert(
            ino,
            Node::File {
                group: group.to_string(),
                entry,
            },
        );
    }

    /// A write that was never shared.
    pub fn drop_staging(&mut self, ino: u64) {
        if let Some(Node::Staging { group, name, .. }) = self.by_ino.remove(&ino) {
            self.staging.remove(&(group, name));
        }
    }
}
