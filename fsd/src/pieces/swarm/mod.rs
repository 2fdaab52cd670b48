//! One file's piece state and the peers it is fetched from: the single owner
//! of which pieces are verified, wanted, in flight and awaited.
//!
//! Every transition runs under the one lock and ends with the scheduling
//! step, which asks the pure picker for requests and hands them to the peer
//! links' queues (never blocking). See `STATE.md` beside this file.
//!
//! It also keeps what eviction needs (when each piece was last read, and
//! the windows readers are in) and is where a piece enters and leaves the
//! store: [`Swarm::store_verified`] and [`Swarm::evict`].

use crate::pieces::arriving::{Arrival, Arrivals};
use crate::pieces::picker::{self, PeerView, PickInput};
use crate::store::StoredFile;
use fileshare_protocol::{Bitfield, PeerId, PieceIndex};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Names one fetch link (this daemon fetching the swarm's file from one
/// peer) inside the swarm: given by [`Swarm::add_link`], never reused
/// within the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FetchLinkId(u64);

/// Requests in flight to one peer at most: 16 x 512 KiB covers the time a
/// piece spends on the wire and in verification on a fast link.
pub const SLOTS_PER_PEER: u32 = 16;

/// Requests in flight to a peer whose rate is not measured yet.
pub const INITIAL_SLOTS: u32 = 4;

/// How much of a peer's measured rate is kept in flight to it: enough to
/// cover a round trip and a verification, little enough that a request
/// waits at most about this long in a busy uploader's queue. Deep queues at
/// a rate-limited peer would commit pieces to it long before they are sent,
/// so other peers could not fetch them meanwhile, and a reader's whole file
/// would sit in its peers' queues at once.
pub const PIPELINE: Duration = Duration::from_millis(500);

/// A peer's rate is sampled over at least this long.
pub const RATE_SAMPLE: Duration = Duration::from_millis(200);

/// How long a piece refused `Busy` by a peer is not asked of it again: the
/// peer has just sent it to someone else, who offers it within this time.
pub const BUSY_DEFER: Duration = Duration::from_secs(1);

/// A request is *late* when its peer has delivered nothing for this long
/// (and for three times what the requests ahead of it and itself take at
/// the peer's measured rate), counted from when it was asked or from the
/// peer's last piece, whichever is later: a peer working through a queue
/// at its rate is on time, however long the queue; one that stops is not.
/// A link not measured yet is taken to go at the file's other links' mean
/// rate. Only late pieces are asked of a second peer in the end game (the
/// picker's rule 5), and only those a reader is blocked on or, near the
/// end of the file ([`END_GAME_PIECES`]), any: a duplicate whose cancel
/// comes too late costs that peer a piece of upload, the swarm's scarce
/// resource, so pieces on their way are left alone; one stuck at a slow
/// peer is fetched elsewhere.
pub const LATE_MIN: Duration = Duration::from_secs(1);

/// However slow the peer, a request in flight this long is late.
pub const LATE_MAX: Duration = Duration::from_secs(3);

/// Missing pieces at most for any late piece to be duplicated; before,
/// only those a reader is blocked on are.
pub const END_GAME_PIECES: u32 = 8;

/// Missing pieces at most for requests to be moved from long queues to
/// idle peers (the picker's rule 7): the tail of a read, where a queue
/// longer than the others would hold the last pieces up while the other
/// peers idle. Earlier, the reader's read-ahead keeps every peer busy.
pub const MOVE_PIECES: u32 = 32;

/// Near the end of the file ([`END_GAME_PIECES`]) a request is late after
/// this instead of [`LATE_MIN`]: a last piece holds its reader up, and
/// there are few of them to duplicate.
pub const END_LATE_MIN: Duration = Duration::from_millis(250);

/// Newly verified pieces a subscriber may fall behind by before it is sent
/// the whole bitfield again.
const HAVE_BACKLOG: usize = 1024;

/// What the swarm tells a fetch link to ask of its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchCmd {
    /// Ask the peer for this piece.
    Request(PieceIndex),
    /// The piece arrived from another peer: cancel the request for it.
    Cancel(PieceIndex),
    /// The link gave nothing for a while: close it for another peer.
    Close,
}

/// Bad pieces a peer may send before it is dropped for this file.
pub const MAX_FAILURES: u32 = 3;

/// Pieces past the read position fetched ahead of a sequential reader.
pub const READ_AHEAD_PIECES: u32 = 64;

/// How long a reader's window is kept from eviction after its last read.
pub const WINDOW_TTL: Duration = Duration::from_secs(30);

/// Reader windows remembered per file; the oldest goes first.
const MAX_WINDOWS: usize = 16;

/// What a subscription is told: one more verified piece, one more piece
/// arriving (passed on as it comes), or that some were evicted (it sends
/// the whole bitfield again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Have(PieceIndex),
    Receiving(PieceIndex),
    Lost,
}

/// A reader's wait for one piece: `Err(errno)` when the piece arrived but
/// could not be stored.
pub type PieceWait = oneshot::Receiver<Result<(), i32>>;

/// The order of reads, daemon-wide: a larger tick is a later read.
static CLOCK: AtomicU64 = AtomicU64::new(1);

fn tick() -> u64 {
    CLOCK.fetch_add(1, Ordering::Relaxed)
}

/// What this daemon fetched from one peer address, kept after the link
/// ends so users can read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCounters {
    pub bytes: u64,
    pub pieces: u64,
    pub failures: u32,
}

struct PieceState {
    /// Invariant: a bit is set only after the piece's SHA-256 matched and
    /// its bytes are in the store.
    have: Bitfield,
    /// Pieces to fetch even with no reader waiting (read-ahead, downloads).
    wanted: Bitfield,
    /// Readers blocked on a piece. Invariant: no key is in `have`.
    waiters: BTreeMap<u32, Vec<oneshot::Sender<Result<(), i32>>>>,
    /// When each piece was last read or stored ([`tick`]): eviction takes
    /// the smallest first.
    last_read: Vec<u64>,
    /// Where readers are: pieces in a window are never evicted.
    windows: Vec<Window>,
    /// Pieces that arrived for a waiting reader, until it reads them (or
    /// [`WINDOW_TTL`] passes): never evicted.
    awaited: Vec<(u32, Instant)>,
    /// `download-file` jobs that need every piece: none is evicted.
    pins: u32,
    links: Vec<FetchLink>,
    next_key: FetchLinkId,
    counters: HashMap<String, PeerCounters>,
    /// Peers dropped after sending bad pieces; never linked again.
    banned: Vec<PeerId>,
    /// Peers a link is being set up to (not in `links` yet).
    connecting: Vec<PeerId>,
    /// Verified bytes received from each peer (tit-for-tat, uploads).
    received: HashMap<PeerId, u64>,
}

/// Outcome of a received piece that failed verification.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    KeepPeer,
    DropPeer,
}

pub struct Swarm {
    pub file: Arc<StoredFile>,
    state: Mutex<PieceState>,
    /// Every piece verified or evicted here, for the peers subscribed to
    /// this file.
    haves: broadcast::Sender<Offer>,
    /// Bytes of the pieces in `have`, for the cache's budget.
    held: AtomicU64,
    /// Pieces that arrived verified but could not be stored, and the errno
    /// of the last one.
    store_failures: AtomicU64,
    last_store_errno: std::sync::atomic::AtomicI32,
    seed: u64,
    /// Ends the swarm's discovery and link tasks.
    pub cancel: CancellationToken,
    /// Wakes the discovery task when a reader needs pieces.
    discover: tokio::sync::Notify,
    /// Set while a discovery task runs for this swarm.
    discovering: std::sync::atomic::AtomicBool,
    /// Bytes of this file sent to peers.
    pub uploaded: std::sync::atomic::AtomicU64,
    /// Bytes of pieces that arrived after another copy was verified (end
    /// game, or a cancel that came too late): what the swarm wasted on us.
    pub duplicate_bytes: std::sync::atomic::AtomicU64,
    /// The file's peers beside the piece state: linked, and heard of.
    pub peers: PeerBook,
    /// Pieces arriving in parts, passed on to peers before they are whole.
    pub arrivals: Arrivals,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Swarm({:?})", self.file)
    }
}

impl Swarm {
    pub fn new(
        file: Arc<StoredFile>,
        have: Bitfield,
        seed: u64,
        cancel: CancellationToken,
    ) -> Self {
        let n = file.layout.num_pieces();
        let held = bytes_of(&file, &have);
        Swarm {
            file,
            state: Mutex::new(PieceState {
                have,
                wanted: Bitfield::new(n),
                waiters: BTreeMap::new(),
                last_read: vec![0; n as usize],
                windows: Vec::new(),
                awaited: Vec::new(),
                pins: 0,
                links: Vec::new(),
                next_key: FetchLinkId(1),
                counters: HashMap::new(),
                banned: Vec::new(),
                connecting: Vec::new(),
                received: HashMap::new(),
            }),
            haves: broadcast::channel(HAVE_BACKLOG).0,
            held: AtomicU64::new(held),
            store_failures: AtomicU64::new(0),
            last_store_errno: std::sync::atomic::AtomicI32::new(0),
            seed,
            cancel,
            discover: tokio::sync::Notify::new(),
            discovering: std::sync::atomic::AtomicBool::new(false),
            uploaded: std::sync::atomic::AtomicU64::new(0),
            duplicate_bytes: std::sync::atomic::AtomicU64::new(0),
            peers: PeerBook::default(),
            arrivals: Arrivals::default(),
        }
    }

    /// A piece started arriving in parts: registered for relaying (unless
    /// another link brings it already) and offered to subscribed peers.
    pub fn start_arrival(&self, piece: PieceIndex) -> Option<Arrival> {
        let len = usize::try_from(self.file.layout.piece_size(piece)).ok()?;
        let arrival = self.arrivals.start(piece, len)?;
        let _ = self.haves.send(Offer::Receiving(piece));
        Some(arrival)
    }

    /// Wakes this swarm's discovery task; true if none runs and the caller
    /// is to start one (it then runs until [`Swarm::discovery_ended`]).
    pub fn wake_discovery(&self) -> bool {
        self.discover.notify_one();
        !self.discovering.swap(true, Ordering::AcqRel)
    }

    /// Resolves when a reader wakes discovery.
    pub async fn discovery_woken(&self) {
        self.discover.notified().await
    }

    /// The discovery task is done; true if it must go on after all (a
    /// reader that needs pieces arrived meanwhile and started none).
    pub fn discovery_ended(&self) -> bool {
        self.discovering.store(false, Ordering::Release);
        let done = self.cancel.is_cancelled() || self.is_complete() || !self.needs_pieces();
        !done && !self.discovering.swap(true, Ordering::AcqRel)
    }

    pub fn have(&self) -> Bitfield {
        self.state.lock().have.clone()
    }

    pub fn has(&self, piece: PieceIndex) -> bool {
        self.state.lock().have.get(piece.get())
    }

    pub fn is_complete(&self) -> bool {
        self.state.lock().have.is_full()
    }

    /// Whether every piece of the byte range is verified.
    pub fn has_range(&self, offset: u64, len: u64) -> bool {
        let st = self.state.lock();
        self.file
            .layout
            .pieces_for_range(offset, len)
            .all(|p| st.have.get(p.get()))
    }

    /// Whether some wanted or awaited piece is still missing.
    pub fn needs_pieces(&self) -> bool {
        let st = self.state.lock();
        !st.waiters.is_empty() || st.wanted.ones().any(|i| !st.have.get(i))
    }

    /// Pieces verified or evicted from now on, for a peer's subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Offer> {
        self.haves.subscribe()
    }

    /// Bytes of the verified pieces held.
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Pieces that could not be stored so far.
    pub fn store_failures(&self) -> u64 {
        self.store_failures.load(Ordering::Acquire)
    }

    /// Why the last piece could not be stored (an errno), 0 if none was.
    pub fn last_store_errno(&self) -> i32 {
        self.last_store_errno.load(Ordering::Acquire)
    }

    /// A link to `peer` is being set up; false if there is one already (or
    /// the peer is banned). Each `true` is ended by [`Swarm::connect_ended`].
    pub fn connect_started(&self, peer: PeerId) -> bool {
        let mut st = self.state.lock();
        let taken = st.links.iter().any(|l| l.peer == peer)
            || st.banned.contains(&peer)
            || st.connecting.contains(&peer);
        if !taken {
            st.connecting.push(peer);
        }
        !taken
    }

    /// The link task started by [`Swarm::connect_started`] ended.
    pub fn connect_ended(&self, peer: &PeerId) {
        self.state.lock().connecting.retain(|p| p != peer);
    }

    /// Links up or being set up.
    pub fn links(&self) -> usize {
        let st = self.state.lock();
        st.links.len() + st.connecting.len()
    }

    /// Registers waiters for the missing pieces of a read and marks the
    /// read-ahead window wanted. Returns what to await; empty when every
    /// piece is already here.
    pub fn acquire_range(
        &self,
        offset: u64,
        len: u64,
        read_ahead: u32,
    ) -> Vec<(PieceIndex, PieceWait)> {
        let layout = self.file.layout;
        let mut st = self.state.lock();
        let mut out = Vec::new();
        let mut first = None;
        let mut last = None;
        for p in layout.pieces_for_range(offset, len) {
            first.get_or_insert(p.get());
            last = Some(p.get());
            if !st.have.get(p.get()) {
                let (tx, rx) = oneshot::channel();
                st.waiters.entry(p.get()).or_default().push(tx);
                out.push((p, rx));
            }
        }
        if let (Some(first), Some(last)) = (first, last) {
            let end = last
                .saturating_add(read_ahead)
                .min(layout.num_pieces().saturating_sub(1));
            for i in last + 1..=end {
                st.wanted.set(i);
            }
            note_window(&mut st, first, end, Instant::now());
        }
        if !out.is_empty() || read_ahead > 0 {
            self.schedule(&mut st);
        }
        out
    }

    /// Wants every piece (a whole-file download or a finished read).
    pub fn want_all(&self) {
        let mut st = self.state.lock();
        st.wanted = Bitfield::full(self.file.layout.num_pieces());
        self.schedule(&mut st);
    }

    /// Adds a connected peer with its bitfield; returns its key and the queue
    /// of pieces to request from it, or `None` if the peer is banned.
    pub fn add_link(
        &self,
        peer: PeerId,
        addr: String,
        have: Bitfield,
    ) -> Option<(FetchLinkId, mpsc::UnboundedReceiver<FetchCmd>)> {
        let mut st = self.state.lock();
        st.connecting.retain(|p| *p != peer);
        if st.banned.contains(&peer) || st.links.iter().any(|l| l.peer == peer) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let key = st.next_key;
        st.next_key = FetchLinkId(key.0 + 1);
        tracing::info!(file = %self.file.meta.name, peer = %addr, pieces = have.count(), "peer joined");
        st.links.push(FetchLink::new(key, peer, addr, have, tx));
        self.schedule(&mut st);
        Some((key, rx))
    }

    /// A fresher bitfield from a peer.
    pub fn update_have(&self, key: FetchLinkId, have: Bitfield) {
        let mut st = self.state.lock();
        if let Some(l) = st.links.iter_mut().find(|l| l.key == key) {
            if l.have != have {
                l.offer = have.clone();
                for &(p, _) in &l.deferred {
                    l.offer.clear(p);
                }
                l.have = have;
                self.schedule(&mut st);
            }
        }
    }

    /// The peer verified one more piece (its subscription said so).
    pub fn add_have(&self, key: FetchLinkId, piece: PieceIndex) {
        let piece = piece.get();
        let mut st = self.state.lock();
        let Some(l) = st.links.iter_mut().find(|l| l.key == key) else {
            return;
        };
        if l.have.get(piece) {
            return;
        }
        l.have.set(piece);
        if !l.deferred.iter().any(|&(p, _)| p == piece) {
            l.offer.set(piece);
        }
        let needed =
            !st.have.get(piece) && (st.wanted.get(piece) || st.waiters.contains_key(&piece));
        if needed {
            self.schedule(&mut st);
        }
    }

    /// The peer refused `piece` as `Busy` (it just sent it to someone
    /// else, or it chokes us): the slot is free, and the piece is not asked
    /// of this peer for [`BUSY_DEFER`], so it comes from someone else. A
    /// peer that chokes us refuses every piece at once, so within a few
    /// round trips it is asked nothing until the deferrals expire.
    pub fn piece_busy(&self, key: FetchLinkId, piece: PieceIndex) {
        let piece = piece.get();
        let mut st = self.state.lock();
        if let Some(l) = st.links.iter_mut().find(|l| l.key == key) {
            tracing::trace!(piece, peer = %l.addr, "busy");
            l.forget(piece);
            l.offer.clear(piece);
            l.deferred.retain(|&(p, _)| p != piece);
            l.deferred.push((piece, Instant::now() + BUSY_DEFER));
        }
        self.schedule(&mut st);
    }

    /// The peer of link `key` chokes us (`on`) or unchokes us.
    pub fn choked(&self, key: FetchLinkId, on: bool) {
        let mut st = self.state.lock();
        let Some(l) = st.links.iter_mut().find(|l| l.key == key) else {
            return;
        };
        if std::mem::replace(&mut l.choked, on) != on {
            tracing::trace!(peer = %l.addr, on, "choked");
            self.schedule(&mut st);
        }
    }

    /// Verified bytes received from `peer` so far.
    pub fn received_from(&self, peer: &PeerId) -> u64 {
        self.state.lock().received.get(peer).copied().unwrap_or(0)
    }

    /// The link's periodic tick: pieces deferred long enough may be asked
    /// of the peer again.
    pub fn tick(&self, key: FetchLinkId) {
        self.tick_at(key, Instant::now());
    }

    fn tick_at(&self, key: FetchLinkId, now: Instant) {
        let mut st = self.state.lock();
        let typical = typical_rate(&st.links);
        let Some(l) = st.links.iter_mut().find(|l| l.key == key) else {
            return;
        };
        let before = l.deferred.len();
        let FetchLink {
            deferred,
            offer,
            have,
            ..
        } = l;
        deferred.retain(|&(p, until)| {
            let keep = until > now;
            if !keep && have.get(p) {
                offer.set(p);
            }
            keep
        });
        let late = (0..l.in_flight.len()).any(|pos| l.late(pos, now, END_LATE_MIN, typical));
        if l.deferred.len() != before || late {
            self.schedule_at(&mut st, now);
        }
    }

    /// Part of `piece` arrived on link `key`: the link delivers, and that
    /// request is not late while its parts keep coming (a piece passed on
    /// as it arrives upstream comes no faster than it arrives there).
    pub fn part_arrived(&self, key: FetchLinkId, piece: PieceIndex) {
        let mut st = self.state.lock();
        if let Some(l) = st.links.iter_mut().find(|l| l.key == key) {
            let now = Instant::now();
            l.last_piece = Some(now);
            if let Some(i) = l.in_flight.iter().position(|&p| p == piece.get()) {
                l.asked_at[i] = now;
            }
        }
    }

    /// Release: the link is gone; its requests go back to the pool.
    pub fn release_link(&self, key: FetchLinkId) {
        let mut st = self.state.lock();
        if let Some(pos) = st.links.iter().position(|l| l.key == key) {
            let l = st.links.remove(pos);
            tracing::info!(file = %self.file.meta.name, peer = %l.addr, "peer left");
            self.schedule(&mut st);
        }
    }

    /// The peer no longer has `piece` (or refused it): ask elsewhere.
    pub fn piece_unavailable(&self, key: FetchLinkId, piece: PieceIndex) {
        let piece = piece.get();
        let mut st = self.state.lock();
        if let Some(l) = st.links.iter_mut().find(|l| l.key == key) {
            l.forget(piece);
            l.have.clear(piece);
            l.offer.clear(piece);
        }
        self.schedule(&mut st);
    }

    /// A piece arrived that was not wanted from this link any more: logged
    /// with why, so a trace tells which rule asked for the copy.
    pub fn count_duplicate(&self, key: FetchLinkId, piece: PieceIndex, why: Waste, bytes: u64) {
        if tracing::enabled!(tracing::Level::TRACE) {
            let st = self.state.lock();
            let peer = st
                .links
                .iter()
                .find(|l| l.key == key)
                .map(|l| l.addr.as_str());
            let have = st.have.get(piece.get());
            tracing::trace!(piece = piece.get(), peer, ?why, have, "duplicate");
        }
        (self.duplicate_bytes).fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `piece` is still worth receiving (not already verified).
    pub fn still_needed(&self, piece: PieceIndex) -> bool {
        !self.state.lock().have.get(piece.get())
    }

    /// Hash ok: the piece is in the store. Wakes its readers, offers it to
    /// subscribed peers, and frees every link's request for it: end-game
    /// duplicates at other peers are cancelled, so they cost those peers
    /// no upload if they have not sent them yet.
    /// Returns whether the piece is newly verified.
    pub fn mark_hash_ok(&self, key: FetchLinkId, index: PieceIndex, bytes: u64) -> bool {
        let piece = index.get();
        let mut st = self.state.lock();
        if st.have.get(piece) {
            return false;
        }
        st.have.set(piece);
        (self.held).fetch_add(self.file.layout.piece_size(index), Ordering::Relaxed);
        if let Some(t) = st.last_read.get_mut(index.usize()) {
            *t = tick();
        }
        let _ = self.haves.send(Offer::Have(index));
        let done_by = st.links.iter().position(|l| l.key == key);
        let cancel = picker::cancellations(piece, done_by.unwrap_or(usize::MAX), &views(&st));
        for r in cancel {
            tracing::trace!(piece, peer = %st.links[r.peer].addr, "cancel");
            let _ = st.links[r.peer].tx.send(FetchCmd::Cancel(index));
        }
        let now = Instant::now();
        let mut addr = None;
        for l in st.links.iter_mut() {
            l.forget(piece);
            if l.key == key {
                l.measure(bytes, now);
                addr = Some((l.addr.clone(), l.peer));
            }
        }
        if let Some((addr, peer)) = addr {
            *st.received.entry(peer).or_default() += bytes;
            tracing::trace!(piece, peer = %addr, "verified");
            let c = st.counters.entry(addr).or_default();
            c.bytes += bytes;
            c.pieces += 1;
        }
        if let Some(waiters) = st.waiters.remove(&piece) {
            for w in waiters {
                let _ = w.send(Ok(()));
            }
            // Kept from eviction until its reader has read it.
            st.awaited.push((piece, Instant::now()));
        }
        self.schedule(&mut st);
        true
    }

    /// Hash failed: the piece goes back to the pool; after
    /// [`MAX_FAILURES`] the peer is banned from this file.
    pub fn mark_hash_failed(&self, key: FetchLinkId, piece: PieceIndex) -> Verdict {
        let piece = piece.get();
        let mut st = self.state.lock();
        let Some(pos) = st.links.iter().position(|l| l.key == key) else {
            return Verdict::DropPeer;
        };
        st.links[pos].forget(piece);
        st.links[pos].have.clear(piece);
        st.links[pos].offer.clear(piece);
        let addr = st.links[pos].addr.clone();
        let peer = st.links[pos].peer;
        let c = st.counters.entry(addr.clone()).or_default();
        c.failures += 1;
        let failures = c.failures;
        tracing::warn!(file = %self.file.meta.name, peer = %addr, piece, failures, "piece failed verification");
        let verdict = if failures >= MAX_FAILURES {
            tracing::warn!(file = %self.file.meta.name, peer = %addr, "dropping peer after {failures} bad pieces");
            st.banned.push(peer);
            st.links.remove(pos);
            Verdict::DropPeer
        } else {
            Verdict::KeepPeer
        };
        self.schedule(&mut st);
        verdict
    }

    /// Drops the waiters whose readers gave up.
    pub fn forget_closed_waiters(&self) {
        let mut st = self.state.lock();
        st.waiters.retain(|_, v| {
            v.retain(|tx| !tx.is_closed());
            !v.is_empty()
        });
    }

    /// A piece of the file by its number in the swarm's bitfields, which
    /// all have the file's length: the state keeps plain numbers, what
    /// leaves the swarm names pieces of its file.
    fn index(&self, piece: u32) -> Option<PieceIndex> {
        self.file.layout.validate(piece)
    }

    /// The scheduling step: asks the picker what to request and queues it.
    fn schedule(&self, st: &mut PieceState) {
        self.schedule_at(st, Instant::now());
    }

    fn schedule_at(&self, st: &mut PieceState, now: Instant) {
        if st.links.is_empty() {
            return;
        }
        let urgent: Vec<u32> = st.waiters.keys().copied().collect();
        let n = self.file.layout.num_pieces();
        let end = n - st.have.count() <= END_GAME_PIECES;
        let least = if end { END_LATE_MIN } else { LATE_MIN };
        let mut late = Bitfield::new(n);
        let typical = typical_rate(&st.links);
        for l in &st.links {
            for (pos, &p) in l.in_flight.iter().enumerate() {
                if (end || st.waiters.contains_key(&p)) && l.late(pos, now, least, typical) {
                    late.set(p);
                }
            }
        }
        let peers = views(st);
        let requests = picker::pick(&PickInput {
            num_pieces: n,
            have: &st.have,
            wanted: &st.wanted,
            urgent: &urgent,
            peers: &peers,
            seed: self.seed,
            max_duplicates: 2,
            late: &late,
        });
        drop(peers);
        for r in requests {
            // The picker chose it from bitfields of the file's length.
            let (Some(link), Some(piece)) = (st.links.get_mut(r.peer), self.index(r.piece)) else {
                continue;
            };
            if link.tx.send(FetchCmd::Request(piece)).is_ok() {
                tracing::trace!(piece = r.piece, peer = %link.addr, "request");
                link.ask(r.piece, now);
            }
        }
        if n - st.have.count() <= MOVE_PIECES {
            self.move_requests(st, &urgent, &late, now);
        }
    }

    /// The picker's rule 7 on the queues as they are after a schedule.
    fn move_requests(&self, st: &mut PieceState, urgent: &[u32], late: &Bitfield, now: Instant) {
        let peers = views(st);
        let moves = picker::moves(&PickInput {
            num_pieces: self.file.layout.num_pieces(),
            have: &st.have,
            wanted: &st.wanted,
            urgent,
            peers: &peers,
            seed: self.seed,
            max_duplicates: 2,
            late,
        });
        drop(peers);
        for m in moves {
            let Some(piece) = self.index(m.piece) else {
                continue;
            };
            if st.links[m.to].tx.send(FetchCmd::Request(piece)).is_err() {
                continue;
            }
            let from = &mut st.links[m.from];
            tracing::trace!(piece = m.piece, peer = %from.addr, "move");
            from.forget(m.piece);
            let _ = from.tx.send(FetchCmd::Cancel(piece));
            let to = &mut st.links[m.to];
            tracing::trace!(piece = m.piece, peer = %to.addr, "request");
            to.ask(m.piece, now);
        }
    }
}

/// What the picker sees of each link, in `links` order.
fn views(st: &PieceState) -> Vec<PeerView<'_>> {
    (st.links.iter())
        .map(|l| PeerView {
            have: &l.offer,
            complete: l.have.is_full(),
            free_slots: l.free_slots(),
            in_flight: &l.in_flight,
            rate: l.rate,
            choked: l.choked,
        })
        .collect()
}

mod fetch_link;
pub mod peer_book;
mod residency;
pub mod rotation;
mod view;
pub use fetch_link::Waste;
use fetch_link::{typical_rate, FetchLink};
use peer_book::PeerBook;
use residency::{bytes_of, note_window, Window};
pub use residency::{Evicted, RangeError};
pub use view::{FetchLinkView, SwarmView};

#[cfg(test)]
mod tests;
