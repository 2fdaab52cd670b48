//! Secure connections over loopback: who learns which key, which pins are
//! refused, that only TLS 1.3 is spoken, and that nothing crosses the wire
//! in the clear.

use fileshare_protocol::connection::Connection;
use fileshare_protocol::known_keys::{self, KnownKeysError, Seen};
use fileshare_protocol::messages::Role;
use fileshare_protocol::tls::{
    self, ClientCerts, ClientTls, Pin, SecureConnection, ServerTls, TlsError,
};
use fileshare_protocol::trackers_file::TrackerEntry;
use fileshare_protocol::{Fingerprint, Identity, PeerId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_bytes::ByteBuf;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(5);
const SERVER_ROLE: Role = Role::Tracker { no: 1 };

type Accepted = Result<(SecureConnection, Role, Option<Fingerprint>), TlsError>;

fn identity() -> Identity {
    Identity::generate().unwrap()
}

/// What the server made of one connection: the client's key, or why it
/// refused.
type Outcome = Result<Option<Fingerprint>, String>;

/// Accepts one connection per config, in order, each with its config;
/// echoes every frame of a successful connection back.
async fn serve(configs: Vec<ServerTls>) -> (String, JoinHandle<Vec<Outcome>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for tls in configs {
            let (stream, _) = listener.accept().await.unwrap();
            let accepted: Accepted = tls::accept(stream, &tls, SERVER_ROLE).await;
            match accepted {
                Ok((mut conn, _, client_key)) => {
                    seen.push(Ok(client_key));
                    tokio::spawn(async move {
                        while let Ok(Some(frame)) = conn.read_frame::<(String, ByteBuf)>().await {
                            if conn.write_frame(&frame).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(e) => seen.push(Err(format!("{e:#}"))),
            }
        }
        seen
    });
    (addr, task)
}

#[tokio::test]
async fn both_ends_learn_each_others_key_and_frames_round_trip() {
    let (server, client) = (identity(), identity());
    let (addr, task) = serve(vec![ServerTls::new(&server, ClientCerts::Required).unwrap()]).await;
    let tls = ClientTls::new(Some(&client), Pin::Exact(server.fingerprint())).unwrap();
    let me = Role::Peer {
        id: client.peer_id(),
    };
    let (mut conn, theirs, seen) = tls::connect(&addr, &tls, me, T).await.unwrap();
    assert_eq!(theirs, SERVER_ROLE);
    assert_eq!(seen, server.fingerprint());
    let frame = ("hello".to_string(), ByteBuf::from(vec![7u8; 100_000]));
    conn.write_frame(&frame).await.unwrap();
    assert_eq!(conn.read_frame().await.unwrap(), Some(frame));
    assert_eq!(task.await.unwrap(), [Ok(Some(client.fingerprint()))]);
}

#[tokio::test]
async fn connections_choose_aes_128_gcm() {
    let server = identity();
    let (addr, task) = serve(vec![ServerTls::new(&server, ClientCerts::Optional).unwrap()]).await;
    let tls = ClientTls::new(None, Pin::Exact(server.fingerprint())).unwrap();
    let (stream, _) = tls::connect_stream(&addr, &tls, T).await.unwrap();
    let suite = stream
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .map(|s| s.suite());
    assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    task.abort();
}

#[tokio::test]
async fn closing_between_frames_is_a_clean_end_with_or_without_close_notify() {
    let (server, client) = (identity(), identity());
    let cfg = ServerTls::new(&server, ClientCerts::Optional).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ends = tokio::spawn(async move {
        let mut ends = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut conn, _, _) = tls::accept(tcp, &cfg, SERVER_ROLE).await.unwrap();
            let first = conn.read_frame::<String>().await.unwrap();
            ends.push((first, conn.read_frame::<String>().await.unwrap()));
        }
        ends
    });
    let tls = ClientTls::new(Some(&client), Pin::Exact(server.fingerprint())).unwrap();
    let (mut polite, _, _) = tls::connect(&addr, &tls, Role::Client, T).await.unwrap();
    polite.write_frame(&"bye".to_string()).await.unwrap();
    polite.writer.shutdown().await.unwrap();
    let (mut abrupt, _, _) = tls::connect(&addr, &tls, Role::Client, T).await.unwrap();
    abrupt.write_frame(&"gone".to_string()).await.unwrap();
    drop(abrupt);
    assert_eq!(
        ends.await.unwrap(),
        [(Some("bye".into()), None), (Some("gone".into()), None)]
    );
}

#[tokio::test]
async fn wrong_pin_is_refused_naming_both_keys() {
    let (server, other) = (identity(), identity());
    let cfg = ServerTls::new(&server, ClientCerts::Optional).unwrap();
    let (addr, task) = serve(vec![cfg.clone(), cfg]).await;

    let tls = ClientTls::new(None, Pin::Exact(other.fingerprint())).unwrap();
    let err = tls::connect(&addr, &tls, Role::Client, T)
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&server.fingerprint().to_string()), "{text}");
    assert!(text.contains(&other.fingerprint().to_string()), "{text}");
    assert!(text.contains(&addr), "{text}");

    let tls = ClientTls::new(None, Pin::Peer(other.peer_id())).unwrap();
    let err = tls::connect(&addr, &tls, Role::Client, T)
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::PeerMismatch { .. }), "{err:?}");
    assert!(task.await.unwrap().iter().all(Result::is_err));
}

#[tokio::test]
async fn peer_pin_accepts_the_peer_it_names() {
    let (server, client) = (identity(), identity());
    let (addr, task) = serve(vec![ServerTls::new(&server, ClientCerts::Required).unwrap()]).await;
    let tls = ClientTls::new(Some(&client), Pin::Peer(server.peer_id())).unwrap();
    let me = Role::Peer {
        id: client.peer_id(),
    };
    let (_conn, _, seen) = tls::connect(&addr, &tls, me, T).await.unwrap();
    assert_eq!(seen.peer_id(), server.peer_id());
    assert_eq!(task.await.unwrap(), [Ok(Some(client.fingerprint()))]);
}

#[tokio::test]
async fn first_key_is_remembered_and_a_changed_one_refused() {
    let (first, second) = (identity(), identity());
    let (addr, task) = serve(vec![
        ServerTls::new(&first, ClientCerts::Optional).unwrap(),
        ServerTls::new(&first, ClientCerts::Optional).unwrap(),
        ServerTls::new(&second, ClientCerts::Optional).unwrap(),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_keys");
    let entry = TrackerEntry {
        addr: addr.clone(),
        fingerprint: None,
    };
    let connect = || known_keys::connect_tracker(&entry, &known, None, Role::Client, T);
    let (_c, _, seen) = connect().await.unwrap();
    assert_eq!(seen, first.fingerprint());
    assert_eq!(
        known_keys::lookup(&known, &addr).unwrap().map(|(fp, _)| fp),
        Some(first.fingerprint())
    );
    let (_c, _, seen) = connect().await.unwrap();
    assert_eq!(seen, first.fingerprint());

    let err = connect().await.unwrap_err();
    assert!(
        matches!(err, TlsError::Trust(KnownKeysError::Mismatch { .. })),
        "{err:?}"
    );
    let text = err.to_string();
    for part in [
        first.fingerprint().to_string(),
        second.fingerprint().to_string(),
        known.display().to_string(),
        addr.clone(),
    ] {
        assert!(text.contains(&part), "{part} missing from {text}");
    }
    task.await.unwrap();
    // A seen key is remembered exactly once.
    let seen = known_keys::check_or_remember(&known, &addr, first.fingerprint()).unwrap();
    assert_eq!(seen, Seen::Known);
}

#[tokio::test]
async fn client_without_a_certificate_is_refused_where_one_is_required() {
    let server = identity();
    let (addr, task) = serve(vec![
        ServerTls::new(&server, ClientCerts::Required).unwrap(),
        ServerTls::new(&server, ClientCerts::Optional).unwrap(),
        ServerTls::new(&server, ClientCerts::Optional).unwrap(),
    ])
    .await;
    let tls = ClientTls::new(None, Pin::Exact(server.fingerprint())).unwrap();
    let err = tls::connect(&addr, &tls, Role::Client, T)
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    // Where certificates are optional the same client gets in, unnamed.
    tls::connect(&addr, &tls, Role::Client, T).await.unwrap();
    // One that presents a certificate is named by it (trackers dialing
    // trackers).
    let named = identity();
    let tls = ClientTls::new(Some(&named), Pin::Exact(server.fingerprint())).unwrap();
    tls::connect(&addr, &tls, Role::Client, T).await.unwrap();
    let outcomes = task.await.unwrap();
    assert!(outcomes[0].is_err(), "{outcomes:?}");
    assert_eq!(outcomes[1], Ok(None));
    assert_eq!(outcomes[2], Ok(Some(named.fingerprint())));
}

/// Accepts any server key, for a hand-built TLS 1.2 client.
#[derive(Debug)]
struct AnyKey;

impl ServerCertVerifier for AnyKey {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn tls12_is_neither_accepted_nor_offered() {
    // A TLS 1.2-only client against a FileShare server.
    let server = identity();
    let (addr, task) = serve(vec![ServerTls::new(&server, ClientCerts::Optional).unwrap()]).await;
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyKey))
        .with_no_client_auth();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let name = ServerName::try_from(tls::SERVER_NAME).unwrap();
    let res = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    assert!(res.is_err(), "TLS 1.2 handshake succeeded");
    let outcomes = task.await.unwrap();
    assert!(outcomes[0].is_err(), "{outcomes:?}");

    // A FileShare client against a TLS 1.2-only server.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["fileshare".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key.into())
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let old_server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
            .accept(tcp)
            .await
            .is_ok()
    });
    let tls = ClientTls::new(None, Pin::FirstUse).unwrap();
    let err = tls::connect(&addr, &tls, Role::Client, T)
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    assert!(!old_server.await.unwrap());
}

/// Copies bytes both ways between a client and `upstream`, keeping a copy
/// of everything that passed.
async fn recording_relay(upstream: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let wire = Arc::new(Mutex::new(Vec::new()));
    let record = wire.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                    mut to: tokio::net::tcp::OwnedWriteHalf,
                    record: Arc<Mutex<Vec<u8>>>| async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown().await;
        };
        tokio::join!(pump(cr, sw, record.clone()), pump(sr, cw, record));
    });
    (addr, wire)
}

#[tokio::test]
async fn nothing_crosses_the_wire_in_the_clear() {
    let (server, client) = (identity(), identity());
    let (upstream, _task) =
        serve(vec![ServerTls::new(&server, ClientCerts::Required).unwrap()]).await;
    let (relay, wire) = recording_relay(upstream).await;

    let secret = "correct horse battery staple, the password".to_string();
    let plain: Vec<u8> = (0..)
        .flat_map(|i: u32| format!("plaintext line {i:08} of the piece;").into_bytes())
        .take(64 * 1024)
        .collect();
    let tls = ClientTls::new(Some(&client), Pin::Exact(server.fingerprint())).unwrap();
    let me = Role::Peer {
        id: client.peer_id(),
    };
    let (mut conn, _, _) = tls::connect(&relay, &tls, me, T).await.unwrap();
    let frame = (secret.clone(), ByteBuf::from(plain.clone()));
    conn.write_frame(&frame).await.unwrap();
    assert_eq!(conn.read_frame().await.unwrap(), Some(frame));
    drop(conn);

    let wire = wire.lock().unwrap().clone();
    // Both directions carried the frame (once each way), encrypted.
    assert!(
        wire.len() > 2 * plain.len(),
        "{} bytes recorded",
        wire.len()
    );
    let windows: HashSet<&[u8]> = plain.windows(32).collect();
    assert!(!wire.windows(secret.len()).any(|w| w == secret.as_bytes()));
    assert!(!wire.windows(32).any(|w| windows.contains(w)));
}

#[tokio::test]
async fn identity_on_disk_is_private_and_tidy() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let a = Identity::load_or_create(dir.path(), "tracker").unwrap();
    let b = Identity::load_or_create(dir.path(), "tracker").unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["tracker.cert.der", "tracker.key.der"]);
    for name in &names {
        let mode = std::fs::metadata(dir.path().join(name)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // And a loaded identity works on the wire.
    let (addr, task) = serve(vec![ServerTls::new(&b, ClientCerts::Required).unwrap()]).await;
    let tls = ClientTls::new(Some(&a), Pin::Exact(a.fingerprint())).unwrap();
    tls::connect(&addr, &tls, Role::Client, T).await.unwrap();
    assert_eq!(task.await.unwrap(), [Ok(Some(a.fingerprint()))]);
}

/// How fast one connection moves 512 KiB frames, TLS and plain TCP side by
/// side: `cargo test --release -p fileshare-protocol --test tls -- --ignored
/// --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput_of_512k_frames() {
    const FRAMES: usize = 400;
    let piece = ByteBuf::from(vec![0x5au8; 512 * 1024]);
    let mb = (FRAMES * piece.len()) as f64 / 1e6;

    let (server, client) = (identity(), identity());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stls = ServerTls::new(&server, ClientCerts::Required).unwrap();
    let sink = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut conn, _, _) = tls::accept(tcp, &stls, SERVER_ROLE).await.unwrap();
        while let Some(f) = conn.read_frame::<(String, ByteBuf)>().await.unwrap() {
            if f.0 == "end" {
                conn.write_frame(&f).await.unwrap();
            }
        }
    });
    let ctls = ClientTls::new(Some(&client), Pin::Exact(server.fingerprint())).unwrap();
    let me = Role::Peer {
        id: PeerId([0; 16]),
    };
    let (mut conn, _, _) = tls::connect(&addr, &ctls, me, T).await.unwrap();
    let start = Instant::now();
    for _ in 0..FRAMES {
        conn.write_frame(&(String::new(), &piece)).await.unwrap();
    }
    let end = ("end".to_string(), ByteBuf::new());
    conn.write_frame(&end).await.unwrap();
    conn.read_frame::<(String, ByteBuf)>().await.unwrap();
    let tls_rate = mb / start.elapsed().as_secs_f64();
    drop(conn);
    sink.await.unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sink = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (r, w) = tcp.into_split();
        let mut conn = Connection::new(r, w);
        conn.handshake(SERVER_ROLE).await.unwrap();
        while let Some(f) = conn.read_frame::<(String, ByteBuf)>().await.unwrap() {
            if f.0 == "end" {
                conn.write_frame(&f).await.unwrap();
            }
        }
    });
    // Plain TCP, for the comparison only: no component can open one.
    let (r, w) = TcpStream::connect(&addr).await.unwrap().into_split();
    let mut conn = Connection::new(r, w);
    conn.handshake(Role::Client).await.unwrap();
    let start = Instant::now();
    for _ in 0..FRAMES {
        conn.write_frame(&(String::new(), &piece)).await.unwrap();
    }
    conn.write_frame(&end).await.unwrap();
    conn.read_frame::<(String, ByteBuf)>().await.unwrap();
    let tcp_rate = mb / start.elapsed().as_secs_f64();
    drop(conn);
    sink.await.unwrap();
    println!("512 KiB frames over loopback: TLS {tls_rate:.0} MB/s, plain TCP {tcp_rate:.0} MB/s");
}
