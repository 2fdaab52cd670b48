//! Pieces on their way in, passed on while they arrive.
//!
//! A piece that comes in parts (`PeerReply::Part`) is registered here for
//! as long as it arrives, so that the peer server can pass its bytes on to
//! peers who ask for it before it is whole, as a cut-through switch
//! forwards a frame: on slow links a 512 KiB piece then costs each hop
//! about one part's time instead of the whole piece's.
//!
//! Nothing here is verified, and nothing here is stored, offered as had or
//! read: that waits for the piece's SHA-256 (`pieces::verify`). What it
//! changes is only when a piece's bytes leave for the next peer. A relay
//! ends with the piece's last frame once the piece verified here
//! ([`Progress::Verified`]); if it failed (wrong bytes, or the peer it
//! came from went away) the relay ends in `NotAvailable` instead, so every
//! daemon downstream drops what it got and blames nobody: only the daemon
//! that received a *finished* piece whose hash did not match blames the
//! peer that sent it.
//!
//! One arrival per piece is registered: an end-game copy of the same piece
//! from a second peer arrives on its own, unshared.

use fileshare_protocol::PieceIndex;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// How far one arriving piece is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// This many bytes are in, more to come.
    Filling(usize),
    /// All in and verified: the relays may end the piece.
    Verified,
    /// It will not arrive whole and verified here.
    Failed,
}

/// The bytes of one arriving piece and how far they are.
#[derive(Debug)]
pub struct Arriving {
    len: usize,
    bytes: RwLock<Vec<u8>>,
    progress: watch::Sender<Progress>,
}

/// The file's arriving pieces, by piece.
#[derive(Debug, Default)]
pub struct Arrivals {
    map: Arc<Mutex<HashMap<PieceIndex, Arc<Arriving>>>>,
    /// Bytes passed on before their piece was whole here, and relays
    /// that had sent some when their piece failed to arrive.
    relayed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Arrivals {
    /// Registers `piece` (of `len` bytes) as arriving, unless it already is.
    pub fn start(&self, piece: PieceIndex, len: usize) -> Option<Arrival> {
        let mut map = self.map.lock();
        if map.contains_key(&piece) {
            return None;
        }
        let entry = Arc::new(Arriving {
            len,
            bytes: RwLock::new(Vec::with_capacity(len)),
            progress: watch::Sender::new(Progress::Filling(0)),
        });
        map.insert(piece, entry.clone());
        Some(Arrival {
            piece,
            entry,
            map: self.map.clone(),
            verified: false,
        })
    }

    /// A relay of `piece` if it is arriving: its bytes from the first.
    pub fn relay(&self, piece: PieceIndex) -> Option<Relay> {
        let entry = self.map.lock().get(&piece)?.clone();
        let rx = entry.progress.subscribe();
        Some(Relay {
            entry,
            rx,
            sent: 0,
            relayed: self.relayed.clone(),
            failed: self.failed.clone(),
        })
    }

    /// Relays that had passed bytes on when their piece failed here.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Bytes passed on to peers before their piece was whole here.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// The pieces arriving now.
    pub fn pieces(&self) -> Vec<PieceIndex> {
        self.map.lock().keys().copied().collect()
    }

    /// How many pieces are arriving now.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The receiving link's hold on an arriving piece: it appends the parts,
/// and the piece stops arriving when this is dropped, as
/// [`Progress::Failed`] unless [`Arrival::verified`] was called.
#[derive(Debug)]
pub struct Arrival {
    piece: PieceIndex,
    entry: Arc<Arriving>,
    map: Arc<Mutex<HashMap<PieceIndex, Arc<Arriving>>>>,
    verified: bool,
}

impl Arrival {
    /// Appends the next bytes; `false` (and nothing appended) if they
    /// would overrun the piece.
    pub fn push(&self, data: &[u8]) -> bool {
        let filled = {
            let mut bytes = self.entry.bytes.write();
            if bytes.len() + data.len() > self.entry.len {
                return false;
            }
            bytes.extend_from_slice(data);
            bytes.len()
        };
        self.entry.progress.send_replace(Progress::Filling(filled));
        true
    }

    /// Bytes in so far.
    pub fn filled(&self) -> usize {
        self.entry.bytes.read().len()
    }

    /// Runs `f` over the bytes in (the whole piece, once its last frame
    /// came), for verification.
    pub fn with_bytes<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        f(&self.entry.bytes.read())
    }

    /// The piece verified here: the relays may end it.
    pub fn verified(mut self) {
        self.verified = true;
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        let end = if self.verified {
            Progress::Verified
        } else {
            Progress::Failed
        };
        self.entry.progress.send_replace(end);
        let mut map = self.map.lock();
        if map
            .get(&self.piece)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            map.remove(&self.piece);
        }
    }
}

/// What a relay has to send next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The next bytes of the piece, in order.
    Bytes(Vec<u8>),
    /// Every byte was sent and the piece verified here.
    Done,
    /// The piece will not arrive here verified; `sent` bytes went out.
    Failed { sent: usize },
}

/// One peer's copy of an arriving piece, passed on from its first byte.
#[derive(Debug)]
pub struct Relay {
    entry: Arc<Arriving>,
    rx: watch::Receiver<Progress>,
    sent: usize,
    relayed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Relay {
    /// The piece's length.
    pub fn len(&self) -> usize {
        self.entry.len
    }

    pub fn is_empty(&self) -> bool {
        self.entry.len == 0
    }

    /// Waits for bytes not sent yet (at most `max` of them) or the end.
    pub async fn next(&mut self, max: usize) -> Next {
        loop {
            let progress = *self.rx.borrow_and_update();
            let filled = match progress {
                Progress::Failed => {
                    if self.sent > 0 {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    return Next::Failed { sent: self.sent };
                }
                Progress::Filling(n) => n,
                Progress::Verified => self.entry.len,
            };
            if filled > self.sent {
                let end = filled.min(self.sent.saturating_add(max.max(1)));
                let bytes = self.entry.bytes.read()[self.sent..end].to_vec();
                self.sent = end;
                if progress != Progress::Verified {
                    self.relayed
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                return Next::Bytes(bytes);
            }
            if progress == Progress::Verified {
                return Next::Done;
            }
            if self.rx.changed().await.is_err() {
                return Next::Failed { sent: self.sent };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(i: u32) -> PieceIndex {
        fileshare_protocol::Layout::new(64, 1)
            .unwrap()
            .validate(i)
            .unwrap()
    }

    #[tokio::test]
    async fn a_relay_passes_bytes_on_as_they_arrive_and_ends_once_verified() {
        let arrivals = Arrivals::default();
        let arrival = arrivals.start(piece(3), 10).unwrap();
        assert!(
            arrivals.start(piece(3), 10).is_none(),
            "one arrival a piece"
        );
        let mut relay = arrivals.relay(piece(3)).unwrap();
        assert!(arrival.push(b"abcd"));
        assert_eq!(relay.next(3).await, Next::Bytes(b"abc".to_vec()));
        let mut unbounded = arrivals.relay(piece(3)).unwrap();
        assert_eq!(
            unbounded.next(usize::MAX).await,
            Next::Bytes(b"abcd".to_vec())
        );
        assert_eq!(relay.next(3).await, Next::Bytes(b"d".to_vec()));
        assert!(!arrival.push(b"toolongbytes"), "overrun refused");
        assert!(arrival.push(b"efghij"));
        assert_eq!(arrival.filled(), 10);
        // A relay that joins late starts from the first byte.
        let mut late = arrivals.relay(piece(3)).unwrap();
        assert_eq!(late.next(100).await, Next::Bytes(b"abcdefghij".to_vec()));
        let waiting = tokio::spawn(async move { late.next(100).await });
        tokio::task::yield_now().await;
        arrival.verified();
        assert_eq!(waiting.await.unwrap(), Next::Done);
        assert_eq!(relay.next(100).await, Next::Bytes(b"efghij".to_vec()));
        assert_eq!(relay.next(100).await, Next::Done);
        assert_eq!(
            arrivals.relayed(),
            18,
            "bytes sent before the piece verified"
        );
        assert!(arrivals.is_empty() && arrivals.relay(piece(3)).is_none());
    }

    #[tokio::test]
    async fn a_piece_that_stops_arriving_fails_its_relays() {
        let arrivals = Arrivals::default();
        let arrival = arrivals.start(piece(0), 8).unwrap();
        let mut relay = arrivals.relay(piece(0)).unwrap();
        assert!(arrival.push(b"1234"));
        assert_eq!(relay.next(8).await, Next::Bytes(b"1234".to_vec()));
        let waiting = tokio::spawn(async move { relay.next(8).await });
        tokio::task::yield_now().await;
        drop(arrival);
        assert_eq!(waiting.await.unwrap(), Next::Failed { sent: 4 });
        assert_eq!(arrivals.failed(), 1);
        assert!(arrivals.is_empty());
        // Free to arrive again, from another peer.
        assert!(arrivals.start(piece(0), 8).is_some());
    }
}
