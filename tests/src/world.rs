//! A whole local network for a test: one tracker process, users with their
//! own homes, a group, and mounts. Everything is torn down on drop.

use crate::mount::{require_fuse, Mount};
use crate::{bin, free_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tracker process, ended by PID on drop.
pub struct TrackerProc {
    child: Option<Child>,
    pub addr: String,
    pub trackers_file: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
}

impl TrackerProc {
    pub fn start(dir: &Path) -> TrackerProc {
        let addr = format!("127.0.0.1:{}", free_port());
        let trackers_file = dir.join("trackers.txt");
        std::fs::write(&trackers_file, format!("{addr}\n")).expect("write trackers file");
        let mut t = TrackerProc {
            child: None,
            addr,
            trackers_file,
            data_dir: dir.join("tracker-data"),
            log: dir.join("tracker.log"),
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("tracker log");
        let child = Command::new(bin("fileshare-tracker"))
            .arg(&self.trackers_file)
            .arg("1")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--announce-interval", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start fileshare-tracker");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tracker did not start:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for TrackerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A user of the test network with a home of their own.
pub struct User {
    pub name: String,
    pub home: PathBuf,
}

pub struct World {
    pub tracker: TrackerProc,
    pub fsd: PathBuf,
    /// Dropped last, after the processes that use it.
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        require_fuse();
        let dir = tempfile::Builder::new()
            .prefix("fileshare-e2e-")
            .tempdir()
            .expect("temp dir");
        let tracker = TrackerProc::start(dir.path());
        World {
            dir,
            tracker,
            fsd: bin("fsd"),
        }
    }

    /// Runs `fsd` as `user` with `args`.
    pub fn fsd(&self, user: &User, args: &[&str]) -> Output {
        Command::new(&self.fsd)
            .arg("--home")
            .arg(&user.home)
            .arg("--trackers")
            .arg(&self.tracker.trackers_file)
            .args(args)
            .env("FILESHARE_PASSWORD", format!("pw-{}", user.name))
            .stdin(Stdio::null())
            .output()
            .expect("run fsd")
    }

    /// Runs `fsd` and panics with its stderr if it fails.
    pub fn fsd_ok(&self, user: &User, args: &[&str]) -> String {
        let out = self.fsd(user, args);
        assert!(
            out.status.success(),
            "fsd {args:?} as {} failed: {}",
            user.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates and logs in a user.
    pub fn user(&self, name: &str) -> User {
        let u = User {
            name: name.to_string(),
            home: self.dir.path().join(format!("home-{name}")),
        };
        self.fsd_ok(&u, &["create-user", name]);
        self.fsd_ok(&u, &["login", name]);
        u
    }

    /// `owner` creates `group` and accepts every one of `members`.
    pub fn group(&self, group: &str, owner: &User, members: &[&User]) {
        self.fsd_ok(owner, &["create-group", group]);
        for m in members {
            self.fsd_ok(m, &["join-group", group]);
            self.fsd_ok(owner, &["accept-request", group, &m.name]);
        }
    }

    /// Mounts the swarm for `user` at a mount point of its own.
    pub fn mount(&self, user: &User, extra: &[&str]) -> Mount {
        let mp = self.dir.path().join(format!("mnt-{}", user.name));
        Mount::start(
            &self.fsd,
            &user.home,
            &self.tracker.trackers_file,
            &mp,
            extra,
        )
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}
