//! A cluster of `fileshare-tracker` processes on 127.0.0.1 sharing one
//! trackers file, each with its own data directory. Every process is
//! ended by PID when the cluster is dropped, and every log is printed when
//! a test fails.

use crate::tracker::Tracker;
use crate::{reserve_port, Port};
use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::messages::tracker::AskTicketKey;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a cluster may take to elect a leader and catch everyone up.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Cluster {
    /// Tracker `i` (1-based) is `trackers[i - 1]`.
    trackers: Vec<Tracker>,
    trackers_file: PathBuf,
    rt: tokio::runtime::Runtime,
    /// The trackers' ports, reserved for as long as the cluster lives.
    _ports: Vec<Port>,
    /// Dropped last, after the processes that use it.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` trackers with a 1-second announce interval, all started, and
    /// every one serving.
    pub fn start(n: u32) -> Cluster {
        Cluster::with_args(n, &["--announce-interval", "1"])
    }

    /// `n` trackers started with extra arguments, all serving.
    pub fn with_args(n: u32, args: &[&str]) -> Cluster {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // A process outside the tests could still bind a reserved port
        // first; then try other ports.
        for attempt in 0.. {
            let dir = tempfile::Builder::new()
                .prefix("fileshare-cluster-")
                .tempdir()
                .expect("temp dir");
            let trackers_file = dir.path().join("trackers.txt");
            let ports: Vec<Port> = (0..n).map(|_| reserve_port()).collect();
            let addrs: Vec<String> = (ports.iter())
                .map(|p| format!("127.0.0.1:{}", p.get()))
                .collect();
            let mut text = String::from("# test cluster\n");
            for a in &addrs {
                text.push_str(a);
                text.push('\n');
            }
            std::fs::write(&trackers_file, text).expect("write trackers file");
            let mut trackers: Vec<Tracker> = addrs
                .iter()
                .zip(1..)
                .map(|(a, no)| Tracker::member(&trackers_file, no, a, args))
                .collect();
            let mut failed = None;
            for t in trackers.iter_mut() {
                if let Err(why) = t.launch() {
                    failed = Some(why);
                    break;
                }
            }
            match failed {
                None => {
                    let c = Cluster {
                        trackers,
                        trackers_file,
                        rt,
                        _ports: ports,
                        _dir: dir,
                    };
                    for i in 1..=n {
                        c.wait_serving(i);
                    }
                    return c;
                }
                Some(why) if attempt < 3 && why.contains("cannot listen") => continue,
                Some(why) => panic!("a tracker did not start: {why}"),
            }
        }
        unreachable!()
    }

    pub fn size(&self) -> u32 {
        u32::try_from(self.trackers.len()).expect("few trackers")
    }

    pub fn tracker(&self, i: u32) -> &Tracker {
        &self.trackers[usize::try_from(i - 1).expect("small index")]
    }

    pub fn tracker_mut(&mut self, i: u32) -> &mut Tracker {
        &mut self.trackers[usize::try_from(i - 1).expect("small index")]
    }

    pub fn trackers_file(&self) -> &Path {
        &self.trackers_file
    }

    pub fn addr(&self, i: u32) -> &str {
        self.tracker(i).addr()
    }

    /// Every tracker's address, in trackers-file order.
    pub fn addrs(&self) -> Vec<String> {
        self.trackers.iter().map(|t| t.addr().to_string()).collect()
    }

    /// A client of tracker `i` only.
    pub fn client(&self, i: u32) -> TrackerClient {
        self.client_of(&[self.addr(i)], Duration::from_secs(5))
    }

    /// A client of `addrs`, in that order, remembering the trackers' keys
    /// in the cluster's known keys file ([`Cluster::known_keys`]).
    pub fn client_of(&self, addrs: &[impl AsRef<str>], timeout: Duration) -> TrackerClient {
        crate::tracker_client(addrs, &self.known_keys(), timeout)
    }

    /// A client of tracker `i` only that presents `key`, as the daemon
    /// whose key it is would: tickets and announces name its peer id.
    pub fn client_as(&self, i: u32, key: &fileshare_protocol::Identity) -> TrackerClient {
        let entry = fileshare_protocol::trackers_file::TrackerEntry {
            addr: self.addr(i).to_string(),
            fingerprint: None,
        };
        let key = Some(key.clone());
        TrackerClient::new(vec![entry], self.known_keys(), key, Duration::from_secs(5))
    }

    /// Where the test's clients of this cluster remember tracker keys.
    pub fn known_keys(&self) -> PathBuf {
        self._dir.path().join("known_keys")
    }

    /// A client of the whole cluster, starting with tracker `first` (it
    /// fails over in trackers-file order from there).
    pub fn client_from(&self, first: u32) -> TrackerClient {
        let mut addrs = self.addrs();
        addrs.rotate_left(usize::try_from(first - 1).expect("small index"));
        self.client_of(&addrs, Duration::from_secs(5))
    }

    /// `kill -9` of tracker `i`.
    pub fn kill9(&mut self, i: u32) {
        self.tracker_mut(i).kill9();
    }

    /// Starts tracker `i` again on its port and data directory (it must
    /// not be running), and waits until it accepts connections.
    pub fn restart(&mut self, i: u32) {
        self.tracker_mut(i).restart();
    }

    /// Whether tracker `i` answers clients now.
    pub fn serving(&self, i: u32) -> bool {
        let client = self.client_of(&[self.addr(i)], Duration::from_secs(2));
        // A request that needs no session: answered by a serving tracker,
        // `Unavailable` from one that is not caught up.
        self.rt.block_on(client.call(AskTicketKey)).is_ok()
    }

    /// What tracker `i` answers the probe, for messages.
    pub fn answer(&self, i: u32) -> String {
        let client = self.client_of(&[self.addr(i)], Duration::from_secs(2));
        format!("{:?}", self.rt.block_on(client.call(AskTicketKey)))
    }

    /// Waits until tracker `i` serves, panicking with every log after
    /// [`SETTLE_TIMEOUT`].
    pub fn wait_serving(&self, i: u32) {
        let start = Instant::now();
        while !self.serving(i) {
            assert!(
                start.elapsed() < SETTLE_TIMEOUT,
                "tracker {i} not serving after {SETTLE_TIMEOUT:?}: {}",
                self.answer(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every log, for failure messages.
    pub fn logs(&self) -> String {
        self.trackers
            .iter()
            .map(|t| format!("---- tracker {} ----\n{}", t.no(), t.log()))
            .collect()
    }
}
