//! Tests of deciding changes against the state.

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

/// `user` asks to join alice's group "g" and alice accepts.
fn admit(st: &mut State, user: &str) {
    run(
        st,
        Change::JoinGroup {
            quota: u32::MAX,
            user: s(user),
            group: s("g"),
        },
    )
    .unwrap();
    run(
        st,
        Change::AcceptRequest {
            owner: s("alice"),
            group: s("g"),
            user: s(user),
        },
    )
    .unwrap();
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
        metadata_quota: u64::MAX,
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
        admit(&mut st, u);
    }
    let share = |u: &str, m: FileMeta| Change::ShareFile {
        quota: u32::MAX,
        metadata_quota: u64::MAX,
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
        metadata_quota: u64::MAX,
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
    admit(&mut st, "bob");
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
            metadata_quota: u64::MAX,
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
        quota: u32::MAX,
    };
    let c = Change::CreateGroup {
        quota: u32::MAX,
        user: s("x"),
        group: s("x"),
    };
    assert_eq!(a.key(), b.key());
    assert_ne!(a.key(), c.key());
}

fn share_in(group: &str, user: &str, m: FileMeta, metadata_quota: u64) -> Change {
    Change::ShareFile {
        user: s(user),
        group: s(group),
        meta: m,
        quota: u32::MAX,
        metadata_quota,
    }
}

/// `n` pieces of invented hashes under `name`.
fn pieces(name: &str, n: usize) -> FileMeta {
    FileMeta {
        name: s(name),
        size: n as u64 * PIECE_LEN,
        piece_len: PIECE_LEN,
        hashes: (0..n)
            .map(|i| PieceHash::of(format!("{name}{i}").as_bytes()))
            .collect(),
    }
}

#[test]
fn metadata_is_capped_per_user_over_all_groups() {
    let mut st = setup();
    for g in ["h", "k"] {
        let create = Change::CreateGroup {
            quota: u32::MAX,
            user: s("alice"),
            group: s(g),
        };
        run(&mut st, create).unwrap();
    }
    // 100 pieces and a one-byte name: 3201 bytes each.
    let quota = 3 * 3201;
    for (g, f) in [("g", "a"), ("h", "b"), ("k", "c")] {
        assert_eq!(
            run(&mut st, share_in(g, "alice", pieces(f, 100), quota)),
            Ok(1)
        );
    }
    assert_eq!(st.metadata_of("alice"), quota);
    let Err(ErrorCode::LimitReached { limit, message }) =
        run(&mut st, share_in("g", "alice", pieces("d", 1), quota))
    else {
        panic!("a fourth file must be refused");
    };
    assert_eq!(limit, fileshare_protocol::Limit::MetadataPerUser);
    assert!(message.contains("--max-metadata-per-user"), "{message}");
    // Replacing one's own file counts only the difference.
    let replace = Change::ReplaceShare {
        user: s("alice"),
        group: s("h"),
        meta: pieces("b", 99),
        quota: u32::MAX,
        metadata_quota: quota,
    };
    assert_eq!(run(&mut st, replace), Ok(1));
    assert_eq!(st.metadata_of("alice"), quota - 32);
    // Stopping a share frees its bytes.
    let stop = Change::StopShare {
        user: s("alice"),
        group: s("k"),
        name: s("c"),
    };
    assert_eq!(run(&mut st, stop), Ok(1));
    assert_eq!(
        run(&mut st, share_in("k", "alice", pieces("d", 1), quota)),
        Ok(1)
    );
}

#[test]
fn a_files_metadata_moves_with_its_sharer() {
    let mut st = setup();
    admit(&mut st, "bob");
    let m = pieces("a", 10);
    let bytes = crate::state::metadata_len(&m);
    run(&mut st, share_in("g", "alice", m.clone(), u64::MAX)).unwrap();
    run(&mut st, share_in("g", "bob", m, u64::MAX)).unwrap();
    assert_eq!((st.metadata_of("alice"), st.metadata_of("bob")), (bytes, 0));
    let leave = Change::LeaveGroup {
        user: s("alice"),
        group: s("g"),
    };
    run(&mut st, leave).unwrap();
    assert_eq!((st.metadata_of("alice"), st.metadata_of("bob")), (0, bytes));
    let stop = Change::StopShare {
        user: s("bob"),
        group: s("g"),
        name: s("a"),
    };
    run(&mut st, stop).unwrap();
    assert_eq!(st.metadata_of("bob"), 0);
}

#[test]
fn sessions_are_capped_per_user() {
    let mut st = setup();
    let open = |hash: u8, now: u64| Change::OpenSession {
        token_hash: [hash; 32],
        user: s("alice"),
        now_unix_ms: now,
        expires_unix_ms: now + 1000,
        quota: 2,
    };
    assert_eq!(run(&mut st, open(1, 0)), Ok(1));
    assert_eq!(run(&mut st, open(2, 0)), Ok(1));
    let Err(ErrorCode::LimitReached { limit, message }) = run(&mut st, open(3, 0)) else {
        panic!("a third session must be refused");
    };
    assert_eq!(limit, fileshare_protocol::Limit::SessionsPerUser);
    assert!(message.contains("--max-sessions-per-user 2"), "{message}");
    run(
        &mut st,
        Change::CloseSession {
            token_hash: [1; 32],
        },
    )
    .unwrap();
    assert_eq!(run(&mut st, open(3, 0)), Ok(1));
    // Expired sessions do not count.
    assert_eq!(run(&mut st, open(4, 1000)), Ok(1));
    assert_eq!(st.session_count("alice", 1000), 1);
}

#[test]
fn group_and_file_quotas_count_only_the_users_own() {
    let mut st = setup();
    let create = |user: &str, group: &str| Change::CreateGroup {
        user: s(user),
        group: s(group),
        quota: 2,
    };
    // Bob joins alice's group: a member of one group, owner of none.
    admit(&mut st, "bob");
    assert_eq!(run(&mut st, create("bob", "b1")), Ok(1));
    // A member of two groups, owner of one: under the quota of two.
    assert_eq!(run(&mut st, create("bob", "b2")), Ok(1));
    let Err(ErrorCode::LimitReached { limit, message }) = run(&mut st, create("bob", "b3")) else {
        panic!("a third owned group must be refused");
    };
    assert_eq!(limit, fileshare_protocol::Limit::GroupsPerUser);
    assert!(message.contains("bob owns 2 groups"), "{message}");

    let share = |user: &str, name: &str| Change::ShareFile {
        user: s(user),
        group: s("g"),
        meta: meta(name, name.as_bytes()),
        quota: 2,
        metadata_quota: u64::MAX,
    };
    assert_eq!(run(&mut st, share("alice", "a1")), Ok(1));
    assert_eq!(run(&mut st, share("alice", "a2")), Ok(1));
    // Alice's files do not count against bob's quota in the group.
    assert_eq!(run(&mut st, share("bob", "b1")), Ok(1));
    assert_eq!(run(&mut st, share("bob", "b2")), Ok(1));
    let Err(ErrorCode::LimitReached { limit, .. }) = run(&mut st, share("bob", "b3")) else {
        panic!("a third file of bob's in the group must be refused");
    };
    assert_eq!(limit, fileshare_protocol::Limit::FilesPerUser);
}
