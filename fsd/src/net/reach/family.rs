//! Both address families. A daemon listening on `[::]` takes IPv6 and
//! IPv4 on one port; it announces the address that routes to its tracker
//! and, besides it, its address in the other family. A reader dials first
//! the holder's address in a family it can route that the tracker dialled
//! itself, IPv6 before IPv4: where both ends have IPv6, no router
//! translates addresses between them.

use fileshare_protocol::messages::tracker::{PeerLocation, Reach as Seen};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

/// Destinations that stand for "beyond this machine" in each family, to
/// find the address this host sends from there: documentation addresses,
/// only looked up in the routing table (connecting a UDP socket sends
/// nothing).
const BEYOND_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
const BEYOND_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    9,
);

/// The local address this host sends from to reach `to`, if it has a
/// route there.
pub fn route_from(to: SocketAddr) -> Option<IpAddr> {
    let any = if to.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let s = UdpSocket::bind(any).ok()?;
    s.connect(to).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Whether a socket bound at `bound` takes both families.
fn dual_stack(bound: SocketAddr) -> bool {
    bound.is_ipv6() && bound.ip().is_unspecified()
}

/// The address other peers reach us at: the listening port on the local
/// address that routes to the first tracker (`tracker`), in a family the
/// listener takes.
pub fn primary(bound: SocketAddr, tracker: &str) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let dual = dual_stack(bound);
    let to = (tracker.to_socket_addrs().ok().into_iter().flatten())
        .find(|a| a.is_ipv4() || (dual && a.is_ipv6()));
    let ip = match to.and_then(route_from) {
        Some(ip) => ip,
        None if to.is_some_and(|t| t.is_ipv6()) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    SocketAddr::new(ip, bound.port())
}

/// This daemon's address in the family other than `primary`'s, to
/// announce besides it: only where the listener takes both families, and
/// only an address with a route beyond this machine (a daemon that
/// reaches its tracker over loopback stays on loopback).
pub fn others(bound: SocketAddr, primary: SocketAddr) -> Vec<String> {
    if !dual_stack(bound) || primary.ip().is_loopback() {
        return Vec::new();
    }
    let beyond = if primary.is_ipv4() {
        BEYOND_V6
    } else {
        BEYOND_V4
    };
    (route_from(beyond).into_iter())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, bound.port()).to_string())
        .collect()
}

/// The holder's address to dial before the one the tracker offers, if a
/// better one is known: of the addresses the tracker dialled itself, one
/// this host can route, IPv6 first.
pub fn preferred(remote: &PeerLocation) -> Option<String> {
    let direct = (remote.reach == Seen::Direct).then_some(&remote.addr);
    let best = (remote.also.iter().chain(direct))
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .filter(|a| route_from(*a).is_some())
        .min_by_key(SocketAddr::is_ipv4)?
        .to_string();
    (best != remote.addr).then_some(best)
}

/// Where a punched connection to `to` leaves from: the listening address,
/// or its IPv4 side where the listener takes both families.
pub fn punch_from(listen: SocketAddr, to: SocketAddr) -> SocketAddr {
    if to.is_ipv4() && dual_stack(listen) {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, listen.port()))
    } else {
        listen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fileshare_protocol::{Bitfield, PeerId};

    fn at(addr: &str, reach: Seen, also: &[&str]) -> PeerLocation {
        PeerLocation {
            peer: PeerId([1; 16]),
            user: "u".into(),
            addr: addr.into(),
            have: Bitfield::full(1),
            reach,
            also: also.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn a_reader_dials_ipv6_first_where_the_tracker_reached_it() {
        // Loopback routes in both families on every host.
        let both = at("127.0.0.1:7", Seen::Unreachable, &["[::1]:7"]);
        assert_eq!(preferred(&both).as_deref(), Some("[::1]:7"));
        let v6_first = at("127.0.0.1:7", Seen::Direct, &["[::1]:8"]);
        assert_eq!(preferred(&v6_first).as_deref(), Some("[::1]:8"));
        // Nothing better than what the tracker offers.
        assert_eq!(preferred(&at("127.0.0.1:7", Seen::Direct, &[])), None);
        assert_eq!(
            preferred(&at("[::1]:7", Seen::Direct, &["127.0.0.1:7"])),
            None
        );
        assert_eq!(
            preferred(&at("127.0.0.1:7", Seen::Unknown, &["junk"])),
            None
        );
    }

    #[test]
    fn a_dual_stack_listener_offers_the_family_of_its_tracker() {
        let any6: SocketAddr = "[::]:4000".parse().unwrap();
        assert_eq!(
            primary(any6, "127.0.0.1:7000").to_string(),
            "127.0.0.1:4000"
        );
        assert_eq!(primary(any6, "[::1]:7000").to_string(), "[::1]:4000");
        // IPv4 only: an IPv6 tracker is no route for it.
        let any4: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert_eq!(primary(any4, "[::1]:7000").to_string(), "127.0.0.1:4000");
        let fixed: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(primary(fixed, "[::1]:7000"), fixed);
        // On loopback nothing else is announced.
        assert!(others(any6, primary(any6, "127.0.0.1:7000")).is_empty());
        assert!(others(any4, "192.0.2.7:4000".parse().unwrap()).is_empty());
    }

    #[test]
    fn punches_to_ipv4_leave_from_the_ipv4_side() {
        let any6: SocketAddr = "[::]:4000".parse().unwrap();
        let v4: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        assert_eq!(punch_from(any6, v4).to_string(), "0.0.0.0:4000");
        assert_eq!(punch_from(any6, v6), any6);
    }
}
