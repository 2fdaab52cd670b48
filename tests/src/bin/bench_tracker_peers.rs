//! What a swarm of ten thousand costs the tracker: a real tracker process,
//! one 1 GiB file (2,048 pieces) and `BENCH_PEERS` (default 10,000) peers
//! announcing it, each with its own key and a bitfield of half the pieces
//! at random. Prints the tracker's resident memory (`/proc/PID/status`)
//! and CPU seconds (`/proc/PID/stat`) before and after the announces, and
//! a Locate's time and answer size with all of them online. Run it
//! through `scripts/bench.sh tracker`.

use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::Holding;
use fileshare_protocol::messages::tracker::{
    AcceptRequest, Announce, CreateGroup, JoinGroup, Locate, ShareFile,
};
use fileshare_protocol::messages::{SessionToken, TrackerReply};
use fileshare_protocol::trackers_file::TrackerEntry;
use fileshare_protocol::{codec, Bitfield, Identity, PieceHash, PIECE_LEN};
use fileshare_tests::tracker::Tracker;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUP: &str = "bench";
const PIECES: u32 = 2048;
const LOCATES: u32 = 200;
const SET_UP_FAILED: &str = "set-up request failed";

fn meta() -> FileMeta {
    FileMeta {
        name: "big.bin".into(),
        size: u64::from(PIECES) * PIECE_LEN,
        piece_len: PIECE_LEN,
        hashes: (0..PIECES)
            .map(|p| PieceHash::of(p.to_string().as_bytes()))
            .collect(),
    }
}

/// Resident KiB of `pid`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("tracker status");
    (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// User plus system CPU seconds of `pid`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("tracker stat");
    // Fields after the command name, which ends at the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<u64> = (rest.split_whitespace())
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15, so 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11] + f[12]) as f64 / ticks
}

fn bitfield(seed: usize) -> Bitfield {
    let mut b = Bitfield::new(PIECES);
    let mut z = seed as u64;
    for p in 0..PIECES {
        z = z
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if z >> 63 == 1 {
            b.set(p);
        }
    }
    b
}

async fn set_up(tracker: &Tracker) -> (SessionToken, SessionToken) {
    let client = tracker.client_with(Duration::from_secs(30));
    let owner = fileshare_tests::tracker::sign_up(&client, "owner").await;
    let reader = fileshare_tests::tracker::sign_up(&client, "reader").await;
    client
        .call(CreateGroup {
            session: owner,
            group: GROUP.to_string(),
        })
        .await
        .expect(SET_UP_FAILED);
    client
        .call(JoinGroup {
            session: reader,
            group: GROUP.to_string(),
        })
        .await
        .expect(SET_UP_FAILED);
    (client
        .call(AcceptRequest {
            session: owner,
            group: GROUP.to_string(),
            user: "reader".into(),
        })
        .await)
        .expect(SET_UP_FAILED);
    (client
        .call(ShareFile {
            session: owner,
            group: GROUP.to_string(),
            meta: meta(),
        })
        .await)
        .expect(SET_UP_FAILED);
    (owner, reader)
}

/// `n` daemons of `owner`, each with its own key and connection, announce
/// the file; `parallel` at a time.
async fn announce_all(tracker: &Tracker, owner: SessionToken, n: usize, parallel: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let file = meta().id();
    let tasks: Vec<_> = (0..parallel)
        .map(|_| {
            let next = next.clone();
            let entry = TrackerEntry {
                addr: tracker.addr().to_string(),
                fingerprint: None,
            };
            let keys = tracker.known_keys();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    // A daemon announces only the peer id of the key it presents.
                    let key = Identity::generate().expect("a key");
                    let peer = key.peer_id();
                    let daemon = TrackerClient::new(
                        vec![entry.clone()],
                        keys.clone(),
                        Some(key),
                        Duration::from_secs(30),
                    );
                    let addr = format!("127.0.0.{}:{}", 2 + i / 50_000, 10_000 + i % 50_000);
                    let have = if i == 0 {
                        Bitfield::full(PIECES)
                    } else {
                        bitfield(i)
                    };
                    daemon
                        .call(Announce {
                            session: owner,
                            peer,
                            addr: addr.to_string(),
                            also: vec![],
                            holdings: vec![Holding { file, have }],
                        })
                        .await
                        .expect(SET_UP_FAILED);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("announcer");
    }
}

fn main() {
    let n = std::env::var("BENCH_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000usize);
    let peers = n.to_string();
    // Peers stay online for three intervals: the whole run.
    let tracker =
        Tracker::with_args(&["--announce-interval", "600", "--max-peers-per-user", &peers]);
    let pid = tracker.pid().expect("tracker pid");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (owner, reader) = rt.block_on(set_up(&tracker));
    let (rss0, cpu0) = (rss_kib(pid), cpu_secs(pid));
    let t0 = Instant::now();
    rt.block_on(announce_all(&tracker, owner, n, 8));
    let took = t0.elapsed();
    // Let the announces' connections close and their buffers go.
    std::thread::sleep(Duration::from_secs(2));
    let (rss1, cpu1) = (rss_kib(pid), cpu_secs(pid));
    let client = tracker.client_with(Duration::from_secs(30));
    let mut bytes = 0;
    let mut answered = 0;
    let cpu2 = cpu_secs(pid);
    let t1 = Instant::now();
    for _ in 0..LOCATES {
        let loc = rt
            .block_on(client.call(Locate {
                session: reader,
                group: GROUP.to_string(),
                name: "big.bin".into(),
            }))
            .expect("locate");
        answered = loc.peers.len();
        let reply = TrackerReply::Location {
            meta: loc.meta,
            peers: loc.peers,
        };
        bytes = codec::encode(&reply).expect("encode").len();
    }
    let per_locate = t1.elapsed() / LOCATES;
    let cpu_locate = (cpu_secs(pid) - cpu2) / f64::from(LOCATES);
    println!("tracker peers: {n} announced peers of one 1 GiB file (2,048 pieces, half held each)");
    println!(
        "tracker peers RSS: {:.1} MiB before, {:.1} MiB after, {:.1} MiB per 10,000 peers",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (rss1.saturating_sub(rss0)) as f64 / 1024.0 * 10_000.0 / n as f64
    );
    println!(
        "tracker peers CPU: {:.2} s for the announces ({:.0} µs each, {:.1} s wall with the clients' TLS)",
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1e6 / n as f64,
        took.as_secs_f64()
    );
    println!(
        "tracker peers locate: {:.2} ms each (tracker CPU {:.2} ms), {answered} peers, {:.1} KiB",
        per_locate.as_secs_f64() * 1000.0,
        cpu_locate * 1000.0,
        bytes as f64 / 1024.0
    );
    drop(tracker);
}
