use super::*;
use fileshare_protocol::{PieceHash, PIECE_LEN};

fn meta(name: &str, content: &[u8]) -> FileMeta {
    FileMeta {
        name: name.into(),
        size: content.len() as u64,
        piece_len: PIECE_LEN,
        hashes: vec![PieceHash::of(content)],
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

fn replay(records: &[Record]) -> State {
    let mut st = State::default();
    for r in records {
        st.apply(r);
    }
    st
}

fn group_of_three() -> Vec<Record> {
    let mut v = vec![Record::GroupCreated {
        group: s("g"),
        owner: s("alice"),
    }];
    for u in ["bob", "carol"] {
        v.push(Record::JoinRequested {
            group: s("g"),
            user: s(u),
        });
        v.push(Record::RequestAccepted {
            group: s("g"),
            user: s(u),
        });
    }
    v
}

#[test]
fn owner_leaving_passes_ownership_to_the_longest_standing_member() {
    let mut recs = group_of_three();
    recs.push(Record::MemberLeft {
        group: s("g"),
        user: s("alice"),
    });
    let st = replay(&recs);
    let g = st.group("g").unwrap();
    assert_eq!(g.owner, "bob");
    assert_eq!(g.member_count(), 2);
    assert!(st.groups_of("alice").next().is_none());
}

#[test]
fn last_member_leaving_deletes_the_group_and_its_files() {
    let m = meta("a", b"x");
    let id = m.id();
    let recs = vec![
        Record::GroupCreated {
            group: s("g"),
            owner: s("alice"),
        },
        Record::FileShared {
            group: s("g"),
            meta: m,
            user: s("alice"),
        },
        Record::MemberLeft {
            group: s("g"),
            user: s("alice"),
        },
    ];
    let st = replay(&recs);
    assert!(st.group("g").is_none());
    assert!(st.groups_with_file(&id).next().is_none());
    assert_eq!(st.applied(), 3);
}

#[test]
fn a_file_lives_while_it_has_holders() {
    let m = meta("a", b"x");
    let mut recs = group_of_three();
    for u in ["alice", "bob"] {
        recs.push(Record::FileShared {
            group: s("g"),
            meta: m.clone(),
            user: s(u),
        });
    }
    let st = replay(&recs);
    assert_eq!(st.group("g").unwrap().file("a").unwrap().holders.len(), 2);
    assert!(st.visible_file("carol", &m.id()).is_some());
    assert!(st.visible_file("dave", &m.id()).is_none());

    recs.push(Record::MemberLeft {
        group: s("g"),
        user: s("bob"),
    });
    recs.push(Record::ShareStopped {
        group: s("g"),
        name: s("a"),
        user: s("alice"),
    });
    let st = replay(&recs);
    assert!(st.group("g").unwrap().file("a").is_none());
    assert!(st.visible_file("carol", &m.id()).is_none());
}

#[test]
fn records_that_do_not_fit_are_ignored() {
    let mut recs = group_of_three();
    recs.extend([
        // Not a member: no effect.
        Record::FileShared {
            group: s("g"),
            meta: meta("a", b"x"),
            user: s("mallory"),
        },
        // No such request.
        Record::RequestAccepted {
            group: s("g"),
            user: s("mallory"),
        },
        Record::MemberLeft {
            group: s("nope"),
            user: s("bob"),
        },
        Record::GroupCreated {
            group: s("g"),
            owner: s("mallory"),
        },
    ]);
    let st = replay(&recs);
    let g = st.group("g").unwrap();
    assert_eq!(g.owner, "alice");
    assert_eq!(g.member_count(), 3);
    assert!(g.file("a").is_none());
}

#[test]
fn sessions_expire_and_are_pruned_deterministically() {
    let mut recs = vec![];
    for i in 0..(MIN_SESSION_PRUNE as u64 + 10) {
        recs.push(Record::SessionOpened {
            token_hash: {
                let mut h = [0; 32];
                h[..8].copy_from_slice(&i.to_be_bytes());
                h
            },
            user: s("u"),
            opened_unix_ms: i * 10,
            expires_unix_ms: i * 10 + 15,
        });
    }
    let st = replay(&recs);
    assert!(st.sessions.len() < MIN_SESSION_PRUNE);
    let last = recs.last().unwrap();
    let Record::SessionOpened {
        token_hash,
        expires_unix_ms,
        ..
    } = last
    else {
        unreachable!()
    };
    assert!(st.session(token_hash, expires_unix_ms - 1).is_some());
    assert!(st.session(token_hash, *expires_unix_ms).is_none());
}

#[test]
fn a_group_created_again_under_its_name_has_a_new_id() {
    let mut recs = group_of_three();
    let first = replay(&recs).group("g").unwrap().id;
    for u in ["bob", "carol", "alice"] {
        recs.push(Record::MemberLeft {
            group: s("g"),
            user: s(u),
        });
    }
    recs.push(Record::GroupCreated {
        group: s("g"),
        owner: s("mallory"),
    });
    let again = replay(&recs).group("g").unwrap().id;
    assert!(again > first, "{again} after {first}");
    // The same on every replay.
    assert_eq!(replay(&recs).group("g").unwrap().id, again);
}

#[test]
fn requests_are_listed_oldest_first() {
    let mut recs = vec![Record::GroupCreated {
        group: s("g"),
        owner: s("o"),
    }];
    for u in ["zed", "amy", "kim"] {
        recs.push(Record::JoinRequested {
            group: s("g"),
            user: s(u),
        });
    }
    recs.push(Record::MemberLeft {
        group: s("g"),
        user: s("amy"),
    });
    let st = replay(&recs);
    assert_eq!(st.group("g").unwrap().requests(), vec!["zed", "kim"]);
}
