//! Peer to peer. The fetching side authenticates once per group with a
//! tracker-issued [`Ticket`], then asks for bitfields and pieces; several
//! requests may be in flight and replies come back as pieces are read.

use crate::ids::{Bitfield, FileId};
use crate::messages::tracker::Ticket;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Grants access to the files of `ticket.group` on this connection.
    Authenticate { ticket: Ticket },
    /// Which pieces of `file` the serving peer has verified.
    Bitfield { file: FileId },
    /// One whole piece.
    Piece { file: FileId, index: u32 },
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerReply {
    Authenticated,
    Bitfield(Bitfield),
    Piece {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Error(PeerError),
}

impl std::fmt::Debug for PeerReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerReply::Authenticated => f.write_str("Authenticated"),
            PeerReply::Bitfield(b) => write!(f, "Bitfield({b:?})"),
            PeerReply::Piece { data } => write!(f, "Piece({} bytes)", data.len()),
            PeerReply::Error(e) => write!(f, "Error({e:?})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    #[error("authenticate with a ticket first")]
    NotAuthenticated,
    #[error("ticket refused: {0}")]
    TicketRefused(String),
    #[error("not a member of the file's group")]
    NotMember,
    #[error("no such file")]
    NoSuchFile,
    #[error("piece not available")]
    NotAvailable,
    #[error("peer is busy")]
    Busy,
    #[error("peer failed to read the piece")]
    Internal,
}
