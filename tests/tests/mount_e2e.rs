//! The swarm as a directory, used as a user would: real tracker, real
//! daemons, real FUSE mounts, `ls`, `cp`, `cat`, `cmp`, `rm`, `dd`.

use fileshare_protocol::messages::tracker::IssueTicket;
use fileshare_tests::mount::{fetched, wait_for, Mount};
use fileshare_tests::world::{User, World};
use fileshare_tests::{cmp, random_file, MIB};
use std::process::Command;
use std::time::Duration;

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// Waits until `ls -l` in the mount shows `name` with `size` bytes.
fn wait_listed(m: &Mount, group: &str, name: &str, size: usize) {
    let dir = m.path(group);
    wait_for(
        &format!("{name} listed in {}", dir.display()),
        Duration::from_secs(15),
        || {
            let out = run("ls", &["-l", dir.to_str().unwrap()]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines()
                .any(|l| l.ends_with(&format!(" {name}")) && l.contains(&format!(" {size} ")))
                .then_some(())
        },
    );
}

fn total_pieces(size: usize) -> u64 {
    size.div_ceil(512 * 1024) as u64
}

fn pieces_have(m: &Mount, rel: &str) -> u64 {
    let v = m.xattr(rel, "user.fileshare.pieces");
    v.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn cp_in_then_others_list_and_read_identical_bytes() {
    let (w, u) = World::network(&["alice", "bob", "carol"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let c = w.mount(&u[2], &[]);
    let src = w.path("movie.bin");
    random_file(&src, 20 * MIB, 1);

    let groups = String::from_utf8(run("ls", &[a.mountpoint.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(groups.trim(), "g", "ls of the root lists the user's groups");
    a.cp_in(&src, "g");
    // Once cp returns, the owner's own listing shows it at once.
    wait_listed(&a, "g", "movie.bin", 20 * MIB);
    for m in [&b, &c] {
        wait_listed(m, "g", "movie.bin", 20 * MIB);
        cmp(&src, &m.path("g/movie.bin"));
    }
    // A second read is served locally and is still identical.
    cmp(&src, &b.path("g/movie.bin"));
    assert_eq!(pieces_have(&b, "g/movie.bin"), total_pieces(20 * MIB));
}

#[test]
fn a_reader_fetches_from_every_seeder() {
    let (w, u) = World::network(&["alice", "bob", "carol"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let src = w.path("data.bin");
    random_file(&src, 24 * MIB, 2);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "data.bin", 24 * MIB);
    cmp(&src, &b.path("g/data.bin"));
    // Bob now holds all of it too; wait until the tracker offers him.
    let c = w.mount(&u[2], &[]);
    wait_for("two peers online", Duration::from_secs(15), || {
        w.fsd_ok(&u[2], &["list-files", "g"])
            .contains("peers=2")
            .then_some(())
    });
    cmp(&src, &c.path("g/data.bin"));
    let counters = fetched(&c, "g/data.bin");
    let from: Vec<&str> = counters
        .iter()
        .filter(|c| c.1 > 0)
        .map(|c| c.0.as_str())
        .collect();
    assert!(
        from.contains(&a.listen.as_str()),
        "nothing from alice: {counters:?}"
    );
    assert!(
        from.contains(&b.listen.as_str()),
        "nothing from bob: {counters:?}"
    );
    let pieces: u64 = counters.iter().map(|c| c.2).sum();
    assert_eq!(
        pieces,
        total_pieces(24 * MIB),
        "each piece fetched once: {counters:?}"
    );
}

#[test]
fn a_reader_serves_what_it_has_before_it_finishes() {
    let (w, u) = World::network(&["alice", "bob", "carol"]);
    // Alice's upload is slow, so bob is far from done when carol reads.
    let a = w.mount(&u[0], &["--max-upload-rate", "3M"]);
    let b = w.mount(&u[1], &[]);
    let c = w.mount(&u[2], &[]);
    let size = 64 * MIB;
    let src = w.path("big.bin");
    random_file(&src, size, 3);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "big.bin", size);
    let part = w.path("part.bin");
    let out = run(
        "dd",
        &[
            &format!("if={}", b.path("g/big.bin").display()),
            &format!("of={}", part.display()),
            "bs=1M",
            "count=4",
            "status=none",
        ],
    );
    assert!(
        out.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pieces_have(&b, "g/big.bin") < total_pieces(size),
        "bob must not be done yet"
    );
    wait_listed(&c, "g", "big.bin", size);
    let out = run(
        "dd",
        &[
            &format!("if={}", c.path("g/big.bin").display()),
            &format!("of={}", w.path("part-c.bin").display()),
            "bs=1M",
            "count=4",
            "status=none",
        ],
    );
    assert!(out.status.success());
    cmp(&part, &w.path("part-c.bin"));
    let counters = fetched(&c, "g/big.bin");
    assert!(
        counters.iter().any(|x| x.0 == b.listen && x.1 > 0),
        "carol fetched nothing from bob, a reader that has not finished: {counters:?}"
    );
}

#[test]
fn reading_the_last_byte_first_fetches_only_the_end() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let size = 48 * MIB + 123;
    let src = w.path("tail.bin");
    let data = random_file(&src, size, 4);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "tail.bin", size);
    let out = run(
        "dd",
        &[
            &format!("if={}", b.path("g/tail.bin").display()),
            "bs=1",
            &format!("skip={}", size - 1),
            "count=1",
            "status=none",
        ],
    );
    assert!(
        out.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, vec![data[size - 1]]);
    let have = pieces_have(&b, "g/tail.bin");
    assert!(
        (1..=4).contains(&have),
        "fetched {have} pieces for one byte"
    );
}

#[test]
fn corrupted_pieces_are_refetched_and_the_bad_peer_named() {
    let (w, u) = World::network(&["alice", "bob", "carol"]);
    let a = w.mount(&u[0], &[]);
    let mut b = w.mount(&u[1], &[]);
    let size = 16 * MIB;
    let src = w.path("c.bin");
    random_file(&src, size, 5);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "c.bin", size);
    cmp(&src, &b.path("g/c.bin"));
    // Bob comes back serving corrupted bytes.
    b.unmount();
    let b = {
        drop(b);
        w.mount(&u[1], &["--corrupt-uploads"])
    };
    let c = w.mount(&u[2], &[]);
    wait_for("two peers online", Duration::from_secs(15), || {
        w.fsd_ok(&u[2], &["list-files", "g"])
            .contains("peers=2")
            .then_some(())
    });
    cmp(&src, &c.path("g/c.bin"));
    let counters = fetched(&c, "g/c.bin");
    let bad = counters.iter().find(|x| x.0 == b.listen);
    assert!(
        bad.is_some_and(|x| x.3 > 0),
        "no failure counted for bob: {counters:?}"
    );
    assert!(
        c.log().contains("piece failed verification") && c.log().contains(&b.listen),
        "the log must name the failing peer:\n{}",
        c.log()
    );
}

#[test]
fn a_seeder_killed_mid_read_does_not_break_the_read() {
    let (w, u) = World::network(&["alice", "bob", "carol"]);
    let a = w.mount(&u[0], &["--max-upload-rate", "6M"]);
    let size = 32 * MIB;
    let src = w.path("k.bin");
    random_file(&src, size, 6);
    a.cp_in(&src, "g");
    let mut b = w.mount(&u[1], &["--max-upload-rate", "6M"]);
    wait_listed(&b, "g", "k.bin", size);
    cmp(&src, &b.path("g/k.bin"));
    let c = w.mount(&u[2], &[]);
    wait_for("two peers online", Duration::from_secs(15), || {
        w.fsd_ok(&u[2], &["list-files", "g"])
            .contains("peers=2")
            .then_some(())
    });
    let out_path = w.path("k-out.bin");
    let reader = {
        let from = c.path("g/k.bin");
        let to = out_path.clone();
        std::thread::spawn(move || std::fs::copy(from, to))
    };
    // Bob is killed once he has served carol something, mid-read.
    let bob = b.listen.clone();
    let from_bob = |c: &Mount| {
        let counters = fetched(c, "g/k.bin");
        (counters.iter()).find(|x| x.0 == bob).map_or(0, |x| x.1)
    };
    wait_for("bob to serve carol", Duration::from_secs(15), || {
        (from_bob(&c) > 0).then_some(())
    });
    let had = pieces_have(&c, "g/k.bin");
    b.kill9();
    assert!(
        had < total_pieces(size),
        "the read was over before bob was killed"
    );
    reader
        .join()
        .unwrap()
        .expect("the read must finish from alice");
    cmp(&src, &out_path);
    let counters = fetched(&c, "g/k.bin");
    assert!(from_bob(&c) > 0, "nothing from bob: {counters:?}");
    assert!(
        counters.iter().any(|x| x.0 == a.listen && x.1 > 0),
        "nothing from alice: {counters:?}"
    );
}

#[test]
fn verified_pieces_survive_a_crash_of_the_reader() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let mut b = w.mount(&u[1], &[]);
    let size = 24 * MIB;
    let src = w.path("r.bin");
    random_file(&src, size, 7);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "r.bin", size);
    let out = run(
        "dd",
        &[
            &format!("if={}", b.path("g/r.bin").display()),
            "of=/dev/null",
            "bs=1M",
            "count=6",
            "status=none",
        ],
    );
    assert!(out.status.success());
    b.kill9();
    b.restart();
    wait_listed(&b, "g", "r.bin", size);
    let before = pieces_have(&b, "g/r.bin");
    assert!(
        before >= 12,
        "the pieces read before the crash are still verified: {before}"
    );
    cmp(&src, &b.path("g/r.bin"));
    let fetched_now: u64 = fetched(&b, "g/r.bin").iter().map(|c| c.2).sum();
    assert_eq!(
        fetched_now,
        total_pieces(size) - before,
        "pieces verified before the crash were fetched again"
    );
}

#[test]
fn unmount_stops_sharing_and_a_new_mount_resumes_it() {
    let (w, u) = World::network(&["alice", "bob"]);
    let mut a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let src = w.path("u.bin");
    random_file(&src, 3 * MIB, 8);
    a.cp_in(&src, "g");
    wait_for("alice online", Duration::from_secs(10), || {
        w.fsd_ok(&u[1], &["list-files", "g"])
            .contains("peers=1")
            .then_some(())
    });
    a.unmount();
    wait_for("alice offline", Duration::from_secs(10), || {
        w.fsd_ok(&u[1], &["list-files", "g"])
            .contains("peers=0")
            .then_some(())
    });
    a.restart();
    wait_for("alice online again", Duration::from_secs(10), || {
        w.fsd_ok(&u[1], &["list-files", "g"])
            .contains("peers=1")
            .then_some(())
    });
    wait_listed(&b, "g", "u.bin", 3 * MIB);
    cmp(&src, &b.path("g/u.bin"));
}

#[test]
fn shared_files_are_immutable_and_rm_stops_sharing() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let src = w.path("doc.txt");
    random_file(&src, 1000, 9);
    a.cp_in(&src, "g");
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(a.path("g/doc.txt"))
        .expect_err("writing into a shared file must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // Bad names are refused by the mount.
    let err = std::fs::write(a.path("g/bad\nname"), b"x").expect_err("control characters");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    wait_listed(&b, "g", "doc.txt", 1000);
    let out = run("rm", &[a.path("g/doc.txt").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "rm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("doc.txt gone for bob", Duration::from_secs(10), || {
        (!w.fsd_ok(&u[1], &["list-files", "g"]).contains("doc.txt")).then_some(())
    });
}

#[test]
fn mkdir_creates_a_group() {
    let (w, u) = World::network(&["alice"]);
    let a = w.mount(&u[0], &[]);
    std::fs::create_dir(a.path("newgroup")).expect("mkdir in the root creates a group");
    assert!(w.fsd_ok(&u[0], &["list-groups"]).contains("newgroup"));
    let src = w.path("n.bin");
    random_file(&src, 4096, 10);
    a.cp_in(&src, "newgroup");
    cmp(&src, &a.path("newgroup/n.bin"));
}

/// One request on a raw peer connection and its reply.
async fn exchange(
    conn: &mut fileshare_protocol::tls::SecureConnection,
    id: u64,
    body: fileshare_protocol::messages::PeerRequest,
) -> fileshare_protocol::messages::PeerReply {
    use fileshare_protocol::messages::{PeerReply, Reply, Request};
    conn.write_frame(&Request { id, body }).await.unwrap();
    let reply: Reply<PeerReply> = conn.read_frame().await.unwrap().expect("a reply");
    assert_eq!(reply.id, id);
    reply.body
}

/// The session token a user's `fsd login` saved.
fn session_of(user: &User) -> fileshare_protocol::messages::SessionToken {
    let text = std::fs::read_to_string(user.home.join("session")).expect("session file");
    let hex = text.lines().nth(1).expect("token line");
    let bytes = fileshare_protocol::ids::unhex(hex).expect("hex token");
    fileshare_protocol::messages::SessionToken(bytes.try_into().expect("32 bytes"))
}

#[test]
fn a_non_member_can_neither_list_nor_fetch_pieces() {
    use fileshare_protocol::client::{ClientError, TrackerClient};
    use fileshare_protocol::messages::{PeerError, PeerReply, PeerRequest, Role};
    use fileshare_protocol::ticket::{Ticket, TicketError};
    use fileshare_protocol::tls::{self, ClientTls, Pin};
    use fileshare_protocol::trackers_file::TrackerEntry;
    use fileshare_protocol::{ErrorCode, FileId, Fingerprint, Identity};

    let (w, u) = World::network(&["alice"]);
    let mallory = w.user("mallory");
    w.fsd_ok(&mallory, &["create-group", "mine"]);
    let a = w.mount(&u[0], &[]);
    let m = w.mount(&mallory, &[]);
    let src = w.path("secret.bin");
    random_file(&src, 2 * MIB, 11);
    a.cp_in(&src, "g");

    let roots = String::from_utf8(run("ls", &[m.mountpoint.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(
        roots.trim(),
        "mine",
        "a non-member's mount does not show the group"
    );
    assert!(!m.path("g").exists());
    let out = w.fsd(&mallory, &["list-files", "g"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a member"),
        "{out:?}"
    );

    let id =
        FileId::from_hex(a.xattr("g/secret.bin", "user.fileshare.id").trim()).expect("file id");
    let session = session_of(&mallory);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Mallory's own daemon key: tickets name it, and it is the only
        // peer id she can present.
        let key = Identity::generate().unwrap();
        let me = key.peer_id();
        let entry = TrackerEntry {
            addr: w.tracker().addr().to_string(),
            fingerprint: None,
        };
        let known = w.path("mallory-known-keys");
        let tracker = TrackerClient::new(
            vec![entry],
            known,
            Some(key.clone()),
            Duration::from_secs(5),
        );
        let refused = tracker
            .call(IssueTicket {
                session,
                group: "g".into(),
                holder: me,
            })
            .await;
        assert!(
            matches!(refused, Err(ClientError::Refused(ErrorCode::NotMember(_)))),
            "{refused:?}"
        );
        let own = tracker
            .call(IssueTicket {
                session,
                group: "mine".into(),
                holder: me,
            })
            .await
            .expect("a ticket for mallory's own group");

        // Alice's daemon pinned by its public certificate, as a tracker
        // listing names it.
        let cert = std::fs::read(u[0].home.join("peer.cert.der")).expect("alice's certificate");
        let alice = Fingerprint::of_cert(&cert).peer_id();
        let pinned = ClientTls::new(Some(&key), Pin::Peer(alice)).unwrap();
        let (mut conn, theirs, _) = tls::connect(
            &a.listen,
            &pinned,
            Role::Peer { id: me },
            Duration::from_secs(5),
        )
        .await
        .expect("connect to alice's peer port");
        assert_eq!(theirs, Role::Peer { id: alice });
        let piece = PeerRequest::Piece { file: id, index: 0 };
        assert_eq!(
            exchange(&mut conn, 1, piece.clone()).await,
            PeerReply::Error(PeerError::NotAuthenticated)
        );
        let forged = Ticket {
            user: "mallory".into(),
            group: "g".into(),
            group_id: 1,
            holder: me,
            issued_unix_ms: 0,
            expires_unix_ms: u64::MAX / 2,
            signature: vec![7; 64],
        };
        assert_eq!(
            exchange(&mut conn, 2, PeerRequest::Authenticate { ticket: forged }).await,
            PeerReply::Error(PeerError::TicketRefused(TicketError::BadSignature))
        );
        // A genuine ticket for a group alice is not in opens nothing.
        assert_eq!(
            exchange(&mut conn, 3, PeerRequest::Authenticate { ticket: own }).await,
            PeerReply::Error(PeerError::NotMember)
        );
        assert_eq!(
            exchange(&mut conn, 4, piece).await,
            PeerReply::Error(PeerError::NotAuthenticated)
        );
        assert_eq!(
            exchange(&mut conn, 5, PeerRequest::Subscribe { file: id }).await,
            PeerReply::Error(PeerError::NotAuthenticated)
        );
    });
}

#[test]
fn a_slow_read_does_not_stall_listing_or_other_files() {
    let (w, u) = World::network(&["alice", "bob"]);
    // Alice uploads at 256 KiB/s: reading her 8 MiB file takes half a minute.
    let a = w.mount(&u[0], &["--max-upload-rate", "256K"]);
    let b = w.mount(&u[1], &[]);
    let slow_src = w.path("slow.bin");
    random_file(&slow_src, 8 * MIB, 12);
    a.cp_in(&slow_src, "g");
    let local_src = w.path("local.bin");
    random_file(&local_src, 2 * MIB, 13);
    b.cp_in(&local_src, "g");
    wait_listed(&b, "g", "slow.bin", 8 * MIB);

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow = {
        let (from, to, done) = (b.path("g/slow.bin"), w.path("slow-out.bin"), done.clone());
        std::thread::spawn(move || {
            let r = std::fs::copy(from, to);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // While that read crawls, listing and reading another file work.
    for _ in 0..5 {
        let out = run("ls", &["-l", b.path("g").to_str().unwrap()]);
        assert!(out.status.success());
        cmp(&local_src, &b.path("g/local.bin"));
    }
    assert!(
        !done.load(std::sync::atomic::Ordering::SeqCst),
        "the slow read finished first, so this test proved nothing"
    );
    drop(b);
    let _ = slow.join();
}

#[test]
fn with_the_tracker_down_listings_come_from_cache_and_local_files_read() {
    let (mut w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let src = w.path("kept.bin");
    random_file(&src, 3 * MIB, 14);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "kept.bin", 3 * MIB);
    cmp(&src, &b.path("g/kept.bin"));

    w.tracker_mut().kill9();
    wait_for("bob's daemon to notice", Duration::from_secs(10), || {
        b.log().contains("tracker lost").then_some(())
    });
    let start = std::time::Instant::now();
    let out = run("ls", &["-l", b.path("g").to_str().unwrap()]);
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "ls failed with the tracker down: {out:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept.bin"));
    // Generous: the bound is about not hanging, the figure is ~0.8 s.
    assert!(
        took < Duration::from_secs(3),
        "ls took {took:?} with the tracker down"
    );
    let out = run("ls", &[b.mountpoint.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "g");
    cmp(&src, &b.path("g/kept.bin"));

    // Back: the daemons announce again by themselves.
    w.tracker_mut().restart();
    wait_for("both peers offered again", Duration::from_secs(20), || {
        w.fsd_ok(&u[1], &["list-files", "g"])
            .contains("peers=2")
            .then_some(())
    });
    wait_for(
        "bob's daemon to log the tracker back",
        Duration::from_secs(10),
        || b.log().contains("tracker back").then_some(()),
    );
}

#[test]
fn a_read_no_peer_can_serve_fails_with_eio_after_the_timeout() {
    let (w, u) = World::network(&["alice", "bob"]);
    let mut a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &["--read-timeout", "2"]);
    let src = w.path("gone.bin");
    random_file(&src, 2 * MIB, 15);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "gone.bin", 2 * MIB);
    a.unmount();
    let err = std::fs::read(b.path("g/gone.bin")).expect_err("no peer has it");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        b.log().contains("no peer served these pieces"),
        "the log names the missing pieces:\n{}",
        b.log()
    );
    // Other reads go on: a file bob shares still reads.
    let mine = w.path("mine.bin");
    random_file(&mine, MIB, 16);
    b.cp_in(&mine, "g");
    cmp(&mine, &b.path("g/mine.bin"));
}

/// Several processes opening the same not-yet-fetched file at once (fio
/// with several jobs, parallel `cmp`s, a program's threads) all get it:
/// the first open creates the file's store entry once, the others wait
/// for it. Four and sixteen openers, each round on a fresh file.
#[test]
fn concurrent_first_opens_of_a_fresh_file_all_succeed() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    const ROUNDS: usize = 50;
    let dir = w.path("fresh");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for i in 0..2 * ROUNDS {
        let src = dir.join(format!("f{i:03}.bin"));
        let bytes = random_file(&src, 4096 + i, 300 + i as u64);
        a.cp_in(&src, "g");
        files.push((format!("f{i:03}.bin"), bytes));
    }
    for (name, bytes) in &files {
        wait_listed(&b, "g", name, bytes.len());
    }
    for (round, (name, bytes)) in files.iter().enumerate() {
        let openers = if round < ROUNDS { 4 } else { 16 };
        let path = b.path(&format!("g/{name}"));
        let gate = std::sync::Barrier::new(openers);
        let results: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|s| {
            let tasks: Vec<_> = (0..openers)
                .map(|_| {
                    s.spawn(|| {
                        gate.wait();
                        std::fs::read(&path)
                    })
                })
                .collect();
            tasks.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for r in results {
            match r {
                Ok(got) => assert!(got == *bytes, "{name}: other bytes than shared"),
                Err(e) => panic!(
                    "{name}: one of {openers} concurrent first opens failed: {e}\n{}",
                    b.log()
                ),
            }
        }
    }
}
