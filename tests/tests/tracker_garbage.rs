//! Hostile bytes, inside TLS and outside it: the tracker closes that
//! connection without a reply, never panics, and keeps serving others.

use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::frame::{header, HEADER_LEN};
use fileshare_protocol::messages::tracker::{
    AskTicketKey, CreateGroup, CreateUser, ListGroups, Login,
};
use fileshare_protocol::messages::{
    Hello, Reply, Request, Role, TrackerRequest, TrackerResult, MAGIC,
};
use fileshare_protocol::tls::{self, ClientTls, Pin, SecureStream};
use fileshare_protocol::{codec, Identity, MAX_FRAME_LEN, PROTOCOL_VERSION};
use fileshare_tests::tracker::Tracker;
use fileshare_tests::HANG_LIMIT;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the tracker has for each step before the test calls it hung.
const T: Duration = HANG_LIMIT;

/// A TLS connection to the tracker (with a key of its own), before any
/// FileShare handshake.
async fn secure(t: &Tracker) -> SecureStream {
    let key = Identity::generate().unwrap();
    let tls = ClientTls::new(Some(&key), Pin::FirstUse).unwrap();
    tls::connect_stream(t.addr(), &tls, T).await.unwrap().0
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = header(body.len()).to_vec();
    f.extend_from_slice(body);
    f
}

/// Reads one whole frame's body; `None` when the tracker closed instead.
async fn read_frame(s: &mut SecureStream) -> Option<Vec<u8>> {
    let mut head = [0u8; HEADER_LEN];
    tokio::time::timeout(T, s.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let mut body = vec![0; u32::from_be_bytes(head) as usize];
    tokio::time::timeout(T, s.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(body)
}

/// A secure connection past the handshake, as a client.
async fn handshaken(t: &Tracker) -> SecureStream {
    let mut s = secure(t).await;
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: Role::Client,
    };
    s.write_all(&frame(&codec::encode(&hello).unwrap()))
        .await
        .unwrap();
    let theirs: Hello = codec::decode(&read_frame(&mut s).await.expect("tracker hello")).unwrap();
    assert_eq!(theirs.role, Role::Tracker { no: 1 });
    s
}

/// The tracker closes the connection (EOF, reset, or TLS's end without
/// notice) without sending a frame.
async fn assert_closed_without_reply(mut s: SecureStream, what: &str) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(T, s.read(&mut buf)).await {
        Ok(Ok(0)) => {}
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ) => {}
        Ok(Ok(n)) => panic!("{what}: the tracker answered {n} bytes"),
        Ok(Err(e)) => panic!("{what}: the tracker did not close the connection: {e}"),
        Err(_) => panic!("{what}: the tracker did not close the connection within {T:?}"),
    }
}

/// A plain TCP connection that is not TLS: the tracker ends it (perhaps
/// after a TLS alert), having understood nothing.
fn assert_plain_bytes_are_refused(t: &Tracker, bytes: &[u8], what: &str) {
    let mut s = TcpStream::connect(t.addr()).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(bytes).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{what}: the tracker did not close the connection: {e}"),
        }
    }
    // At most a TLS alert record (content type 21), never a FileShare frame.
    assert!(seen.is_empty() || seen[0] == 21, "{what}: got {seen:?}");
}

/// A well-behaved client is still served and the process is alive.
fn assert_still_serving(t: &mut Tracker, rt: &tokio::runtime::Runtime, client: &TrackerClient) {
    assert!(t.is_running(), "tracker died:\n{}", t.log());
    let r = rt.block_on(client.call(AskTicketKey));
    assert!(r.is_ok(), "the ticket key must be served: {r:?}");
}

#[test]
fn hostile_bytes_close_only_their_connection() {
    let mut tracker = Tracker::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A client connected throughout: its connection must outlive them all.
    let client = tracker.client();
    rt.block_on(client.call(CreateUser {
        user: "alice".into(),
        password: "pw".into(),
    }))
    .unwrap();
    assert_still_serving(&mut tracker, &rt, &client);

    // Plain text where TLS belongs, and a FileShare hello without TLS.
    assert_plain_bytes_are_refused(&tracker, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "http");
    let plain_hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: Role::Client,
    };
    let plain_hello = frame(&codec::encode(&plain_hello).unwrap());
    assert_plain_bytes_are_refused(&tracker, &plain_hello, "hello without TLS");
    assert_still_serving(&mut tracker, &rt, &client);

    rt.block_on(async {
        // Garbage instead of a handshake, inside TLS.
        let mut s = secure(&tracker).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let _ = read_frame(&mut s).await; // the tracker's hello, sent first
        assert_closed_without_reply(s, "garbage handshake").await;

        // An oversized length prefix, before and after the handshake.
        let mut s = secure(&tracker).await;
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let _ = read_frame(&mut s).await;
        assert_closed_without_reply(s, "oversized hello").await;
        let mut s = handshaken(&tracker).await;
        s.write_all(&header(MAX_FRAME_LEN + 1)).await.unwrap();
        assert_closed_without_reply(s, "oversized frame").await;
    });
    assert_still_serving(&mut tracker, &rt, &client);

    // A truncated frame: the header promises more than ever comes.
    rt.block_on(async {
        let mut s = handshaken(&tracker).await;
        s.write_all(&header(100)).await.unwrap();
        s.write_all(&[1; 10]).await.unwrap();
        s.shutdown().await.unwrap();
        assert_closed_without_reply(s, "truncated frame").await;
    });
    assert_still_serving(&mut tracker, &rt, &client);

    // A valid handshake, then bodies that are not requests.
    let req = Request {
        id: 1,
        body: TrackerRequest::from(ListGroups {
            session: fileshare_protocol::messages::SessionToken([0; 32]),
        }),
    };
    let valid = codec::encode(&req).unwrap();
    let mut trailing = valid.clone();
    trailing.push(0);
    let mut unknown_variant = valid.clone();
    unknown_variant[1] = 200;
    let lying_length = {
        // id 7, CreateUser, then a string claiming 2^60 bytes.
        let mut b = vec![7u8, 0, 253];
        b.extend_from_slice(&(1u64 << 60).to_le_bytes());
        b
    };
    for (what, body) in [
        ("random bytes", vec![0xff; 40]),
        ("trailing bytes", trailing),
        ("unknown request", unknown_variant),
        ("lying inner length", lying_length),
        ("empty body", vec![]),
    ] {
        rt.block_on(async {
            let mut s = handshaken(&tracker).await;
            s.write_all(&frame(&body)).await.unwrap();
            assert_closed_without_reply(s, what).await;
        });
        assert_still_serving(&mut tracker, &rt, &client);
    }

    // A good request still gets its answer on a raw connection.
    rt.block_on(async {
        let mut s = handshaken(&tracker).await;
        s.write_all(&frame(&valid)).await.unwrap();
        let body = read_frame(&mut s).await.expect("a reply");
        let reply: Reply<TrackerResult> = codec::decode(&body).unwrap();
        assert_eq!(reply.id, 1);
        assert_eq!(
            reply.body,
            Err(fileshare_protocol::ErrorCode::InvalidSession)
        );
    });

    // Many connections that never say anything do not stop the others.
    let idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(tracker.addr()).unwrap())
        .collect();
    assert_still_serving(&mut tracker, &rt, &client);
    drop(idle);

    let log = tracker.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("bad frame"), "one line per bad frame:\n{log}");
}

#[test]
fn a_client_that_never_reads_does_not_block_shutdown() {
    // 200 groups of one user: over the default quota.
    let mut tracker = Tracker::with_args(&["--max-groups-per-user", "200"]);
    // The flood runs on a worker while the test waits.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = tracker.client();
    let session = rt.block_on(async {
        client
            .call(CreateUser {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await
            .unwrap();
        let token = client
            .call(Login {
                user: "alice".into(),
                password: "pw".into(),
            })
            .await
            .expect("login")
            .token;
        // Big listings, so unread replies fill the socket buffers quickly.
        for g in 0..200 {
            let group = format!("group-with-a-long-name-{g:04}");
            client
                .call(CreateGroup {
                    session: token,
                    group: group.to_string(),
                })
                .await
                .unwrap();
        }
        token
    });
    let mut burst = Vec::new();
    for id in 0..1000u64 {
        let req = Request {
            id,
            body: TrackerRequest::from(ListGroups { session }),
        };
        burst.extend(frame(&codec::encode(&req).unwrap()));
    }
    let mut s = rt.block_on(handshaken(&tracker));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    let flooder = rt.spawn(async move {
        while s.write_all(&burst).await.is_ok() {
            counter.fetch_add(burst.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Wait until the tracker stops reading: the flood makes no progress.
    let mut last = usize::MAX;
    fileshare_tests::wait_until("the tracker to push back", HANG_LIMIT, || {
        std::thread::sleep(Duration::from_millis(300));
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        let stalled = now == last && now > 0;
        last = now;
        stalled
    });
    // Others are still served meanwhile.
    assert_still_serving(&mut tracker, &rt, &client);
    // It exits (`terminate` calls it hung otherwise), having given up on
    // the replies the flooder never reads.
    assert!(tracker.terminate().success(), "{}", tracker.log());
    let log = tracker.log();
    assert!(
        log.contains("dropping replies the client does not read"),
        "{log}"
    );
    rt.block_on(async { tokio::time::timeout(T, flooder).await })
        .expect("the flood ends with the tracker")
        .unwrap();
}
