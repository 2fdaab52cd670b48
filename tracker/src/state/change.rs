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
use crate::state::State;
use fileshare_protocol::ids::FileMeta;
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
    OpenSession {
        token_hash: TokenHash,
        user: String,
        now_unix_ms: u64,
        expires_unix_ms: u64,
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
    /// (`--max-files-per-user`).
    ShareFile {
        user: String,
        group: String,
        meta: FileMeta,
        quota: u32,
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
    /// `quota` as for `ShareFile`.
    ReplaceShare {
        user: String,
        group: String,
        meta: FileMeta,
        quota: u32,
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
        )
    }

    pub fn key(&self) -> Key {
        match self {
            Change::CreateUser { user, .. } | Change::OpenSession { user, .. } => {
                Key::User(user.clone())
            }
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
        } => {
            if state.user(&user).is_none() {
                return Err(ErrorCode::WrongPassword);
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
            let owned = (state.groups_of(&user))
                .filter(|(_, g)| g.owner == user)
                .count();
            if owned >= quota as usize {
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
        } => {
            let g = group_of(&group)?;
            if !g.is_member(&user) {
                return Err(ErrorCode::NotMember(group));
            }
            if g.file(&meta.name).is_none() {
                check_files_quota(g, &group, &user, quota)?;
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
        Change::ReplaceShare {
            user,
            group,
            meta,
            quota,
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
                Some(_) => {
                    check_replace(g, &group, &user, &meta)?;
                    Record::ShareReplaced { group, meta, user }
                }
                None => Record::FileShared { group, meta, user },
            }
        }
    };
    Ok(vec![rec])
}

/// Refuses a new file name in `g` once `user` shared `quota` files there.
fn check_files_quota(
    g: &crate::state::Group,
    group: &str,
    user: &str,
    quota: u32,
) -> Result<(), ErrorCode> {
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
mod tests {
    use super::*;
    use fileshare_protocol::{PieceHash, PIECE_LEN};

    fn s(x: &str) -> String {
        x.to_string()
    }

    /// Decides and applies, as the writer does for a batch of one.
    fn run(st: &mut State, c: Change) -> Result<usize, ErrorCode> {
        let recs = decide(st, c)?;
        for r in &recs {
            st.apply(r);
        }
        Ok(recs.len())
    }

    fn meta(name: &str, content: &[u8]) -> FileMeta {
        FileMeta {
            name: s(name),
            size: content.len() as u64,
            piece_len: PIECE_LEN,
            hashes: vec![PieceHash::of(content)],
        }
    }

    fn setup() -> State {
        let mut st = State::default();
        for u in ["alice", "bob", "carol"] {
            run(
                &mut st,
                Change::CreateUser {
                    user: s(u),
                    phc: s("x"),
                },
            )
            .unwrap();
        }
        run(
            &mut st,
            Change::CreateGroup {
                quota: u32::MAX,
                user: s("alice"),
                group: s("g"),
            },
        )
        .unwrap();
        st
    }

    #[test]
    fn duplicates_are_refused() {
        let mut st = setup();
        let e = run(
            &mut st,
            Change::CreateUser {
                user: s("bob"),
                phc: s("y"),
            },
        );
        assert_eq!(e, Err(ErrorCode::UserExists(s("bob"))));
        let e = run(
            &mut st,
            Change::CreateGroup {
                quota: u32::MAX,
                user: s("bob"),
                group: s("g"),
            },
        );
        assert_eq!(e, Err(ErrorCode::GroupExists(s("g"))));
    }

    #[test]
    fn join_accept_reject_flow() {
        let mut st = setup();
        let join = |u: &str| Change::JoinGroup {
            quota: u32::MAX,
            user: s(u),
            group: s("g"),
        };
        assert_eq!(run(&mut st, join("bob")), Ok(1));
        assert_eq!(
            run(&mut st, join("bob")),
            Ok(0),
            "a repeated join is a no-op"
        );
        assert_eq!(
            run(&mut st, join("alice")),
            Err(ErrorCode::AlreadyMember(s("g")))
        );
        assert_eq!(run(&mut st, join("carol")), Ok(1));
        let accept = |owner: &str, u: &str| Change::AcceptRequest {
            owner: s(owner),
            group: s("g"),
            user: s(u),
        };
        assert_eq!(
            run(&mut st, accept("bob", "carol")),
            Err(ErrorCode::NotOwner(s("g")))
        );
        assert_eq!(run(&mut st, accept("alice", "bob")), Ok(1));
        assert_eq!(
            run(&mut st, accept("alice", "bob")),
            Err(ErrorCode::NoSuchRequest {
                group: s("g"),
                user: s("bob")
            })
        );
        let reject = Change::RejectRequest {
            owner: s("alice"),
            group: s("g"),
            user: s("carol"),
        };
        assert_eq!(run(&mut st, reject), Ok(1));
        let g = st.group("g").unwrap();
        assert!(g.is_member("bob") && !g.is_member("carol") && !g.is_pending("carol"));
        assert_eq!(
            run(
                &mut st,
                Change::JoinGroup {
                    quota: u32::MAX,
                    user: s("bob"),
                    group: s("nope")
                }
            ),
            Err(ErrorCode::NoSuchGroup(s("nope")))
        );
    }

    #[test]
    fn sharing_rules() {
        let mut st = setup();
        let share = |u: &str, m: FileMeta| Change::ShareFile {
            quota: u32::MAX,
            user: s(u),
            group: s("g"),
            meta: m,
        };
        assert_eq!(
            run(&mut st, share("bob", meta("a", b"1"))),
            Err(ErrorCode::NotMember(s("g")))
        );
        assert_eq!(run(&mut st, share("alice", meta("a", b"1"))), Ok(1));
        assert_eq!(run(&mut st, share("alice", meta("a", b"1"))), Ok(0));
        assert_eq!(
            run(&mut st, share("alice", meta("a", b"2"))),
            Err(ErrorCode::NameTaken {
                group: s("g"),
                name: s("a")
            })
        );
        let stop = |u: &str, n: &str| Change::StopShare {
            user: s(u),
            group: s("g"),
            name: s(n),
        };
        assert_eq!(
            run(&mut st, stop("alice", "zzz")),
            Err(ErrorCode::NoSuchFile {
                group: s("g"),
                name: s("zzz")
            })
        );
        assert_eq!(run(&mut st, stop("alice", "a")), Ok(1));
        assert!(st.group("g").unwrap().file("a").is_none());
    }

    #[test]
    fn renaming_moves_the_callers_holding_in_one_record() {
        let mut st = setup();
        for u in ["bob", "carol"] {
            run(
                &mut st,
                Change::JoinGroup {
                    quota: u32::MAX,
                    user: s(u),
                    group: s("g"),
                },
            )
            .unwrap();
            run(
                &mut st,
                Change::AcceptRequest {
                    owner: s("alice"),
                    group: s("g"),
                    user: s(u),
                },
            )
            .unwrap();
        }
        let share = |u: &str, m: FileMeta| Change::ShareFile {
            quota: u32::MAX,
            user: s(u),
            group: s("g"),
            meta: m,
        };
        let rename = |u: &str, from: &str, to: &str| Change::RenameShare {
            user: s(u),
            group: s("g"),
            from: s(from),
            to: s(to),
        };
        run(&mut st, share("alice", meta("a", b"1"))).unwrap();
        run(&mut st, share("alice", meta("mine", b"2"))).unwrap();
        run(&mut st, share("bob", meta("theirs", b"3"))).unwrap();
        assert_eq!(
            run(&mut st, rename("bob", "a", "b")),
            Err(ErrorCode::NotSharer {
                group: s("g"),
                name: s("a")
            }),
            "only the sharer renames"
        );
        assert_eq!(
            run(&mut st, rename("alice", "a", "theirs")),
            Err(ErrorCode::NameTaken {
                group: s("g"),
                name: s("theirs")
            }),
            "another member's file is never replaced"
        );
        assert_eq!(run(&mut st, rename("alice", "a", "b")), Ok(1));
        let g = st.group("g").unwrap();
        assert!(g.file("a").is_none());
        let b = g.file("b").unwrap();
        assert_eq!(b.id, meta("b", b"1").id());
        assert_eq!(b.meta.hashes, meta("a", b"1").hashes);
        assert_eq!(run(&mut st, rename("alice", "a", "b")), Ok(0), "repeated");
        // Onto the caller's own file: replaced.
        assert_eq!(run(&mut st, rename("alice", "b", "mine")), Ok(1));
        let g = st.group("g").unwrap();
        assert!(g.file("b").is_none());
        assert_eq!(g.file("mine").unwrap().id, meta("mine", b"1").id());
        assert!(st
            .groups_with_file(&meta("mine", b"2").id())
            .next()
            .is_none());
        // Readers who hold it too (they seed it) neither stop the rename
        // nor keep the old name listed; they are not sharers.
        run(&mut st, share("carol", meta("mine", b"1"))).unwrap();
        assert_eq!(
            run(&mut st, rename("carol", "mine", "c")),
            Err(ErrorCode::NotSharer {
                group: s("g"),
                name: s("mine")
            })
        );
        assert_eq!(run(&mut st, rename("alice", "mine", "c")), Ok(1));
        let g = st.group("g").unwrap();
        assert!(g.file("mine").is_none());
        assert_eq!(g.file("c").unwrap().sharer, "alice");
        // When the sharer stops, a remaining holder takes over.
        run(&mut st, share("carol", meta("c", b"1"))).unwrap();
        run(
            &mut st,
            Change::StopShare {
                user: s("alice"),
                group: s("g"),
                name: s("c"),
            },
        )
        .unwrap();
        assert_eq!(st.group("g").unwrap().file("c").unwrap().sharer, "carol");
        assert_eq!(run(&mut st, rename("carol", "c", "d")), Ok(1));
    }

    #[test]
    fn replacing_a_share_needs_the_caller_to_have_shared_it() {
        let mut st = setup();
        let replace = |u: &str, m: FileMeta| Change::ReplaceShare {
            quota: u32::MAX,
            user: s(u),
            group: s("g"),
            meta: m,
        };
        assert_eq!(run(&mut st, replace("alice", meta("a", b"1"))), Ok(1));
        assert_eq!(run(&mut st, replace("alice", meta("a", b"1"))), Ok(0));
        assert_eq!(run(&mut st, replace("alice", meta("a", b"2"))), Ok(1));
        assert_eq!(
            st.group("g").unwrap().file("a").unwrap().id,
            meta("a", b"2").id()
        );
        run(
            &mut st,
            Change::JoinGroup {
                quota: u32::MAX,
                user: s("bob"),
                group: s("g"),
            },
        )
        .unwrap();
        run(
            &mut st,
            Change::AcceptRequest {
                owner: s("alice"),
                group: s("g"),
                user: s("bob"),
            },
        )
        .unwrap();
        assert_eq!(
            run(&mut st, replace("bob", meta("a", b"3"))),
            Err(ErrorCode::NameTaken {
                group: s("g"),
                name: s("a")
            })
        );
    }

    #[test]
    fn leaving_needs_membership_or_a_request() {
        let mut st = setup();
        let leave = |u: &str| Change::LeaveGroup {
            user: s(u),
            group: s("g"),
        };
        assert_eq!(
            run(&mut st, leave("bob")),
            Err(ErrorCode::NotMember(s("g")))
        );
        run(
            &mut st,
            Change::JoinGroup {
                quota: u32::MAX,
                user: s("bob"),
                group: s("g"),
            },
        )
        .unwrap();
        assert_eq!(run(&mut st, leave("bob")), Ok(1));
        assert!(!st.group("g").unwrap().is_pending("bob"));
        assert_eq!(run(&mut st, leave("alice")), Ok(1));
        assert!(st.group("g").is_none());
    }

    #[test]
    fn only_the_owner_removes_and_only_other_members() {
        let mut st = setup();
        for u in ["bob", "carol"] {
            run(
                &mut st,
                Change::JoinGroup {
                    quota: u32::MAX,
                    user: s(u),
                    group: s("g"),
                },
            )
            .unwrap();
        }
        run(
            &mut st,
            Change::AcceptRequest {
                owner: s("alice"),
                group: s("g"),
                user: s("bob"),
            },
        )
        .unwrap();
        run(
            &mut st,
            Change::ShareFile {
                quota: u32::MAX,
                user: s("bob"),
                group: s("g"),
                meta: meta("b", b"1"),
            },
        )
        .unwrap();
        let remove = |owner: &str, u: &str| Change::RemoveMember {
            owner: s(owner),
            group: s("g"),
            user: s(u),
        };
        assert_eq!(
            run(&mut st, remove("bob", "alice")),
            Err(ErrorCode::NotOwner(s("g")))
        );
        assert_eq!(
            run(&mut st, remove("alice", "alice")),
            Err(ErrorCode::OwnerCannotBeRemoved(s("g")))
        );
        assert_eq!(
            run(&mut st, remove("alice", "carol")),
            Err(ErrorCode::NoSuchMember {
                group: s("g"),
                user: s("carol")
            }),
            "a pending request is not membership"
        );
        assert_eq!(run(&mut st, remove("alice", "bob")), Ok(1));
        let g = st.group("g").unwrap();
        assert!(!g.is_member("bob") && g.is_pending("carol"));
        assert!(g.file("b").is_none(), "bob's shares went with him");
        assert!(st.groups_of("bob").next().is_none());
        assert_eq!(
            run(&mut st, remove("alice", "bob")),
            Err(ErrorCode::NoSuchMember {
                group: s("g"),
                user: s("bob")
            })
        );
    }

    #[test]
    fn keys_separate_independent_changes() {
        let a = Change::CreateUser {
            user: s("x"),
            phc: s(""),
        };
        let b = Change::OpenSession {
            token_hash: [0; 32],
            user: s("x"),
            now_unix_ms: 0,
            expires_unix_ms: 1,
        };
        let c = Change::CreateGroup {
            quota: u32::MAX,
            user: s("x"),
            group: s("x"),
        };
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
    }
}
