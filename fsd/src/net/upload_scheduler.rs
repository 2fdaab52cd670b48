//! Which piece requests this daemon serves, in which order, and how many
//! at once.
//!
//! This daemon's uplink is the scarce resource of every swarm it seeds.
//! Serving requests in arrival order, as fast as they come, would send the
//! same piece to every reader that asked for it at about the same time (all
//! readers of a new file want much the same pieces from its one source),
//! and a swarm would be no faster than a single server. Three things shape
//! the upload, with or without `--max-upload-rate`:
//!
//! 1. **Choking** (`choke.rs`): at most four connections, chosen every two
//!    seconds by how much their peers upload to this daemon (tit-for-tat),
//!    plus one optimistic unchoke, are served first; each connection is
//!    told when that changes. A choked request waits about one piece's
//!    time on the uplink (`choke::choked_wait`, two per connection), served
//!    only with room no unchoked request takes (a *spare* upload), else
//!    refused ([`Admission::Choked`]). So choking never costs upload, only
//!    shares it. A piece this daemon never uploaded is served choked or
//!    not (its first copy; see `State::never_uploaded`).
//! 2. **Pacing**: requests wait in one queue, and one more is served only
//!    when the uplink can take it: while the bytes granted and not yet
//!    written are below the window measured from the writes' back-pressure
//!    (`uplink.rs`), and, with `--max-upload-rate`, when the token bucket
//!    can pay for it. The peer sockets keep little unsent (`send_buffer.rs`),
//!    so a write returns about when the uplink took the piece: requests
//!    wait here, to be ordered, refused or cancelled, not in kernel buffers.
//! 3. **Order** ([`plan`]): each time one more piece may go, the pacer
//!    chooses among all waiting requests:
//!    1. a piece this daemon never uploaded; then a piece asked again
//!       after a refusal; then the piece uploaded fewest times: every piece
//!       leaves once before any leaves twice, so the readers hold different
//!       pieces and trade them;
//!    2. then the piece most requesters wait for here: the source's last
//!       fresh pieces, or the ones readers are blocked on, are those no
//!       other peer offers them, so one more copy of such a piece helps
//!       most, and in the end it reaches every reader in fewer hops;
//!    3. then the connection served longest ago, so requesters share the
//!       upload evenly and their measured rates, hence their request
//!       windows, stay alike;
//!    4. then arrival order.
//!
//! A first ask for a piece already uploaded is answered `Busy` while an ask
//! for a never-uploaded piece waits, and so are the other first asks for
//! the piece just chosen while asks for other pieces wait: the requester
//! gets it from the peer it went to, which is about to offer it, or asks
//! again later (else the source would serve its last pieces one after
//! another, long after their readers could have passed them on). A second
//! ask is never refused but waits for the never-uploaded pieces: by then
//! the requester usually has it from another peer and cancels it here. A
//! refusal frees the requester's slot at once, and the upload never idles
//! for one: there is always a fresher request to serve instead.
//!
//! All of this is about several requesters of one file. A file that only
//! one connection asks for (none other asked for it within [`choke::IDLE`])
//! has nobody to trade with: its requests are served in arrival order (the
//! requester's), none refused, whatever was uploaded before, which would
//! otherwise hold a lone reader up or send it elsewhere for them.
//!
//! A connection holds at most [`MAX_UNWRITTEN`] served pieces not yet
//! written: one whose peer stops reading (a flood of requests whose
//! answers it never takes) cannot fill the uplink's window and starve
//! everyone else. Room and tokens are taken only when a request is chosen,
//! so a request cancelled while it waits costs no upload; a served one
//! holds its room until its writer wrote it and drops its [`Sending`].

use crate::net::choke::{self, Candidate, Choker, Notices, MAX_CHOKED_WAITING};
use crate::net::token_bucket::TokenBucket;
use crate::net::uplink::Uplink;
use fileshare_protocol::{FileId, PeerId, PieceIndex};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Served pieces one connection may have granted and not yet written.
pub const MAX_UNWRITTEN: u32 = 2;

/// What a piece request may do now.
#[derive(Debug)]
pub enum Admission {
    /// Send the piece; drop the [`Sending`] once the write returned.
    Serve(Sending),
    /// Refused for now: this piece just went to another peer while
    /// never-uploaded pieces wait. The next ask for it is served.
    Busy,
    /// Refused: the connection is choked (and no upload was spare).
    Choked,
}

/// One piece request as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The asking connection (any id unique among live connections).
    pub conn: u64,
    pub file: FileId,
    pub piece: PieceIndex,
    /// Pieces in the file, to size the upload counts.
    pub num_pieces: u32,
    /// Bytes the piece costs.
    pub bytes: u64,
    /// This connection was refused this piece before: serve it this time.
    pub second: bool,
}

/// A waiting request, for [`plan`].
#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    pub ask: Ask,
    /// Arrival order.
    pub seq: u64,
}

/// What the pacer does next: serve one request, refuse some, both or neither
/// (indexes into the slice given to [`plan`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub serve: Option<usize>,
    pub refuse: Vec<usize>,
}

/// Chooses the next request to serve and the ones to refuse; pure, see the
/// module documentation. `uploads(file, piece)` is how often this daemon sent
/// the piece; `last_served(conn)` is when the connection was last served, in
/// any monotonic unit (0 = never). O(W) for W waiting requests.
pub fn plan(
    waiting: &[Waiting],
    uploads: impl Fn(&FileId, PieceIndex) -> u32,
    last_served: impl Fn(u64) -> u64,
) -> Plan {
    // Never uploaded: 0; asked again after a refusal: 1; else 1 + uploads.
    let rank = |w: &Waiting| match uploads(&w.ask.file, w.ask.piece) {
        0 => 0,
        _ if w.ask.second => 1,
        n => n.saturating_add(1),
    };
    let fresh = waiting.iter().any(|w| rank(w) == 0);
    let mut demand: HashMap<(FileId, PieceIndex), u32> = HashMap::new();
    for w in waiting {
        *demand.entry((w.ask.file, w.ask.piece)).or_default() += 1;
    }
    let mut out = Plan::default();
    let mut best: Option<(u32, std::cmp::Reverse<u32>, u64, u64)> = None;
    for (i, w) in waiting.iter().enumerate() {
        let r = rank(w);
        if fresh && r > 0 && !w.ask.second {
            out.refuse.push(i);
            continue;
        }
        let wanted = demand.get(&(w.ask.file, w.ask.piece)).copied();
        let key = (
            r,
            std::cmp::Reverse(wanted.unwrap_or(0)),
            last_served(w.ask.conn),
            w.seq,
        );
        if best.is_none_or(|b| key < b) {
            best = Some(key);
            out.serve = Some(i);
        }
    }
    // The other first asks for the piece about to go out are refused while
    // requests for other pieces wait: its requesters get it from the peer
    // it goes to, and the upload goes on with those other pieces.
    if let Some(s) = out.serve {
        let piece = |i: usize| (waiting[i].ask.file, waiting[i].ask.piece);
        let mut kept = vec![true; waiting.len()];
        kept[s] = false;
        for &i in &out.refuse {
            kept[i] = false;
        }
        if (0..waiting.len()).any(|i| kept[i] && piece(i) != piece(s)) {
            out.refuse.extend(
                (0..waiting.len())
                    .filter(|&i| kept[i] && piece(i) == piece(s) && !waiting[i].ask.second),
            );
            out.refuse.sort_unstable();
        }
    }
    out
}

struct Entry {
    w: Waiting,
    tx: oneshot::Sender<Admission>,
    /// Admitted from a choked connection only for the piece's first copy:
    /// refused once that copy went to someone else.
    first_copy: bool,
    /// A choked request waiting for a spare upload (served when no
    /// unchoked request can take the room), refused `Choked` at this
    /// instant. Cleared if the connection is unchoked meanwhile.
    wait_until: Option<Instant>,
}

/// One connection as the scheduler counts it.
struct Conn {
    peer: Option<PeerId>,
    last_ask: Instant,
    /// Asked for a piece since the last rotation.
    asked: bool,
    /// Bytes written to it since the last rotation.
    sent: u64,
    /// Bytes received from its peer, over all files, at the last rotation.
    received_mark: u64,
    /// Pieces served to it and not yet written ([`MAX_UNWRITTEN`]).
    unwritten: u32,
}

struct State {
    entries: Vec<Entry>,
    next_seq: u64,
    /// Per file, per piece: times this daemon chose to upload it.
    uploads: HashMap<FileId, Vec<u32>>,
    /// Per connection: the grant number it was last served at.
    last_served: HashMap<u64, u64>,
    grants: u64,
    uplink: Uplink,
    /// `--max-upload-rate` in bytes per second (else infinite).
    rate_cap: f64,
    choker: Choker,
    notices: Notices,
    conns: HashMap<u64, Conn>,
    next_rotation: Instant,
    /// Bytes written to each peer over the daemon's life, for the
    /// dashboard's per-peer rates.
    sent_to: HashMap<PeerId, u64>,
    /// Per file: the connections that asked for it, and when they last did.
    askers: HashMap<FileId, Vec<(u64, Instant)>>,
}

impl State {
    fn count_upload(&mut self, ask: &Ask) {
        let counts =
            (self.uploads.entry(ask.file)).or_insert_with(|| vec![0; ask.num_pieces as usize]);
        if let Some(c) = counts.get_mut(ask.piece.usize()) {
            *c = c.saturating_add(1);
        }
        self.grants += 1;
        self.last_served.insert(ask.conn, self.grants);
    }

    fn conn(&mut self, conn: u64, now: Instant) -> &mut Conn {
        self.conns.entry(conn).or_insert_with(|| Conn {
            peer: None,
            last_ask: now,
            asked: false,
            sent: 0,
            received_mark: 0,
            unwritten: 0,
        })
    }

    /// Notes that `conn` asks for `file`; forgets the file's askers idle
    /// for [`choke::IDLE`] (a connection that ends is forgotten at once).
    fn note_asker(&mut self, file: FileId, conn: u64, now: Instant) {
        let idle = |at: Instant| now.saturating_duration_since(at) >= choke::IDLE;
        let v = self.askers.entry(file).or_default();
        v.retain(|&(c, at)| c == conn || !idle(at));
        match v.iter_mut().find(|(c, _)| *c == conn) {
            Some(e) => e.1 = now,
            None => v.push((conn, now)),
        }
    }

    /// Whether more than one connection asks for `file` now: has requests
    /// for it waiting, or asked for it within [`choke::IDLE`].
    fn contested(&self, file: &FileId, now: Instant) -> bool {
        let recent = (self.askers.get(file).into_iter().flatten())
            .filter(|&&(_, at)| now.saturating_duration_since(at) < choke::IDLE)
            .map(|&(c, _)| c);
        let waiting = (self.entries.iter())
            .filter(|e| e.w.ask.file == *file)
            .map(|e| e.w.ask.conn);
        let mut first = None;
        recent.chain(waiting).any(|c| *first.get_or_insert(c) != c)
    }

    /// Applies one [`plan`]: answers the refused and the served request.
    /// Returns the bytes to pay for, if a request was served. The pacer
    /// settles the choked requests' waits just before.
    fn step(&mut self, inner: &Arc<Inner>, now: Instant) -> Option<u64> {
        let (late, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.first_copy && !self.never_uploaded(&e.w.ask));
        self.entries = kept;
        for e in late {
            let _ = e.tx.send(Admission::Choked);
        }
        loop {
            // Connections holding MAX_UNWRITTEN pieces wait for their writer.
            let full = |c: u64| (self.conns.get(&c)).is_some_and(|c| c.unwritten >= MAX_UNWRITTEN);
            let (mut regular, mut choked) = (Vec::new(), Vec::new());
            for (i, e) in self.entries.iter().enumerate() {
                if full(e.w.ask.conn) {
                    continue;
                }
                match e.wait_until {
                    None => regular.push(i),
                    Some(_) => choked.push(i),
                }
            }
            let p = self.plan_among(&regular, now);
            // No unchoked request can take the room: a waiting choked one
            // does (a spare upload). Its refusals are not applied: it is
            // refused only when its wait runs out.
            let spare = match p.serve {
                None => self.plan_among(&choked, now).serve.map(|i| choked[i]),
                Some(_) => None,
            };
            let mut take: Vec<(usize, bool)> =
                p.refuse.iter().map(|&i| (regular[i], false)).collect();
            take.extend(p.serve.map(|i| (regular[i], true)));
            take.extend(spare.map(|i| (i, true)));
            // Remove from the back so the indexes stay valid.
            take.sort_unstable_by_key(|t| std::cmp::Reverse(t.0));
            let mut paid = None;
            for (i, serve) in take {
                let e = self.entries.swap_remove(i);
                let a = e.w.ask;
                let answer = if serve {
                    Admission::Serve(Sending {
                        inner: inner.clone(),
                        conn: a.conn,
                        write: self.uplink.start(a.bytes, now),
                        bytes: a.bytes,
                        granted: now,
                        written: false,
                        armed: true,
                    })
                } else {
                    Admission::Busy
                };
                match e.tx.send(answer) {
                    Ok(()) => {
                        tracing::trace!(
                            piece = a.piece.get(),
                            conn = a.conn,
                            second = a.second,
                            serve,
                            choked = e.wait_until.is_some(),
                            "upload"
                        );
                        if serve {
                            self.count_upload(&a);
                            self.conn(a.conn, now).unwritten += 1;
                            paid = Some(a.bytes);
                        }
                    }
                    // A closed receiver is a request cancelled just now: it
                    // is neither counted nor paid for.
                    Err(Admission::Serve(mut s)) => {
                        s.armed = false;
                        self.uplink.finish(s.write, false, now);
                    }
                    Err(_) => {}
                }
            }
            if paid.is_some() || (p.serve.is_none() && spare.is_none()) {
                return paid;
            }
        }
    }

    /// [`plan`] among the entries at `idx`; its indexes are into `idx`.
    fn plan_among(&self, idx: &[usize], now: Instant) -> Plan {
        let waiting: Vec<Waiting> = idx.iter().map(|&i| self.entries[i].w).collect();
        // A file asked for by one connection only: arrival order.
        let mut files: Vec<(FileId, bool)> = Vec::new();
        for w in &waiting {
            if !files.iter().any(|(f, _)| *f == w.ask.file) {
                files.push((w.ask.file, self.contested(&w.ask.file, now)));
            }
        }
        let contested = |f: &FileId| files.iter().any(|(g, c)| g == f && *c);
        plan(
            &waiting,
            |f, i| {
                (self.uploads.get(f))
                    .filter(|_| contested(f))
                    .and_then(|c| c.get(i.usize()))
                    .copied()
                    .unwrap_or(0)
            },
            |c| self.last_served.get(&c).copied().unwrap_or(0),
        )
    }

    /// A choked request waits for a spare upload if its connection has
    /// fewer than [`MAX_CHOKED_WAITING`] waiting: until when.
    fn choked_slot(&self, conn: u64, now: Instant) -> Option<Instant> {
        let waiting = (self.entries.iter())
            .filter(|e| e.w.ask.conn == conn && e.wait_until.is_some())
            .count();
        let rate = self.uplink.rate().min(self.rate_cap);
        (waiting < MAX_CHOKED_WAITING).then(|| now + choke::choked_wait(rate))
    }

    /// Choked requests (waiting or first copies) of connections unchoked
    /// since become ordinary ones; those whose wait ran out are refused.
    fn settle_choked(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            let e = &mut self.entries[i];
            match e.wait_until {
                _ if self.choker.is_unchoked(e.w.ask.conn) => {
                    (e.wait_until, e.first_copy) = (None, false);
                }
                Some(t) if t <= now => {
                    expired.push(self.entries.swap_remove(i));
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        for e in expired {
            let a = e.w.ask;
            tracing::trace!(piece = a.piece.get(), conn = a.conn, "choked");
            let _ = e.tx.send(Admission::Choked);
        }
    }

    /// When the first waiting choked request's wait runs out.
    fn next_choked_deadline(&self) -> Option<Instant> {
        self.entries.iter().filter_map(|e| e.wait_until).min()
    }

    /// Whether this daemon never chose to upload the piece: its first copy
    /// goes to whoever asks, choked or not. A piece just verified here is
    /// often one few others have: its first copy doubles its holders, where
    /// a refusal would keep the requester from it for a second. Then
    /// choking applies again; further askers get it from its new holders.
    fn never_uploaded(&self, ask: &Ask) -> bool {
        (self.uploads.get(&ask.file))
            .and_then(|c| c.get(ask.piece.usize()))
            .is_none_or(|&n| n == 0)
    }

    /// Whether the uplink would idle now (the token bucket, if any, out of
    /// debt): it has room, and every waiting request's connection holds
    /// [`MAX_UNWRITTEN`] pieces. A choked request is then served too:
    /// choking keeps the uplink from being split too thin, and an idle
    /// uplink is split among nobody.
    fn spare(&mut self, now: Instant) -> bool {
        self.uplink.has_room(now)
            && (self.entries.iter()).all(|e| {
                (self.conns.get(&e.w.ask.conn)).is_some_and(|c| c.unwritten >= MAX_UNWRITTEN)
            })
    }

    /// Whether an unchoked connection still wants pieces.
    fn active(&self, conn: u64, now: Instant) -> bool {
        let recent = |c: &Conn| now.saturating_duration_since(c.last_ask) < choke::IDLE;
        self.entries.iter().any(|e| e.w.ask.conn == conn)
            || self.conns.get(&conn).is_some_and(recent)
    }
}

/// What [`Uploads`] and its [`Sending`] guards share.
struct Inner {
    /// What the pacer pays from with `--max-upload-rate`.
    bucket: Option<TokenBucket>,
    state: Mutex<State>,
    wake: Notify,
    /// Bytes received from a peer so far, over all files (tit-for-tat).
    received_from: Box<dyn Fn(&PeerId) -> u64 + Send + Sync>,
}

/// A served piece on its way out: it holds its room in the uplink's window
/// until dropped. Call [`Sending::written`] once the write returned.
pub struct Sending {
    inner: Arc<Inner>,
    conn: u64,
    write: u64,
    bytes: u64,
    /// When the scheduler chose it: what passes until its write starts is
    /// the daemon's own latency (reading the piece, waking its tasks).
    granted: Instant,
    written: bool,
    /// False for a grant nobody received (undone under the lock).
    armed: bool,
}

impl std::fmt::Debug for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sending({} bytes to {})", self.bytes, self.conn)
    }
}

impl Sending {
    /// When the scheduler chose this piece.
    pub fn granted(&self) -> Instant {
        self.granted
    }

    /// The connection's writer returned from writing the piece.
    pub fn written(mut self) {
        self.written = true;
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut guard = self.inner.state.lock();
        let st = &mut *guard;
        st.uplink.finish(self.write, self.written, Instant::now());
        if let Some(c) = st.conns.get_mut(&self.conn) {
            c.unwritten = c.unwritten.saturating_sub(1);
            if self.written {
                c.sent += self.bytes;
                if let Some(peer) = c.peer {
                    *st.sent_to.entry(peer).or_default() += self.bytes;
                }
            }
        }
        drop(guard);
        self.inner.wake.notify_one();
    }
}

/// The upload scheduler of one daemon, shared by every peer connection.
pub struct Uploads {
    inner: Arc<Inner>,
}

/// Removes a request from the queue when its future is dropped (cancelled).
struct Waiter<'a> {
    uploads: &'a Uploads,
    seq: u64,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        (self.uploads.inner.state.lock())
            .entries
            .retain(|e| e.w.seq != self.seq);
    }
}

impl Uploads {
    /// With `rate` bytes per second (bursts of `burst` bytes) or no rate
    /// limit; `received_from(peer)` is the bytes received from a peer so
    /// far, over all files, for tit-for-tat.
    pub fn new(
        rate: Option<u64>,
        burst: u64,
        received_from: impl Fn(&PeerId) -> u64 + Send + Sync + 'static,
    ) -> Self {
        let now = Instant::now();
        Uploads {
            inner: Arc::new(Inner {
                bucket: rate.map(|r| TokenBucket::new(r, burst)),
                state: Mutex::new(State {
                    entries: Vec::new(),
                    next_seq: 0,
                    uploads: HashMap::new(),
                    last_served: HashMap::new(),
                    grants: 0,
                    uplink: Uplink::new(now),
                    rate_cap: rate.map_or(f64::INFINITY, |r| r as f64),
                    choker: Choker::default(),
                    notices: Notices::default(),
                    conns: HashMap::new(),
                    next_rotation: now + choke::ROTATE,
                    sent_to: HashMap::new(),
                    askers: HashMap::new(),
                }),
                wake: Notify::new(),
                received_from: Box::new(received_from),
            }),
        }
    }

    /// Connection `conn` is from `peer` (its handshake said so).
    pub fn connected(&self, conn: u64, peer: PeerId) {
        let mut st = self.inner.state.lock();
        st.conn(conn, Instant::now()).peer = Some(peer);
    }

    /// Waits for this request's turn. Dropping the future withdraws it.
    pub async fn admit(&self, ask: Ask) -> Admission {
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut st = self.inner.state.lock();
            let now = Instant::now();
            let c = st.conn(ask.conn, now);
            c.last_ask = now;
            c.asked = true;
            let mut first_copy = false;
            let mut wait_until = None;
            st.note_asker(ask.file, ask.conn, now);
            if !st.choker.is_unchoked(ask.conn) {
                let mut choker = std::mem::take(&mut st.choker);
                let unchoked = choker.try_unchoke(ask.conn, |c| st.active(c, now));
                st.choker = choker;
                st.notices.publish(&st.choker);
                if !unchoked && !st.never_uploaded(&ask) {
                    let paid =
                        (self.inner.bucket.as_ref()).is_none_or(|b| b.until_paid().is_zero());
                    if paid && st.spare(now) {
                        tracing::trace!(piece = ask.piece.get(), conn = ask.conn, "spare upload");
                    } else if let Some(t) = st.choked_slot(ask.conn, now) {
                        wait_until = Some(t);
                        tracing::trace!(piece = ask.piece.get(), conn = ask.conn, "choked wait");
                    } else {
                        tracing::trace!(piece = ask.piece.get(), conn = ask.conn, "choked");
                        return Admission::Choked;
                    }
                } else if !unchoked {
                    first_copy = true;
                    tracing::trace!(
                        piece = ask.piece.get(),
                        conn = ask.conn,
                        "first copy while choked"
                    );
                }
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            st.entries.push(Entry {
                w: Waiting { ask, seq },
                tx,
                first_copy,
                wait_until,
            });
            seq
        };
        let _waiter = Waiter { uploads: self, seq };
        self.inner.wake.notify_one();
        // The pacer only drops a sender after answering it, or when it
        // stops, and then nothing is served any more.
        rx.await.unwrap_or(Admission::Busy)
    }

    /// The connection ended: its turn and its slot are not kept.
    pub fn forget_conn(&self, conn: u64) {
        let mut st = self.inner.state.lock();
        st.last_served.remove(&conn);
        st.conns.remove(&conn);
        st.choker.forget(conn);
        st.notices.forget(conn);
        st.askers.retain(|_, v| {
            v.retain(|&(c, _)| c != conn);
            !v.is_empty()
        });
    }

    /// Whether `conn` is unchoked, each time it changes.
    pub fn watch_choke(&self, conn: u64) -> tokio::sync::watch::Receiver<bool> {
        let st = &mut *self.inner.state.lock();
        st.notices.watch(conn, &st.choker)
    }

    /// Bytes written to each peer so far, over every file.
    pub fn sent_to(&self) -> Vec<(PeerId, u64)> {
        let st = self.inner.state.lock();
        st.sent_to.iter().map(|(p, b)| (*p, *b)).collect()
    }

    /// The measured upload rate in bytes per second (0: not yet).
    pub fn measured_rate(&self) -> f64 {
        self.inner.state.lock().uplink.rate()
    }

    /// The measured rate and `--max-upload-rate` (else infinite), bytes/s.
    pub fn rates(&self) -> (f64, f64) {
        let st = self.inner.state.lock();
        (st.uplink.rate(), st.rate_cap)
    }

    /// The pacer: while the daemon runs, serves one request at a time as
    /// the uplink's window (and the bucket, if any) allows, and rotates
    /// the unchoked connections.
    pub async fn run(&self, shutdown: CancellationToken) {
        let inner = &self.inner;
        loop {
            if let Some(bucket) = &inner.bucket {
                let wait = bucket.until_paid();
                if !wait.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
            let bytes = loop {
                self.rotate_if_due();
                let (served, until) = {
                    let mut st = inner.state.lock();
                    let now = Instant::now();
                    st.settle_choked(now);
                    let served = if st.uplink.has_room(now) {
                        let s = st.step(inner, now);
                        if s.is_none() {
                            tracing::trace!(in_flight = st.uplink.in_flight(), "upload idle");
                        }
                        s
                    } else {
                        None
                    };
                    let until = [st.uplink.next_stall(), st.next_choked_deadline()]
                        .into_iter()
                        .flatten()
                        .fold(st.next_rotation, Instant::min);
                    (served, until)
                };
                if let Some(b) = served {
                    break b;
                }
                tokio::select! {
                    () = inner.wake.notified() => {}
                    () = tokio::time::sleep_until(until) => {}
                    () = shutdown.cancelled() => return self.release_all(),
                }
            };
            if let Some(bucket) = &inner.bucket {
                bucket.charge(bytes);
            }
        }
        self.release_all();
    }

    /// Chooses the unchoked connections again once [`choke::ROTATE`] has
    /// passed; the requests of those it chokes wait on as choked ones
    /// (`MAX_CHOKED_WAITING` each), the others are refused.
    fn rotate_if_due(&self) {
        let peers: Vec<(u64, Option<PeerId>)> = {
            let st = self.inner.state.lock();
            if Instant::now() < st.next_rotation {
                return;
            }
            st.conns.iter().map(|(&c, v)| (c, v.peer)).collect()
        };
        // Asked outside the lock: it reads every swarm's counters.
        let received: Vec<(u64, u64)> = (peers.into_iter())
            .map(|(c, p)| (c, p.map_or(0, |p| (self.inner.received_from)(&p))))
            .collect();
        let mut st = self.inner.state.lock();
        let now = Instant::now();
        st.next_rotation = now + choke::ROTATE;
        let waiting: Vec<u64> = st.entries.iter().map(|e| e.w.ask.conn).collect();
        let candidates: Vec<Candidate> = (received.iter())
            .filter_map(|&(conn, total)| {
                let waiting = waiting.contains(&conn);
                let c = st.conns.get_mut(&conn)?;
                let cand = Candidate {
                    conn,
                    interested: c.asked || waiting,
                    received: total.saturating_sub(c.received_mark),
                    sent: c.sent,
                };
                c.received_mark = total;
                c.asked = false;
                c.sent = 0;
                Some(cand)
            })
            .collect();
        let choked = st.choker.rotate(&candidates);
        st.notices.publish(&st.choker);
        if !choked.is_empty() {
            tracing::trace!(?choked, unchoked = ?st.choker.unchoked().collect::<Vec<_>>(), "choke rotation");
        }
        let mut gone = Vec::new();
        for mut e in std::mem::take(&mut st.entries) {
            let conn = e.w.ask.conn;
            if choked.contains(&conn) && e.wait_until.is_none() && !e.first_copy {
                match st.choked_slot(conn, now) {
                    Some(t) => e.wait_until = Some(t),
                    None => {
                        gone.push(e);
                        continue;
                    }
                }
            }
            st.entries.push(e);
        }
        drop(st);
        for e in gone {
            let _ = e.tx.send(Admission::Choked);
        }
    }

    /// On shutdown: every waiting request is answered (no task waits on).
    fn release_all(&self) {
        let gone = std::mem::take(&mut self.inner.state.lock().entries);
        for e in gone {
            let _ = e.tx.send(Admission::Busy);
        }
    }
}

#[cfg(test)]
#[path = "upload_scheduler_tests.rs"]
mod tests;
