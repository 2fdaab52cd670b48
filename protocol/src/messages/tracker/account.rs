//! Accounts, sessions and tickets: the requests a user makes before any
//! group, and the ticket a daemon shows its peers.

use super::SessionToken;
use crate::ids::PeerId;
use crate::messages::ticket::{Ticket, TicketKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateUser {
    pub user: String,
    pub password: String,
}
wraps!(CreateUser);
answers!(CreateUser, done);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub user: String,
    pub password: String,
}
wraps!(Login);
answers!(Login, "Session", Session, super::TrackerReply::Session {
    token,
    user,
    expires_unix_ms,
} => Session { token, user, expires_unix_ms });

/// A new session, as [`Login`] answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token: SessionToken,
    /// The user name as the tracker spells it.
    pub user: String,
    pub expires_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logout {
    pub session: SessionToken,
}
wraps!(Logout);
answers!(Logout, done);

/// A ticket for the caller's daemon `holder` (the peer id it announces
/// with) in `group`; members only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueTicket {
    pub session: SessionToken,
    pub group: String,
    pub holder: PeerId,
}
wraps!(IssueTicket);
answers!(IssueTicket, "Ticket", Ticket, super::TrackerReply::Ticket(t) => t);

/// The cluster's public ticket key, which checks every ticket; the one
/// request without fields (the `TicketKey` variant), so also the ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskTicketKey;
impl From<AskTicketKey> for super::TrackerRequest {
    fn from(r: AskTicketKey) -> Self {
        super::TrackerRequest::TicketKey(r)
    }
}
answers!(AskTicketKey, "TicketKey", TicketKey, super::TrackerReply::TicketKey(k) => k);
