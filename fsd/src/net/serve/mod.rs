//! The serving side: other members fetch verified pieces from here.
//!
//! Every connection is TLS, and the requester must present a key: its
//! peer id is the one its key proves, and a Hello naming another peer is
//! refused.
//! A connection is worth nothing until it presents a ticket, which this
//! daemon checks with the cluster's ticket key: signed by the cluster,
//! issued to the connecting peer's own id, unexpired, and for the group's
//! current incarnation (see [`TrackerLink::check_incarnation`]). Each ticket
//! opens the files of one group until it expires, and every request is
//! checked against it, so a member who leaves or is removed (and gets no
//! new tickets) is refused within one ticket lifetime, on connections
//! already open too; subscriptions end then. A piece's last frame is sent
//! only once its hash was verified here: a piece still arriving may be
//! passed on in parts ([`parts`]), and ends in `NotAvailable` if it fails.
//!
//! Until it shows a valid ticket a connection is a stranger's: it holds a
//! place in the strangers' small pool ([`crate::net::conn_pools`]), where
//! newer strangers push out the oldest, and is closed if it has not
//! authenticated within [`AUTH_DEADLINE`] of being accepted. A valid
//! ticket moves it to the members' pool. A member's connection that sends
//! nothing for [`IDLE_TIMEOUT`] while subscribed to nothing is closed.
//!
//! Piece requests wait their turn in the daemon's upload scheduler
//! ([`crate::net::upload_scheduler`]), which may refuse one with `Busy`
//! (or `Choked` when the connection is choked); a request still waiting
//! there can be cancelled by the requester. A served piece holds its room in the
//! scheduler's uplink window until the connection's writer has written it.
//! Subscriptions push a `Receiving` for every piece that starts arriving
//! here, a `Have` for every piece verified here, and `Unchoked` each time
//! the connection is choked or unchoked, so readers become
//! sources for each other as soon as bytes arrive, and the whole bitfield
//! again when pieces are evicted. A piece neither held nor arriving
//! (evicted meanwhile too) is `NotAvailable`.
//!
//! An exchange request (peer exchange) gets this daemon's vouched peers of
//! the file, then who joined and left, at most once a second
//! ([`exchange`]); the asker, which showed a ticket, joins them at the
//! address its connection came from with the port it named.
//!
//! Tasks: the accept loop runs under the server's node of the task tree,
//! each connection under a child of it, and a connection's requests and
//! subscriptions under the connection's, so they end with it. Pieces are
//! read on the blocking pool.

use crate::net::conn_pools::{ConnPools, NotAdmitted, Place};
use crate::net::send_buffer::{self, SendBuffers};
use crate::net::upload_scheduler::{Admission, Ask, Sending, Uploads};
use crate::pieces::registry::Registry;
use crate::pieces::swarm::Swarm;
use crate::tasks::Tasks;
use crate::trackers::{now_ms, TrackerLink};
use fileshare_protocol::messages::{PeerError, PeerReply, PeerRequest, Reply, Request, Role};
use fileshare_protocol::ticket::Ticket;
use fileshare_protocol::tls::{self, ServerTls, TlsError};
use fileshare_protocol::{FileId, PeerId, PieceIndex, ProtocolError};
use parking_lot::Mutex;
use parts::{cut, Answer, Out};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use streams::{exchange, subscription};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod parts;
mod streams;

/// Members' connections served at once; more are closed when they
/// authenticate.
pub const MAX_CONNECTIONS: usize = 1024;

/// Members' connections served at once from one source address: a peer
/// needs one per file it fetches from here.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

/// Connections not authenticated yet held at once, in all and from one
/// address; a new one closes the oldest when there is no room. One
/// address may open as many at once as it may hold as a member (many
/// daemons behind one NAT address start their links together).
pub const MAX_STRANGERS: usize = 128;
pub const MAX_STRANGERS_PER_ADDRESS: usize = MAX_CONNECTIONS_PER_ADDRESS;

/// A connection must complete TLS and show a valid ticket within this
/// long of being accepted. A member's daemon does both in one round trip
/// after connecting.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(5);

/// A member's connection silent this long, subscribed to nothing, is
/// closed. Fetching links always hold a subscription.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ServeCtx {
    pub my_id: PeerId,
    /// This daemon's key; requesters must present theirs.
    pub tls: ServerTls,
    pub tracker: Arc<TrackerLink>,
    pub registry: Arc<Registry>,
    pub uploads: Arc<Uploads>,
    /// The peer sockets' send buffers, sized to keep the uplink's queue short.
    pub send_buffers: SendBuffers,
    /// Testing only: flip a byte of every piece sent.
    pub corrupt: bool,
    /// Numbers the connections, for the upload scheduler.
    pub next_conn: AtomicU64,
    /// The server's node of the task tree.
    pub tasks: Tasks,
    /// Connections dialled back to this daemon's links are sorted out of
    /// the accepted ones here.
    pub reach: Arc<crate::net::reach::Reach>,
}

/// Accepts peers until the server's token is cancelled (it runs as a task
/// under it).
pub async fn run(listener: TcpListener, ctx: Arc<ServeCtx>) {
    let admission = Arc::new(ConnPools::new(
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_ADDRESS,
        MAX_STRANGERS,
        MAX_STRANGERS_PER_ADDRESS,
    ));
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                // The dual-stack listener shows IPv4 peers as mapped
                // IPv6 addresses: limits count them by their IPv4 one.
                let from = std::net::SocketAddr::new(from.ip().to_canonical(), from.port());
                let place = admission.stranger(from.ip());
                let conn_tasks = ctx.tasks.child();
                let conn_ctx = ctx.clone();
                let admission = admission.clone();
                ctx.tasks.spawn("peer-connection", async move {
                    // Its requests and subscriptions end with it.
                    let _end = conn_tasks.token().clone().drop_guard();
                    let gate = Gate {
                        admission,
                        from: from.ip(),
                        place: Mutex::new(place),
                    };
                    let closed = gate.place.lock().closed().clone();
                    let stranger_deadline = async {
                        tokio::time::sleep(AUTH_DEADLINE).await;
                        if gate.place.lock().is_stranger() {
                            return "no valid ticket in time";
                        }
                        std::future::pending().await
                    };
                    // A connection dialled back to one of this daemon's
                    // links goes to that link; any other is served.
                    let served = async {
                        let sorted = crate::net::reach::reverse::sort(stream, &conn_ctx.reach);
                        let stream = sorted.await?;
                        serve(stream, &conn_ctx, &conn_tasks, Some(&gate))
                            .await
                            .err()
                            .map(|e| format!("{e:#}"))
                    };
                    let ended = tokio::select! {
                        r = served => r,
                        () = closed.cancelled() => Some("closed for a newer connection".into()),
                        why = stranger_deadline => Some(why.into()),
                    };
                    if let Some(why) = ended {
                        tracing::debug!(peer = %from, "peer connection ended: {why}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves a connection this daemon opened itself (dialling a reader
/// back) as if it had accepted it: this end is still the TLS server.
pub async fn serve_opened(stream: tokio::net::TcpStream, ctx: &Arc<ServeCtx>) {
    let conn_tasks = ctx.tasks.child();
    let _end = conn_tasks.token().clone().drop_guard();
    // Opened by this daemon on the tracker's request: no place on the
    // port to take; the reader still shows a ticket before anything.
    if let Err(e) = serve(stream, ctx, &conn_tasks, None).await {
        tracing::debug!("dialled-back peer connection ended: {e:#}");
    }
}

/// Requests one connection may have in service at once; the wire reader
/// waits for a permit, so a flood of requests only fills the socket.
const PER_CONNECTION: usize = 32;

/// Files one connection may subscribe to: a link subscribes to one, and
/// each subscription is a task, so a peer cannot start them without bound.
const MAX_SUBSCRIPTIONS: usize = 64;

/// A reply for the connection's writer, and for a piece the upload
/// scheduler's hold on the uplink and the request's place among the
/// connection's [`PER_CONNECTION`], both released once it is written: a
/// requester that does not read holds at most that many replies here.
type Outgoing = (Reply<PeerReply>, Option<(Sending, OwnedSemaphorePermit)>);

/// A connection's place on the port, and what it takes to move it to the
/// members' pool.
struct Gate {
    admission: Arc<ConnPools>,
    from: IpAddr,
    place: Mutex<Place>,
}

impl Gate {
    /// A valid ticket was shown: a member's place from now on.
    fn authenticated(&self) -> Result<(), ConnEnd> {
        let mut place = self.place.lock();
        self.admission
            .promote(&mut place, self.from)
            .map_err(ConnEnd::NoRoom)
    }
}

/// Why the server ended a connection.
#[derive(Debug, thiserror::Error)]
enum ConnEnd {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the peer presented no key")]
    NoKey,
    #[error("the peer says it is {claimed}, but its key is peer {key}'s")]
    NotItsKey { claimed: PeerId, key: PeerId },
    #[error("expected a peer, got {0:?}")]
    NotAPeer(Role),
    #[error("no place among members: {0}")]
    NoRoom(#[source] NotAdmitted),
    #[error("idle for {secs} s, subscribed to nothing")]
    Idle { secs: u64 },
}

/// What the tasks of one connection share.
struct ConnState {
    conn: u64,
    /// The connecting daemon's peer id, as its certificate proves: the
    /// holder every ticket on this connection must name.
    peer: PeerId,
    /// Group -> when the latest ticket presented for it expires (unix ms).
    tickets: Mutex<HashMap<String, u64>>,
    /// Piece requests not answered yet, by request id, to cancel.
    pending: Mutex<HashMap<u64, CancellationToken>>,
    /// Pieces refused `Busy` to this connection: the next ask is served.
    refused: Mutex<HashSet<(FileId, u32)>>,
    /// Files this connection subscribed to, each once.
    subscribed: Mutex<HashSet<FileId>>,
    /// Files this connection asked peer exchange for, each once.
    exchanging: Mutex<HashSet<FileId>>,
    /// Where the connection came from, if it was accepted here (not a
    /// dial-back or a relay's).
    from: Option<IpAddr>,
}

impl ConnState {
    /// Until when (unix ms) this connection may fetch the swarm's file: the
    /// latest expiry of its tickets for the groups the file is shared in
    /// here; `None` with no ticket for any of them.
    fn access_until(&self, swarm: &Swarm) -> Option<u64> {
        (self.tickets.lock().iter())
            .filter(|(g, _)| swarm.file.in_group(g))
            .map(|(_, &expires)| expires)
            .max()
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    ctx: &Arc<ServeCtx>,
    tasks: &Tasks,
    gate: Option<&Gate>,
) -> Result<(), ConnEnd> {
    // Valid while the connection's halves live, which outlive its writer.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let (conn, role, key) = tls::accept(stream, &ctx.tls, Role::Peer { id: ctx.my_id }).await?;
    // Required by the TLS setup; checked again rather than assumed.
    let key = key.ok_or(ConnEnd::NoKey)?;
    let peer = key.peer_id();
    match role {
        Role::Peer { id } if id == peer => {}
        Role::Peer { id } => {
            return Err(ConnEnd::NotItsKey {
                claimed: id,
                key: peer,
            })
        }
        other => return Err(ConnEnd::NotAPeer(other)),
    };
    let (mut reader, mut writer) = conn.into_split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(PER_CONNECTION);
    let permits = Arc::new(Semaphore::new(PER_CONNECTION));
    let st = Arc::new(ConnState {
        conn: ctx.next_conn.fetch_add(1, Ordering::Relaxed),
        peer,
        tickets: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        refused: Mutex::new(HashSet::new()),
        subscribed: Mutex::new(HashSet::new()),
        exchanging: Mutex::new(HashSet::new()),
        from: gate.map(|g| g.from),
    });
    ctx.uploads.connected(st.conn, peer);
    // When the peer last sent a frame, for the idle deadline.
    let heard = Mutex::new(Instant::now());
    // Pieces are read and sent as they come, in any order; authentication
    // is answered in order, before any later request is looked at.
    let read_requests = async {
        while let Some(req) = reader.read_frame::<Request<PeerRequest>>().await? {
            *heard.lock() = Instant::now();
            if let PeerRequest::Cancel { id } = req.body {
                // No reply of its own: the cancelled request answers.
                if let Some(t) = st.pending.lock().get(&id) {
                    t.cancel();
                }
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            if let PeerRequest::Authenticate { ticket } = &req.body {
                let body = match authenticate(ctx, &st, ticket).await {
                    Ok(()) => {
                        if let Some(gate) = gate {
                            gate.authenticated()?;
                        }
                        PeerReply::Authenticated
                    }
                    Err(e) => PeerReply::Error(e),
                };
                if tx.send((Reply { id: req.id, body }, None)).await.is_err() {
                    break;
                }
                drop(permit);
                continue;
            }
            if let PeerRequest::Subscribe { file } = req.body {
                let fresh = {
                    let mut subs = st.subscribed.lock();
                    subs.len() < MAX_SUBSCRIPTIONS && subs.insert(file)
                };
                match allowed(ctx, &st, &file) {
                    Ok(swarm) if fresh => {
                        let choke = ctx.uploads.watch_choke(st.conn);
                        tasks.spawn(
                            "peer-subscription",
                            subscription(swarm, st.clone(), req.id, tx.clone(), choke),
                        );
                    }
                    Ok(_) => {
                        let body = PeerReply::Error(PeerError::Busy);
                        if tx.send((Reply { id: req.id, body }, None)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if fresh {
                            st.subscribed.lock().remove(&file);
                        }
                        let body = PeerReply::Error(e);
                        if tx.send((Reply { id: req.id, body }, None)).await.is_err() {
                            break;
                        }
                    }
                }
                drop(permit);
                continue;
            }
            if let PeerRequest::Exchange { file, port } = req.body {
                let fresh = {
                    let mut ex = st.exchanging.lock();
                    ex.len() < MAX_SUBSCRIPTIONS && ex.insert(file)
                };
                let refused = match allowed(ctx, &st, &file) {
                    Ok(swarm) if fresh => {
                        let stream = exchange(swarm, st.clone(), req.id, port, tx.clone());
                        tasks.spawn("peer-exchange", stream);
                        None
                    }
                    Ok(_) => Some(PeerError::Busy),
                    Err(e) => {
                        if fresh {
                            st.exchanging.lock().remove(&file);
                        }
                        Some(e)
                    }
                };
                if let Some(e) = refused {
                    let body = PeerReply::Error(e);
                    if tx.send((Reply { id: req.id, body }, None)).await.is_err() {
                        break;
                    }
                }
                drop(permit);
                continue;
            }
            let cancel = CancellationToken::new();
            st.pending.lock().insert(req.id, cancel.clone());
            let (ctx, st, tx) = (ctx.clone(), st.clone(), tx.clone());
            tasks.spawn("peer-request", async move {
                // A request of a connection that is gone leaves the upload
                // queue instead of being paid for.
                let answer = tokio::select! {
                    a = answer(&ctx, &st, req.body, &cancel) => a,
                    () = tx.closed() => return,
                };
                let out = Out {
                    tx: &tx,
                    id: req.id,
                    permit,
                };
                match answer {
                    Answer::Reply(body) => out.end(body, None).await,
                    Answer::Held(data, sending) => {
                        let (measured, cap) = ctx.uploads.rates();
                        out.held(data, cut(measured, cap), sending, &cancel).await
                    }
                    Answer::Relay(relay) => relay.send(&ctx, out, &cancel).await,
                }
                st.pending.lock().remove(&req.id);
            });
        }
        Ok::<(), ConnEnd>(())
    };
    let write_replies = async {
        let mut socket = send_buffer::Socket::default();
        while let Some((reply, sending)) = rx.recv().await {
            match &reply.body {
                PeerReply::Piece { data: d } | PeerReply::Part { data: d } => {
                    ctx.send_buffers.before_write(fd, &mut socket);
                    let start = tokio::time::Instant::now();
                    if matches!(reply.body, PeerReply::Part { .. }) {
                        writer.write_part(reply.id, d).await?;
                    } else {
                        writer.write_piece(reply.id, d).await?;
                    }
                    let rate = ctx.uploads.measured_rate();
                    ctx.send_buffers.after_write(fd, &mut socket, rate);
                    if let Some((s, _)) = &sending {
                        tracing::trace!(
                            conn = st.conn,
                            queued_ms = start.duration_since(s.granted()).as_secs_f64() * 1e3,
                            took_ms = start.elapsed().as_secs_f64() * 1e3,
                            "piece written"
                        );
                    }
                }
                _ => writer.write_frame(&reply).await?,
            }
            // The uplink took the piece: its room goes to the next one.
            if let Some((s, permit)) = sending {
                s.written();
                drop(permit);
            }
        }
        Ok::<(), ConnEnd>(())
    };
    let r = tokio::select! {
        r = read_requests => r,
        r = write_replies => r,
        end = idle(&heard, &st.subscribed, IDLE_TIMEOUT) => Err(end),
    };
    ctx.uploads.forget_conn(st.conn);
    r
}

/// Ends once the peer has sent nothing for `limit` (since `heard`) while
/// subscribed to nothing.
async fn idle(
    heard: &Mutex<Instant>,
    subscribed: &Mutex<HashSet<FileId>>,
    limit: Duration,
) -> ConnEnd {
    loop {
        let since = heard.lock().elapsed();
        if since >= limit && subscribed.lock().is_empty() {
            return ConnEnd::Idle {
                secs: limit.as_secs(),
            };
        }
        tokio::time::sleep(limit.saturating_sub(since).max(Duration::from_secs(1))).await;
    }
}

/// Checks a ticket with the cluster's key: signed by the cluster, issued to
/// the connecting peer, within the longest lifetime, unexpired; and for the
/// current incarnation of its group. A good one opens its group until it
/// expires.
async fn authenticate(ctx: &ServeCtx, st: &ConnState, ticket: &Ticket) -> Result<(), PeerError> {
    let key = ctx.tracker.ticket_key().await.map_err(|e| {
        tracing::warn!("cannot check a ticket: no ticket key: {e:#}");
        PeerError::NoTicketKey
    })?;
    ticket
        .verify(&key, &st.peer, now_ms())
        .map_err(PeerError::TicketRefused)?;
    ctx.tracker.check_incarnation(ticket).await?;
    let mut tickets = st.tickets.lock();
    let expires = tickets.entry(ticket.group.clone()).or_default();
    *expires = (*expires).max(ticket.expires_unix_ms);
    Ok(())
}

async fn answer(
    ctx: &ServeCtx,
    st: &ConnState,
    req: PeerRequest,
    cancel: &CancellationToken,
) -> Answer {
    match req {
        PeerRequest::Authenticate { .. }
        | PeerRequest::Subscribe { .. }
        | PeerRequest::Exchange { .. }
        | PeerRequest::Cancel { .. } => Answer::Reply(PeerReply::Error(PeerError::Internal)),
        PeerRequest::Piece { file, index } => match allowed(ctx, st, &file) {
            Ok(swarm) => piece(ctx, st, swarm, index, cancel).await,
            Err(e) => Answer::Reply(PeerReply::Error(e)),
        },
    }
}

/// The swarm of `file`, if this connection holds an unexpired ticket for a
/// group it is shared in: checked on every request, not once per
/// connection.
fn allowed(ctx: &ServeCtx, st: &ConnState, file: &FileId) -> Result<Arc<Swarm>, PeerError> {
    if st.tickets.lock().is_empty() {
        return Err(PeerError::NotAuthenticated);
    }
    let swarm = ctx.registry.get(file).ok_or(PeerError::NoSuchFile)?;
    match st.access_until(&swarm) {
        None => Err(PeerError::NotMember),
        Some(expires) if expires <= now_ms() => Err(PeerError::TicketExpired),
        Some(_) => Ok(swarm),
    }
}

async fn piece(
    ctx: &ServeCtx,
    st: &ConnState,
    swarm: Arc<Swarm>,
    index: u32,
    cancel: &CancellationToken,
) -> Answer {
    let refuse = |e| Answer::Reply(PeerReply::Error(e));
    let Some(p) = swarm.file.layout.validate(index) else {
        return refuse(PeerError::NotAvailable);
    };
    // Held, or arriving here: then passed on as it comes.
    let arriving = match swarm.has(p) {
        true => None,
        false => match swarm.arrivals.relay(p) {
            Some(r) => Some(r),
            None => return refuse(PeerError::NotAvailable),
        },
    };
    let key = (swarm.file.id, index);
    let ask = Ask {
        conn: st.conn,
        file: swarm.file.id,
        piece: p,
        num_pieces: swarm.file.layout.num_pieces(),
        bytes: swarm.file.layout.piece_size(p),
        second: st.refused.lock().contains(&key),
    };
    // Cancellation counts only while the request waits for its turn: once
    // chosen, a held piece's bytes are paid for and sent.
    let sending = tokio::select! {
        a = ctx.uploads.admit(ask) => match a {
            Admission::Serve(s) => s,
            Admission::Busy => {
                st.refused.lock().insert(key);
                return refuse(PeerError::Busy);
            }
            // Not a refusal of this piece: the next ask is a first ask.
            Admission::Choked => return refuse(PeerError::Choked),
        },
        () = cancel.cancelled() => return refuse(PeerError::Cancelled),
    };
    st.refused.lock().remove(&key);
    if let Some(relay) = arriving {
        return Answer::Relay(parts::Relaying {
            relay,
            swarm,
            piece: p,
            sending,
        });
    }
    match read_held(ctx, &swarm, p).await {
        Ok(data) => Answer::Held(data, sending),
        Err(e) => refuse(e),
    }
}

/// A held piece's bytes, for a peer.
async fn read_held(
    ctx: &ServeCtx,
    swarm: &Arc<Swarm>,
    p: PieceIndex,
) -> Result<Vec<u8>, PeerError> {
    let reading = swarm.clone();
    let index = p.get();
    let mut data = match ctx.tasks.blocking(move || reading.read_piece(p)).await {
        Ok(Some(Ok(d))) => d,
        // Evicted since it was asked for.
        Ok(None) => return Err(PeerError::NotAvailable),
        // A changed in-place file: the in_place watcher withdraws it with
        // one log line of its own.
        Ok(Some(Err(e @ crate::store::StoreError::SourceChanged { .. }))) => {
            tracing::debug!(file = %swarm.file.meta.name, "cannot serve piece {index}: {e:#}");
            return Err(PeerError::NotAvailable);
        }
        Ok(Some(Err(e))) => {
            tracing::warn!(file = %swarm.file.meta.name, "cannot serve piece {index}: {e:#}");
            return Err(PeerError::Internal);
        }
        Err(_) => return Err(PeerError::Internal),
    };
    if ctx.corrupt {
        if let Some(b) = data.first_mut() {
            *b ^= 0xff;
        }
    }
    swarm
        .uploaded
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_subscribed_to_nothing_ends_after_the_idle_time() {
        let heard = Mutex::new(Instant::now());
        let subscribed = Mutex::new(HashSet::new());
        let limit = Duration::from_secs(120);
        let start = Instant::now();
        idle(&heard, &subscribed, limit).await;
        assert_eq!(start.elapsed(), limit);

        // A frame puts it off; a subscription holds it open.
        *heard.lock() = Instant::now();
        subscribed.lock().insert(FileId([1; 32]));
        let waited =
            tokio::time::timeout(Duration::from_secs(600), idle(&heard, &subscribed, limit));
        assert!(waited.await.is_err(), "a subscribed connection stays");
        subscribed.lock().clear();
        *heard.lock() = Instant::now();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(60)).await;
        *heard.lock() = Instant::now();
        idle(&heard, &subscribed, limit).await;
        assert!(
            start.elapsed() >= Duration::from_secs(180),
            "{:?}",
            start.elapsed()
        );
    }
}
