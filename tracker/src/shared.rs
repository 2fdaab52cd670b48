//! Everything the request handlers share, and how it comes up from disk.
//!
//! Lock order: `state` before `peers`; `throttle`, `sign_ups` and
//! `availability` are never held with another. No lock is held across an
//! `.await`. See STATE.md.

use crate::auth;
use crate::consensus::node::Node;
use crate::consensus::transport::Transport;
use crate::error::TrackerError;
use crate::peers::Peers;
use crate::state::change::Change;
use crate::state::State;
use fileshare_protocol::messages::{ClusterMsg, SessionToken};
use fileshare_protocol::ticket::TicketSigner;
use fileshare_protocol::ErrorCode;
use parking_lot::{Mutex, RwLock};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Knobs, mostly for tests.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This tracker's 1-based number in the trackers file.
    pub tracker_no: u32,
    /// How many trackers the trackers file lists.
    pub cluster_size: u32,
    pub session_ttl: Duration,
    pub announce_interval: Duration,
    /// How long a ticket lasts: how long a group's access outlives a
    /// membership on the peers.
    pub ticket_ttl: Duration,
    /// Caps and quotas that hold against a client or a member who attacks.
    pub limits: Limits,
    /// Offer daemons at the address they announce rather than the one
    /// their connection comes from (`--trust-announced-addresses`): for
    /// trackers behind a proxy that hides where clients come from.
    pub trust_announced_addrs: bool,
    /// What the relay allows each user (`--relay-rate`,
    /// `--relay-pairs-per-user`).
    pub relay: crate::reach::relay::RelayLimits,
    /// More addresses to accept clients on besides this tracker's own in
    /// the trackers file (`--listen`), e.g. `[::]:7000` so daemons that
    /// have IPv6 only reach a tracker listed at an IPv4 address.
    pub also_listen: Vec<String>,
}

/// What one connection, one address or one account may take; each is a
/// flag of `fileshare-tracker` (see its `--help` and the README's
/// "Limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client connections served at once (`--max-connections`).
    pub connections: usize,
    /// Of those, from one source address (`--max-connections-per-address`).
    pub connections_per_address: usize,
    /// A client connection that sends no frame for this long is closed
    /// (`--idle-timeout`); daemons ping well within it.
    pub idle_timeout: Duration,
    /// Groups one user may own (`--max-groups-per-user`).
    pub groups_per_user: usize,
    /// Peer ids (daemons) one user may have online (`--max-peers-per-user`).
    pub peers_per_user: usize,
    /// Files one user may share in one group (`--max-files-per-user`).
    pub files_per_user: usize,
    /// Join requests waiting in one group (`--max-pending-requests`).
    pub pending_requests: usize,
    /// Logins waiting for a password check; more are refused `Busy` at
    /// once (`--max-login-queue`). Sign-ups wait in a queue of their own
    /// ([`SIGN_UP_QUEUE`]), so they never make a login busy.
    pub login_queue: usize,
    /// Sign-ups one source address may make per hour, in the whole cluster
    /// (`--max-sign-ups-per-address`).
    pub sign_ups_per_address: u32,
    /// Login sessions one user may have open (`--max-sessions-per-user`).
    pub sessions_per_user: usize,
    /// Bytes of file metadata (piece hashes and names) one user may have
    /// shared over all groups (`--max-metadata-per-user`, in MiB).
    pub metadata_per_user: u64,
    /// Peers one Locate hands out, sampled (`--locate-peers`).
    pub locate_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 4096,
            connections_per_address: 256,
            idle_timeout: Duration::from_secs(120),
            groups_per_user: 100,
            peers_per_user: 32,
            files_per_user: 10_000,
            pending_requests: 1000,
            login_queue: 64,
            sign_ups_per_address: auth::DEFAULT_SIGN_UP_BUDGET,
            sessions_per_user: 1000,
            metadata_per_user: 256 << 20,
            locate_peers: crate::sample::DEFAULT_LOCATE_PEERS,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tracker_no: 1,
            cluster_size: 1,
            session_ttl: Duration::from_secs(7 * 24 * 3600),
            announce_interval: Duration::from_secs(5),
            ticket_ttl: DEFAULT_TICKET_TTL,
            limits: Limits::default(),
            trust_announced_addrs: false,
            relay: crate::reach::relay::RelayLimits::default(),
            also_listen: Vec::new(),
        }
    }
}

tokio::task_local! {
    /// The client's id and the sequence number of the write being
    /// handled, when the client sent them (`TrackerRequest::Once`).
    pub static ONCE: (u64, u64);
}

/// Sign-ups waiting for (or in) a password hash; more are refused `Busy`
/// at once. Apart from the logins' queue, so a flood of sign-ups leaves
/// logins their places.
pub const SIGN_UP_QUEUE: usize = 16;

/// Which queue a password hash waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Login,
    SignUp,
}

/// A ticket's lifetime unless `--ticket-ttl` says otherwise.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(300);

/// The file of the replicated log, its snapshot and the vote, inside the
/// data directory.
pub const STORE_FILE: &str = "tracker.redb";

/// The record log of earlier versions, which is not read: its presence
/// stops the start, so no state is dropped silently.
pub const OLD_STORE_FILE: &str = "records.redb";

pub struct Shared {
    /// Durable state; only the consensus engine's state machine changes
    /// it (and, in a pair, a tracker serving alone).
    pub(crate) state: Arc<RwLock<State>>,
    pub(crate) peers: RwLock<Peers>,
    /// Whether daemons' offered addresses can be dialled, and the calls
    /// waiting for holders that cannot be.
    pub(crate) reach: crate::reach::Reachability,
    /// Forwards bytes between daemons that cannot dial each other.
    pub(crate) relay: crate::reach::relay::Relay,
    pub(crate) node: Arc<Node>,
    pub(crate) throttle: Mutex<auth::Throttle>,
    pub(crate) sign_ups: Mutex<auth::SignUps>,
    /// Bounds concurrent argon2 runs: each takes ~19 MiB and a core.
    pub(crate) hashing: Semaphore,
    /// Places for logins waiting for (or in) `hashing`; one that finds none
    /// is answered `Busy` at once.
    pub(crate) login_queue: Semaphore,
    /// The same for sign-ups ([`SIGN_UP_QUEUE`]).
    pub(crate) sign_up_queue: Semaphore,
    /// Of `hashing`, what sign-ups may hold at once: at most half, so
    /// logins always have the rest.
    pub(crate) sign_up_hashing: Semaphore,
    pub(crate) settings: Settings,
    /// The other trackers, for gossip.
    pub(crate) transport: Arc<Transport>,
    /// The ticket key pair, made from the state's seed on first use (the
    /// seed never changes once set).
    signer: OnceLock<TicketSigner>,
}

impl Shared {
    /// Opens the store in `data_dir` (created if missing): the last
    /// snapshot is loaded and the engine applies the log after it. A
    /// tracker alone in its trackers file has its state complete when this
    /// returns.
    pub async fn open(
        data_dir: &Path,
        settings: Settings,
        transport: Arc<Transport>,
    ) -> Result<(Arc<Shared>, Arc<Node>), TrackerError> {
        // Owner-only: the directory holds password hashes, sessions and the
        // key that signs tickets.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .and_then(|()| {
                std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|error| TrackerError::DataDir {
                path: data_dir.to_path_buf(),
                error,
            })?;
        let store_file = data_dir.join(STORE_FILE);
        let old = data_dir.join(OLD_STORE_FILE);
        if old.exists() && !store_file.exists() {
            return Err(TrackerError::OldStore { path: old });
        }
        private_file(&store_file).map_err(|error| TrackerError::DataDir {
            path: data_dir.to_path_buf(),
            error,
        })?;
        let open_err = |e: redb::Error| TrackerError::Open {
            path: store_file.clone(),
            error: e,
        };
        // Opened again in the same process (tests), the file is free once
        // the last handle of the engine that had it is dropped.
        let mut tries = 0;
        let db = loop {
            match redb::Database::create(&store_file) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 250 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(open_err(e.into())),
            }
        };
        let state = Arc::new(RwLock::new(State::default()));
        let node = Node::start(
            settings.tracker_no,
            settings.cluster_size,
            Arc::new(db),
            state.clone(),
            transport.clone(),
        )
        .await?;
        tracing::info!(users = state.read().user_count(), "state loaded");
        let hashing = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shared = Shared {
            state,
            peers: RwLock::new(Peers::new(settings.announce_interval)),
            reach: crate::reach::Reachability::default(),
            relay: crate::reach::relay::Relay::new(settings.relay),
            node: node.clone(),
            throttle: Mutex::new(auth::Throttle::new(settings.cluster_size)),
            sign_ups: Mutex::new(auth::SignUps::new(
                settings.limits.sign_ups_per_address,
                settings.cluster_size,
            )),
            login_queue: Semaphore::new(settings.limits.login_queue),
            sign_up_queue: Semaphore::new(SIGN_UP_QUEUE),
            sign_up_hashing: Semaphore::new((hashing / 2).max(1)),
            hashing: Semaphore::new(hashing),
            settings,
            transport,
            signer: OnceLock::new(),
        };
        Ok((Arc::new(shared), node))
    }

    /// Refuses every request while this tracker is not caught up with the
    /// cluster: the client then tries another tracker.
    pub fn available(&self) -> Result<(), ErrorCode> {
        self.node.readable().map_err(|why| {
            ErrorCode::Unavailable(format!("tracker {}: {why}", self.settings.tracker_no))
        })
    }

    /// [`Shared::available`], waiting a moment while this tracker is about
    /// to serve rather than sending the client away.
    pub async fn ready(&self) -> Result<(), ErrorCode> {
        self.node.ready().await.map_err(|why| {
            ErrorCode::Unavailable(format!("tracker {}: {why}", self.settings.tracker_no))
        })
    }

    /// Tells every other tracker about a change of the soft state.
    pub fn gossip(&self, msg: &ClusterMsg) {
        self.transport.broadcast(msg);
    }

    /// The user of a valid, unexpired session.
    pub fn session_user(&self, token: &SessionToken) -> Result<String, ErrorCode> {
        let hash = auth::token_hash(token);
        self.state
            .read()
            .session(&hash, auth::now_unix_ms())
            .map(|s| s.user.clone())
            .ok_or(ErrorCode::InvalidSession)
    }

    /// The cluster's ticket key pair, once the cluster's first record is
    /// applied.
    pub fn ticket_signer(&self) -> Result<&TicketSigner, ErrorCode> {
        if let Some(s) = self.signer.get() {
            return Ok(s);
        }
        let seed =
            *self.state.read().ticket_seed().ok_or_else(|| {
                ErrorCode::Unavailable("the cluster is not initialized yet".into())
            })?;
        Ok(self.signer.get_or_init(|| TicketSigner::from_seed(&seed)))
    }

    /// Waits until `change` is durable and visible, or refused. Inside a
    /// client's `Once` request ([`ONCE`]) it takes effect once, however
    /// often the client sends it.
    pub async fn submit(&self, change: Change) -> Result<(), ErrorCode> {
        let once = ONCE.try_with(|id| *id).ok();
        self.node.submit(change, once).await
    }

    /// Runs argon2 work on the blocking pool, a few at a time; with its
    /// queue full, refuses `Busy` at once.
    pub async fn hash_work<T: Send + 'static>(
        &self,
        queue: Queue,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ErrorCode> {
        let shutting_down = |_| ErrorCode::Unavailable("the tracker is shutting down".into());
        let _place = match queue {
            Queue::Login => &self.login_queue,
            Queue::SignUp => &self.sign_up_queue,
        }
        .try_acquire()
        .map_err(|_| ErrorCode::Busy)?;
        let _share = match queue {
            Queue::Login => None,
            Queue::SignUp => Some(
                self.sign_up_hashing
                    .acquire()
                    .await
                    .map_err(shutting_down)?,
            ),
        };
        let _permit = self.hashing.acquire().await.map_err(shutting_down)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ErrorCode::Internal(format!("password check failed: {e}")))
    }

    /// Forgets peers that stopped announcing, every interval until
    /// cancelled.
    pub async fn sweep_peers(&self, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.announce_interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let gone = self.peers.write().sweep(std::time::Instant::now());
                    if gone > 0 {
                        tracing::debug!(gone, "offline peers forgotten");
                    }
                }
            }
        }
    }
}

/// Makes the store file owner-only (0600) before the store opens it: the
/// log holds the ticket signing key and password hashes.
fn private_file(store_file: &Path) -> std::io::Result<()> {
    // An empty file is a new database to the store.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(store_file)?;
    std::fs::set_permissions(store_file, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> Change {
        Change::CreateUser {
            user: u.into(),
            phc: "x".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_are_durable_and_conflicts_decided_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, node) = Shared::open(dir.path(), Settings::default(), Transport::none())
            .await
            .unwrap();
        assert!(shared.available().is_ok());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let s = shared.clone();
            // Every name twice: exactly one of each pair wins.
            tasks.spawn(async move { s.submit(user(&format!("u{}", i % 100))).await });
        }
        let mut ok = 0;
        let mut exists = 0;
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(()) => ok += 1,
                Err(ErrorCode::UserExists(_)) => exists += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((ok, exists), (100, 100));
        assert_eq!(shared.state.read().user_count(), 100);
        node.stop().await;
        assert!(shared.submit(user("late")).await.is_err());
        drop(shared);
        drop(node);
        // Back, a tracker alone in its trackers file serves all of it at once.
        let (shared, node) = Shared::open(dir.path(), Settings::default(), Transport::none())
            .await
            .unwrap();
        assert!(shared.available().is_ok());
        assert_eq!(shared.state.read().user_count(), 100);
        assert!(shared.state.read().ticket_seed().is_some());
        node.stop().await;
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(STORE_FILE)), 0o600);
    }

    #[tokio::test]
    async fn a_log_of_an_earlier_version_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OLD_STORE_FILE), b"old").unwrap();
        let r = Shared::open(dir.path(), Settings::default(), Transport::none()).await;
        assert!(matches!(r, Err(TrackerError::OldStore { .. })));
        assert!(!dir.path().join(STORE_FILE).exists());
    }

    /// 100,000 sessions opened (a login's write; the password hash is
    /// left out) by 64 concurrent writers leave a compacted log, and a
    /// restart (until the state is ready to serve) is quick. Prints the
    /// time to write, the data directory's size and the restart's; run in
    /// release:
    /// `cargo test -p fileshare-tracker --release -- --ignored --nocapture hundred_thousand`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement: 100,000 writes"]
    async fn a_hundred_thousand_logins_leave_a_small_store_and_a_quick_restart() {
        const N: usize = 100_000;
        let dir = tempfile::tempdir().unwrap();
        let (shared, node) = Shared::open(dir.path(), Settings::default(), Transport::none())
            .await
            .unwrap();
        shared.submit(user("alice")).await.unwrap();
        let start = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..64 {
            let s = shared.clone();
            tasks.spawn(async move {
                for i in (c..N).step_by(64) {
                    let mut token_hash = [0u8; 32];
                    token_hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    let change = Change::OpenSession {
                        token_hash,
                        user: "alice".into(),
                        now_unix_ms: 1,
                        expires_unix_ms: u64::MAX,
                        quota: u32::MAX,
                    };
                    s.submit(change).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let wrote = start.elapsed();
        node.stop().await;
        drop(shared);
        drop(node);
        let size: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        let start = std::time::Instant::now();
        let (shared, node) = Shared::open(dir.path(), Settings::default(), Transport::none())
            .await
            .unwrap();
        while node.readable().is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let restart = start.elapsed();
        let sessions = (0..N)
            .filter(|i| {
                let mut h = [0u8; 32];
                h[..8].copy_from_slice(&(*i as u64).to_le_bytes());
                shared.state.read().session(&h, 2).is_some()
            })
            .count();
        assert_eq!(sessions, N, "every session is there after the restart");
        eprintln!(
            "{N} logins: written in {wrote:?}; data directory {:.1} MiB; restart {restart:?}",
            size as f64 / f64::from(1 << 20)
        );
        node.stop().await;
    }
}
