//! Tracker write throughput, replicated against alone: many clients (one
//! connection each) create groups and share files as fast as answers come
//! back, first through a single tracker, then through a cluster of two and
//! one of three (the clients spread over the trackers, so most writes are
//! forwarded to the leader). Prints writes per second and latency for
//! each, and its ratio to the single tracker's.
//!
//! The three run side by side and are measured in turn, `BENCH_ROUNDS`
//! times (default 3), each round in another order: on a shared machine
//! the load drifts by more than the gap between them, so each round's
//! ratios compare runs seconds apart, and the summary gives the median
//! round's rates and the median of each round's ratio.
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
use std::sync::Arc;
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
/// so on, named after the round. Returns the latencies (µs) of writes
/// started after the warm-up.
async fn client_loop(
    client: Arc<TrackerClient>,
    session: SessionToken,
    (round, c): (usize, usize),
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
                    group: format!("g-{round}-{c}-{i}"),
                })
                .await
        } else {
            let home = format!("home{c}");
            client
                .call(ShareFile {
                    session,
                    group: home.to_string(),
                    meta: meta(&format!("f-{round}-{c}-{i}")),
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

/// One way to reach the trackers: a client per writer and its session.
struct Setup {
    name: String,
    clients: Vec<Arc<TrackerClient>>,
    sessions: Vec<SessionToken>,
    /// The trackers' process ids, for the CPU they spend.
    pids: Vec<u32>,
    /// Writes per second and sorted latencies (µs), one entry a round.
    runs: Vec<(f64, Vec<u32>)>,
    /// CPU time each tracker spent per write (µs), one entry a round.
    cpu_us: Vec<Vec<f64>>,
}

/// Clock ticks a second of `/proc/<pid>/stat`'s times (`getconf CLK_TCK`).
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User and system CPU seconds `pid` has used so far (0 if it is gone).
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which ends at the last ')': utime and
    // stime are the 14th and 15th fields of the line, 12th and 13th here.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / ticks_per_s()
}

impl Setup {
    fn new(
        rt: &tokio::runtime::Runtime,
        name: String,
        pids: Vec<u32>,
        clients: usize,
        client_of: impl Fn(usize) -> TrackerClient,
    ) -> Setup {
        let clients: Vec<Arc<TrackerClient>> =
            (0..clients).map(|c| Arc::new(client_of(c))).collect();
        let sessions = rt.block_on(async {
            let mut v = Vec::new();
            for (c, client) in clients.iter().enumerate() {
                v.push(set_up(client, c).await);
            }
            v
        });
        Setup {
            name,
            pids,
            clients,
            sessions,
            runs: Vec::new(),
            cpu_us: Vec::new(),
        }
    }

    /// One measured run of every client at once, for `secs`.
    fn run(&mut self, rt: &tokio::runtime::Runtime, round: usize, secs: u64) -> f64 {
        let start = Instant::now();
        let end = start + WARMUP + Duration::from_secs(secs);
        let cpu = || self.pids.iter().map(|&p| cpu_s(p)).collect::<Vec<f64>>();
        let mut cpu_before = cpu();
        let warm_until = tokio::time::Instant::from_std(start + WARMUP);
        let warm = rt.spawn(async move { tokio::time::sleep_until(warm_until).await });
        let tasks: Vec<_> = (self.clients.iter().zip(&self.sessions).enumerate())
            .map(|(c, (client, &session))| {
                rt.spawn(client_loop(client.clone(), session, (round, c), start, end))
            })
            .collect();
        let mut all = Vec::new();
        rt.block_on(async {
            let _ = warm.await;
            cpu_before = cpu();
            for t in tasks {
                all.extend(t.await.expect("client task"));
            }
        });
        let writes = all.len().max(1) as f64;
        let spent = (cpu().iter().zip(&cpu_before))
            .map(|(after, before)| (after - before) * 1e6 / writes)
            .collect();
        all.sort_unstable();
        let rate = all.len() as f64 / secs as f64;
        self.cpu_us.push(spent);
        self.runs.push((rate, all));
        rate
    }

    /// The trackers' CPU per write (µs) in the round of the median total,
    /// as `total (each tracker's)`.
    fn cpu(&self) -> String {
        let mut rounds: Vec<&Vec<f64>> = self.cpu_us.iter().collect();
        rounds.sort_by(|a, b| a.iter().sum::<f64>().total_cmp(&b.iter().sum::<f64>()));
        let Some(mid) = rounds.get(rounds.len() / 2) else {
            return "-".into();
        };
        let each: Vec<String> = mid.iter().map(|c| format!("{c:.0}")).collect();
        format!(
            "{:.0} µs a write ({})",
            mid.iter().sum::<f64>(),
            each.join(" + ")
        )
    }

    /// The run with the median rate.
    fn median(&self) -> &(f64, Vec<u32>) {
        let mut order: Vec<&(f64, Vec<u32>)> = self.runs.iter().collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        order[order.len() / 2]
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let secs = env_num("BENCH_SECS", 5);
    let rounds = usize::try_from(env_num("BENCH_ROUNDS", 3))
        .unwrap_or(3)
        .max(1);
    let clients = usize::try_from(env_num("BENCH_CLIENTS", 64)).unwrap_or(64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "writes: {clients} clients, create-group and share-file alternately, {secs} s each, {rounds} rounds"
    );

    let single = Tracker::with_args(&ARGS);
    let spread = std::env::var_os("BENCH_LEADER_ONLY").is_none();
    let clusters: Vec<Cluster> = [2u32, 3].map(|n| Cluster::with_args(n, &ARGS)).into();
    let mut setups = vec![Setup::new(
        &rt,
        "single tracker".into(),
        single.pid().into_iter().collect(),
        clients,
        |_| single.client_with(Duration::from_secs(30)),
    )];
    for cluster in &clusters {
        let addrs = cluster.addrs();
        let name = format!("{}-tracker cluster", addrs.len());
        let pids = (1..=cluster.size())
            .filter_map(|i| cluster.tracker(i).pid())
            .collect();
        setups.push(Setup::new(&rt, name, pids, clients, |c| {
            let mut a = addrs.clone();
            if spread {
                let first = c % a.len();
                a.rotate_left(first);
            }
            cluster.client_of(&a, Duration::from_secs(30))
        }));
    }
    for round in 0..rounds {
        let mut rates = vec![0.0; setups.len()];
        for k in 0..setups.len() {
            let s = (round + k) % setups.len();
            rates[s] = setups[s].run(&rt, round, secs);
        }
        println!(
            "round {}: writes/s {}",
            round + 1,
            (setups.iter().zip(&rates))
                .map(|(s, r)| format!("{} {r:.0} ({:.2})", s.name, r / rates[0].max(1.0)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (one, lat) = setups[0].median();
    println!(
        "single tracker writes/s: {one:.0} (p50 {:.2} ms, p99 {:.2} ms), tracker CPU {}",
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        setups[0].cpu()
    );
    for s in &setups[1..] {
        let (rate, lat) = s.median();
        let ratios: Vec<f64> = (s.runs.iter().zip(&setups[0].runs))
            .map(|(r, one)| r.0 / one.0.max(1.0))
            .collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{} writes/s: {rate:.0} (p50 {:.2} ms, p99 {:.2} ms), {:.2} of a single tracker (rounds: {}), trackers' CPU {}",
            s.name,
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            median(ratios.clone()),
            each.join(", "),
            s.cpu()
        );
    }
    drop(setups);
    drop(clusters);
    drop(single);
}
