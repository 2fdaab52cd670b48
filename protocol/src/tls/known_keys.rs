//! Tracker keys remembered on first use, like ssh's `known_hosts`.
//!
//! A tracker whose line in the trackers file carries no fingerprint is
//! trusted the first time it is reached; its key is written here as
//! `host:port sha256:HEX`, and from then on only that key is accepted. A
//! user whose tracker really got a new key removes the line.
//!
//! Updates hold an exclusive lock on the file, so a daemon and a command
//! reaching a new tracker at the same moment cannot remember two keys.

use crate::identity::Fingerprint;
use crate::messages::Role;
use crate::tls::{self, ClientTls, Pin, SecureConnection, TlsError};
use crate::trackers_file::TrackerEntry;
use crate::Identity;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What [`check_or_remember`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The key is the one remembered (or pinned) for this address.
    Known,
    /// Nothing was remembered for this address; now this key is.
    FirstSeen,
}

#[derive(Debug, thiserror::Error)]
pub enum KnownKeysError {
    #[error(
        "tracker {addr} presented key {seen} but {remembered} is remembered for it \
         in {} (line {line}); if the tracker's key really changed, remove that line",
        path.display()
    )]
    Mismatch {
        addr: String,
        seen: Fingerprint,
        remembered: Fingerprint,
        path: PathBuf,
        line: usize,
    },
    #[error("tracker {addr} presented key {seen} but the trackers file requires {pinned}")]
    Pinned {
        addr: String,
        seen: Fingerprint,
        pinned: Fingerprint,
    },
    #[error(
        "known keys file {}, line {line}: {text:?} is not `host:port sha256:HEX`",
        path.display()
    )]
    BadLine {
        path: PathBuf,
        line: usize,
        text: String,
    },
    /// A connection that claims to be a tracker whose key is neither
    /// pinned nor learned yet: a tracker learns another's key only by
    /// dialling it, never from a connection that dials in.
    #[error(
        "tracker {addr}'s key is not known yet: it is learned by dialling {addr} (or pinned in \
         the trackers file), not from a connection that dials in"
    )]
    NotLearned { addr: String },
    #[error("cannot {what} known keys file {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

const HEADER: &str = "# Tracker keys remembered on first use (host:port sha256:HEX).\n\
                      # If a tracker's key really changed, remove its line.\n";

/// The key remembered for `addr`, if any, with its 1-based line.
pub fn lookup(path: &Path, addr: &str) -> Result<Option<(Fingerprint, usize)>, KnownKeysError> {
    match fs::read_to_string(path) {
        Ok(text) => find(&text, path, addr),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KnownKeysError::Io {
            what: "read",
            path: path.into(),
            source,
        }),
    }
}

/// Checks `seen` against the key remembered for `addr` in the file at
/// `path`, remembering it if there is none. The file and its directory
/// are created (0600 / 0700) as needed, and a new line is synced before
/// this returns, so a key once accepted is never silently forgotten.
pub fn check_or_remember(
    path: &Path,
    addr: &str,
    seen: Fingerprint,
) -> Result<Seen, KnownKeysError> {
    let io_err = |what| {
        move |source| KnownKeysError::Io {
            what,
            path: path.into(),
            source,
        }
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create the directory of"))?;
    }
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("open"))?;
    if !existed {
        if let Some(dir) = dir {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("create"))?;
        }
    }
    // Released when the file is closed.
    file.lock().map_err(io_err("lock"))?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io_err("read"))?;
    match find(&text, path, addr)? {
        Some((remembered, _)) if remembered == seen => return Ok(Seen::Known),
        Some((remembered, line)) => {
            return Err(KnownKeysError::Mismatch {
                addr: addr.into(),
                seen,
                remembered,
                path: path.into(),
                line,
            })
        }
        None => {}
    }
    let mut add = String::new();
    if text.is_empty() {
        add.push_str(HEADER);
    } else if !text.ends_with('\n') {
        add.push('\n');
    }
    add.push_str(&format!("{addr} {seen}\n"));
    file.write_all(add.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err("update"))?;
    Ok(Seen::FirstSeen)
}

fn find(
    text: &str,
    path: &Path,
    addr: &str,
) -> Result<Option<(Fingerprint, usize)>, KnownKeysError> {
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let mut fields = entry.split_whitespace();
        let (Some(a), Some(fp), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad_line(path, i, entry));
        };
        let fp: Fingerprint = fp.parse().map_err(|_| bad_line(path, i, entry))?;
        if a == addr {
            return Ok(Some((fp, i + 1)));
        }
    }
    Ok(None)
}

fn bad_line(path: &Path, i: usize, text: &str) -> KnownKeysError {
    KnownKeysError::BadLine {
        path: path.into(),
        line: i + 1,
        text: text.into(),
    }
}

/// How one tracker's key is trusted: pinned by the trackers file, or else
/// remembered on first use in the known keys file.
#[derive(Debug, Clone)]
pub struct TrackerTrust {
    addr: String,
    pinned: Option<Fingerprint>,
    known_keys: PathBuf,
}

impl TrackerTrust {
    pub fn new(entry: &TrackerEntry, known_keys: &Path) -> Self {
        TrackerTrust {
            addr: entry.addr.clone(),
            pinned: entry.fingerprint,
            known_keys: known_keys.into(),
        }
    }

    /// The tracker's address, as the trackers file gives it.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The pin to connect with: the trackers file's fingerprint, or any key
    /// (then [`TrackerTrust::check`] holds it to the remembered one).
    pub fn pin(&self) -> Pin {
        self.pinned.map_or(Pin::FirstUse, Pin::Exact)
    }

    /// Judges the key the tracker presented, after the handshake: it must
    /// be the pinned one, or the remembered one, or is remembered now. Also
    /// for a tracker accepting another tracker, which learns the client's
    /// key only after the handshake.
    pub fn check(&self, seen: Fingerprint) -> Result<Seen, KnownKeysError> {
        match self.pinned {
            Some(pinned) if pinned == seen => Ok(Seen::Known),
            Some(pinned) => Err(KnownKeysError::Pinned {
                addr: self.addr.clone(),
                seen,
                pinned,
            }),
            None => check_or_remember(&self.known_keys, &self.addr, seen),
        }
    }
}

impl TrackerTrust {
    /// Judges the key of a connection that dialled in claiming to be this
    /// tracker: it must be the pinned key, or the one already remembered
    /// (learned when this side dialled the tracker's address). It is never
    /// remembered from here: anyone who reaches the port could claim to
    /// be a tracker whose key is not known yet.
    pub fn check_incoming(&self, seen: Fingerprint) -> Result<(), KnownKeysError> {
        if self.pinned.is_some() {
            return self.check(seen).map(|_| ());
        }
        match lookup(&self.known_keys, &self.addr)? {
            Some((known, _)) if known == seen => Ok(()),
            Some((remembered, line)) => Err(KnownKeysError::Mismatch {
                addr: self.addr.clone(),
                seen,
                remembered,
                path: self.known_keys.clone(),
                line,
            }),
            None => Err(KnownKeysError::NotLearned {
                addr: self.addr.clone(),
            }),
        }
    }

    /// Whether the trackers file pins this tracker's key.
    pub fn is_pinned(&self) -> bool {
        self.pinned.is_some()
    }
}

/// Connects to a tracker with the trust its entry calls for: pinned or
/// first-use, presenting `identity` if given, and refusing a key that
/// differs from the remembered one. The known keys file is read and
/// written in place (a few hundred bytes, under a lock held for a moment).
pub async fn connect_tracker(
    entry: &TrackerEntry,
    known_keys: &Path,
    identity: Option<&Identity>,
    me: Role,
    timeout: Duration,
) -> Result<(SecureConnection, Role, Fingerprint), TlsError> {
    let trust = TrackerTrust::new(entry, known_keys);
    let client = ClientTls::new(identity, trust.pin())?;
    let (conn, theirs, seen) = tls::connect(&entry.addr, &client, me, timeout).await?;
    trust.check(seen)?;
    Ok((conn, theirs, seen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_key_that_dials_in_is_never_learned() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("known_keys");
        let entry = TrackerEntry {
            addr: "h:1".into(),
            fingerprint: None,
        };
        let trust = TrackerTrust::new(&entry, &path);
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert!(matches!(
            trust.check_incoming(a),
            Err(KnownKeysError::NotLearned { .. })
        ));
        assert!(lookup(&path, "h:1").unwrap().is_none(), "nothing learned");
        // Learned by dialling it: from then on required of incoming ones.
        trust.check(a).unwrap();
        trust.check_incoming(a).unwrap();
        assert!(matches!(
            trust.check_incoming(b),
            Err(KnownKeysError::Mismatch { .. })
        ));
    }

    #[test]
    fn first_use_is_remembered_and_a_changed_key_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub").join("known_keys");
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert_eq!(check_or_remember(&path, "h:1", a).unwrap(), Seen::FirstSeen);
        assert_eq!(check_or_remember(&path, "h:1", a).unwrap(), Seen::Known);
        assert_eq!(check_or_remember(&path, "h:2", b).unwrap(), Seen::FirstSeen);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let err = check_or_remember(&path, "h:1", b).unwrap_err();
        let text = err.to_string();
        for part in [
            &a.to_string(),
            &b.to_string(),
            "h:1",
            "known_keys",
            "line 3",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        assert_eq!(lookup(&path, "h:2").unwrap(), Some((b, 4)));
        assert_eq!(lookup(&path, "h:3").unwrap(), None);
        assert_eq!(lookup(&tmp.path().join("none"), "h:1").unwrap(), None);
    }

    #[test]
    fn hand_edited_file_is_read_and_bad_lines_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("known_keys");
        let a = Fingerprint([3; 32]);
        fs::write(&path, format!("# mine\n\nh:1 {a}  # note")).unwrap();
        assert_eq!(check_or_remember(&path, "h:1", a).unwrap(), Seen::Known);
        let b = Fingerprint([4; 32]);
        assert_eq!(check_or_remember(&path, "h:2", b).unwrap(), Seen::FirstSeen);
        assert_eq!(lookup(&path, "h:2").unwrap(), Some((b, 4)));
        fs::write(&path, "h:1 sha256:nothex\n").unwrap();
        let err = check_or_remember(&path, "h:1", a).unwrap_err();
        assert!(
            matches!(err, KnownKeysError::BadLine { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn pinned_entry_never_touches_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("known_keys");
        let (a, b) = (Fingerprint([5; 32]), Fingerprint([6; 32]));
        let pinned = TrackerTrust::new(
            &TrackerEntry {
                addr: "h:1".into(),
                fingerprint: Some(a),
            },
            &path,
        );
        assert_eq!(pinned.pin(), Pin::Exact(a));
        assert_eq!(pinned.check(a).unwrap(), Seen::Known);
        let err = pinned.check(b).unwrap_err().to_string();
        assert!(
            err.contains(&a.to_string()) && err.contains(&b.to_string()),
            "{err}"
        );
        assert!(!path.exists());
        let open = TrackerTrust::new(
            &TrackerEntry {
                addr: "h:1".into(),
                fingerprint: None,
            },
            &path,
        );
        assert_eq!(open.pin(), Pin::FirstUse);
        assert_eq!(open.check(b).unwrap(), Seen::FirstSeen);
        assert!(open.check(a).is_err());
    }
}
