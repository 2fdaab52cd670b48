//! Errors of the wire layer, and the error codes a tracker answers with.

use serde::{Deserialize, Serialize};

/// Why a frame could not be read, written or understood. The I/O cause is
/// in the message, not also a `source`, so an error chain names it once.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge { len: u64, limit: usize },
    #[error("connection closed in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("malformed frame")]
    Decode(#[source] bincode::error::DecodeError),
    #[error("frame body has {len} bytes but the message used {used}")]
    TrailingBytes { used: usize, len: usize },
    #[error("cannot encode message")]
    Encode(#[source] bincode::error::EncodeError),
    #[error("handshake refused: not a FileShare endpoint")]
    NotFileShare,
    #[error("peer speaks protocol version {theirs}, we speak {ours}")]
    Version { ours: u32, theirs: u32 },
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout { what: &'static str, ms: u64 },
    #[error("connection closed")]
    Closed,
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        ProtocolError::Io(e)
    }
}

/// A tracker's typed refusal. The CLI prints its `Display` as the one-line
/// message the user sees, so each reads as a sentence fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorCode {
    #[error("wrong user name or password")]
    WrongPassword,
    #[error("too many failed logins; try again in {retry_after_ms} ms")]
    TooManyAttempts { retry_after_ms: u64 },
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("not logged in or the session has expired; run `fsd login USER`")]
    InvalidSession,
    #[error("no such group: {0}")]
    NoSuchGroup(String),
    #[error("group {0} already exists")]
    GroupExists(String),
    #[error("not a member of group {0}")]
    NotMember(String),
    #[error("only the owner of group {0} can do that")]
    NotOwner(String),
    #[error("already a member of group {0}")]
    AlreadyMember(String),
    #[error("{user} has no pending request to join {group}")]
    NoSuchRequest { group: String, user: String },
    #[error("{user} is not a member of group {group}")]
    NoSuchMember { group: String, user: String },
    #[error("the owner cannot remove themselves from group {0}; `fsd leave-group {0}` passes ownership on")]
    OwnerCannotBeRemoved(String),
    #[error("no file {name} in group {group}")]
    NoSuchFile { group: String, name: String },
    #[error("group {group} already has a different file named {name}")]
    NameTaken { group: String, name: String },
    #[error("invalid {what} name {name:?}: {why}")]
    BadName {
        what: String,
        name: String,
        why: String,
    },
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("tracker unavailable: {0}")]
    Unavailable(String),
    #[error("tracker internal error: {0}")]
    Internal(String),
    #[error("only the member who shared {name} in {group} can rename it or save over it")]
    NotSharer { group: String, name: String },
    /// A quota of the tracker: `limit` says which, the message names it,
    /// its value and its flag.
    #[error("limit reached: {message}")]
    LimitReached { limit: Limit, message: String },
    /// Unauthenticated work (logins, sign-ups) is queued no deeper than
    /// this tracker can serve soon; the rest is refused at once.
    #[error("the tracker is busy; retry later")]
    Busy,
}

/// Which of a tracker's quotas a request reached, so a client can tell
/// them apart without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Limit {
    /// Groups one user may own.
    GroupsPerUser,
    /// Join requests waiting in one group.
    PendingRequests,
    /// Files one user may share in one group.
    FilesPerUser,
    /// Daemons one user may have online.
    PeersPerUser,
    /// Sign-ups from one source address per hour.
    SignUpsPerAddress,
    /// The metadata (piece hashes) of one file: its size.
    FileMetadata,
    /// The metadata of every file one user shares, in all groups.
    MetadataPerUser,
    /// Login sessions one user may have open.
    SessionsPerUser,
    /// Calls (dial back, punch, relay) waiting for one daemon.
    CallsWaiting,
    /// The relay: on or off, its slots, and each user's relayed connections.
    Relay,
}

/// An error and its causes on one line (`outer: inner: …`), for where it
/// becomes a string or a log line rather than an error that `{:#}` chains.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        // Transparent wrappers repeat their cause's message.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
