//! `kill -9` in the middle of a stream of writes from several clients: every
//! write the tracker acknowledged is there after a restart.

use fileshare_protocol::client::{ClientError, TrackerClient};
use fileshare_protocol::ids::FileMeta;
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
            client.create_group(s, &format!("home{c}")).await.unwrap();
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
                    (client.create_group(session, &g).await, g)
                } else {
                    let f = format!("f-{c}-{i}");
                    let home = format!("home{c}");
                    (client.share_file(session, &home, meta(&f)).await, f)
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
                    Err(e @ ClientError::UnexpectedReply { .. }) => panic!("{e}"),
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
            .list_groups(sessions[0])
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
                .list_files(sessions[c], &format!("home{c}"))
                .await
                .unwrap();
            let have: BTreeSet<String> = files.into_iter().map(|f| f.name).collect();
            let lost: Vec<_> = acked_files.difference(&have).collect();
            assert!(lost.is_empty(), "acknowledged files lost: {lost:?}");
        }
    });
    eprintln!("{total} acknowledged writes of {attempted} attempted survived kill -9");
}
