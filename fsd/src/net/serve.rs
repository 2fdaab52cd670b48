//! The serving side: other members fetch verified pieces from here.
//!
//! A connection is worth nothing until it presents a ticket that a tracker
//! confirms; each ticket opens the files of one group. Only pieces whose
//! hash this daemon verified are ever sent.
//!
//! Piece requests wait their turn in the daemon's upload scheduler
//! ([`crate::net::upload_scheduler`]), which may refuse one with `Busy`; a request still
//! waiting there can be cancelled by the requester. Subscriptions push a
//! `Have` for every piece verified here, so readers become sources for each
//! other as soon as they hold something, and the whole bitfield again when
//! pieces are evicted. A piece not held (evicted meanwhile too) is
//! `NotAvailable`.
//!
//! Tasks: the accept loop runs under the server's node of the task tree,
//! each connection under a child of it, and a connection's requests and
//! subscriptions under the connection's, so they end with it. Pieces are
//! read on the blocking pool.

use crate::net::upload_scheduler::{Ask, Decision, Uploads};
use crate::pieces::registry::Registry;
use crate::pieces::swarm::{Offer, Swarm};
use crate::tasks::Tasks;
use crate::trackers::TrackerLink;
use fileshare_protocol::connection::TcpConnection;
use fileshare_protocol::messages::{PeerError, PeerReply, PeerRequest, Reply, Request, Role};
use fileshare_protocol::{FileId, PeerId};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 512;

pub struct ServeCtx {
    pub my_id: PeerId,
    pub tracker: Arc<TrackerLink>,
    pub registry: Arc<Registry>,
    pub uploads: Arc<Uploads>,
    /// Testing only: flip a byte of every piece sent.
    pub corrupt: bool,
    /// Numbers the connections, for the upload scheduler.
    pub next_conn: AtomicU64,
    /// The server's node of the task tree.
    pub tasks: Tasks,
}

/// Accepts peers until the server's token is cancelled (it runs as a task
/// under it).
pub async fn run(listener: TcpListener, ctx: Arc<ServeCtx>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, from)) => {
                let conn_tasks = ctx.tasks.child();
                let conn_ctx = ctx.clone();
                ctx.tasks.spawn("peer-connection", async move {
                    // Its requests and subscriptions end with it.
                    let _end = conn_tasks.token().clone().drop_guard();
                    if let Err(e) = serve(stream, &conn_ctx, &conn_tasks).await {
                        tracing::debug!(peer = %from, "peer connection ended: {e:#}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Requests one connection may have in service at once; the wire reader
/// waits for a permit, so a flood of requests only fills the socket.
const PER_CONNECTION: usize = 32;

/// Files one connection may subscribe to: a link subscribes to one, and
/// each subscription is a task, so a peer cannot start them without bound.
const MAX_SUBSCRIPTIONS: usize = 64;

/// What the tasks of one connection share.
struct ConnState {
    conn: u64,
    /// Groups this connection presented tickets for.
    groups: Mutex<Arc<Vec<String>>>,
    /// Piece requests not answered yet, by request id, to cancel.
    pending: Mutex<HashMap<u64, CancellationToken>>,
    /// Pieces refused `Busy` to this connection: the next ask is served.
    refused: Mutex<HashSet<(FileId, u32)>>,
    /// Files this connection subscribed to, each once.
    subscribed: Mutex<HashSet<FileId>>,
}

async fn serve(
    stream: tokio::net::TcpStream,
    ctx: &Arc<ServeCtx>,
    tasks: &Tasks,
) -> Result<(), fileshare_protocol::ProtocolError> {
    let mut conn = TcpConnection::tcp(stream);
    match conn.handshake(Role::Peer { id: ctx.my_id }).await? {
        Role::Peer { .. } => {}
        other => {
            return Err(fileshare_protocol::ProtocolError::Handshake(format!(
                "expected a peer, got {other:?}"
            )))
        }
    }
    let (mut reader, mut writer) = conn.into_split();
    let (tx, mut rx) = mpsc::channel::<Reply<PeerReply>>(PER_CONNECTION);
    let permits = Arc::new(Semaphore::new(PER_CONNECTION));
    let st = Arc::new(ConnState {
        conn: ctx.next_conn.fetch_add(1, Ordering::Relaxed),
        groups: Mutex::new(Arc::new(Vec::new())),
        pending: Mutex::new(HashMap::new()),
        refused: Mutex::new(HashSet::new()),
        subscribed: Mutex::new(HashSet::new()),
    });
    // Pieces are read and sent as they come, in any order; authentication
    // is answered in order, before any later request is looked at.
    let read_requests = async {
        while let Some(req) = reader.read_frame::<Request<PeerRequest>>().await? {
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
                let body = match ctx.tracker.verify_ticket(ticket).await {
                    Ok(group) => {
                        let mut groups = st.groups.lock();
                        if !groups.contains(&group) {
                            Arc::make_mut(&mut *groups).push(group);
                        }
                        PeerReply::Authenticated
                    }
                    Err(e) => PeerReply::Error(PeerError::TicketRefused(e.to_string())),
                };
                if tx.send(Reply { id: req.id, body }).await.is_err() {
                    break;
                }
                drop(permit);
                continue;
            }
            let groups = st.groups.lock().clone();
            if let PeerRequest::Subscribe { file } = req.body {
                let fresh = {
                    let mut subs = st.subscribed.lock();
                    subs.len() < MAX_SUBSCRIPTIONS && subs.insert(file)
                };
                match allowed(ctx, &groups, &file) {
                    Ok(swarm) if fresh => {
                        tasks.spawn("peer-subscription", subscription(swarm, req.id, tx.clone()));
                    }
                    Ok(_) => {
                        let body = PeerReply::Error(PeerError::Busy);
                        if tx.send(Reply { id: req.id, body }).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if fresh {
                            st.subscribed.lock().remove(&file);
                        }
                        let body = PeerReply::Error(e);
                        if tx.send(Reply { id: req.id, body }).await.is_err() {
                            break;
                        }
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
                let body = tokio::select! {
                    body = answer(&ctx, &st, &groups, req.body, &cancel) => body,
                    () = tx.closed() => return,
                };
                st.pending.lock().remove(&req.id);
                let _ = tx.send(Reply { id: req.id, body }).await;
                drop(permit);
            });
        }
        Ok::<(), fileshare_protocol::ProtocolError>(())
    };
    let write_replies = async {
        while let Some(reply) = rx.recv().await {
            writer.write_frame(&reply).await?;
        }
        Ok::<(), fileshare_protocol::ProtocolError>(())
    };
    let r = tokio::select! {
        r = read_requests => r,
        r = write_replies => r,
    };
    ctx.uploads.forget_conn(st.conn);
    r
}

/// One subscription: the bitfield now, then a `Have` per verified piece,
/// until the connection or the swarm ends. Subscribing before taking the
/// bitfield means no piece falls between the two.
async fn subscription(swarm: Arc<Swarm>, id: u64, tx: mpsc::Sender<Reply<PeerReply>>) {
    let mut haves = swarm.subscribe();
    let mut body = PeerReply::Bitfield(swarm.have());
    loop {
        if tx.send(Reply { id, body }).await.is_err() {
            return;
        }
        body = tokio::select! {
            r = haves.recv() => match r {
                Ok(Offer::Have(i)) => PeerReply::Have(i),
                // Pieces evicted, or too far behind: the whole bitfield again.
                Ok(Offer::Lost) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    PeerReply::Bitfield(swarm.have())
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tx.closed() => return,
            () = swarm.cancel.cancelled() => return,
        };
    }
}

async fn answer(
    ctx: &ServeCtx,
    st: &ConnState,
    groups: &[String],
    req: PeerRequest,
    cancel: &CancellationToken,
) -> PeerReply {
    match req {
        PeerRequest::Authenticate { .. }
        | PeerRequest::Subscribe { .. }
        | PeerRequest::Cancel { .. } => PeerReply::Error(PeerError::Internal),
        PeerRequest::Piece { file, index } => match allowed(ctx, groups, &file) {
            Ok(swarm) => piece(ctx, st, swarm, index, cancel).await,
            Err(e) => PeerReply::Error(e),
        },
    }
}

fn allowed(ctx: &ServeCtx, groups: &[String], file: &FileId) -> Result<Arc<Swarm>, PeerError> {
    if groups.is_empty() {
        return Err(PeerError::NotAuthenticated);
    }
    let swarm = ctx.registry.get(file).ok_or(PeerError::NoSuchFile)?;
    if !groups.iter().any(|g| swarm.file.in_group(g)) {
        return Err(PeerError::NotMember);
    }
    Ok(swarm)
}

async fn piece(
    ctx: &ServeCtx,
    st: &ConnState,
    swarm: Arc<Swarm>,
    index: u32,
    cancel: &CancellationToken,
) -> PeerReply {
    let Some(p) = swarm.file.layout.validate(index) else {
        return PeerReply::Error(PeerError::NotAvailable);
    };
    if !swarm.has(p) {
        return PeerReply::Error(PeerError::NotAvailable);
    }
    let key = (swarm.file.id, index);
    let ask = Ask {
        conn: st.conn,
        file: swarm.file.id,
        piece: index,
        num_pieces: swarm.file.layout.num_pieces(),
        bytes: swarm.file.layout.piece_size(p),
        second: st.refused.lock().contains(&key),
    };
    // Cancellation counts only while the request waits for its turn: once
    // chosen, its bytes are paid for and sent.
    let decision = tokio::select! {
        d = ctx.uploads.admit(ask) => d,
        () = cancel.cancelled() => return PeerReply::Error(PeerError::Cancelled),
    };
    if decision == Decision::Busy {
        st.refused.lock().insert(key);
        return PeerReply::Error(PeerError::Busy);
    }
    st.refused.lock().remove(&key);
    let reading = swarm.clone();
    let data = match ctx.tasks.blocking(move || reading.read_piece(p)).await {
        Ok(Some(Ok(d))) => d,
        // Evicted since it was asked for.
        Ok(None) => return PeerReply::Error(PeerError::NotAvailable),
        // A changed in-place file: the in_place watcher withdraws it with
        // one log line of its own.
        Ok(Some(Err(e @ crate::store::StoreError::SourceChanged { .. }))) => {
            tracing::debug!(file = %swarm.file.meta.name, "cannot serve piece {index}: {e:#}");
            return PeerReply::Error(PeerError::NotAvailable);
        }
        Ok(Some(Err(e))) => {
            tracing::warn!(file = %swarm.file.meta.name, "cannot serve piece {index}: {e:#}");
            return PeerReply::Error(PeerError::Internal);
        }
        Err(_) => return PeerReply::Error(PeerError::Internal),
    };
    let mut data = data;
    if ctx.corrupt {
        if let Some(b) = data.first_mut() {
            *b ^= 0xff;
        }
    }
    swarm
        .uploaded
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    PeerReply::Piece { data }
}
