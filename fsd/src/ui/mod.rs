//! The dashboard: a web page served by the daemon that shows the user's
//! groups, files, piece maps, transfers, peers and downloads as they
//! change, and takes a few actions (accept or reject a request to join,
//! stop sharing a file, start a download).
//!
//! Plain HTML, CSS and JavaScript compiled into the binary: nothing to
//! build, nothing fetched from elsewhere. It listens on loopback unless
//! told otherwise, and only answers requests that carry the access token.
//!
//! # Layout
//! - [`meter`]: transfer rates from the daemon's byte counters, and their
//!   recent history.
//! - [`snapshot`]: what the page and `fsd status` show, gathered into one
//!   serializable value.
//! - [`token`]: the access token kept in the home, and how requests carry
//!   it.
//! - [`download_dest`]: where the download action may write.
//! - [`server`]: the routes, the token guard, the event stream and the
//!   actions.
//! - `assets/`: the page, its style and its script.

pub mod download_dest;
pub mod meter;
pub mod server;
pub mod snapshot;
pub mod token;

/// Binds the dashboard's address before anything else starts, so a busy
/// port fails the mount at once; a non-loopback address is logged, as it
/// offers the page (behind its token) to the network.
pub async fn bind(
    addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    use anyhow::Context;
    let Some(addr) = addr else {
        return Ok(None);
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the dashboard"))?;
    if !l.local_addr()?.ip().is_loopback() {
        tracing::warn!(addr = %addr, "the dashboard listens beyond this machine");
    }
    Ok(Some(l))
}
