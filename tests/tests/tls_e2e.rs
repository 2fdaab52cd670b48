//! Keys and encryption, end to end: a tracker's key is printed, pinned or
//! remembered, and a different one refused with both named; an impostor at
//! a tracker's address gets nothing from the cluster; a client connection
//! cannot carry cluster messages; a peer is known by its key; and what
//! crosses the wire between a daemon and its tracker, and between two
//! daemons, holds no password, session token or file content.

use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::messages::tracker::Holding;
use fileshare_protocol::messages::tracker::{Announce, ListGroups, Locate};
use fileshare_protocol::messages::{Request, Role, SessionToken, TrackerRequest};
use fileshare_protocol::tls::{self, ClientTls, Pin, SecureStream, TlsError};
use fileshare_protocol::trackers_file::TrackerEntry;
use fileshare_protocol::{codec, Bitfield, FileId, Fingerprint, Identity, PIECE_LEN};
use fileshare_tests::cli::Fsd;
use fileshare_tests::cluster::Cluster;
use fileshare_tests::mount::{require_fuse, wait_for, Mount};
use fileshare_tests::relay::{holds_run_of, Relay};
use fileshare_tests::tracker::Tracker;
use fileshare_tests::{bin, cmp, random_file, MIB};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What `fileshare-tracker FILE NO --data-dir DIR --fingerprint` prints.
fn fingerprint_of(t: &Tracker) -> Fingerprint {
    let out = std::process::Command::new(bin("fileshare-tracker"))
        .arg(t.trackers_file())
        .arg(t.no().to_string())
        .arg("--data-dir")
        .arg(t.data_dir())
        .arg("--fingerprint")
        .output()
        .expect("run fileshare-tracker --fingerprint");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    text.trim().parse().expect("a fingerprint")
}

/// Asserts that `text` names every one of `parts`.
fn names(text: &str, parts: &[&dyn std::fmt::Display]) {
    for part in parts {
        let part = part.to_string();
        assert!(text.contains(&part), "{part} is not named in: {text}");
    }
}

/// The session token a home's `fsd login` saved.
fn session_of(home: &Path) -> SessionToken {
    let text = std::fs::read_to_string(home.join("session")).expect("session file");
    let hex = text.lines().nth(1).expect("token line");
    let bytes = fileshare_protocol::ids::unhex(hex).expect("hex token");
    SessionToken(bytes.try_into().expect("32 bytes"))
}

#[test]
fn the_fingerprint_is_printed_and_a_pinned_key_is_required() {
    let tracker = Tracker::start();
    let fp = fingerprint_of(&tracker);
    assert_eq!(fingerprint_of(&tracker), fp, "the key is made once");
    assert!(tracker.log().contains(&fp.to_string()), "logged at start");

    // The right fingerprint in the trackers file: served, and nothing is
    // remembered (the file is the trust).
    let pinned = tracker.dir().join("pinned.txt");
    std::fs::write(&pinned, format!("{} {fp}  # tracker 1\n", tracker.addr())).unwrap();
    let alice = Fsd::with_trackers(&pinned);
    alice.ok(&["create-user", "alice"]);
    alice.ok(&["login", "alice"]);
    assert!(!alice.home().join("known_keys").exists());

    // A wrong one: refused in one line naming both keys; nothing is sent.
    let wrong = Identity::generate().unwrap().fingerprint();
    let forged = tracker.dir().join("forged.txt");
    std::fs::write(&forged, format!("{} {wrong}\n", tracker.addr())).unwrap();
    let mallory = Fsd::with_trackers(&forged);
    let line = mallory.fails(&["create-user", "mallory"]);
    names(&line, &[&fp, &wrong, &tracker.addr(), &"trackers file"]);
    let line = Fsd::with_trackers(&pinned).fails(&["login", "mallory"]);
    assert!(line.contains("wrong user name or password"), "{line}");
}

#[test]
fn a_first_seen_key_is_remembered_and_a_changed_key_refused() {
    let mut tracker = Tracker::start();
    let fp = fingerprint_of(&tracker);
    let alice = Fsd::new(&tracker);
    let out = alice.run(&["create-user", "alice"]);
    assert!(out.ok(), "{}", out.stderr);
    assert_eq!(out.stderr.matches("remembered tracker").count(), 1);
    names(&out.stderr, &[&fp, &tracker.addr()]);
    let known = alice.home().join("known_keys");
    let text = std::fs::read_to_string(&known).unwrap();
    assert!(
        text.lines()
            .any(|l| l == format!("{} {fp}", tracker.addr())),
        "{text}"
    );
    let out = alice.run(&["login", "alice"]);
    assert!(
        out.ok() && out.stderr.is_empty(),
        "said once: {}",
        out.stderr
    );

    // The tracker's key is replaced (its key files gone, its state kept).
    tracker.kill9();
    for name in ["tracker.key.der", "tracker.cert.der"] {
        std::fs::remove_file(tracker.data_dir().join(name)).unwrap();
    }
    tracker.restart();
    let new = fingerprint_of(&tracker);
    assert_ne!(new, fp);
    let line = alice.fails(&["list-groups"]);
    names(&line, &[&fp, &new, &tracker.addr(), &known.display()]);

    // The user who knows the key really changed removes its line.
    let kept: String = std::fs::read_to_string(&known)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(tracker.addr()))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&known, kept).unwrap();
    let out = alice.run(&["list-groups"]);
    assert!(out.ok(), "{}", out.stderr);
    names(&out.stderr, &[&new]);
}

#[test]
fn an_impostor_at_a_trackers_address_gets_nothing() {
    let mut cluster = Cluster::start(2);
    let alice = Fsd::with_trackers(cluster.trackers_file());
    alice.ok(&["create-user", "alice"]);
    alice.ok(&["login", "alice"]);
    alice.ok(&["create-group", "before"]);

    // Tracker 2 goes away and a fresh tracker (a new data directory, so a
    // new key) takes its address and number.
    cluster.kill9(2);
    let mut impostor = Tracker::member(
        cluster.trackers_file(),
        2,
        cluster.addr(2),
        &["--announce-interval", "1"],
    );
    impostor.launch().expect("the impostor starts");
    // Long enough for many of its dials to tracker 1, and tracker 1's to it.
    std::thread::sleep(Duration::from_secs(4));

    // Through the impostor alone (a fresh home, which trusts it on first
    // use): no user, no session, no write.
    let only_it = impostor.dir().join("only-2.txt");
    std::fs::write(&only_it, format!("{}\n", cluster.addr(2))).unwrap();
    let mallory = Fsd::with_trackers(&only_it);
    mallory.fails(&["create-user", "mallory"]);
    mallory.fails(&["login", "alice"]);
    let log = impostor.log();
    assert!(!log.contains("following tracker"), "{log}");
    assert!(!log.contains("leading view"), "{log}");

    // Tracker 1 serves on, and said once what it refused.
    alice.ok(&["create-group", "during"]);
    let groups = alice.ok(&["list-groups"]);
    assert!(
        groups.contains("before") && groups.contains("during"),
        "{groups}"
    );
    let log = cluster.tracker(1).log();
    let refused = "refused a connection claiming to be tracker 2";
    assert_eq!(log.matches(refused).count(), 1, "{log}");
    assert_eq!(log.matches("not talking to tracker 2").count(), 1, "{log}");

    // The real tracker 2 comes back: admitted, and caught up.
    drop(impostor);
    cluster.restart(2);
    cluster.wait_serving(2);
    let session = session_of(alice.home());
    let names: Vec<String> = rt()
        .block_on(cluster.client(2).call(ListGroups { session }))
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert!(names.contains(&"during".to_string()), "{names:?}");
}

/// A client connection (it says `Role::Client`) past the handshake.
async fn as_client(addr: &str) -> SecureStream {
    let key = Identity::generate().unwrap();
    let tls = ClientTls::new(Some(&key), Pin::FirstUse).unwrap();
    let (mut s, _) = tls::connect_stream(addr, &tls, T).await.unwrap();
    let hello = codec::encode(&fileshare_protocol::messages::Hello {
        magic: fileshare_protocol::messages::MAGIC,
        version: fileshare_protocol::PROTOCOL_VERSION,
        role: Role::Client,
    })
    .unwrap();
    s.write_all(&fileshare_protocol::frame::header(hello.len()))
        .await
        .unwrap();
    s.write_all(&hello).await.unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.unwrap();
    let mut theirs = vec![0; u32::from_be_bytes(head) as usize];
    s.read_exact(&mut theirs).await.unwrap();
    s
}

#[test]
fn a_client_connection_that_sends_cluster_messages_is_closed() {
    use fileshare_protocol::messages::cluster::{
        ClusterMsg, LogPoint, MemberRole, Status, View, ViewId,
    };
    let cluster = Cluster::start(2);
    let rt = rt();
    let far = LogPoint {
        index: u64::MAX / 2,
        hash: [7; 32],
    };
    let view = ViewId {
        epoch: u64::MAX / 2,
        leader: 2,
    };
    let messages = [
        // "I lead a newer view with a longer log": would unseat a leader.
        ClusterMsg::Status(Status {
            role: MemberRole::Leader,
            view: Some(View {
                id: view,
                members: vec![1, 2],
            }),
            committed_view: Some(view),
            last: far,
            commit: far.index,
            base: far,
            applied: far.index,
            holds: vec![],
        }),
        ClusterMsg::Append {
            view,
            prev: far,
            entries: vec![serde_bytes::ByteBuf::from(vec![1; 64])],
            commit: far.index,
        },
        ClusterMsg::Diverged {
            reason: "you are refused".into(),
        },
        ClusterMsg::PeerLeft {
            peer: fileshare_protocol::PeerId([3; 16]),
            user: "alice".into(),
        },
    ];
    for msg in messages {
        let body = codec::encode(&msg).unwrap();
        // Read as a client request, which is all a client connection is
        // ever read as, it is no request at all.
        assert!(
            codec::decode::<Request<TrackerRequest>>(&body).is_err(),
            "{msg:?} happens to read as a client request"
        );
        rt.block_on(async {
            let mut s = as_client(cluster.addr(1)).await;
            s.write_all(&fileshare_protocol::frame::header(body.len()))
                .await
                .unwrap();
            s.write_all(&body).await.unwrap();
            let mut buf = [0u8; 64];
            match tokio::time::timeout(T, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                Ok(Ok(n)) => panic!("{msg:?}: the tracker answered {n} bytes"),
                Err(_) => panic!("{msg:?}: the connection stayed open"),
            }
        });
    }
    // Neither tracker took any of it for the cluster's word.
    for i in [1, 2] {
        cluster.wait_serving(i);
    }
    let log = cluster.tracker(1).log();
    assert_eq!(log.matches("bad frame").count(), 4, "{log}");
    assert!(!log.contains("refused"), "{log}");
}

#[test]
fn a_peer_is_known_by_its_key() {
    require_fuse();
    let tracker = Tracker::start();
    let alice = Fsd::new(&tracker);
    alice.user("alice");
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::start(
        &bin("fsd"),
        alice.home(),
        tracker.trackers_file(),
        &dir.path().join("mnt"),
        &[],
    );
    let alice_key = Identity::load_or_create(alice.home(), "peer").unwrap();
    let alice_id = alice_key.peer_id();
    let key = Identity::generate().unwrap();
    let rt = rt();
    rt.block_on(async {
        // Pinned to alice's peer id: her daemon answers as her.
        let tls = ClientTls::new(Some(&key), Pin::Peer(alice_id)).unwrap();
        let me = Role::Peer { id: key.peer_id() };
        let (_, theirs, seen) = tls::connect(&mount.listen, &tls, me, T).await.unwrap();
        assert_eq!(theirs, Role::Peer { id: alice_id });
        assert_eq!(seen, alice_key.fingerprint());

        // Pinned to another peer: refused by the fetching side, naming both.
        let other = Identity::generate().unwrap().peer_id();
        let tls = ClientTls::new(Some(&key), Pin::Peer(other)).unwrap();
        let me = Role::Peer { id: key.peer_id() };
        let err = tls::connect(&mount.listen, &tls, me, T).await.unwrap_err();
        assert!(matches!(err, TlsError::PeerMismatch { .. }), "{err:?}");

        // Without a key of its own, a requester is refused.
        let tls = ClientTls::new(None, Pin::Peer(alice_id)).unwrap();
        let me = Role::Peer { id: key.peer_id() };
        assert!(tls::connect(&mount.listen, &tls, me, T).await.is_err());

        // Saying it is another peer (alice herself) than its key makes it:
        // the connection is closed before any request is read.
        let tls = ClientTls::new(Some(&key), Pin::Peer(alice_id)).unwrap();
        let me = Role::Peer { id: alice_id };
        let (mut conn, _, _) = tls::connect(&mount.listen, &tls, me, T).await.unwrap();
        let ask = Request {
            id: 1,
            body: fileshare_protocol::messages::PeerRequest::Subscribe {
                file: FileId([0; 32]),
            },
        };
        let _ = conn.write_frame(&ask).await;
        let reply = tokio::time::timeout(
            T,
            conn.read_frame::<fileshare_protocol::messages::Reply<
                fileshare_protocol::messages::PeerReply,
            >>(),
        )
        .await
        .expect("closed, not left hanging");
        assert!(!matches!(reply, Ok(Some(_))), "{reply:?}");
    });
}

/// What an eavesdropper must not find in `wire`.
fn assert_nothing_readable(wire: &[u8], what: &str, secrets: &[&[u8]], plain: &[u8]) {
    assert!(!wire.is_empty(), "{what}: nothing was relayed");
    for s in secrets {
        assert!(!holds_run_of(wire, s, s.len()), "{what}: a secret in clear");
    }
    assert!(
        !holds_run_of(wire, plain, 32),
        "{what}: 32 bytes of the file in clear"
    );
}

#[test]
fn nothing_readable_crosses_the_wire() {
    require_fuse();
    // Daemons announce rarely, so the announce below stands.
    let tracker = Tracker::with_args(&["--announce-interval", "60"]);
    let to_tracker = Relay::start(tracker.addr());
    let trackers = tracker.dir().join("via-relay.txt");
    std::fs::write(&trackers, format!("{}\n", to_tracker.addr())).unwrap();
    let (pw_a, pw_b) = ("alice's long password 4c1d", "bob's long password 9e2f");
    let alice = Fsd::with_trackers(&trackers).password(Some(pw_a));
    let bob = Fsd::with_trackers(&trackers).password(Some(pw_b));
    alice.user("alice");
    bob.user("bob");
    alice.ok(&["create-group", "g"]);
    bob.ok(&["join-group", "g"]);
    alice.ok(&["accept-request", "g", "bob"]);

    let dir = tempfile::tempdir().unwrap();
    let fsd = bin("fsd");
    let a = Mount::start(&fsd, alice.home(), &trackers, &dir.path().join("a"), &[]);
    let b = Mount::start(
        &fsd,
        bob.home(),
        &trackers,
        &dir.path().join("b"),
        &["--read-timeout", "30"],
    );
    let src = dir.path().join("secret.bin");
    let plain = random_file(&src, 2 * MIB + 12345, 21);
    std::fs::copy(&src, a.path("g/secret.bin")).expect("cp into the mount");
    wait_for("bob lists the file", Duration::from_secs(15), || {
        b.path("g/secret.bin").exists().then_some(())
    });

    // Alice's daemon is offered at a second relay, so the pieces cross it
    // too: announced with her own key (the tracker takes no other), as her
    // daemon announces itself.
    let to_alice = Relay::start(&a.listen);
    let id = FileId::from_hex(a.xattr("g/secret.bin", "user.fileshare.id").trim()).unwrap();
    let pieces = u32::try_from(plain.len().div_ceil(PIECE_LEN as usize)).unwrap();
    let key = Identity::load_or_create(alice.home(), "peer").unwrap();
    let rt = rt();
    rt.block_on(async {
        let entry = TrackerEntry {
            addr: tracker.addr().to_string(),
            fingerprint: None,
        };
        let known = dir.path().join("known_keys");
        let peer = key.peer_id();
        let daemon = TrackerClient::new(vec![entry], known, Some(key), T);
        let session = session_of(alice.home());
        let bob_session = session_of(bob.home());
        // Her daemon has announced the file; then the relay takes over.
        wait_for_peer(&daemon, bob_session, &a.listen).await;
        let holdings = vec![Holding {
            file: id,
            have: Bitfield::full(pieces),
        }];
        daemon
            .call(Announce {
                session,
                peer,
                addr: to_alice.addr().to_string(),
                also: vec![],
                holdings,
            })
            .await
            .expect("announce at the relay");
        wait_for_peer(&daemon, bob_session, to_alice.addr()).await;
    });
    cmp(&src, &b.path("g/secret.bin"));

    let tokens = [session_of(alice.home()), session_of(bob.home())];
    let hex: Vec<String> = tokens
        .iter()
        .map(|t| fileshare_protocol::ids::hex(&t.0))
        .collect();
    let secrets: Vec<&[u8]> = vec![
        pw_a.as_bytes(),
        pw_b.as_bytes(),
        &tokens[0].0,
        &tokens[1].0,
        hex[0].as_bytes(),
        hex[1].as_bytes(),
    ];
    let peer_wire = to_alice.seen();
    assert!(
        peer_wire.len() > plain.len(),
        "the file crossed the relay: {} bytes",
        peer_wire.len()
    );
    assert_nothing_readable(&peer_wire, "daemon to daemon", &secrets, &plain);
    assert_nothing_readable(&to_tracker.seen(), "daemon to tracker", &secrets, &plain);
}

/// Waits until the tracker lists `g/secret.bin` with a peer at `addr`.
async fn wait_for_peer(client: &TrackerClient, session: SessionToken, addr: &str) {
    for _ in 0..200 {
        if let Ok(l) = client
            .call(Locate {
                session,
                group: "g".into(),
                name: "secret.bin".into(),
            })
            .await
        {
            if l.peers.iter().any(|p| p.addr == addr) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the tracker never listed a peer at {addr}");
}
