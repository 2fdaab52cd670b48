//! Limits that hold under attack: a flood of half-sent frames, connection
//! caps per address, idle connections, strangers holding a daemon's peer
//! port, and quotas. Each attack is made by a
//! stranger speaking real TLS; everyone else keeps working.

use fileshare_protocol::frame::header;
use fileshare_protocol::messages::tracker::{
    CreateGroup, CreateUser, ListGroups, Login, Logout, ShareFile, StopShare,
};
use fileshare_protocol::messages::Role;
use fileshare_protocol::tls::{ClientTls, Pin, SecureStream};
use fileshare_protocol::{Identity, MAX_FRAME_LEN};
use fileshare_tests::liar::stranger;
use fileshare_tests::mount::Mount;
use fileshare_tests::tracker::{sign_up, Tracker};
use fileshare_tests::world::World;
use fileshare_tests::{random_file, wait_for, HANG_LIMIT, MIB};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Whether the server closed `s` within `within` (EOF, reset, or TLS's end
/// without notice), rather than leaving it open.
async fn closed_within(s: &mut SecureStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Resident memory of process `pid`, in MiB, from /proc.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024
}

/// `n` connections to `addr`, spread over 16 loopback addresses (under the
/// per-address caps), each of which sends a header claiming a whole frame
/// and then one byte of it. (A daemon keeps only the newest strangers, so
/// most of its ends are closed by the time this returns.)
async fn half_sent_frames(addr: &str, tls: ClientTls, role: Role, n: usize) -> Vec<SecureStream> {
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (addr, tls, gate, role) = (addr.to_string(), tls.clone(), gate.clone(), role.clone());
        tasks.push(tokio::spawn(async move {
            let _turn = gate.acquire().await.unwrap();
            let from = IpAddr::from([127, 0, 9, 1 + (i % 16) as u8]);
            // A daemon closes its oldest strangers for newer ones, maybe
            // before the handshake was done: an attacker tries again.
            let mut s = None;
            for _ in 0..5 {
                s = stranger(from, &addr, &tls, role.clone()).await;
                if s.is_some() {
                    break;
                }
            }
            let mut s = s?;
            s.write_all(&header(MAX_FRAME_LEN)).await.ok()?;
            s.write_all(&[7]).await.ok()?;
            s.flush().await.ok()?;
            Some(s)
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        if let Some(s) = t.await.unwrap() {
            open.push(s);
        }
    }
    open
}

/// 800 connections claiming 4 MiB frames, then one byte each, at the
/// tracker and at a daemon's peer port: both stay under 256 MiB, and
/// `fsd list-groups` is still answered (it gives up with an error on a
/// tracker that does not answer).
#[test]
fn a_flood_of_half_sent_frames_leaves_memory_bounded() {
    let (w, u) = World::network(&["alice"]);
    let m: Mount = w.mount(&u[0], &[]);
    let tracker_pid = w.tracker().pid().unwrap();
    let daemon_pid = m.pid().unwrap();
    let rt = rt();
    let stranger_key = Identity::generate().unwrap();
    let tracker_tls = ClientTls::new(None, Pin::FirstUse).unwrap();
    let peer_tls = ClientTls::new(Some(&stranger_key), Pin::FirstUse).unwrap();
    let peer_role = Role::Peer {
        id: stranger_key.fingerprint().peer_id(),
    };
    let (at_tracker, at_daemon) = rt.block_on(async {
        let t = half_sent_frames(w.tracker().addr(), tracker_tls, Role::Client, 800).await;
        let d = half_sent_frames(&m.listen, peer_tls, peer_role, 800).await;
        (t, d)
    });
    eprintln!(
        "flood in: tracker {}, daemon {}",
        at_tracker.len(),
        at_daemon.len()
    );
    assert_eq!(at_tracker.len(), 800, "every flood connection got in");
    assert_eq!(at_daemon.len(), 800, "every flood connection got in");
    std::thread::sleep(Duration::from_millis(500));
    let groups = w.fsd_ok(&u[0], &["list-groups"]);
    assert!(groups.contains('g'), "{groups}");
    let (tracker_rss, daemon_rss) = (rss_mib(tracker_pid), rss_mib(daemon_pid));
    eprintln!("under the flood: tracker {tracker_rss} MiB, daemon {daemon_rss} MiB");
    assert!(tracker_rss < 256, "tracker RSS {tracker_rss} MiB");
    assert!(daemon_rss < 256, "daemon RSS {daemon_rss} MiB");
    let root = std::fs::read_dir(m.path("")).unwrap().count();
    assert!(root >= 1, "the mount's root lists");
    drop(at_tracker);
    drop(at_daemon);
}

/// Over `--max-connections-per-address` from one address, a connection is
/// closed before TLS completes; other addresses, and the daemon's own
/// links, keep working. An idle connection is closed after
/// `--idle-timeout`, and a client that idles longer still gets its answers.
#[test]
fn per_address_cap_and_idle_deadline_close_only_the_offender() {
    let tracker =
        Tracker::with_args(&["--max-connections-per-address", "8", "--idle-timeout", "2"]);
    let rt = rt();
    let client = tracker.client();
    let session = rt.block_on(sign_up(&client, "alice"));
    let tls = ClientTls::new(None, Pin::FirstUse).unwrap();
    rt.block_on(async {
        let hog = IpAddr::from([127, 0, 8, 1]);
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(
                stranger(hog, tracker.addr(), &tls, Role::Client)
                    .await
                    .expect("under the cap"),
            );
        }
        assert!(
            stranger(hog, tracker.addr(), &tls, Role::Client)
                .await
                .is_none(),
            "the ninth connection from one address is closed"
        );
        let other = IpAddr::from([127, 0, 8, 2]);
        let mut fine = stranger(other, tracker.addr(), &tls, Role::Client)
            .await
            .expect("another address gets in");
        client
            .call(ListGroups { session })
            .await
            .expect("others are served");
        // Nobody sent a frame: every one is closed, for being idle (the
        // tracker's log below says after which deadline).
        assert!(closed_within(&mut fine, HANG_LIMIT).await);
        for s in &mut held {
            assert!(closed_within(s, HANG_LIMIT).await);
        }
        // The hog's slots are free again.
        assert!(stranger(hog, tracker.addr(), &tls, Role::Client)
            .await
            .is_some());
        // A client idle longer than the deadline reconnects and is served.
        tokio::time::sleep(Duration::from_secs(3)).await;
        client
            .call(ListGroups { session })
            .await
            .expect("served after idling");
    });
    let log = tracker.log();
    assert!(
        log.contains("connections from 127.0.8.1 are open, the most served from one address"),
        "{log}"
    );
    // Closed by `--idle-timeout 2`, not by the default of two minutes.
    let idle = "timed out after 2000 ms waiting for the next frame (idle connection)";
    let closed = log.lines().filter(|l| l.contains(idle)).count();
    assert!(closed >= 9, "{closed} idle connections closed:\n{log}");
}

/// A user's 101st group is refused, naming the limit and its flag; every
/// mount's root still lists.
#[test]
fn the_101st_group_is_refused_and_every_root_still_lists() {
    let (w, u) = World::network(&["alice", "bob"]);
    let rt = rt();
    let client = w.tracker().client();
    let session = u[0].session();
    // "g" is the first of alice's groups.
    rt.block_on(async {
        for i in 2..=100 {
            client
                .call(CreateGroup {
                    session,
                    group: format!("alice-{i:03}"),
                })
                .await
                .unwrap_or_else(|e| panic!("group {i}: {e}"));
        }
    });
    let out = w.fsd(&u[0], &["create-group", "one-too-many"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limit reached") && err.contains("--max-groups-per-user 100"),
        "{err}"
    );
    // Others still create theirs.
    w.fsd_ok(&u[1], &["create-group", "bobs"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let root_a: Vec<_> = std::fs::read_dir(a.path("")).unwrap().collect();
    let root_b: Vec<_> = std::fs::read_dir(b.path("")).unwrap().collect();
    assert_eq!(root_a.len(), 100, "alice's root lists her 100 groups");
    assert_eq!(root_b.len(), 2, "bob's root lists g and bobs");
}

/// An attacker hammering alice's password from one address is refused
/// again and again; alice, from her own address, logs in all the while
/// (`fsd login` does not retry: a refusal would fail it), between a
/// refusal of the attacker's and the next.
#[test]
fn the_right_password_from_elsewhere_logs_in_while_an_attacker_hammers() {
    use fileshare_protocol::messages::{Reply, Request, TrackerRequest, TrackerResult};
    use fileshare_protocol::ErrorCode;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (w, u) = World::network(&["alice"]);
    let rt = rt();
    let tls = ClientTls::new(None, Pin::FirstUse).unwrap();
    let attacker = IpAddr::from([127, 0, 7, 1]);
    let alice_in = Arc::new(AtomicBool::new(false));
    let (refused_tx, refused_rx) = std::sync::mpsc::channel();
    let addr = w.tracker().addr().to_string();
    // Guesses until refused once alice is in; says when first refused.
    let hammering = rt.spawn({
        let alice_in = alice_in.clone();
        async move {
            let s = stranger(attacker, &addr, &tls, Role::Client)
                .await
                .expect("the attacker connects");
            let (r, wr) = tokio::io::split(s);
            let mut conn = fileshare_protocol::Connection::new(r, wr);
            let mut outcomes = Vec::new();
            for id in 0.. {
                let after_alice = alice_in.load(Ordering::SeqCst);
                let req = Request {
                    id,
                    body: TrackerRequest::from(Login {
                        user: "alice".into(),
                        password: format!("guess-{id}"),
                    }),
                };
                conn.write_frame(&req).await.unwrap();
                let reply: Reply<TrackerResult> = conn.read_frame().await.unwrap().unwrap();
                let refused = matches!(reply.body, Err(ErrorCode::TooManyAttempts { .. }));
                outcomes.push(reply.body);
                if refused {
                    let _ = refused_tx.send(());
                    if after_alice {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            outcomes
        }
    });
    refused_rx
        .recv_timeout(HANG_LIMIT)
        .expect("the attacker is refused");
    w.fsd_ok(&u[0], &["login", "alice"]);
    alice_in.store(true, Ordering::SeqCst);
    let outcomes = rt
        .block_on(async { tokio::time::timeout(HANG_LIMIT, hammering).await })
        .expect("the attacker is refused after alice logged in")
        .unwrap();
    assert!(
        !outcomes.iter().any(|o| o.is_ok()),
        "a guess logged in: {outcomes:?}"
    );
}

/// A client that sends listing requests without end and never reads the
/// replies is stopped being read once its replies fill its budget: the
/// tracker's memory stays bounded and everyone else is served.
#[test]
fn a_client_that_never_reads_its_replies_is_bounded() {
    use fileshare_protocol::messages::{Request, TrackerRequest};
    let (w, u) = World::network(&["alice"]);
    let rt = rt();
    let client = w.tracker().client();
    let session = u[0].session();
    // Replies of about 20 KB each.
    rt.block_on(async {
        for i in 0..90 {
            let name = format!("{i:03}-{}", "n".repeat(200));
            client
                .call(CreateGroup {
                    session,
                    group: name.to_string(),
                })
                .await
                .unwrap();
        }
    });
    let tls = ClientTls::new(None, Pin::FirstUse).unwrap();
    let sent = rt.block_on(async {
        let s = stranger(
            IpAddr::from([127, 0, 6, 1]),
            w.tracker().addr(),
            &tls,
            Role::Client,
        )
        .await
        .unwrap();
        let (r, wr) = tokio::io::split(s);
        let mut conn = fileshare_protocol::Connection::new(r, wr);
        let mut sent = 0u64;
        let flood = async {
            for id in 0..500_000 {
                let req = Request {
                    id,
                    body: TrackerRequest::from(ListGroups { session }),
                };
                if conn.write_frame(&req).await.is_err() {
                    return;
                }
                sent += 1;
            }
        };
        // The tracker stops reading it: the writes block.
        let _ = tokio::time::timeout(Duration::from_secs(5), flood).await;
        // The client gives up with an error on a tracker that does not
        // answer.
        client
            .call(ListGroups { session })
            .await
            .expect("others are served");
        let rss = rss_mib(w.tracker().pid().unwrap());
        eprintln!("{sent} listings asked, none read: tracker {rss} MiB");
        assert!(rss < 256, "tracker RSS {rss} MiB");
        drop(conn);
        sent
    });
    assert!(
        sent < 500_000,
        "the tracker kept reading a client that never reads"
    );
}

/// Sends the requests of `bodies` over `conns` connections from the
/// loopback address `from`, all connected first, so the tracker has them
/// all at once; returns the replies' bodies by request.
async fn all_at_once(
    from: IpAddr,
    tracker: String,
    conns: usize,
    bodies: Vec<fileshare_protocol::messages::TrackerRequest>,
) -> Vec<fileshare_protocol::messages::TrackerResult> {
    use fileshare_protocol::messages::{Reply, Request, TrackerResult};
    let tls = ClientTls::new(None, Pin::FirstUse).unwrap();
    let mut streams = Vec::new();
    for _ in 0..conns {
        let s = stranger(from, &tracker, &tls, Role::Client).await;
        streams.push(s.expect("the client connects"));
    }
    let n = bodies.len();
    let mut shares: Vec<Vec<Request<_>>> = (0..conns).map(|_| Vec::new()).collect();
    for (id, body) in bodies.into_iter().enumerate() {
        shares[id % conns].push(Request {
            id: id as u64,
            body,
        });
    }
    let start = Arc::new(tokio::sync::Barrier::new(conns));
    let tasks: Vec<_> = streams
        .into_iter()
        .zip(shares)
        .map(|(s, share)| {
            let start = start.clone();
            tokio::spawn(async move {
                let (r, wr) = tokio::io::split(s);
                let mut conn = fileshare_protocol::Connection::new(r, wr);
                start.wait().await;
                for req in &share {
                    conn.write_frame(req).await.unwrap();
                }
                let mut replies = Vec::new();
                for _ in 0..share.len() {
                    let reply: Reply<TrackerResult> =
                        conn.read_frame().await.unwrap().expect("a reply");
                    replies.push(reply);
                }
                replies
            })
        })
        .collect();
    let mut out = vec![None; n];
    for t in tasks {
        for reply in t.await.unwrap() {
            out[reply.id as usize] = Some(reply.body);
        }
    }
    out.into_iter()
        .map(|r| r.expect("one reply each"))
        .collect()
}

/// Hundreds of sign-ups sent at once from one address: the address gets
/// its budget of new accounts and a clear refusal for the rest, and a
/// user logging in meanwhile is served, not told the tracker is busy.
#[test]
fn a_flood_of_sign_ups_never_makes_a_login_busy() {
    use fileshare_protocol::messages::TrackerRequest;
    use fileshare_protocol::{ErrorCode, Limit};
    let tracker = Tracker::start();
    let rt = rt();
    let client = tracker.client();
    let flooder = IpAddr::from([127, 0, 7, 2]);
    rt.block_on(async {
        client
            .call(CreateUser {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await
            .unwrap();
        let floods: Vec<_> = (0..3)
            .map(|c| {
                let bodies = (0..100)
                    .map(|i| {
                        TrackerRequest::from(CreateUser {
                            user: format!("bot-{c}-{i}"),
                            password: "pw".into(),
                        })
                    })
                    .collect();
                tokio::spawn(all_at_once(flooder, tracker.addr().to_string(), 1, bodies))
            })
            .collect();
        // While the sign-ups wait for their hashes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let login = client
            .call(Login {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await;
        assert!(login.is_ok(), "login during a sign-up flood: {login:?}");
        let (mut made, mut budget, mut other) = (0, 0, Vec::new());
        for f in floods {
            for r in f.await.unwrap() {
                match r {
                    Ok(_) => made += 1,
                    Err(ErrorCode::LimitReached {
                        limit: Limit::SignUpsPerAddress,
                        message,
                    }) => {
                        assert!(message.contains("--max-sign-ups-per-address"), "{message}");
                        budget += 1;
                    }
                    Err(e) => other.push(e),
                }
            }
        }
        let busy = other.iter().filter(|e| **e == ErrorCode::Busy).count();
        eprintln!("sign-ups: {made} made, {budget} over budget, {busy} busy");
        assert_eq!(
            made + budget + busy,
            300,
            "only the budget and the sign-ups' own queue refuse: {other:?}"
        );
        // One at a time, the address gets the rest of its budget of 30
        // accounts an hour, then a refusal that says which limit.
        for i in 0.. {
            let one = vec![TrackerRequest::from(CreateUser {
                user: format!("late-{i}"),
                password: "pw".into(),
            })];
            match all_at_once(flooder, tracker.addr().into(), 1, one)
                .await
                .remove(0)
            {
                Ok(_) => made += 1,
                Err(ErrorCode::LimitReached {
                    limit: Limit::SignUpsPerAddress,
                    ..
                }) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(made <= 30, "{made} accounts from one address");
        }
        assert_eq!(made, 30);
    });
}

/// 64 wrong passwords for one name sent at once from one address, while
/// the tracker is busy hashing sign-ups: only the free failures (3) reach
/// the password check; over many names, only the address's budget (60).
/// The rest are refused before it.
#[test]
fn guesses_sent_at_once_get_no_more_checks_than_the_budget() {
    use fileshare_protocol::messages::TrackerRequest;
    use fileshare_protocol::ErrorCode;
    // Deep enough that every guess waits for its check, none is busy.
    let tracker = Tracker::with_args(&["--max-login-queue", "1000"]);
    let rt = rt();
    let client = tracker.client();
    // Sign-ups from three other addresses, so the guesses wait behind
    // password hashes rather than each being checked as it comes.
    let busy_hashing = |net: u8| {
        let addr = tracker.addr().to_string();
        (0..3u8)
            .map(|a| {
                let bodies = (0..20)
                    .map(|i| {
                        TrackerRequest::from(CreateUser {
                            user: format!("busy-{net}-{a}-{i}"),
                            password: "pw".into(),
                        })
                    })
                    .collect();
                tokio::spawn(all_at_once(
                    [127, 0, net, a + 1].into(),
                    addr.clone(),
                    1,
                    bodies,
                ))
            })
            .collect::<Vec<_>>()
    };
    rt.block_on(async {
        client
            .call(CreateUser {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await
            .unwrap();
        let guess = |user: String, i: usize| {
            TrackerRequest::from(Login {
                user,
                password: format!("guess-{i}"),
            })
        };
        let count = |replies: &[fileshare_protocol::messages::TrackerResult]| {
            let checked = replies
                .iter()
                .filter(|r| **r == Err(ErrorCode::WrongPassword))
                .count();
            let held = replies
                .iter()
                .filter(|r| matches!(r, Err(ErrorCode::TooManyAttempts { .. })))
                .count();
            (checked, held)
        };
        let background = busy_hashing(8);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let one_name = (0..64).map(|i| guess("alice".into(), i)).collect();
        let replies = all_at_once([127, 0, 7, 3].into(), tracker.addr().into(), 16, one_name).await;
        let (checked, held) = count(&replies);
        eprintln!("one name: {checked} checked, {held} held back");
        assert!(checked <= 3, "{checked} guesses reached the password check");
        assert_eq!(checked + held, 64, "{replies:?}");
        for b in background {
            b.await.unwrap();
        }
        let background = busy_hashing(9);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let many_names = (0..64).map(|i| guess(format!("user{i}"), i)).collect();
        let replies =
            all_at_once([127, 0, 7, 4].into(), tracker.addr().into(), 16, many_names).await;
        let (checked, held) = count(&replies);
        eprintln!("many names: {checked} checked, {held} held back");
        assert!(
            checked <= 60,
            "{checked} guesses reached the password check"
        );
        assert_eq!(checked + held, 64, "{replies:?}");
        for b in background {
            b.await.unwrap();
        }
        // Alice, from her own address, is not held up.
        client
            .call(Login {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await
            .expect("alice logs in");
    });
}

/// Quotas count bytes and sessions, not only items: with a MiB of metadata
/// per user, alice's shares over two groups stop at the MiB; with three
/// sessions per user, a fourth login waits for a logout. Each refusal says
/// which limit it is.
#[test]
fn metadata_and_sessions_are_capped_per_user() {
    use fileshare_protocol::client::ClientError;
    use fileshare_protocol::ids::FileMeta;
    use fileshare_protocol::{ErrorCode, Limit, PieceHash, PIECE_LEN};
    let tracker = Tracker::with_args(&[
        "--max-metadata-per-user",
        "1",
        "--max-sessions-per-user",
        "3",
    ]);
    let rt = rt();
    let client = tracker.client();
    // 10,000 invented piece hashes: 320,000 bytes of metadata.
    let file = |name: &str| FileMeta {
        name: name.into(),
        size: 10_000 * PIECE_LEN,
        piece_len: PIECE_LEN,
        hashes: (0..10_000u32)
            .map(|i| PieceHash::of(format!("{name}/{i}").as_bytes()))
            .collect(),
    };
    let limit_of = |r: Result<_, ClientError>| match r {
        Err(ClientError::Refused(ErrorCode::LimitReached { limit, message })) => {
            eprintln!("refused: {message}");
            limit
        }
        other => panic!("expected a quota refusal, got {other:?}"),
    };
    rt.block_on(async {
        let session = sign_up(&client, "alice").await;
        for g in ["g1", "g2"] {
            client
                .call(CreateGroup {
                    session,
                    group: g.to_string(),
                })
                .await
                .unwrap();
        }
        for (g, f) in [("g1", "f0"), ("g2", "f1"), ("g1", "f2")] {
            client
                .call(ShareFile {
                    session,
                    group: g.to_string(),
                    meta: file(f),
                })
                .await
                .unwrap();
        }
        let over = client
            .call(ShareFile {
                session,
                group: "g2".into(),
                meta: file("f3"),
            })
            .await;
        assert_eq!(limit_of(over), Limit::MetadataPerUser);
        client
            .call(StopShare {
                session,
                group: "g1".into(),
                name: "f0".into(),
            })
            .await
            .unwrap();
        client
            .call(ShareFile {
                session,
                group: "g2".into(),
                meta: file("f3"),
            })
            .await
            .unwrap();

        let second = client
            .call(Login {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await
            .unwrap()
            .token;
        client
            .call(Login {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await
            .unwrap();
        let fourth = client
            .call(Login {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await;
        assert_eq!(limit_of(fourth.map(|_| ())), Limit::SessionsPerUser);
        client.call(Logout { session: second }).await.unwrap();
        client
            .call(Login {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await
            .expect("a login after a logout");
    });
}

/// Raises this process's limit of open files to `n` (tests run as root),
/// for a test that holds many connections.
fn raise_open_files(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads the struct it is given.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(
        rc,
        0,
        "raise RLIMIT_NOFILE to {n}: {}",
        std::io::Error::last_os_error()
    );
}

/// Established TCP connections whose local port is `port`: the server's
/// ends of the connections to a listener on this host, as the kernel
/// counts them (/proc/net/tcp), whatever the clients think.
fn established_at(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port) && f[3] == "01"
        })
        .count()
}

/// 1,500 strangers (real TLS clients, each with its own self-signed key)
/// connect to a seeder's peer port from the address the members use too,
/// complete the handshake and say nothing more. A member still reads a
/// 16 MiB file from that seeder, over the first link it opens (none is
/// pushed out or refused), and 15 s after they connected the
/// seeder holds at most 100 of them: strangers have a small pool of their
/// own, newer ones push out the oldest, and none stays past the deadline
/// for showing a ticket.
#[test]
fn strangers_holding_a_peer_port_never_keep_members_out() {
    raise_open_files(8192);
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let src = w.path("big.bin");
    random_file(&src, 16 * MIB, 21);
    a.cp_in(&src, "g");
    let b = w.mount(&u[1], &["--read-timeout", "30"]);
    let theirs = b.path("g/big.bin");
    wait_for("big.bin listed for bob", HANG_LIMIT, || {
        theirs.exists().then_some(())
    });
    let port: u16 = a.listen.rsplit(':').next().unwrap().parse().unwrap();
    const STRANGERS: usize = 1500;
    let rt = rt();
    let (held, connected) = rt.block_on(async {
        // A few handshakes at a time, as one busy client would.
        let gate = Arc::new(tokio::sync::Semaphore::new(8));
        let mut tasks = Vec::new();
        for _ in 0..STRANGERS {
            let (addr, gate) = (a.listen.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let key = Identity::generate().unwrap();
                let tls = ClientTls::new(Some(&key), Pin::FirstUse).unwrap();
                let role = Role::Peer {
                    id: key.fingerprint().peer_id(),
                };
                let _turn = gate.acquire().await.unwrap();
                // Pushed out by newer strangers before its handshake was
                // done: it tries again, as an attacker would.
                for _ in 0..5 {
                    let s = stranger(IpAddr::from([127, 0, 0, 1]), &addr, &tls, role.clone());
                    if let Some(s) = s.await {
                        return Some(s);
                    }
                }
                None
            }));
        }
        let mut held = Vec::new();
        for t in tasks {
            held.extend(t.await.unwrap());
        }
        (held, Instant::now())
    });
    eprintln!(
        "{} strangers handshaken; the seeder holds {} connections on its port",
        held.len(),
        established_at(port)
    );
    let read = std::fs::read(&theirs);
    assert!(
        read.as_deref().ok() == Some(&std::fs::read(&src).unwrap()[..]),
        "bob could not read the file while strangers held the seeder's port: {:?}\n{}",
        read.map(|d| d.len()),
        b.log()
    );
    let log = b.log();
    let about = |l: &&str| l.contains("big.bin");
    let joined = log
        .lines()
        .filter(about)
        .filter(|l| l.contains("peer joined"));
    let ended = log
        .lines()
        .filter(about)
        .filter(|l| l.contains("link ended"));
    assert_eq!(
        (joined.count(), ended.count()),
        (1, 0),
        "bob's links to the seeder came and went:\n{log}"
    );
    std::thread::sleep(
        (connected + Duration::from_secs(15)).saturating_duration_since(Instant::now()),
    );
    let open = established_at(port);
    eprintln!("15 s after the strangers connected, the seeder holds {open} connections");
    assert!(open <= 100, "the seeder holds {open} connections");
    assert_eq!(
        held.len(),
        STRANGERS,
        "every stranger completed the handshake"
    );
    drop(held);
}
