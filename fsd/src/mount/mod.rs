//! `fsd mount`: brings up the engine, the peer server, the FUSE mount and
//! the control socket, and takes them down again in order.
//!
//! [`detach`] is `--daemon`'s fork and readiness pipe.

pub mod detach;

use crate::cli::MountArgs;
use crate::engine::Engine;
use crate::home::Home;
use crate::net::fetch::LinkCtx;
use crate::net::serve::ServeCtx;
use crate::net::token_bucket::Throttle;
use crate::pieces::registry::Registry;
use crate::store::Store;
use crate::trackers::{now_ms, TrackerLink};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Mounts the swarm and serves until unmounted, Ctrl-C, SIGTERM or a
/// control request; with `--daemon`, returns once the mount is up.
pub fn run(home: &Home, args: &MountArgs) -> anyhow::Result<()> {
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
    clean_dead_mount(mountpoint);
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("cannot create mount point {}", mountpoint.display()))?;
    let client = home.tracker_client()?;
    let first_tracker = client.addrs().first().cloned().unwrap_or_default();
    let my_id = home.peer_id()?;
    let tracker = Arc::new(TrackerLink::new(
        client,
        session.token,
        session.user.clone(),
        my_id,
    ));

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = public_addr(listener.local_addr()?, &first_tracker);

    let shutdown = CancellationToken::new();
    let registry = Arc::new(Registry::default());
    let store = Store::open(&home.store_dir()).context("cannot open the piece store")?;
    let burst = fileshare_protocol::PIECE_LEN;
    let engine = Arc::new(Engine {
        store,
        tracker: tracker.clone(),
        registry: registry.clone(),
        link_ctx: Arc::new(LinkCtx {
            my_id,
            tracker: tracker.clone(),
            download: args.max_download_rate.map(|r| Throttle::new(r, burst)),
        }),
        read_timeout: Duration::from_secs(args.read_timeout.max(1)),
        shutdown: shutdown.clone(),
        announce_now: tokio::sync::Notify::new(),
    });
    let resumed = engine.load_store();

    let uploads = Arc::new(crate::net::upload_scheduler::Uploads::new(
        args.max_upload_rate,
        burst,
    ));
    let pacer = tokio::spawn({
        let (uploads, shutdown) = (uploads.clone(), shutdown.clone());
        async move { uploads.run(shutdown).await }
    });
    let serve_ctx = Arc::new(ServeCtx {
        my_id,
        tracker: tracker.clone(),
        registry,
        uploads,
        corrupt: args.corrupt_uploads,
        uploaded: AtomicU64::new(0),
        next_conn: AtomicU64::new(0),
    });
    let server = tokio::spawn(crate::net::serve::run(
        listener,
        serve_ctx,
        shutdown.clone(),
    ));
    // The ticket key and tickets for every group up front: the first
    // request of a peer and the first read of a file then cost no tracker
    // round trip for one.
    let prefetch = tracker.clone();
    tokio::spawn(async move {
        if let Err(e) = prefetch.ticket_key().await {
            tracing::debug!("no ticket key yet: {e:#}");
        }
        if let Ok(groups) = prefetch.member_groups().await {
            for g in groups {
                let _ = prefetch.ticket(&g).await;
            }
        }
    });
    let announcer = tokio::spawn(engine.clone().announce_loop(addr.clone()));

    let fs = crate::fuse::FileShareFs::new(engine.clone(), tokio::runtime::Handle::current());
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("fileshare".into()),
        fuser::MountOption::Subtype("fileshare".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoAtime,
    ];
    // The mount holds this user's session: only this user, and root, may
    // enter it; the kernel refuses everyone else with EACCES before a call
    // reaches the daemon. `allow_root` needs `user_allow_other` in
    // /etc/fuse.conf when the daemon is not root; without it, the kernel's
    // default (this user alone) still holds.
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root || fuse_conf_allows_other() {
        config.acl = fuser::SessionACL::RootAndOwner;
    }
    if root {
        // The kernel unmounts for us if the daemon dies, so a crash never
        // leaves a dead mount behind.
        config.mount_options.push(fuser::MountOption::AutoUnmount);
    }
    config.n_threads = Some(2);
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    raise_read_ahead(mountpoint);
    tracing::info!(
        mountpoint = %mountpoint.display(),
        peer = %addr,
        user = %session_user(&tracker),
        resumed,
        "mounted"
    );
    let control = control.start(engine.clone(), mountpoint, shutdown.clone());
    if let Some(ready) = ready {
        ready.mounted();
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; unmounting"); break; }
            _ = term.recv() => { tracing::info!("terminated; unmounting"); break; }
            () = control.stop.cancelled() => { tracing::info!("unmounting"); break; }
            _ = poll.tick() => {
                if session.guard.is_finished() {
                    tracing::info!("unmounted");
                    break;
                }
            }
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.leave()).await;
    let mp = mountpoint.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if !session.guard.is_finished() {
            unmount(&mp, session);
        }
    })
    .await;
    let _ = tokio::join!(server, announcer, pacer);
    control.join().await;
    Ok(())
}

/// Whether /etc/fuse.conf lets users other than root pass `allow_root`.
fn fuse_conf_allows_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|text| {
        text.lines()
            .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
    })
}

/// Unmounts a live mount and waits (boundedly) for its FUSE thread.
///
/// fuser's own unmount under `AutoUnmount` only closes the socket of the
/// `fusermount3` helper, which leaves a filesystem that still answers
/// mounted, so `umount_and_join` would wait forever: unmount first.
fn unmount(mountpoint: &Path, session: fuser::BackgroundSession) {
    let fusermount = |lazy: bool| {
        std::process::Command::new("fusermount3")
            .arg("-u")
            .args(lazy.then_some("-z"))
            .arg(mountpoint)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !fusermount(false) && !fusermount(true) {
        tracing::warn!(mountpoint = %mountpoint.display(), "cannot unmount");
    }
    let start = std::time::Instant::now();
    while !session.guard.is_finished() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if session.guard.is_finished() {
        let _ = session.umount_and_join();
    } else {
        // Still in use after a lazy unmount: exiting closes the FUSE
        // device, which ends the filesystem for its last users.
        std::mem::forget(session);
    }
}

fn session_user(t: &TrackerLink) -> &str {
    &t.user
}
