//! A daemon's presence: its announces, piece reports and leaving.

use super::{Holding, Reach, SessionToken};
use crate::ids::{FileId, PeerId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A daemon's periodic heartbeat with everything it holds (soft state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub session: SessionToken,
    pub peer: PeerId,
    /// The daemon's listening address in the family of this connection.
    pub addr: String,
    /// Its listening addresses in other families (at most
    /// [`MAX_ALSO_ADDRS`](super::MAX_ALSO_ADDRS)), which the tracker offers
    /// only once it has dialled the daemon there itself.
    pub also: Vec<String>,
    pub holdings: Vec<Holding>,
}
wraps!(Announce);
answers!(Announce, "Announced", Announced, super::TrackerReply::Announced {
    interval_secs,
    offered,
    seen,
    reach,
} => Announced {
    interval: Duration::from_secs(u64::from(interval_secs)),
    offered,
    seen,
    reach,
});

/// An announce's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// When the next announce is due.
    pub interval: Duration,
    /// The address the tracker offers this peer at.
    pub offered: String,
    /// The address the announce's connection came from.
    pub seen: String,
    pub reach: Reach,
}

/// Pieces a peer verified since its last announce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportPieces {
    pub session: SessionToken,
    pub peer: PeerId,
    pub file: FileId,
    pub pieces: Vec<u32>,
}
wraps!(ReportPieces);
answers!(ReportPieces, done);

/// The peer goes offline and stops being offered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveNetwork {
    pub session: SessionToken,
    pub peer: PeerId,
}
wraps!(LeaveNetwork);
answers!(LeaveNetwork, done);
