//! The control channel between the command line and the running daemon: a
//! Unix socket in the home directory (owner-only, like the home itself)
//! carrying the same framed, bincode-encoded requests and replies as every
//! other FileShare connection.
//!
//! The daemon owns the engine, the piece store and the peer links, so any
//! command that shares or fetches bytes goes through it instead of opening
//! the store a second time.

pub mod server;

pub use crate::engine::download_status::{DownloadState, DownloadStatus};
use crate::home::Home;
use fileshare_protocol::connection::Connection;
use fileshare_protocol::messages::{Reply, Request, Role};
use fileshare_protocol::ProtocolError;
use serde::{Deserialize, Serialize};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How long a stopping daemon has to unmount and exit before `fsd logout`
/// gives up waiting for it.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A path on the wire, as raw bytes: Unix paths need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePath(pub Vec<u8>);

impl From<&Path> for WirePath {
    fn from(p: &Path) -> Self {
        WirePath(p.as_os_str().as_bytes().to_vec())
    }
}

impl WirePath {
    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(std::ffi::OsString::from_vec(self.0.clone()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Who is running: answers [`ControlReply::Status`].
    Status,
    /// Shares a file where it lies; `path` is absolute.
    UploadFile {
        path: WirePath,
        group: String,
    },
    /// Starts fetching a whole file into `dest` (absolute; a directory means
    /// `dest/name`). Answers the new download's first status.
    Download {
        group: String,
        name: String,
        dest: WirePath,
    },
    /// One download's status, by id.
    Progress {
        id: u64,
    },
    /// Every download of this daemon's life.
    Downloads,
    StopShare {
        group: String,
        name: String,
    },
    /// Everything `fsd status` shows: answers [`ControlReply::Overview`].
    Overview,
    /// Where the dashboard listens: answers [`ControlReply::Ui`].
    Ui,
    /// Stop serving, unmount and exit. The daemon answers
    /// [`ControlReply::Stopping`] and keeps the connection open until it
    /// exits, so the caller can wait for the end of the stream.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlReply {
    Status {
        pid: u32,
        user: String,
        mountpoint: WirePath,
    },
    Shared {
        group: String,
        name: String,
        size: u64,
        pieces: u32,
    },
    Download(DownloadStatus),
    Downloads(Vec<DownloadStatus>),
    Done,
    Stopping {
        pid: u32,
    },
    Overview(Box<crate::ui::snapshot::Snapshot>),
    /// `http://ip:port/`, or none when the daemon runs with `--ui off`.
    Ui {
        addr: Option<String>,
    },
    /// The request failed; the text is the one line to show the user.
    Error(String),
}

/// Causes are in the messages, never also a `source`, so an error chain
/// (`{e:#}`) names each once.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the daemon is not running; start it with `fsd mount`")]
    NotRunning,
    #[error("cannot reach the daemon at {path}: {error}")]
    Connect { path: String, error: std::io::Error },
    #[error("lost the daemon: {0}")]
    Protocol(ProtocolError),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("the daemon sent an unexpected reply")]
    Unexpected,
    /// The daemon refused or failed the request; already a full sentence.
    #[error("{0}")]
    Daemon(String),
}

impl From<ProtocolError> for ControlError {
    fn from(e: ProtocolError) -> Self {
        ControlError::Protocol(e)
    }
}

/// One connection to the running daemon.
pub struct ControlClient {
    conn: Connection<OwnedReadHalf, OwnedWriteHalf>,
    next_id: u64,
}

impl ControlClient {
    /// Connects to the daemon of `home`; [`ControlError::NotRunning`] when
    /// there is none (no socket, or one left by a daemon that died).
    pub async fn connect(home: &Home) -> Result<ControlClient, ControlError> {
        Self::connect_path(&home.control_socket()).await
    }

    pub async fn connect_path(path: &Path) -> Result<ControlClient, ControlError> {
        let stream = match UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::NotRunning)
            }
            Err(error) => {
                return Err(ControlError::Connect {
                    path: path.display().to_string(),
                    error,
                })
            }
        };
        let (r, w) = stream.into_split();
        let mut conn = Connection::new(r, w);
        conn.handshake(Role::Client).await?;
        Ok(ControlClient { conn, next_id: 1 })
    }

    /// Sends one request and returns its reply; a daemon-side failure is
    /// [`ControlError::Daemon`].
    pub async fn call(&mut self, body: ControlRequest) -> Result<ControlReply, ControlError> {
        let id = self.next_id;
        self.next_id += 1;
        self.conn.write_frame(&Request { id, body }).await?;
        let reply: Reply<ControlReply> =
            self.conn.read_frame().await?.ok_or(ControlError::Closed)?;
        if reply.id != id {
            return Err(ControlError::Unexpected);
        }
        match reply.body {
            ControlReply::Error(msg) => Err(ControlError::Daemon(msg)),
            other => Ok(other),
        }
    }

    /// Waits until the daemon closes the connection (it exits).
    pub async fn closed(&mut self) {
        while let Ok(Some(_)) = self.conn.read_frame::<Reply<ControlReply>>().await {}
    }

    pub async fn download_status(&mut self, id: u64) -> Result<DownloadStatus, ControlError> {
        match self.call(ControlRequest::Progress { id }).await? {
            ControlReply::Download(s) => Ok(s),
            _ => Err(ControlError::Unexpected),
        }
    }
}

/// Asks the daemon of `home`, if one runs, to stop sharing, unmount and
/// exit, and waits until it has. Returns whether a daemon was running.
pub async fn stop_daemon_if_running(home: &Home) -> anyhow::Result<bool> {
    let mut client = match ControlClient::connect(home).await {
        Ok(c) => c,
        Err(ControlError::NotRunning) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let pid = match client.call(ControlRequest::Shutdown).await? {
        ControlReply::Stopping { pid } => pid,
        _ => return Err(ControlError::Unexpected.into()),
    };
    let stopped = async {
        client.closed().await;
        // Closing the socket is the daemon's last act but one: wait for
        // the process itself, so that when this returns it is gone.
        while running(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(STOP_TIMEOUT, stopped).await.is_err() {
        anyhow::bail!(
            "the daemon (pid {pid}) did not stop within {} s",
            STOP_TIMEOUT.as_secs()
        );
    }
    Ok(true)
}

/// Whether process `pid` still runs (a zombie has ended).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fileshare_protocol::codec;

    fn status(state: DownloadState) -> DownloadStatus {
        DownloadStatus::sample(state)
    }

    #[test]
    fn every_message_round_trips() {
        let reqs = [
            ControlRequest::Status,
            ControlRequest::UploadFile {
                path: WirePath(b"/x/\xff name".to_vec()),
                group: "g1".into(),
            },
            ControlRequest::Download {
                group: "g1".into(),
                name: "a.iso".into(),
                dest: WirePath::from(Path::new("/tmp")),
            },
            ControlRequest::Progress { id: 9 },
            ControlRequest::Downloads,
            ControlRequest::StopShare {
                group: "g1".into(),
                name: "a.iso".into(),
            },
            ControlRequest::Overview,
            ControlRequest::Ui,
            ControlRequest::Shutdown,
        ];
        for r in reqs {
            let body = Request { id: 5, body: r };
            let back: Request<ControlRequest> =
                codec::decode(&codec::encode(&body).unwrap()).unwrap();
            assert_eq!(back, body);
        }
        let replies = [
            ControlReply::Status {
                pid: 1,
                user: "alice".into(),
                mountpoint: WirePath::from(Path::new("/mnt/fileshare")),
            },
            ControlReply::Shared {
                group: "g".into(),
                name: "n".into(),
                size: 1,
                pieces: 1,
            },
            ControlReply::Download(status(DownloadState::Failed("disk full".into()))),
            ControlReply::Downloads(vec![
                status(DownloadState::Fetching),
                status(DownloadState::Complete { millis: 10 }),
            ]),
            ControlReply::Done,
            ControlReply::Stopping { pid: 7 },
            ControlReply::Overview(Box::default()),
            ControlReply::Ui {
                addr: Some("http://127.0.0.1:1/".into()),
            },
            ControlReply::Error("no".into()),
        ];
        for r in replies {
            let body = Reply { id: 5, body: r };
            let back: Reply<ControlReply> = codec::decode(&codec::encode(&body).unwrap()).unwrap();
            assert_eq!(back, body);
        }
    }

    #[test]
    fn non_utf8_paths_survive_the_wire() {
        let p = PathBuf::from(std::ffi::OsString::from_vec(b"/tmp/\xfe\xff".to_vec()));
        assert_eq!(WirePath::from(p.as_path()).to_path(), p);
    }

    #[tokio::test]
    async fn no_socket_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = ControlClient::connect_path(&dir.path().join("control.sock"))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ControlError::NotRunning), "{err}");
        assert_eq!(
            err.to_string(),
            "the daemon is not running; start it with `fsd mount`"
        );
        // A socket file nobody listens on (a daemon that crashed).
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = ControlClient::connect_path(&path).await.err().unwrap();
        assert!(matches!(err, ControlError::NotRunning), "{err}");
    }
}
