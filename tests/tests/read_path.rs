//! The read path, driven in-process: a real tracker and real daemon nodes
//! (engine, store, peer server) on 127.0.0.1 in this test's process, with
//! no FUSE and no root (see `fileshare_tests::inproc`). Each test builds
//! its own small network.

use fileshare_protocol::messages::peer::{PeerError, PeerReply, PeerRequest};
use fileshare_protocol::messages::{Reply, Request, Role};
use fileshare_protocol::tls::{self, ClientTls, Pin};
use fileshare_protocol::{Identity, PIECE_LEN};
use fileshare_tests::inproc::{read, read_all, Net, Node, NodeOptions};
use fsd::engine::EngineError;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// A tracker, the sharer `alice` and the reader `bob`, both in group `g`.
async fn pair(reader: NodeOptions) -> (Net, Node, Node) {
    let net = Net::start().await;
    let alice = net.user("alice").await;
    let bob = net.user("bob").await;
    net.group("g", alice, &[("bob", bob)]).await;
    let a = net.node("alice", alice, NodeOptions::default()).await;
    let b = net.node("bob", bob, reader).await;
    (net, a, b)
}

fn piece(i: u64) -> u64 {
    i * PIECE_LEN
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_file_reads_back_exactly_from_one_seeder() {
    let (_net, alice, bob) = pair(NodeOptions::default()).await;
    let size = 3 * MIB + 123;
    let original = alice.share("g", "a.bin", size, 1).await;
    let stream = bob.open("g", "a.bin").await.unwrap();
    let read = read_all(&stream, size as u64, 128 * 1024).await;
    assert!(
        read == original,
        "the bytes read differ from the shared ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_seek_fetches_only_the_pieces_under_it() {
    let (_net, alice, bob) = pair(NodeOptions::default()).await;
    let original = alice.share("g", "a.bin", 12 * PIECE_LEN as usize, 2).await;
    let stream = bob.open("g", "a.bin").await.unwrap();
    let at = piece(5) + 1000;
    let (data, at_once) = read(&stream, at, 4096).await;
    assert!(!at_once, "the piece was not here yet");
    assert_eq!(data.unwrap(), &original[at as usize..at as usize + 4096]);
    let id = bob.entry("g", "a.bin").await.unwrap().id;
    let have = bob.engine().swarm(&id).unwrap().have();
    assert_eq!(
        have.ones().collect::<Vec<_>>(),
        vec![5],
        "a seek reads no ahead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_read_of_fetched_bytes_is_answered_on_the_callers_thread() {
    let (_net, alice, bob) = pair(NodeOptions::default()).await;
    let original = alice.share("g", "a.bin", 2 * MIB, 3).await;
    let stream = bob.open("g", "a.bin").await.unwrap();
    let (first, at_once) = read(&stream, 0, 64 * 1024).await;
    assert!(!at_once);
    let (again, at_once) = read(&stream, 0, 64 * 1024).await;
    assert!(at_once, "verified bytes wait for nothing");
    assert_eq!(first.unwrap(), again.unwrap());
    assert_eq!(
        &original[..64 * 1024],
        &read(&stream, 0, 64 * 1024).await.0.unwrap()[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_read_ahead_and_find_the_next_pieces_here() {
    let (_net, alice, bob) = pair(NodeOptions::default()).await;
    let size = 16 * PIECE_LEN as usize;
    let original = alice.share("g", "a.bin", size, 4).await;
    let stream = bob.open("g", "a.bin").await.unwrap();
    // Two sequential reads open the window; the pieces ahead are fetched
    // without further reads.
    read(&stream, 0, 128 * 1024).await.0.unwrap();
    read(&stream, 128 * 1024, 128 * 1024).await.0.unwrap();
    let id = bob.entry("g", "a.bin").await.unwrap().id;
    let swarm = bob.engine().swarm(&id).unwrap();
    fileshare_tests::wait_until("the read-ahead arrives", Duration::from_secs(20), || {
        swarm.has_range(0, 4 * PIECE_LEN)
    });
    let (data, at_once) = read(&stream, 256 * 1024, 64 * 1024).await;
    assert!(at_once);
    assert_eq!(data.unwrap(), &original[256 * 1024..320 * 1024]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_pull_from_every_seeder_of_the_file() {
    let net = Net::start().await;
    let (alice, carol, bob) = (
        net.user("alice").await,
        net.user("carol").await,
        net.user("bob").await,
    );
    net.group("g", alice, &[("carol", carol), ("bob", bob)])
        .await;
    let a = net.node("alice", alice, NodeOptions::default()).await;
    let c = net.node("carol", carol, NodeOptions::default()).await;
    let b = net.node("bob", bob, NodeOptions::default()).await;
    let size = 16 * PIECE_LEN as usize;
    let original = a.share("g", "same.bin", size, 5).await;
    assert_eq!(c.share("g", "same.bin", size, 5).await, original);
    let stream = b.open("g", "same.bin").await.unwrap();
    let id = b.entry("g", "same.bin").await.unwrap().id;
    let swarm = b.engine().swarm(&id).unwrap();
    // Both links up before the pieces flow: on a loaded machine the first
    // seeder could otherwise send all sixteen while the other's handshake
    // is still under way.
    fileshare_tests::wait_until("both seeders linked", Duration::from_secs(20), || {
        swarm.view().links.len() == 2
    });
    assert!(read_all(&stream, size as u64, 128 * 1024).await == original);
    let from = swarm.counters();
    let senders = from.iter().filter(|(_, c)| c.bytes > 0).count();
    assert_eq!(senders, 2, "pieces came from {from:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_can_neither_list_nor_open_a_groups_file() {
    let (net, alice, _bob) = pair(NodeOptions::default()).await;
    alice.share("g", "a.bin", MIB, 6).await;
    let eve = net.user("eve").await;
    let e = net.node("eve", eve, NodeOptions::default()).await;
    let err = e.open("g", "a.bin").await.err().expect("eve is no member");
    assert_eq!(err.errno(), libc::EACCES, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_and_past_the_end_return_what_there_is() {
    let (_net, alice, bob) = pair(NodeOptions::default()).await;
    let size = PIECE_LEN as usize + 100;
    let original = alice.share("g", "a.bin", size, 7).await;
    let stream = bob.open("g", "a.bin").await.unwrap();
    let tail = read(&stream, size as u64 - 100, 4096).await.0.unwrap();
    assert_eq!(tail, &original[size - 100..]);
    assert!(read(&stream, size as u64, 4096).await.0.unwrap().is_empty());
    assert!(read(&stream, size as u64 + 10 * PIECE_LEN, 4096)
        .await
        .0
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_reads_as_empty() {
    let (_net, alice, bob) = pair(NodeOptions::default()).await;
    alice.share("g", "empty", 0, 8).await;
    let stream = bob.open("g", "empty").await.unwrap();
    let (data, at_once) = read(&stream, 0, 4096).await;
    assert!(at_once && data.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_no_peer_serves_fails_after_the_read_timeout_naming_the_pieces() {
    let reader = NodeOptions {
        read_timeout: Duration::from_secs(1),
        ..NodeOptions::default()
    };
    let (_net, alice, bob) = pair(reader).await;
    alice.share("g", "a.bin", 4 * PIECE_LEN as usize, 9).await;
    let stream = bob.open("g", "a.bin").await.unwrap();
    alice.stop().await;
    let (data, _) = read(&stream, piece(2), 4096).await;
    match data {
        Err(EngineError::Timeout { missing, secs }) => {
            let missing: Vec<u32> = missing.iter().map(|p| p.get()).collect();
            assert_eq!(missing, vec![2]);
            assert_eq!(secs, 1);
        }
        other => panic!("expected a timeout, got {:?}", other.map(|d| d.len())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_its_sharer_stopped_sharing_is_no_longer_listed() {
    let (_net, alice, bob) = pair(NodeOptions::default()).await;
    alice.share("g", "a.bin", MIB, 10).await;
    assert!(bob.entry("g", "a.bin").await.is_ok());
    alice.engine().unshare("g", "a.bin").await.unwrap();
    // Listings are cached briefly: within a few seconds the file is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match bob.open("g", "a.bin").await {
            Err(e) if e.errno() == libc::ENOENT => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "still opens: {:?}",
                other.err()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_pieces_beyond_the_cache_budget_are_evicted_and_fetched_again() {
    let budget = 2 * PIECE_LEN;
    let reader = NodeOptions {
        cache_size: Some(budget),
        ..NodeOptions::default()
    };
    let (_net, alice, bob) = pair(reader).await;
    let size = 8 * PIECE_LEN as usize;
    let original = alice.share("g", "a.bin", size, 11).await;
    let stream = bob.open("g", "a.bin").await.unwrap();
    assert!(read_all(&stream, size as u64, 128 * 1024).await == original);
    let engine = bob.engine().clone();
    fileshare_tests::wait_until(
        "the cache is back within its budget",
        Duration::from_secs(15),
        || {
            let (budget, used) = engine.cache_usage();
            used <= budget
        },
    );
    let id = bob.entry("g", "a.bin").await.unwrap().id;
    assert!(
        !bob.engine().swarm(&id).unwrap().have().get(0),
        "the first piece went first"
    );
    let (again, _) = read(&stream, 0, 4096).await;
    assert_eq!(again.unwrap(), &original[..4096]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_that_sends_wrong_bytes_is_dropped_and_the_file_still_reads_exactly() {
    let net = Net::start().await;
    let (alice, mallory, bob) = (
        net.user("alice").await,
        net.user("mallory").await,
        net.user("bob").await,
    );
    net.group("g", alice, &[("mallory", mallory), ("bob", bob)])
        .await;
    let a = net.node("alice", alice, NodeOptions::default()).await;
    let liar = NodeOptions {
        corrupt_uploads: true,
        ..NodeOptions::default()
    };
    let m = net.node("mallory", mallory, liar).await;
    let b = net.node("bob", bob, NodeOptions::default()).await;
    let size = 8 * PIECE_LEN as usize;
    let original = a.share("g", "a.bin", size, 12).await;
    m.share("g", "a.bin", size, 12).await;
    let stream = b.open("g", "a.bin").await.unwrap();
    assert!(read_all(&stream, size as u64, 128 * 1024).await == original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_server_serves_nothing_without_a_ticket() {
    let (_net, alice, bob) = pair(NodeOptions::default()).await;
    alice.share("g", "a.bin", MIB, 13).await;
    let id = bob.entry("g", "a.bin").await.unwrap().id;
    let dir = tempfile::tempdir().unwrap();
    let stranger = Identity::load_or_create(dir.path(), "peer").unwrap();
    let me = Role::Peer {
        id: stranger.peer_id(),
    };
    let seeder = alice.node.tracker.peer;
    let pinned = ClientTls::new(Some(&stranger), Pin::Peer(seeder)).unwrap();
    let (conn, _, _) = tls::connect(&alice.node.addr, &pinned, me, Duration::from_secs(5))
        .await
        .expect("TLS with the seeder");
    let (mut reader, mut writer) = conn.into_split();
    for body in [
        PeerRequest::Subscribe { file: id },
        PeerRequest::Piece { file: id, index: 0 },
    ] {
        writer.write_frame(&Request { id: 1, body }).await.unwrap();
        let reply: Reply<PeerReply> = reader.read_peer_reply().await.unwrap().expect("a reply");
        assert!(
            matches!(reply.body, PeerReply::Error(PeerError::NotAuthenticated)),
            "{:?}",
            reply.body
        );
    }
}

/// Alice, the only seeder, uploads at 512 KiB/s, so each piece leaves her
/// in parts over a second. Bob reads first; Carol, who joins while Bob's
/// pieces are arriving, is offered them as they start and gets their bytes
/// from Bob before he holds them whole. Both read exactly the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_passes_on_from_a_reader_while_it_still_arrives() {
    let net = Net::start().await;
    let (alice, bob, carol) = (
        net.user("alice").await,
        net.user("bob").await,
        net.user("carol").await,
    );
    net.group("g", alice, &[("bob", bob), ("carol", carol)])
        .await;
    let slow = NodeOptions {
        max_upload_rate: Some(512 * 1024),
        ..NodeOptions::default()
    };
    let a = net.node("alice", alice, slow).await;
    let b = net.node("bob", bob, NodeOptions::default()).await;
    let c = net.node("carol", carol, NodeOptions::default()).await;
    let size = 12 * PIECE_LEN as usize;
    let original = a.share("g", "slow.bin", size, 21).await;
    let id = a.entry("g", "slow.bin").await.unwrap().id;
    let bobs = b.open("g", "slow.bin").await.unwrap();
    let bob_reads = tokio::spawn(async move { read_all(&bobs, size as u64, 128 * 1024).await });
    let bob_swarm = fileshare_tests::wait_for("bob's swarm", Duration::from_secs(20), || {
        b.engine().swarm(&id)
    });
    fileshare_tests::poll_until("a piece arriving at bob", Duration::from_secs(20), || {
        !bob_swarm.arrivals.is_empty()
    })
    .await;
    let carols = c.open("g", "slow.bin").await.unwrap();
    assert!(read_all(&carols, size as u64, 128 * 1024).await == original);
    assert!(bob_reads.await.unwrap() == original);
    let relayed = bob_swarm.arrivals.relayed();
    assert!(relayed > 0, "bob passed on nothing before it was whole");
    let from = c.engine().swarm(&id).unwrap().counters();
    let senders = from.iter().filter(|(_, c)| c.bytes > 0).count();
    assert_eq!(senders, 2, "carol fetched from alice and bob: {from:?}");
}
