//! Client to tracker. Every call but `CreateUser`, `Login` and `TicketKey`
//! carries the caller's session token, so any tracker of the cluster can
//! answer any request and a client can fail over freely.

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
pub enum TrackerRequest {
    CreateUser {
        user: String,
        password: String,
    },
    Login {
        user: String,
        password: String,
    },
    Logout {
        session: SessionToken,
    },
    CreateGroup {
        session: SessionToken,
        group: String,
    },
    ListGroups {
        session: SessionToken,
    },
    JoinGroup {
        session: SessionToken,
        group: String,
    },
    LeaveGroup {
        session: SessionToken,
        group: String,
    },
    ListRequests {
        session: SessionToken,
        group: String,
    },
    AcceptRequest {
        session: SessionToken,
        group: String,
        user: String,
    },
    RejectRequest {
        session: SessionToken,
        group: String,
        user: String,
    },
    /// The owner takes `user` out of `group` (durable): their listings are
    /// refused at once, their tickets are not renewed.
    RemoveMember {
        session: SessionToken,
        group: String,
        user: String,
    },
    ListFiles {
        session: SessionToken,
        group: String,
    },
    /// Files whose name contains `pattern`, in every group of the caller.
    Search {
        session: SessionToken,
        pattern: String,
    },
    /// Makes the caller a holder of `meta` in `group` (durable).
    ShareFile {
        session: SessionToken,
        group: String,
        meta: FileMeta,
    },
    /// Ends the caller's holding of `name` in `group` (durable).
    StopShare {
        session: SessionToken,
        group: String,
        name: String,
    },
    /// The file's metadata and the online peers holding any of it.
    Locate {
        session: SessionToken,
        group: String,
        name: String,
    },
    /// A daemon's periodic heartbeat with everything it holds (soft state).
    Announce {
        session: SessionToken,
        peer: PeerId,
        addr: String,
        holdings: Vec<Holding>,
    },
    /// Pieces a peer verified since its last announce.
    ReportPieces {
        session: SessionToken,
        peer: PeerId,
        file: FileId,
        pieces: Vec<u32>,
    },
    /// The peer goes offline and stops being offered.
    LeaveNetwork {
        session: SessionToken,
        peer: PeerId,
    },
    /// A ticket for the caller's daemon `holder` (the peer id it announces
    /// with) in `group`; members only.
    IssueTicket {
        session: SessionToken,
        group: String,
        holder: PeerId,
    },
    /// The cluster's public ticket key, which checks every ticket.
    TicketKey,
    /// Moves the caller's holding of `from` in `group` to the name `to` in
    /// one durable step: no listing ever shows both names or neither. The
    /// file under `to` is the old metadata with the new name (so a new id,
    /// the same piece hashes). `from` stays listed while others hold it
    /// too. A different file named `to` is replaced if the caller alone
    /// holds it, and refused with `NameTaken` if anyone else does.
    RenameShare {
        session: SessionToken,
        group: String,
        from: String,
        to: String,
    },
    /// `ShareFile`, except that a different file named `meta.name` that the
    /// caller alone holds is replaced by this one in the same step, as
    /// rename(2) of a new file onto an old one.
    ReplaceShare {
        session: SessionToken,
        group: String,
        meta: FileMeta,
    },
    /// `request` (a write), once: the cluster keeps the answer to each
    /// client's last write, by `client` (an id the client drew at random)
    /// and `seq` (its writes' sequence number), so the same `Once` sent
    /// again to any tracker after a failover is answered as the first one
    /// was and takes effect once. One level only.
    Once {
        client: u64,
        seq: u64,
        request: Box<TrackerRequest>,
    },
}

impl TrackerRequest {
    /// Whether sending it twice does no harm, so a client may retry it on
    /// another tracker after a connection broke mid-call.
    pub fn is_idempotent(&self) -> bool {
        if let TrackerRequest::Once { .. } = self {
            return true;
        }
        !matches!(
            self,
            TrackerRequest::CreateUser { .. }
                | TrackerRequest::CreateGroup { .. }
                | TrackerRequest::JoinGroup { .. }
                | TrackerRequest::LeaveGroup { .. }
                | TrackerRequest::AcceptRequest { .. }
                | TrackerRequest::RejectRequest { .. }
                // Done twice, the second is refused: the user is no
                // longer a member.
                | TrackerRequest::RemoveMember { .. }
        )
    }

    /// The variant's name, for errors and logs (no fields: they may carry
    /// passwords and tokens).
    pub fn name(&self) -> &'static str {
        match self {
            TrackerRequest::CreateUser { .. } => "CreateUser",
            TrackerRequest::Login { .. } => "Login",
            TrackerRequest::Logout { .. } => "Logout",
            TrackerRequest::CreateGroup { .. } => "CreateGroup",
            TrackerRequest::ListGroups { .. } => "ListGroups",
            TrackerRequest::JoinGroup { .. } => "JoinGroup",
            TrackerRequest::LeaveGroup { .. } => "LeaveGroup",
            TrackerRequest::ListRequests { .. } => "ListRequests",
            TrackerRequest::AcceptRequest { .. } => "AcceptRequest",
            TrackerRequest::RejectRequest { .. } => "RejectRequest",
            TrackerRequest::RemoveMember { .. } => "RemoveMember",
            TrackerRequest::ListFiles { .. } => "ListFiles",
            TrackerRequest::Search { .. } => "Search",
            TrackerRequest::ShareFile { .. } => "ShareFile",
            TrackerRequest::StopShare { .. } => "StopShare",
            TrackerRequest::Locate { .. } => "Locate",
            TrackerRequest::Announce { .. } => "Announce",
            TrackerRequest::ReportPieces { .. } => "ReportPieces",
            TrackerRequest::LeaveNetwork { .. } => "LeaveNetwork",
            TrackerRequest::IssueTicket { .. } => "IssueTicket",
            TrackerRequest::TicketKey => "TicketKey",
            TrackerRequest::RenameShare { .. } => "RenameShare",
            TrackerRequest::ReplaceShare { .. } => "ReplaceShare",
            TrackerRequest::Once { request, .. } => request.name(),
        }
    }
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
}

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
    /// Announce answer: seconds until the next announce is due.
    Announced {
        interval_secs: u32,
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
        }
    }
}

pub type TrackerResult = Result<TrackerReply, ErrorCode>;
