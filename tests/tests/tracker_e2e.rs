//! The tracker through the real `fsd` command line and the real
//! `fileshare-tracker` binary on 127.0.0.1: accounts, groups, requests,
//! listings, and every refusal with its one-line message; and `kill -9`
//! in the middle of acknowledged writes ([`kill_9`]).

use fileshare_protocol::client::ClientError;
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::{CreateGroup, CreateUser, ShareFile};
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::{ErrorCode, PieceHash, PIECE_LEN};
use fileshare_tests::cli::Fsd;
use fileshare_tests::tracker::Tracker;
use fileshare_tests::wait_until;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The session token `fsd login` saved in `user`'s home.
fn token_of(user: &Fsd) -> SessionToken {
    let text = std::fs::read_to_string(user.session_file()).unwrap();
    let hex = text.lines().nth(1).unwrap();
    let bytes = fileshare_protocol::ids::unhex(hex).unwrap();
    SessionToken(bytes.try_into().unwrap())
}

fn meta(name: &str, size: u64) -> FileMeta {
    let n = size.div_ceil(PIECE_LEN);
    FileMeta {
        name: name.into(),
        size,
        piece_len: PIECE_LEN,
        hashes: (0..n).map(|i| PieceHash::of(&i.to_le_bytes())).collect(),
    }
}

#[test]
fn two_users_a_group_a_request_and_the_listings() {
    let tracker = Tracker::start();
    let alice = Fsd::new(&tracker);
    let bob = Fsd::new(&tracker);
    let carol = Fsd::new(&tracker);
    alice.user("alice");
    bob.user("bob");
    carol.user("carol");

    assert!(alice.ok(&["create-group", "g1"]).contains("g1"));
    // The seed's spelling is accepted too.
    alice.ok(&["create_group", "g2"]);
    assert_eq!(
        bob.ok(&["list-groups"]),
        "g1  owner=alice  members=1\ng2  owner=alice  members=1\n"
    );
    bob.ok(&["join-group", "g1"]);
    assert_eq!(
        bob.ok(&["list-groups"]).lines().next(),
        Some("g1  owner=alice  members=1  [pending]")
    );
    assert_eq!(alice.ok(&["list-requests", "g1"]), "bob\n");

    // Only the owner decides.
    let e = bob.fails(&["accept-request", "g1", "bob"]);
    assert!(e.contains("only the owner of group g1"), "{e}");
    let e = bob.fails(&["list-requests", "g1"]);
    assert!(e.contains("only the owner of group g1"), "{e}");
    let e = alice.fails(&["accept-request", "g1", "carol"]);
    assert!(e.contains("carol has no pending request to join g1"), "{e}");

    alice.ok(&["accept-request", "g1", "bob"]);
    assert_eq!(alice.ok(&["list-requests", "g1"]), "");
    assert_eq!(
        bob.ok(&["list-groups"]),
        "g1  owner=alice  members=2  [member]\ng2  owner=alice  members=1\n"
    );
    assert_eq!(
        alice.ok(&["list-groups"]).lines().next(),
        Some("g1  owner=alice  members=2  [owner]")
    );

    carol.ok(&["join-group", "g1"]);
    alice.ok(&["reject-request", "g1", "carol"]);
    assert_eq!(
        carol.ok(&["list-groups"]).lines().next(),
        Some("g1  owner=alice  members=2")
    );

    // Files, shared through the protocol (sharing from the CLI goes through
    // the daemon), listed and searched through the CLI.
    let rt = rt();
    let client = tracker.client();
    for (name, size) in [("report.pdf", 1_000_000), ("notes.txt", 12)] {
        rt.block_on(client.call(ShareFile {
            session: token_of(&alice),
            group: "g1".into(),
            meta: meta(name, size),
        }))
        .unwrap();
    }
    assert_eq!(
        bob.ok(&["list-files", "g1"]),
        "notes.txt  12  peers=0\nreport.pdf  1000000  peers=0\n"
    );
    assert_eq!(
        bob.ok(&["search", "port"]),
        "[g1] report.pdf  1000000  peers=0\n"
    );
    assert_eq!(bob.ok(&["search", "zzz"]), "");
    assert_eq!(carol.ok(&["search", "port"]), "");
    let e = carol.fails(&["list-files", "g1"]);
    assert_eq!(e, "fsd: not a member of group g1\n");
    let e = carol.fails(&["list-files", "nope"]);
    assert_eq!(e, "fsd: no such group: nope\n");

    // The owner leaves: bob, the longest-standing member, owns g1 now.
    alice.ok(&["leave-group", "g1"]);
    assert_eq!(
        bob.ok(&["list-groups"]).lines().next(),
        Some("g1  owner=bob  members=1  [owner]")
    );
    // alice's files left with her.
    assert_eq!(bob.ok(&["list-files", "g1"]), "");
    let e = alice.fails(&["leave-group", "g1"]);
    assert!(e.contains("not a member of group g1"), "{e}");
}

#[test]
fn wrong_passwords_duplicates_and_missing_sessions_are_refused() {
    let tracker = Tracker::start();
    let alice = Fsd::new(&tracker);
    alice.user("alice");
    let e = alice.fails(&["create-user", "alice"]);
    assert_eq!(e, "fsd: user alice already exists\n");

    let other = Fsd::new(&tracker).password(Some("wrong"));
    assert_eq!(
        other.fails(&["login", "alice"]),
        "fsd: wrong user name or password\n"
    );
    assert_eq!(
        other.fails(&["login", "nobody"]),
        "fsd: wrong user name or password\n"
    );
    let e = other.fails(&["list-groups"]);
    assert!(e.contains("not logged in"), "{e}");

    let no_password = Fsd::new(&tracker).password(None);
    let e = no_password.fails(&["login", "alice"]);
    assert!(e.contains("no password given"), "{e}");

    alice.ok(&["create-group", "g"]);
    let e = alice.fails(&["create-group", "g"]);
    assert_eq!(e, "fsd: group g already exists\n");
    let e = alice.fails(&["join-group", "g"]);
    assert_eq!(e, "fsd: already a member of group g\n");
    let e = alice.fails(&["join-group", "nope"]);
    assert_eq!(e, "fsd: no such group: nope\n");

    // Daemon commands say so instead of pretending.
    let e = alice.fails(&["upload-file", "/etc/hostname", "g"]);
    assert!(e.contains("daemon"), "{e}");
}

#[test]
fn repeated_wrong_passwords_are_slowed_down() {
    let tracker = Tracker::start();
    let alice = Fsd::new(&tracker);
    alice.user("alice");
    let guesser = Fsd::new(&tracker).password(Some("guess"));
    for _ in 0..3 {
        guesser.fails(&["login", "alice"]);
    }
    let e = guesser.fails(&["login", "alice"]);
    assert!(e.contains("too many failed logins"), "{e}");
    // From the same address, even the right password waits out the
    // backoff (limits_e2e shows another address is not held up).
    let e = Fsd::new(&tracker).fails(&["login", "alice"]);
    assert!(e.contains("too many failed logins"), "{e}");
    // Other users are not affected.
    Fsd::new(&tracker).user("bob");
}

#[test]
fn every_bad_name_is_refused_with_a_clear_message() {
    let tracker = Tracker::start();
    let alice = Fsd::new(&tracker);
    alice.user("alice");
    let long = "x".repeat(256);
    for (bad, why) in [
        ("..", "reserved"),
        (".", "reserved"),
        ("a/b", "contains `/`"),
        ("", "empty"),
        (long.as_str(), "longer than 255 bytes"),
    ] {
        for cmd in ["create-group", "create-user", "join-group"] {
            let e = alice.fails(&[cmd, bad]);
            assert!(
                e.contains("invalid") && e.contains(why),
                "{cmd} {bad:?}: {e}"
            );
        }
    }
    // 255 bytes is fine.
    alice.ok(&["create-group", &"x".repeat(255)]);

    // A NUL cannot pass through a command line: send it raw.
    let rt = rt();
    let client = tracker.client();
    let session = token_of(&alice);
    let bad_name = |r: Result<(), ClientError>| {
        matches!(r, Err(ClientError::Refused(ErrorCode::BadName { .. })))
    };
    assert!(bad_name(rt.block_on(client.call(CreateGroup {
        session,
        group: "a\0b".into()
    }))));
    assert!(bad_name(rt.block_on(client.call(CreateUser {
        user: "a\0b".into(),
        password: "pw".into()
    }))));
    alice.ok(&["create-group", "g"]);
    for name in ["a\0b", "..", ".", "a/b", "", long.as_str()] {
        let r = rt.block_on(client.call(ShareFile {
            session,
            group: "g".into(),
            meta: meta(name, 1),
        }));
        assert!(bad_name(r), "file name {name:?}");
    }
}

#[test]
fn an_expired_session_is_refused() {
    let tracker = Tracker::with_args(&["--session-ttl", "1"]);
    let alice = Fsd::new(&tracker);
    alice.user("alice");
    let mut last = String::new();
    wait_until("the session to expire", Duration::from_secs(10), || {
        let out = alice.run(&["list-groups"]);
        last = out.stderr;
        !out.status.success()
    });
    assert_eq!(
        last,
        "fsd: not logged in or the session has expired; run `fsd login USER`\n"
    );
    // Logging in again works.
    alice.ok(&["login", "alice"]);
    alice.ok(&["list-groups"]);
}

#[test]
fn a_forged_session_is_refused() {
    let tracker = Tracker::start();
    let alice = Fsd::new(&tracker);
    alice.user("alice");
    let path = alice.session_file();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Flip one hex digit of the token.
    let flipped = if lines[1].starts_with('0') { "1" } else { "0" };
    lines[1].replace_range(0..1, flipped);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let e = alice.fails(&["list-groups"]);
    assert!(e.contains("session has expired"), "{e}");
    // A damaged file says so.
    std::fs::write(&path, "alice\nnot-hex\n1\n").unwrap();
    let e = alice.fails(&["list-groups"]);
    assert!(e.contains("damaged"), "{e}");
}

#[test]
fn logout_ends_the_session_on_the_tracker() {
    let tracker = Tracker::start();
    let alice = Fsd::new(&tracker);
    alice.user("alice");
    let saved = std::fs::read(alice.session_file()).unwrap();
    assert_eq!(alice.ok(&["logout"]), "logged out alice\n");
    assert!(alice.fails(&["list-groups"]).contains("not logged in"));
    assert!(alice.fails(&["logout"]).contains("not logged in"));
    // A copy of the old session file is worthless now.
    std::fs::write(alice.session_file(), saved).unwrap();
    assert!(alice
        .fails(&["list-groups"])
        .contains("session has expired"));
}

#[test]
fn state_and_sessions_survive_clean_stops_and_restarts() {
    let mut tracker = Tracker::start();
    let alice = Fsd::new(&tracker);
    alice.user("alice");
    alice.ok(&["create-group", "g"]);

    assert!(tracker.terminate().success(), "{}", tracker.log());
    let e = alice.fails(&["list-groups"]);
    assert!(e.contains("no tracker answered"), "{e}");
    tracker.restart();
    assert_eq!(
        alice.ok(&["list-groups"]),
        "g  owner=alice  members=1  [owner]\n"
    );

    assert!(tracker.quit().success(), "{}", tracker.log());
    tracker.restart();
    assert_eq!(
        alice.ok(&["list-groups"]),
        "g  owner=alice  members=1  [owner]\n"
    );
    let log = tracker.log();
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn an_unreachable_tracker_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trackers.txt");
    // Reserved, so no other test listens there meanwhile.
    let port = fileshare_tests::reserve_port();
    std::fs::write(&file, format!("127.0.0.1:{}\n", port.get())).unwrap();
    let user = Fsd::with_trackers(&file);
    let e = user.fails(&["create-user", "alice"]);
    assert!(e.starts_with("fsd: no tracker answered"), "{e}");
    let missing = Fsd::with_trackers(&dir.path().join("missing.txt"));
    let e = missing.fails(&["create-user", "alice"]);
    assert!(e.contains("cannot read trackers file"), "{e}");
    // The OS error is named once, not again by the error chain.
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
}

mod kill_9 {
    //! `kill -9` in the middle of a stream of writes from several clients:
    //! every write the tracker acknowledged is there after a restart.

    use fileshare_protocol::client::{ClientError, TrackerClient};
    use fileshare_protocol::ids::FileMeta;
    use fileshare_protocol::messages::tracker::{CreateGroup, ListFiles, ListGroups, ShareFile};
    use fileshare_protocol::messages::SessionToken;
    use fileshare_protocol::{PieceHash, PIECE_LEN};
    use fileshare_tests::tracker::Tracker;
    use fileshare_tests::tracker_client;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const CLIENTS: usize = 6;
    /// Acknowledged writes (over all clients) before the kill.
    const KILL_AFTER: usize = 300;

    async fn login(client: &TrackerClient, user: &str) -> SessionToken {
        fileshare_tests::tracker::sign_up(client, user).await
    }

    fn meta(name: &str) -> FileMeta {
        FileMeta {
            name: name.into(),
            size: 10,
            piece_len: PIECE_LEN,
            hashes: vec![PieceHash::of(name.as_bytes())],
        }
    }

    /// What one client saw acknowledged.
    #[derive(Default)]
    struct Acked {
        groups: BTreeSet<String>,
        files: BTreeSet<String>,
    }

    #[test]
    fn every_acknowledged_write_survives_kill_9() {
        let mut tracker = Tracker::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = tracker.addr().to_string();
        let known = tracker.known_keys();
        let acked_total = Arc::new(AtomicUsize::new(0));
        let acked: Vec<Arc<Mutex<Acked>>> = (0..CLIENTS).map(|_| Arc::default()).collect();

        // Each client: its own connection and user, a home group, then a
        // stream of new groups and new files in its home group, alternating.
        let sessions: Vec<SessionToken> = rt.block_on(async {
            let mut sessions = vec![];
            for c in 0..CLIENTS {
                let client = tracker_client(&[&addr], &known, Duration::from_secs(2));
                let s = login(&client, &format!("user{c}")).await;
                client
                    .call(CreateGroup {
                        session: s,
                        group: format!("home{c}"),
                    })
                    .await
                    .unwrap();
                sessions.push(s);
            }
            sessions
        });
        let mut writers = vec![];
        for c in 0..CLIENTS {
            let (total, mine, session) = (acked_total.clone(), acked[c].clone(), sessions[c]);
            let client = tracker_client(&[&addr], &known, Duration::from_secs(2));
            writers.push(rt.spawn(async move {
                for i in 0usize.. {
                    let (written, name) = if i.is_multiple_of(2) {
                        let g = format!("g-{c}-{i}");
                        (
                            client
                                .call(CreateGroup {
                                    session,
                                    group: g.to_string(),
                                })
                                .await,
                            g,
                        )
                    } else {
                        let f = format!("f-{c}-{i}");
                        let home = format!("home{c}");
                        (
                            client
                                .call(ShareFile {
                                    session,
                                    group: home.to_string(),
                                    meta: meta(&f),
                                })
                                .await,
                            f,
                        )
                    };
                    match written {
                        Ok(()) => {
                            let mut m = mine.lock().unwrap();
                            if i.is_multiple_of(2) {
                                m.groups.insert(name);
                            } else {
                                m.files.insert(name);
                            }
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                        // The tracker died with this write in flight; it and
                        // the rest of the stream are unacknowledged.
                        Err(e @ ClientError::UnexpectedReply(_)) => panic!("{e}"),
                        Err(_) => return i + 1,
                    }
                }
                unreachable!()
            }));
        }

        let start = Instant::now();
        while acked_total.load(Ordering::Relaxed) < KILL_AFTER {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "only {} writes acknowledged",
                acked_total.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        tracker.kill9();
        let attempted: usize = rt.block_on(async {
            let mut n = 0;
            for w in writers {
                n += w.await.unwrap();
            }
            n
        });
        let total = acked_total.load(Ordering::Relaxed);
        assert!(total >= KILL_AFTER && attempted == total + CLIENTS);

        tracker.restart();
        rt.block_on(async {
            let client = tracker_client(&[&addr], &known, Duration::from_secs(5));
            let groups = client
                .call(ListGroups {
                    session: sessions[0],
                })
                .await
                .expect("sessions survive the crash");
            let present: BTreeSet<String> = groups.into_iter().map(|g| g.name).collect();
            for c in 0..CLIENTS {
                let (groups, acked_files) = {
                    let mine = acked[c].lock().unwrap();
                    (mine.groups.clone(), mine.files.clone())
                };
                let lost: Vec<_> = groups.difference(&present).collect();
                assert!(lost.is_empty(), "acknowledged groups lost: {lost:?}");
                let files = client
                    .call(ListFiles {
                        session: sessions[c],
                        group: format!("home{c}"),
                    })
                    .await
                    .unwrap();
                let have: BTreeSet<String> = files.into_iter().map(|f| f.name).collect();
                let lost: Vec<_> = acked_files.difference(&have).collect();
                assert!(lost.is_empty(), "acknowledged files lost: {lost:?}");
            }
        });
        eprintln!("{total} acknowledged writes of {attempted} attempted survived kill -9");
    }
}
