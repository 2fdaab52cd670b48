//! Port mapping: the daemon asks its home router to forward a public port
//! to its listening port, and announces that port. Routers speak PCP or
//! NAT-PMP (asked at the default route's next hop), or UPnP IGD; the
//! first that grants a mapping is kept. PCP and NAT-PMP come first: one
//! datagram to the gateway, refused at once by a router that does not
//! speak them, where UPnP's search waits out its timeout. The tracker
//! still puts in the address the announce came from, and then dials it
//! like any other: a mapping counts once the tracker reached the daemon
//! through it (the tracker remembers a failed dial for some minutes, so
//! the mapping must come fast).
//!
//! The mapping is asked for with a lease and renewed at half of what the
//! router granted; a router that offers none (or refuses) is asked again
//! every [`RETRY`]. The mapping is removed when the daemon stops, and its
//! lease ends on its own if the daemon dies.

use super::Reach;
use crab_nat::{
    pcp, InternetProtocol, MappingFailure, PortMapping, PortMappingOptions, PortMappingType,
    TimeoutConfig,
};
use igd_next::aio::tokio::{search_gateway, Tokio};
use igd_next::aio::Gateway;
use igd_next::{PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

/// How long a mapping is asked for; renewed at half of what is granted.
const LEASE: Duration = Duration::from_secs(3600);

/// How long the search for a UPnP router may take.
const SEARCH: Duration = Duration::from_secs(3);

/// PCP and NAT-PMP requests: three tries within about two seconds, so a
/// router that does not speak them delays nothing for long.
const PMP_TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_secs(1)),
};

/// How soon to ask again after no router answered or it refused.
const RETRY: Duration = Duration::from_secs(300);

/// How long removing the mapping may hold up the daemon's stop.
const REMOVE: Duration = Duration::from_secs(3);

/// What a mapping is called on the router.
const DESCRIPTION: &str = "FileShare";

/// The protocol a router granted the mapping through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Upnp,
    NatPmp,
    Pcp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Upnp => "UPnP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Pcp => "PCP",
        })
    }
}

/// The public port the router forwards here, and how it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub port: u16,
    pub by: Protocol,
}

/// A mapping granted by the router: what renews and removes it.
#[derive(Clone)]
pub enum Held {
    Upnp {
        gateway: Gateway<Tokio>,
        local: SocketAddr,
        port: u16,
    },
    Pmp(PortMapping),
}

impl Held {
    fn mapped(&self) -> Mapped {
        match self {
            Held::Upnp { port, .. } => Mapped {
                port: *port,
                by: Protocol::Upnp,
            },
            Held::Pmp(m) => Mapped {
                port: m.external_port().get(),
                by: match m.mapping_type() {
                    PortMappingType::NatPmp => Protocol::NatPmp,
                    PortMappingType::Pcp { .. } => Protocol::Pcp,
                },
            },
        }
    }

    /// Half of the lease the router granted.
    fn renew_in(&self) -> Duration {
        match self {
            Held::Upnp { .. } => LEASE / 2,
            Held::Pmp(m) => Duration::from_secs(u64::from(m.lifetime().max(2)) / 2),
        }
    }

    /// Asks the router for the same mapping again, with a fresh lease.
    async fn renew(&mut self) -> Result<(), String> {
        match self {
            Held::Upnp {
                gateway,
                local,
                port,
            } => gateway
                .add_port(
                    PortMappingProtocol::TCP,
                    *port,
                    *local,
                    lease(),
                    DESCRIPTION,
                )
                .await
                .map_err(|e| format!("the router refused to renew the mapping: {e}")),
            Held::Pmp(m) => m
                .renew()
                .await
                .map_err(|e| format!("the router refused to renew the mapping: {e}")),
        }
    }

    async fn remove(self) -> Result<(), String> {
        match self {
            Held::Upnp { gateway, port, .. } => gateway
                .remove_port(PortMappingProtocol::TCP, port)
                .await
                .map_err(|e| e.to_string()),
            Held::Pmp(m) => m.try_drop().await.map_err(|(e, _)| e.to_string()),
        }
    }
}

fn lease() -> u32 {
    u32::try_from(LEASE.as_secs()).unwrap_or(u32::MAX)
}

/// The address this host reaches `to` from: the one to map when the
/// daemon listens on all addresses.
fn local_toward(to: IpAddr, local: SocketAddr) -> Result<SocketAddr, String> {
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    let ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(SocketAddr::new(to, 9)).map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .map_err(|e| format!("no route to the router at {to}: {e}"))?;
    Ok(SocketAddr::new(ip, local.port()))
}

/// Finds a UPnP router and maps `local`'s port (the same public port if
/// free, else any).
async fn map_upnp(local: SocketAddr) -> Result<Held, String> {
    let mut options = SearchOptions::default();
    options.timeout = Some(SEARCH);
    options.single_search_timeout = Some(SEARCH);
    let gateway = search_gateway(options)
        .await
        .map_err(|e| format!("no UPnP router answered: {e}"))?;
    let local = local_toward(gateway.addr.ip(), local)?;
    if !matches!(local.ip(), IpAddr::V4(_)) {
        return Err("UPnP IGD maps IPv4 ports only".into());
    }
    let tcp = PortMappingProtocol::TCP;
    let port = match gateway
        .add_port(tcp, local.port(), local, lease(), DESCRIPTION)
        .await
    {
        Ok(()) => local.port(),
        Err(first) => gateway
            .add_any_port(tcp, local, lease(), DESCRIPTION)
            .await
            .map_err(|e| format!("the UPnP router refused a mapping: {first}; then {e}"))?,
    };
    Ok(Held::Upnp {
        gateway,
        local,
        port,
    })
}

/// Asks the default route's next hop over PCP, then NAT-PMP, to map
/// `local`'s port (the same public port if free).
async fn map_pmp(local: SocketAddr) -> Result<Held, String> {
    let route = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| format!("cannot read the routing table: {e}"))?;
    let gateway = IpAddr::V4(default_gateway(&route).ok_or("no default route via a gateway")?);
    let client = local_toward(gateway, local)?.ip();
    let port = NonZeroU16::new(local.port()).ok_or("no listening port")?;
    let options = PortMappingOptions {
        external_port: Some(port),
        lifetime_seconds: Some(lease()),
        timeout_config: Some(PMP_TIMEOUTS),
    };
    let tcp = InternetProtocol::Tcp;
    match PortMapping::new(gateway, client, tcp, port, options).await {
        Ok(m) => Ok(Held::Pmp(m)),
        Err(e @ MappingFailure::Pcp(pcp::Failure::Timeout)) => Err(format!(
            "no PCP or NAT-PMP router answered at {gateway}: {e}"
        )),
        // A router may refuse PCP in other ways than naming NAT-PMP.
        Err(pcp) => crab_nat::natpmp::port_mapping(gateway, tcp, port, options)
            .await
            .map(Held::Pmp)
            .map_err(|e| format!("the router at {gateway} refused PCP ({pcp}) and NAT-PMP ({e})")),
    }
}

/// The next hop of the IPv4 default route in `/proc/net/route`'s text,
/// whose addresses are in network byte order printed as host integers.
fn default_gateway(route: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u16 = 0x1;
    const RTF_GATEWAY: u16 = 0x2;
    route.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, dest, gw, flags, _, _, _, mask, ..] = f.as_slice() else {
            return None;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let flags = u16::from_str_radix(flags, 16).ok()?;
        let up = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
        let gw = Ipv4Addr::from(u32::from_be(hex(gw)?));
        (up && hex(dest)? == 0 && hex(mask)? == 0 && !gw.is_unspecified()).then_some(gw)
    })
}

/// PCP / NAT-PMP first, then UPnP IGD: the first mapping granted.
async fn map_any(local: SocketAddr) -> Result<Held, String> {
    match map_pmp(local).await {
        Ok(held) => Ok(held),
        Err(pmp) => map_upnp(local)
            .await
            .map_err(|upnp| format!("{pmp}; {upnp}")),
    }
}

/// Keeps a mapping of the listening port while the daemon runs, and
/// records it for announces, `fsd status` and its removal on stop.
pub async fn run(reach: Arc<Reach>) {
    // A daemon listening on loopback serves this machine only.
    let Some(local) = reach.listen.get().copied() else {
        return;
    };
    if local.ip().is_loopback() {
        return;
    }
    loop {
        match map_any(local).await {
            Ok(mut held) => loop {
                let mapped = held.mapped();
                if reach.mapped() != Some(mapped) {
                    tracing::info!(
                        port = mapped.port,
                        "the router forwards a public port here ({})",
                        mapped.by
                    );
                }
                reach.set_mapped(Some(mapped));
                *reach.held.lock() = Some(held.clone());
                tokio::time::sleep(held.renew_in()).await;
                if let Err(e) = held.renew().await {
                    tracing::warn!("lost the router's port mapping: {e}");
                    reach.set_mapped(None);
                    reach.held.lock().take();
                    break;
                }
            },
            Err(e) => {
                tracing::debug!("no port mapping: {e}");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Removes the mapping from the router, once [`run`] has stopped.
pub async fn remove(reach: &Reach) {
    let Some(held) = reach.held.lock().take() else {
        return;
    };
    reach.set_mapped(None);
    let by = held.mapped().by;
    match tokio::time::timeout(REMOVE, held.remove()).await {
        Ok(Ok(())) => tracing::debug!("removed the router's port mapping ({by})"),
        Ok(Err(e)) => tracing::warn!("the router kept the port mapping ({by}): {e}"),
        Err(_) => tracing::warn!("the router did not answer the mapping's removal ({by})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_names_its_gateway() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        let want = if cfg!(target_endian = "little") {
            Ipv4Addr::new(192, 168, 1, 1)
        } else {
            Ipv4Addr::new(1, 1, 168, 192)
        };
        assert_eq!(default_gateway(route), Some(want));
    }

    #[test]
    fn no_default_route_names_no_gateway() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                     bad line\n";
        assert_eq!(default_gateway(route), None);
    }
}
