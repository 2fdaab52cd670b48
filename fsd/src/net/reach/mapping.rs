//! Port mapping: the daemon asks its home router, over UPnP IGD, to
//! forward a public port to its listening port, and announces that port.
//! The tracker still puts in the address the announce came from, and then
//! dials it like any other: a mapping counts once the tracker reached the
//! daemon through it.
//!
//! The mapping is asked for with a lease and renewed at half of it; a
//! router that offers no IGD (or refuses) is asked again every
//! [`RETRY`]. The lease ends on its own if the daemon stops without
//! removing it.

use super::Reach;
use igd_next::aio::tokio::search_gateway;
use igd_next::{PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long a mapping is asked for; renewed at half of it.
const LEASE: Duration = Duration::from_secs(3600);

/// How long the search for a router may take.
const SEARCH: Duration = Duration::from_secs(3);

/// How soon to ask again after no router answered or it refused.
const RETRY: Duration = Duration::from_secs(300);

/// What a mapping is called on the router.
const DESCRIPTION: &str = "FileShare";

/// One attempt: finds the router, maps `local`'s port (the same public
/// port if free, else any) and returns the public port.
async fn map_once(local: SocketAddr) -> Result<u16, String> {
    let mut options = SearchOptions::default();
    options.timeout = Some(SEARCH);
    options.single_search_timeout = Some(SEARCH);
    let gw = search_gateway(options)
        .await
        .map_err(|e| format!("no UPnP router answered: {e}"))?;
    // The address the router sees this host at, when listening on all.
    let local = if local.ip().is_unspecified() {
        let ip = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect(gw.addr).map(|()| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .map_err(|e| format!("no route to the router at {}: {e}", gw.addr))?;
        SocketAddr::new(ip, local.port())
    } else {
        local
    };
    if !matches!(local.ip(), IpAddr::V4(_)) {
        return Err("UPnP IGD maps IPv4 ports only".into());
    }
    let lease = u32::try_from(LEASE.as_secs()).unwrap_or(u32::MAX);
    let tcp = PortMappingProtocol::TCP;
    match gw
        .add_port(tcp, local.port(), local, lease, DESCRIPTION)
        .await
    {
        Ok(()) => Ok(local.port()),
        Err(first) => gw
            .add_any_port(tcp, local, lease, DESCRIPTION)
            .await
            .map_err(|e| format!("the router refused a mapping: {first}; then {e}")),
    }
}

/// Keeps a mapping of the listening port while the daemon runs, and
/// records it for announces and `fsd status`.
pub async fn run(reach: Arc<Reach>) {
    // A daemon listening on loopback serves this machine only.
    let Some(local) = reach.listen.get().copied() else {
        return;
    };
    if local.ip().is_loopback() {
        return;
    }
    loop {
        match map_once(local).await {
            Ok(port) => {
                if reach.mapped_port() != Some(port) {
                    tracing::info!(port, "the router forwards a public port here (UPnP)");
                }
                reach.set_mapped(Some(port));
                tokio::time::sleep(LEASE / 2).await;
            }
            Err(e) => {
                if reach.mapped_port().is_some() {
                    tracing::warn!("lost the router's port mapping: {e}");
                } else {
                    tracing::debug!("no port mapping: {e}");
                }
                reach.set_mapped(None);
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
