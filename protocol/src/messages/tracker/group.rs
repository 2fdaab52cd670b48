//! Groups and their membership: an owner creates one, others ask to join
//! and the owner decides.

use super::{GroupInfo, SessionToken};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroup {
    pub session: SessionToken,
    pub group: String,
}
wraps!(CreateGroup);
answers!(CreateGroup, done);

/// Every group, with the caller's standing in each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListGroups {
    pub session: SessionToken,
}
wraps!(ListGroups);
answers!(ListGroups, "Groups", Vec<GroupInfo>, super::TrackerReply::Groups(g) => g);

/// Asks to join `group`; its owner decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGroup {
    pub session: SessionToken,
    pub group: String,
}
wraps!(JoinGroup);
answers!(JoinGroup, done);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveGroup {
    pub session: SessionToken,
    pub group: String,
}
wraps!(LeaveGroup);
answers!(LeaveGroup, done);

/// The users waiting to join `group` (its owner only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequests {
    pub session: SessionToken,
    pub group: String,
}
wraps!(ListRequests);
answers!(ListRequests, "Requests", Vec<String>, super::TrackerReply::Requests(u) => u);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptRequest {
    pub session: SessionToken,
    pub group: String,
    pub user: String,
}
wraps!(AcceptRequest);
answers!(AcceptRequest, done);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectRequest {
    pub session: SessionToken,
    pub group: String,
    pub user: String,
}
wraps!(RejectRequest);
answers!(RejectRequest, done);

/// The owner takes `user` out of `group` (durable): their listings are
/// refused at once, their tickets are not renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveMember {
    pub session: SessionToken,
    pub group: String,
    pub user: String,
}
wraps!(RemoveMember);
answers!(RemoveMember, done);
