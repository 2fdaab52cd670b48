//! Peer to peer. The fetching side authenticates per group with a
//! tracker-issued [`Ticket`] naming its own peer id, then subscribes to a
//! file's bitfield and asks for pieces; several requests may be in flight
//! and replies come back as pieces are read. The serving peer checks the
//! ticket itself, with the cluster's ticket key, and checks on every
//! request that the ticket for the file's group is still unexpired: the
//! fetching side authenticates again with a fresh ticket before its ticket
//! expires.
//!
//! Every request gets exactly one reply, with two exceptions:
//! [`PeerRequest::Subscribe`] gets a stream of them (its bitfield, then a
//! [`PeerReply::Have`] per newly verified piece), and [`PeerRequest::Cancel`]
//! gets none of its own: the request it cancels is answered with
//! [`PeerError::Cancelled`] if it was not answered yet.

use crate::ids::{Bitfield, FileId};
use crate::messages::ticket::{Ticket, TicketError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Grants access to the files of `ticket.group` on this connection
    /// until the ticket expires; a later one for the same group extends it.
    Authenticate { ticket: Ticket },
    /// One whole piece. A rate-limited peer may answer [`PeerError::Busy`]
    /// for a piece it has just sent to someone else while other requests
    /// wait: get it from that peer, or ask again later (a second ask is
    /// served).
    Piece { file: FileId, index: u32 },
    /// The bitfield of `file` now, then a [`PeerReply::Have`] (same request
    /// id) for every piece the serving peer verifies later, for as long as
    /// the connection lives: new pieces are offered at once, not polled. A
    /// [`PeerReply::Bitfield`] may come again if Haves were dropped, or
    /// when the peer evicted pieces: it replaces the previous one, and a
    /// piece it lacks is no longer offered (asked anyway, it is answered
    /// [`PeerError::NotAvailable`]). The stream ends with
    /// [`PeerError::TicketExpired`] once the group's ticket expires without
    /// a fresh one.
    Subscribe { file: FileId },
    /// Drops the request `id` if it is still waiting to be served (the
    /// piece arrived from another peer); see the module documentation.
    Cancel { id: u64 },
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerReply {
    Authenticated,
    Bitfield(Bitfield),
    /// Always the last field of its variant, so its bytes end the frame:
    /// they are written from where the serving peer read them and read
    /// where they arrived ([`crate::codec::encode_piece_head`],
    /// [`crate::codec::decode_peer_reply`]).
    Piece {
        data: Payload,
    },
    Error(PeerError),
    /// One more verified piece, on a [`PeerRequest::Subscribe`] stream.
    Have(u32),
}

impl std::fmt::Debug for PeerReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerReply::Authenticated => f.write_str("Authenticated"),
            PeerReply::Bitfield(b) => write!(f, "Bitfield({b:?})"),
            PeerReply::Piece { data } => write!(f, "Piece({} bytes)", data.len()),
            PeerReply::Error(e) => write!(f, "Error({e:?})"),
            PeerReply::Have(i) => write!(f, "Have({i})"),
        }
    }
}

/// A piece's bytes, at `start..` of the buffer they were read into: a
/// received piece keeps its whole frame body, so its bytes are never copied
/// out of it (nor zeroed first), and the buffer can be given back to the
/// connection afterwards ([`Payload::into_buffer`]). On the wire it is a
/// byte string, as a `Vec<u8>` with `serde_bytes` would be.
#[derive(Clone, Default)]
pub struct Payload {
    buf: Vec<u8>,
    start: usize,
}

impl Payload {
    /// The bytes at `start..` of `buf`; `start` is clamped to its length.
    pub fn within(buf: Vec<u8>, start: usize) -> Payload {
        let start = start.min(buf.len());
        Payload { buf, start }
    }

    /// The buffer the bytes are in, for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl From<Vec<u8>> for Payload {
    fn from(buf: Vec<u8>) -> Payload {
        Payload { buf, start: 0 }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for Payload {
    /// The general path copies (bincode's owned decoding of a byte string
    /// does too); peer links decode pieces with
    /// [`crate::codec::decode_peer_reply`], which does not.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        let v: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        Ok(Payload::from(v.into_vec()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    #[error("authenticate with a ticket first")]
    NotAuthenticated,
    #[error("ticket refused: {0}")]
    TicketRefused(TicketError),
    /// The serving peer has no ticket key yet (no tracker answered it).
    #[error("the peer cannot check tickets yet")]
    NoTicketKey,
    /// The ticket presented for the file's group has expired.
    #[error("the ticket for this group has expired; authenticate again")]
    TicketExpired,
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
    #[error("request cancelled")]
    Cancelled,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::messages::{Reply, Request};

    #[test]
    fn subscribe_have_and_cancel_round_trip() {
        let file = FileId([3; 32]);
        for body in [
            PeerRequest::Subscribe { file },
            PeerRequest::Cancel { id: u64::MAX },
            PeerRequest::Piece { file, index: 9 },
        ] {
            let req = Request { id: 5, body };
            assert_eq!(
                decode::<Request<PeerRequest>>(&encode(&req).unwrap()).unwrap(),
                req
            );
        }
        for body in [
            PeerReply::Have(u32::MAX),
            PeerReply::Error(PeerError::Cancelled),
            PeerReply::Error(PeerError::Busy),
            PeerReply::Error(PeerError::TicketRefused(TicketError::OtherHolder)),
            PeerReply::Error(PeerError::TicketExpired),
        ] {
            let reply = Reply { id: 5, body };
            assert_eq!(
                decode::<Reply<PeerReply>>(&encode(&reply).unwrap()).unwrap(),
                reply
            );
        }
    }
}
