//! Connection caps of a server: in total and per source address.
//!
//! A server asks [`ConnLimits::admit`] for every accepted socket and keeps
//! the returned [`ConnSlot`] as long as it serves it; a socket over either
//! cap is closed at once, so a flood from one address can neither hold every
//! slot nor make other clients wait in the listen backlog.
//!
//! "One address" is a [`Source`]: an IPv4 address, or an IPv6 /64, which
//! every per-address budget counts by.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What a per-address budget counts as one address: an IPv4 address, or
/// the /64 an IPv6 address is in. A host is routinely given a whole /64
/// and may send from any address in it, so counting IPv6 addresses one by
/// one would give it an unlimited budget. An IPv4-mapped IPv6 address is
/// its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !u128::from(u64::MAX);
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        Source::of(ip)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{limit} connections are open, the most this server serves at once")]
    Total { limit: usize },
    #[error("{limit} connections from {addr} are open, the most served from one address")]
    PerAddress { addr: Source, limit: usize },
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_addr: HashMap<Source, usize>,
}

/// The caps and the connections open now. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    total: usize,
    per_addr: usize,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnSlot {
    addr: Source,
    counts: Arc<Mutex<Counts>>,
}

impl ConnLimits {
    /// At most `total` connections, at most `per_addr` of them from one
    /// address (each at least 1).
    pub fn new(total: usize, per_addr: usize) -> ConnLimits {
        ConnLimits {
            total: total.max(1),
            per_addr: per_addr.max(1),
            counts: Arc::default(),
        }
    }

    /// A place for a connection from `addr`, or why there is none.
    pub fn admit(&self, addr: IpAddr) -> Result<ConnSlot, Refused> {
        let addr = Source::of(addr);
        let mut c = lock(&self.counts);
        if c.total >= self.total {
            return Err(Refused::Total { limit: self.total });
        }
        let n = c.by_addr.entry(addr).or_insert(0);
        if *n >= self.per_addr {
            return Err(Refused::PerAddress {
                addr,
                limit: self.per_addr,
            });
        }
        *n += 1;
        c.total += 1;
        Ok(ConnSlot {
            addr,
            counts: self.counts.clone(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.counts).total
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                c.by_addr.remove(&self.addr);
            }
        }
    }
}

/// Never held across anything that can panic halfway.
fn lock(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(
            limits.admit(a).unwrap_err(),
            Refused::PerAddress {
                addr: Source::of(a),
                limit: 2
            }
        );
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refused::Total { limit: 3 });
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.admit(a).unwrap();
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address() {
        let limits = ConnLimits::new(100, 2);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _a = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = limits
            .admit(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"))
            .unwrap();
        let refused = limits.admit(ip("2001:db8:1:2:aaaa::7")).unwrap_err();
        assert_eq!(
            refused,
            Refused::PerAddress {
                addr: Source::of(ip("2001:db8:1:2::")),
                limit: 2
            }
        );
        assert!(
            refused.to_string().contains("2001:db8:1:2::/64"),
            "{refused}"
        );
        // The next /64 is another address.
        let _c = limits.admit(ip("2001:db8:1:3::1")).unwrap();
        // IPv4 counts by address, mapped or not.
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.1")),
            Source::of(ip("10.0.0.1"))
        );
        assert_ne!(Source::of(ip("10.0.0.1")), Source::of(ip("10.0.0.2")));
        assert_eq!(Source::of(ip("::1")).to_string(), "::/64");
    }
}
