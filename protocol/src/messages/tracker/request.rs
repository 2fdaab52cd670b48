//! The request enum of the client channel, and [`TrackerCall`], which ties
//! each request struct to the reply it expects. Every variant wraps one
//! struct (named as the variant) so a caller builds the struct and the
//! client's one generic `call` returns the typed answer: the reply kind is
//! checked once, here, not matched again at every caller. A variant
//! wrapping a struct encodes as the struct variant it replaced, so the wire
//! is unchanged.

use super::account::{AskTicketKey, CreateUser, IssueTicket, Login, Logout};
use super::file::{ListFiles, Locate, RenameShare, ReplaceShare, Search, ShareFile, StopShare};
use super::group::{
    AcceptRequest, CreateGroup, JoinGroup, LeaveGroup, ListGroups, ListRequests, RejectRequest,
    RemoveMember,
};
use super::peer::{Announce, LeaveNetwork, ReportPieces};
use super::reach::{AwaitCalls, Contact};
use super::TrackerReply;
use serde::{Deserialize, Serialize};

/// A request that names the reply it expects, so a caller gets that
/// reply's content or an [`UnexpectedReply`], never a reply to match.
pub trait TrackerCall: Into<TrackerRequest> {
    /// What the expected reply carries.
    type Reply;
    /// The content of `reply` if it is the kind this request expects.
    fn reply(reply: TrackerReply) -> Result<Self::Reply, UnexpectedReply>;
}

/// A tracker answered with a reply of another kind than its request
/// expects: a tracker of another build, or a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the tracker answered {request} with {got}, not {expected}")]
pub struct UnexpectedReply {
    pub request: &'static str,
    pub expected: &'static str,
    pub got: &'static str,
}

/// `From<$req> for TrackerRequest`, wrapping it in the variant of its name.
macro_rules! wraps {
    ($($req:ident),* $(,)?) => {$(
        impl From<$req> for super::TrackerRequest {
            fn from(r: $req) -> Self {
                super::TrackerRequest::$req(r)
            }
        }
    )*};
}

/// [`TrackerCall`] for `$req`: the reply `$expected` matched by `$pat`
/// gives `$out`.
macro_rules! answers {
    ($req:ident, done) => {
        answers!($req, "Done", (), super::TrackerReply::Done => ());
    };
    ($req:ident, $expected:literal, $reply:ty, $pat:pat => $out:expr) => {
        impl super::TrackerCall for $req {
            type Reply = $reply;
            fn reply(reply: super::TrackerReply) -> Result<$reply, super::UnexpectedReply> {
                match reply {
                    $pat => Ok($out),
                    other => Err(super::UnexpectedReply {
                        request: stringify!($req),
                        expected: $expected,
                        got: other.name(),
                    }),
                }
            }
        }
    };
}

/// Client to tracker, in wire order: a new variant goes last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerRequest {
    CreateUser(CreateUser),
    Login(Login),
    Logout(Logout),
    CreateGroup(CreateGroup),
    ListGroups(ListGroups),
    JoinGroup(JoinGroup),
    LeaveGroup(LeaveGroup),
    ListRequests(ListRequests),
    AcceptRequest(AcceptRequest),
    RejectRequest(RejectRequest),
    RemoveMember(RemoveMember),
    ListFiles(ListFiles),
    Search(Search),
    ShareFile(ShareFile),
    StopShare(StopShare),
    Locate(Locate),
    Announce(Announce),
    ReportPieces(ReportPieces),
    LeaveNetwork(LeaveNetwork),
    IssueTicket(IssueTicket),
    TicketKey(AskTicketKey),
    RenameShare(RenameShare),
    ReplaceShare(ReplaceShare),
    /// See [`CallKind::DialBack`](super::CallKind::DialBack).
    CallBack(Contact),
    /// See [`CallKind::Relay`](super::CallKind::Relay).
    Relay(Contact),
    /// See [`CallKind::Punch`](super::CallKind::Punch).
    Punch(Contact),
    AwaitCalls(AwaitCalls),
    /// `request` (a write), once: the cluster keeps the answer to each
    /// client's last write, by `client` (an id the client drew at random)
    /// and `seq` (its writes' sequence number), so the same `Once` sent
    /// again to any tracker after a failover is answered as the first one
    /// was and takes effect once. One level only.
    Once {
        client: u64,
        seq: u64,
        request: Box<TrackerRequest>,
    },
}

impl TrackerRequest {
    /// Whether sending it twice does no harm, so a client may retry it on
    /// another tracker after a connection broke mid-call.
    pub fn is_idempotent(&self) -> bool {
        if let TrackerRequest::Once { .. } = self {
            return true;
        }
        !matches!(
            self,
            TrackerRequest::CreateUser(_)
                | TrackerRequest::CreateGroup(_)
                | TrackerRequest::JoinGroup(_)
                | TrackerRequest::LeaveGroup(_)
                | TrackerRequest::AcceptRequest(_)
                | TrackerRequest::RejectRequest(_)
                // Done twice, the second is refused: the user is no
                // longer a member.
                | TrackerRequest::RemoveMember(_)
        )
    }

    /// The session of a command a user asked for, whose reply may carry
    /// their notices; `None` for the daemon's upkeep (announces, reports,
    /// calls, tickets), which would otherwise take them unseen.
    pub fn user_session(&self) -> Option<&super::SessionToken> {
        use TrackerRequest as R;
        match self {
            R::Once { request, .. } => request.user_session(),
            R::CreateGroup(r) => Some(&r.session),
            R::ListGroups(r) => Some(&r.session),
            R::JoinGroup(r) => Some(&r.session),
            R::LeaveGroup(r) => Some(&r.session),
            R::ListRequests(r) => Some(&r.session),
            R::AcceptRequest(r) => Some(&r.session),
            R::RejectRequest(r) => Some(&r.session),
            R::RemoveMember(r) => Some(&r.session),
            R::ListFiles(r) => Some(&r.session),
            R::Search(r) => Some(&r.session),
            R::ShareFile(r) => Some(&r.session),
            R::StopShare(r) => Some(&r.session),
            R::Locate(r) => Some(&r.session),
            R::RenameShare(r) => Some(&r.session),
            R::ReplaceShare(r) => Some(&r.session),
            R::CreateUser(_)
            | R::Login(_)
            | R::Logout(_)
            | R::Announce(_)
            | R::ReportPieces(_)
            | R::LeaveNetwork(_)
            | R::IssueTicket(_)
            | R::TicketKey(_)
            | R::CallBack(_)
            | R::Relay(_)
            | R::Punch(_)
            | R::AwaitCalls(_) => None,
        }
    }

    /// The variant's name, for errors and logs (no fields: they may carry
    /// passwords and tokens).
    pub fn name(&self) -> &'static str {
        use TrackerRequest as R;
        match self {
            R::CreateUser(_) => "CreateUser",
            R::Login(_) => "Login",
            R::Logout(_) => "Logout",
            R::CreateGroup(_) => "CreateGroup",
            R::ListGroups(_) => "ListGroups",
            R::JoinGroup(_) => "JoinGroup",
            R::LeaveGroup(_) => "LeaveGroup",
            R::ListRequests(_) => "ListRequests",
            R::AcceptRequest(_) => "AcceptRequest",
            R::RejectRequest(_) => "RejectRequest",
            R::RemoveMember(_) => "RemoveMember",
            R::ListFiles(_) => "ListFiles",
            R::Search(_) => "Search",
            R::ShareFile(_) => "ShareFile",
            R::StopShare(_) => "StopShare",
            R::Locate(_) => "Locate",
            R::Announce(_) => "Announce",
            R::ReportPieces(_) => "ReportPieces",
            R::LeaveNetwork(_) => "LeaveNetwork",
            R::IssueTicket(_) => "IssueTicket",
            R::TicketKey(_) => "TicketKey",
            R::RenameShare(_) => "RenameShare",
            R::ReplaceShare(_) => "ReplaceShare",
            R::CallBack(_) => "CallBack",
            R::AwaitCalls(_) => "AwaitCalls",
            R::Relay(_) => "Relay",
            R::Punch(_) => "Punch",
            R::Once { request, .. } => request.name(),
        }
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod wire_tests;

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::codec::{decode, encode};
    use crate::ids::PeerId;

    /// The bytes each request had as a struct variant of the enum (bincode
    /// 2 standard: a varint variant index, then the fields in order), so
    /// trackers and clients of either shape understand each other.
    #[test]
    fn requests_encode_as_the_struct_variants_did() {
        let session = SessionToken([5; 32]);
        let cat = |parts: &[&[u8]]| parts.concat();
        let cases: Vec<(TrackerRequest, Vec<u8>)> = vec![
            (
                Login {
                    user: "al".into(),
                    password: "pw".into(),
                }
                .into(),
                b"\x01\x02al\x02pw".to_vec(),
            ),
            (AskTicketKey.into(), vec![20]),
            (
                PlaceCall {
                    how: CallKind::Punch,
                    contact: Contact {
                        session,
                        group: "g".into(),
                        holder: PeerId([6; 16]),
                        nonce: [7; 16],
                    },
                }
                .into(),
                cat(&[&[25], &[5; 32], b"\x01g", &[6; 16], &[7; 16]]),
            ),
            (
                AwaitCalls {
                    session,
                    peer: PeerId([6; 16]),
                    wait_ms: 1000,
                }
                .into(),
                cat(&[&[26], &[5; 32], &[6; 16], &[251, 0xe8, 0x03]]),
            ),
            (
                TrackerRequest::Once {
                    client: 9,
                    seq: 3,
                    request: Box::new(Logout { session }.into()),
                },
                cat(&[&[27, 9, 3, 2], &[5; 32]]),
            ),
        ];
        for (req, bytes) in cases {
            assert_eq!(encode(&req).unwrap(), bytes, "{}", req.name());
            assert_eq!(decode::<TrackerRequest>(&bytes).unwrap(), req);
        }
    }

    #[test]
    fn a_reply_of_another_kind_is_a_typed_error() {
        let got = <ListGroups as TrackerCall>::reply(TrackerReply::Done);
        assert_eq!(
            got,
            Err(UnexpectedReply {
                request: "ListGroups",
                expected: "Groups",
                got: "Done",
            })
        );
        assert_eq!(
            <ListGroups as TrackerCall>::reply(TrackerReply::Groups(vec![])),
            Ok(vec![])
        );
    }
}
