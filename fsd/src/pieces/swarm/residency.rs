//! The residency half of [`Swarm`]'s transitions (a child of `swarm/mod.rs`,
//! over the same state and lock; see `STATE.md`): pieces entering the
//! store verified, reads of verified bytes that count as uses, and
//! eviction, which takes a piece out of `have` and punches its hole.
//!
//! Lock order: the file's hole lock ([`StoredFile::read_guard`] or
//! [`StoredFile::punch_guard`]), then the swarm's state. A piece's bytes
//! are read or written only under the read guard with its bit checked or
//! set there; a hole is punched only under the punch guard after the bit
//! was cleared there, so no reader ever sees a punched piece as verified.

use super::{tick, FetchLinkId, Offer, PieceState, Swarm, MAX_WINDOWS, WINDOW_TTL};
use crate::store::{StoreError, StoredFile};
use fileshare_protocol::{Bitfield, PieceIndex};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The pieces a reader reads and reads ahead: kept from eviction.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) first: u32,
    pub(super) last: u32,
    pub(super) at: Instant,
}

/// Why [`Swarm::read_range`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("not every piece of the range is verified here")]
    Missing,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Swarm::evict`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub pieces: Vec<PieceIndex>,
    pub bytes: u64,
    /// The file was complete before.
    pub was_complete: bool,
}

impl Swarm {
    /// Stores a verified piece and marks it verified: the bytes are
    /// written (and logged) under the file's read guard, so no eviction
    /// punches them meanwhile. Returns the bytes newly held.
    pub fn store_verified(
        &self,
        key: FetchLinkId,
        piece: PieceIndex,
        data: &[u8],
    ) -> Result<u64, StoreError> {
        let _guard = self.file.read_guard();
        self.file.write_piece(piece, data)?;
        let new = self.mark_hash_ok(key, piece, data.len() as u64);
        Ok(if new { data.len() as u64 } else { 0 })
    }

    /// A verified piece could not be stored (`errno`: the disk is full, or
    /// failed): the readers waiting for it fail at once with `errno`, it
    /// is no longer wanted (the next read asks again), and the link is
    /// free to ask for others. The link stays up.
    pub fn piece_unstorable(&self, key: FetchLinkId, piece: PieceIndex, errno: i32) {
        let piece = piece.get();
        self.last_store_errno.store(errno, Ordering::Release);
        self.store_failures.fetch_add(1, Ordering::Release);
        let mut st = self.state.lock();
        if let Some(l) = st.links.iter_mut().find(|l| l.key == key) {
            l.in_flight.retain(|&p| p != piece);
        }
        if st.have.get(piece) {
            return;
        }
        st.wanted.clear(piece);
        if let Some(waiters) = st.waiters.remove(&piece) {
            for w in waiters {
                let _ = w.send(Err(errno));
            }
        }
        self.schedule(&mut st);
    }

    /// Calls `f` with the bytes `[offset, offset+len)` if every piece under
    /// them is verified ([`RangeError::Missing`] otherwise), under the
    /// file's read guard so no eviction punches them meanwhile; `f` is
    /// where a FUSE reply takes them (mapped, not copied: see
    /// [`crate::store::StoredFile::with_range`]). The read counts as a use
    /// of those pieces, and the window `read_ahead` pieces past it is kept
    /// from eviction.
    pub fn read_range<R>(
        &self,
        offset: u64,
        len: u64,
        read_ahead: u32,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RangeError> {
        let _guard = self.file.read_guard();
        {
            let layout = self.file.layout;
            let mut st = self.state.lock();
            let mut range = layout.pieces_for_range(offset, len);
            if !range.all(|p| st.have.get(p.get())) {
                return Err(RangeError::Missing);
            }
            let now = tick();
            let (mut first, mut last) = (None, None);
            for p in layout.pieces_for_range(offset, len) {
                first.get_or_insert(p.get());
                last = Some(p.get());
                if let Some(t) = st.last_read.get_mut(p.usize()) {
                    *t = now;
                }
            }
            if let (Some(first), Some(last)) = (first, last) {
                st.awaited.retain(|&(p, _)| p < first || p > last);
            }
            if let (Some(first), Some(last)) = (first, last) {
                let end = last
                    .saturating_add(read_ahead)
                    .min(layout.num_pieces().saturating_sub(1));
                note_window(&mut st, first, end, Instant::now());
            }
        }
        Ok(self
            .file
            .with_range(offset, usize::try_from(len).unwrap_or(0), f)?)
    }

    /// One whole verified piece for a peer (`None` if it is not held),
    /// read like [`Swarm::read_range`] but not counted as a use.
    pub fn read_piece(&self, piece: PieceIndex) -> Option<Result<Vec<u8>, StoreError>> {
        let _guard = self.file.read_guard();
        if !self.state.lock().have.get(piece.get()) {
            return None;
        }
        Some(self.file.read_piece(piece))
    }

    /// A `download-file` job needs every piece: none is evicted until
    /// [`Swarm::unpin`].
    pub fn pin(&self) {
        self.state.lock().pins += 1;
    }

    pub fn unpin(&self) {
        let mut st = self.state.lock();
        st.pins = st.pins.saturating_sub(1);
    }

    /// The pieces eviction may take, each with when it was last read:
    /// verified, outside every reader's window, and the file not pinned.
    pub fn evictable(&self) -> Vec<(u64, PieceIndex)> {
        let now = Instant::now();
        let mut st = self.state.lock();
        st.windows
            .retain(|w| now.saturating_duration_since(w.at) < WINDOW_TTL);
        st.awaited
            .retain(|&(_, at)| now.saturating_duration_since(at) < WINDOW_TTL);
        if st.pins > 0 {
            return Vec::new();
        }
        (st.have.ones())
            .filter(|&i| !in_window(&st, i))
            .filter_map(|i| self.index(i))
            .map(|p| (st.last_read.get(p.usize()).copied().unwrap_or(0), p))
            .collect()
    }

    /// Evicts `pieces` (chosen from [`Swarm::evictable`]): they are
    /// durably recorded lost, then, under the file's punch guard, those
    /// still evictable leave `have` and `wanted`, subscribers are told, and
    /// their holes are punched. The others are recorded held again.
    pub fn evict(&self, pieces: &[PieceIndex]) -> Result<Evicted, StoreError> {
        if pieces.is_empty() {
            return Ok(Evicted::default());
        }
        self.file.record_lost(pieces)?;
        let mut out = Evicted::default();
        let mut kept = Vec::new();
        {
            let _guard = self.file.punch_guard();
            {
                let mut st = self.state.lock();
                out.was_complete = st.have.is_full();
                for &p in pieces {
                    let i = p.get();
                    if !st.have.get(i) {
                        continue;
                    }
                    if st.pins > 0 || in_window(&st, i) {
                        kept.push(p);
                        continue;
                    }
                    st.have.clear(i);
                    st.wanted.clear(i);
                    out.bytes += self.file.layout.piece_size(p);
                    out.pieces.push(p);
                }
                (self.held).fetch_sub(out.bytes, Ordering::Relaxed);
                if !out.pieces.is_empty() {
                    let _ = self.haves.send(Offer::Lost);
                }
            }
            if let Err(e) = self.file.punch(&out.pieces) {
                tracing::warn!(file = %self.file.meta.name, "cannot free evicted pieces: {e:#}");
            }
        }
        if !kept.is_empty() {
            self.file.record_kept(&kept)?;
        }
        Ok(out)
    }
}

/// Bytes of the pieces of `have`.
pub(super) fn bytes_of(file: &StoredFile, have: &Bitfield) -> u64 {
    (have.ones())
        .filter_map(|i| file.layout.validate(i))
        .map(|p| file.layout.piece_size(p))
        .sum()
}

/// Records that a reader is at `first..=last`: a window it overlaps is
/// moved there (a sequential reader's window moves along with it), else a
/// new one replaces the oldest past [`MAX_WINDOWS`].
pub(super) fn note_window(st: &mut PieceState, first: u32, last: u32, now: Instant) {
    if let Some(w) = (st.windows.iter_mut())
        .find(|w| first <= w.last.saturating_add(1) && last.saturating_add(1) >= w.first)
    {
        w.first = w.first.max(first).min(last);
        w.last = w.last.max(last);
        w.at = now;
        return;
    }
    if st.windows.len() >= MAX_WINDOWS {
        if let Some(oldest) = (st.windows.iter().enumerate())
            .min_by_key(|(_, w)| w.at)
            .map(|(i, _)| i)
        {
            st.windows.swap_remove(oldest);
        }
    }
    st.windows.push(Window {
        first,
        last,
        at: now,
    });
}

/// Whether a reader needs `piece`: it is in a reader's window, or arrived
/// for a reader that has not read it yet.
fn in_window(st: &PieceState, piece: u32) -> bool {
    st.windows
        .iter()
        .any(|w| w.first <= piece && piece <= w.last)
        || st.awaited.iter().any(|&(p, _)| p == piece)
}
