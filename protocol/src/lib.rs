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
//! - [`connection`]: a framed async stream, generic over the transport.
//! - [`identity`]: an endpoint's key and self-signed certificate, kept on
//!   disk, and the [`Fingerprint`] that names it.
//! - [`tls`]: TLS 1.3 with pinned keys; [`tls::SecureConnection`], the one
//!   connection type, with `connect` and `accept`.
//! - [`known_keys`]: tracker keys remembered on first use, as ssh does.
//! - [`messages`]: the message enums of each channel and the handshake.
//! - [`ids`]: content hashes, ids, piece layout, bitfields and name rules.
//! - [`error`]: the typed errors of this crate and the tracker's error codes.
//! - [`client`]: a multiplexing tracker client that fails over between
//!   trackers.
//! - [`trackers_file`]: the `host:port [sha256:HEX]` list every component
//!   reads.
#![warn(clippy::cast_possible_truncation)]

pub mod client;
pub mod codec;
pub mod connection;
pub mod error;
pub mod frame;
pub mod identity;
pub mod ids;
pub mod known_keys;
pub mod messages;
pub mod tls;
pub mod trackers_file;

pub use connection::Connection;
pub use error::{ErrorCode, ProtocolError};
pub use identity::{Fingerprint, Identity};
pub use ids::{Bitfield, FileId, Layout, PeerId, PieceHash, PieceIndex, PIECE_LEN};

/// Bumped whenever a message enum changes shape; peers of another version are
/// refused at the handshake.
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest frame body anyone accepts, checked before a byte of it is
/// buffered. A 512 KiB piece plus headers fits with room; so does the hash
/// list of a 64 GiB file.
pub const MAX_FRAME_LEN: usize = 4 << 20;

/// A duration in whole milliseconds, saturating.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
