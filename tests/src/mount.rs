//! Real `fsd mount` daemons for the end-to-end tests: each with its own home
//! and mount point, started as a child process and always cleaned up (the
//! guard unmounts with `fusermount3 -u` and ends the daemon by PID).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::wait_for;

/// Whether `path` is a FUSE mount point right now.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path
        .canonicalize()
        .or_else(|_| Ok::<_, ()>(path.to_path_buf()))
    else {
        return false;
    };
    let target = canon.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split(' ');
                let (_, mp, fstype) = (f.next(), f.next(), f.next());
                mp == Some(target.as_str()) && fstype.is_some_and(|t| t.starts_with("fuse"))
            })
        })
        .unwrap_or(false)
}

/// `fusermount3 -u` (lazily with `-z`), quietly: callers check the result
/// with [`is_mounted`].
pub fn fusermount(path: &Path, lazy: bool) {
    let _ = Command::new("fusermount3")
        .arg("-u")
        .args(lazy.then_some("-z"))
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Fails loudly where FUSE cannot work, instead of skipping.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests need FUSE (install fuse3 and run as root)"
    );
    let ok = Command::new("fusermount3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "fusermount3 is missing: install fuse3 (scripts/test.sh does)"
    );
}

/// One running `fsd mount`.
pub struct Mount {
    pub fsd: PathBuf,
    pub home: PathBuf,
    pub trackers: PathBuf,
    pub mountpoint: PathBuf,
    /// Where this daemon serves peers (127.0.0.1:port, or its host's
    /// address): it binds port 0 and its "mounted" log line says which
    /// port it got.
    pub listen: String,
    extra: Vec<String>,
    /// The network namespace it runs in, if not the machine's.
    host: Option<crate::netns::Host>,
    log: PathBuf,
    child: Option<Child>,
}

impl Mount {
    /// Starts `fsd mount` and waits until the mount is up.
    pub fn start(
        fsd: &Path,
        home: &Path,
        trackers: &Path,
        mountpoint: &Path,
        extra: &[&str],
    ) -> Mount {
        Mount::start_on(None, fsd, home, trackers, mountpoint, extra)
    }

    /// [`Mount::start`] inside `host`'s network namespace (if any),
    /// serving peers on its address.
    pub fn start_on(
        host: Option<&crate::netns::Host>,
        fsd: &Path,
        home: &Path,
        trackers: &Path,
        mountpoint: &Path,
        extra: &[&str],
    ) -> Mount {
        let mut m = Mount {
            fsd: fsd.to_path_buf(),
            home: home.to_path_buf(),
            trackers: trackers.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            listen: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            host: host.cloned(),
            log: home.join("mount.log"),
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.mountpoint).expect("create mount point");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open daemon log");
        // Only this run's lines count.
        let from = log.metadata().map_or(0, |m| m.len());
        let filter =
            std::env::var("FILESHARE_TEST_LOG").unwrap_or_else(|_| "info,fsd=debug".into());
        // A host with IPv6 only runs the daemon on its default listen
        // address (both families on one port), as a user would.
        let (mut cmd, listen) = match &self.host {
            Some(h) if h.addr.is_ipv6() => (h.command(&self.fsd), None),
            Some(h) => (
                h.command(&self.fsd),
                Some(std::net::SocketAddr::new(h.addr, 0).to_string()),
            ),
            None => (Command::new(&self.fsd), Some("127.0.0.1:0".to_string())),
        };
        cmd.arg("--home")
            .arg(&self.home)
            .arg("--trackers")
            .arg(&self.trackers)
            .arg("mount")
            .arg(&self.mountpoint);
        // A `--listen` among the extra arguments (the default `[::]:0`,
        // say) replaces the host's address.
        if let Some(listen) = listen.filter(|_| !self.extra.iter().any(|a| a == "--listen")) {
            cmd.arg("--listen").arg(listen);
        }
        let child = cmd
            .args(&self.extra)
            // The "mounted" line gives the port, whatever else is logged.
            .env("RUST_LOG", format!("{filter},fsd::mount=info"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start fsd mount");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if is_mounted(&self.mountpoint) {
                if let Some(addr) = self.mounted_addr(from) {
                    self.listen = addr;
                    break;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("fsd mount exited with {status}:\n{}", self.log());
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mount did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The peer address in this run's "mounted" log line, once written.
    fn mounted_addr(&self, from: u64) -> Option<String> {
        let log = std::fs::read(&self.log).ok()?;
        let run = log.get(usize::try_from(from).ok()?..)?;
        String::from_utf8_lossy(run)
            .lines()
            .filter(|l| l.contains("fsd::mount: mounted "))
            .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("peer=")))
            .map(str::to_string)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// `cp SRC` into the directory of `group`, as a user would; fails the
    /// test with cp's error and the daemon's log.
    pub fn cp_in(&self, src: &Path, group: &str) {
        let out = std::process::Command::new("cp")
            .arg(src)
            .arg(self.path(group))
            .output()
            .expect("run cp");
        assert!(
            out.status.success(),
            "cp into the mount failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `fusermount3 -u`, then waits for the daemon to exit by itself.
    pub fn unmount(&mut self) {
        fusermount(&self.mountpoint, false);
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if start.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(25))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        panic!("fsd did not exit after unmount:\n{}", self.log());
                    }
                }
            }
        }
        assert!(!is_mounted(&self.mountpoint), "still mounted after unmount");
    }

    /// `kill -9` of the daemon; the mount must not stay behind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let start = Instant::now();
        while is_mounted(&self.mountpoint) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(25));
        }
        if is_mounted(&self.mountpoint) {
            fusermount(&self.mountpoint, true);
        }
    }

    /// Mounts again with the same home and mount point (on a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running daemon");
        self.spawn();
    }

    /// Reads a `user.fileshare.*` attribute of a file in the mount.
    pub fn xattr(&self, rel: &str, name: &str) -> String {
        xattr(&self.path(rel), name).unwrap_or_else(|e| panic!("getxattr {rel} {name}: {e}"))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            fusermount(&self.mountpoint, false);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mountpoint) {
            fusermount(&self.mountpoint, true);
        }
    }
}

/// `getxattr(2)` on a path.
pub fn xattr(path: &Path, name: &str) -> std::io::Result<String> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let n = CString::new(name).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: both strings are NUL-terminated and buf is valid for its length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(len).unwrap_or(0));
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Per-peer counters parsed from `user.fileshare.fetched`:
/// `(addr, bytes, pieces, failures)`.
pub fn fetched(mount: &Mount, rel: &str) -> Vec<(String, u64, u64, u64)> {
    mount
        .xattr(rel, "user.fileshare.fetched")
        .split("; ")
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let mut parts = entry.split(' ');
            let addr = parts.next().unwrap_or_default().to_string();
            let mut field = |k: &str| {
                parts
                    .next()
                    .and_then(|kv| kv.strip_prefix(k))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let bytes = field("bytes=");
            let pieces = field("pieces=");
            let failures = field("failures=");
            (addr, bytes, pieces, failures)
        })
        .collect()
}
