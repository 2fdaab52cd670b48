//! FileShare's wire protocol: the types every component exchanges, how they
//! are framed on a stream, and the content hashes that name files and pieces.
//!
//! Every connection (client to tracker, tracker to tracker, peer to peer)
//! starts with a [`messages::Hello`] in each direction and then carries
//! length-prefixed frames whose bodies are bincode 2 encodings of the
//! channel's message enum. Requests carry an id so one connection can have
//! several in flight; replies may come back in any order.
//!
//! # Layout
//! - [`codec`]: the one place that knows the body encoding (bincode 2).
//! - [`frame`]: the length prefix and the frame size limit, as a pure step.
//! - [`connection`]: a framed async stream, generic over the transport;
//!   its memory follows what arrived, and a frame has a deadline.
//! - [`conn_limits`]: a server's connection caps, in total and per address.
//! - [`tls`]: TLS 1.3 with pinned keys; [`tls::SecureConnection`], the one
//!   network connection type, with `connect` and `accept`. Inside it (and
//!   re-exported here): [`identity`], an endpoint's key and self-signed
//!   certificate, kept on disk, and the [`Fingerprint`] that names it;
//!   [`known_keys`], tracker keys remembered on first use, as ssh does.
//! - [`messages`]: the message enums of each channel and the handshake;
//!   [`ticket`], the signed tickets that open a group's files on a peer.
//! - [`ids`]: content hashes, ids, piece layout, bitfields and name rules.
//! - [`error`]: the typed errors of this crate and the tracker's error codes.
//! - [`client`]: a multiplexing tracker client that fails over between
//!   trackers.
//! - [`trackers_file`]: the `host:port [sha256:HEX]` list every component
//!   reads.
//!
//! # Dependencies
//! One way, from the edge in; each module imports only those after it
//! (`scripts/modgraph.py` checks it):
//!
//! Layers: client, tls, connection, codec, messages, frame, trackers_file, conn_limits, ids, error
//!
//! [`error`] knows no other module: a TLS failure is a `TlsError` of its
//! own, which carries a `ProtocolError` when the wire under it failed.
#![warn(clippy::cast_possible_truncation)]

pub mod client;
pub mod codec;
pub mod conn_limits;
pub mod connection;
pub mod error;
pub mod frame;
pub mod ids;
pub mod messages;
pub mod tls;
pub mod trackers_file;

pub use messages::ticket;
pub use tls::{identity, known_keys};

pub use connection::Connection;
pub use error::{ErrorCode, Limit, ProtocolError};
pub use identity::{Fingerprint, Identity};
pub use ids::{Bitfield, FileId, Layout, PeerId, PieceHash, PieceIndex, PIECE_LEN};

/// Bumped whenever a message enum changes shape; peers of another version are
/// refused at the handshake.
pub const PROTOCOL_VERSION: u32 = 9;

/// Largest frame body anyone accepts, checked before a byte of it is
/// buffered. A 512 KiB piece plus headers fits with room; so does the hash
/// list of a 64 GiB file.
pub const MAX_FRAME_LEN: usize = 4 << 20;

/// A duration in whole milliseconds, saturating.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
