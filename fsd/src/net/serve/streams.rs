//! What a connection pushes without being asked again: a subscription's
//! pieces (its bitfield, then each piece arriving or verified here, and
//! whether this daemon chokes the connection) and a peer exchange stream.

use super::{ConnState, Outgoing};
use crate::pieces::swarm::{Offer, Swarm};
use crate::trackers::now_ms;
use fileshare_protocol::messages::peer::PEX_INTERVAL_MS;
use fileshare_protocol::messages::{PeerError, PeerReply, Reply};
use fileshare_protocol::{Bitfield, PeerId, PieceIndex};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// What one subscription tells of the pieces here: a piece told as
/// arriving (`Receiving`) is taken by the peer as offered from then on (an
/// ask for one that fails to arrive is refused), so its `Have` would tell
/// nothing, and would cost a frame on every subscription for every piece
/// (with parts, every piece arrives so). A bitfield sent again starts
/// afresh: a piece evicted since is not in it, and its next copy may come
/// whole, with a `Have` only.
struct Told(Bitfield);

impl Told {
    /// After a bitfield: the pieces arriving now, each told.
    fn afresh(&mut self, arriving: &[PieceIndex]) -> Vec<PeerReply> {
        self.0 = Bitfield::new(self.0.len());
        for p in arriving {
            self.0.set(p.get());
        }
        arriving
            .iter()
            .map(|p| PeerReply::Receiving(p.get()))
            .collect()
    }

    /// What to send of an offer from the swarm, if anything.
    fn offer(&mut self, offer: &Offer) -> Option<PeerReply> {
        match *offer {
            Offer::Receiving(p) => {
                self.0.set(p.get());
                Some(PeerReply::Receiving(p.get()))
            }
            Offer::Have(p) if !self.0.get(p.get()) => Some(PeerReply::Have(p.get())),
            Offer::Have(_) | Offer::Lost => None,
        }
    }
}

/// One subscription: the bitfield now, then a `Receiving` or a `Have` per
/// piece ([`Told`]) and a notice whenever the connection is choked or
/// unchoked, until the connection or the swarm ends, or the tickets for the file's
/// groups expire without a fresh one (then `TicketExpired` ends it).
/// Subscribing before taking the bitfield means no piece falls between the
/// two.
pub(super) async fn subscription(
    swarm: Arc<Swarm>,
    st: Arc<ConnState>,
    id: u64,
    tx: mpsc::Sender<Outgoing>,
    mut choke: watch::Receiver<bool>,
) {
    let expires = || st.access_until(&swarm).unwrap_or(0);
    let mut haves = swarm.subscribe();
    let mut told = Told(Bitfield::new(swarm.file.layout.num_pieces()));
    // The bitfield, then the pieces arriving now.
    let everything = |told: &mut Told| {
        let receiving = told.afresh(&swarm.arrivals.pieces());
        std::iter::once(PeerReply::Bitfield(swarm.have())).chain(receiving)
    };
    let mut next: Vec<PeerReply> = everything(&mut told).collect();
    loop {
        for body in next.drain(..) {
            if tx.send((Reply { id, body }, None)).await.is_err() {
                return;
            }
        }
        let left = Duration::from_millis(expires().saturating_sub(now_ms()));
        tokio::select! {
            r = haves.recv() => match r {
                // Pieces evicted, or too far behind: everything again.
                Ok(Offer::Lost) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    next.extend(everything(&mut told))
                }
                Ok(offer) => next.extend(told.offer(&offer)),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // Choked or unchoked since: the requester asks accordingly.
            Ok(()) = choke.changed() => {
                next.push(PeerReply::Unchoked(*choke.borrow_and_update()));
            }
            () = tx.closed() => return,
            () = swarm.cancel.cancelled() => return,
            // A fresh ticket may have come meanwhile: look again.
            () = tokio::time::sleep(left) => {}
        }
        if expires() <= now_ms() {
            st.subscribed.lock().remove(&swarm.file.id);
            let body = PeerReply::Error(PeerError::TicketExpired);
            let _ = tx.send((Reply { id, body }, None)).await;
            return;
        }
    }
}

/// Removes the asker from the file's peer book when its exchange stream
/// ends.
struct InBook<'a> {
    swarm: &'a Swarm,
    peer: PeerId,
    addr: String,
}

impl Drop for InBook<'_> {
    fn drop(&mut self) {
        self.swarm.peers.unlinked_in(&self.peer, &self.addr);
    }
}

/// One exchange stream: the vouched peers of the file now, then who
/// joined and left, at most once per [`PEX_INTERVAL_MS`] and only when
/// something changed, until the connection or the swarm ends or the
/// tickets for the file's groups expire. The asker showed a ticket, so it
/// is vouched for to others while the stream lasts, at the address its
/// connection came from with the port it named: it can name no other host.
pub(super) async fn exchange(
    swarm: Arc<Swarm>,
    st: Arc<ConnState>,
    id: u64,
    port: u16,
    tx: mpsc::Sender<Outgoing>,
) {
    let _in_book = match st.from {
        Some(ip) if port != 0 => {
            let addr = std::net::SocketAddr::new(ip, port).to_string();
            swarm.peers.linked_in(st.peer, addr.clone());
            Some(InBook {
                swarm: &swarm,
                peer: st.peer,
                addr,
            })
        }
        _ => None,
    };
    let mut sent = HashMap::new();
    let mut every = tokio::time::interval(Duration::from_millis(PEX_INTERVAL_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = tx.closed() => return,
            () = swarm.cancel.cancelled() => return,
        }
        if st.access_until(&swarm).unwrap_or(0) <= now_ms() {
            st.exchanging.lock().remove(&swarm.file.id);
            let body = PeerReply::Error(PeerError::TicketExpired);
            let _ = tx.send((Reply { id, body }, None)).await;
            return;
        }
        let update = swarm.peers.update_for(&st.peer, &mut sent);
        if update.is_empty() {
            continue;
        }
        let body = PeerReply::Peers(update);
        if tx.send((Reply { id, body }, None)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(i: u32) -> PieceIndex {
        fileshare_protocol::Layout::new(8, 1)
            .unwrap()
            .validate(i)
            .unwrap()
    }

    #[test]
    fn a_piece_told_as_arriving_is_not_told_again_as_had_until_the_bitfield_is_sent_afresh() {
        let mut told = Told(Bitfield::new(8));
        assert_eq!(
            told.afresh(&[piece(1)]),
            vec![PeerReply::Receiving(1)],
            "arriving when subscribed"
        );
        assert_eq!(told.offer(&Offer::Have(piece(1))), None);
        assert_eq!(
            told.offer(&Offer::Receiving(piece(3))),
            Some(PeerReply::Receiving(3))
        );
        assert_eq!(told.offer(&Offer::Have(piece(3))), None);
        assert_eq!(
            told.offer(&Offer::Have(piece(4))),
            Some(PeerReply::Have(4)),
            "came whole: told as had"
        );
        assert_eq!(told.afresh(&[]), vec![]);
        assert_eq!(
            told.offer(&Offer::Have(piece(3))),
            Some(PeerReply::Have(3)),
            "evicted and fetched again whole after the bitfield"
        );
    }
}
