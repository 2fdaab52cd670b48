//! The peers of one file this daemon knows beside its piece state: those
//! it is linked to either way, which it tells others of by peer exchange,
//! and those it heard of (from a Locate it had no room for, or by peer
//! exchange) and may link to when there is room. Under a lock of its
//! own, never held with the piece state's.
//!
//! Only *vouched* peers are passed on: one the tracker listed, or one that
//! showed this daemon a valid ticket for the file's group. A member that
//! names a stranger in its updates makes this daemon dial it at most (and
//! present a ticket only that stranger's key cannot reuse); the stranger
//! is never passed on, and never gets a piece from here without a ticket.

use fileshare_protocol::messages::peer::{PexPeer, PexUpdate, MAX_PEX_PEERS};
use fileshare_protocol::messages::tracker::{PeerLocation, Reach};
use fileshare_protocol::{Bitfield, PeerId};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Peers heard of and not linked, kept at most; the oldest goes first.
pub const MAX_CANDIDATES: usize = 256;

/// A peer heard of this long ago and not linked since is forgotten: it
/// may have left without anyone saying so.
const CANDIDATE_TTL: Duration = Duration::from_secs(60);

/// A link closed for giving nothing is not opened again for this long, so
/// the place goes to someone else.
pub const ROTATED_COOLDOWN: Duration = Duration::from_secs(30);

/// How a peer came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Listed by the tracker in answer to a Locate.
    Tracker,
    /// Named by a linked peer's exchange update.
    Exchange,
}

#[derive(Default)]
struct Linked {
    /// Our link to it, where we dialled it, and whether that is vouched.
    out: Option<(String, bool)>,
    /// Its exchange streams here (it showed a ticket), at the address its
    /// connection came from with the port it named.
    inbound: Vec<String>,
}

impl Linked {
    /// The address to pass on, if it is vouched.
    fn passed_on(&self) -> Option<&String> {
        match &self.out {
            Some((addr, true)) => Some(addr),
            _ => self.inbound.first(),
        }
    }
}

struct Candidate {
    loc: PeerLocation,
    origin: Origin,
    heard: Instant,
}

#[derive(Default)]
struct Book {
    linked: HashMap<PeerId, Linked>,
    candidates: BTreeMap<PeerId, Candidate>,
    rotated: HashMap<PeerId, Instant>,
    /// Peers met through exchange (linked, once), for the counters.
    exchanged: Vec<PeerId>,
    learned: u64,
    links_out: usize,
    peak_out: usize,
}

/// See the module documentation.
#[derive(Default)]
pub struct PeerBook {
    book: Mutex<Book>,
}

/// What the book counted, for the file's attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeCounts {
    /// Peers first heard of through exchange.
    pub learned: u64,
    /// Of those, the ones a link was opened to.
    pub linked: Vec<PeerId>,
    /// Links open now, and the most open at once.
    pub links: usize,
    pub peak_links: usize,
}

impl PeerBook {
    /// A link to `peer` at `addr` is up.
    pub fn linked_out(&self, peer: PeerId, addr: &str, origin: Origin) {
        let mut b = self.book.lock();
        b.candidates.remove(&peer);
        let l = b.linked.entry(peer).or_default();
        l.out = Some((addr.to_string(), origin == Origin::Tracker));
        b.links_out += 1;
        b.peak_out = b.peak_out.max(b.links_out);
        if origin == Origin::Exchange && !b.exchanged.contains(&peer) {
            b.exchanged.push(peer);
        }
    }

    /// The link to `peer` ended.
    pub fn unlinked_out(&self, peer: &PeerId) {
        let mut b = self.book.lock();
        b.links_out = b.links_out.saturating_sub(1);
        if let Some(l) = b.linked.get_mut(peer) {
            l.out = None;
            if l.inbound.is_empty() {
                b.linked.remove(peer);
            }
        }
    }

    /// `peer`, holding a valid ticket for the file, asked for exchange
    /// updates and accepts connections at `addr`.
    pub fn linked_in(&self, peer: PeerId, addr: String) {
        let mut b = self.book.lock();
        b.linked.entry(peer).or_default().inbound.push(addr);
    }

    /// That exchange stream ended.
    pub fn unlinked_in(&self, peer: &PeerId, addr: &str) {
        let mut b = self.book.lock();
        if let Some(l) = b.linked.get_mut(peer) {
            if let Some(pos) = l.inbound.iter().position(|a| a == addr) {
                l.inbound.remove(pos);
            }
            if l.inbound.is_empty() && l.out.is_none() {
                b.linked.remove(peer);
            }
        }
    }

    /// The next update for `to`'s stream, which was sent `sent` so far
    /// (updated here): the vouched linked peers other than `to` it was not
    /// told of, and those it was told of that are gone, at most
    /// [`MAX_PEX_PEERS`] each.
    pub fn update_for(&self, to: &PeerId, sent: &mut HashMap<PeerId, String>) -> PexUpdate {
        let b = self.book.lock();
        let mut u = PexUpdate::default();
        let gone: Vec<PeerId> = (sent.keys())
            .filter(|p| b.linked.get(p).and_then(Linked::passed_on).is_none())
            .copied()
            .take(MAX_PEX_PEERS)
            .collect();
        for p in gone {
            sent.remove(&p);
            u.dropped.push(p);
        }
        for (peer, l) in &b.linked {
            if u.added.len() >= MAX_PEX_PEERS {
                break;
            }
            let Some(addr) = l.passed_on() else { continue };
            if peer == to || sent.get(peer) == Some(addr) {
                continue;
            }
            sent.insert(*peer, addr.clone());
            u.added.push(PexPeer {
                peer: *peer,
                addr: addr.clone(),
            });
        }
        u
    }

    /// Peers that got no link for want of room (listed by the tracker, or
    /// heard of by `origin` and given back): linked later, when a place
    /// frees.
    pub fn wait(&self, peers: Vec<PeerLocation>, origin: Origin) {
        let mut b = self.book.lock();
        let now = Instant::now();
        for loc in peers {
            if b.linked.get(&loc.peer).is_some_and(|l| l.out.is_some()) {
                continue;
            }
            let peer = loc.peer;
            b.candidates.insert(
                peer,
                Candidate {
                    loc,
                    origin,
                    heard: now,
                },
            );
        }
        trim(&mut b, now);
    }

    /// An exchange update from a linked peer (checked against the
    /// protocol's bounds by the link). `me` is this daemon.
    pub fn heard_exchanged(&self, me: &PeerId, update: PexUpdate) {
        let mut b = self.book.lock();
        let now = Instant::now();
        for p in update.dropped {
            if b.candidates
                .get(&p)
                .is_some_and(|c| c.origin == Origin::Exchange)
            {
                b.candidates.remove(&p);
            }
        }
        for p in update.added {
            let known = b.linked.get(&p.peer).is_some_and(|l| l.out.is_some())
                || b.candidates.contains_key(&p.peer);
            if p.peer == *me || known {
                continue;
            }
            if !b.exchanged.contains(&p.peer) {
                b.learned += 1;
            }
            let loc = PeerLocation {
                peer: p.peer,
                user: String::new(),
                addr: p.addr,
                have: Bitfield::new(0),
                reach: Reach::Unknown,
                also: Vec::new(),
            };
            b.candidates.insert(
                p.peer,
                Candidate {
                    loc,
                    origin: Origin::Exchange,
                    heard: now,
                },
            );
        }
        trim(&mut b, now);
    }

    /// Whether some peer waits for a place (heard of, not linked, not
    /// rotated out lately).
    pub fn has_candidates(&self) -> bool {
        let mut b = self.book.lock();
        let now = Instant::now();
        trim(&mut b, now);
        let b = &*b;
        (b.candidates.keys()).any(|p| !b.rotated.contains_key(p))
    }

    /// Takes up to `n` peers to link to, the tracker's first, each once.
    pub fn take_candidates(&self, n: usize) -> Vec<(PeerLocation, Origin)> {
        let mut b = self.book.lock();
        trim(&mut b, Instant::now());
        let mut chosen: Vec<PeerId> = (b.candidates.iter())
            .filter(|(p, _)| !b.rotated.contains_key(p))
            .map(|(p, c)| (c.origin == Origin::Exchange, c.heard, *p))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|(_, _, p)| p)
            .collect();
        chosen.truncate(n);
        (chosen.iter())
            .filter_map(|p| b.candidates.remove(p))
            .map(|c| (c.loc, c.origin))
            .collect()
    }

    /// The link to `peer` was closed for giving nothing: not opened again
    /// for [`ROTATED_COOLDOWN`].
    pub fn rotated(&self, peer: PeerId) {
        self.book.lock().rotated.insert(peer, Instant::now());
    }

    /// Whether `peer` was rotated out lately.
    pub fn cooling(&self, peer: &PeerId) -> bool {
        let b = self.book.lock();
        b.rotated
            .get(peer)
            .is_some_and(|t| t.elapsed() < ROTATED_COOLDOWN)
    }

    pub fn counts(&self) -> ExchangeCounts {
        let b = self.book.lock();
        ExchangeCounts {
            learned: b.learned,
            linked: b.exchanged.clone(),
            links: b.links_out,
            peak_links: b.peak_out,
        }
    }
}

/// Forgets stale candidates and cooldowns, and the oldest candidates
/// beyond [`MAX_CANDIDATES`].
fn trim(b: &mut Book, now: Instant) {
    b.candidates
        .retain(|_, c| now.duration_since(c.heard) < CANDIDATE_TTL);
    b.rotated
        .retain(|_, t| now.duration_since(*t) < ROTATED_COOLDOWN);
    while b.candidates.len() > MAX_CANDIDATES {
        let oldest = (b.candidates.iter())
            .min_by_key(|(_, c)| c.heard)
            .map(|(p, _)| *p);
        match oldest {
            Some(p) => b.candidates.remove(&p),
            None => break,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    fn pex(added: &[u8], dropped: &[u8]) -> PexUpdate {
        PexUpdate {
            added: (added.iter())
                .map(|&n| PexPeer {
                    peer: id(n),
                    addr: format!("127.0.0.1:{}", 1000 + u16::from(n)),
                })
                .collect(),
            dropped: dropped.iter().map(|&n| id(n)).collect(),
        }
    }

    #[test]
    fn updates_pass_on_vouched_peers_added_and_dropped_once() {
        let book = PeerBook::default();
        book.linked_out(id(1), "127.0.0.1:1001", Origin::Tracker);
        book.linked_out(id(2), "127.0.0.1:1002", Origin::Exchange);
        book.linked_in(id(3), "127.0.0.1:1003".into());
        book.linked_in(id(9), "127.0.0.1:1009".into());
        let mut sent = HashMap::new();
        let u = book.update_for(&id(9), &mut sent);
        let mut added: Vec<_> = u.added.iter().map(|p| p.peer).collect();
        added.sort();
        // Not the asker itself, not a peer only exchange named.
        assert_eq!(added, vec![id(1), id(3)]);
        assert!(u.dropped.is_empty());
        assert!(book.update_for(&id(9), &mut sent).is_empty());
        // A peer that showed a ticket is vouched for as well.
        book.linked_in(id(2), "127.0.0.1:1002".into());
        let u = book.update_for(&id(9), &mut sent);
        assert_eq!(u.added.len(), 1);
        assert_eq!(u.added[0].peer, id(2));
        book.unlinked_out(&id(1));
        book.unlinked_in(&id(2), "127.0.0.1:1002");
        let mut u = book.update_for(&id(9), &mut sent);
        u.dropped.sort();
        assert_eq!(u.dropped, vec![id(1), id(2)]);
        assert!(u.added.is_empty());
    }

    #[test]
    fn an_update_holds_at_most_its_bound_and_the_rest_follows() {
        let book = PeerBook::default();
        for n in 0..120u8 {
            book.linked_in(id(n), format!("127.0.0.1:{}", 2000 + u16::from(n)));
        }
        let mut sent = HashMap::new();
        let sizes: Vec<usize> = (0..4)
            .map(|_| book.update_for(&id(200), &mut sent).added.len())
            .collect();
        assert_eq!(sizes, vec![MAX_PEX_PEERS, MAX_PEX_PEERS, 20, 0]);
    }

    #[test]
    fn peers_heard_of_are_bounded_and_taken_once_tracker_first() {
        let book = PeerBook::default();
        let me = id(0);
        book.heard_exchanged(&me, pex(&[0, 1, 2], &[]));
        assert_eq!(book.counts().learned, 2, "never itself");
        book.heard_exchanged(&me, pex(&[], &[2]));
        let located = PeerLocation {
            peer: id(7),
            user: "u".into(),
            addr: "127.0.0.1:7".into(),
            have: Bitfield::new(0),
            reach: Reach::Direct,
            also: Vec::new(),
        };
        book.wait(vec![located], Origin::Tracker);
        let taken = book.take_candidates(8);
        let order: Vec<_> = taken.iter().map(|(l, o)| (l.peer, *o)).collect();
        assert_eq!(
            order,
            vec![(id(7), Origin::Tracker), (id(1), Origin::Exchange)]
        );
        assert!(!book.has_candidates());
        // A rotated-out peer waits its cooldown.
        book.rotated(id(5));
        book.heard_exchanged(&me, pex(&[5], &[]));
        assert!(!book.has_candidates());
        assert!(book.cooling(&id(5)));
        for n in 1..=3u8 {
            for m in 0..=255u8 {
                let mut peer = [n; 16];
                peer[1] = m;
                let added = vec![PexPeer {
                    peer: PeerId(peer),
                    addr: "127.0.0.1:9".into(),
                }];
                let update = PexUpdate {
                    added,
                    dropped: Vec::new(),
                };
                book.heard_exchanged(&me, update);
            }
        }
        assert_eq!(book.book.lock().candidates.len(), MAX_CANDIDATES);
    }
}
