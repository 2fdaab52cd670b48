//! Relayed connections, the last resort: when neither daemon can dial the
//! other, the reader asks its tracker for a relay slot (the tracker calls
//! the holder to it), and both connect to the tracker's own port with the
//! relay preamble ([`RELAY_MAGIC`], the nonce, their side). The tracker
//! then copies bytes between them; the peers' TLS runs end to end inside,
//! the reader as the TLS client pinning the holder's key, so the relay
//! sees ciphertext only.

use crate::trackers::{LinkError, TrackerLink};
use fileshare_protocol::messages::tracker::{CallKind, RELAY_MAGIC, RELAY_PREAMBLE};
use fileshare_protocol::PeerId;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long connecting to the relay may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the tracker would not relay: {0}")]
    Refused(#[source] LinkError),
    #[error("cannot connect to the relay at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the relay at {0} did not answer in time")]
    Timeout(String),
    #[error("no random nonce: {0}")]
    Random(#[source] getrandom::Error),
}

/// Connects to the relay of the tracker in use as `side` of `nonce`.
pub async fn join(
    tracker: &TrackerLink,
    nonce: [u8; 16],
    side: u8,
) -> Result<TcpStream, RelayError> {
    let addr = tracker.client.current().to_string();
    let work = async {
        let mut s = TcpStream::connect(&addr).await?;
        let mut pre = [0u8; RELAY_PREAMBLE];
        pre[..4].copy_from_slice(&RELAY_MAGIC);
        pre[4..20].copy_from_slice(&nonce);
        pre[20] = side;
        s.write_all(&pre).await?;
        let _ = s.set_nodelay(true);
        std::io::Result::Ok(s)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, work).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(RelayError::Connect { addr, source }),
        Err(_) => Err(RelayError::Timeout(addr)),
    }
}

/// Asks for a relay slot to `holder` (in `group`) and joins it as the
/// reader; the stream carries bytes once the holder joins too.
pub async fn request(
    tracker: &TrackerLink,
    group: &str,
    holder: PeerId,
) -> Result<TcpStream, RelayError> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(RelayError::Random)?;
    tracker
        .place_call(CallKind::Relay, group, holder, nonce)
        .await
        .map_err(RelayError::Refused)?;
    join(tracker, nonce, 0).await
}
