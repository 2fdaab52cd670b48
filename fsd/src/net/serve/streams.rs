//! What a connection pushes without being asked again: a subscription's
//! pieces (its bitfield, then each piece arriving or verified here, and
//! whether this daemon chokes the connection) and a peer exchange stream.

use super::{ConnState, Outgoing};
use crate::pieces::swarm::{Offer, Swarm};
use crate::trackers::now_ms;
use fileshare_protocol::messages::peer::PEX_INTERVAL_MS;
use fileshare_protocol::messages::{PeerError, PeerReply, Reply};
use fileshare_protocol::{Bitfield, PeerId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// One subscription: the bitfield now, then a `Have` per verified piece,
/// until the connection or the swarm ends, or the tickets for the file's
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
    // Pieces told as arriving: the peer takes them as offered from then on
    // (an ask for one that fails to arrive is refused), so their `Have`
    // would tell it nothing, and would cost a frame on every subscription
    // for every piece (with parts, every piece arrives so).
    let num_pieces = swarm.file.layout.num_pieces();
    let mut told = Bitfield::new(num_pieces);
    // The bitfield, then the pieces arriving now (told afresh: a piece
    // evicted since is not in the bitfield, and its next copy may come
    // whole, with a `Have` only).
    let everything = |told: &mut Bitfield| {
        *told = Bitfield::new(num_pieces);
        let arriving = swarm.arrivals.pieces();
        for p in &arriving {
            told.set(p.get());
        }
        let receiving = arriving.into_iter().map(|p| PeerReply::Receiving(p.get()));
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
                Ok(Offer::Have(i)) if !told.get(i.get()) => next.push(PeerReply::Have(i.get())),
                Ok(Offer::Have(_)) => {}
                Ok(Offer::Receiving(i)) => {
                    told.set(i.get());
                    next.push(PeerReply::Receiving(i.get()));
                }
                // Pieces evicted, or too far behind: everything again.
                Ok(Offer::Lost) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    next.extend(everything(&mut told))
                }
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
