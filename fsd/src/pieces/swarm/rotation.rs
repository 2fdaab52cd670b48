//! Rotation: when a file's links are at their budget and other peers wait
//! for a place, the link that has given nothing the longest is closed, so
//! a peer heard of later (from a Locate or by peer exchange) gets a
//! chance; BitTorrent clients do the same with peers that stay choked or
//! have nothing to offer.

use super::{FetchCmd, Swarm};
use fileshare_protocol::PeerId;
use std::time::{Duration, Instant};

/// A link is given this long from joining, or from the last piece it
/// delivered that this daemon lacked, before it may be rotated out.
pub const ROTATE_IDLE: Duration = Duration::from_secs(5);

impl Swarm {
    /// Closes the link that has delivered nothing new for the longest, at
    /// least `idle`, with nothing in flight; returns its peer.
    pub fn rotate_out(&self, idle: Duration) -> Option<PeerId> {
        self.rotate_out_at(idle, Instant::now())
    }

    pub(super) fn rotate_out_at(&self, idle: Duration, now: Instant) -> Option<PeerId> {
        let mut st = self.state.lock();
        let l = (st.links.iter_mut())
            .filter(|l| !l.closing && l.in_flight.is_empty())
            .map(|l| (l.last_useful.unwrap_or(l.joined), l))
            .filter(|(since, _)| now.saturating_duration_since(*since) >= idle)
            .min_by_key(|(since, _)| *since)
            .map(|(_, l)| l)?;
        l.closing = true;
        let _ = l.tx.send(FetchCmd::Close);
        tracing::info!(file = %self.file.meta.name, peer = %l.addr, "rotated out: nothing new from it for {idle:?}");
        Some(l.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{drain, peer, pi, swarm};
    use super::*;
    use fileshare_protocol::Bitfield;

    #[test]
    fn the_link_idle_longest_is_closed_and_asked_nothing_more() {
        let (_dir, s) = swarm(4);
        s.want_all();
        let (_busy, mut busy_rx) = s.add_link(peer(1), "a".into(), Bitfield::full(4)).unwrap();
        let (idle, mut idle_rx) = s.add_link(peer(2), "b".into(), Bitfield::new(4)).unwrap();
        let now = Instant::now();
        // Too young to be judged.
        assert_eq!(s.rotate_out_at(ROTATE_IDLE, now), None);
        let later = now + ROTATE_IDLE * 2;
        // The link with requests in flight stays; the one that offers
        // nothing goes, once.
        assert_eq!(s.rotate_out_at(ROTATE_IDLE, later), Some(peer(2)));
        assert_eq!(drain(&mut idle_rx), vec![FetchCmd::Close]);
        assert_eq!(s.rotate_out_at(ROTATE_IDLE, later), None);
        // A closing link is asked nothing, even when it alone offers
        // what is wanted.
        assert!(!drain(&mut busy_rx).is_empty());
        s.release_link(_busy);
        s.add_have(idle, pi(3));
        assert!(drain(&mut idle_rx).is_empty());
    }
}
