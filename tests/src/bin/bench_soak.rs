//! The soak: 64 readers through two mounts, a stream of `ls -l`, logins and
//! list-groups, while floods run (half-sent 4 MiB frames at the tracker and
//! at the seeder's peer port, a password guesser, a peer that floods
//! requests and never reads). Every byte read is compared with the source;
//! any error fails the run. Prints the tracker's and daemons' RSS at start
//! and end and the p99 of `ls -l`.
//!
//! Run through `scripts/bench.sh soak` (release build); `SOAK_SECS` sets
//! the duration (300 by default). A failed run exits non-zero only after
//! its tracker, daemons and mounts are torn down.

use fileshare_protocol::frame::header;
use fileshare_protocol::messages::tracker::{ListGroups, Locate, Login};
use fileshare_protocol::messages::{Reply, Request, Role, TrackerRequest, TrackerResult};
use fileshare_protocol::tls::{ClientTls, Pin};
use fileshare_protocol::{Identity, MAX_FRAME_LEN};
use fileshare_tests::liar::{flood, stranger};
use fileshare_tests::mount::wait_for;
use fileshare_tests::world::{User, World};
use fileshare_tests::{random_file, MIB};
use std::io::Read;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const FILES: usize = 8;
const FILE_MIB: usize = 8;
const READERS_PER_MOUNT: usize = 32;

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

#[derive(Default)]
struct Tally {
    errors: AtomicU64,
    bytes: AtomicU64,
    reads: AtomicU64,
    logins: AtomicU64,
    ls: Mutex<Vec<Duration>>,
    first_errors: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 10 {
            first.push(what);
        }
    }
}

/// Half-sent frames at `addr`, `n` at a time, reopened as they are closed.
async fn half_sent(addr: String, tls: ClientTls, role: Role, n: usize, stop: Arc<AtomicBool>) {
    let mut open = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        while open.len() < n {
            i += 1;
            let from = IpAddr::from([127, 0, 9, 1 + (i % 16) as u8]);
            if let Some(mut s) = stranger(from, &addr, &tls, role.clone()).await {
                let _ = s.write_all(&header(MAX_FRAME_LEN)).await;
                let _ = s.write_all(&[7]).await;
                let _ = s.flush().await;
                open.push(tokio::spawn(async move {
                    // Held until the server's frame deadline closes it.
                    let mut buf = [0u8; 64];
                    let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                }));
            }
        }
        open.retain(|t| !t.is_finished());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in open {
        t.abort();
    }
}

/// Wrong passwords for `user` from one address, as fast as answered.
async fn guesser(addr: String, user: String, stop: Arc<AtomicBool>) {
    let tls = ClientTls::new(None, Pin::FirstUse).unwrap();
    let from = IpAddr::from([127, 0, 5, 1]);
    let mut id = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = stranger(from, &addr, &tls, Role::Client).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (r, w) = tokio::io::split(s);
        let mut conn = fileshare_protocol::Connection::new(r, w);
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            let req = Request {
                id,
                body: TrackerRequest::from(Login {
                    user: user.clone(),
                    password: format!("guess-{id}"),
                }),
            };
            if conn.write_frame(&req).await.is_err() {
                break;
            }
            if !matches!(conn.read_frame::<Reply<TrackerResult>>().await, Ok(Some(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn main() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    // Everything the run started is dropped (unmounted, ended by PID)
    // when `soak` returns or unwinds; `exit` would skip that.
    if soak(secs) > 0 {
        std::process::exit(1);
    }
}

/// Runs the soak for `secs` seconds; returns the number of errors.
fn soak(secs: u64) -> u64 {
    let (w, u) = World::network(&["alice", "bob", "carol", "mallory"]);
    let seeder = w.mount(&u[0], &[]);
    let sources: Vec<Arc<Vec<u8>>> = (0..FILES)
        .map(|i| {
            let p = w.path(&format!("f{i}.bin"));
            let bytes = random_file(&p, FILE_MIB * MIB, 100 + i as u64);
            let out = std::process::Command::new("cp")
                .arg(&p)
                .arg(seeder.path("g"))
                .output()
                .unwrap();
            assert!(out.status.success(), "cp: {out:?}");
            Arc::new(bytes)
        })
        .collect();
    let mounts = [w.mount(&u[1], &[]), w.mount(&u[2], &[])];
    for m in &mounts {
        for i in 0..FILES {
            let p = m.path(&format!("g/f{i}.bin"));
            wait_for("listed", Duration::from_secs(30), || {
                p.exists().then_some(())
            });
        }
    }
    let pids = [
        ("tracker", w.tracker().pid().unwrap()),
        ("seeder", seeder.pid().unwrap()),
        ("reader 1", mounts[0].pid().unwrap()),
        ("reader 2", mounts[1].pid().unwrap()),
    ];
    let rss_start: Vec<u64> = pids.iter().map(|(_, p)| rss_mib(*p)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(secs);

    // The floods.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let key = Identity::generate().unwrap();
    let peer_role = Role::Peer {
        id: key.fingerprint().peer_id(),
    };
    let tracker_tls = ClientTls::new(None, Pin::FirstUse).unwrap();
    let peer_tls = ClientTls::new(Some(&key), Pin::FirstUse).unwrap();
    rt.spawn(half_sent(
        w.tracker().addr().to_string(),
        tracker_tls,
        Role::Client,
        200,
        stop.clone(),
    ));
    rt.spawn(half_sent(
        seeder.listen.clone(),
        peer_tls,
        peer_role,
        200,
        stop.clone(),
    ));
    rt.spawn(guesser(
        w.tracker().addr().to_string(),
        "bob".into(),
        stop.clone(),
    ));
    let client = w.tracker().client();
    let mallory_session = u[3].session();
    let seeder_id = wait_for("the seeder announced", Duration::from_secs(15), || {
        let loc = rt
            .block_on(client.call(Locate {
                session: mallory_session,
                group: "g".into(),
                name: "f0.bin".into(),
            }))
            .ok()?;
        loc.peers
            .iter()
            .find(|p| p.addr == seeder.listen)
            .map(|p| p.peer)
    });
    let flooder = {
        let (trackers, home, listen) = (
            w.trackers_file().to_path_buf(),
            u[3].home.clone(),
            seeder.listen.clone(),
        );
        std::thread::spawn(move || {
            let user = User {
                name: "mallory".into(),
                home,
            };
            flood(
                &trackers,
                &user,
                "g",
                "f0.bin",
                (&listen, seeder_id),
                1_000_000,
                Duration::from_secs(secs),
            );
        })
    };

    std::thread::scope(|s| {
        // 64 readers, each reading the files in turn, every byte compared.
        for (mi, m) in mounts.iter().enumerate() {
            for r in 0..READERS_PER_MOUNT {
                let (tally, sources) = (tally.clone(), sources.clone());
                s.spawn(move || {
                    let mut i = (r + mi) % FILES;
                    while Instant::now() < until {
                        let path = m.path(&format!("g/f{i}.bin"));
                        match std::fs::File::open(&path).and_then(|mut f| {
                            let mut got = Vec::with_capacity(FILE_MIB * MIB);
                            f.read_to_end(&mut got).map(|_| got)
                        }) {
                            Ok(got) if got == *sources[i] => {
                                tally.bytes.fetch_add(got.len() as u64, Ordering::Relaxed);
                                tally.reads.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(got) => tally.error(format!(
                                "{}: {} bytes differ from the source",
                                path.display(),
                                got.len()
                            )),
                            Err(e) => tally.error(format!("{}: {e}", path.display())),
                        }
                        i = (i + 1) % FILES;
                    }
                });
            }
        }
        // A stream of `ls -l`.
        let tally_ls = tally.clone();
        let dirs: Vec<_> = mounts.iter().map(|m| m.path("g")).collect();
        s.spawn(move || {
            let mut k = 0;
            while Instant::now() < until {
                let dir = &dirs[k % dirs.len()];
                k += 1;
                let started = Instant::now();
                let out = std::process::Command::new("ls").arg("-l").arg(dir).output();
                let took = started.elapsed();
                match out {
                    Ok(o)
                        if o.status.success()
                            && o.stdout.split(|&b| b == b'\n').count() > FILES =>
                    {
                        tally_ls.ls.lock().unwrap().push(took)
                    }
                    Ok(o) => tally_ls.error(format!(
                        "ls -l {}: {}",
                        dir.display(),
                        String::from_utf8_lossy(&o.stderr)
                    )),
                    Err(e) => tally_ls.error(format!("ls: {e}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Logins and list-groups, with the right password.
        let tally_login = tally.clone();
        let (rt, client) = (&rt, &client);
        s.spawn(move || {
            while Instant::now() < until {
                let r = rt.block_on(async {
                    let login = client
                        .call(Login {
                            user: "carol".into(),
                            password: "pw-carol".into(),
                        })
                        .await?;
                    client
                        .call(ListGroups {
                            session: login.token,
                        })
                        .await
                });
                match r {
                    Ok(g) if g.iter().any(|g| g.name == "g") => {
                        tally_login.logins.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(g) => tally_login.error(format!("list-groups without g: {g:?}")),
                    Err(e) => tally_login.error(format!("login or list-groups: {e}")),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    });
    stop.store(true, Ordering::Relaxed);
    let rss_end: Vec<u64> = pids.iter().map(|(_, p)| rss_mib(*p)).collect();
    let mut ls = tally.ls.lock().unwrap().clone();
    ls.sort();
    let p99 = ls
        .get((ls.len() * 99 / 100).min(ls.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    let errors = tally.errors.load(Ordering::Relaxed);
    println!(
        "soak {secs} s: {} reads, {} MiB verified byte for byte, {} logins with list-groups, {} ls -l (p99 {} ms), {errors} errors",
        tally.reads.load(Ordering::Relaxed),
        tally.bytes.load(Ordering::Relaxed) / MIB as u64,
        tally.logins.load(Ordering::Relaxed),
        ls.len(),
        p99.as_millis()
    );
    for ((name, _), (a, b)) in pids.iter().zip(rss_start.iter().zip(&rss_end)) {
        println!("RSS {name}: {a} MiB at start, {b} MiB at the end");
    }
    for e in tally.first_errors.lock().unwrap().iter() {
        println!("error: {e}");
    }
    rt.shutdown_background();
    drop(flooder);
    errors
}
