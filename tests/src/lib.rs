//! Harness for the end-to-end tests: real trackers, real daemons, real FUSE
//! mounts, all on 127.0.0.1, all ended by PID when a test ends.
//!
//! # Layout
//! - [`tracker`]: a `fileshare-tracker` process and its guard.
//! - [`cli`]: runs `fsd` commands with a home of their own.

pub mod cli;
pub mod tracker;

use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A built binary of the workspace (`fsd`, `fileshare-tracker`), from
/// `$CARGO_TARGET_DIR` or `target/`, profile `$FILESHARE_PROFILE` (debug).
pub fn bin(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = std::env::var("FILESHARE_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Polls `cond` every few milliseconds until it holds, panicking with
/// `what` after `timeout`: for waiting on another process without guessing
/// how long it takes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
