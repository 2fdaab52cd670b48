//! Who may hold a place on the peer port. Anyone with a self-signed key
//! completes TLS, so a connection starts as a stranger's: strangers have a
//! small pool of their own, and when it is full the oldest stranger (of the
//! fullest address first) is closed to make room, so a flood of them
//! never keeps a new connection out. A connection that shows a valid
//! ticket moves to the members' pool, under the server's total and
//! per-address caps; strangers never count against those.
//!
//! How long a stranger may stay and when a member's connection is idle
//! is the peer server's ([`super::serve`]) to decide.

use fileshare_protocol::conn_limits::{ConnLimits, ConnSlot, Refused};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why an authenticated connection did not get a member's place.
#[derive(Debug, thiserror::Error)]
pub enum NotAdmitted {
    #[error("it was closed meanwhile to make room for newer connections")]
    Evicted,
    #[error(transparent)]
    Full(Refused),
}

/// The two pools of one server.
pub struct ConnPools {
    members: ConnLimits,
    strangers: Arc<Mutex<Strangers>>,
    /// Strangers held at most, in all and from one address.
    max_strangers: usize,
    max_strangers_per_address: usize,
}

#[derive(Default)]
struct Strangers {
    next: u64,
    /// Oldest first: arrival number -> address and what closes it.
    open: BTreeMap<u64, (IpAddr, CancellationToken)>,
    by_addr: HashMap<IpAddr, usize>,
}

impl Strangers {
    fn remove(&mut self, n: u64) -> Option<CancellationToken> {
        let (addr, closed) = self.open.remove(&n)?;
        if let Some(c) = self.by_addr.get_mut(&addr) {
            *c -= 1;
            if *c == 0 {
                self.by_addr.remove(&addr);
            }
        }
        Some(closed)
    }

    /// Closes the oldest stranger from `addr`.
    fn evict_oldest_of(&mut self, addr: IpAddr) {
        let oldest = self.open.iter().find(|(_, (a, _))| *a == addr);
        if let Some(n) = oldest.map(|(&n, _)| n) {
            if let Some(closed) = self.remove(n) {
                closed.cancel();
            }
        }
    }

    /// The address holding the most strangers.
    fn fullest(&self) -> Option<IpAddr> {
        self.by_addr.iter().max_by_key(|(_, &n)| n).map(|(&a, _)| a)
    }
}

/// A connection's place: a stranger's until it shows a ticket, then a
/// member's. Dropping it frees the place.
pub struct Place {
    stage: Stage,
    /// Cancelled when the connection must close: evicted as a stranger.
    closed: CancellationToken,
}

enum Stage {
    Stranger {
        n: u64,
        strangers: Arc<Mutex<Strangers>>,
    },
    Member {
        _slot: ConnSlot,
    },
    /// Left the strangers' pool and refused by the members' (or moving).
    Gone,
}

impl ConnPools {
    /// Members as `ConnLimits::new(members_total, members_per_address)`;
    /// at most `strangers` not yet authenticated connections, at most
    /// `strangers_per_address` of them from one address.
    pub fn new(
        members_total: usize,
        members_per_address: usize,
        strangers: usize,
        strangers_per_address: usize,
    ) -> ConnPools {
        ConnPools {
            members: ConnLimits::new(members_total, members_per_address),
            strangers: Arc::default(),
            max_strangers: strangers.max(1),
            max_strangers_per_address: strangers_per_address.max(1),
        }
    }

    /// A stranger's place for a connection just accepted from `addr`,
    /// closing the oldest stranger of the fullest address if there is no
    /// room.
    pub fn stranger(&self, addr: IpAddr) -> Place {
        let closed = CancellationToken::new();
        let mut s = self.strangers.lock();
        if s.by_addr.get(&addr).copied().unwrap_or(0) >= self.max_strangers_per_address {
            s.evict_oldest_of(addr);
        }
        while s.open.len() >= self.max_strangers {
            let Some(fullest) = s.fullest() else { break };
            s.evict_oldest_of(fullest);
        }
        let n = s.next;
        s.next += 1;
        s.open.insert(n, (addr, closed.clone()));
        *s.by_addr.entry(addr).or_insert(0) += 1;
        drop(s);
        Place {
            stage: Stage::Stranger {
                n,
                strangers: self.strangers.clone(),
            },
            closed,
        }
    }

    /// Moves `place` to the members' pool (once it showed a valid
    /// ticket); a member's place stays as it is. Refused when the members'
    /// caps are reached, or when it was evicted meanwhile.
    pub fn promote(&self, place: &mut Place, addr: IpAddr) -> Result<(), NotAdmitted> {
        if let Stage::Member { .. } = place.stage {
            return Ok(());
        }
        let was = std::mem::replace(&mut place.stage, Stage::Gone);
        let evicted = match was {
            Stage::Stranger { n, strangers } => strangers.lock().remove(n).is_none(),
            Stage::Gone | Stage::Member { .. } => true,
        };
        if evicted || place.closed.is_cancelled() {
            place.closed.cancel();
            return Err(NotAdmitted::Evicted);
        }
        match self.members.admit(addr) {
            Ok(slot) => {
                place.stage = Stage::Member { _slot: slot };
                Ok(())
            }
            Err(e) => {
                place.closed.cancel();
                Err(NotAdmitted::Full(e))
            }
        }
    }

    /// Connections not authenticated yet, held now.
    pub fn strangers(&self) -> usize {
        self.strangers.lock().open.len()
    }

    /// Members' connections held now.
    pub fn members(&self) -> usize {
        self.members.open()
    }
}

impl Place {
    /// Cancelled when this connection must be closed.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Whether it still is a stranger's place.
    pub fn is_stranger(&self) -> bool {
        matches!(self.stage, Stage::Stranger { .. })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Stage::Stranger { n, strangers } = &self.stage {
            strangers.lock().remove(*n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_full_strangers_pool_closes_its_oldest_from_the_fullest_address() {
        let a = ConnPools::new(8, 4, 4, 3);
        let first = a.stranger(ip(1));
        let second = a.stranger(ip(1));
        let third = a.stranger(ip(1));
        // A fourth from the same address: its oldest goes.
        let fourth = a.stranger(ip(1));
        assert!(first.closed().is_cancelled());
        assert!(!second.closed().is_cancelled());
        assert_eq!(a.strangers(), 3);
        // Another address gets in; the pool is full now (4).
        let other = a.stranger(ip(2));
        assert_eq!(a.strangers(), 4);
        // One more from a third address: the flooding address pays.
        let more = a.stranger(ip(3));
        assert!(second.closed().is_cancelled());
        assert!(!other.closed().is_cancelled());
        assert_eq!(a.strangers(), 4);
        drop((first, third, fourth, more));
        assert_eq!(a.strangers(), 1);
    }

    #[test]
    fn a_ticket_moves_a_stranger_to_the_members_pool() {
        let a = ConnPools::new(2, 1, 2, 2);
        let mut m = a.stranger(ip(1));
        a.promote(&mut m, ip(1)).unwrap();
        assert!(!m.is_stranger());
        assert_eq!((a.strangers(), a.members()), (0, 1));
        // Strangers arriving after never touch a member.
        let _s1 = a.stranger(ip(1));
        let _s2 = a.stranger(ip(1));
        let _s3 = a.stranger(ip(1));
        assert!(!m.closed().is_cancelled());
        assert_eq!(a.strangers(), 2);
        // Promoting again is a no-op.
        a.promote(&mut m, ip(1)).unwrap();
        // The members' per-address cap holds.
        let mut second = a.stranger(ip(1));
        assert!(a.promote(&mut second, ip(1)).is_err());
        assert!(second.closed().is_cancelled());
        drop(m);
        assert_eq!(a.members(), 0);
    }

    #[test]
    fn an_evicted_stranger_cannot_become_a_member() {
        let a = ConnPools::new(8, 8, 1, 1);
        let mut old = a.stranger(ip(1));
        let _new = a.stranger(ip(1));
        assert!(old.closed().is_cancelled());
        assert!(a.promote(&mut old, ip(1)).is_err());
        assert_eq!(a.members(), 0);
    }
}
