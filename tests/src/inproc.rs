//! The in-process harness: a real tracker and real daemon nodes (engine,
//! piece store, peer server) in the test's own process, on 127.0.0.1:0,
//! with no FUSE and no root. Reads, the peer server, tickets and eviction
//! are driven through the engine's own API, so their tests run in seconds.
//!
//! Everything ends with the harness: dropping a [`Node`] cancels its tasks,
//! dropping the [`Net`] stops its tracker; their directories are temporary.

use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::messages::tracker::FileEntry;
use fileshare_protocol::messages::tracker::{
    AcceptRequest, CreateGroup, CreateUser, JoinGroup, ListGroups, Login,
};
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::trackers_file;
use fileshare_protocol::Identity;
use fsd::engine::read_stream::{ReadNow, ReadStream};
use fsd::engine::{Engine, EngineError};
use fsd::node::NodeConfig;
use fsd::store::Store;
use fsd::tasks::Tasks;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// How long a tracker call waits before the client gives up on it.
const TRACKER_TIMEOUT: Duration = Duration::from_secs(5);

/// A tracker running in this process, and the users made on it.
pub struct Net {
    dir: TempDir,
    trackers_file: PathBuf,
    _port: crate::Port,
    stop: Option<oneshot::Sender<()>>,
    tracker: Option<tokio::task::JoinHandle<()>>,
}

/// One member's daemon without its mount.
pub struct Node {
    pub user: String,
    pub node: fsd::node::Node,
    tasks: Tasks,
    pub dir: PathBuf,
}

/// How a node is set up beyond the defaults.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub read_timeout: Duration,
    pub cache_size: Option<u64>,
    pub corrupt_uploads: bool,
    /// `--max-upload-rate`, bytes per second.
    pub max_upload_rate: Option<u64>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            read_timeout: Duration::from_secs(10),
            cache_size: None,
            corrupt_uploads: false,
            max_upload_rate: None,
        }
    }
}

impl Net {
    /// Starts a tracker on a free port of 127.0.0.1 and waits until it
    /// answers.
    pub async fn start() -> Net {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = crate::reserve_port();
        let trackers_file = dir.path().join("trackers.txt");
        std::fs::write(&trackers_file, format!("127.0.0.1:{}\n", port.get())).unwrap();
        let config = fileshare_tracker::Config {
            trackers_file: trackers_file.clone(),
            data_dir: dir.path().join("tracker"),
            settings: fileshare_tracker::Settings {
                tracker_no: 1,
                ..Default::default()
            },
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let tracker = tokio::spawn(async move {
            if let Err(e) = fileshare_tracker::run(config, stopped).await {
                panic!(
                    "the in-process tracker failed: {}",
                    fileshare_protocol::error::chain(&e)
                );
            }
        });
        let net = Net {
            dir,
            trackers_file,
            _port: port,
            stop: Some(stop),
            tracker: Some(tracker),
        };
        // A refusal of a made-up session is an answer.
        let probe = net.client(None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !probe
            .call(ListGroups {
                session: SessionToken([0; 32]),
            })
            .await
            .is_err_and(|e| e.code().is_some())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the in-process tracker does not answer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        net
    }

    fn client(&self, identity: Option<Identity>) -> TrackerClient {
        let entries = trackers_file::load_entries(&self.trackers_file).unwrap();
        TrackerClient::new(
            entries,
            self.dir
                .path()
                .join(format!("known_keys.{}", rand_suffix())),
            identity,
            TRACKER_TIMEOUT,
        )
    }

    /// Creates `user` (password `pw-USER`) and logs in.
    pub async fn user(&self, user: &str) -> SessionToken {
        let c = self.client(None);
        let password = format!("pw-{user}");
        c.call(CreateUser {
            user: user.to_string(),
            password: password.to_string(),
        })
        .await
        .expect("create_user");
        c.call(Login {
            user: user.to_string(),
            password: password.to_string(),
        })
        .await
        .expect("login")
        .token
    }

    /// `owner` creates `group` and lets each of `members` in.
    pub async fn group(&self, group: &str, owner: SessionToken, members: &[(&str, SessionToken)]) {
        let c = self.client(None);
        c.call(CreateGroup {
            session: owner,
            group: group.to_string(),
        })
        .await
        .expect("create_group");
        for (name, session) in members {
            c.call(JoinGroup {
                session: *session,
                group: group.to_string(),
            })
            .await
            .expect("join_group");
            c.call(AcceptRequest {
                session: owner,
                group: group.to_string(),
                user: name.to_string(),
            })
            .await
            .expect("accept_request");
        }
    }

    /// Starts `user`'s node (logged in as `session`) with a store of its own.
    pub async fn node(&self, user: &str, session: SessionToken, opts: NodeOptions) -> Node {
        let dir = self
            .dir
            .path()
            .join(format!("home-{user}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = || Identity::load_or_create(&dir, "peer").expect("peer key");
        let identity = key();
        let store = Store::open(&dir.join("store")).expect("piece store");
        let client = self.client(Some(key()));
        let tasks = Tasks::root();
        let node = fsd::node::Node::start(
            NodeConfig {
                store,
                identity,
                client,
                session,
                user: user.to_string(),
                listen: "127.0.0.1:0".into(),
                max_upload_rate: opts.max_upload_rate,
                max_download_rate: None,
                read_timeout: opts.read_timeout,
                cache_size: opts.cache_size,
                max_peers_per_file: fsd::net::fetch::LINKS_PER_FILE,
                max_peers: fsd::net::fetch::LINKS_TOTAL,
                corrupt_uploads: opts.corrupt_uploads,
            },
            &tasks,
        )
        .await
        .expect("node starts");
        Node {
            user: user.to_string(),
            node,
            tasks,
            dir,
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.tracker.take() {
            t.abort();
        }
    }
}

impl Node {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.node.engine
    }

    /// Shares `len` pseudo-random bytes (from `seed`) in `group` as
    /// `name`, from a file of this node's directory shared in place, and
    /// returns them.
    pub async fn share(&self, group: &str, name: &str, len: usize, seed: u64) -> Vec<u8> {
        let path = self.dir.join(name);
        let bytes = crate::random_file(&path, len, seed);
        self.engine()
            .share_in_place(group, &path)
            .await
            .expect("share");
        bytes
    }

    /// The listing of `group` as this node sees it.
    pub async fn entry(&self, group: &str, name: &str) -> Result<FileEntry, EngineError> {
        let files = self.engine().list_files(group).await?;
        files
            .into_iter()
            .find(|f| f.name == name)
            .ok_or(EngineError::NotFound)
    }

    /// Opens `group/name` for reading, as an open(2) through the mount does.
    pub async fn open(&self, group: &str, name: &str) -> Result<ReadStream, EngineError> {
        let entry = self.entry(group, name).await?;
        self.engine().open_read(group, &entry).await
    }

    /// Stops this node's peer server and engine, and joins its tasks.
    pub async fn stop(self) {
        self.node.stop().await;
        self.tasks.shutdown(Duration::from_secs(5)).await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.tasks.token().cancel();
    }
}

/// Reads `[offset, offset+len)` through `stream` as the FUSE layer does:
/// at once if its pieces are here, else once they arrive. Says which.
pub async fn read(
    stream: &ReadStream,
    offset: u64,
    len: u32,
) -> (Result<Vec<u8>, EngineError>, bool) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(None));
    let answer = {
        let got = got.clone();
        move |r: Result<&[u8], EngineError>| {
            *got.lock().expect("answer") = Some(r.map(<[u8]>::to_vec));
        }
    };
    let now = match stream.read(offset, len, answer) {
        ReadNow::Done => true,
        ReadNow::Wait(pending) => {
            pending.finish().await;
            false
        }
    };
    let r = got.lock().expect("answer").take();
    (r.expect("a read is answered once"), now)
}

/// Reads a whole file of `size` bytes in reads of `chunk`, as `cat` does.
pub async fn read_all(stream: &ReadStream, size: u64, chunk: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut offset = 0;
    while offset < size {
        let (data, _) = read(stream, offset, chunk).await;
        let data = data.expect("read");
        assert!(
            !data.is_empty(),
            "a read at {offset} of {size} returned nothing"
        );
        offset += data.len() as u64;
        out.extend_from_slice(&data);
    }
    out
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
