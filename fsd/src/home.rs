//! The home directory: the saved session, this home's key (its identity on
//! every connection, from which its peer id derives), the tracker keys it
//! remembered, and where everything else in it lives. Files holding
//! secrets are owner-only.

use anyhow::{bail, Context};
use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::ids::{hex, unhex};
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::{trackers_file, Identity, PeerId};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one tracker has to answer before the client tries the next.
pub const TRACKER_TIMEOUT: Duration = Duration::from_secs(5);

/// A logged-in user, as saved by `fsd login`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub token: SessionToken,
    pub expires_unix_ms: u64,
}

/// Paths inside the home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
    trackers: PathBuf,
}

impl Home {
    /// The home named by `--home`, `FILESHARE_HOME` or the default, created
    /// owner-only if missing.
    pub fn resolve(home: Option<&Path>, trackers: Option<&Path>) -> anyhow::Result<Home> {
        let dir = match home {
            Some(d) => d.to_path_buf(),
            None => {
                let base = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .context("HOME is not set; pass --home DIR")?;
                base.join(".local/share/fileshare")
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create home directory {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve home directory {}", dir.display()))?;
        check_private_dir(&dir)?;
        let trackers = match trackers {
            Some(t) => t.to_path_buf(),
            None => remembered_trackers(&dir)?.unwrap_or_else(|| dir.join("trackers.txt")),
        };
        Ok(Home { dir, trackers })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn trackers_file(&self) -> &Path {
        &self.trackers
    }

    /// Where `fsd login` notes the trackers file it used, so later
    /// commands find the same trackers without `--trackers`.
    pub fn trackers_note(&self) -> PathBuf {
        self.dir.join("trackers.path")
    }

    /// Remembers this home's trackers file (as an absolute path) for later
    /// commands; the default file needs no note.
    pub fn remember_trackers(&self) -> anyhow::Result<()> {
        let abs = std::path::absolute(&self.trackers)
            .with_context(|| format!("bad path {}", self.trackers.display()))?;
        if abs == self.dir.join("trackers.txt") {
            return match std::fs::remove_file(self.trackers_note()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).context("cannot update the remembered trackers file")
                }
                _ => Ok(()),
            };
        }
        let mut text = abs.into_os_string().into_encoded_bytes();
        text.push(b'\n');
        write_private(&self.trackers_note(), &text)
    }

    /// The dashboard's access token, owner-only.
    pub fn ui_token_path(&self) -> PathBuf {
        self.dir.join("ui-token")
    }

    pub fn session_path(&self) -> PathBuf {
        self.dir.join("session")
    }

    /// Where verified pieces and file metadata are kept.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// The running daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The daemon's log when it runs detached.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("fsd.log")
    }

    /// The tracker keys remembered on first use (`host:port sha256:HEX`),
    /// for trackers the trackers file does not pin.
    pub fn known_keys(&self) -> PathBuf {
        self.dir.join("known_keys")
    }

    /// This home's key and certificate (`peer.key.der`, `peer.cert.der`),
    /// made at first use: what the daemon and the commands present on
    /// every connection.
    pub fn identity(&self) -> anyhow::Result<Identity> {
        Identity::load_or_create(&self.dir, "peer").context("cannot load this home's key")
    }

    /// A client for the trackers of the trackers file, presenting this
    /// home's key and pinning the trackers' keys.
    pub fn tracker_client(&self) -> anyhow::Result<TrackerClient> {
        let trackers = trackers_file::load_entries(&self.trackers)?;
        Ok(TrackerClient::new(
            trackers,
            self.known_keys(),
            Some(self.identity()?),
            TRACKER_TIMEOUT,
        ))
    }

    pub fn load_session(&self) -> anyhow::Result<Option<Session>> {
        let path = self.session_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut lines = text.lines();
        let (Some(user), Some(token), Some(expires)) = (lines.next(), lines.next(), lines.next())
        else {
            bail!(
                "session file {} is damaged; run `fsd login USER`",
                path.display()
            );
        };
        let token = unhex(token)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .with_context(|| format!("session file {} is damaged", path.display()))?;
        let expires_unix_ms = expires
            .parse()
            .with_context(|| format!("session file {} is damaged", path.display()))?;
        Ok(Some(Session {
            user: user.to_string(),
            token: SessionToken(token),
            expires_unix_ms,
        }))
    }

    /// The saved session, or an error telling the user to log in.
    pub fn session(&self) -> anyhow::Result<Session> {
        match self.load_session()? {
            Some(s) => Ok(s),
            None => bail!("not logged in; run `fsd login USER` first"),
        }
    }

    pub fn save_session(&self, s: &Session) -> anyhow::Result<()> {
        let text = format!("{}\n{}\n{}\n", s.user, hex(&s.token.0), s.expires_unix_ms);
        write_private(&self.session_path(), text.as_bytes())
    }

    pub fn clear_session(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.session_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("cannot remove the session file"),
        }
    }

    /// This home's peer id: derived from its key, so no other daemon can
    /// take it.
    pub fn peer_id(&self) -> anyhow::Result<PeerId> {
        Ok(self.identity()?.peer_id())
    }
}

/// The trackers file noted by the last `fsd login` in home `dir`, if any.
fn remembered_trackers(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let note = dir.join("trackers.path");
    match std::fs::read(&note) {
        Ok(mut bytes) => {
            while bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            if bytes.is_empty() {
                return Ok(None);
            }
            use std::os::unix::ffi::OsStringExt;
            Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(bytes))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", note.display())),
    }
}

/// Refuses a home that someone else could change: one owned by another
/// user, or writable by group or others (as the key file in it is refused
/// when others can read it). Whoever can write there could replace the
/// session, the key or the control socket.
fn check_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dir)
        .with_context(|| format!("cannot read home directory {}", dir.display()))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me {
        bail!(
            "home directory {} belongs to uid {}, not to you (uid {me}): use a home of your own",
            dir.display(),
            md.uid()
        );
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "home directory {} is writable by group or others (mode {mode:04o}): \
             `chmod go-w {}`, or better `chmod 700`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Writes `data` to `path` atomically, readable by the owner only.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn session_round_trip_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(&dir.path().join("h")), None).unwrap();
        assert!(home.load_session().unwrap().is_none());
        let s = Session {
            user: "alice".into(),
            token: SessionToken([7; 32]),
            expires_unix_ms: 42,
        };
        home.save_session(&s).unwrap();
        assert_eq!(home.load_session().unwrap(), Some(s));
        let mode = std::fs::metadata(home.session_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(home.peer_id().unwrap(), home.peer_id().unwrap());
        assert_eq!(home.peer_id().unwrap(), home.identity().unwrap().peer_id());
        home.clear_session().unwrap();
        assert!(home.session().is_err());
    }

    #[test]
    fn a_home_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("h");
        Home::resolve(Some(&h), None).unwrap();
        for mode in [0o777, 0o770, 0o702] {
            std::fs::set_permissions(&h, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = format!("{:#}", Home::resolve(Some(&h), None).unwrap_err());
            assert!(
                err.contains("writable by group or others"),
                "{mode:o}: {err}"
            );
        }
        // Readable by others is the user's choice: the secrets in it are
        // owner-only files.
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755)).unwrap();
        Home::resolve(Some(&h), None).unwrap();
    }

    #[test]
    fn the_trackers_file_of_login_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("h");
        let resolve = |trackers: Option<&Path>| Home::resolve(Some(&h), trackers);
        let given = dir.path().join("my-trackers.txt");
        let home = resolve(Some(&given)).unwrap();
        home.remember_trackers().unwrap();
        let later = resolve(None).unwrap();
        assert_eq!(later.trackers_file(), given.as_path());
        // `--trackers` still wins over the note.
        let other = dir.path().join("other.txt");
        let explicit = resolve(Some(&other)).unwrap();
        assert_eq!(explicit.trackers_file(), other.as_path());
        // Logging in with the default file forgets the note.
        let default = later.dir().join("trackers.txt");
        resolve(Some(&default))
            .unwrap()
            .remember_trackers()
            .unwrap();
        assert_eq!(resolve(None).unwrap().trackers_file(), default.as_path());
    }
}
