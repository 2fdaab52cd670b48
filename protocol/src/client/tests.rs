use super::*;
use crate::messages::ticket::TicketKey;
use crate::messages::tracker::{AskTicketKey, CreateUser, Login, TrackerResult, UnexpectedReply};
use crate::messages::{Reply, Request, Role};
use crate::tls::{self, ClientCerts, ServerTls};
use std::time::Instant;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The daemon's budget for a listing refresh or a ticket check.
const BUDGET: Duration = Duration::from_millis(800);

/// A loopback listener that never accepts, with its accept queue full so a
/// further connect gets no answer at all, as from a dead host.
struct BlackHole {
    addr: String,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

async fn black_hole() -> BlackHole {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    // Connects complete until the queue is full; the first that hangs
    // shows it is.
    while let Ok(stream) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    {
        queued.push(stream.unwrap());
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    BlackHole {
        addr: addr.to_string(),
        _listener: listener,
        _queued: queued,
    }
}

/// A tracker on loopback, with a key of its own, that answers every
/// request with `answer`.
async fn fake_tracker(answer: fn(TrackerRequest) -> TrackerResult) -> String {
    fake_tracker_with(Identity::generate().unwrap(), answer).await
}

async fn fake_tracker_with(
    identity: Identity,
    answer: fn(TrackerRequest) -> TrackerResult,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tls = ServerTls::new(&identity, ClientCerts::Optional).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok((mut conn, _, _)) = tls::accept(stream, &tls, Role::Tracker { no: 1 }).await
                else {
                    return;
                };
                while let Ok(Some(req)) = conn.read_frame::<Request<TrackerRequest>>().await {
                    let reply = Reply {
                        id: req.id,
                        body: answer(req.body),
                    };
                    if conn.write_frame(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A client of `addrs` (none pinned), remembering their keys in a
/// directory that lives as long as it.
struct Client {
    client: TrackerClient,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Client {
    type Target = TrackerClient;
    fn deref(&self) -> &TrackerClient {
        &self.client
    }
}

fn client(addrs: &[&str], timeout: Duration) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let trackers = addrs
        .iter()
        .map(|a| TrackerEntry {
            addr: a.to_string(),
            fingerprint: None,
        })
        .collect();
    let client = TrackerClient::new(trackers, dir.path().join("known_keys"), None, timeout);
    Client { client, dir }
}

const KEY: TicketKey = TicketKey([5; 32]);

fn answer_every_key(req: TrackerRequest) -> TrackerResult {
    match req {
        TrackerRequest::TicketKey(_) => Ok(TrackerReply::TicketKey(KEY)),
        _ => Ok(TrackerReply::Done),
    }
}

#[tokio::test]
async fn a_reply_of_the_wrong_kind_is_a_typed_error() {
    let addr = fake_tracker(answer_every_key).await;
    let client = client(&[&addr], Duration::from_secs(5));
    let (user, password) = ("alice".to_string(), "pw".to_string());
    (client
        .call(CreateUser {
            user: user.clone(),
            password: password.clone(),
        })
        .await)
        .unwrap();
    assert_eq!(client.call(AskTicketKey).await.unwrap(), KEY);
    let e = client.call(Login { user, password }).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::UnexpectedReply(UnexpectedReply {
                request: "Login",
                expected: "Session",
                got: "Done"
            })
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "the tracker answered Login with Done, not Session"
    );
}

/// With every tracker dead, callers arriving during a connect attempt get
/// its outcome instead of each waiting for an attempt of their own after
/// it, and a caller with a budget is held no longer than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_connect_attempt() {
    let hole = black_hole().await;
    let connect = Duration::from_secs(2);
    let client = Arc::new(client(&[&hole.addr], connect));
    let start = Instant::now();
    let unbounded: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = client.call(AskTicketKey).await;
                (r, start.elapsed())
            })
        })
        .collect();
    let budgeted = {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = tokio::time::timeout(BUDGET, client.call(AskTicketKey)).await;
            (r.is_err(), start.elapsed())
        })
    };
    let (gave_up, at) = budgeted.await.unwrap();
    assert!(gave_up, "no tracker can have answered");
    assert!(at < BUDGET + Duration::from_millis(400), "{at:?}");
    for task in unbounded {
        let (r, at) = task.await.unwrap();
        assert!(matches!(r, Err(ClientError::Unreachable { .. })), "{r:?}");
        assert!(
            at < connect + connect / 2,
            "a second caller waited for a second attempt: {at:?}"
        );
    }
}

/// The caller that started a connect attempt gives up (its budget) while
/// the first tracker is a black hole: the attempt carries on, so the
/// caller after it is served in one connect time, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_outlives_the_caller_that_started_it() {
    let hole = black_hole().await;
    let good = fake_tracker(answer_every_key).await;
    let connect = Duration::from_secs(3);
    let client = Arc::new(client(&[&hole.addr, &good], connect));
    let start = Instant::now();
    let first = {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::timeout(BUDGET, client.call(AskTicketKey))
                .await
                .is_err()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = client.call(AskTicketKey).await;
    let at = start.elapsed();
    assert!(first.await.unwrap(), "the first caller kept to its budget");
    assert_eq!(second.unwrap(), KEY);
    assert!(
        at < connect + BUDGET / 2,
        "the second caller started the attempt over: {at:?}"
    );
    // The second tracker is in use now: a budgeted call is answered.
    let again = tokio::time::timeout(BUDGET, client.call(AskTicketKey)).await;
    assert!(matches!(again, Ok(Ok(_))), "{again:?}");
    assert_eq!(client.current(), client.addrs()[1]);
}

/// A tracker's first key is remembered; a tracker at the same address with
/// another key is refused with both keys and the file named, and the
/// client does not quietly move on to the next tracker.
#[tokio::test]
async fn a_changed_key_is_refused_not_skipped() {
    let first = Identity::generate().unwrap();
    let addr = fake_tracker_with(first.clone(), answer_every_key).await;
    let c = client(&[&addr], Duration::from_secs(5));
    c.call(CreateUser {
        user: "alice".into(),
        password: "pw".into(),
    })
    .await
    .unwrap();
    let known = c.dir.path().join("known_keys");
    let remembered = crate::known_keys::lookup(&known, &addr).unwrap();
    assert_eq!(remembered.map(|(fp, _)| fp), Some(first.fingerprint()));

    // Another key at the remembered address, then a good tracker.
    let other = Identity::generate().unwrap();
    let impostor = fake_tracker_with(other.clone(), answer_every_key).await;
    let good = fake_tracker(answer_every_key).await;
    std::fs::write(&known, format!("{impostor} {}\n", first.fingerprint())).unwrap();
    let trackers = [impostor.clone(), good]
        .into_iter()
        .map(|addr| TrackerEntry {
            addr,
            fingerprint: None,
        })
        .collect();
    let c = TrackerClient::new(trackers, &known, None, Duration::from_secs(5));
    let e = c
        .call(CreateUser {
            user: "bob".into(),
            password: "pw".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Untrusted(_)), "{e:?}");
    let text = e.to_string();
    for part in [
        first.fingerprint().to_string(),
        other.fingerprint().to_string(),
        known.display().to_string(),
        impostor,
    ] {
        assert!(text.contains(&part), "{part} missing from {text}");
    }
}

/// A fingerprint in the trackers file is required; the refusal names both
/// keys.
#[tokio::test]
async fn a_pinned_key_is_required() {
    let real = Identity::generate().unwrap();
    let addr = fake_tracker_with(real.clone(), answer_every_key).await;
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_keys");
    let pinned = |fingerprint| {
        let entry = TrackerEntry {
            addr: addr.clone(),
            fingerprint: Some(fingerprint),
        };
        TrackerClient::new(vec![entry], &known, None, Duration::from_secs(5))
    };
    pinned(real.fingerprint())
        .call(CreateUser {
            user: "alice".into(),
            password: "pw".into(),
        })
        .await
        .unwrap();
    let wrong = Identity::generate().unwrap().fingerprint();
    let e = pinned(wrong)
        .call(CreateUser {
            user: "bob".into(),
            password: "pw".into(),
        })
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ClientError::Untrusted(_)), "{e:?}");
    assert!(text.contains(&wrong.to_string()), "{text}");
    assert!(text.contains(&real.fingerprint().to_string()), "{text}");
    assert!(text.contains("trackers file"), "{text}");
    // Pinned trackers are never written to the known keys file.
    assert!(!known.exists());
}
