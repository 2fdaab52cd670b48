//! TLS 1.3 on every connection, with keys pinned instead of certified.
//!
//! Nobody signs FileShare certificates: an endpoint is whoever holds the key
//! whose certificate hashes to the expected [`Fingerprint`]. So the
//! verifiers here accept any certificate at the X.509 level but always check
//! the handshake signature (proof that the other end holds the key), and the
//! client refuses a server whose fingerprint does not match its [`Pin`].
//!
//! Only TLS 1.3 is offered or accepted, and only with the ring provider,
//! built here rather than taken from a process-wide default. Session
//! resumption is off: a resumed session skips the certificate check, and
//! every FileShare server answers to the same name.

pub mod identity;
pub mod known_keys;

use crate::connection::{Connection, HANDSHAKE_TIMEOUT};
use crate::error::ProtocolError;
use crate::identity::{Fingerprint, Identity, CERT_NAME};
use crate::ids::PeerId;
use crate::messages::Role;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How many encrypted bytes TLS may hold for the socket (rustls's default
/// is 64 KiB): a whole piece's records, so a piece is encrypted in one
/// call and handed to the kernel in as few `writev` as the socket takes,
/// not one per 64 KiB.
pub const SEND_BUF: usize = 1 << 20;

/// The one stream type of the product: TLS over TCP, either side.
pub type SecureStream = tokio_rustls::TlsStream<BufferedTcp>;

/// TCP under TLS, read through a buffer of [`TCP_READ_BUF`]: rustls asks
/// the socket for at most one record (16 KiB) per call, so without it a
/// 512 KiB piece costs over 30 `recv` calls, each a wake-up of its own.
pub type BufferedTcp = tokio::io::BufReader<TcpStream>;

/// The buffer of [`BufferedTcp`]: a few records per `recv`.
pub const TCP_READ_BUF: usize = 64 * 1024;

fn buffered(tcp: TcpStream) -> BufferedTcp {
    tokio::io::BufReader::with_capacity(TCP_READ_BUF, tcp)
}

/// A framed connection over [`SecureStream`].
pub type SecureConnection = Connection<ReadHalf<SecureStream>, WriteHalf<SecureStream>>;

/// The server name every client asks for. Keys are pinned, so the name
/// proves nothing and hostnames never have to match.
pub const SERVER_NAME: &str = CERT_NAME;

/// The crypto provider of every FileShare TLS config: ring, explicitly, so
/// no process-wide default (or aws-lc-rs) is ever involved. AES-128-GCM
/// comes first: every byte of a piece is encrypted once by its sender and
/// decrypted once by its reader, and AES-128 takes 10 rounds per block
/// where AES-256 (ring's first choice) takes 14.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut ring = rustls::crypto::ring::default_provider();
            // A stable sort: the other suites keep ring's order.
            ring.cipher_suites
                .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
            Arc::new(ring)
        })
        .clone()
}

/// Why a secure connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} presented key {seen}, but it is pinned to key {expected}")]
    KeyMismatch {
        addr: String,
        expected: Fingerprint,
        seen: Fingerprint,
    },
    #[error(
        "{addr} presented key {seen}, which belongs to peer {}, not to peer {expected}",
        seen.peer_id()
    )]
    PeerMismatch {
        addr: String,
        expected: PeerId,
        seen: Fingerprint,
    },
    #[error("{addr} presented no certificate")]
    NoCertificate { addr: String },
    #[error("timed out after {ms} ms setting up a secure connection with {addr}")]
    Timeout { addr: String, ms: u64 },
    #[error("FileShare handshake with {addr} failed")]
    Protocol {
        addr: String,
        #[source]
        source: ProtocolError,
    },
    #[error(transparent)]
    Trust(#[from] crate::known_keys::KnownKeysError),
    #[error("invalid TLS configuration")]
    Config(#[source] rustls::Error),
}

/// Whether a server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Refuse clients without one (a daemon's peer server: it serves
    /// pieces only to peers it can name).
    Required,
    /// Ask, but let clients without one in (a tracker: the CLI may have no
    /// identity; other trackers always present theirs).
    Optional,
}

/// What a client requires of the server's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// The certificate must hash to this fingerprint.
    Exact(Fingerprint),
    /// The fingerprint must start with this peer id, which a peer's
    /// [`Fingerprint::peer_id`] is: lets a daemon pin peers named by a
    /// tracker listing.
    Peer(PeerId),
    /// Any key; the caller learns the fingerprint from [`connect`] and
    /// checks or records it (see [`crate::known_keys`]).
    FirstUse,
}

/// Carried inside rustls's error so [`connect`] can report both keys.
#[derive(Debug, thiserror::Error)]
#[error("server key {seen} does not match the pin {expected:?}")]
struct WrongKey {
    expected: Pin,
    seen: Fingerprint,
}

/// Server side of the TLS setup: this endpoint's identity and its policy
/// on client certificates. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    fingerprint: Fingerprint,
}

impl ServerTls {
    pub fn new(identity: &Identity, client_certs: ClientCerts) -> Result<Self, TlsError> {
        let verifier = Arc::new(AnyClientCert {
            mandatory: client_certs == ClientCerts::Required,
            algs: provider().signature_verification_algorithms,
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.cert().clone()], identity.key())
            .map_err(TlsError::Config)?;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint: identity.fingerprint(),
        })
    }

    /// This server's own fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// Client side of the TLS setup: the identity to present (if any) and the
/// pin the server must satisfy. Cheap to clone; make one per pin.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    pin: Pin,
}

impl ClientTls {
    pub fn new(identity: Option<&Identity>, pin: Pin) -> Result<Self, TlsError> {
        let verifier = Arc::new(PinnedServer {
            pin,
            algs: provider().signature_verification_algorithms,
        });
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match identity {
            Some(id) => builder
                .with_client_auth_cert(vec![id.cert().clone()], id.key())
                .map_err(TlsError::Config)?,
            None => builder.with_no_client_auth(),
        };
        config.resumption = Resumption::disabled();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            pin,
        })
    }

    pub fn pin(&self) -> Pin {
        self.pin
    }
}

/// Connects to `addr`, completes TLS (checking the server's key against the
/// pin) and then the FileShare handshake as `me`. Returns the other end's
/// role and its key. `timeout` bounds all three steps together, so a
/// listener that accepts and then stalls fails as fast as one that is down.
pub async fn connect(
    addr: &str,
    tls: &ClientTls,
    me: Role,
    timeout: Duration,
) -> Result<(SecureConnection, Role, Fingerprint), TlsError> {
    let work = async {
        let (stream, seen) = secure(addr, tls).await?;
        let (conn, theirs) = hello(stream, me, addr).await?;
        Ok((conn, theirs, seen))
    };
    within(timeout, addr, work).await
}

/// [`connect`] over a TCP stream opened some other way (by the server
/// dialling back, or through a relay): the TLS client is still this end,
/// and the server's key is still checked against the pin.
pub async fn connect_over(
    tcp: TcpStream,
    addr: &str,
    tls: &ClientTls,
    me: Role,
    timeout: Duration,
) -> Result<(SecureConnection, Role, Fingerprint), TlsError> {
    let work = async {
        let (stream, seen) = secure_tcp(tcp, addr, tls).await?;
        let (conn, theirs) = hello(stream, me, addr).await?;
        Ok((conn, theirs, seen))
    };
    within(timeout, addr, work).await
}

/// Connects and completes TLS only, within `timeout`: the bare stream,
/// before any FileShare handshake, and the server's key. For tests that
/// must put exact bytes (hostile ones included) inside the encryption.
pub async fn connect_stream(
    addr: &str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<(SecureStream, Fingerprint), TlsError> {
    within(timeout, addr, secure(addr, tls)).await
}

async fn within<T>(
    timeout: Duration,
    addr: &str,
    work: impl std::future::Future<Output = Result<T, TlsError>>,
) -> Result<T, TlsError> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TlsError::Timeout {
            addr: addr.into(),
            ms: crate::millis(timeout),
        })?
}

/// [`connect_stream`] over a TCP stream the caller connected (from a
/// source address of its choosing, in the limits' tests).
pub async fn secure_over(
    tcp: TcpStream,
    addr: &str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<(SecureStream, Fingerprint), TlsError> {
    within(timeout, addr, secure_tcp(tcp, addr, tls)).await
}

/// TCP connect and the TLS handshake, checking the server's key.
async fn secure(addr: &str, tls: &ClientTls) -> Result<(SecureStream, Fingerprint), TlsError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| TlsError::Connect {
            addr: addr.into(),
            source,
        })?;
    secure_tcp(tcp, addr, tls).await
}

/// The TLS handshake over a connected stream, checking the server's key.
async fn secure_tcp(
    tcp: TcpStream,
    addr: &str,
    tls: &ClientTls,
) -> Result<(SecureStream, Fingerprint), TlsError> {
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name");
    let mut stream = tls
        .connector
        .connect(name, buffered(tcp))
        .await
        .map_err(|e| handshake_error(addr, e))?;
    stream.get_mut().1.set_buffer_limit(Some(SEND_BUF));
    let seen = peer_fingerprint(stream.get_ref().1.peer_certificates())
        .ok_or_else(|| TlsError::NoCertificate { addr: addr.into() })?;
    Ok((SecureStream::Client(stream), seen))
}

/// Completes TLS and the FileShare handshake (as `me`) on an accepted TCP
/// stream, both within [`HANDSHAKE_TIMEOUT`]. Returns the client's role and
/// the fingerprint of its certificate, if it presented one (always, when
/// the server requires it).
pub async fn accept(
    stream: TcpStream,
    tls: &ServerTls,
    me: Role,
) -> Result<(SecureConnection, Role, Option<Fingerprint>), TlsError> {
    let addr = stream
        .peer_addr()
        .map_or_else(|_| "an unknown client".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let work = async {
        let mut stream = tls
            .acceptor
            .accept(buffered(stream))
            .await
            .map_err(|e| handshake_error(&addr, e))?;
        stream.get_mut().1.set_buffer_limit(Some(SEND_BUF));
        let seen = peer_fingerprint(stream.get_ref().1.peer_certificates());
        let (conn, theirs) = hello(SecureStream::Server(stream), me, &addr).await?;
        Ok((conn, theirs, seen))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .map_err(|_| TlsError::Timeout {
            addr: addr.clone(),
            ms: crate::millis(HANDSHAKE_TIMEOUT),
        })?
}

/// Wraps a finished TLS stream as a framed connection and exchanges Hellos.
async fn hello(
    stream: SecureStream,
    me: Role,
    addr: &str,
) -> Result<(SecureConnection, Role), TlsError> {
    let (r, w) = tokio::io::split(stream);
    let mut conn = Connection::new(r, w);
    match conn.handshake(me).await {
        Ok(theirs) => Ok((conn, theirs)),
        // In TLS 1.3 a client finishes before the server has judged its
        // certificate, so a refusal arrives as an alert during the Hello.
        Err(ProtocolError::Io(e)) if rustls_error(&e).is_some() => Err(handshake_error(addr, e)),
        Err(source) => Err(TlsError::Protocol {
            addr: addr.into(),
            source,
        }),
    }
}

fn peer_fingerprint(certs: Option<&[CertificateDer<'_>]>) -> Option<Fingerprint> {
    certs
        .and_then(|c| c.first())
        .map(|c| Fingerprint::of_cert(c))
}

fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Turns a pin failure back into a typed error naming both keys.
fn handshake_error(addr: &str, e: std::io::Error) -> TlsError {
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other)))) =
        rustls_error(&e)
    {
        if let Some(&WrongKey { expected, seen }) = other.downcast_ref::<WrongKey>() {
            let addr = addr.to_string();
            match expected {
                Pin::Exact(expected) => {
                    return TlsError::KeyMismatch {
                        addr,
                        expected,
                        seen,
                    }
                }
                Pin::Peer(expected) => {
                    return TlsError::PeerMismatch {
                        addr,
                        expected,
                        seen,
                    }
                }
                Pin::FirstUse => {}
            }
        }
    }
    TlsError::Handshake {
        addr: addr.into(),
        source: e,
    }
}

/// The client's check of the server: the pin, then the signature.
#[derive(Debug)]
struct PinnedServer {
    pin: Pin,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of_cert(end_entity);
        let ok = match self.pin {
            Pin::Exact(fp) => seen == fp,
            Pin::Peer(id) => seen.peer_id() == id,
            Pin::FirstUse => true,
        };
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(WrongKey {
                    expected: self.pin,
                    seen,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The server's check of a client: any certificate, as long as the client
/// proves it holds the key; the application decides what the fingerprint
/// may do.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
