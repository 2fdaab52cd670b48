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
use crate::home::Home;
use crate::node::{Node, NodeConfig};
use crate::store::Store;
use crate::tasks::Tasks;
use crate::trackers::now_ms;
use anyhow::{bail, Context};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Mounts the swarm and serves until unmounted, Ctrl-C, SIGTERM or a
/// control request; with `--daemon`, returns once the mount is up.
pub fn run(home: &Home, args: &MountArgs) -> anyhow::Result<()> {
    crate::umask::owner_only_files();
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
        let trackers = std::path::absolute(home.trackers_file())
            .unwrap_or_else(|_| home.trackers_file().to_path_buf());
        detached_home = Home::resolve(Some(home.dir()), Some(&trackers))?;
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

async fn serve(
    home: &Home,
    args: &MountArgs,
    session: crate::home::Session,
    ready: Option<&detach::Ready>,
) -> anyhow::Result<()> {
    let mountpoint = &args.mountpoint;
    let control = crate::control::server::Control::bind(home)?;
    let ui = match crate::ui::bind(args.ui.addr()).await? {
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
    let node = Node::start(
        NodeConfig {
            store,
            identity,
            client,
            session: session.token,
            user: session.user.clone(),
            listen: args.listen.clone(),
            max_upload_rate: args.max_upload_rate,
            max_download_rate: args.max_download_rate,
            read_timeout: Duration::from_secs(args.read_timeout.max(1)),
            cache_size: args.cache_size,
            max_peers_per_file: args.max_peers_per_file,
            max_peers: args.max_peers,
            corrupt_uploads: args.corrupt_uploads,
        },
        &tasks,
    )
    .await?;
    let (engine, tracker, registry) = (&node.engine, &node.tracker, &node.registry);
    let meter = Arc::new(crate::ui::meter::Meter::default());
    node.peer_tasks.spawn(
        "ui-meter",
        crate::ui::meter::run(
            meter.clone(),
            registry.clone(),
            node.uploads.clone(),
            node.peer_tasks.token().clone(),
        ),
    );

    let fs = crate::fuse::FileShareFs::new(engine.clone(), tasks.child(), mountpoint);
    let kernel_reads = fs.kernel_reads();
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
        peer = %node.addr,
        user = %tracker.user,
        resumed = node.resumed,
        "mounted"
    );
    let control_tasks = tasks.child();
    let source = Arc::new(crate::ui::snapshot::Source::new(
        engine.clone(),
        tracker.clone(),
        registry.clone(),
        meter,
        kernel_reads,
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
    control_tasks.token().cancel();
    node.stop().await;
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
            // The kernel checks every access against the modes shown: the
            // root is owner-only (fuse/attr.rs), so the kernel refuses
            // every other user (root aside) with EACCES at the mount's
            // root, whatever it has cached, before a call reaches here.
            fuser::MountOption::DefaultPermissions,
        ];
        // The mount holds this user's session: only this user, and root,
        // may enter it. With `allow_other` (root may enter), the daemon
        // also refuses calls from anyone else itself; `allow_other` needs
        // `user_allow_other` in /etc/fuse.conf when the daemon is not
        // root; without it, the kernel's default (this user alone) holds.
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
