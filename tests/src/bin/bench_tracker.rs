//! Tracker read throughput: a real tracker process, a group with files and
//! online peers, then 64 clients (one connection each) issuing list-files
//! and locate as fast as answers come back. Prints requests per second and
//! the p50 and p99 latency, one line each.
//!
//! `BENCH_SECS` (default 5) sets the measured time, `BENCH_CLIENTS`
//! (default 64) the number of clients. Run it through `scripts/bench.sh
//! tracker`, which builds the release binaries it needs.

use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::Holding;
use fileshare_protocol::messages::tracker::{
    AcceptRequest, Announce, CreateGroup, JoinGroup, ListFiles, Locate, ShareFile,
};
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::trackers_file::TrackerEntry;
use fileshare_protocol::{Bitfield, Identity, PieceHash, PIECE_LEN};
use fileshare_tests::tracker::Tracker;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: usize = 8;
const FILES: usize = 20;
const GROUP: &str = "bench";
const WARMUP: Duration = Duration::from_millis(500);
const SET_UP_FAILED: &str = "set-up request failed";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn file(i: usize) -> FileMeta {
    // Sizes from 1 to 16 MiB: up to 32 pieces, as a group of documents.
    let size = ((i % 16) as u64 + 1) << 20;
    let pieces = size.div_ceil(PIECE_LEN);
    FileMeta {
        name: format!("file-{i:03}.bin"),
        size,
        piece_len: PIECE_LEN,
        hashes: (0..pieces)
            .map(|p| PieceHash::of(format!("{i}/{p}").as_bytes()))
            .collect(),
    }
}

/// Users, one group with everyone in it, the files, and one online peer
/// per user holding every file.
async fn set_up(tracker: &Tracker) -> Vec<SessionToken> {
    let client = tracker.client_with(Duration::from_secs(10));
    let mut sessions = Vec::new();
    for u in 0..USERS {
        let token = fileshare_tests::tracker::sign_up(&client, &format!("user{u}")).await;
        sessions.push(token);
    }
    let owner = sessions[0];
    client
        .call(CreateGroup {
            session: owner,
            group: GROUP.to_string(),
        })
        .await
        .expect(SET_UP_FAILED);
    for (u, s) in sessions.iter().enumerate().skip(1) {
        client
            .call(JoinGroup {
                session: *s,
                group: GROUP.to_string(),
            })
            .await
            .expect(SET_UP_FAILED);
        let user = format!("user{u}");
        client
            .call(AcceptRequest {
                session: owner,
                group: GROUP.to_string(),
                user: user.to_string(),
            })
            .await
            .expect(SET_UP_FAILED);
    }
    let metas: Vec<FileMeta> = (0..FILES).map(file).collect();
    for m in &metas {
        client
            .call(ShareFile {
                session: owner,
                group: GROUP.to_string(),
                meta: m.clone(),
            })
            .await
            .expect(SET_UP_FAILED);
    }
    for (u, s) in sessions.iter().enumerate() {
        let holdings = metas
            .iter()
            .map(|m| Holding {
                file: m.id(),
                have: Bitfield::full(u32::try_from(m.hashes.len()).unwrap_or(0)),
            })
            .collect();
        // A daemon announces only the peer id of the key it presents.
        let key = Identity::generate().expect("a key");
        let peer = key.peer_id();
        let entry = TrackerEntry {
            addr: tracker.addr().to_string(),
            fingerprint: None,
        };
        let daemon = TrackerClient::new(
            vec![entry],
            tracker.known_keys(),
            Some(key),
            Duration::from_secs(10),
        );
        let addr = format!("127.0.0.1:{}", 20000 + u);
        daemon
            .call(Announce {
                session: *s,
                peer,
                addr: addr.to_string(),
                also: vec![],
                holdings,
            })
            .await
            .expect(SET_UP_FAILED);
    }
    sessions
}

/// One client's loop: alternately list the group and locate a file.
/// Returns the latencies (µs) of requests that started after the warm-up.
async fn client_loop(
    client: TrackerClient,
    session: SessionToken,
    seed: usize,
    start: Instant,
    end: Instant,
) -> Vec<u32> {
    let mut lat = Vec::with_capacity(100_000);
    let mut i = seed;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            return lat;
        }
        if i.is_multiple_of(2) {
            let files = client
                .call(ListFiles {
                    session,
                    group: GROUP.to_string(),
                })
                .await;
            assert_eq!(files.expect("list files").len(), FILES);
        } else {
            let name = file((i / 2) % FILES).name;
            let found = client
                .call(Locate {
                    session,
                    group: GROUP.to_string(),
                    name: name.to_string(),
                })
                .await;
            assert_eq!(found.expect("locate").peers.len(), USERS);
        }
        if t0 >= start + WARMUP {
            let us = t0.elapsed().as_micros();
            lat.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
        i += 1;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

fn main() {
    let secs = env_num("BENCH_SECS", 5);
    let clients = usize::try_from(env_num("BENCH_CLIENTS", 64)).unwrap_or(64);
    let tracker = Tracker::with_args(&["--announce-interval", "60"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sessions = Arc::new(rt.block_on(set_up(&tracker)));
    let start = Instant::now();
    let end = start + WARMUP + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            rt.spawn(client_loop(
                tracker.client_with(Duration::from_secs(10)),
                sessions[c % sessions.len()],
                c,
                start,
                end,
            ))
        })
        .collect();
    let mut all: Vec<u32> = Vec::new();
    rt.block_on(async {
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
    });
    all.sort_unstable();
    let measured = secs as f64;
    println!(
        "tracker: {clients} clients, list-files ({FILES} files) and locate ({USERS} peers), {secs} s"
    );
    println!("tracker requests/s: {:.0}", all.len() as f64 / measured);
    println!("tracker p50 latency: {:.2} ms", percentile(&all, 0.50));
    println!("tracker p99 latency: {:.2} ms", percentile(&all, 0.99));
    drop(tracker);
}
