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
    /// `addr` is its listening address in the family of this connection;
    /// `also` its listening addresses in other families (at most
    /// [`MAX_ALSO_ADDRS`]), which the tracker offers only once it has
    /// dialled the daemon there itself.
    Announce {
        session: SessionToken,
        peer: PeerId,
        addr: String,
        also: Vec<String>,
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
    /// A reader that cannot dial `holder` (listed unreachable) asks it to
    /// dial back: the tracker hands the holder a [`Call`] naming the
    /// reader's own offered address and `nonce`, which the holder sends
    /// first on the connection it opens. Both must be in `group`.
    CallBack {
        session: SessionToken,
        group: String,
        holder: PeerId,
        nonce: [u8; 16],
    },
    /// Like `CallBack`, for two daemons neither of which can dial the
    /// other: both connect to this tracker's relay (at the address the
    /// caller reaches this tracker at), send [`RELAY_MAGIC`], `nonce` and
    /// their side (0 the caller, 1 the holder), and the tracker forwards
    /// bytes between them. The peer TLS runs end to end inside.
    Relay {
        session: SessionToken,
        group: String,
        holder: PeerId,
        nonce: [u8; 16],
    },
    /// Like `CallBack`, for two daemons both behind NAT: the holder is
    /// called to dial the caller's offered address from its own listening
    /// port while the caller dials the holder's the same way.
    Punch {
        session: SessionToken,
        group: String,
        holder: PeerId,
        nonce: [u8; 16],
    },
    /// A daemon waits (at most `wait_ms`, capped by the tracker) for calls
    /// other daemons placed for it; answered with [`TrackerReply::Calls`],
    /// empty when none came.
    AwaitCalls {
        session: SessionToken,
        peer: PeerId,
        wait_ms: u32,
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
            TrackerRequest::CallBack { .. } => "CallBack",
            TrackerRequest::AwaitCalls { .. } => "AwaitCalls",
            TrackerRequest::Relay { .. } => "Relay",
            TrackerRequest::Punch { .. } => "Punch",
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
    /// dial back ([`TrackerRequest::CallBack`]) instead.
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
        }
    }
}

pub type TrackerResult = Result<TrackerReply, ErrorCode>;
