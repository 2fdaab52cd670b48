//! What a call to the trackers can end in, other than its answer.

use crate::error::ErrorCode;
use crate::messages::tracker::UnexpectedReply;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The tracker answered with a refusal.
    #[error("{0}")]
    Refused(ErrorCode),
    #[error("no tracker answered (tried {tried}): {last}")]
    Unreachable { tried: String, last: String },
    /// A tracker presented a key other than the one pinned or remembered
    /// for it (or the known keys file could not be used). Never a reason
    /// to move on to another tracker quietly: someone may be in the way.
    #[error("{0}")]
    Untrusted(String),
    #[error(
        "the tracker connection broke during the request; it may or may not have taken effect"
    )]
    Interrupted,
    /// The tracker answered with a reply that does not belong to the
    /// request (a tracker of another build, or a bug).
    #[error(transparent)]
    UnexpectedReply(#[from] UnexpectedReply),
}

impl ClientError {
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            ClientError::Refused(c) => Some(c),
            _ => None,
        }
    }
}
