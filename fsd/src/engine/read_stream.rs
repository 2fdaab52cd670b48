//! One open file's reads: what the FUSE layer holds for each open of a
//! shared file, instead of the swarm. The stream owns the read-ahead window
//! (it starts small, so the first read's pieces are not queued behind
//! read-ahead traffic, grows with every sequential read and is dropped by a
//! seek) and wakes the swarm's discovery when its reads want pieces. Each
//! read answers once: on the caller's thread when its pieces are here
//! ([`ReadNow::Done`]), else after they arrive ([`PendingRead::finish`]),
//! in both cases with the store's bytes mapped, not copied.

use crate::engine::{Engine, EngineError};
use crate::pieces::swarm::{PieceWait, RangeError, Swarm, READ_AHEAD_PIECES};
use fileshare_protocol::{PieceIndex, PIECE_LEN};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Read-ahead, in pieces, after the first sequential read.
const FIRST_READ_AHEAD: u32 = 4;

/// How much the read-ahead grows with each further sequential read. The
/// kernel sends a reader's first reads before any of them is answered, so
/// the window reaches every peer (a few requests each) by the second read
/// and its full size by the third: a cold read pulls from all its peers
/// from the start instead of waiting for the first pieces to arrive.
const READ_AHEAD_GROWTH: u32 = 4;

/// How far from where the last read ended a read still counts as
/// sequential: the kernel's own read-ahead sends several reads at once.
const SEQUENTIAL_SLACK: u64 = 4 * PIECE_LEN;

pub struct ReadStream {
    engine: Arc<Engine>,
    swarm: Arc<Swarm>,
    /// Where the last read ended.
    next: AtomicU64,
    /// The read-ahead window, in pieces.
    ahead: AtomicU32,
}

/// What a read did.
pub enum ReadNow<A> {
    /// Answered on the caller's thread: every piece was here, or the read
    /// failed.
    Done,
    /// Some pieces must arrive first: finish it in a task.
    Wait(PendingRead<A>),
}

/// A read waiting for pieces, with what answers it.
pub struct PendingRead<A> {
    engine: Arc<Engine>,
    swarm: Arc<Swarm>,
    offset: u64,
    len: u32,
    read_ahead: u32,
    answer: A,
}

impl ReadStream {
    pub(super) fn new(engine: Arc<Engine>, swarm: Arc<Swarm>) -> ReadStream {
        ReadStream {
            engine,
            swarm,
            next: AtomicU64::new(0),
            ahead: AtomicU32::new(0),
        }
    }

    /// Answers a read of `[offset, offset+len)` with `answer`, once. Verified
    /// pieces are answered here, on the calling thread (a FUSE thread: no
    /// task hop), straight from the store's pages (no copy through this
    /// process); the read-ahead window moves on.
    pub fn read<A>(&self, offset: u64, len: u32, answer: A) -> ReadNow<A>
    where
        A: FnOnce(Result<&[u8], EngineError>),
    {
        let read_ahead = self.window(offset, len);
        let swarm = &self.swarm;
        let mut answer = Some(answer);
        let read = swarm.read_range(offset, u64::from(len), read_ahead, |data| {
            if let Some(a) = answer.take() {
                a(Ok(data));
            }
        });
        match read {
            Ok(()) => {
                if read_ahead > 0 && !swarm.is_complete() {
                    // The scheduling step is cheap and never blocks.
                    let _ = swarm.acquire_range(offset, u64::from(len), read_ahead);
                    if swarm.needs_pieces() {
                        self.engine.ensure_discovery(swarm);
                    }
                }
                ReadNow::Done
            }
            Err(RangeError::Store(e)) => {
                tracing::warn!(file = %swarm.file.meta.name, "read failed: {e:#}");
                if let Some(a) = answer.take() {
                    a(Err(e.into()));
                }
                ReadNow::Done
            }
            Err(RangeError::Missing) => match answer.take() {
                Some(answer) => ReadNow::Wait(PendingRead {
                    engine: self.engine.clone(),
                    swarm: swarm.clone(),
                    offset,
                    len,
                    read_ahead,
                    answer,
                }),
                None => ReadNow::Done,
            },
        }
    }

    /// The read-ahead for a read at `offset`: grown if it follows the last
    /// one, none after a seek; never more than the cache budget allows.
    fn window(&self, offset: u64, len: u32) -> u32 {
        let prev = self.next.swap(offset + u64::from(len), Ordering::Relaxed);
        let sequential = offset == 0 || offset.abs_diff(prev) <= SEQUENTIAL_SLACK;
        if !sequential {
            self.ahead.store(0, Ordering::Relaxed);
            return 0;
        }
        let grown = self
            .ahead
            .load(Ordering::Relaxed)
            .saturating_mul(READ_AHEAD_GROWTH);
        let window = grown.clamp(FIRST_READ_AHEAD, READ_AHEAD_PIECES);
        self.ahead.store(window, Ordering::Relaxed);
        window.min(self.engine.cache.max_read_ahead())
    }
}

impl<A> PendingRead<A>
where
    A: FnOnce(Result<&[u8], EngineError>),
{
    /// Waits for the read's pieces, then answers it from them. Fails at
    /// once with the cause when a piece it waits for cannot be stored, when
    /// the user leaves the group, or after the read timeout. The answer
    /// runs in this task: the pieces were just written, so their pages are
    /// in memory and mapping them does not wait for the disk.
    pub async fn finish(self) {
        let PendingRead {
            engine,
            swarm,
            offset,
            len,
            read_ahead,
            answer,
        } = self;
        let mut answer = Some(answer);
        let deadline = Instant::now() + engine.read_timeout;
        // A piece may be evicted again between its arrival and the read
        // only once its window expired: then it is waited for again.
        let failed = async {
            loop {
                let waits = swarm.acquire_range(offset, u64::from(len), read_ahead);
                if !waits.is_empty() || read_ahead > 0 {
                    engine.ensure_discovery(&swarm);
                }
                if !waits.is_empty() {
                    engine.wait_pieces(&swarm, waits, deadline).await?;
                }
                let read = swarm.read_range(offset, u64::from(len), read_ahead, |data| {
                    if let Some(a) = answer.take() {
                        a(Ok(data));
                    }
                });
                match read {
                    Ok(()) => return Ok(()),
                    Err(RangeError::Store(e)) => return Err(EngineError::from(e)),
                    Err(RangeError::Missing) if Instant::now() >= deadline => {
                        return Err(EngineError::Timeout {
                            missing: Vec::new(),
                            secs: engine.read_timeout.as_secs(),
                        })
                    }
                    Err(RangeError::Missing) => {}
                }
            }
        }
        .await;
        if let (Err(e), Some(a)) = (failed, answer.take()) {
            a(Err(e));
        }
    }
}

impl Engine {
    /// Waits for the pieces of a read until `deadline`.
    async fn wait_pieces(
        &self,
        swarm: &Swarm,
        waits: Vec<(PieceIndex, PieceWait)>,
        deadline: Instant,
    ) -> Result<(), EngineError> {
        let pieces: Vec<PieceIndex> = waits.iter().map(|(p, _)| *p).collect();
        let all = async {
            for (piece, rx) in waits {
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(errno)) => return Err(EngineError::Unstorable { piece, errno }),
                    Err(_) => return Err(EngineError::ShuttingDown),
                }
            }
            Ok(())
        };
        // No peer serves a user who left the group: refuse at once.
        let all = async {
            tokio::select! {
                r = all => r,
                e = self.tracker.membership_lost(&swarm.file.group) => {
                    Err(EngineError::Tracker(e))
                }
            }
        };
        match tokio::time::timeout_at(deadline, all).await {
            Ok(Err(e @ EngineError::Tracker(_))) => {
                swarm.forget_closed_waiters();
                Err(e)
            }
            Ok(r) => r,
            Err(_) => {
                swarm.forget_closed_waiters();
                let missing: Vec<PieceIndex> = pieces
                    .into_iter()
                    .filter(|&p| swarm.still_needed(p))
                    .collect();
                tracing::warn!(
                    file = %swarm.file.meta.name,
                    ?missing,
                    "read failed: no peer served these pieces within {} s",
                    self.read_timeout.as_secs()
                );
                Err(EngineError::Timeout {
                    missing,
                    secs: self.read_timeout.as_secs(),
                })
            }
        }
    }
}
