//! Deciding: what a requested change means against the current state, as
//! records to append, or a refusal.
//!
//! [`decide`] reads the state and nothing else, so it is pure and testable.
//! Callers validate what does not depend on the state (names, sessions,
//! metadata) before submitting; `decide` re-checks everything that does,
//! because the state may have moved since.
//!
//! Each change touches one [`Key`]. The writer decides a whole batch against
//! one state before applying any of it, which is only sound if no two
//! changes of a batch touch the same key: it defers the later one to the
//! next batch. `decide` of a change therefore reads only state under its own
//! key (users are never deleted, so a user's existence is stable).

use crate::state::records::{Record, TokenHash};
use crate::state::{metadata_len, State};
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::Notice;
use fileshare_protocol::{ErrorCode, Limit};
use serde::{Deserialize, Serialize};

/// A requested change. Followers send it to the leader as is (encoded with
/// the protocol codec), so only the leader decides.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Change {
    CreateUser {
        user: String,
        phc: String,
    },
    /// `quota`: sessions `user` may have open (`--max-sessions-per-user`).
    OpenSession {
        token_hash: TokenHash,
        user: String,
        now_unix_ms: u64,
        expires_unix_ms: u64,
        quota: u32,
    },
    CloseSession {
        token_hash: TokenHash,
    },
    /// `quota`: groups `user` may own (the receiving tracker's
    /// `--max-groups-per-user`).
    CreateGroup {
        user: String,
        group: String,
        quota: u32,
    },
    /// `quota`: requests that may wait in the group
    /// (`--max-pending-requests`).
    JoinGroup {
        user: String,
        group: String,
        quota: u32,
    },
    AcceptRequest {
        owner: String,
        group: String,
        user: String,
    },
    RejectRequest {
        owner: String,
        group: String,
        user: String,
    },
    LeaveGroup {
        user: String,
        group: String,
    },
    RemoveMember {
        owner: String,
        group: String,
        user: String,
    },
    /// `quota`: files `user` may have shared in the group
    /// (`--max-files-per-user`); `metadata_quota`: bytes of metadata they
    /// may have shared over all groups (`--max-metadata-per-user`).
    ShareFile {
        user: String,
        group: String,
        meta: FileMeta,
        quota: u32,
        metadata_quota: u64,
    },
    StopShare {
        user: String,
        group: String,
        name: String,
    },
    RenameShare {
        user: String,
        group: String,
        from: String,
        to: String,
    },
    /// Quotas as for `ShareFile`.
    ReplaceShare {
        user: String,
        group: String,
        meta: FileMeta,
        quota: u32,
        metadata_quota: u64,
    },
    /// `user` was sent their notices up to number `through`.
    NoticesSent {
        user: String,
        through: u64,
    },
}

/// What a change reads and writes; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    User(String),
    Session(TokenHash),
    Group(String),
}

impl Change {
    /// Whether deciding it twice has the effect of deciding it once (the
    /// second time is a no-op, not a refusal), so a follower may send it
    /// again to a new leader when the old one went away without answering.
    pub fn is_repeatable(&self) -> bool {
        matches!(
            self,
            Change::OpenSession { .. }
                | Change::CloseSession { .. }
                | Change::JoinGroup { .. }
                | Change::ShareFile { .. }
                | Change::RenameShare { .. }
                | Change::ReplaceShare { .. }
                | Change::NoticesSent { .. }
        )
    }

    pub fn key(&self) -> Key {
        match self {
            Change::CreateUser { user, .. }
            | Change::OpenSession { user, .. }
            | Change::NoticesSent { user, .. } => Key::User(user.clone()),
            Change::CloseSession { token_hash } => Key::Session(*token_hash),
            Change::CreateGroup { group, .. }
            | Change::JoinGroup { group, .. }
            | Change::AcceptRequest { group, .. }
            | Change::RejectRequest { group, .. }
            | Change::LeaveGroup { group, .. }
            | Change::RemoveMember { group, .. }
            | Change::ShareFile { group, .. }
            | Change::StopShare { group, .. }
            | Change::RenameShare { group, .. }
            | Change::ReplaceShare { group, .. } => Key::Group(group.clone()),
        }
    }
}

/// The records that carry out `change`, or why it is refused. An empty list
/// means there is nothing to do (the change is already in effect).
pub fn decide(state: &State, change: Change) -> Result<Vec<Record>, ErrorCode> {
    let group_of = |name: &str| state.existing_group(name);
    let rec = match change {
        Change::CreateUser { user, phc } => {
            if state.user(&user).is_some() {
                return Err(ErrorCode::UserExists(user));
            }
            Record::UserCreated { user, phc }
        }
        Change::OpenSession {
            token_hash,
            user,
            now_unix_ms,
            expires_unix_ms,
            quota,
        } => {
            if state.user(&user).is_none() {
                return Err(ErrorCode::WrongPassword);
            }
            // Counting the live ones walks all of the user's sessions: only
            // done when the sessions on record could reach the quota.
            let open = if state.sessions_on_record(&user) < quota as usize {
                0
            } else {
                state.session_count(&user, now_unix_ms)
            };
            if open >= quota as usize {
                return Err(ErrorCode::LimitReached {
                    limit: Limit::SessionsPerUser,
                    message: format!(
                        "{user} has {open} sessions open, the most one user may have \
                         (--max-sessions-per-user {quota}); log out of some (`fsd logout`) \
                         or wait until they expire"
                    ),
                });
            }
            Record::SessionOpened {
                token_hash,
                user,
                opened_unix_ms: now_unix_ms,
                expires_unix_ms,
            }
        }
        Change::CloseSession { token_hash } => Record::SessionClosed { token_hash },
        Change::CreateGroup { user, group, quota } => {
            if state.group(&group).is_some() {
                return Err(ErrorCode::GroupExists(group));
            }
            if let Some(owned) = groups_at_quota(state, &user, quota as usize) {
                return Err(ErrorCode::LimitReached {
                    limit: Limit::GroupsPerUser,
                    message: format!(
                        "{user} owns {owned} groups, the most one user may own \
                         (--max-groups-per-user {quota})"
                    ),
                });
            }
            Record::GroupCreated { group, owner: user }
        }
        Change::JoinGroup { user, group, quota } => {
            let g = group_of(&group)?;
            if g.is_member(&user) {
                return Err(ErrorCode::AlreadyMember(group));
            }
            if g.is_pending(&user) {
                return Ok(vec![]);
            }
            let pending = g.pending_count();
            if pending >= quota as usize {
                return Err(ErrorCode::LimitReached {
                    limit: Limit::PendingRequests,
                    message: format!(
                        "group {group} has {pending} join requests waiting, the most one \
                         group may have (--max-pending-requests {quota}); ask its owner to \
                         decide some"
                    ),
                });
            }
            Record::JoinRequested { group, user }
        }
        Change::AcceptRequest { owner, group, user } => {
            check_request(state, &owner, &group, &user)?;
            Record::RequestAccepted { group, user }
        }
        Change::RejectRequest { owner, group, user } => {
            check_request(state, &owner, &group, &user)?;
            Record::RequestRejected { group, user }
        }
        Change::LeaveGroup { user, group } => {
            let g = group_of(&group)?;
            if !g.is_member(&user) && !g.is_pending(&user) {
                return Err(ErrorCode::NotMember(group));
            }
            Record::MemberLeft { group, user }
        }
        Change::RemoveMember { owner, group, user } => {
            let g = state.owned_group(&group, &owner)?;
            if user == owner {
                return Err(ErrorCode::OwnerCannotBeRemoved(group));
            }
            if !g.is_member(&user) {
                return Err(ErrorCode::NoSuchMember { group, user });
            }
            Record::MemberRemoved { group, user }
        }
        Change::ShareFile {
            user,
            group,
            meta,
            quota,
            metadata_quota,
        } => {
            let g = group_of(&group)?;
            if !g.is_member(&user) {
                return Err(ErrorCode::NotMember(group));
            }
            if g.file(&meta.name).is_none() {
                check_files_quota(g, &group, &user, quota)?;
                check_metadata_quota(state, &user, &meta, 0, metadata_quota)?;
            }
            if let Some(f) = g.file(&meta.name) {
                if f.id != meta.id() {
                    return Err(ErrorCode::NameTaken {
                        group,
                        name: meta.name,
                    });
                }
                if f.holders.contains(&user) {
                    return Ok(vec![]);
                }
            }
            Record::FileShared { group, meta, user }
        }
        Change::StopShare { user, group, name } => {
            let g = group_of(&group)?;
            if !g.is_member(&user) {
                return Err(ErrorCode::NotMember(group));
            }
            if !g.file(&name).is_some_and(|f| f.holders.contains(&user)) {
                return Err(ErrorCode::NoSuchFile { group, name });
            }
            Record::ShareStopped { group, name, user }
        }
        Change::RenameShare {
            user,
            group,
            from,
            to,
        } => {
            let g = group_of(&group)?;
            if !g.is_member(&user) {
                return Err(ErrorCode::NotMember(group));
            }
            let Some(f) = g.file(&from) else {
                // Sent again after it took effect: nothing left to do.
                if g.file(&to).is_some_and(|t| t.holders.contains(&user)) {
                    return Ok(vec![]);
                }
                return Err(ErrorCode::NoSuchFile { group, name: from });
            };
            if f.sharer != user {
                return Err(ErrorCode::NotSharer { group, name: from });
            }
            if from == to {
                return Ok(vec![]);
            }
            let renamed = FileMeta {
                name: to.clone(),
                ..(*f.meta).clone()
            };
            check_replace(g, &group, &user, &renamed)?;
            Record::ShareRenamed {
                group,
                from,
                to,
                user,
            }
        }
        Change::NoticesSent { user, through } => {
            if !state.notices(&user).any(|(n, _)| *n <= through) {
                return Ok(vec![]);
            }
            Record::NoticesSent { user, through }
        }
        Change::ReplaceShare {
            user,
            group,
            meta,
            quota,
            metadata_quota,
        } => {
            let g = group_of(&group)?;
            if !g.is_member(&user) {
                return Err(ErrorCode::NotMember(group));
            }
            if g.file(&meta.name).is_none() {
                check_files_quota(g, &group, &user, quota)?;
            }
            match g.file(&meta.name) {
                Some(f) if f.id == meta.id() && f.holders.contains(&user) => return Ok(vec![]),
                Some(f) if f.id == meta.id() => Record::FileShared { group, meta, user },
                Some(f) => {
                    check_replace(g, &group, &user, &meta)?;
                    // The file it replaces is the caller's own (checked).
                    let freed = metadata_len(&f.meta);
                    check_metadata_quota(state, &user, &meta, freed, metadata_quota)?;
                    Record::ShareReplaced { group, meta, user }
                }
                None => {
                    check_metadata_quota(state, &user, &meta, 0, metadata_quota)?;
                    Record::FileShared { group, meta, user }
                }
            }
        }
    };
    Ok(vec![rec])
}

/// What tells the user who made `change`, acknowledged while the trackers
/// were apart, that it was refused (`why`) when decided again; `None` for
/// a change no user made (a session closing).
pub fn gave_way(change: &Change, why: ErrorCode) -> Option<Record> {
    let (user, what) = match change {
        Change::CreateUser { user, .. } => (user, "created this account".to_string()),
        Change::OpenSession { user, .. } => (user, "logged in".to_string()),
        Change::CloseSession { .. } | Change::NoticesSent { .. } => return None,
        Change::CreateGroup { user, group, .. } => (user, format!("created group {group:?}")),
        Change::JoinGroup { user, group, .. } => (user, format!("asked to join group {group:?}")),
        Change::AcceptRequest { owner, group, user } => {
            (owner, format!("accepted {user:?} into group {group:?}"))
        }
        Change::RejectRequest { owner, group, user } => (
            owner,
            format!("turned down {user:?}'s request to join {group:?}"),
        ),
        Change::LeaveGroup { user, group } => (user, format!("left group {group:?}")),
        Change::RemoveMember { owner, group, user } => {
            (owner, format!("removed {user:?} from group {group:?}"))
        }
        Change::ShareFile {
            user, group, meta, ..
        }
        | Change::ReplaceShare {
            user, group, meta, ..
        } => (user, format!("shared {:?} in group {group:?}", meta.name)),
        Change::StopShare { user, group, name } => {
            (user, format!("stopped sharing {name:?} in group {group:?}"))
        }
        Change::RenameShare {
            user,
            group,
            from,
            to,
        } => (
            user,
            format!("renamed {from:?} to {to:?} in group {group:?}"),
        ),
    };
    Some(Record::Noticed {
        user: user.clone(),
        notice: Notice::GaveWay { change: what, why },
    })
}

/// How many groups `user` owns, if `quota` or more. An owner is a member,
/// so a user in fewer groups owns fewer: the count, which looks up each of
/// their groups by name on every tracker, is made only near the quota.
fn groups_at_quota(state: &State, user: &str, quota: usize) -> Option<usize> {
    if state.membership_count(user) < quota {
        return None;
    }
    let owned = (state.groups_of(user))
        .filter(|(_, g)| g.owner == user)
        .count();
    (owned >= quota).then_some(owned)
}

/// Refuses a new file name in `g` once `user` shared `quota` files there.
fn check_files_quota(
    g: &crate::state::Group,
    group: &str,
    user: &str,
    quota: u32,
) -> Result<(), ErrorCode> {
    // Every tracker decides every write: below the quota by the group's
    // whole file count, the count of the user's own is not needed.
    if g.file_count() < quota as usize {
        return Ok(());
    }
    let shared = g.files().filter(|f| f.sharer == user).count();
    if shared >= quota as usize {
        return Err(ErrorCode::LimitReached {
            limit: Limit::FilesPerUser,
            message: format!(
                "{user} shares {shared} files in group {group}, the most one user may share \
                 in one group (--max-files-per-user {quota})"
            ),
        });
    }
    Ok(())
}

/// Refuses `meta` as a new file of `user`'s (in place of `freed` bytes of
/// theirs) once it would take their metadata over `quota` bytes.
///
/// Unlike the other checks this reads state outside the change's key (the
/// user's files in other groups), so shares of one user in different groups
/// decided in one batch are checked against the state before the batch:
/// the quota may be passed by what one batch carries.
fn check_metadata_quota(
    state: &State,
    user: &str,
    meta: &FileMeta,
    freed: u64,
    quota: u64,
) -> Result<(), ErrorCode> {
    let used = state.metadata_of(user);
    let after = used
        .saturating_sub(freed)
        .saturating_add(metadata_len(meta));
    if after > quota && after > used {
        return Err(ErrorCode::LimitReached {
            limit: Limit::MetadataPerUser,
            message: format!(
                "{user} shares files whose metadata takes {used} bytes; {} more would pass \
                 the most one user may share over all groups (--max-metadata-per-user {} MiB)",
                metadata_len(meta),
                quota >> 20
            ),
        });
    }
    Ok(())
}

/// Whether `user` may put `meta` under its name: the name is free, holds
/// the same file, or holds a file that `user` shared (then replaced, for
/// its readers too).
fn check_replace(
    g: &crate::state::Group,
    group: &str,
    user: &str,
    meta: &FileMeta,
) -> Result<(), ErrorCode> {
    match g.file(&meta.name) {
        Some(f) if f.id != meta.id() && f.sharer != user => Err(ErrorCode::NameTaken {
            group: group.to_string(),
            name: meta.name.clone(),
        }),
        _ => Ok(()),
    }
}

fn check_request(state: &State, owner: &str, group: &str, user: &str) -> Result<(), ErrorCode> {
    let g = state.owned_group(group, owner)?;
    if !g.is_pending(user) {
        return Err(ErrorCode::NoSuchRequest {
            group: group.to_string(),
            user: user.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "change_tests.rs"]
mod tests;
