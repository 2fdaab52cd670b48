//! The durable state: a pure function of the record sequence.
//!
//! [`State::apply`] is the only mutator. It reads no clock and no randomness
//! and never fails: a record that does not fit the state (which deciding
//! prevents) is ignored, so every tracker that replays the same records ends
//! in the same state. Everything else here is a read-only query.
//!
//! This folder holds the durable state and does no I/O:
//! - [`records`]: the durable record type, what the log holds.
//! - this module: the state and [`State::apply`], its only mutator.
//! - [`change`]: deciding a change into records against the state.
//!
//! The log on disk is openraft's ([`crate::consensus`]).

pub mod change;
pub mod records;

use crate::state::records::{Record, TokenHash};
use fileshare_protocol::ids::{FileId, FileMeta};
use fileshare_protocol::messages::tracker::{Notice, MAX_NOTICES};
use fileshare_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// argon2id PHC string.
    pub phc: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub user: String,
    pub expires_unix_ms: u64,
}

/// One file name in one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedFile {
    pub id: FileId,
    pub meta: Arc<FileMeta>,
    /// Users sharing it. Invariant: never empty (the file is removed with its
    /// last holder), and every holder is a member of the group.
    pub holders: BTreeSet<String>,
    /// Who shared it under this name: the one member who may rename it or
    /// save another file over it. Readers who finish it become holders (they
    /// seed it), not sharers. Invariant: one of `holders`; when the sharer
    /// stops holding it, the first remaining holder by name takes over.
    pub sharer: String,
}

impl SharedFile {
    /// `user` stops holding it; false if no holder is left.
    fn drop_holder(&mut self, user: &str) -> bool {
        self.holders.remove(user);
        if self.sharer == user {
            if let Some(next) = self.holders.first() {
                self.sharer = next.clone();
            }
        }
        !self.holders.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    /// Its creation id: unique over the life of the cluster, and larger for
    /// a group created later, so a group deleted and created again under
    /// its name is told apart from the one before (tickets carry it).
    pub id: u64,
    /// Invariant: a key of `members`.
    pub owner: String,
    /// Member -> join sequence number; the smallest is the longest-standing
    /// member. Invariant: never empty (an empty group is deleted).
    members: BTreeMap<String, u64>,
    /// Pending requests -> request sequence number. Invariant: disjoint
    /// from `members`.
    requests: BTreeMap<String, u64>,
    /// By file name.
    files: BTreeMap<String, SharedFile>,
}

impl Group {
    pub fn is_member(&self, user: &str) -> bool {
        self.members.contains_key(user)
    }

    pub fn is_pending(&self, user: &str) -> bool {
        self.requests.contains_key(user)
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Join requests waiting.
    pub fn pending_count(&self) -> usize {
        self.requests.len()
    }

    /// Pending requests, oldest first.
    pub fn requests(&self) -> Vec<String> {
        let mut v: Vec<_> = self.requests.iter().collect();
        v.sort_by_key(|(_, seq)| **seq);
        v.into_iter().map(|(u, _)| u.clone()).collect()
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn files(&self) -> impl Iterator<Item = &SharedFile> {
        self.files.values()
    }

    pub fn file(&self, name: &str) -> Option<&SharedFile> {
        self.files.get(name)
    }
}

/// Serialized whole, it is a snapshot of the replicated log.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Invariant: the number of records applied, which is also the log index
    /// of the last one (indexes start at 1).
    applied: u64,
    /// The Ed25519 seed of the ticket key, set by the first record.
    ticket_seed: Option<[u8; 32]>,
    users: HashMap<String, User>,
    sessions: HashMap<TokenHash, Session>,
    /// Prune expired sessions when the map reaches this size, so the work is
    /// amortized and the same on every replay.
    prune_sessions_at: usize,
    groups: BTreeMap<String, Group>,
    /// User -> the groups they are a member of. Invariant: mirrors
    /// `Group::members`.
    memberships: HashMap<String, BTreeSet<String>>,
    /// File id -> the groups listing it. Invariant: mirrors `Group::files`.
    file_groups: HashMap<FileId, BTreeSet<String>>,
    /// User -> bytes of the metadata of the files they are the sharer of,
    /// over all groups ([`metadata_len`]). Invariant: mirrors
    /// `SharedFile::sharer`; no zero entries.
    metadata: HashMap<String, u64>,
    /// User -> their sessions. Invariant: mirrors `sessions`.
    sessions_of: HashMap<String, HashSet<TokenHash>>,
    /// Source of join and request sequence numbers.
    seq: u64,
    /// The answers to clients' recent writes, by (client, write sequence
    /// number), so a write sent again after a failover is answered as the
    /// first time and not applied twice. Invariant: the keys of
    /// `answer_order`, which holds at most [`MAX_ANSWERS`], oldest first.
    answers: HashMap<(u64, u64), Result<(), ErrorCode>>,
    answer_order: VecDeque<(u64, u64)>,
    /// User -> what they are to be told on their next command, by number,
    /// oldest first. Invariant: no empty entries, at most [`MAX_NOTICES`]
    /// each (the newest).
    notices: HashMap<String, VecDeque<(u64, Notice)>>,
    /// The number of the last notice.
    notice_seq: u64,
}

/// Answers kept: far more writes than clients have in flight while a
/// failover lasts.
pub const MAX_ANSWERS: usize = 100_000;

const MIN_SESSION_PRUNE: usize = 1024;

/// What a file's metadata weighs in a tracker's memory and log, as the
/// per-user quota counts it: its piece hashes and its name.
pub fn metadata_len(meta: &FileMeta) -> u64 {
    (meta.hashes.len() as u64 * 32).saturating_add(meta.name.len() as u64)
}

/// Counts `bytes` of metadata for `user` (`add`) or no longer.
fn charge(metadata: &mut HashMap<String, u64>, user: &str, bytes: u64, add: bool) {
    let used = metadata.entry(user.to_string()).or_insert(0);
    *used = if add {
        used.saturating_add(bytes)
    } else {
        used.saturating_sub(bytes)
    };
    if *used == 0 {
        metadata.remove(user);
    }
}

/// After `f` lost a holder: moves its metadata from `before`, its sharer
/// until then, to its sharer now, or drops it if `f` is gone.
fn recharge(metadata: &mut HashMap<String, u64>, before: &str, f: Option<&SharedFile>, bytes: u64) {
    match f {
        Some(f) if f.sharer == before => {}
        Some(f) => {
            charge(metadata, before, bytes, false);
            charge(metadata, &f.sharer, bytes, true);
        }
        None => charge(metadata, before, bytes, false),
    }
}

impl State {
    /// Applies one record. Never fails; see the module doc.
    pub fn apply(&mut self, rec: &Record) {
        self.applied += 1;
        match rec {
            Record::ClusterInit { ticket_seed } => {
                self.ticket_seed.get_or_insert(*ticket_seed);
            }
            Record::UserCreated { user, phc } => {
                self.users
                    .entry(user.clone())
                    .or_insert_with(|| User { phc: phc.clone() });
            }
            Record::SessionOpened {
                token_hash,
                user,
                opened_unix_ms,
                expires_unix_ms,
            } => {
                if self.sessions.len() >= self.prune_sessions_at.max(MIN_SESSION_PRUNE) {
                    let of = &mut self.sessions_of;
                    self.sessions.retain(|hash, s| {
                        let keep = s.expires_unix_ms > *opened_unix_ms;
                        if !keep {
                            forget_session(of, &s.user, hash);
                        }
                        keep
                    });
                    self.prune_sessions_at = self.sessions.len() * 2;
                }
                let old = self.sessions.insert(
                    *token_hash,
                    Session {
                        user: user.clone(),
                        expires_unix_ms: *expires_unix_ms,
                    },
                );
                if let Some(old) = old {
                    forget_session(&mut self.sessions_of, &old.user, token_hash);
                }
                (self.sessions_of.entry(user.clone()).or_default()).insert(*token_hash);
            }
            Record::SessionClosed { token_hash } => {
                if let Some(s) = self.sessions.remove(token_hash) {
                    forget_session(&mut self.sessions_of, &s.user, token_hash);
                }
            }
            Record::GroupCreated { group, owner } => {
                if self.groups.contains_key(group) {
                    return;
                }
                self.seq += 1;
                let g = Group {
                    id: self.seq,
                    owner: owner.clone(),
                    members: BTreeMap::from([(owner.clone(), self.seq)]),
                    requests: BTreeMap::new(),
                    files: BTreeMap::new(),
                };
                self.groups.insert(group.clone(), g);
                self.memberships
                    .entry(owner.clone())
                    .or_default()
                    .insert(group.clone());
            }
            Record::JoinRequested { group, user } => {
                self.seq += 1;
                let seq = self.seq;
                if let Some(g) = self.groups.get_mut(group) {
                    if !g.is_member(user) {
                        g.requests.entry(user.clone()).or_insert(seq);
                    }
                }
            }
            Record::RequestAccepted { group, user } => {
                self.seq += 1;
                let seq = self.seq;
                if let Some(g) = self.groups.get_mut(group) {
                    if g.requests.remove(user).is_some() {
                        g.members.insert(user.clone(), seq);
                        self.memberships
                            .entry(user.clone())
                            .or_default()
                            .insert(group.clone());
                    }
                }
            }
            Record::RequestRejected { group, user } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.requests.remove(user);
                }
            }
            Record::MemberLeft { group, user } | Record::MemberRemoved { group, user } => {
                self.member_left(group, user)
            }
            Record::FileShared { group, meta, user } => self.hold(group, meta, user, false),
            // Views order the log; they change nothing here.
            Record::View(_) => {}
            Record::Answered {
                client,
                seq,
                answer,
            } => {
                let key = (*client, *seq);
                if self.answers.insert(key, answer.clone()).is_none() {
                    self.answer_order.push_back(key);
                }
                while self.answer_order.len() > MAX_ANSWERS {
                    if let Some(old) = self.answer_order.pop_front() {
                        self.answers.remove(&old);
                    }
                }
            }
            Record::ShareStopped { group, name, user } => self.release(group, name, user),
            Record::ShareRenamed {
                group,
                from,
                to,
                user,
            } => {
                let Some(f) = self
                    .groups
                    .get(group)
                    .and_then(|g| g.files.get(from))
                    .filter(|f| from != to && f.holders.contains(user))
                else {
                    return;
                };
                let renamed = FileMeta {
                    name: to.clone(),
                    ..(*f.meta).clone()
                };
                if f.sharer != *user || !self.may_hold(group, &renamed, user) {
                    return;
                }
                // The name moves for everyone: the file's other holders
                // hold the old id, which no name lists any more.
                if let Some(g) = self.groups.get_mut(group) {
                    if let Some(old) = g.files.remove(from) {
                        unlist_file(&mut self.file_groups, old.id, group);
                        charge(
                            &mut self.metadata,
                            &old.sharer,
                            metadata_len(&old.meta),
                            false,
                        );
                    }
                }
                self.hold(group, &renamed, user, true);
            }
            Record::ShareReplaced { group, meta, user } => {
                if self.may_hold(group, meta, user) {
                    self.hold(group, meta, user, true);
                }
            }
            Record::Noticed { user, notice } => {
                self.notice_seq += 1;
                let q = self.notices.entry(user.clone()).or_default();
                q.push_back((self.notice_seq, notice.clone()));
                while q.len() > MAX_NOTICES {
                    q.pop_front();
                }
            }
            Record::NoticesSent { user, through } => {
                if let Some(q) = self.notices.get_mut(user) {
                    q.retain(|(n, _)| n > through);
                    if q.is_empty() {
                        self.notices.remove(user);
                    }
                }
            }
        }
    }

    /// Whether `user`, a member of `group`, may hold `meta` there with
    /// `replace` (see [`State::hold`]): the name is free, is the same file,
    /// or is a file `user` shared.
    fn may_hold(&self, group: &str, meta: &FileMeta, user: &str) -> bool {
        let Some(g) = self.groups.get(group) else {
            return false;
        };
        g.is_member(user)
            && g.files
                .get(&meta.name)
                .is_none_or(|f| f.id == meta.id() || f.sharer == user)
    }

    /// `user` holds `meta` in `group`. A different file under its name
    /// stays, unless `replace`, when it gives way with all its holders
    /// (deciding checked that `user` shared it).
    fn hold(&mut self, group: &str, meta: &FileMeta, user: &str, replace: bool) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        if !g.is_member(user) {
            return;
        }
        let id = meta.id();
        if let Some(f) = g.files.get_mut(&meta.name) {
            if f.id == id {
                f.holders.insert(user.to_string());
                return;
            }
            if !replace {
                return;
            }
            let old = f.id;
            if let Some(gone) = g.files.remove(&meta.name) {
                charge(
                    &mut self.metadata,
                    &gone.sharer,
                    metadata_len(&gone.meta),
                    false,
                );
            }
            unlist_file(&mut self.file_groups, old, group);
        }
        charge(&mut self.metadata, user, metadata_len(meta), true);
        g.files.insert(
            meta.name.clone(),
            SharedFile {
                id,
                meta: Arc::new(meta.clone()),
                holders: BTreeSet::from([user.to_string()]),
                sharer: user.to_string(),
            },
        );
        self.file_groups
            .entry(id)
            .or_default()
            .insert(group.to_string());
    }

    /// `user` stops holding the file `name` of `group`; it goes with its
    /// last holder.
    fn release(&mut self, group: &str, name: &str, user: &str) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let Some(f) = g.files.get_mut(name) else {
            return;
        };
        let (before, bytes) = (f.sharer.clone(), metadata_len(&f.meta));
        if !f.drop_holder(user) {
            let id = f.id;
            g.files.remove(name);
            unlist_file(&mut self.file_groups, id, group);
        }
        recharge(&mut self.metadata, &before, g.files.get(name), bytes);
    }

    /// The owner-leaves rule: ownership passes to the longest-standing
    /// remaining member; the group is deleted with its last member.
    fn member_left(&mut self, group: &str, user: &str) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.requests.remove(user);
        if g.members.remove(user).is_none() {
            return;
        }
        if let Some(set) = self.memberships.get_mut(user) {
            set.remove(group);
            if set.is_empty() {
                self.memberships.remove(user);
            }
        }
        let mut emptied = Vec::new();
        for (name, f) in g.files.iter_mut() {
            let (before, bytes) = (f.sharer.clone(), metadata_len(&f.meta));
            let held = f.drop_holder(user);
            if !held {
                emptied.push((name.clone(), f.id));
            }
            recharge(&mut self.metadata, &before, held.then_some(&*f), bytes);
        }
        for (name, id) in emptied {
            g.files.remove(&name);
            unlist_file(&mut self.file_groups, id, group);
        }
        if g.owner == user {
            match g.members.iter().min_by_key(|(_, seq)| **seq) {
                Some((next, _)) => g.owner = next.clone(),
                None => {
                    // Its files went with their last holder above.
                    self.groups.remove(group);
                }
            }
        }
    }

    /// The answer already given to write `seq` of `client`, if it was
    /// applied.
    pub fn answer(&self, client: u64, seq: u64) -> Option<&Result<(), ErrorCode>> {
        self.answers.get(&(client, seq))
    }

    /// What `user` is to be told on their next command, by number, oldest
    /// first.
    pub fn notices(&self, user: &str) -> impl Iterator<Item = &(u64, Notice)> {
        self.notices.get(user).into_iter().flatten()
    }

    /// Records applied so far; the index of the last one.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Forgets that the records after `index` were applied. Only sound when
    /// every one of them is a view, which changes nothing else: replication
    /// replaces views that a split cluster recorded on the losing side.
    pub fn rewind_views(&mut self, index: u64) {
        self.applied = self.applied.min(index);
    }

    /// The seed of the ticket signing key, once the cluster's first record
    /// is applied. It never changes after that.
    pub fn ticket_seed(&self) -> Option<&[u8; 32]> {
        self.ticket_seed.as_ref()
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Bytes of metadata of the files `user` is the sharer of, over all
    /// groups.
    pub fn metadata_of(&self, user: &str) -> u64 {
        self.metadata.get(user).copied().unwrap_or(0)
    }

    /// Sessions of `user` that have not expired at `now_unix_ms`.
    /// Sessions of `user` on record, expired ones included: an upper bound
    /// of [`State::session_count`] found without walking them.
    pub fn sessions_on_record(&self, user: &str) -> usize {
        self.sessions_of.get(user).map_or(0, HashSet::len)
    }

    pub fn session_count(&self, user: &str, now_unix_ms: u64) -> usize {
        (self.sessions_of.get(user).into_iter().flatten())
            .filter(|h| self.session(h, now_unix_ms).is_some())
            .count()
    }

    /// The session's user if it exists and has not expired at `now_unix_ms`.
    pub fn session(&self, token_hash: &TokenHash, now_unix_ms: u64) -> Option<&Session> {
        self.sessions
            .get(token_hash)
            .filter(|s| s.expires_unix_ms > now_unix_ms)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    /// The group, or the error a caller gets for a missing one.
    pub fn existing_group(&self, name: &str) -> Result<&Group, ErrorCode> {
        self.group(name)
            .ok_or_else(|| ErrorCode::NoSuchGroup(name.to_string()))
    }

    /// The group, if `user` is a member of it.
    pub fn member_group(&self, name: &str, user: &str) -> Result<&Group, ErrorCode> {
        let g = self.existing_group(name)?;
        if !g.is_member(user) {
            return Err(ErrorCode::NotMember(name.to_string()));
        }
        Ok(g)
    }

    /// The group, if `user` owns it.
    pub fn owned_group(&self, name: &str, user: &str) -> Result<&Group, ErrorCode> {
        let g = self.existing_group(name)?;
        if g.owner != user {
            return Err(ErrorCode::NotOwner(name.to_string()));
        }
        Ok(g)
    }

    /// Every group, by name.
    pub fn groups(&self) -> impl Iterator<Item = (&String, &Group)> {
        self.groups.iter()
    }

    /// How many groups `user` is a member of.
    pub fn membership_count(&self, user: &str) -> usize {
        self.memberships.get(user).map_or(0, BTreeSet::len)
    }

    /// The groups `user` is a member of, by name.
    pub fn groups_of(&self, user: &str) -> impl Iterator<Item = (&String, &Group)> {
        self.memberships
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|name| self.groups.get_key_value(name))
    }

    /// The file with id `id` as `user` may see it: in some group they belong
    /// to.
    pub fn visible_file(&self, user: &str, id: &FileId) -> Option<&SharedFile> {
        self.file_groups
            .get(id)?
            .iter()
            .filter_map(|g| self.groups.get(g))
            .filter(|g| g.is_member(user))
            .find_map(|g| g.files.values().find(|f| f.id == *id))
    }

    /// The groups listing file `id`.
    pub fn groups_with_file(&self, id: &FileId) -> impl Iterator<Item = (&String, &Group)> {
        self.file_groups
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|g| self.groups.get_key_value(g))
    }
}

fn forget_session(of: &mut HashMap<String, HashSet<TokenHash>>, user: &str, hash: &TokenHash) {
    if let Some(set) = of.get_mut(user) {
        set.remove(hash);
        if set.is_empty() {
            of.remove(user);
        }
    }
}

fn unlist_file(file_groups: &mut HashMap<FileId, BTreeSet<String>>, id: FileId, group: &str) {
    if let Some(set) = file_groups.get_mut(&id) {
        set.remove(group);
        if set.is_empty() {
            file_groups.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests;
