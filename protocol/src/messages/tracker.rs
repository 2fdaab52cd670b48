//! Client to tracker. Every call but `CreateUser`, `Login` and `TicketKey`
//! carries the caller's session token, so any tracker of the cluster can
//! answer any request and a client can fail over freely.
//!
//! Each request is a struct of its own, in the file of its family, that
//! names its reply ([`TrackerCall`]); [`TrackerRequest`] wraps them for
//! the wire. This file holds what the replies carry.

#[macro_use]
mod request;
mod account;
mod file;
mod group;
mod notice;
mod peer;
mod reach;

pub use account::{AskTicketKey, CreateUser, IssueTicket, Login, Logout, Session};
pub use file::{
    ListFiles, Locate, Location, RenameShare, ReplaceShare, Search, ShareFile, StopShare,
};
pub use group::{
    AcceptRequest, CreateGroup, JoinGroup, LeaveGroup, ListGroups, ListRequests, RejectRequest,
    RemoveMember,
};
pub use notice::{Notice, MAX_NOTICES};
pub use peer::{Announce, Announced, LeaveNetwork, ReportPieces};
pub use reach::{AwaitCalls, Contact, PlaceCall};
pub use request::{TrackerCall, TrackerRequest, UnexpectedReply};

use crate::error::ErrorCode;
use crate::ids::{Bitfield, FileId, FileMeta, PeerId};
use crate::messages::ticket::{Ticket, TicketKey};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A random bearer token naming a logged-in session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionToken(pub [u8; 32]);

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

/// One file a peer holds, and which of its pieces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub file: FileId,
    pub have: Bitfield,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub name: String,
    pub owner: String,
    pub members: u32,
    /// The caller owns it.
    pub is_owner: bool,
    /// The caller is a member (owners are members).
    pub is_member: bool,
    /// The caller asked to join and awaits a decision.
    pub pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub group: String,
    pub name: String,
    pub size: u64,
    pub id: FileId,
    /// Online peers holding at least one piece.
    pub peers_online: u32,
    /// Users who share it (durable holders).
    pub holders: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLocation {
    pub peer: PeerId,
    pub user: String,
    pub addr: String,
    pub have: Bitfield,
    /// Whether the tracker could dial `addr` itself.
    pub reach: Reach,
    /// The peer's addresses in other address families that the tracker
    /// dialled it at itself (so no translation is in the way): a reader
    /// that can route one of them dials it first.
    pub also: Vec<String>,
}

/// Addresses of other families one announce may carry; more are ignored.
pub const MAX_ALSO_ADDRS: usize = 2;

/// What a tracker found when it dialled a daemon's offered address (a TLS
/// handshake that must show the daemon's own key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reach {
    /// Not tried yet (a daemon that just announced).
    Unknown,
    /// Dialled and answered with the daemon's key.
    Direct,
    /// Could not be dialled: behind NAT or a firewall. Readers ask it to
    /// dial back ([`CallKind::DialBack`]) instead.
    Unreachable,
}

/// A request from peer `from` to open a connection to it; then the TLS
/// peer connection runs as usual, `from` as the TLS client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub from: PeerId,
    /// `from`'s offered address (empty for a relay).
    pub addr: String,
    pub nonce: [u8; 16],
    pub how: CallKind,
}

/// How a called holder opens the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallKind {
    /// Dial `addr` and send the reverse magic and the nonce first.
    DialBack,
    /// Dial `addr` from this daemon's own listening port while the caller
    /// dials this one's (TCP simultaneous open through both routers);
    /// both send their magic and the nonce first.
    Punch,
    /// Connect to the relay of the tracker that handed the call out, as
    /// side 1 of the nonce.
    Relay,
}

/// What a connection to a tracker's relay starts with (a TLS connection
/// starts with `0x16`), before the nonce and the side.
pub const RELAY_MAGIC: [u8; 4] = *b"FSY\x01";

/// The relay preamble's length: magic, nonce, side.
pub const RELAY_PREAMBLE: usize = 21;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerReply {
    Done,
    Session {
        token: SessionToken,
        user: String,
        expires_unix_ms: u64,
    },
    Groups(Vec<GroupInfo>),
    Requests(Vec<String>),
    Files(Vec<FileEntry>),
    Location {
        meta: FileMeta,
        peers: Vec<PeerLocation>,
    },
    Ticket(Ticket),
    TicketKey(TicketKey),
    /// Announce answer: seconds until the next announce is due; the
    /// address the tracker offers this daemon at (the address its
    /// connection came from, with the announced port), the connection's
    /// own source address, and whether the tracker could dial the offered
    /// one.
    Announced {
        interval_secs: u32,
        offered: String,
        seen: String,
        reach: Reach,
    },
    /// Calls placed for the daemon that waited ([`TrackerRequest::AwaitCalls`]).
    Calls(Vec<Call>),
    /// `reply`, and what the caller's user is told ([`Notice`]): sent in
    /// place of the reply to a user's command while they have notices.
    Noted {
        notices: Vec<Notice>,
        reply: Box<TrackerReply>,
    },
}

impl TrackerReply {
    /// The variant's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            TrackerReply::Done => "Done",
            TrackerReply::Session { .. } => "Session",
            TrackerReply::Groups(_) => "Groups",
            TrackerReply::Requests(_) => "Requests",
            TrackerReply::Files(_) => "Files",
            TrackerReply::Location { .. } => "Location",
            TrackerReply::Ticket(_) => "Ticket",
            TrackerReply::TicketKey(_) => "TicketKey",
            TrackerReply::Announced { .. } => "Announced",
            TrackerReply::Calls(_) => "Calls",
            TrackerReply::Noted { reply, .. } => reply.name(),
        }
    }
}

pub type TrackerResult = Result<TrackerReply, ErrorCode>;
