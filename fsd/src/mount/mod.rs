//! `fsd mount`: brings up the engine, the peer server, the FUSE mount and
//! the control socket, and takes them down again in order.
//!
//! `serve` owns the root of the task tree ([`crate::tasks`]) and gives
//! each of them a child. It waits for the first of: a signal, a stop
//! request on the control socket, or the end of the FUSE session (someone
//! unmounted); then it cancels peers, engine and control, tells the
//! trackers it leaves, unmounts, and cancels and joins what is left within
//! a bound.
//!
//! [`detach`] is `--daemon`'s fork and readiness pipe.

pub mod detach;

use crate::cli::MountArgs;
use crate::engine::{Engine, EngineConfig};
use crate::home::Home;
use crate::net::serve::ServeCtx;
use crate::net::token_bucket::TokenBucket;
use crate::pieces::registry::Registry;
use crate::store::Store;
use crate::tasks::Tasks;
use crate::trackers::{now_ms, TrackerLink};
use anyhow::{bail, Context};
use fileshare_protocol::tls::{ClientCerts, ServerTls};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// Mounts the swarm and serves until unmounted, Ctrl-C, SIGTERM or a
/// control request; with `--daemon`, returns once the mount is up.
pub fn run(home: &Home, args: &MountArgs) -> anyhow::Result<()> {
    owner_only_files();
    let session = home.session()?;
    if session.expires_unix_ms <= now_ms() {
        bail!("the session has expired; run `fsd login {}`", session.user);
    }
    let mut args = args.clone();
    args.mountpoint = std::path::absolute(&args.mountpoint)
        .with_context(|| format!("bad mount point {}", args.mountpoint.display()))?;
    // The fork must come before the runtime starts any thread. The child
    // leaves the working directory, so every path it uses is made absolute.
    let detached_home;
    let (home, ready) = if args.daemon {
        detached_home = Home::resolve(&crate::cli::Global {
            home: Some(home.dir().to_path_buf()),
            trackers: Some(
                std::path::absolute(home.trackers_file())
                    .unwrap_or_else(|_| home.trackers_file().to_path_buf()),
            ),
            password_stdin: false,
        })?;
        match detach::daemonize(&home.log_path(), &args.mountpoint)? {
            detach::Side::Parent(outcome) => return outcome,
            detach::Side::Child(ready) => (&detached_home, Some(ready)),
        }
    } else {
        (home, None)
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fsd")
        .build()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(serve(home, &args, session, ready.as_ref())));
    if let (Err(e), Some(ready)) = (&result, &ready) {
        ready.failed(&format!("{e:#}"));
    }
    result
}

/// The user's umask when the daemon started, for the files it writes on the
/// user's behalf outside its home (`download-file`).
static USER_UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Everything the daemon creates in its home (pieces, staging files, logs)
/// is owner-only, whatever the user's umask.
fn owner_only_files() {
    // SAFETY: umask cannot fail.
    let old = unsafe { libc::umask(0o077) };
    let _ = USER_UMASK.set(old);
}

/// The mode of a file the user asked for: `0o666` less the user's umask.
pub fn user_file_mode() -> u32 {
    0o666 & !USER_UMASK.get().copied().unwrap_or(0o022)
}

/// Unmounts a mount point left dead by a daemon that crashed.
fn clean_dead_mount(mountpoint: &Path) {
    if let Err(e) = std::fs::metadata(mountpoint) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            tracing::warn!(mountpoint = %mountpoint.display(), "cleaning up a dead mount");
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status();
        }
    }
}

/// Kernel read-ahead for the mount, in KiB. FUSE's INIT caps it at the
/// kernel's 128 KiB default; as root the daemon raises it through sysfs so
/// a sequential read arrives in 4 MiB requests, eight pieces at a time.
const READ_AHEAD_KB: u32 = 4096;

/// Best effort: raises the mount's read-ahead (needs root).
fn raise_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = md.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, READ_AHEAD_KB.to_string()) {
        tracing::debug!("cannot raise read-ahead through {path}: {e}");
    }
}

/// The address other peers reach us at: the listening port on the local
/// address that routes to the first tracker.
fn public_addr(bound: SocketAddr, tracker: &str) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(tracker).map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, bound.port()).to_string()
}

async fn serve(
    home: &Home,
    args: &MountArgs,
    session: crate::home::Session,
    ready: Option<&detach::Ready>,
) -> anyhow::Result<()> {
    let mountpoint = &args.mountpoint;
    let control = crate::control::server::Control::bind(home)?;
    let ui = match crate::ui::bind(&args.ui).await? {
        Some(listener) => Some((listener, crate::ui::token::load_or_create(home)?)),
        None => None,
    };
    let tasks = Tasks::root();
    let (mp, home_c) = (mountpoint.clone(), home.clone());
    let (store, client, identity) = tasks
        .blocking(move || {
            clean_dead_mount(&mp);
            std::fs::create_dir_all(&mp)
                .with_context(|| format!("cannot create mount point {}", mp.display()))?;
            let store = Store::open(&home_c.store_dir()).context("cannot open the piece store")?;
            anyhow::Ok((store, home_c.tracker_client()?, home_c.identity()?))
        })
        .await??;
    let my_id = identity.peer_id();
    // Peers are served only to daemons that present a key: the requester's
    // peer id is its key's.
    let peer_tls = ServerTls::new(&identity, ClientCerts::Required)
        .context("cannot set up TLS for the peer server")?;
    let first_tracker = client.addrs().first().cloned().unwrap_or_default();
    let tracker = Arc::new(TrackerLink::new(
        client,
        session.token,
        session.user.clone(),
        my_id,
    ));

    let listener = crate::net::reach::listen(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = public_addr(listener.local_addr()?, &first_tracker);
    crate::net::upload_scheduler::limit_unsent(&listener);

    let registry = Arc::new(Registry::default());
    let reach = Arc::new(crate::net::reach::Reach::default());
    reach.set_listen(listener.local_addr()?);
    let burst = fileshare_protocol::PIECE_LEN;
    let engine_tasks = tasks.child();
    let engine = Engine::new(
        store,
        identity,
        tracker.clone(),
        registry.clone(),
        EngineConfig {
            download: args.max_download_rate.map(|r| TokenBucket::new(r, burst)),
            read_timeout: Duration::from_secs(args.read_timeout.max(1)),
            cache_size: args.cache_size,
            reach: reach.clone(),
        },
        engine_tasks.clone(),
    );
    let resumed = engine.load_store().await?;

    let peer_tasks = tasks.child();
    let uploads = Arc::new(crate::net::upload_scheduler::Uploads::new(
        args.max_upload_rate,
        burst,
        {
            let registry = registry.clone();
            move |peer: &fileshare_protocol::PeerId| registry.received_from(peer)
        },
    ));
    peer_tasks.spawn("upload-pacer", {
        let (uploads, token) = (uploads.clone(), peer_tasks.token().clone());
        async move { uploads.run(token).await }
    });
    let serve_ctx = Arc::new(ServeCtx {
        my_id,
        tls: peer_tls,
        tracker: tracker.clone(),
        registry: registry.clone(),
        uploads: uploads.clone(),
        corrupt: args.corrupt_uploads,
        send_buffers: Default::default(),
        next_conn: AtomicU64::new(0),
        tasks: peer_tasks.clone(),
        reach,
    });
    peer_tasks.spawn(
        "port-mapping",
        crate::net::reach::mapping::run(serve_ctx.reach.clone()),
    );
    peer_tasks.spawn(
        "call-answerer",
        crate::net::reach::reverse::answer(serve_ctx.clone()),
    );
    peer_tasks.spawn("peer-server", crate::net::serve::run(listener, serve_ctx));
    let meter = Arc::new(crate::ui::meter::Meter::default());
    peer_tasks.spawn(
        "ui-meter",
        crate::ui::meter::run(
            meter.clone(),
            registry.clone(),
            uploads.clone(),
            peer_tasks.token().clone(),
        ),
    );
    engine.start(addr.clone());

    let fs = crate::fuse::FileShareFs::new(engine.clone(), tasks.child());
    let mut fuse = match FuseSession::mount(&tasks, fs, mountpoint).await {
        Ok(f) => f,
        Err(e) => {
            tasks.shutdown(SHUTDOWN_GRACE).await;
            return Err(e);
        }
    };
    let mp = mountpoint.clone();
    let _ = tasks.blocking(move || raise_read_ahead(&mp)).await;
    tracing::info!(
        mountpoint = %mountpoint.display(),
        peer = %addr,
        user = %tracker.user,
        resumed,
        "mounted"
    );
    let control_tasks = tasks.child();
    let source = Arc::new(crate::ui::snapshot::Source::new(
        engine.clone(),
        tracker.clone(),
        registry,
        meter,
        mountpoint.clone(),
    ));
    if let Some((listener, token)) = ui {
        match crate::ui::server::start(listener, source.clone(), token, &control_tasks) {
            Ok(addr) => {
                tracing::info!(url = %addr, "dashboard listening; `fsd ui` prints its URL with the token");
                let _ = source.ui_addr.set(addr);
            }
            Err(e) => tracing::warn!("cannot start the dashboard: {e}"),
        }
    }
    let control = control.start(engine.clone(), source, mountpoint, control_tasks.clone());
    if let Some(ready) = ready {
        ready.mounted();
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; unmounting"),
        _ = term.recv() => tracing::info!("terminated; unmounting"),
        () = control.stop.cancelled() => tracing::info!("unmounting"),
        () = fuse.ended() => tracing::info!("unmounted"),
    }
    // Peers, the engine and the control socket stop first, while the
    // trackers hear that we leave; FUSE calls are answered until the
    // unmount. Then everything left is cancelled and joined.
    for t in [&peer_tasks, &engine_tasks, &control_tasks] {
        t.token().cancel();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.leave()).await;
    fuse.unmount(&tasks, mountpoint).await;
    match tasks.shutdown(SHUTDOWN_GRACE).await {
        0 => tracing::debug!("every task ended"),
        left => tracing::warn!(
            "{left} tasks still running after {} s; exiting anyway",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    // Every piece stored is made durable: the next start checks none again.
    let syncing = engine.clone();
    let _ = tokio::task::spawn_blocking(move || syncing.sync_store()).await;
    // Last: the socket and pid file go, then the stop requests' streams end.
    drop(control);
    Ok(())
}

/// Whether /etc/fuse.conf lets users other than root pass `allow_root`.
fn fuse_conf_allows_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|text| {
        text.lines()
            .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
    })
}

/// How long the tasks have to end once cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long the FUSE session has to end after an unmount.
const UNMOUNT_WAIT: Duration = Duration::from_secs(5);

/// The FUSE session, served by a thread of its own that reports its end.
///
/// The thread owns the session, so nothing is left to forget: if the
/// session outlives [`FuseSession::unmount`] (still in use after a lazy
/// unmount), the process exits around it, which closes the FUSE device and
/// ends the filesystem for its last users.
struct FuseSession {
    /// Completes when the session's thread is done, whoever unmounted.
    ended: tokio::sync::oneshot::Receiver<()>,
    done: bool,
}

impl FuseSession {
    /// Mounts `fs` at `mountpoint` (on the blocking pool: mounting runs
    /// `fusermount3` and waits for the kernel's first request) and serves
    /// it on the thread `fsd-fuse`, which runs fuser's worker threads.
    async fn mount(
        tasks: &Tasks,
        fs: crate::fuse::FileShareFs,
        mountpoint: &Path,
    ) -> anyhow::Result<FuseSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("fileshare".into()),
            fuser::MountOption::Subtype("fileshare".into()),
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
            fuser::MountOption::NoAtime,
        ];
        // SAFETY: geteuid cannot fail.
        // The mount holds this user's session: only this user, and root,
        // may enter it; the kernel refuses everyone else with EACCES before
        // a call reaches the daemon. `allow_root` needs `user_allow_other`
        // in /etc/fuse.conf when the daemon is not root; without it, the
        // kernel's default (this user alone) still holds.
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if root || fuse_conf_allows_other() {
            config.acl = fuser::SessionACL::RootAndOwner;
        }
        if root {
            // The kernel unmounts for us if the daemon dies, so a crash
            // never leaves a dead mount behind.
            config.mount_options.push(fuser::MountOption::AutoUnmount);
        }
        config.n_threads = Some(2);
        let mp = mountpoint.to_path_buf();
        let session = tasks
            .blocking(move || fuser::Session::new(fs, &mp, &config))
            .await?
            .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
        let (tx, ended) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("fsd-fuse".into())
            .spawn(move || {
                if let Err(e) = session.run() {
                    tracing::warn!("the FUSE session ended: {e}");
                }
                let _ = tx.send(());
            })
            .context("cannot start the FUSE thread")?;
        Ok(FuseSession { ended, done: false })
    }

    /// Completes when the session has ended (the filesystem was unmounted).
    async fn ended(&mut self) {
        if !self.done {
            // A thread that died without sending has ended too.
            let _ = (&mut self.ended).await;
            self.done = true;
        }
    }

    /// Unmounts, unless that happened already, and waits (boundedly) for
    /// the session to end.
    ///
    /// fuser's own unmount under `AutoUnmount` only closes the socket of the
    /// `fusermount3` helper, which leaves a filesystem that still answers
    /// mounted: `fusermount3 -u` (lazily if busy) does it.
    async fn unmount(mut self, tasks: &Tasks, mountpoint: &Path) {
        if self.done {
            return;
        }
        let mp = mountpoint.to_path_buf();
        let _ = tasks
            .blocking(move || {
                let fusermount = |lazy: bool| {
                    std::process::Command::new("fusermount3")
                        .arg("-u")
                        .args(lazy.then_some("-z"))
                        .arg(&mp)
                        .stderr(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                };
                if !fusermount(false) && !fusermount(true) {
                    tracing::warn!(mountpoint = %mp.display(), "cannot unmount");
                }
            })
            .await;
        if tokio::time::timeout(UNMOUNT_WAIT, self.ended())
            .await
            .is_err()
        {
            tracing::debug!(
                mountpoint = %mountpoint.display(),
                "still in use after a lazy unmount; exiting ends it"
            );
        }
    }
}
