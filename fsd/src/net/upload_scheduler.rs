//! The order in which a rate-limited uploader serves piece requests.
//!
//! With `--max-upload-rate`, this daemon's upload is the scarce resource of
//! every swarm it seeds. Serving requests in arrival order would send the
//! same piece to every reader that asked for it at about the same time (all
//! readers of a new file want much the same pieces from its one source), and
//! a swarm would be no faster than a single server. So requests wait in one
//! queue, and each time the token bucket can pay for one more piece the
//! pacer chooses among all of them ([`plan`]):
//! 1. the piece this daemon has uploaded fewest times (a second ask after a
//!    refusal counts as never uploaded): every piece leaves once before any
//!    leaves twice, so the readers hold different pieces and trade them;
//! 2. then the connection served longest ago, so requesters share the
//!    upload evenly and their measured rates, hence their request windows,
//!    stay alike;
//! 3. then arrival order.
//!
//! A first ask for a piece already uploaded is answered `Busy` while an ask
//! for a never-uploaded piece waits: the requester fetches it from the peer
//! it went to, which is about to offer it, or asks again later and is then
//! served. A refusal frees the requester's slot at once instead of leaving
//! it stuck behind fresher work, and the upload never idles for a refusal:
//! there is always a fresher request to serve instead.
//!
//! Tokens are taken only when a request is chosen, so a request cancelled
//! while it waits (its piece arrived from another peer) costs no upload.
//! Without a rate limit nothing queues: every request is served at once.

use crate::net::token_bucket::TokenBucket;
use fileshare_protocol::FileId;
use parking_lot::Mutex;
use std::collections::HashMap;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// What a request may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the piece; its bytes are paid for.
    Serve,
    /// Refused for now: this piece just went to another peer while
    /// never-uploaded pieces wait.
    Busy,
}

/// One piece request as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The asking connection (any id unique among live connections).
    pub conn: u64,
    pub file: FileId,
    pub piece: u32,
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
    uploads: impl Fn(&FileId, u32) -> u32,
    last_served: impl Fn(u64) -> u64,
) -> Plan {
    let rank = |w: &Waiting| {
        if w.ask.second {
            0
        } else {
            uploads(&w.ask.file, w.ask.piece)
        }
    };
    let fresh = waiting.iter().any(|w| rank(w) == 0);
    let mut out = Plan::default();
    let mut best: Option<(u32, u64, u64)> = None;
    for (i, w) in waiting.iter().enumerate() {
        let r = rank(w);
        if fresh && r > 0 {
            out.refuse.push(i);
            continue;
        }
        let key = (r, last_served(w.ask.conn), w.seq);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
            out.serve = Some(i);
        }
    }
    out
}

struct Entry {
    w: Waiting,
    tx: oneshot::Sender<Decision>,
}

#[derive(Default)]
struct Queue {
    entries: Vec<Entry>,
    next_seq: u64,
    /// Per file, per piece: times this daemon chose to upload it.
    uploads: HashMap<FileId, Vec<u32>>,
    /// Per connection: the grant number it was last served at.
    last_served: HashMap<u64, u64>,
    grants: u64,
}

impl Queue {
    fn count_upload(&mut self, ask: &Ask) {
        let counts = self
            .uploads
            .entry(ask.file)
            .or_insert_with(|| vec![0; ask.num_pieces as usize]);
        if let Some(c) = counts.get_mut(ask.piece as usize) {
            *c = c.saturating_add(1);
        }
        self.grants += 1;
        self.last_served.insert(ask.conn, self.grants);
    }

    /// Applies one [`plan`]: answers the refused and the served request.
    /// Returns the bytes to pay for, if a request was served.
    fn step(&mut self) -> Option<u64> {
        loop {
            let waiting: Vec<Waiting> = self.entries.iter().map(|e| e.w).collect();
            let p = plan(
                &waiting,
                |f, i| {
                    (self.uploads.get(f))
                        .and_then(|c| c.get(i as usize))
                        .copied()
                        .unwrap_or(0)
                },
                |c| self.last_served.get(&c).copied().unwrap_or(0),
            );
            let mut take: Vec<(usize, Decision)> =
                p.refuse.iter().map(|&i| (i, Decision::Busy)).collect();
            take.extend(p.serve.map(|i| (i, Decision::Serve)));
            // Remove from the back so the indexes stay valid.
            take.sort_unstable_by_key(|t| std::cmp::Reverse(t.0));
            let mut paid = None;
            for (i, d) in take {
                let e = self.entries.swap_remove(i);
                // A closed receiver is a request cancelled just now: it is
                // neither counted nor paid for.
                if e.tx.send(d).is_ok() {
                    let a = &e.w.ask;
                    tracing::trace!(piece = a.piece, conn = a.conn, second = a.second, decision = ?d, "upload");
                    if d == Decision::Serve {
                        self.count_upload(a);
                        paid = Some(a.bytes);
                    }
                }
            }
            if paid.is_some() || p.serve.is_none() {
                return paid;
            }
        }
    }
}

/// The upload scheduler of one daemon, shared by every peer connection.
pub struct Uploads {
    /// What the pacer pays from; `None` without a rate limit.
    bucket: Option<TokenBucket>,
    queue: Mutex<Queue>,
    wake: Notify,
}

/// Removes a request from the queue when its future is dropped (cancelled).
struct Waiter<'a> {
    uploads: &'a Uploads,
    seq: u64,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.uploads
            .queue
            .lock()
            .entries
            .retain(|e| e.w.seq != self.seq);
    }
}

impl Uploads {
    /// `rate` bytes per second with bursts of `burst` bytes, or unlimited.
    pub fn new(rate: Option<u64>, burst: u64) -> Self {
        Uploads {
            bucket: rate.map(|r| TokenBucket::new(r, burst)),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        }
    }

    /// Waits for this request's turn. Dropping the future withdraws it.
    pub async fn admit(&self, ask: Ask) -> Decision {
        if self.bucket.is_none() {
            return Decision::Serve;
        }
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut q = self.queue.lock();
            let seq = q.next_seq;
            q.next_seq += 1;
            q.entries.push(Entry {
                w: Waiting { ask, seq },
                tx,
            });
            seq
        };
        let _waiter = Waiter { uploads: self, seq };
        self.wake.notify_one();
        // The pacer only drops a sender after answering it, or when it
        // stops, and then nothing is paid for any more.
        rx.await.unwrap_or(Decision::Serve)
    }

    /// The connection ended: its turn is not remembered any more.
    pub fn forget_conn(&self, conn: u64) {
        self.queue.lock().last_served.remove(&conn);
    }

    /// The pacer: while the daemon runs, pays for one request at a time as
    /// the bucket allows. Without a rate limit it returns at once.
    pub async fn run(&self, shutdown: CancellationToken) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        loop {
            let wait = bucket.until_paid();
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => break,
                }
            }
            let bytes = loop {
                if let Some(b) = self.queue.lock().step() {
                    break b;
                }
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = shutdown.cancelled() => return self.release_all(),
                }
            };
            bucket.charge(bytes);
        }
        self.release_all();
    }

    /// On shutdown: every waiting request is answered, so no connection
    /// task waits forever.
    fn release_all(&self) {
        for e in self.queue.lock().entries.drain(..) {
            let _ = e.tx.send(Decision::Busy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn ask(conn: u64, piece: u32) -> Ask {
        Ask {
            conn,
            file: FileId([1; 32]),
            piece,
            num_pieces: 64,
            bytes: 1000,
            second: false,
        }
    }

    fn waiting(asks: &[Ask]) -> Vec<Waiting> {
        (asks.iter().enumerate())
            .map(|(i, &ask)| Waiting { ask, seq: i as u64 })
            .collect()
    }

    #[test]
    fn never_uploaded_pieces_first_and_stale_first_asks_refused() {
        // Pieces 0 and 1 went out once already; piece 2 never did.
        let w = waiting(&[ask(1, 0), ask(2, 1), ask(3, 2), ask(4, 0)]);
        let uploads = |_: &FileId, p: u32| u32::from(p < 2);
        let p = plan(&w, uploads, |_| 0);
        assert_eq!(p.serve, Some(2));
        assert_eq!(p.refuse, vec![0, 1, 3]);
    }

    #[test]
    fn a_second_ask_counts_as_fresh() {
        let mut w = waiting(&[ask(1, 0), ask(2, 5)]);
        w[0].ask.second = true;
        let uploads = |_: &FileId, p: u32| u32::from(p == 0);
        let p = plan(&w, uploads, |_| 0);
        assert_eq!(p.serve, Some(0), "earlier and as fresh as piece 5");
        assert!(p.refuse.is_empty());
    }

    #[test]
    fn nothing_refused_without_fresher_work() {
        // Everything went out once or twice: the least uploaded is served,
        // nothing is refused, so the upload never idles.
        let w = waiting(&[ask(1, 0), ask(2, 1), ask(3, 0)]);
        let uploads = |_: &FileId, p: u32| if p == 0 { 2 } else { 1 };
        let p = plan(&w, uploads, |_| 0);
        assert_eq!(
            p,
            Plan {
                serve: Some(1),
                refuse: vec![]
            }
        );
        assert_eq!(plan(&[], uploads, |_| 0), Plan::default());
    }

    #[test]
    fn connections_take_turns() {
        // Connection 1 asked first for two pieces, but was just served.
        let w = waiting(&[ask(1, 0), ask(1, 1), ask(2, 2)]);
        let last = |c: u64| if c == 1 { 5 } else { 3 };
        assert_eq!(plan(&w, |_, _| 0, last).serve, Some(2));
        // Same turn: arrival order.
        assert_eq!(plan(&w, |_, _| 0, |_| 0).serve, Some(0));
    }

    proptest::proptest! {
        /// Each plan answers distinct requests, serves one whenever any
        /// waits, serves a least-uploaded one, and refuses only first asks
        /// of uploaded pieces while a fresh request waits.
        #[test]
        fn plans_are_sound(
            asks in proptest::collection::vec((0u64..3, 0u32..6, proptest::bool::weighted(0.25)), 0..8),
            counts in proptest::collection::vec(0u32..3, 6),
            turns in proptest::collection::vec(0u64..4, 3),
        ) {
            let asks: Vec<Ask> = (asks.iter())
                .map(|&(conn, piece, second)| Ask { second, ..ask(conn, piece) })
                .collect();
            let w = waiting(&asks);
            let p = plan(&w, |_, i| counts[i as usize], |c| turns[usize::try_from(c).unwrap_or(0)]);
            let rank = |i: usize| if asks[i].second { 0 } else { counts[asks[i].piece as usize] };
            let n = asks.len();
            proptest::prop_assert_eq!(p.serve.is_some(), n > 0);
            if let Some(s) = p.serve {
                proptest::prop_assert!(!p.refuse.contains(&s));
                proptest::prop_assert!((0..n).all(|i| p.refuse.contains(&i) || rank(i) >= rank(s)));
            }
            for &r in &p.refuse {
                proptest::prop_assert!(rank(r) > 0 && (0..n).any(|i| rank(i) == 0));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_requests_cost_no_upload() {
        // 1000 B/s with a 1-byte burst: each 1000-byte piece puts the
        // bucket a second into debt, so later requests wait their turn.
        let up = Arc::new(Uploads::new(Some(1000), 1));
        let shutdown = CancellationToken::new();
        let pacer = tokio::spawn({
            let (up, s) = (up.clone(), shutdown.clone());
            async move { up.run(s).await }
        });
        let admit = |a: Ask| {
            let up = up.clone();
            tokio::spawn(async move { up.admit(a).await })
        };
        let start = tokio::time::Instant::now();
        assert_eq!(admit(ask(1, 0)).await.unwrap(), Decision::Serve);
        // While the pacer waits out that second: a never-uploaded piece is
        // asked for, then a first ask for piece 0, which already went out.
        let fresh = admit(ask(2, 1));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let again = admit(ask(3, 0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The fresh request is cancelled (its piece came from elsewhere):
        // it leaves the queue, so it neither costs a second of upload nor
        // turns the other request away as `Busy` in favour of itself.
        fresh.abort();
        assert_eq!(again.await.unwrap(), Decision::Serve);
        let took = start.elapsed();
        assert!(took < Duration::from_millis(1500), "{took:?}");
        shutdown.cancel();
        pacer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_piece_goes_out_once_while_others_wait() {
        let up = Arc::new(Uploads::new(Some(1000), 1000));
        let shutdown = CancellationToken::new();
        // Queue everything before the pacer runs: four readers ask for
        // piece 0, one for piece 1.
        let asks = [ask(1, 0), ask(2, 0), ask(3, 0), ask(4, 0), ask(5, 1)];
        let tasks: Vec<_> = (asks.iter().copied())
            .map(|a| {
                let up = up.clone();
                tokio::spawn(async move { up.admit(a).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let pacer = tokio::spawn({
            let (up, s) = (up.clone(), shutdown.clone());
            async move { up.run(s).await }
        });
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        use Decision::{Busy, Serve};
        assert_eq!(got, vec![Serve, Busy, Busy, Busy, Serve]);
        shutdown.cancel();
        pacer.await.unwrap();
    }
}
