//! One function per request, grouped by family, each taking the request's
//! struct and returning a typed [`TrackerResult`] so it can be tested
//! without sockets. [`dispatch`] maps a request to its function.
//!
//! Every request but `CreateUser`, `Login` and `TicketKey` names a
//! session; it is checked first, and an unknown, closed, expired or forged
//! token is `InvalidSession`.

pub mod account;
pub mod file;
pub mod group;
pub mod peer;
pub mod reach;
pub mod ticket;

use crate::shared::Shared;
use crate::state::change::Change;
use fileshare_protocol::ids::{validate_name, NameKind};
use fileshare_protocol::messages::tracker::{CallKind, Notice};
use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerRequest, TrackerResult};
use fileshare_protocol::{ErrorCode, Fingerprint, PeerId};
use std::net::SocketAddr;

/// Who sent a request, as far as the connection tells.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    /// The connection's remote address, if known.
    pub addr: Option<SocketAddr>,
    /// The fingerprint of the certificate the client presented in the TLS
    /// handshake, which proves it holds that key. A daemon always presents
    /// one; the command-line client may not.
    pub key: Option<Fingerprint>,
}

impl Caller {
    /// The key this connection's client proved it holds, if it presented
    /// one: what a daemon's peer id derives from, and what anything handed
    /// to a daemon (a ticket) can be bound to.
    pub fn client_key(&self) -> Option<Fingerprint> {
        self.key
    }

    /// Refuses unless this connection holds the key `peer` derives from:
    /// nobody announces, reports for or withdraws another daemon's peer.
    pub fn speaks_for(&self, peer: &PeerId) -> Result<(), ErrorCode> {
        match self.key {
            Some(key) if key.peer_id() == *peer => Ok(()),
            Some(key) => Err(ErrorCode::BadRequest(format!(
                "peer {peer} is not this connection's: its key speaks for peer {}",
                key.peer_id()
            ))),
            None => Err(ErrorCode::BadRequest(format!(
                "only the daemon holding peer {peer}'s key can speak for it, and this \
                 connection presented no key"
            ))),
        }
    }
}

/// Answers `req`, or `Unavailable` while this tracker is not caught up
/// with the cluster (the client then asks another tracker). The answer to
/// a user's command carries what they are to be told
/// ([`TrackerReply::Noted`]).
pub async fn dispatch(shared: &Shared, caller: &Caller, req: TrackerRequest) -> TrackerResult {
    let session = req.user_session().copied();
    let reply = answer(shared, caller, req).await?;
    match session {
        Some(session) => Ok(noted(shared, &session, reply).await),
        None => Ok(reply),
    }
}

/// `reply`, with the notices of `session`'s user, which are then marked
/// sent through the log. Should that fail they are sent again next time:
/// told twice rather than never.
async fn noted(shared: &Shared, session: &SessionToken, reply: TrackerReply) -> TrackerReply {
    let Ok(user) = shared.session_user(session) else {
        return reply;
    };
    let notices: Vec<(u64, Notice)> = shared.state.read().notices(&user).cloned().collect();
    let Some(&(through, _)) = notices.last() else {
        return reply;
    };
    if let Err(e) = shared.submit(Change::NoticesSent { user, through }).await {
        tracing::debug!("notices not marked sent, to be sent again: {e}");
    }
    TrackerReply::Noted {
        notices: notices.into_iter().map(|(_, n)| n).collect(),
        reply: Box::new(reply),
    }
}

async fn answer(shared: &Shared, caller: &Caller, req: TrackerRequest) -> TrackerResult {
    use TrackerRequest as R;
    shared.ready().await?;
    match req {
        R::Once {
            client,
            seq,
            request,
        } => {
            if let R::Once { .. } = *request {
                return Err(ErrorCode::BadRequest("a Once inside a Once".into()));
            }
            let inner = Box::pin(answer(shared, caller, *request));
            crate::shared::ONCE.scope((client, seq), inner).await
        }
        R::CreateUser(req) => account::create_user(shared, caller.addr.map(|a| a.ip()), req).await,
        R::Login(req) => account::login(shared, caller.addr.map(|a| a.ip()), req).await,
        R::Logout(req) => account::logout(shared, req).await,
        R::CreateGroup(req) => group::create(shared, req).await,
        R::ListGroups(req) => group::list(shared, req),
        R::JoinGroup(req) => group::join(shared, req).await,
        R::LeaveGroup(req) => group::leave(shared, req).await,
        R::ListRequests(req) => group::requests(shared, req),
        R::AcceptRequest(req) => group::accept_request(shared, req).await,
        R::RejectRequest(req) => group::reject_request(shared, req).await,
        R::RemoveMember(req) => group::remove_member(shared, req).await,
        R::ListFiles(req) => file::list(shared, req),
        R::Search(req) => file::search(shared, req),
        R::ShareFile(req) => file::share(shared, req).await,
        R::StopShare(req) => file::stop_share(shared, req).await,
        R::Locate(req) => file::locate(shared, req),
        R::RenameShare(req) => file::rename_share(shared, req).await,
        R::ReplaceShare(req) => file::replace_share(shared, req).await,
        R::Announce(req) => peer::announce(shared, caller, req),
        R::ReportPieces(req) => peer::report_pieces(shared, caller, req),
        R::LeaveNetwork(req) => peer::leave_network(shared, caller, req),
        R::CallBack(contact) => reach::place_call(shared, caller, CallKind::DialBack, contact),
        R::Relay(contact) => reach::place_call(shared, caller, CallKind::Relay, contact),
        R::Punch(contact) => reach::place_call(shared, caller, CallKind::Punch, contact),
        R::AwaitCalls(req) => reach::await_calls(shared, caller, req).await,
        R::IssueTicket(req) => ticket::issue(shared, caller, req),
        R::TicketKey(_) => ticket::key(shared),
    }
}

/// What the items of one listing reply may take, so the reply always fits
/// a frame with room for its envelope.
pub const LISTING_BUDGET: usize = fileshare_protocol::MAX_FRAME_LEN - (64 << 10);

/// The items of `items` that fit `budget` (at most [`LISTING_BUDGET`]), by
/// `size` (an upper bound of an item's encoding), in order: a listing never
/// outgrows a frame.
fn bounded<T>(budget: usize, items: impl Iterator<Item = T>, size: impl Fn(&T) -> usize) -> Vec<T> {
    let budget = budget.min(LISTING_BUDGET);
    let mut used = 0;
    let mut out = Vec::new();
    for item in items {
        used += size(&item);
        if used > budget {
            break;
        }
        out.push(item);
    }
    out
}

/// A quota flag as a change carries it, saturating.
fn quota(limit: usize) -> u32 {
    u32::try_from(limit).unwrap_or(u32::MAX)
}

fn user_name(name: &str) -> Result<(), ErrorCode> {
    validate_name(NameKind::User, name)
}

fn group_name(name: &str) -> Result<(), ErrorCode> {
    validate_name(NameKind::Group, name)
}

fn file_name(name: &str) -> Result<(), ErrorCode> {
    validate_name(NameKind::File, name)
}

/// Shared set-up for the command tests: a tracker on a temporary store.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::consensus::node::Node;
    use crate::consensus::transport::Transport;
    use crate::shared::Settings;
    use fileshare_protocol::messages::tracker::{CreateUser, Login};
    use fileshare_protocol::messages::{SessionToken, TrackerReply};
    use std::sync::Arc;

    /// A key whose peer id is `peer`.
    pub fn key_of(peer: fileshare_protocol::PeerId) -> fileshare_protocol::Fingerprint {
        let mut key = [0; 32];
        key[..16].copy_from_slice(&peer.0);
        fileshare_protocol::Fingerprint(key)
    }

    pub struct Fixture {
        pub shared: Arc<Shared>,
        pub node: Arc<Node>,
        pub dir: tempfile::TempDir,
    }

    impl Fixture {
        pub async fn new() -> Fixture {
            Self::with(Settings::default()).await
        }

        pub async fn with(settings: Settings) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let (shared, node) = Shared::open(dir.path(), settings, Transport::none())
                .await
                .unwrap();
            Fixture { shared, node, dir }
        }

        /// Stops the engine and opens the same directory again.
        pub async fn restart(self) -> Fixture {
            let Fixture { shared, node, dir } = self;
            let settings = shared.settings.clone();
            drop(shared);
            node.stop().await;
            drop(node);
            let (shared, node) = Shared::open(dir.path(), settings, Transport::none())
                .await
                .unwrap();
            Fixture { shared, node, dir }
        }

        /// Answers `req` as from a daemon holding the key of the peer it
        /// names (announces, reports, tickets), if any.
        pub async fn call(&self, req: impl Into<TrackerRequest>) -> TrackerResult {
            let req = req.into();
            let peer = match &req {
                TrackerRequest::Announce(r) => Some(r.peer),
                TrackerRequest::ReportPieces(r) => Some(r.peer),
                TrackerRequest::LeaveNetwork(r) => Some(r.peer),
                TrackerRequest::IssueTicket(r) => Some(r.holder),
                _ => None,
            };
            let caller = Caller {
                addr: None,
                key: peer.map(key_of),
            };
            dispatch(&self.shared, &caller, req).await
        }

        /// Creates `user` and logs in.
        pub async fn user(&self, user: &str) -> SessionToken {
            self.call(CreateUser {
                user: user.into(),
                password: "pw".into(),
            })
            .await
            .unwrap();
            self.login(user).await
        }

        pub async fn login(&self, user: &str) -> SessionToken {
            match self
                .call(Login {
                    user: user.into(),
                    password: "pw".into(),
                })
                .await
            {
                Ok(TrackerReply::Session { token, .. }) => token,
                other => panic!("login: {other:?}"),
            }
        }
    }
}
