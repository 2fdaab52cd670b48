//! One function per request, grouped by family, each returning a typed
//! [`TrackerResult`] so it can be tested without sockets. [`dispatch`] maps
//! a request to its function.
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
use fileshare_protocol::ids::{validate_name, NameKind};
use fileshare_protocol::messages::{TrackerRequest, TrackerResult};
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
/// with the cluster (the client then asks another tracker).
pub async fn dispatch(shared: &Shared, caller: &Caller, req: TrackerRequest) -> TrackerResult {
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
            let inner = Box::pin(dispatch(shared, caller, *request));
            crate::shared::ONCE.scope((client, seq), inner).await
        }
        R::CreateUser { user, password } => {
            account::create_user(shared, caller.addr.map(|a| a.ip()), user, password).await
        }
        R::Login { user, password } => {
            account::login(shared, caller.addr.map(|a| a.ip()), user, password).await
        }
        R::Logout { session } => account::logout(shared, &session).await,
        R::CreateGroup { session, group } => group::create(shared, &session, group).await,
        R::ListGroups { session } => group::list(shared, &session),
        R::JoinGroup { session, group } => group::join(shared, &session, group).await,
        R::LeaveGroup { session, group } => group::leave(shared, &session, group).await,
        R::ListRequests { session, group } => group::requests(shared, &session, &group),
        R::AcceptRequest {
            session,
            group,
            user,
        } => group::decide_request(shared, &session, group, user, true).await,
        R::RejectRequest {
            session,
            group,
            user,
        } => group::decide_request(shared, &session, group, user, false).await,
        R::RemoveMember {
            session,
            group,
            user,
        } => group::remove_member(shared, &session, group, user).await,
        R::ListFiles { session, group } => file::list(shared, &session, &group),
        R::Search { session, pattern } => file::search(shared, &session, &pattern),
        R::ShareFile {
            session,
            group,
            meta,
        } => file::share(shared, &session, group, meta).await,
        R::StopShare {
            session,
            group,
            name,
        } => file::stop_share(shared, &session, group, name).await,
        R::Locate {
            session,
            group,
            name,
        } => file::locate(shared, &session, &group, &name),
        R::Announce {
            session,
            peer,
            addr,
            also,
            holdings,
        } => peer::announce(shared, caller, &session, peer, (&addr, &also), holdings),
        R::ReportPieces {
            session,
            peer,
            file,
            pieces,
        } => peer::report_pieces(shared, caller, &session, peer, file, &pieces),
        R::LeaveNetwork { session, peer } => peer::leave_network(shared, caller, &session, peer),
        R::CallBack {
            session,
            group,
            holder,
            nonce,
        } => reach::call_back(shared, caller, &session, &group, holder, nonce),
        R::Relay {
            session,
            group,
            holder,
            nonce,
        } => reach::relay(shared, caller, &session, &group, holder, nonce),
        R::Punch {
            session,
            group,
            holder,
            nonce,
        } => reach::punch(shared, caller, &session, &group, holder, nonce),
        R::AwaitCalls {
            session,
            peer,
            wait_ms,
        } => reach::await_calls(shared, caller, &session, peer, wait_ms).await,
        R::IssueTicket {
            session,
            group,
            holder,
        } => ticket::issue(shared, caller, &session, &group, holder),
        R::TicketKey => ticket::key(shared),
        R::RenameShare {
            session,
            group,
            from,
            to,
        } => file::rename_share(shared, &session, group, from, to).await,
        R::ReplaceShare {
            session,
            group,
            meta,
        } => file::replace_share(shared, &session, group, meta).await,
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
        pub async fn call(&self, req: TrackerRequest) -> TrackerResult {
            let peer = match &req {
                TrackerRequest::Announce { peer, .. }
                | TrackerRequest::ReportPieces { peer, .. }
                | TrackerRequest::LeaveNetwork { peer, .. }
                | TrackerRequest::IssueTicket { holder: peer, .. } => Some(*peer),
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
            self.call(TrackerRequest::CreateUser {
                user: user.into(),
                password: "pw".into(),
            })
            .await
            .unwrap();
            self.login(user).await
        }

        pub async fn login(&self, user: &str) -> SessionToken {
            match self
                .call(TrackerRequest::Login {
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
