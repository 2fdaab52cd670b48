//! What the trackers tell a user about their own earlier writes: a write
//! a tracker acknowledged while cut off from its partner that gave way,
//! once the pair met again, to a conflicting one made on the other side.
//! Handed over once, on the reply to the user's next command.

use crate::error::ErrorCode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One thing a user is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// A write acknowledged while the trackers were apart was refused when
    /// decided again. `change` says what it did ("created group g");
    /// `why` is the refusal.
    GaveWay { change: String, why: ErrorCode },
}

/// Notices a user keeps on the trackers until their next command: the
/// newest are kept.
pub const MAX_NOTICES: usize = 16;

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Notice::GaveWay { change, why } = self;
        f.write_str("while the trackers were apart, ")?;
        match why {
            ErrorCode::GroupExists(group) => write!(
                f,
                "your group {group:?} was also created by another user; theirs stands"
            ),
            ErrorCode::NameTaken { group, name } => write!(
                f,
                "another user also shared a file as {name:?} in group {group:?}; theirs \
                 stands, yours is no longer shared there"
            ),
            other => write!(
                f,
                "you {change}; it was undone when the trackers met again: {other}"
            ),
        }
    }
}
