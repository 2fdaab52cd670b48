//! Tracker write throughput, replicated against alone: many clients (one
//! connection each) create groups and share files as fast as answers come
//! back, first through a single tracker, then through a cluster of two and
//! one of three (the clients spread over the trackers, so most writes are
//! forwarded to the leader). Prints writes per second and latency for
//! each, and its ratio to the single tracker's.
//!
//! `BENCH_SECS` (default 5) sets the measured time of each run,
//! `BENCH_CLIENTS` (default 64) the number of clients; `BENCH_LEADER_ONLY=1`
//! sends every client to the leader (no forwarding). Run it through
//! `scripts/bench.sh cluster`, which builds the release binaries it needs.
//!
//! Each client waits for its answer before the next write, so throughput
//! is clients / latency. Writes that queue up while the log is busy share
//! one entry and one disk write; a replicated entry waits for the leader's
//! disk write, then a follower's, then for every tracker in touch to apply
//! it, against one disk write alone.

use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::{CreateGroup, ShareFile};
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::{PieceHash, PIECE_LEN};
use fileshare_tests::cluster::Cluster;
use fileshare_tests::tracker::Tracker;
use std::time::{Duration, Instant};

const WARMUP: Duration = Duration::from_millis(500);
/// Each client creates groups as fast as it can, and every client signs up
/// from the same address: no quota may stop them.
const ARGS: [&str; 6] = [
    "--announce-interval",
    "60",
    "--max-groups-per-user",
    "100000000",
    "--max-sign-ups-per-address",
    "100000",
];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn meta(name: &str) -> FileMeta {
    FileMeta {
        name: name.into(),
        size: 4 << 20,
        piece_len: PIECE_LEN,
        hashes: (0..8u8)
            .map(|p| PieceHash::of(format!("{name}/{p}").as_bytes()))
            .collect(),
    }
}

/// A user with a home group, through `client`.
async fn set_up(client: &TrackerClient, c: usize) -> SessionToken {
    let token = fileshare_tests::tracker::sign_up(client, &format!("bench{c}")).await;
    client
        .call(CreateGroup {
            session: token,
            group: format!("home{c}"),
        })
        .await
        .expect("create home group");
    token
}

/// One client's loop: a new group, then a new file in its home group, and
/// so on. Returns the latencies (µs) of writes started after the warm-up.
async fn client_loop(
    client: TrackerClient,
    session: SessionToken,
    c: usize,
    start: Instant,
    end: Instant,
) -> Vec<u32> {
    let mut lat = Vec::with_capacity(50_000);
    for i in 0usize.. {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let written = if i.is_multiple_of(2) {
            client
                .call(CreateGroup {
                    session,
                    group: format!("g-{c}-{i}"),
                })
                .await
        } else {
            let home = format!("home{c}");
            client
                .call(ShareFile {
                    session,
                    group: home.to_string(),
                    meta: meta(&format!("f-{c}-{i}")),
                })
                .await
        };
        if let Err(e) = written {
            panic!("write failed: {e}");
        }
        if t0 >= start + WARMUP {
            lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
    }
    lat
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

/// Runs the clients, client `c` through `client_of(c)`; returns writes per
/// second and the sorted latencies.
fn run(
    rt: &tokio::runtime::Runtime,
    clients: usize,
    secs: u64,
    client_of: impl Fn(usize) -> TrackerClient,
) -> (f64, Vec<u32>) {
    let sessions: Vec<SessionToken> = rt.block_on(async {
        let mut v = Vec::new();
        for c in 0..clients {
            v.push(set_up(&client_of(c), c).await);
        }
        v
    });
    let start = Instant::now();
    let end = start + WARMUP + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| rt.spawn(client_loop(client_of(c), sessions[c], c, start, end)))
        .collect();
    let mut all = Vec::new();
    rt.block_on(async {
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
    });
    all.sort_unstable();
    (all.len() as f64 / secs as f64, all)
}

fn main() {
    let secs = env_num("BENCH_SECS", 5);
    let clients = usize::try_from(env_num("BENCH_CLIENTS", 64)).unwrap_or(64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("writes: {clients} clients, create-group and share-file alternately, {secs} s each");

    let single = Tracker::with_args(&ARGS);
    let (one, lat) = run(&rt, clients, secs, |_| {
        single.client_with(Duration::from_secs(30))
    });
    println!(
        "single tracker writes/s: {one:.0} (p50 {:.2} ms, p99 {:.2} ms)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    drop(single);

    let spread = std::env::var_os("BENCH_LEADER_ONLY").is_none();
    for n in [2u32, 3] {
        let cluster = Cluster::with_args(n, &ARGS);
        let addrs = cluster.addrs();
        let (rate, lat) = run(&rt, clients, secs, |c| {
            let mut a = addrs.clone();
            if spread {
                let first = c % a.len();
                a.rotate_left(first);
            }
            cluster.client_of(&a, Duration::from_secs(30))
        });
        println!(
            "{n}-tracker cluster writes/s: {rate:.0} (p50 {:.2} ms, p99 {:.2} ms), {:.2} of a single tracker",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            rate / one.max(1.0)
        );
        drop(cluster);
    }
}
