//! The messages of each channel. A connection opens with a [`Hello`] each
//! way; after that every frame is a [`Request`] or a [`Reply`] of the
//! channel's body types, matched by id, except between trackers, where
//! every frame is a [`ClusterMsg`] (see [`cluster`]).

pub mod cluster;
pub mod peer;
pub mod ticket;
pub mod tracker;

use crate::ids::PeerId;
use serde::{Deserialize, Serialize};

pub use cluster::ClusterMsg;
pub use peer::{Payload, PeerError, PeerReply, PeerRequest, PexPeer, PexUpdate};
pub use ticket::{Ticket, TicketError, TicketKey};
pub use tracker::{SessionToken, TrackerCall, TrackerReply, TrackerRequest, TrackerResult};

/// First bytes of every handshake, so a stray client fails fast.
pub const MAGIC: [u8; 4] = *b"FSH\x01";

/// Sent by both ends before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u32,
    pub role: Role,
}

/// Who is speaking, which decides the channel's message types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// `fsd` (CLI or daemon) talking to a tracker.
    Client,
    /// A tracker, by its 1-based number in the trackers file.
    Tracker { no: u32 },
    /// A daemon's peer server or a daemon fetching pieces.
    Peer { id: PeerId },
}

/// A request and the id its reply will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<T> {
    pub id: u64,
    pub body: T,
}

/// The reply to the request with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply<T> {
    pub id: u64,
    pub body: T,
}
