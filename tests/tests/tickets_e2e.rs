//! Tickets and removal, end to end: what a serving peer accepts on the
//! wire (a real daemon's peer port), and what a removed member can still
//! do through a real mount. Trackers run with a short `--ticket-ttl` so a
//! lost membership shows within seconds.

use fileshare_protocol::client::{ClientError, TrackerClient};
use fileshare_protocol::messages::tracker::IssueTicket;
use fileshare_protocol::messages::{PeerError, PeerReply, PeerRequest, Reply, Request, Role};
use fileshare_protocol::ticket::{Ticket, TicketError};
use fileshare_protocol::tls::{self, ClientTls, Pin, SecureConnection};
use fileshare_protocol::trackers_file::TrackerEntry;
use fileshare_protocol::{ErrorCode, FileId, Identity, PeerId};
use fileshare_tests::mount::{wait_for, Mount};
use fileshare_tests::world::{User, World};
use fileshare_tests::{cmp, random_file, wait_until, HANG_LIMIT, MIB};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A daemon key for a wire test: its peer id is the one it can present.
fn key() -> Identity {
    Identity::generate().expect("a key")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The names `ls` shows in a directory of the mount.
fn ls(dir: &Path) -> Vec<String> {
    let out = Command::new("ls").arg(dir).output().expect("run ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn file_id(m: &Mount, rel: &str) -> FileId {
    FileId::from_hex(m.xattr(rel, "user.fileshare.id").trim()).expect("file id")
}

async fn send(conn: &mut SecureConnection, id: u64, body: PeerRequest) {
    conn.write_frame(&Request { id, body }).await.unwrap();
}

/// The next reply on the connection.
async fn next(conn: &mut SecureConnection) -> Reply<PeerReply> {
    tokio::time::timeout(HANG_LIMIT, conn.read_frame())
        .await
        .expect("a reply in time")
        .unwrap()
        .expect("a reply, not the end")
}

/// One request and its reply (nothing else may be in flight); a piece
/// sent in parts comes back whole, as one `Piece`.
async fn exchange(conn: &mut SecureConnection, id: u64, body: PeerRequest) -> PeerReply {
    send(conn, id, body).await;
    let mut parts: Vec<u8> = Vec::new();
    loop {
        let reply = next(conn).await;
        assert_eq!(reply.id, id);
        match reply.body {
            PeerReply::Part { data } => parts.extend_from_slice(&data),
            PeerReply::Piece { data } if !parts.is_empty() => {
                parts.extend_from_slice(&data);
                return PeerReply::Piece { data: parts.into() };
            }
            body => return body,
        }
    }
}

/// A connection to `m`'s peer port as the daemon whose key is `key`.
async fn connect_as(m: &Mount, key: &Identity) -> SecureConnection {
    let tls = ClientTls::new(Some(key), Pin::FirstUse).unwrap();
    let me = Role::Peer { id: key.peer_id() };
    let (conn, _, _) = tls::connect(&m.listen, &tls, me, HANG_LIMIT)
        .await
        .expect("connect to the daemon's peer port");
    conn
}

/// A tracker client presenting `key`, as that daemon would: a ticket can
/// be had only for the daemon that asks.
fn tracker_client(w: &World, key: &Identity) -> TrackerClient {
    let entry = TrackerEntry {
        addr: w.tracker().addr().to_string(),
        fingerprint: None,
    };
    let known = w.path("test-known-keys");
    TrackerClient::new(
        vec![entry],
        known,
        Some(key.clone()),
        Duration::from_secs(5),
    )
}

async fn ticket(client: &TrackerClient, user: &User, holder: PeerId) -> Ticket {
    client
        .call(IssueTicket {
            session: user.session(),
            group: "g".into(),
            holder,
        })
        .await
        .expect("a ticket for a member")
}

/// Sleeps until `t` has expired by the wall clock.
async fn outlive(t: &Ticket) {
    let left = t.expires_unix_ms.saturating_sub(now_ms()) + 100;
    tokio::time::sleep(Duration::from_millis(left)).await;
}

fn is_piece(r: &PeerReply) -> bool {
    matches!(r, PeerReply::Piece { data } if data.len() == 512 * 1024)
}

#[test]
fn forged_expired_and_other_peers_tickets_are_refused_by_a_serving_peer() {
    let (w, u) = World::with_tracker_args(&["--ticket-ttl", "3"]).with_users(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let src = w.path("f.bin");
    random_file(&src, 2 * MIB, 1);
    a.cp_in(&src, "g");
    let id = file_id(&a, "g/f.bin");
    let piece = PeerRequest::Piece { file: id, index: 0 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let me = key();
        let client = tracker_client(&w, &me);
        let mut conn = connect_as(&a, &me).await;
        let genuine = ticket(&client, &u[1], me.peer_id()).await;
        let refused = |e| PeerReply::Error(PeerError::TicketRefused(e));
        let auth = |ticket| PeerRequest::Authenticate { ticket };

        // Forged: a field changed after signing, or a made-up signature.
        let mut forged = genuine.clone();
        forged.group = "h".into();
        assert_eq!(
            exchange(&mut conn, 1, auth(forged)).await,
            refused(TicketError::BadSignature)
        );
        let made_up = Ticket {
            signature: vec![7; 64],
            ..genuine.clone()
        };
        assert_eq!(
            exchange(&mut conn, 2, auth(made_up)).await,
            refused(TicketError::BadSignature)
        );
        // Genuine, but issued to another daemon.
        let another = key();
        let other = ticket(&tracker_client(&w, &another), &u[1], another.peer_id()).await;
        assert_eq!(
            exchange(&mut conn, 3, auth(other)).await,
            refused(TicketError::OtherHolder)
        );
        assert_eq!(
            exchange(&mut conn, 4, piece.clone()).await,
            PeerReply::Error(PeerError::NotAuthenticated),
            "no refused ticket opened anything"
        );

        // Genuine and this daemon's: pieces flow, and a subscription runs.
        assert_eq!(
            exchange(&mut conn, 5, auth(genuine.clone())).await,
            PeerReply::Authenticated
        );
        assert!(is_piece(&exchange(&mut conn, 6, piece.clone()).await));
        assert!(matches!(
            exchange(&mut conn, 7, PeerRequest::Subscribe { file: id }).await,
            PeerReply::Bitfield(_)
        ));

        // Once it expires, the open connection is refused, the
        // subscription ends, and the expired ticket cannot open it again.
        outlive(&genuine).await;
        let ended = next(&mut conn).await;
        assert_eq!(ended.id, 7);
        assert_eq!(ended.body, PeerReply::Error(PeerError::TicketExpired));
        assert_eq!(
            exchange(&mut conn, 8, piece.clone()).await,
            PeerReply::Error(PeerError::TicketExpired)
        );
        assert_eq!(
            exchange(&mut conn, 9, PeerRequest::Subscribe { file: id }).await,
            PeerReply::Error(PeerError::TicketExpired)
        );
        assert_eq!(
            exchange(&mut conn, 10, auth(genuine)).await,
            refused(TicketError::Expired)
        );
        // A fresh ticket opens it again.
        let fresh = ticket(&client, &u[1], me.peer_id()).await;
        assert_eq!(
            exchange(&mut conn, 11, auth(fresh)).await,
            PeerReply::Authenticated
        );
        assert!(is_piece(&exchange(&mut conn, 12, piece).await));
    });
}

#[test]
fn a_removed_members_open_connection_is_refused_within_the_ticket_lifetime() {
    let (w, u) =
        World::with_tracker_args(&["--ticket-ttl", "3"]).with_users(&["alice", "bob", "carol"]);
    let a = w.mount(&u[0], &[]);
    let src = w.path("f.bin");
    random_file(&src, MIB, 2);
    a.cp_in(&src, "g");
    let id = file_id(&a, "g/f.bin");
    let piece = PeerRequest::Piece { file: id, index: 0 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let me = key();
        let client = tracker_client(&w, &me);
        let mut conn = connect_as(&a, &me).await;
        let first = ticket(&client, &u[1], me.peer_id()).await;
        let auth = |ticket| PeerRequest::Authenticate { ticket };
        assert_eq!(
            exchange(&mut conn, 1, auth(first.clone())).await,
            PeerReply::Authenticated
        );
        // A fresh ticket on the same connection extends it past the first.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let renewed = ticket(&client, &u[1], me.peer_id()).await;
        assert!(renewed.expires_unix_ms > first.expires_unix_ms);
        assert_eq!(
            exchange(&mut conn, 2, auth(renewed.clone())).await,
            PeerReply::Authenticated
        );
        outlive(&first).await;
        assert!(is_piece(&exchange(&mut conn, 3, piece.clone()).await));

        // The owner removes bob: no new ticket, and the connection he has
        // is refused once the ticket it holds expires.
        w.fsd_ok(&u[0], &["remove-member", "g", "bob"]);
        let refused = client
            .call(IssueTicket {
                session: u[1].session(),
                group: "g".into(),
                holder: me.peer_id(),
            })
            .await;
        assert!(
            matches!(refused, Err(ClientError::Refused(ErrorCode::NotMember(_)))),
            "{refused:?}"
        );
        outlive(&renewed).await;
        assert_eq!(
            exchange(&mut conn, 4, piece.clone()).await,
            PeerReply::Error(PeerError::TicketExpired)
        );

        // carol, still a member, is served on a connection of her own.
        let carols = key();
        let mut theirs = connect_as(&a, &carols).await;
        let hers = ticket(&tracker_client(&w, &carols), &u[2], carols.peer_id()).await;
        assert_eq!(
            exchange(&mut theirs, 1, auth(hers)).await,
            PeerReply::Authenticated
        );
        assert!(is_piece(&exchange(&mut theirs, 2, piece).await));
    });
}

#[test]
fn a_removed_member_loses_the_group_while_the_others_read_on() {
    let (w, u) =
        World::with_tracker_args(&["--ticket-ttl", "3"]).with_users(&["alice", "bob", "carol"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let c = w.mount(&u[2], &[]);
    let (one, two) = (w.path("one.bin"), w.path("two.bin"));
    random_file(&one, 3 * MIB, 3);
    random_file(&two, 3 * MIB, 4);
    a.cp_in(&one, "g");
    a.cp_in(&two, "g");
    wait_until("bob sees both files", HANG_LIMIT, || {
        ls(&b.path("g")).len() == 2
    });
    // bob opens two.bin before his removal but reads none of it.
    let mut held = std::fs::File::open(b.path("g/two.bin")).expect("open as a member");

    w.fsd_ok(&u[0], &["remove-member", "g", "bob"]);
    wait_until("g to leave bob's mount", HANG_LIMIT, || {
        !ls(&b.mountpoint).contains(&"g".to_string())
    });
    let out = w.fsd(&u[1], &["list-files", "g"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a member of group g"),
        "{out:?}"
    );

    // A file bob never fetched stays out of reach: by path, and through
    // the handle he opened as a member, refused rather than left hanging
    // (a read left to its timeout fails with EIO, not EACCES).
    let by_path = std::fs::read(b.path("g/one.bin"));
    assert!(by_path.is_err(), "bob read one.bin after his removal");
    let mut buf = vec![0u8; 4096];
    let err = held
        .read(&mut buf)
        .expect_err("bob read two.bin after his removal");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{err}\n{}",
        b.log()
    );

    // carol reads both, through tickets renewed along the way.
    cmp(&one, &c.path("g/one.bin"));
    cmp(&two, &c.path("g/two.bin"));

    // Leaving works the same way.
    w.fsd_ok(&u[2], &["leave-group", "g"]);
    wait_for("g to leave carol's mount", HANG_LIMIT, || {
        (!ls(&c.mountpoint).contains(&"g".to_string())).then_some(())
    });
}

#[test]
fn a_read_longer_than_a_ticket_lifetime_does_not_break() {
    let ttl = Duration::from_secs(3);
    let (w, u) = World::with_tracker_args(&["--ticket-ttl", &ttl.as_secs().to_string()])
        .with_users(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    // About five seconds of reading at this rate: the ticket is renewed
    // at least once on the open connection.
    let b = w.mount(&u[1], &["--max-download-rate", "2M"]);
    let src = w.path("long.bin");
    random_file(&src, 10 * MIB, 5);
    a.cp_in(&src, "g");
    wait_until("bob sees the file", HANG_LIMIT, || {
        ls(&b.path("g")).contains(&"long.bin".to_string())
    });
    // Not a speed claim: the rate cap makes the read last longer than a
    // ticket, which is what this test needs to renew one.
    let started = Instant::now();
    cmp(&src, &b.path("g/long.bin"));
    assert!(
        started.elapsed() > ttl,
        "the read did not outlast a ticket: {:?}",
        started.elapsed()
    );
    // One connection did it all, renewing its ticket: none broke.
    let log = b.log();
    assert!(!log.contains("link ended"), "{log}");
}

#[test]
fn only_the_owner_removes_members_and_never_itself() {
    let (w, u) = World::network(&["alice", "bob", "carol"]);
    let one_line = |out: &std::process::Output, says: &str| {
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{err}");
    };
    one_line(
        &w.fsd(&u[1], &["remove-member", "g", "carol"]),
        "only the owner of group g can do that",
    );
    one_line(
        &w.fsd(&u[0], &["remove-member", "g", "alice"]),
        "the owner cannot remove themselves from group g",
    );
    one_line(
        &w.fsd(&u[0], &["remove-member", "g", "dave"]),
        "dave is not a member of group g",
    );
    let out = w.fsd_ok(&u[0], &["remove_member", "g", "carol"]);
    assert_eq!(out.trim(), "removed carol from g");
    assert!(w.fsd_ok(&u[0], &["list-groups"]).contains("members=2"));
    assert!(!w.fsd_ok(&u[2], &["list-groups"]).contains("[member]"));
}

/// A group deleted (its last member left) and created again under its name
/// is another group: a ticket carol got for the first one, still within its
/// lifetime, opens nothing of the second on bob's daemon, which serves the
/// second to its own members.
#[test]
fn a_ticket_for_a_deleted_group_opens_nothing_of_one_created_again() {
    let (w, u) = World::network(&["alice", "bob", "carol"]);
    let b = w.mount(&u[1], &[]);
    let src = w.path("first.bin");
    random_file(&src, MIB, 6);
    b.cp_in(&src, "g");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let carols = key();
    let old = rt.block_on(ticket(
        &tracker_client(&w, &carols),
        &u[2],
        carols.peer_id(),
    ));

    for user in [&u[2], &u[1], &u[0]] {
        w.fsd_ok(user, &["leave-group", "g"]);
    }
    w.fsd_ok(&u[1], &["create-group", "g"]);
    wait_until("bob's mount shows the new g", HANG_LIMIT, || {
        b.path("g").exists()
    });
    let again = w.path("again.bin");
    random_file(&again, MIB, 7);
    b.cp_in(&again, "g");
    let id = file_id(&b, "g/again.bin");
    let piece = PeerRequest::Piece { file: id, index: 0 };

    rt.block_on(async {
        let auth = |ticket| PeerRequest::Authenticate { ticket };
        let mut conn = connect_as(&b, &carols).await;
        let refused = exchange(&mut conn, 1, auth(old.clone())).await;
        let PeerReply::Error(PeerError::TicketRefused(TicketError::OtherGroup {
            ticket: earlier,
            current,
            ..
        })) = refused
        else {
            panic!("an earlier group's ticket was not refused: {refused:?}");
        };
        assert_eq!(earlier, old.group_id);
        assert!(current > earlier, "{current} after {earlier}");
        assert_eq!(
            exchange(&mut conn, 2, piece.clone()).await,
            PeerReply::Error(PeerError::NotAuthenticated)
        );

        // A member of the new group is served.
        let bobs = key();
        let mut theirs = connect_as(&b, &bobs).await;
        let fresh = ticket(&tracker_client(&w, &bobs), &u[1], bobs.peer_id()).await;
        assert_eq!(fresh.group_id, current);
        assert_eq!(
            exchange(&mut theirs, 1, auth(fresh)).await,
            PeerReply::Authenticated
        );
        assert!(is_piece(&exchange(&mut theirs, 2, piece).await));
    });
}

/// A tracker refuses to start with a `--ticket-ttl` longer than daemons
/// accept, saying so, rather than handing out tickets every daemon
/// refuses or that outlast a removal by hours.
#[test]
fn a_tracker_refuses_a_ticket_lifetime_over_the_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let trackers = dir.path().join("trackers.txt");
    std::fs::write(&trackers, "127.0.0.1:1\n").unwrap();
    let mut child = Command::new(fileshare_tests::bin("fileshare-tracker"))
        .arg(&trackers)
        .arg("1")
        .args(["--ticket-ttl", "86400", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fileshare-tracker");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > HANG_LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the tracker started with tickets that last a day");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ticket-ttl") && err.contains("1 to 3600 seconds"),
        "{err}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "it stopped before anything"
    );
}
