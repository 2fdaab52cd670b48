//! Who an endpoint is: a long-lived key and self-signed certificate, named
//! by the SHA-256 of the certificate (as Syncthing does).
//!
//! There is no certificate authority: keys are pinned by fingerprint (in the
//! trackers file, or remembered on first use), so a self-signed certificate
//! is all that is needed to carry the public key through the TLS handshake.

use crate::ids::{hex, unhex, PeerId};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// The SHA-256 of an endpoint's certificate (DER): what users pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

const PREFIX: &str = "sha256:";

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_cert(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The peer id this key speaks for: the first 16 bytes of the
    /// fingerprint. 128 bits are enough: an accidental collision needs about
    /// 2^64 keys, and forging another peer's id means a second preimage of
    /// truncated SHA-256 (about 2^128 work). The id only names the peer in
    /// listings; the connection itself is pinned by the whole fingerprint
    /// or checked against the id (see `tls::Pin`).
    pub fn peer_id(&self) -> PeerId {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.0[..16]);
        PeerId(id)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", hex(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Text that is not `sha256:` followed by 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a key fingerprint: expected sha256: followed by 64 hex digits")]
pub struct BadFingerprint {
    pub text: String,
}

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    /// Accepts upper- or lower-case hex, as people copy it from anywhere.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFingerprint { text: s.into() };
        let digits = s.strip_prefix(PREFIX).ok_or_else(bad)?;
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let bytes = unhex(&digits.to_ascii_lowercase()).ok_or_else(bad)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Fingerprint(arr))
    }
}

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "private key {path} is accessible to other users (mode {mode:03o}); \
         run `chmod 600 {path}` if nobody else could have read it, or remove it \
         and its certificate to make a new identity"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "certificate {cert} exists but its key {key} is missing; remove the \
         certificate to create a new identity (its fingerprint will change)"
    )]
    MissingKey { cert: PathBuf, key: PathBuf },
    #[error("key {key} does not belong to certificate {cert}, or one of them is damaged")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("key {path} is damaged")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot generate a key and certificate")]
    Generate(#[source] rcgen::Error),
}

/// A certificate, its private key and its fingerprint.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

/// Never prints the key.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.fingerprint)
    }
}

/// The name every certificate carries. Hostnames mean nothing here: keys
/// are pinned, so the certificate never has to match an address.
pub(crate) const CERT_NAME: &str = "fileshare";

impl Identity {
    /// A fresh in-memory identity (Ed25519 key, self-signed certificate).
    pub fn generate() -> Result<Self, IdentityError> {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(IdentityError::Generate)?;
        let cert = self_signed(&key)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Self::from_parts(cert, key))
    }

    fn from_parts(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Self {
        Identity {
            fingerprint: Fingerprint::of_cert(&cert),
            cert,
            key,
        }
    }

    /// The identity kept in `dir` as `STEM.key.der` and `STEM.cert.der`,
    /// created on first use.
    ///
    /// Both files are written mode 0600 to a temporary name, synced, and
    /// then hard-linked into place: a link never replaces an existing file,
    /// so two processes creating the identity at once agree on one key (the
    /// loser loads the winner's), and a crash never leaves half a file. The
    /// key goes in first and the certificate last, so a certificate on disk
    /// means the pair is complete; a key left alone by a crash is reused.
    ///
    /// A key file that group or others can access is refused, as ssh does:
    /// the fingerprint stands for whoever holds the key.
    pub fn load_or_create(dir: &Path, stem: &str) -> Result<Self, IdentityError> {
        let key_path = dir.join(format!("{stem}.key.der"));
        let cert_path = dir.join(format!("{stem}.cert.der"));
        if !cert_path.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("create directory", dir))?;
            if !key_path.exists() {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(IdentityError::Generate)?;
                publish(dir, &key_path, &key.serialize_der())?;
            }
            let key =
                rcgen::KeyPair::try_from(read_key(&key_path)?.as_slice()).map_err(|source| {
                    IdentityError::BadKey {
                        path: key_path.clone(),
                        source,
                    }
                })?;
            publish(dir, &cert_path, self_signed(&key)?.as_ref())?;
        }
        let cert = read_file(&cert_path)?;
        let key = match read_key(&key_path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(IdentityError::MissingKey {
                    cert: cert_path,
                    key: key_path,
                });
            }
            other => other?,
        };
        let identity = Self::from_parts(
            CertificateDer::from(cert),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        );
        rustls::sign::CertifiedKey::from_der(
            vec![identity.cert.clone()],
            identity.key.clone_key(),
            &crate::tls::provider(),
        )
        .map_err(|source| IdentityError::Mismatch {
            cert: cert_path,
            key: key_path,
            source,
        })?;
        Ok(identity)
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Shorthand for `fingerprint().peer_id()`.
    pub fn peer_id(&self) -> PeerId {
        self.fingerprint.peer_id()
    }

    /// The certificate (DER), which is public.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn self_signed(key: &rcgen::KeyPair) -> Result<CertificateDer<'static>, IdentityError> {
    let params = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()])
        .map_err(IdentityError::Generate)?;
    let cert = params.self_signed(key).map_err(IdentityError::Generate)?;
    Ok(cert.der().clone())
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(io_err("read", path))
}

/// Reads a private key, refusing it if group or others may access it. The
/// mode is taken from the open file, so it is the file that was read.
fn read_key(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let mut f = File::open(path).map_err(io_err("read", path))?;
    let mode = f.metadata().map_err(io_err("read", path))?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(io_err("read", path))?;
    Ok(out)
}

/// Puts `bytes` at `path` unless something is already there, never showing
/// a partial or world-readable file: see [`Identity::load_or_create`].
fn publish(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("identity");
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            // Another process got there first: theirs stands.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    written.map_err(io_err("write", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn fingerprint_text_round_trips_and_names_bad_input() {
        let fp = Fingerprint::of_cert(b"certificate");
        let text = fp.to_string();
        assert!(
            text.starts_with("sha256:") && text.len() == 7 + 64,
            "{text}"
        );
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            text.to_uppercase()
                .replace("SHA256:", "sha256:")
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        for bad in [
            "",
            "sha256:",
            &text[7..],
            &text[..70],
            "md5:00",
            &format!("{text}0"),
        ] {
            let err = bad.parse::<Fingerprint>().unwrap_err().to_string();
            assert!(err.contains("64 hex digits"), "{err}");
        }
        let non_hex = format!("sha256:{}", "zz".repeat(32));
        assert!(non_hex.parse::<Fingerprint>().is_err());
    }

    #[test]
    fn peer_id_is_the_fingerprint_prefix() {
        let fp = Fingerprint([7; 32]);
        assert_eq!(fp.peer_id().0, [7; 16]);
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn created_once_private_and_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("home");
        let a = Identity::load_or_create(&dir, "peer").unwrap();
        assert_eq!(listing(&dir), ["peer.cert.der", "peer.key.der"]);
        for name in listing(&dir) {
            let mode = fs::metadata(dir.join(&name)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let b = Identity::load_or_create(&dir, "peer").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), Fingerprint::of_cert(b.cert()));
        assert_eq!(listing(&dir), ["peer.cert.der", "peer.key.der"]);
    }

    #[test]
    fn exposed_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        Identity::load_or_create(tmp.path(), "t").unwrap();
        let key = tmp.path().join("t.key.der");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let err = Identity::load_or_create(tmp.path(), "t").unwrap_err();
        assert!(
            matches!(err, IdentityError::Exposed { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn key_left_alone_by_a_crash_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(tmp.path(), "t").unwrap();
        fs::remove_file(tmp.path().join("t.cert.der")).unwrap();
        let again = Identity::load_or_create(tmp.path(), "t").unwrap();
        // Same key, new certificate: the key still signs for it.
        assert_eq!(first.key.secret_der(), again.key.secret_der());
    }

    #[test]
    fn missing_key_and_wrong_key_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        Identity::load_or_create(tmp.path(), "a").unwrap();
        Identity::load_or_create(tmp.path(), "b").unwrap();
        fs::rename(tmp.path().join("b.key.der"), tmp.path().join("a.key.der")).unwrap();
        let err = Identity::load_or_create(tmp.path(), "a").unwrap_err();
        assert!(matches!(err, IdentityError::Mismatch { .. }), "{err}");
        let err = Identity::load_or_create(tmp.path(), "b").unwrap_err();
        assert!(matches!(err, IdentityError::MissingKey { .. }), "{err}");
    }

    #[test]
    fn concurrent_creation_agrees_on_one_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || Identity::load_or_create(&dir, "x").unwrap())
            })
            .collect();
        let fps: Vec<Fingerprint> = handles
            .into_iter()
            .map(|h| h.join().unwrap().fingerprint())
            .collect();
        assert!(fps.iter().all(|f| *f == fps[0]), "{fps:?}");
        assert_eq!(listing(&dir), ["x.cert.der", "x.key.der"]);
    }
}
