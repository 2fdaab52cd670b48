//! The fetching side of one peer connection for one file: connect over TLS,
//! presenting this daemon's key and requiring the key of the peer the
//! tracker listed (its peer id is its key's), authenticate with a ticket,
//! subscribe to the peer's pieces (its bitfield, then a `Have` for each
//! piece it verifies later), then send the requests and cancellations the
//! swarm queues, verifying every piece before it is stored or offered.
//! Before the ticket expires (with a third of its lifetime left) the link
//! authenticates again with a fresh one, so long reads never break; a
//! tracker that refuses a fresh one (the user left the group) ends it.
//!
//! It also asks the peer for peer exchange (`PeerRequest::Exchange`) and
//! hands what it hears to the swarm's peer book, whose peers the engine's
//! discovery links to as places free.
//!
//! The wire loop never decides anything: it reports what arrived to the
//! swarm, whose scheduling step chooses the next requests. Each piece is
//! verified and stored by a task of the swarm, on the blocking pool.

use crate::net::reach::{Opened, Path};
use crate::net::token_bucket::TokenBucket;
use crate::pieces::arriving::Arrival;
use crate::pieces::swarm::peer_book::Origin;
use crate::pieces::swarm::{FetchCmd, FetchLinkId, Swarm, Waste};
use crate::tasks::Tasks;
use crate::trackers::{now_ms, LinkError, TrackerLink};
use fileshare_protocol::messages::peer::Payload;
use fileshare_protocol::messages::tracker::PeerLocation;
use fileshare_protocol::messages::{PeerError, PeerReply, PeerRequest, Reply, Request, Role};
use fileshare_protocol::tls::{ClientTls, Pin, TlsError};
use fileshare_protocol::{Identity, PeerId, PieceIndex, ProtocolError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long to wait for a peer to connect or answer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the link lets the swarm retry pieces the peer refused `Busy`.
pub const TICK: Duration = Duration::from_millis(250);

/// The request id of the subscription; its replies keep coming.
const SUBSCRIPTION: u64 = 1;

/// The request id of the peer exchange stream.
const EXCHANGE: u64 = 2;

/// A piece request unanswered for this many times what one piece takes at
/// the peer's measured rate is stuck there: it is cancelled at that peer
/// and asked of another (see [`stuck_after`]).
const STUCK_FACTOR: f64 = 8.0;

/// A request is never stuck sooner than this (a peer's upload scheduler
/// holds requests a while on purpose) nor, however slow or silent the
/// peer, later than [`STUCK_MAX`].
const STUCK_MIN: Duration = Duration::from_secs(8);
const STUCK_MAX: Duration = Duration::from_secs(20);

/// When the oldest request of a link is stuck: [`STUCK_FACTOR`] pieces'
/// time at the link's measured rate (`bytes` of pieces over `elapsed`),
/// within [`STUCK_MIN`] and [`STUCK_MAX`]; [`STUCK_MAX`] while nothing has
/// arrived to measure.
fn stuck_after(piece_len: u64, bytes: u64, elapsed: Duration) -> Duration {
    if bytes == 0 || elapsed.is_zero() {
        return STUCK_MAX;
    }
    let rate = bytes as f64 / elapsed.as_secs_f64();
    let secs = STUCK_FACTOR * piece_len as f64 / rate;
    Duration::from_secs_f64(secs.clamp(STUCK_MIN.as_secs_f64(), STUCK_MAX.as_secs_f64()))
}

/// Piece buffers given back by verifications, waiting to go to the link's
/// reader: one is enough, as a piece is verified faster than the next
/// arrives; with none, the reader takes a new buffer, never a growing one.
const SPARE_BUFFERS: usize = 1;

/// How soon to ask again for a fresh ticket when no tracker answered.
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// What every fetch link of this daemon shares.
pub struct FetchCtx {
    pub my_id: PeerId,
    /// This daemon's key, presented to every peer it fetches from.
    pub identity: Identity,
    pub tracker: Arc<TrackerLink>,
    pub download: Option<TokenBucket>,
    /// Where received pieces are stored, within the cache budget.
    pub cache: Arc<crate::pieces::cache::Cache>,
    /// How peers are reached, and the connections dialled back to us.
    pub reach: Arc<crate::net::reach::Reach>,
    /// How many links may be open, per file and in all.
    pub budget: Arc<LinkBudget>,
    /// The port of the address the trackers were last offered (0 before
    /// the first announce), named to peers in exchange requests.
    pub offered_port: std::sync::atomic::AtomicU16,
}

/// Links (this daemon fetching one file from one peer) open at most, per
/// file and over the daemon.
#[derive(Debug)]
pub struct LinkBudget {
    pub per_file: usize,
    pub total: usize,
    /// Links counted against `total` now.
    open: std::sync::atomic::AtomicUsize,
}

/// Links one file is fetched over at most, by default: BitTorrent
/// clients' usual figure.
pub const LINKS_PER_FILE: usize = 50;

/// Links over the daemon at most, by default.
pub const LINKS_TOTAL: usize = 400;

impl LinkBudget {
    pub fn new(per_file: usize, total: usize) -> LinkBudget {
        LinkBudget {
            per_file: per_file.max(1),
            total: total.max(1),
            open: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Takes one of the daemon's places, if one is free; the holder gives
    /// it back by dropping it.
    pub fn take(self: &Arc<Self>) -> Option<LinkPlace> {
        use std::sync::atomic::Ordering;
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.total).then_some(n + 1)
            });
        taken.ok().map(|_| LinkPlace(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// One of the daemon's link places, held while a link task runs.
pub struct LinkPlace(Arc<LinkBudget>);

impl Drop for LinkPlace {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Why a fetch link ended.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("peer refused: {0}")]
    Refused(PeerError),
    #[error("peer identity does not match the tracker's")]
    WrongPeer,
    #[error("peer sent an unexpected reply")]
    Unexpected,
    #[error("peer sent {0} bad pieces")]
    BadPieces(u32),
    #[error("cannot get a ticket: {0}")]
    Ticket(LinkError),
    #[error(transparent)]
    Open(#[from] crate::net::reach::OpenError),
    #[error("peer closed the connection")]
    Closed,
}

/// Runs one link until the peer goes away, misbehaves or the swarm ends.
///
/// The caller has registered the attempt with [`Swarm::connect_started`];
/// `tasks` is the swarm's node of the task tree.
pub async fn run(
    swarm: Arc<Swarm>,
    ctx: Arc<FetchCtx>,
    remote: PeerLocation,
    origin: Origin,
    place: LinkPlace,
    tasks: Tasks,
) {
    let _place = place;
    let peer = remote.peer;
    let cancel = swarm.cancel.clone();
    let links = async {
        let mut opened = None;
        loop {
            match link(&swarm, &ctx, &remote, origin, &tasks, opened.take()).await {
                // Moved off the relay: the same peer again, on the direct
                // path, unless another link to it started meanwhile.
                Ok(Some(direct)) if swarm.connect_started(peer) => {
                    tracing::info!(file = %swarm.file.meta.name, peer = %direct.addr, "moved from the relay to a direct path");
                    opened = Some(direct);
                }
                Ok(_) => break,
                Err(e) => {
                    let addr = &remote.addr;
                    tracing::debug!(file = %swarm.file.meta.name, peer = %addr, "link ended: {e:#}");
                    break;
                }
            }
        }
    };
    tokio::select! {
        () = links => {}
        () = cancel.cancelled() => {}
    }
    swarm.connect_ended(&peer);
}

/// Releases the link's requests, and its entry in the peer book, however
/// it ends.
struct Registered<'a> {
    swarm: &'a Swarm,
    key: FetchLinkId,
    peer: PeerId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.swarm.release_link(self.key);
        self.swarm.peers.unlinked_out(&self.peer);
    }
}

/// One link to `remote`, on `opened` if given, else on a connection it
/// opens. Ends with a direct connection to move to when it ran through the
/// relay and the holder became reachable directly.
async fn link(
    swarm: &Arc<Swarm>,
    ctx: &FetchCtx,
    remote: &PeerLocation,
    origin: Origin,
    tasks: &Tasks,
    opened: Option<Opened>,
) -> Result<Option<Opened>, FetchError> {
    let file = swarm.file.clone();
    let held = ctx
        .tracker
        .ticket(&file.group)
        .await
        .map_err(FetchError::Ticket)?;
    // Only the peer the tracker named can complete the handshake: its key
    // must be the one its peer id derives from.
    let pinned = ClientTls::new(Some(&ctx.identity), Pin::Peer(remote.peer))?;
    let me = Role::Peer { id: ctx.my_id };
    let Opened {
        conn,
        role,
        addr,
        path,
    } = match opened {
        Some(o) => o,
        None => crate::net::reach::open(ctx, &file.group, remote, &pinned, me.clone()).await?,
    };
    if role != (Role::Peer { id: remote.peer }) {
        return Err(FetchError::WrongPeer);
    }
    let (mut reader, mut writer) = conn.into_split();
    writer
        .write_frame(&Request {
            id: 0,
            body: PeerRequest::Authenticate {
                ticket: held.ticket,
            },
        })
        .await?;
    match read_reply(&mut reader).await?.body {
        PeerReply::Authenticated => {}
        PeerReply::Error(e) => return Err(FetchError::Refused(e)),
        _ => return Err(FetchError::Unexpected),
    }
    writer
        .write_frame(&Request {
            id: SUBSCRIPTION,
            body: PeerRequest::Subscribe { file: file.id },
        })
        .await?;
    let have = match read_reply(&mut reader).await?.body {
        PeerReply::Bitfield(b) if b.is_valid_for(file.layout.num_pieces()) => b,
        PeerReply::Error(e) => return Err(FetchError::Refused(e)),
        _ => return Err(FetchError::Unexpected),
    };
    let Some((key, mut queue)) = swarm.add_link(remote.peer, addr.clone(), have) else {
        return Ok(None);
    };
    swarm.peers.linked_out(remote.peer, &addr, origin);
    let _registered = Registered {
        swarm,
        key,
        peer: remote.peer,
    };
    let port = ctx.offered_port.load(std::sync::atomic::Ordering::Relaxed);
    writer
        .write_frame(&Request {
            id: EXCHANGE,
            body: PeerRequest::Exchange {
                file: file.id,
                port,
            },
        })
        .await?;
    // Cancelled by a verification task when this peer must be dropped.
    let dropped = CancellationToken::new();

    /// What each outstanding piece request id asked for.
    #[derive(Clone, Copy)]
    enum Asked {
        /// A piece, and when it was asked for.
        Piece(PieceIndex, Instant),
        /// Cancelled (by the swarm, or as stuck here): whatever answers
        /// it is dropped.
        Cancelled(PieceIndex, Waste),
        /// A fresh ticket.
        Authenticate,
    }
    let asked: Mutex<HashMap<u64, Asked>> = Mutex::new(HashMap::new());
    // Piece bytes received on this link, and since when, for its rate.
    let started = Instant::now();
    let received = std::sync::atomic::AtomicU64::new(0);

    // Fresh tickets, as they are due, for the sending loop to present.
    let (fresh_tx, mut fresh) = mpsc::channel(1);
    let renew = async {
        let mut at = held.renew_at_ms;
        loop {
            tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
            match ctx.tracker.ticket(&file.group).await {
                Ok(next) => {
                    at = next
                        .renew_at_ms
                        .max(now_ms() + fileshare_protocol::millis(RENEW_RETRY));
                    if fresh_tx.send(next.ticket).await.is_err() {
                        return Ok(());
                    }
                }
                // Refused: not a member any more. The peer refuses us
                // once the ticket it holds expires; stop now.
                Err(e) if e.code().is_some() => return Err(FetchError::Ticket(e)),
                Err(e) => {
                    tracing::debug!(group = %file.group, "cannot renew the ticket yet: {e:#}");
                    at = now_ms() + fileshare_protocol::millis(RENEW_RETRY);
                }
            }
        }
    };

    let send = async {
        let mut next_id = EXCHANGE + 1;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cmd = tokio::select! {
                // A fresh ticket first: requests may wait on the download
                // limit, and the current ticket must not expire meanwhile.
                biased;
                Some(ticket) = fresh.recv() => {
                    let id = next_id;
                    next_id += 1;
                    asked.lock().insert(id, Asked::Authenticate);
                    let body = PeerRequest::Authenticate { ticket };
                    writer.write_frame(&Request { id, body }).await?;
                    continue;
                }
                cmd = queue.recv() => cmd,
                _ = tick.tick() => {
                    swarm.tick(key);
                    // The oldest piece request, if stuck: cancelled here,
                    // and the swarm asks another peer for it.
                    let after = stuck_after(
                        file.layout.piece_len(),
                        received.load(std::sync::atomic::Ordering::Relaxed),
                        started.elapsed(),
                    );
                    let stuck = {
                        let mut a = asked.lock();
                        let oldest = (a.iter())
                            .filter_map(|(&id, w)| match *w {
                                Asked::Piece(p, at) => Some((at, id, p)),
                                _ => None,
                            })
                            .min();
                        match oldest {
                            Some((at, id, p)) if at.elapsed() >= after => {
                                a.insert(id, Asked::Cancelled(p, Waste::Stuck));
                                Some((id, p))
                            }
                            _ => None,
                        }
                    };
                    if let Some((id, piece)) = stuck {
                        tracing::debug!(
                            file = %file.meta.name,
                            "piece {} unanswered for {after:?}: asking another peer",
                            piece.get()
                        );
                        writer
                            .write_frame(&Request { id, body: PeerRequest::Cancel { id } })
                            .await?;
                        swarm.piece_busy(key, piece);
                    }
                    continue;
                }
            };
            let (id, body) = match cmd {
                None | Some(FetchCmd::Close) => return Ok::<(), FetchError>(()),
                Some(FetchCmd::Request(piece)) => {
                    if let Some(t) = &ctx.download {
                        t.take(file.layout.piece_size(piece)).await;
                    }
                    let id = next_id;
                    next_id += 1;
                    asked.lock().insert(id, Asked::Piece(piece, Instant::now()));
                    (
                        id,
                        PeerRequest::Piece {
                            file: file.id,
                            index: piece.get(),
                        },
                    )
                }
                Some(FetchCmd::Cancel(piece)) => {
                    let mut a = asked.lock();
                    let Some((&id, what)) = a
                        .iter_mut()
                        .find(|(_, w)| matches!(w, Asked::Piece(p, _) if *p == piece))
                    else {
                        // Answered already.
                        continue;
                    };
                    *what = Asked::Cancelled(piece, Waste::Cancelled);
                    (id, PeerRequest::Cancel { id })
                }
            };
            writer.write_frame(&Request { id, body }).await?;
        }
    };

    // Body buffers of verified pieces, back from the verifying tasks for
    // the next pieces to arrive in.
    let spare: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let receive = async {
        let num_pieces = file.layout.num_pieces();
        // Pieces coming in parts, by request id.
        let mut partial: HashMap<u64, Partial> = HashMap::new();
        loop {
            for buf in spare.lock().drain(..) {
                reader.recycle(buf);
            }
            let reply = read_reply(&mut reader).await?;
            if reply.id == SUBSCRIPTION {
                match reply.body {
                    PeerReply::Have(i) => match file.layout.validate(i) {
                        Some(piece) => swarm.add_have(key, piece),
                        None => return Err(FetchError::Unexpected),
                    },
                    PeerReply::Bitfield(b) if b.is_valid_for(num_pieces) => {
                        swarm.update_have(key, b)
                    }
                    // Arriving there: it may be asked for, and comes as it
                    // arrives (if it fails to, the ask is refused).
                    PeerReply::Receiving(i) => match file.layout.validate(i) {
                        Some(piece) => swarm.add_have(key, piece),
                        None => return Err(FetchError::Unexpected),
                    },
                    PeerReply::Unchoked(on) => swarm.choked(key, !on),
                    PeerReply::Error(e) => return Err(FetchError::Refused(e)),
                    _ => return Err(FetchError::Unexpected),
                }
                continue;
            }
            if reply.id == EXCHANGE {
                match reply.body {
                    PeerReply::Peers(u) if u.check().is_ok() => {
                        swarm.peers.heard_exchanged(&ctx.my_id, u)
                    }
                    // Refused (say the ticket expired): the link goes on,
                    // the subscription ends it if it must.
                    PeerReply::Error(e) => {
                        tracing::debug!(file = %file.meta.name, "no peer exchange: {e}")
                    }
                    _ => return Err(FetchError::Unexpected),
                }
                continue;
            }
            if let PeerReply::Part { data } = &reply.body {
                let what = asked.lock().get(&reply.id).copied();
                match what {
                    Some(Asked::Piece(index, _)) => {
                        let n = data.len() as u64;
                        received.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        let len = usize::try_from(file.layout.piece_size(index)).unwrap_or(0);
                        let p = partial.entry(reply.id).or_insert_with(|| {
                            match swarm.still_needed(index) {
                                true => swarm.start_arrival(index).map(Partial::Shared),
                                false => None,
                            }
                            .unwrap_or_else(|| Partial::Own(Vec::with_capacity(len)))
                        });
                        if !p.push(data, len) {
                            return Err(FetchError::Unexpected);
                        }
                        swarm.part_arrived(key, index);
                    }
                    Some(Asked::Cancelled(index, why)) => {
                        partial.remove(&reply.id);
                        swarm.count_duplicate(key, index, why, data.len() as u64);
                    }
                    _ => return Err(FetchError::Unexpected),
                }
                continue;
            }
            let Some(what) = asked.lock().remove(&reply.id) else {
                return Err(FetchError::Unexpected);
            };
            // The parts before it, if the piece came in parts; a refusal
            // drops them (and fails their relays).
            let parts = partial.remove(&reply.id);
            match (what, reply.body) {
                (Asked::Authenticate, PeerReply::Authenticated) => {}
                (Asked::Authenticate, PeerReply::Error(e)) => return Err(FetchError::Refused(e)),
                (Asked::Cancelled(index, why), PeerReply::Piece { data }) => {
                    swarm.count_duplicate(key, index, why, data.len() as u64)
                }
                (Asked::Cancelled(..), _) => {}
                (Asked::Piece(index, _), PeerReply::Piece { data }) => {
                    received.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let data = match parts {
                        None => Whole::Frame(data),
                        Some(mut p) => {
                            let len = usize::try_from(file.layout.piece_size(index)).unwrap_or(0);
                            if !p.push(&data, len) {
                                return Err(FetchError::Unexpected);
                            }
                            reader.recycle(data.into_buffer());
                            p.into_whole()
                        }
                    };
                    if !swarm.still_needed(index) {
                        swarm.count_duplicate(key, index, Waste::Verified, data.len() as u64);
                        continue;
                    }
                    // Hashing and storing run beside the wire loop, so the
                    // socket keeps draining while a piece is checked.
                    let (swarm, tracker, dropped) =
                        (swarm.clone(), ctx.tracker.clone(), dropped.clone());
                    let cache = ctx.cache.clone();
                    let pool = tasks.clone();
                    let spare = spare.clone();
                    tasks.spawn("verify-piece", async move {
                        let _ = pool
                            .blocking(move || {
                                let verified = data.with_bytes(|bytes| {
                                    crate::pieces::verify::verify_and_store(
                                        &swarm, &cache, &tracker, key, index, bytes,
                                    )
                                });
                                let matched = verified.as_ref().is_ok_and(|&m| m);
                                if let Err(e) = verified {
                                    tracing::warn!(file = %swarm.file.meta.name, "{e:#}");
                                    dropped.cancel();
                                }
                                if let Some(buf) = data.done(matched) {
                                    let mut spare = spare.lock();
                                    if spare.len() < SPARE_BUFFERS {
                                        spare.push(buf);
                                    }
                                }
                            })
                            .await;
                    });
                }
                (Asked::Piece(index, _), PeerReply::Error(PeerError::Busy)) => {
                    swarm.piece_busy(key, index);
                }
                (Asked::Piece(index, _), PeerReply::Error(PeerError::Choked)) => {
                    swarm.choked(key, true);
                    swarm.piece_busy(key, index);
                }
                (Asked::Piece(index, _), PeerReply::Error(_)) => {
                    swarm.piece_unavailable(key, index);
                }
                _ => return Err(FetchError::Unexpected),
            }
        }
    };

    let direct = async {
        if path == Path::Relayed {
            crate::net::reach::direct_when_open(ctx, remote, &pinned, me).await
        } else {
            std::future::pending().await
        }
    };

    tokio::select! {
        r = send => r.map(|()| None),
        r = receive => r.map(|()| None),
        r = renew => r.map(|()| None),
        o = direct => Ok(Some(o)),
        () = dropped.cancelled() => Err(FetchError::BadPieces(crate::pieces::swarm::MAX_FAILURES)),
    }
}

/// A piece coming in parts: shared with the peer server, which passes it
/// on as it arrives, or (another link brings the same piece, or it is
/// not needed any more) kept here alone.
enum Partial {
    Shared(Arrival),
    Own(Vec<u8>),
}

impl Partial {
    /// Appends the next part; false if it overruns the piece's `len`.
    fn push(&mut self, data: &[u8], len: usize) -> bool {
        match self {
            Partial::Shared(a) => a.push(data),
            Partial::Own(v) if v.len() + data.len() <= len => {
                v.extend_from_slice(data);
                true
            }
            Partial::Own(_) => false,
        }
    }

    fn into_whole(self) -> Whole {
        match self {
            Partial::Shared(a) => Whole::Shared(a),
            Partial::Own(v) => Whole::Frame(v.into()),
        }
    }
}

/// A piece's bytes, all in, for verification.
enum Whole {
    /// In one frame's buffer (or gathered from parts here).
    Frame(Payload),
    /// Gathered in an arrival that relays read from.
    Shared(Arrival),
}

impl Whole {
    fn len(&self) -> usize {
        match self {
            Whole::Frame(p) => p.len(),
            Whole::Shared(a) => a.filled(),
        }
    }

    fn with_bytes<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        match self {
            Whole::Frame(p) => f(p),
            Whole::Shared(a) => a.with_bytes(f),
        }
    }

    /// Verification is over: an arrival ends (its relays end the piece if
    /// these bytes `matched` its hash, else fail); a frame's buffer is
    /// given back.
    fn done(self, matched: bool) -> Option<Vec<u8>> {
        match self {
            Whole::Frame(p) => Some(p.into_buffer()),
            Whole::Shared(a) => {
                if matched {
                    a.verified();
                }
                None
            }
        }
    }
}

async fn read_reply<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut fileshare_protocol::connection::FrameReader<R>,
) -> Result<Reply<PeerReply>, FetchError> {
    match tokio::time::timeout(PEER_TIMEOUT * 3, reader.read_peer_reply()).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => Err(FetchError::Closed),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(FetchError::Protocol(ProtocolError::Timeout {
            what: "peer reply",
            ms: fileshare_protocol::millis(PEER_TIMEOUT * 3),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_stuck_after_pieces_worth_of_the_measured_rate() {
        let piece = 512 * 1024;
        // Nothing measured yet: the longest wait.
        assert_eq!(stuck_after(piece, 0, Duration::from_secs(5)), STUCK_MAX);
        // 256 KiB/s: a piece takes 2 s, stuck after 16 s.
        let after = stuck_after(piece, 10 * piece, Duration::from_secs(20));
        assert_eq!(after.as_secs(), 16);
        // Fast and very slow peers stay within the bounds.
        assert_eq!(
            stuck_after(piece, 1000 * piece, Duration::from_secs(1)),
            STUCK_MIN
        );
        assert_eq!(
            stuck_after(piece, piece, Duration::from_secs(60)),
            STUCK_MAX
        );
    }
}
