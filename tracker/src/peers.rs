//! Soft state: which daemons are online and which pieces they hold.
//!
//! Nothing here is durable or replicated; daemons announce every interval,
//! so a restarted tracker relearns it within one. A peer silent for
//! [`OFFLINE_AFTER`] intervals is offline: no longer offered, and swept.
//! Callers check that the user may see a file before recording a holding.

use fileshare_protocol::ids::{Bitfield, FileId, PeerId};
use fileshare_protocol::ErrorCode;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Announce intervals a peer may miss before it is offline.
pub const OFFLINE_AFTER: u32 = 3;

#[derive(Debug, Clone)]
pub struct Held {
    pub have: Bitfield,
    /// Invariant: `have.count()`, cached because listings count holders.
    pub pieces: u32,
}

impl Held {
    fn new(have: Bitfield) -> Held {
        let pieces = have.count();
        Held { have, pieces }
    }
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub user: String,
    pub addr: String,
    last_seen: Instant,
    holdings: HashMap<FileId, Held>,
}

#[derive(Debug)]
pub struct Peers {
    interval: Duration,
    peers: HashMap<PeerId, Peer>,
    /// Invariant: `p` is in `by_file[f]` iff `peers[p].holdings` has `f`.
    by_file: HashMap<FileId, HashSet<PeerId>>,
}

impl Peers {
    pub fn new(interval: Duration) -> Peers {
        Peers {
            interval,
            peers: HashMap::new(),
            by_file: HashMap::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn is_online(&self, p: &Peer, now: Instant) -> bool {
        now.saturating_duration_since(p.last_seen) < self.interval * OFFLINE_AFTER
    }

    /// Refuses a peer id another user's online daemon is using.
    fn claim(&self, id: &PeerId, user: &str, now: Instant) -> Result<(), ErrorCode> {
        match self.peers.get(id) {
            Some(p) if p.user != user && self.is_online(p, now) => Err(ErrorCode::BadRequest(
                format!("peer id {id} is in use by another user"),
            )),
            _ => Ok(()),
        }
    }

    /// Replaces everything known of `id` with this announce.
    pub fn announce(
        &mut self,
        now: Instant,
        id: PeerId,
        user: &str,
        addr: String,
        holdings: Vec<(FileId, Bitfield)>,
    ) -> Result<(), ErrorCode> {
        self.claim(&id, user, now)?;
        self.remove(&id);
        let mut held = HashMap::with_capacity(holdings.len());
        for (file, have) in holdings {
            self.by_file.entry(file).or_default().insert(id);
            held.insert(file, Held::new(have));
        }
        self.peers.insert(
            id,
            Peer {
                user: user.to_string(),
                addr,
                last_seen: now,
                holdings: held,
            },
        );
        Ok(())
    }

    /// Sets the bits of `pieces` (already validated against the file's
    /// layout, which has `num_pieces`) in the peer's holding of `file`.
    pub fn report(
        &mut self,
        now: Instant,
        id: PeerId,
        user: &str,
        file: FileId,
        num_pieces: u32,
        pieces: &[u32],
    ) -> Result<(), ErrorCode> {
        self.claim(&id, user, now)?;
        let online = self.peers.get(&id).is_some_and(|p| self.is_online(p, now));
        let Some(peer) = self.peers.get_mut(&id).filter(|p| p.user == user && online) else {
            return Err(ErrorCode::BadRequest(format!(
                "peer {id} has not announced itself"
            )));
        };
        peer.last_seen = now;
        let held = peer
            .holdings
            .entry(file)
            .or_insert_with(|| Held::new(Bitfield::new(num_pieces)));
        if !held.have.is_valid_for(num_pieces) {
            held.have = Bitfield::new(num_pieces);
        }
        for &i in pieces {
            held.have.set(i);
        }
        held.pieces = held.have.count();
        self.by_file.entry(file).or_default().insert(id);
        Ok(())
    }

    /// Drops the peer and all it held, if it is `user`'s.
    pub fn leave(&mut self, id: &PeerId, user: &str) -> Result<(), ErrorCode> {
        match self.peers.get(id) {
            Some(p) if p.user != user => Err(ErrorCode::BadRequest(format!(
                "peer {id} belongs to another user"
            ))),
            _ => {
                self.remove(id);
                Ok(())
            }
        }
    }

    fn remove(&mut self, id: &PeerId) {
        let Some(old) = self.peers.remove(id) else {
            return;
        };
        for file in old.holdings.keys() {
            if let Some(set) = self.by_file.get_mut(file) {
                set.remove(id);
                if set.is_empty() {
                    self.by_file.remove(file);
                }
            }
        }
    }

    /// Online peers holding at least one piece of `file`.
    pub fn holders(
        &self,
        file: &FileId,
        now: Instant,
    ) -> impl Iterator<Item = (&PeerId, &Peer, &Held)> {
        let file = *file;
        self.by_file
            .get(&file)
            .into_iter()
            .flatten()
            .filter_map(move |id| {
                let p = self.peers.get(id)?;
                let h = p.holdings.get(&file)?;
                (h.pieces > 0 && self.is_online(p, now)).then_some((id, p, h))
            })
    }

    /// Forgets offline peers; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !self.is_online(p, now))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.remove(id);
        }
        gone.len()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: FileId = FileId([1; 32]);
    const P: PeerId = PeerId([2; 16]);

    #[test]
    fn peers_go_offline_after_three_silent_intervals() {
        let mut peers = Peers::new(Duration::from_secs(5));
        let t0 = Instant::now();
        peers
            .announce(
                t0,
                P,
                "u",
                "127.0.0.1:1".into(),
                vec![(F, Bitfield::full(4))],
            )
            .unwrap();
        assert_eq!(peers.holders(&F, t0 + Duration::from_secs(14)).count(), 1);
        assert_eq!(peers.holders(&F, t0 + Duration::from_secs(15)).count(), 0);
        assert_eq!(peers.sweep(t0 + Duration::from_secs(14)), 0);
        assert_eq!(peers.sweep(t0 + Duration::from_secs(15)), 1);
        assert!(peers.is_empty() && peers.by_file.is_empty());
    }

    #[test]
    fn reports_set_bits_and_only_holders_with_pieces_count() {
        let mut peers = Peers::new(Duration::from_secs(5));
        let t0 = Instant::now();
        peers.announce(t0, P, "u", "a".into(), vec![]).unwrap();
        assert!(peers.report(t0, PeerId([9; 16]), "u", F, 4, &[0]).is_err());
        assert_eq!(peers.holders(&F, t0).count(), 0);
        peers.report(t0, P, "u", F, 4, &[1, 3]).unwrap();
        let (_, p, h) = peers.holders(&F, t0).next().unwrap();
        assert_eq!(p.addr, "a");
        assert_eq!(h.have.ones().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(h.pieces, 2);
    }

    #[test]
    fn another_user_cannot_take_or_drop_an_online_peer() {
        let mut peers = Peers::new(Duration::from_secs(5));
        let t0 = Instant::now();
        peers
            .announce(t0, P, "u", "a".into(), vec![(F, Bitfield::full(1))])
            .unwrap();
        assert!(peers.announce(t0, P, "v", "b".into(), vec![]).is_err());
        assert!(peers.leave(&P, "v").is_err());
        // Once offline, the id is free again.
        let later = t0 + Duration::from_secs(60);
        peers.announce(later, P, "v", "b".into(), vec![]).unwrap();
        assert_eq!(peers.holders(&F, later).count(), 0);
        peers.leave(&P, "v").unwrap();
        assert!(peers.is_empty());
    }
}
