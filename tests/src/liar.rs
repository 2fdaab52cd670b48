//! Lying peers: fake daemons speaking the real protocol (the protocol
//! crate's codec, TLS and identities) that a member of a group runs to
//! harm the others. Each announces to the tracker that it holds every
//! piece of a file, then serves according to its [`Lie`]; [`flood`] turns
//! the tables and floods an honest daemon with requests it never reads the
//! answers to; [`stranger`] is a TLS client from any loopback address.
//!
//! A liar runs on a runtime of its own and stops when dropped.

use crate::world::User;
use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::connection::FrameWriter;
use fileshare_protocol::frame::header;
use fileshare_protocol::frame::HEADER_LEN;
use fileshare_protocol::messages::tracker::Holding;
use fileshare_protocol::messages::tracker::{Announce, IssueTicket, Locate, Login};
use fileshare_protocol::messages::{Hello, MAGIC};
use fileshare_protocol::messages::{PeerError, PeerReply, PeerRequest, Reply, Request, Role};
use fileshare_protocol::tls::{self, ClientCerts, ClientTls, Pin, SecureStream, ServerTls};
use fileshare_protocol::{codec, PROTOCOL_VERSION};
use fileshare_protocol::{Bitfield, Identity, MAX_FRAME_LEN};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::TcpSocket;

/// How a liar answers piece requests, having claimed every piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Bytes of the right length that are not the piece.
    WrongBytes,
    /// Half a piece, then nothing, the connection left open.
    StallMidPiece,
    /// Closes the connection after a few requests, at random.
    CloseAtRandom,
    /// A frame header claiming more than any frame may carry.
    Oversized,
    /// "Not available" for every piece it claimed.
    ClaimsButLacks,
    /// A piece of wrong bytes sent in parts, then its last frame.
    PartsOfWrongBytes,
    /// Most of a piece in parts, then "not available", as a peer passing
    /// on a piece that failed to arrive there (never the piece itself).
    PartsThenLacks,
    /// Parts that add up to more than the piece.
    PartsOverrun,
}

/// One lying peer; stops when dropped.
pub struct Liar {
    pub lie: Lie,
    pub addr: String,
    /// Piece requests it received.
    pub asked: Arc<AtomicU64>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Liar {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A client of the world's trackers presenting `identity`, as a daemon's.
fn client(trackers: &Path, known_keys: &Path, identity: &Identity) -> TrackerClient {
    let entries = fileshare_protocol::trackers_file::load_entries(trackers).expect("trackers file");
    TrackerClient::new(
        entries,
        known_keys,
        Some(identity.clone()),
        Duration::from_secs(10),
    )
}

impl Liar {
    /// Starts a liar for `user` (a member of `group`), claiming every piece
    /// of `group`/`name` in announces to the trackers of `trackers`.
    pub fn start(trackers: &Path, user: &User, group: &str, name: &str, lie: Lie) -> Liar {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let identity = Identity::generate().unwrap();
        let peer = identity.fingerprint().peer_id();
        let known_keys = user.home.join(format!("liar-known-keys-{peer}"));
        let client = client(trackers, &known_keys, &identity);
        let (listener, session, file, pieces) = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let session = client
                .call(Login {
                    user: user.name.to_string(),
                    password: format!("pw-{}", user.name),
                })
                .await
                .expect("login")
                .token;
            let loc = client
                .call(Locate {
                    session,
                    group: group.to_string(),
                    name: name.to_string(),
                })
                .await
                .expect("locate");
            let pieces = loc.meta.layout().unwrap().num_pieces();
            (listener, session, loc.meta.id(), pieces)
        });
        let addr = listener.local_addr().unwrap().to_string();
        let asked = Arc::new(AtomicU64::new(0));
        // Announces every piece, again and again, as a daemon would.
        let announced = addr.clone();
        rt.spawn(async move {
            loop {
                let holdings = vec![Holding {
                    file,
                    have: Bitfield::full(pieces),
                }];
                let _ = client
                    .call(Announce {
                        session,
                        peer,
                        addr: announced.to_string(),
                        also: vec![],
                        holdings,
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let tls = ServerTls::new(&identity, ClientCerts::Required).unwrap();
        let counter = asked.clone();
        rt.spawn(async move {
            let mut seed = u64::from(peer.0[0]) + 1;
            while let Ok((stream, _)) = listener.accept().await {
                let (tls, asked) = (tls.clone(), counter.clone());
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                tokio::spawn(async move {
                    let Ok((conn, _, _)) = tls::accept(stream, &tls, Role::Peer { id: peer }).await
                    else {
                        return;
                    };
                    let (mut reader, writer) = conn.into_split();
                    let mut liar = Serving {
                        writer,
                        lie,
                        pieces,
                        seed,
                    };
                    while let Ok(Some(req)) = reader.read_frame::<Request<PeerRequest>>().await {
                        if let PeerRequest::Piece { .. } = req.body {
                            asked.fetch_add(1, Ordering::Relaxed);
                        }
                        if !liar.answer(req).await {
                            // Stalled, closed or broke the framing: hold the
                            // connection open, reading nothing more.
                            if lie == Lie::StallMidPiece {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            return;
                        }
                    }
                });
            }
        });
        Liar {
            lie,
            addr,
            asked,
            rt: Some(rt),
        }
    }
}

struct Serving<W> {
    writer: FrameWriter<W>,
    lie: Lie,
    pieces: u32,
    seed: u64,
}

impl<W: AsyncWrite + Unpin> Serving<W> {
    /// Answers one request as the lie says; `false` to stop reading.
    async fn answer(&mut self, req: Request<PeerRequest>) -> bool {
        let id = req.id;
        let body = match req.body {
            PeerRequest::Authenticate { .. } => PeerReply::Authenticated,
            PeerRequest::Subscribe { .. } => PeerReply::Bitfield(Bitfield::full(self.pieces)),
            // Cancels get no reply; nor does peer exchange from a liar.
            PeerRequest::Cancel { .. } | PeerRequest::Exchange { .. } => return true,
            PeerRequest::Piece { .. } => match self.lie {
                Lie::WrongBytes => PeerReply::Piece {
                    data: vec![0xa5; fileshare_protocol::PIECE_LEN as usize].into(),
                },
                Lie::ClaimsButLacks => PeerReply::Error(PeerError::NotAvailable),
                Lie::CloseAtRandom => {
                    self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    if self.seed >> 62 == 0 {
                        return false;
                    }
                    PeerReply::Error(PeerError::Busy)
                }
                Lie::StallMidPiece => {
                    let piece = Reply {
                        id,
                        body: PeerReply::Piece {
                            data: vec![0; fileshare_protocol::PIECE_LEN as usize].into(),
                        },
                    };
                    let bytes = fileshare_protocol::codec::encode(&piece).unwrap();
                    let mut raw = header(bytes.len()).to_vec();
                    raw.extend_from_slice(&bytes[..bytes.len() / 2]);
                    let _ = self.writer.write_unframed(&raw).await;
                    return false;
                }
                Lie::Oversized => {
                    let _ = self.writer.write_unframed(&header(MAX_FRAME_LEN + 1)).await;
                    return false;
                }
                Lie::PartsOfWrongBytes | Lie::PartsThenLacks | Lie::PartsOverrun => {
                    let part = vec![0x5a; 64 << 10];
                    let parts = match self.lie {
                        Lie::PartsOverrun => 9,
                        _ => 7,
                    };
                    for _ in 0..parts {
                        if self.writer.write_part(id, &part).await.is_err() {
                            return false;
                        }
                    }
                    match self.lie {
                        Lie::PartsOfWrongBytes => PeerReply::Piece { data: part.into() },
                        _ => PeerReply::Error(PeerError::NotAvailable),
                    }
                }
            },
        };
        self.writer.write_frame(&Reply { id, body }).await.is_ok()
    }
}

/// Floods the honest daemon at `addr` (peer `target`) with `n` piece
/// requests for `group`/`name`, as `user`'s fake daemon with a real ticket,
/// never reading an answer. Returns once they are written or the daemon
/// stopped reading them; the connection stays open until `hold` ends.
pub fn flood(
    trackers: &Path,
    user: &User,
    group: &str,
    name: &str,
    target: (&str, fileshare_protocol::PeerId),
    n: u64,
    hold: Duration,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let identity = Identity::generate().unwrap();
    let peer = identity.fingerprint().peer_id();
    let known_keys = user.home.join(format!("flood-known-keys-{peer}"));
    let client = client(trackers, &known_keys, &identity);
    rt.block_on(async {
        let session = client
            .call(Login {
                user: user.name.to_string(),
                password: format!("pw-{}", user.name),
            })
            .await
            .expect("login")
            .token;
        let loc = client
            .call(Locate {
                session,
                group: group.to_string(),
                name: name.to_string(),
            })
            .await
            .expect("locate");
        let file = loc.meta.id();
        let pieces = loc.meta.layout().unwrap().num_pieces();
        let ticket = client
            .call(IssueTicket {
                session,
                group: group.to_string(),
                holder: peer,
            })
            .await
            .expect("ticket");
        let tls = ClientTls::new(Some(&identity), Pin::Peer(target.1)).unwrap();
        let (conn, _, _) = tls::connect(
            target.0,
            &tls,
            Role::Peer { id: peer },
            Duration::from_secs(10),
        )
        .await
        .expect("connect to the daemon");
        let (_reader, mut writer) = conn.into_split();
        let _ = writer
            .write_frame(&Request {
                id: 0,
                body: PeerRequest::Authenticate { ticket },
            })
            .await;
        let flood = async {
            for id in 1..=n {
                let body = PeerRequest::Piece {
                    file,
                    index: u32::try_from(id % u64::from(pieces)).unwrap(),
                };
                if writer.write_frame(&Request { id, body }).await.is_err() {
                    return;
                }
            }
        };
        // The daemon stops reading once its queue is full: that is the
        // point, so give up writing after a while.
        let _ = tokio::time::timeout(hold, flood).await;
        tokio::time::sleep(hold).await;
    });
}

/// How long a stranger waits for the server at each step.
const STRANGER_TIMEOUT: Duration = Duration::from_secs(20);

/// A TLS connection to `addr` from the loopback address `from`, past the
/// FileShare handshake as `role`; `None` if the server closed it first.
pub async fn stranger(
    from: IpAddr,
    addr: &str,
    tls: &ClientTls,
    role: Role,
) -> Option<SecureStream> {
    let target: SocketAddr = addr.parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(target).await.ok()?;
    let (mut s, _) = tls::secure_over(tcp, addr, tls, STRANGER_TIMEOUT)
        .await
        .ok()?;
    let hello = codec::encode(&Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role,
    })
    .unwrap();
    s.write_all(&header(hello.len())).await.ok()?;
    s.write_all(&hello).await.ok()?;
    let mut head = [0u8; HEADER_LEN];
    tokio::time::timeout(STRANGER_TIMEOUT, s.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let mut theirs = vec![0; u32::from_be_bytes(head) as usize];
    s.read_exact(&mut theirs).await.ok()?;
    Some(s)
}
