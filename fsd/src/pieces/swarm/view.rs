//! What the status pages read of a swarm: copies taken under its lock.

use super::{PeerCounters, Swarm};
use fileshare_protocol::{Bitfield, PeerId};

/// One fetch link as the dashboard shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchLinkView {
    pub peer: PeerId,
    pub addr: String,
    /// Bytes per second received from it, smoothed.
    pub rate: f64,
    pub in_flight: usize,
}

/// A copy of what the swarm knows, taken under its lock at one instant.
#[derive(Debug, Clone)]
pub struct SwarmView {
    pub have: Bitfield,
    /// Pieces requested from some peer and not verified yet.
    pub in_flight: Bitfield,
    pub links: Vec<FetchLinkView>,
    /// Verified bytes received from peers, over the swarm's life.
    pub received: u64,
}

impl Swarm {
    pub fn counters(&self) -> Vec<(String, PeerCounters)> {
        let st = self.state.lock();
        let mut v: Vec<_> = st
            .counters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A consistent copy of the piece state and the links, for reading.
    pub fn view(&self) -> SwarmView {
        let st = self.state.lock();
        let mut in_flight = Bitfield::new(st.have.len());
        for l in &st.links {
            for &p in &l.in_flight {
                if !st.have.get(p) {
                    in_flight.set(p);
                }
            }
        }
        SwarmView {
            have: st.have.clone(),
            in_flight,
            links: st
                .links
                .iter()
                .map(|l| FetchLinkView {
                    peer: l.peer,
                    addr: l.addr.clone(),
                    rate: if l.rate.is_finite() { l.rate } else { 0.0 },
                    in_flight: l.in_flight.len(),
                })
                .collect(),
            received: st.counters.values().map(|c| c.bytes).sum(),
        }
    }
}
