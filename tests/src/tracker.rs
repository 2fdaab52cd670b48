//! A `fileshare-tracker` process on 127.0.0.1 with its own trackers file
//! and data directory. The guard kills it by PID and reaps it on drop, and
//! prints its log when a test fails, so a failure shows the tracker's side.

use crate::netns::Host;
use crate::{bin, reserve_port, wait_until, Port};
use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::messages::tracker::{CreateUser, Login};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long a tracker may take to start accepting connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Tracker {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// Its line in the trackers file, 1-based.
    no: u32,
    addr: String,
    trackers_file: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    /// Its port, reserved for as long as the tracker lives (a cluster's
    /// trackers are given theirs by the cluster, which holds them).
    port: Option<Port>,
    /// The network namespace it runs in, if not the machine's.
    host: Option<Host>,
    /// Dropped last, after the process that uses it.
    dir: tempfile::TempDir,
}

impl Tracker {
    /// A tracker with a 1-second announce interval, so peer expiry is
    /// quick to observe.
    pub fn start() -> Tracker {
        Tracker::with_args(&["--announce-interval", "1"])
    }

    /// A tracker started with extra command-line arguments.
    pub fn with_args(args: &[&str]) -> Tracker {
        let dir = tempfile::Builder::new()
            .prefix("fileshare-tracker-")
            .tempdir()
            .expect("temp dir");
        let mut t = Tracker {
            child: None,
            stdin: None,
            no: 1,
            addr: String::new(),
            trackers_file: dir.path().join("trackers.txt"),
            data_dir: dir.path().join("data"),
            log: dir.path().join("tracker.log"),
            args: args.iter().map(|s| s.to_string()).collect(),
            port: None,
            host: None,
            dir,
        };
        // A process outside the tests could still bind the reserved port
        // first; then try another.
        for attempt in 0.. {
            let port = reserve_port();
            t.addr = format!("127.0.0.1:{}", port.get());
            t.port = Some(port);
            std::fs::write(&t.trackers_file, format!("# test cluster\n{}\n", t.addr))
                .expect("write trackers file");
            match t.spawn() {
                Ok(()) => return t,
                Err(why) if attempt < 3 && why.contains("cannot listen") => continue,
                Err(why) => panic!("fileshare-tracker did not start: {why}"),
            }
        }
        unreachable!()
    }

    /// Tracker `no` of a cluster whose trackers file (already written)
    /// lists it at `addr`; not started yet ([`Tracker::launch`] does).
    pub fn member(trackers_file: &Path, no: u32, addr: &str, args: &[&str]) -> Tracker {
        let dir = tempfile::Builder::new()
            .prefix(&format!("fileshare-tracker{no}-"))
            .tempdir()
            .expect("temp dir");
        Tracker {
            child: None,
            stdin: None,
            no,
            addr: addr.to_string(),
            trackers_file: trackers_file.to_path_buf(),
            data_dir: dir.path().join("data"),
            log: dir.path().join("tracker.log"),
            args: args.iter().map(|s| s.to_string()).collect(),
            port: None,
            host: None,
            dir,
        }
    }

    /// A tracker in `host`'s network namespace, listening on its address
    /// (no port to reserve: nothing else runs there).
    pub fn start_on(host: &Host, args: &[&str]) -> Tracker {
        let addr = std::net::SocketAddr::new(host.addr, 7000).to_string();
        let mut t = Tracker::member(Path::new(""), 1, &addr, args);
        t.trackers_file = t.dir.path().join("trackers.txt");
        std::fs::write(&t.trackers_file, format!("# test cluster\n{addr}\n"))
            .expect("write trackers file");
        t.host = Some(host.clone());
        if let Err(why) = t.spawn() {
            panic!("fileshare-tracker did not start in {}: {why}", host.ns);
        }
        t
    }

    /// Tracker `no` of a cluster whose trackers file (already written)
    /// lists it at `host`'s address, port 7000, to run in `host`'s network
    /// namespace; not started yet ([`Tracker::launch`] does).
    pub fn member_on(host: &Host, trackers_file: &Path, no: u32, args: &[&str]) -> Tracker {
        let addr = std::net::SocketAddr::new(host.addr, 7000).to_string();
        let mut t = Tracker::member(trackers_file, no, &addr, args);
        t.host = Some(host.clone());
        t
    }

    /// Starts the process and waits until it accepts connections; the
    /// error says why it did not.
    pub fn launch(&mut self) -> Result<(), String> {
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open tracker log");
        let mut cmd = match &self.host {
            Some(h) => h.command(bin("fileshare-tracker")),
            None => Command::new(bin("fileshare-tracker")),
        };
        let mut child = cmd
            .arg(&self.trackers_file)
            .arg(self.no.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start fileshare-tracker");
        self.stdin = child.stdin.take();
        let start = std::time::Instant::now();
        let accepts = |addr: &str| match &self.host {
            Some(h) => (addr.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .is_some_and(|p| h.accepts(p)),
            None => std::net::TcpStream::connect(addr).is_ok(),
        };
        loop {
            if accepts(&self.addr) {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if start.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "not accepting after {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its number in the trackers file.
    pub fn no(&self) -> u32 {
        self.no
    }

    /// `host:port` it listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn trackers_file(&self) -> &Path {
        &self.trackers_file
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A scratch directory that lives as long as the tracker.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the tracker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running (it has not crashed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// A client of this tracker, with a short per-call timeout.
    pub fn client(&self) -> TrackerClient {
        self.client_with(Duration::from_secs(5))
    }

    /// A client of this tracker with a per-call timeout of `timeout`; its
    /// key is remembered in [`Tracker::known_keys`].
    pub fn client_with(&self, timeout: Duration) -> TrackerClient {
        crate::tracker_client(&[&self.addr], &self.known_keys(), timeout)
    }

    /// Where the test's clients remember tracker keys.
    pub fn known_keys(&self) -> PathBuf {
        self.dir.path().join("known_keys")
    }

    /// Whether it has a process (started and not killed or stopped).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data directory (killing it
    /// first if it runs).
    pub fn restart(&mut self) {
        self.kill9();
        if let Err(why) = self.spawn() {
            panic!("fileshare-tracker did not restart: {why}");
        }
    }

    /// SIGSTOP: the process stops answering, as if cut off the network.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Tracker::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.pid().expect("tracker is not running");
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Sends SIGTERM and waits for it to exit; returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid().expect("tracker is not running");
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        self.wait_exit()
    }

    /// Types `quit` on its standard input and waits for it to exit.
    pub fn quit(&mut self) -> ExitStatus {
        let stdin = self.stdin.as_mut().expect("tracker stdin");
        stdin.write_all(b"quit\n").expect("write quit");
        stdin.flush().expect("flush quit");
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("tracker is not running");
        let mut status = None;
        wait_until("the tracker to exit", crate::HANG_LIMIT, || {
            status = child.try_wait().expect("wait for tracker");
            status.is_some()
        });
        self.stdin = None;
        status.expect("exit status")
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- tracker {} log ({}) ----\n{}",
                self.no,
                self.addr,
                self.log()
            );
        }
    }
}

/// Creates `user` (password `pw`) and logs in, through `client`.
pub async fn sign_up(
    client: &TrackerClient,
    user: &str,
) -> fileshare_protocol::messages::SessionToken {
    client
        .call(CreateUser {
            user: user.to_string(),
            password: "pw".into(),
        })
        .await
        .expect("create user");
    client
        .call(Login {
            user: user.to_string(),
            password: "pw".into(),
        })
        .await
        .expect("login")
        .token
}
