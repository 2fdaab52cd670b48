//! A whole local network for a test: one tracker process (or a cluster of
//! them), users with their own homes, a group, and mounts. Everything is
//! torn down on drop.

use crate::bin;
use crate::cluster::Cluster;
use crate::mount::{require_fuse, Mount};
use crate::netns::Host;
use crate::tracker::Tracker;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A user of the test network with a home of their own.
pub struct User {
    pub name: String,
    pub home: PathBuf,
}

impl User {
    /// The session token `fsd login` saved in the home.
    pub fn session(&self) -> fileshare_protocol::messages::SessionToken {
        let text = std::fs::read_to_string(self.home.join("session")).expect("session file");
        let hex = text.lines().nth(1).expect("token line");
        let bytes = fileshare_protocol::ids::unhex(hex).expect("hex token");
        fileshare_protocol::messages::SessionToken(bytes.try_into().expect("32 bytes"))
    }
}

/// The trackers of a world.
pub enum Trackers {
    One(Tracker),
    Cluster(Cluster),
}

pub struct World {
    pub trackers: Trackers,
    pub fsd: PathBuf,
    /// Where commands run: the network namespace of the tracker's host on
    /// a [`crate::netns::Lan`], else the machine's.
    pub host: Option<Host>,
    /// Dropped last, after the processes that use it.
    pub dir: tempfile::TempDir,
}

impl World {
    /// A network with one tracker.
    pub fn new() -> World {
        World::with(Trackers::One(Tracker::start()))
    }

    /// A network with one tracker started with `args` (besides a
    /// 1-second announce interval), e.g. a short `--ticket-ttl`.
    pub fn with_tracker_args(args: &[&str]) -> World {
        let mut all = vec!["--announce-interval", "1"];
        all.extend_from_slice(args);
        World::with(Trackers::One(Tracker::with_args(&all)))
    }

    /// A network whose trackers file lists a cluster of `n` trackers.
    pub fn cluster(n: u32) -> World {
        World::with(Trackers::Cluster(Cluster::start(n)))
    }

    /// A network whose tracker runs on `host` of a LAN; commands run
    /// there too, and mounts on the hosts given to [`World::mount_on`].
    pub fn on(host: &Host) -> World {
        let mut w = World::with(Trackers::One(Tracker::start_on(
            host,
            &["--announce-interval", "1"],
        )));
        w.host = Some(host.clone());
        w
    }

    /// [`World::on`], with the tracker started with `args` too (e.g. a
    /// relay rate).
    pub fn on_with_args(host: &Host, args: &[&str]) -> World {
        let mut all = vec!["--announce-interval", "1"];
        all.extend_from_slice(args);
        let mut w = World::with(Trackers::One(Tracker::start_on(host, &all)));
        w.host = Some(host.clone());
        w
    }

    fn with(trackers: Trackers) -> World {
        require_fuse();
        let dir = tempfile::Builder::new()
            .prefix("fileshare-e2e-")
            .tempdir()
            .expect("temp dir");
        World {
            dir,
            trackers,
            fsd: bin("fsd"),
            host: None,
        }
    }

    /// The tracker (tracker 1 of a cluster).
    pub fn tracker(&self) -> &Tracker {
        match &self.trackers {
            Trackers::One(t) => t,
            Trackers::Cluster(c) => c.tracker(1),
        }
    }

    /// The single tracker, to kill and restart it; panics for a cluster.
    pub fn tracker_mut(&mut self) -> &mut Tracker {
        match &mut self.trackers {
            Trackers::One(t) => t,
            Trackers::Cluster(_) => panic!("this world has a cluster of trackers"),
        }
    }

    /// The cluster; panics for a network of one tracker.
    pub fn cluster_mut(&mut self) -> &mut Cluster {
        match &mut self.trackers {
            Trackers::One(_) => panic!("this world has one tracker"),
            Trackers::Cluster(c) => c,
        }
    }

    pub fn trackers_file(&self) -> &Path {
        match &self.trackers {
            Trackers::One(t) => t.trackers_file(),
            Trackers::Cluster(c) => c.trackers_file(),
        }
    }

    /// Runs `fsd` as `user` with `args`.
    pub fn fsd(&self, user: &User, args: &[&str]) -> Output {
        let mut cmd = match &self.host {
            Some(h) => h.command(&self.fsd),
            None => Command::new(&self.fsd),
        };
        cmd.arg("--home")
            .arg(&user.home)
            .arg("--trackers")
            .arg(self.trackers_file())
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

    /// A network of `names`, all members of group `g` owned by the first.
    pub fn network(names: &[&str]) -> (World, Vec<User>) {
        World::new().with_users(names)
    }

    /// This network with users `names`, all members of group `g` owned by
    /// the first.
    pub fn with_users(self, names: &[&str]) -> (World, Vec<User>) {
        let w = self;
        let users: Vec<User> = names.iter().map(|n| w.user(n)).collect();
        if let Some((owner, rest)) = users.split_first() {
            let rest: Vec<&User> = rest.iter().collect();
            w.group("g", owner, &rest);
        }
        (w, users)
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
        Mount::start(&self.fsd, &user.home, self.trackers_file(), &mp, extra)
    }

    /// Mounts the swarm for `user` with its daemon in `host`'s network
    /// namespace, serving peers on the host's address.
    pub fn mount_on(&self, host: &Host, user: &User, extra: &[&str]) -> Mount {
        let mp = self.dir.path().join(format!("mnt-{}", user.name));
        Mount::start_on(
            Some(host),
            &self.fsd,
            &user.home,
            self.trackers_file(),
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
