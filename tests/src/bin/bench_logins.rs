//! A tracker's data directory after many logins, and how long it takes to
//! serve again after a restart: 16 users (signed up with `fsd`) log in
//! `BENCH_LOGINS` times in all (default 100,000) through 32 connections, each
//! login opening a session through the tracker's real interface; the
//! tracker is stopped (SIGTERM), its data directory measured, then started
//! again on it and timed from the start of the process to the first
//! answered request (a listing with the last session opened, which must
//! still be valid).
//!
//! The tracker binary is `bin("fileshare-tracker")`, so setting
//! `CARGO_TARGET_DIR` and `FILESHARE_PROFILE` runs another build of it
//! (the wire format of a login has not changed). Run it through
//! `scripts/bench.sh logins`, which builds the release binaries it needs.

use fileshare_protocol::client::ClientError;
use fileshare_protocol::messages::tracker::{ListGroups, Login};
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::ErrorCode;
use fileshare_tests::tracker::Tracker;
use std::path::Path;
use std::time::{Duration, Instant};

/// Users logging in, each through two connections: a login in flight
/// counts as a failure until its password is checked, and a user (and an
/// address) may only have a few.
const USERS: usize = 16;
const CLIENTS: usize = USERS * 2;

/// A restarted tracker that takes longer than this to serve is broken.
const SERVE_LIMIT: Duration = Duration::from_secs(60);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes of every file under `dir` (apparent sizes, as `du -sb`) and
/// each file's name and size.
fn dir_size(dir: &Path) -> (u64, Vec<(String, u64)>) {
    let mut total = 0;
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).expect("read the data directory") {
        let e = e.expect("a data directory entry");
        let meta = e.metadata().expect("metadata");
        let size = if meta.is_dir() {
            dir_size(&e.path()).0
        } else {
            meta.len()
        };
        total += size;
        files.push((e.file_name().to_string_lossy().into_owned(), size));
    }
    files.sort();
    (total, files)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Logs `user` in until it answers, retrying while the tracker is busy.
async fn login(client: &fileshare_protocol::client::TrackerClient, user: &str) -> SessionToken {
    loop {
        match client
            .call(Login {
                user: user.into(),
                password: "pw".into(),
            })
            .await
        {
            Ok(s) => return s.token,
            Err(ClientError::Refused(ErrorCode::Busy)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("login failed: {e}"),
        }
    }
}

fn main() {
    let logins = env_num("BENCH_LOGINS", 100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let most = (logins + 10).to_string();
    let mut tracker = Tracker::with_args(&[
        "--max-sessions-per-user",
        &most,
        "--max-sign-ups-per-address",
        "1000",
    ]);
    println!(
        "logins: {logins} through {CLIENTS} connections, tracker {}",
        fileshare_tests::bin("fileshare-tracker").display()
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tracker.client_with(Duration::from_secs(60)))
        .collect();
    // Signed up through the same build's `fsd`, so an earlier tracker
    // gets the request as it knew it.
    let fsd = fileshare_tests::cli::Fsd::new(&tracker);
    for u in 0..USERS {
        fsd.ok(&["create-user", &format!("bench{u}")]);
    }
    let start = Instant::now();
    let last = rt.block_on(async {
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(c, client)| {
                let mine = (c as u64..logins).step_by(CLIENTS).count();
                tokio::spawn(async move {
                    let mut last = None;
                    for _ in 0..mine {
                        last = Some(login(&client, &format!("bench{}", c % USERS)).await);
                    }
                    last
                })
            })
            .collect();
        let mut last = None;
        for t in tasks {
            last = t.await.expect("login task").or(last);
        }
        last.expect("at least one login")
    });
    let wrote = start.elapsed();
    println!(
        "{logins} logins in {:.1} s ({:.0}/s)",
        wrote.as_secs_f64(),
        logins as f64 / wrote.as_secs_f64()
    );
    let status = tracker.terminate();
    assert!(status.success(), "the tracker stopped with {status}");
    let (total, files) = dir_size(tracker.data_dir());
    let listed: Vec<String> = files
        .iter()
        .map(|(name, size)| format!("{name} {:.1} MiB", mib(*size)))
        .collect();
    println!(
        "data directory: {:.1} MiB ({})",
        mib(total),
        listed.join(", ")
    );

    let start = Instant::now();
    tracker.restart();
    let client = tracker.client_with(Duration::from_secs(5));
    let accepting = start.elapsed();
    rt.block_on(async {
        loop {
            match client.call(ListGroups { session: last }).await {
                Ok(_) => break,
                Err(ClientError::Refused(ErrorCode::Unavailable(_)))
                    if start.elapsed() < SERVE_LIMIT =>
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => panic!("the restarted tracker does not serve the last session: {e}"),
            }
        }
    });
    println!(
        "restart: accepting after {:.2} s, first request served after {:.2} s",
        accepting.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
