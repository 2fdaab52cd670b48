//! Peer to peer. The fetching side authenticates per group with a
//! tracker-issued [`Ticket`] naming its own peer id, then subscribes to a
//! file's bitfield and asks for pieces; several requests may be in flight
//! and replies come back as pieces are read. The serving peer checks the
//! ticket itself, with the cluster's ticket key, and checks on every
//! request that the ticket for the file's group is still unexpired: the
//! fetching side authenticates again with a fresh ticket before its ticket
//! expires.
//!
//! Every request gets exactly one reply, with three exceptions:
//! [`PeerRequest::Subscribe`] gets a stream of them (its bitfield, then a
//! [`PeerReply::Have`] per newly verified piece and a
//! [`PeerReply::Receiving`] per piece that started arriving), a piece may
//! come as [`PeerReply::Part`]s before its [`PeerReply::Piece`], and
//! [`PeerRequest::Cancel`]
//! gets none of its own: the request it cancels is answered with
//! [`PeerError::Cancelled`] if it was not answered yet, and
//! [`PeerRequest::Exchange`] gets a stream of [`PeerReply::Peers`].

use crate::ids::{Bitfield, FileId, PeerId};
use crate::messages::ticket::{Ticket, TicketError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Grants access to the files of `ticket.group` on this connection
    /// until the ticket expires; a later one for the same group extends it.
    Authenticate { ticket: Ticket },
    /// One whole piece: [`PeerReply::Piece`], after the piece's first bytes
    /// in [`PeerReply::Part`]s when the serving peer sends it in parts (its
    /// uplink is slow, or it passes the piece on as it arrives). Asked of a
    /// peer that said it is [`PeerReply::Receiving`] the piece, the answer
    /// ends in [`PeerError::NotAvailable`] if the piece failed to arrive
    /// there whole and verified: the parts sent before are dropped.
    /// A rate-limited peer may answer [`PeerError::Busy`]
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
    /// Peer exchange: the serving peer's linked peers of `file` now, then
    /// who joined and left, as [`PeerReply::Peers`] (same request id), at
    /// most one a [`PEX_INTERVAL_MS`] and only when something changed, for
    /// as long as the connection lives. `port` is where the asker accepts
    /// peer connections (0 if nowhere): the serving peer passes the asker
    /// on to others at the address the connection came from, with this
    /// port, so an asker can name no host but its own.
    Exchange { file: FileId, port: u16 },
}

/// Peers one [`PexUpdate`] names at most, added and dropped each.
pub const MAX_PEX_PEERS: usize = 50;

/// A peer address is a socket address: longer text is refused.
pub const MAX_PEX_ADDR_LEN: usize = 64;

/// A serving peer sends at most one [`PexUpdate`] per file and
/// connection per this long.
pub const PEX_INTERVAL_MS: u64 = 1000;

/// A peer of the file the sender is linked to, and where it accepts
/// connections. Only who it is (a key the connection must show) and
/// where: whether the reader may fetch from it is still decided by a
/// ticket from a tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PexPeer {
    pub peer: PeerId,
    pub addr: String,
}

/// What changed among the sender's peers of a file since its last update
/// on this stream (the first lists them all, up to the bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PexUpdate {
    pub added: Vec<PexPeer>,
    pub dropped: Vec<PeerId>,
}

/// Why a [`PexUpdate`] was refused: the decoder bounds what it allocates
/// by the frame limit, this bounds what a receiver keeps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PexError {
    #[error("{0} peers in one update, at most {MAX_PEX_PEERS} each way")]
    TooMany(usize),
    #[error("a peer address of {0} bytes, at most {MAX_PEX_ADDR_LEN}")]
    AddrTooLong(usize),
    #[error("peer address {0:?} is not a socket address")]
    BadAddr(String),
}

impl PexUpdate {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// Checks the bounds a sender keeps; a receiver drops the stream on
    /// an update that breaks them.
    pub fn check(&self) -> Result<(), PexError> {
        let n = self.added.len().max(self.dropped.len());
        if n > MAX_PEX_PEERS {
            return Err(PexError::TooMany(n));
        }
        for p in &self.added {
            if p.addr.len() > MAX_PEX_ADDR_LEN {
                return Err(PexError::AddrTooLong(p.addr.len()));
            }
            if p.addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(PexError::BadAddr(p.addr.clone()));
            }
        }
        Ok(())
    }
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
    /// Peers joined and left, on a [`PeerRequest::Exchange`] stream.
    Peers(PexUpdate),
    /// The next bytes of a piece, in order; its [`PeerReply::Piece`] (same
    /// request id) carries the rest and ends it. Parts let a piece pass on
    /// from peer to peer while it is still arriving, each peer verifying
    /// it whole before it is stored, offered as had or read.
    Part {
        data: Payload,
    },
    /// A piece started arriving at the serving peer, on a
    /// [`PeerRequest::Subscribe`] stream: it may be asked for now, and is
    /// passed on as it arrives.
    Receiving(u32),
    /// Whether the serving peer now serves this connection's piece requests
    /// first (`true`, unchoked) or only with upload nobody unchoked takes
    /// (`false`, choked), on every [`PeerRequest::Subscribe`] stream of the
    /// connection, each time it changes. Choked requests are answered
    /// [`PeerError::Choked`] unless upload is to spare: a requester should
    /// ask its unchoking peers and keep about one request at a choking one
    /// (asking is what makes it a candidate when the peer chooses again).
    Unchoked(bool),
}

impl std::fmt::Debug for PeerReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerReply::Authenticated => f.write_str("Authenticated"),
            PeerReply::Bitfield(b) => write!(f, "Bitfield({b:?})"),
            PeerReply::Piece { data } => write!(f, "Piece({} bytes)", data.len()),
            PeerReply::Error(e) => write!(f, "Error({e:?})"),
            PeerReply::Have(i) => write!(f, "Have({i})"),
            PeerReply::Peers(u) => write!(f, "Peers(+{} -{})", u.added.len(), u.dropped.len()),
            PeerReply::Part { data } => write!(f, "Part({} bytes)", data.len()),
            PeerReply::Receiving(i) => write!(f, "Receiving({i})"),
            PeerReply::Unchoked(u) => write!(f, "Unchoked({u})"),
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
    /// The serving peer chokes this connection and had no upload to spare:
    /// ask its other holders (see [`PeerReply::Unchoked`]).
    #[error("peer chokes this connection")]
    Choked,
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
            PeerRequest::Exchange { file, port: 4242 },
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

    fn update(added: usize, dropped: usize) -> PexUpdate {
        PexUpdate {
            added: (0..added)
                .map(|i| PexPeer {
                    peer: PeerId([u8::try_from(i % 256).unwrap(); 16]),
                    addr: format!("127.0.0.1:{}", 1000 + i),
                })
                .collect(),
            dropped: (0..dropped)
                .map(|i| PeerId([u8::try_from(i % 256).unwrap(); 16]))
                .collect(),
        }
    }

    #[test]
    fn peer_exchange_round_trips_within_its_bounds() {
        let full = update(MAX_PEX_PEERS, MAX_PEX_PEERS);
        full.check().unwrap();
        for body in [
            PeerReply::Peers(full),
            PeerReply::Peers(PexUpdate::default()),
        ] {
            let reply = Reply { id: 2, body };
            let bytes = encode(&reply).unwrap();
            let back = crate::codec::decode_peer_reply(bytes).unwrap();
            assert_eq!(back, reply);
        }
        assert!(PexUpdate::default().is_empty());
    }

    #[test]
    fn peer_exchange_beyond_its_bounds_is_refused() {
        assert_eq!(
            update(MAX_PEX_PEERS + 1, 0).check(),
            Err(PexError::TooMany(MAX_PEX_PEERS + 1))
        );
        assert_eq!(
            update(0, MAX_PEX_PEERS + 1).check(),
            Err(PexError::TooMany(MAX_PEX_PEERS + 1))
        );
        let mut long = update(1, 0);
        long.added[0].addr = format!("127.0.0.1:{}", "9".repeat(MAX_PEX_ADDR_LEN));
        assert!(matches!(long.check(), Err(PexError::AddrTooLong(_))));
        let mut host = update(1, 0);
        host.added[0].addr = "example.org:80".into();
        assert!(matches!(host.check(), Err(PexError::BadAddr(_))));
    }

    #[test]
    fn malformed_peer_exchange_frames_are_errors() {
        let reply = Reply {
            id: 2,
            body: PeerReply::Peers(update(3, 2)),
        };
        let bytes = encode(&reply).unwrap();
        // Every truncation is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(crate::codec::decode_peer_reply(bytes[..cut].to_vec()).is_err());
        }
        // A count claiming far more peers than the frame holds is refused
        // before anything that size is allocated: id, variant, then the
        // added list's length, here 2^62.
        let mut head = Vec::new();
        crate::codec::encode_into(&(2u64, 5u32), &mut head).unwrap();
        head.extend_from_slice(&[0xfd]);
        head.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(crate::codec::decode_peer_reply(head).is_err());
        // An unknown variant after Peers is an error too.
        let mut unknown = Vec::new();
        crate::codec::encode_into(&(2u64, 6u32), &mut unknown).unwrap();
        assert!(crate::codec::decode_peer_reply(unknown).is_err());
    }
}
