//! Harness for the end-to-end tests: real trackers, real daemons, real FUSE
//! mounts, all on 127.0.0.1, all ended by PID when a test ends.
//!
//! # Layout
//! - [`tracker`]: a `fileshare-tracker` process and its guard.
//! - [`cluster`]: several trackers sharing one trackers file, each with its
//!   own data directory; `kill -9` and restart of any one.
//! - [`cli`]: runs `fsd` commands with a home of their own.
//! - [`mount`]: `fsd mount` daemons and their guards.
//! - [`daemon`]: background `fsd` commands, `fsd mount --daemon`, and small
//!   read-only or full filesystems, each with its guard.
//! - [`world`]: a tracker, users, groups and mounts for one test.
//! - [`inproc`]: a tracker and daemon nodes in the test's own process, no
//!   FUSE, no root: the read path, the peer server, tickets and eviction.
//! - [`netns`]: a LAN of network namespaces with shaped uplinks, for
//!   trackers and mounts on hosts of their own ([`world::World::on`]).
//! - [`relay`]: a recording TCP relay, for what crosses the wire.
//! - [`liar`]: lying peers speaking the real protocol, and a request flood.
//! - [`local_user`]: another local user, for what it may do to a mount.
//! - [`browser`]: headless Chromium over the DevTools pipe, for the
//!   dashboard.

pub mod browser;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod inproc;
pub mod liar;
pub mod local_user;
pub mod mount;
pub mod netns;
pub mod relay;
pub mod swarm;
pub mod tracker;
pub mod world;

use std::time::{Duration, Instant};

/// One mebibyte, for file sizes.
pub const MIB: usize = 1 << 20;

/// How long a test waits for something that must happen at all before it
/// calls itself hung. Generous for a loaded machine, and never a claim
/// about speed: those are measured by the benchmarks (`scripts/bench.sh`).
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// Drops a file's cached pages (for a file in a mount, the mount's own),
/// so its next read is not answered from them.
pub fn drop_pages(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open to drop pages");
    // SAFETY: a valid descriptor; the call only advises the kernel.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise: {r}");
}

/// `cmp A B`, as a user would check a copy; panics with its output on a
/// difference.
pub fn cmp(a: &std::path::Path, b: &std::path::Path) {
    let out = std::process::Command::new("cmp")
        .arg(a)
        .arg(b)
        .output()
        .expect("run cmp");
    assert!(
        out.status.success(),
        "cmp {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tracker client of `addrs`, in that order, none of them pinned: it
/// remembers their keys in `known_keys` on first use and presents no key of
/// its own, as the command-line client of a fresh home would (but that one
/// presents the home's key).
pub fn tracker_client(
    addrs: &[impl AsRef<str>],
    known_keys: &std::path::Path,
    timeout: Duration,
) -> fileshare_protocol::client::TrackerClient {
    let trackers = addrs
        .iter()
        .map(|addr| fileshare_protocol::trackers_file::TrackerEntry {
            addr: addr.as_ref().to_string(),
            fingerprint: None,
        })
        .collect();
    fileshare_protocol::client::TrackerClient::new(trackers, known_keys, None, timeout)
}

/// A TCP port on 127.0.0.1 set aside for one test, for processes that must
/// be told their address before they start (trackers: every address is in
/// the trackers file). `fsd mount` needs none: it binds port 0 and says
/// which port it got.
///
/// A port is held by a lock file that every test process honours, for as
/// long as this value lives, so no other test is given it even while its
/// process is down (a tracker killed and restarted on the same port). It
/// is chosen below the kernel's ephemeral range, so neither a `bind` to
/// port 0 nor an outgoing connection is ever given it either.
pub struct Port {
    port: u16,
    /// Holds the reservation (an `flock`), released on drop.
    _lock: std::fs::File,
}

impl Port {
    pub fn get(&self) -> u16 {
        self.port
    }
}

/// Reserves a [`Port`] that nothing listens on now.
pub fn reserve_port() -> Port {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    // Below the ephemeral range (`ip_local_port_range`, 32768 by default).
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768u32);
    let hi = ephemeral.clamp(2048, 65535);
    let lo = hi.saturating_sub(12_000).max(1024);
    let dir = std::env::temp_dir().join("fileshare-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port reservation directory");
    // Each process starts somewhere else in the range.
    let start = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed) * 104_729);
    for i in 0..hi - lo {
        let port = u16::try_from(lo + (start.wrapping_add(i) % (hi - lo))).expect("port");
        let Ok(lock) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        // Not reserved by a test, but maybe in use by something else.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Port { port, _lock: lock };
        }
    }
    panic!("no port left to reserve between {lo} and {hi} on 127.0.0.1");
}

/// Writes `len` pseudo-random bytes (from `seed`) to `path`.
pub fn random_file(path: &std::path::Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).expect("write random file");
    data
}

/// A built binary of the workspace (`fsd`, `fileshare-tracker`), from
/// `$CARGO_TARGET_DIR` or `target/`, profile `$FILESHARE_PROFILE`, else
/// the profile this program was built with: tests run debug daemons, and a
/// benchmark run straight from `target/release/` runs release ones.
pub fn bin(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let own = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let profile = std::env::var("FILESHARE_PROFILE").unwrap_or_else(|_| own.into());
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Polls `f` until it returns `Some`, panicking with `what` after `limit`:
/// for waiting on another process without guessing how long it takes.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_for`] a condition.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, timeout, || cond().then_some(()))
}

/// [`wait_until`] for async tests: sleeps between polls instead of
/// blocking the thread, whose runtime may hold tasks only it can run
/// (an in-process daemon's, say).
pub async fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}
