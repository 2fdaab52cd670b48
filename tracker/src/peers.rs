//! Soft state: which daemons are online and which pieces they hold.
//!
//! Nothing here is durable or replicated; daemons announce every interval,
//! so a restarted tracker relearns it within one. A peer silent for
//! [`OFFLINE_AFTER`] intervals is offline: no longer offered, and swept.
//! Callers check that the user may see a file before recording a holding.

use fileshare_protocol::ids::{Bitfield, FileId, PeerId};
use fileshare_protocol::ErrorCode;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Announce intervals a peer may miss before it is offline.
pub const OFFLINE_AFTER: u32 = 3;

/// What every holding of one peer shares: who it is and when it was last
/// heard from. One per announce, so listing a file's holders reads it
/// through a pointer instead of looking the peer up.
#[derive(Debug)]
pub struct Card {
    pub id: PeerId,
    pub user: String,
    pub addr: String,
    /// Its addresses in other families (offered once dialled).
    pub also: Vec<String>,
    /// Milliseconds since [`Peers`]' epoch; atomic because every holding
    /// shares the card and a report refreshes it.
    last_seen_ms: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct Holder {
    pub card: Arc<Card>,
    pub have: Bitfield,
    /// Invariant: `have.count()`, cached because listings count holders.
    pub pieces: u32,
}

#[derive(Debug)]
struct Entry {
    card: Arc<Card>,
    /// Invariant: exactly the files whose `by_file` map has this peer.
    files: HashSet<FileId>,
}

#[derive(Debug)]
pub struct Peers {
    interval: Duration,
    epoch: Instant,
    peers: HashMap<PeerId, Entry>,
    /// File -> its holders. Invariant: `by_file[f][p]` exists iff
    /// `peers[p].files` has `f`, and its card is `peers[p].card`.
    by_file: HashMap<FileId, HashMap<PeerId, Holder>>,
}

impl Peers {
    pub fn new(interval: Duration) -> Peers {
        Peers {
            interval,
            epoch: Instant::now(),
            peers: HashMap::new(),
            by_file: HashMap::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn ms(&self, t: Instant) -> u64 {
        fileshare_protocol::millis(t.saturating_duration_since(self.epoch))
    }

    fn is_online(&self, card: &Card, now_ms: u64) -> bool {
        let silent = now_ms.saturating_sub(card.last_seen_ms.load(Ordering::Relaxed));
        u128::from(silent) < (self.interval * OFFLINE_AFTER).as_millis()
    }

    /// Refuses a peer id another user's online daemon is using.
    fn claim(&self, id: &PeerId, user: &str, now_ms: u64) -> Result<(), ErrorCode> {
        match self.peers.get(id) {
            Some(e) if e.card.user != user && self.is_online(&e.card, now_ms) => Err(
                ErrorCode::BadRequest(format!("peer id {id} is in use by another user")),
            ),
            _ => Ok(()),
        }
    }

    /// Refuses `id` as the holder of `user`'s ticket while another user's
    /// online daemon announces with it.
    pub fn check_holder(&self, id: &PeerId, user: &str, now: Instant) -> Result<(), ErrorCode> {
        self.claim(id, user, self.ms(now))
    }

    /// Whether `id` is online now.
    pub fn knows(&self, id: &PeerId) -> bool {
        self.peers.contains_key(id)
    }

    /// The card of `id`, if it is online.
    pub fn card(&self, id: &PeerId, now: Instant) -> Option<Arc<Card>> {
        let e = self.peers.get(id)?;
        self.is_online(&e.card, self.ms(now))
            .then(|| e.card.clone())
    }

    /// How many peers of `user` are online now.
    pub fn count_of(&self, user: &str) -> usize {
        self.peers.values().filter(|e| e.card.user == user).count()
    }

    /// Replaces everything known of `id` with this announce.
    pub fn announce(
        &mut self,
        now: Instant,
        id: PeerId,
        user: &str,
        (addr, also): (String, Vec<String>),
        holdings: Vec<(FileId, Bitfield)>,
    ) -> Result<(), ErrorCode> {
        let now_ms = self.ms(now);
        self.claim(&id, user, now_ms)?;
        self.remove(&id);
        let card = Arc::new(Card {
            id,
            user: user.to_string(),
            addr,
            also,
            last_seen_ms: AtomicU64::new(now_ms),
        });
        let mut files = HashSet::with_capacity(holdings.len());
        for (file, have) in holdings {
            files.insert(file);
            let pieces = have.count();
            self.by_file.entry(file).or_default().insert(
                id,
                Holder {
                    card: card.clone(),
                    have,
                    pieces,
                },
            );
        }
        self.peers.insert(id, Entry { card, files });
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
        let now_ms = self.ms(now);
        self.claim(&id, user, now_ms)?;
        let online = self
            .peers
            .get(&id)
            .is_some_and(|e| e.card.user == user && self.is_online(&e.card, now_ms));
        let entry = match self.peers.get_mut(&id) {
            Some(e) if online => e,
            _ => {
                return Err(ErrorCode::BadRequest(format!(
                    "peer {id} has not announced itself"
                )))
            }
        };
        entry.card.last_seen_ms.store(now_ms, Ordering::Relaxed);
        entry.files.insert(file);
        let card = entry.card.clone();
        let held = self
            .by_file
            .entry(file)
            .or_default()
            .entry(id)
            .or_insert_with(|| Holder {
                card,
                have: Bitfield::new(num_pieces),
                pieces: 0,
            });
        if !held.have.is_valid_for(num_pieces) {
            held.have = Bitfield::new(num_pieces);
        }
        for &i in pieces {
            held.have.set(i);
        }
        held.pieces = held.have.count();
        Ok(())
    }

    /// Drops the peer and all it held, if it is `user`'s.
    pub fn leave(&mut self, id: &PeerId, user: &str) -> Result<(), ErrorCode> {
        match self.peers.get(id) {
            Some(e) if e.card.user != user => Err(ErrorCode::BadRequest(format!(
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
        for file in &old.files {
            if let Some(holders) = self.by_file.get_mut(file) {
                holders.remove(id);
                if holders.is_empty() {
                    self.by_file.remove(file);
                }
            }
        }
    }

    /// Online peers holding at least one piece of `file`.
    pub fn holders(&self, file: &FileId, now: Instant) -> impl Iterator<Item = &Holder> {
        let now_ms = self.ms(now);
        self.by_file
            .get(file)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(move |h| h.pieces > 0 && self.is_online(&h.card, now_ms))
    }

    /// Forgets offline peers; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let now_ms = self.ms(now);
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| !self.is_online(&e.card, now_ms))
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
                ("127.0.0.1:1".into(), vec![]),
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
        peers
            .announce(t0, P, "u", ("a".into(), vec![]), vec![])
            .unwrap();
        assert!(peers.report(t0, PeerId([9; 16]), "u", F, 4, &[0]).is_err());
        assert_eq!(peers.holders(&F, t0).count(), 0);
        peers.report(t0, P, "u", F, 4, &[1, 3]).unwrap();
        let h = peers.holders(&F, t0).next().unwrap();
        assert_eq!(h.card.addr, "a");
        assert_eq!(h.have.ones().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(h.pieces, 2);
    }

    #[test]
    fn another_user_cannot_take_or_drop_an_online_peer() {
        let mut peers = Peers::new(Duration::from_secs(5));
        let t0 = Instant::now();
        peers
            .announce(
                t0,
                P,
                "u",
                ("a".into(), vec![]),
                vec![(F, Bitfield::full(1))],
            )
            .unwrap();
        assert!(peers
            .announce(t0, P, "v", ("b".into(), vec![]), vec![])
            .is_err());
        assert!(peers.leave(&P, "v").is_err());
        // Once offline, the id is free again.
        let later = t0 + Duration::from_secs(60);
        peers
            .announce(later, P, "v", ("b".into(), vec![]), vec![])
            .unwrap();
        assert_eq!(peers.holders(&F, later).count(), 0);
        peers.leave(&P, "v").unwrap();
        assert!(peers.is_empty());
    }
}
