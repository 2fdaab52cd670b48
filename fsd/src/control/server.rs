//! The daemon's end of the control socket (see [`crate::control`]).
//!
//! The socket is bound before the mount, so a second daemon for the same
//! home fails before touching anything, and a socket left by a daemon that
//! crashed is replaced. It is owner-only and removed when the daemon exits,
//! together with the pid file that `systemd` (Type=forking) reads.
//!
//! The server only serves the socket: each request is one call into the
//! [`Engine`]. Its accept loop runs under the control node of the task tree
//! ([`crate::tasks`]), each connection under a child of it.

use crate::control::{ControlReply, ControlRequest, WirePath};
use crate::engine::Engine;
use crate::home::Home;
use crate::tasks::Tasks;
use crate::ui::snapshot::Source;
use fileshare_protocol::connection::Connection;
use fileshare_protocol::messages::{Reply, Request, Role};
use fileshare_protocol::ProtocolError;
use parking_lot::Mutex;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Control connections served at once.
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ControlServerError {
    #[error("a daemon is already running for {home} (its control socket {socket} answers)")]
    AlreadyRunning { home: String, socket: String },
    #[error("cannot create the control socket {path}: {error}")]
    Bind { path: String, error: std::io::Error },
}

/// The bound socket, and the files to remove when the daemon ends.
pub struct Control {
    listener: UnixListener,
    files: Files,
}

struct Files {
    socket: PathBuf,
    pid: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.pid);
    }
}

type ControlConnection = Connection<OwnedReadHalf, OwnedWriteHalf>;

/// Connections that asked the daemon to stop, held open until it is gone.
type Stopping = Arc<Mutex<Vec<ControlConnection>>>;

/// What every control connection works with.
struct Ctx {
    engine: Arc<Engine>,
    /// What `fsd status` shows, and where the dashboard listens.
    source: Arc<Source>,
    mountpoint: PathBuf,
    /// Cancelled by a `Shutdown` request; the daemon's main loop watches it.
    stop: CancellationToken,
    stopping: Stopping,
}

/// A running control server. Its tasks end with the token it was started
/// under; dropping it (last, once the daemon is done) removes the socket
/// and the pid file, then closes the connections that asked it to stop,
/// so their end of stream means the daemon is gone.
pub struct Running {
    /// Cancelled when a client asked the daemon to exit.
    pub stop: CancellationToken,
    files: Option<Files>,
    stopping: Stopping,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.files.take());
        self.stopping.lock().clear();
    }
}

fn pid_path(home: &Home) -> PathBuf {
    home.dir().join("fsd.pid")
}

impl Control {
    /// Binds the control socket of `home`, replacing a stale one.
    pub fn bind(home: &Home) -> Result<Control, ControlServerError> {
        let path = home.control_socket();
        let bind_err = |error| ControlServerError::Bind {
            path: path.display().to_string(),
            error,
        };
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(ControlServerError::AlreadyRunning {
                    home: home.dir().display().to_string(),
                    socket: path.display().to_string(),
                });
            }
            tracing::info!(socket = %path.display(), "replacing the control socket of a daemon that died");
            std::fs::remove_file(&path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        let files = Files {
            socket: path.clone(),
            pid: pid_path(home),
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        Ok(Control { listener, files })
    }

    /// Writes the pid file and serves control requests as tasks under
    /// `tasks`, until its token is cancelled.
    pub fn start(
        self,
        engine: Arc<Engine>,
        source: Arc<Source>,
        mountpoint: &Path,
        tasks: Tasks,
    ) -> Running {
        let Control { listener, files } = self;
        if let Err(e) =
            crate::home::write_private(&files.pid, format!("{}\n", std::process::id()).as_bytes())
        {
            tracing::warn!("cannot write the pid file: {e:#}");
        }
        let stop = CancellationToken::new();
        let stopping = Stopping::default();
        let ctx = Arc::new(Ctx {
            engine,
            source,
            mountpoint: mountpoint.to_path_buf(),
            stop: stop.clone(),
            stopping: stopping.clone(),
        });
        tasks.spawn("control-server", serve(listener, ctx, tasks.clone()));
        Running {
            stop,
            files: Some(files),
            stopping,
        }
    }
}

async fn serve(listener: UnixListener, ctx: Arc<Ctx>, tasks: Tasks) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                tasks.child().spawn("control-connection", async move {
                    if let Err(e) = handle(stream, &ctx).await {
                        tracing::debug!("control connection ended: {e:#}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Whether the connecting process runs as this daemon's user (or root).
/// The socket's mode already says so; this holds even if it were loosened.
fn same_user(stream: &UnixStream) -> bool {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .map(|c| c.uid() == me || c.uid() == 0)
        .unwrap_or(false)
}

async fn handle(stream: UnixStream, ctx: &Ctx) -> Result<(), ProtocolError> {
    if !same_user(&stream) {
        tracing::warn!("refused a control connection from another user");
        return Ok(());
    }
    let (r, w) = stream.into_split();
    let mut conn: ControlConnection = Connection::new(r, w);
    conn.handshake(Role::Client).await?;
    while let Some(req) = conn.read_frame::<Request<ControlRequest>>().await? {
        let stopping = matches!(req.body, ControlRequest::Shutdown);
        let body = dispatch(ctx, req.body).await;
        let written = conn.write_frame(&Reply { id: req.id, body }).await;
        if stopping {
            // Held open until the daemon is done (see `Running`): the
            // client's end of stream means it has unmounted and is gone.
            // The daemon is told once the reply is out, as stopping
            // cancels this task.
            if written.is_ok() {
                ctx.stopping.lock().push(conn);
            }
            ctx.stop.cancel();
            return written;
        }
        written?;
    }
    Ok(())
}

async fn dispatch(ctx: &Ctx, req: ControlRequest) -> ControlReply {
    let engine = &ctx.engine;
    match req {
        ControlRequest::Status => ControlReply::Status {
            pid: std::process::id(),
            user: engine.user().to_string(),
            mountpoint: WirePath::from(ctx.mountpoint.as_path()),
        },
        ControlRequest::UploadFile { path, group } => {
            let path = path.to_path();
            if !path.is_absolute() {
                return ControlReply::Error(format!("{} is not an absolute path", path.display()));
            }
            match engine.share_in_place(&group, &path).await {
                Ok(swarm) => {
                    let f = &swarm.file;
                    tracing::info!(group = %group, file = %f.meta.name, path = %path.display(), "shared in place");
                    ControlReply::Shared {
                        group,
                        name: f.meta.name.clone(),
                        size: f.layout.size(),
                        pieces: f.layout.num_pieces(),
                    }
                }
                Err(e) => ControlReply::Error(format!("cannot share {}: {e}", path.display())),
            }
        }
        ControlRequest::Download { group, name, dest } => {
            let dest = dest.to_path();
            if !dest.is_absolute() {
                return ControlReply::Error(format!("{} is not an absolute path", dest.display()));
            }
            match engine.start_download(&group, &name, &dest).await {
                Ok(s) => ControlReply::Download(s),
                Err(e) => ControlReply::Error(e.to_string()),
            }
        }
        ControlRequest::Progress { id } => match engine
            .download_progress(id, crate::engine::download_jobs::PROGRESS_HOLD)
            .await
        {
            Ok(s) => ControlReply::Download(s),
            Err(e) => ControlReply::Error(e.to_string()),
        },
        ControlRequest::Downloads => ControlReply::Downloads(engine.downloads()),
        ControlRequest::StopShare { group, name } => match engine.unshare(&group, &name).await {
            Ok(()) => {
                tracing::info!(group = %group, file = %name, "stopped sharing");
                ControlReply::Done
            }
            Err(e) => ControlReply::Error(e.to_string()),
        },
        ControlRequest::Overview => ControlReply::Overview(Box::new(ctx.source.snapshot().await)),
        ControlRequest::Ui => ControlReply::Ui {
            addr: ctx.source.ui_addr.get().cloned(),
        },
        ControlRequest::Shutdown => {
            tracing::info!("asked to stop");
            ControlReply::Stopping {
                pid: std::process::id(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(dir: &Path) -> Home {
        Home::resolve(Some(dir), None).unwrap()
    }

    #[tokio::test]
    async fn socket_is_owner_only_single_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let home = home(dir.path());
        let sock = home.control_socket();
        // A socket left by a daemon that died is replaced.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let control = Control::bind(&home).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live one is not.
        let err = Control::bind(&home).err().unwrap();
        assert!(
            matches!(err, ControlServerError::AlreadyRunning { .. }),
            "{err}"
        );
        drop(control);
        assert!(!sock.exists());
    }
}
