//! The cache budget (`fsd mount --cache-size`): the pieces of files fetched
//! from others are kept within it, evicted least recently read first, one
//! piece at a time, whenever storing a piece would pass it. Files this user
//! shared are never evicted and do not count.
//!
//! What may go is the swarms' to say ([`Swarm::evictable`]): verified
//! pieces outside every reader's window (the pieces a read waits for and
//! its read-ahead), of files no `download-file` job holds. So a file larger
//! than the budget streams: the pieces behind the reader go, the ones ahead
//! stay, and the store stays within the budget plus one read window (the
//! read-ahead is at most half the budget).
//!
//! Storing a piece goes through here too ([`Cache::store`]): room is made
//! first; a full disk evicts whatever may go, budget or not, and tries once
//! more; a piece that still cannot be stored fails the reads waiting for it
//! at once, and the link that brought it stays up.

use crate::pieces::registry::Registry;
use crate::pieces::swarm::{FetchLinkId, Swarm, READ_AHEAD_PIECES};
use fileshare_protocol::{PieceIndex, PIECE_LEN};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far below the budget an eviction goes, so that the next pieces
/// stored need none: a sixteenth of the budget, at most 64 pieces (each
/// eviction looks at every fetched piece held, so large caches evict in
/// larger batches).
fn batch(budget: u64) -> u64 {
    (budget / 16).min(64 * PIECE_LEN)
}

/// At most one line per this interval about pieces that cannot be stored.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Cache {
    budget: u64,
    registry: Arc<Registry>,
    /// Bytes of verified pieces of fetched files; recounted from the swarms
    /// by [`Cache::recount`], adjusted in between.
    used: AtomicU64,
    /// One eviction at a time.
    evicting: Mutex<()>,
    /// Pieces were evicted since the last announce: the trackers should
    /// hear the true bitfields.
    shrank: AtomicBool,
    /// Fetched files that were complete until an eviction: this user is no
    /// longer a full holder of them.
    incomplete: Mutex<Vec<Arc<Swarm>>>,
    last_failure_log: Mutex<Option<Instant>>,
}

impl Cache {
    pub fn new(budget: u64, registry: Arc<Registry>) -> Cache {
        Cache {
            budget,
            registry,
            used: AtomicU64::new(0),
            evicting: Mutex::new(()),
            shrank: AtomicBool::new(false),
            incomplete: Mutex::new(Vec::new()),
            last_failure_log: Mutex::new(None),
        }
    }

    /// The budget and the bytes of fetched pieces held now.
    pub fn usage(&self) -> (u64, u64) {
        (self.budget, self.used.load(Ordering::Relaxed))
    }

    /// The read-ahead a reader may have, in pieces: at most half the budget.
    pub fn max_read_ahead(&self) -> u32 {
        let half = self.budget / PIECE_LEN / 2;
        u32::try_from(half)
            .unwrap_or(u32::MAX)
            .clamp(1, READ_AHEAD_PIECES)
    }

    /// Counts the fetched pieces held again, from the swarms.
    pub fn recount(&self) {
        let used = (self.registry.all().iter())
            .filter(|s| s.file.is_fetched())
            .map(|s| s.held_bytes())
            .sum();
        self.used.store(used, Ordering::Relaxed);
    }

    /// Whether pieces were evicted since the last call.
    pub fn take_shrank(&self) -> bool {
        self.shrank.swap(false, Ordering::AcqRel)
    }

    /// Fetched files an eviction made incomplete, since the last call.
    pub fn take_incomplete(&self) -> Vec<Arc<Swarm>> {
        std::mem::take(&mut *self.incomplete.lock())
    }

    /// Stores a verified piece of `swarm`, making room as needed. Returns
    /// whether it is stored; if not, the swarm's readers of it have failed
    /// with the cause (blocking: call it on the blocking pool).
    pub fn store(&self, swarm: &Swarm, key: FetchLinkId, piece: PieceIndex, data: &[u8]) -> bool {
        let fetched = swarm.file.is_fetched();
        let len = data.len() as u64;
        if fetched {
            self.make_room(len);
        }
        let mut result = swarm.store_verified(key, piece, data);
        if matches!(&result, Err(e) if e.is_no_space()) && self.free(len + batch(self.budget)) > 0 {
            result = swarm.store_verified(key, piece, data);
        }
        match result {
            Ok(added) => {
                if fetched {
                    self.used.fetch_add(added, Ordering::Relaxed);
                }
                true
            }
            Err(e) => {
                swarm.piece_unstorable(key, piece, e.errno());
                let mut last = self.last_failure_log.lock();
                if last.is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(file = %swarm.file.meta.name, piece = piece.get(), "cannot store a verified piece; its readers fail: {e:#}");
                }
                false
            }
        }
    }

    /// Evicts until `bytes` more fit in the budget (and a batch more).
    pub fn make_room(&self, bytes: u64) {
        if self.used.load(Ordering::Relaxed).saturating_add(bytes) <= self.budget {
            return;
        }
        let _one = self.evicting.lock();
        let used = self.used.load(Ordering::Relaxed);
        let target = self.budget.saturating_sub(bytes + batch(self.budget));
        if used.saturating_add(bytes) > self.budget {
            self.evict(used.saturating_sub(target));
        }
    }

    /// The disk is full: evicts at least `bytes` of fetched pieces if that
    /// many may go, whatever the budget. Returns the bytes freed.
    pub fn free(&self, bytes: u64) -> u64 {
        let _one = self.evicting.lock();
        self.evict(bytes)
    }

    /// Evicts the least recently read pieces that may go until `bytes` are
    /// freed or none is left. Call it under `evicting`.
    fn evict(&self, bytes: u64) -> u64 {
        let swarms: Vec<Arc<Swarm>> = (self.registry.all().into_iter())
            .filter(|s| s.file.is_fetched() && !s.cancel.is_cancelled())
            .collect();
        let mut candidates: Vec<(u64, usize, PieceIndex)> = Vec::new();
        for (n, s) in swarms.iter().enumerate() {
            candidates.extend(s.evictable().into_iter().map(|(t, p)| (t, n, p)));
        }
        // The oldest that may be enough, in order.
        let enough = usize::try_from(bytes.div_ceil(PIECE_LEN)).unwrap_or(usize::MAX);
        if enough < candidates.len() {
            candidates.select_nth_unstable(enough);
            candidates.truncate(enough + 1);
        }
        candidates.sort_unstable();
        let mut chosen: Vec<Vec<PieceIndex>> = vec![Vec::new(); swarms.len()];
        let mut planned = 0u64;
        for (_, n, p) in candidates {
            if planned >= bytes {
                break;
            }
            planned += swarms[n].file.layout.piece_size(p);
            chosen[n].push(p);
        }
        let mut freed = 0;
        for (swarm, pieces) in swarms.iter().zip(chosen) {
            if pieces.is_empty() {
                continue;
            }
            match swarm.evict(&pieces) {
                Ok(e) => {
                    freed += e.bytes;
                    tracing::debug!(file = %swarm.file.meta.name, pieces = e.pieces.len(), "evicted");
                    if e.was_complete && !e.pieces.is_empty() {
                        self.incomplete.lock().push(swarm.clone());
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %swarm.file.meta.name, "cannot evict pieces: {e:#}")
                }
            }
        }
        if freed > 0 {
            self.shrank.store(true, Ordering::Release);
            let _ = (self.used).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(freed))
            });
        }
        freed
    }
}
