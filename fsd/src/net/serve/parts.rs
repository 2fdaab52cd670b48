//! A piece sent in parts: a held piece split when the uplink is slow, so
//! the peer can pass its first bytes on while the rest comes, and a piece
//! still arriving here passed on as it comes (`pieces::arriving`).
//!
//! On a 1 MB/s uplink a whole 512 KiB piece takes half a second before the
//! receiver may forward a byte of it; in 64 KiB parts, each hop adds about
//! 60 ms. On fast links the part is the whole piece, one frame, as before:
//! a part is what the uplink sends in [`PART_TIME`], at least [`PART_MIN`].

use super::{read_held, Outgoing, ServeCtx};
use crate::net::upload_scheduler::Sending;
use crate::pieces::arriving::{Next, Relay};
use crate::pieces::swarm::Swarm;
use fileshare_protocol::messages::peer::Payload;
use fileshare_protocol::messages::{PeerError, PeerReply, Reply};
use fileshare_protocol::PieceIndex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

/// The smallest part: below it a frame's own cost (a TLS record, a write,
/// a wake-up at each end) would show.
pub const PART_MIN: usize = 64 << 10;

/// A part is what the uplink sends in this long at its measured rate.
pub const PART_TIME: Duration = Duration::from_millis(20);

/// How a piece is cut for an uplink measured at `measured` bytes/s with
/// `--max-upload-rate` `cap` (infinite without): its part length, and the
/// time between two parts, so that under a cap a piece leaves at the
/// cap's pace, as it would on a link that slow, instead of at once after
/// the token bucket paid for it.
pub fn cut(measured: f64, cap: f64) -> (usize, Duration) {
    let known = measured > 0.0 && measured.is_finite();
    let part = part_len(match (known, cap.is_finite()) {
        (true, _) => measured.min(cap),
        (false, true) => cap,
        (false, false) => 0.0,
    });
    let gap = match part < usize::MAX && cap.is_finite() && cap > 0.0 {
        true => Duration::try_from_secs_f64(part as f64 / cap).unwrap_or(Duration::MAX),
        false => Duration::ZERO,
    };
    (part, gap)
}

/// The part length for an uplink of `rate` bytes/s (0 or not a number:
/// not measured yet; infinite: one frame per piece). An uplink not yet
/// measured sends [`PART_MIN`] parts: a swarm starts with no uplink
/// measured, and its first pieces are the ones every reader waits for, so
/// each hop of them must pass on from its first part (whole pieces there
/// made every hop of a 48-reader swarm's start store-and-forward); on a
/// fast link a piece's first few parts cost a few frames, no more.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn part_len(rate: f64) -> usize {
    let bytes = rate * PART_TIME.as_secs_f64();
    if rate == f64::INFINITY {
        usize::MAX
    } else if !(bytes.is_finite() && bytes > 0.0) {
        PART_MIN
    } else if bytes > PART_MIN as f64 {
        (bytes.min(1e9) as usize).next_multiple_of(16 << 10)
    } else {
        PART_MIN
    }
}

/// What a request is answered with.
pub(super) enum Answer {
    /// One frame: a refusal.
    Reply(PeerReply),
    /// A held piece's bytes, granted their room on the uplink.
    Held(Vec<u8>, Sending),
    /// An arriving piece, granted its room on the uplink.
    Relay(Relaying),
}

/// Where one request's reply frames go; the last one releases the
/// request's place on the connection.
pub(super) struct Out<'a> {
    pub tx: &'a mpsc::Sender<Outgoing>,
    pub id: u64,
    pub permit: OwnedSemaphorePermit,
}

impl Out<'_> {
    /// A part; false if the connection is gone.
    async fn part(&self, data: Vec<u8>) -> bool {
        let body = PeerReply::Part { data: data.into() };
        self.tx
            .send((Reply { id: self.id, body }, None))
            .await
            .is_ok()
    }

    /// The reply's last frame, holding `sending`'s room until it is
    /// written.
    pub async fn end(self, body: PeerReply, sending: Option<Sending>) {
        let held = sending.map(|s| (s, self.permit));
        let _ = self.tx.send((Reply { id: self.id, body }, held)).await;
    }

    /// A held piece, in parts of `part` bytes `gap` apart (one frame when
    /// it fits); cancelled between two parts, the rest is not sent.
    pub async fn held(
        self,
        data: Vec<u8>,
        (part, gap): (usize, Duration),
        sending: Sending,
        cancel: &CancellationToken,
    ) {
        let mut at = 0;
        while data.len() - at > part {
            if at > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if cancel.is_cancelled() {
                return self.end(PeerReply::Error(PeerError::Cancelled), None).await;
            }
            if !self.part(data[at..at + part].to_vec()).await {
                return;
            }
            at += part;
        }
        if at > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let data = Payload::within(data, at);
        self.end(PeerReply::Piece { data }, Some(sending)).await
    }
}

/// An arriving piece being passed on to one peer.
pub(super) struct Relaying {
    pub relay: Relay,
    pub swarm: Arc<Swarm>,
    pub piece: PieceIndex,
    pub sending: Sending,
}

impl Relaying {
    /// Sends the piece's bytes as they arrive, then its end once it is
    /// verified here; if it fails to arrive, `NotAvailable` (the peer
    /// drops the parts), or the whole piece from the store if none was
    /// sent and another copy was verified meanwhile. Cancelled, it ends in
    /// `Cancelled`.
    pub async fn send(self, ctx: &ServeCtx, out: Out<'_>, cancel: &CancellationToken) {
        let Relaying {
            mut relay,
            swarm,
            piece,
            sending,
        } = self;
        let (measured, cap) = ctx.uploads.rates();
        let part = part_len(measured.min(cap));
        loop {
            let next = tokio::select! {
                n = relay.next(part) => n,
                () = cancel.cancelled() => {
                    return out.end(PeerReply::Error(PeerError::Cancelled), None).await;
                }
            };
            match next {
                Next::Bytes(b) => {
                    let n = b.len() as u64;
                    if !out.part(b).await {
                        return;
                    }
                    swarm.uploaded.fetch_add(n, Ordering::Relaxed);
                }
                Next::Done => {
                    let data = Payload::default();
                    return out.end(PeerReply::Piece { data }, Some(sending)).await;
                }
                // Parts sent may have been wrong bytes: only a relay that
                // sent none finishes from the store.
                Next::Failed { sent } => {
                    let held = match sent == 0 && swarm.has(piece) {
                        true => read_held(ctx, &swarm, piece).await,
                        false => Err(PeerError::NotAvailable),
                    };
                    return match held {
                        Ok(data) => {
                            let data = Payload::from(data);
                            out.end(PeerReply::Piece { data }, Some(sending)).await
                        }
                        Err(e) => out.end(PeerReply::Error(e), None).await,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_what_the_uplink_sends_in_its_time_never_small_and_smallest_before_it_is_known() {
        assert_eq!(part_len(0.0), PART_MIN, "not known: the smallest parts");
        assert_eq!(part_len(f64::NAN), PART_MIN);
        assert_eq!(
            part_len(f64::INFINITY),
            usize::MAX,
            "infinitely fast: one frame"
        );
        assert_eq!(part_len(1e6), PART_MIN);
        assert_eq!(part_len(100e6), 2_000_000usize.next_multiple_of(16 << 10));
        // Under a cap, parts from the first piece, at the cap's pace.
        let mib = 1024.0 * 1024.0;
        assert_eq!(cut(0.0, mib), (PART_MIN, Duration::from_micros(62_500)));
        assert_eq!(cut(0.0, f64::INFINITY), (PART_MIN, Duration::ZERO));
        assert_eq!(cut(200.0 * mib, mib).0, PART_MIN, "the cap binds");
        assert_eq!(cut(mib, f64::INFINITY), (PART_MIN, Duration::ZERO));
    }
}
