//! Groups: creation, listing, membership requests, leaving and removal.

use super::{bounded, group_name, quota, user_name, LISTING_BUDGET};
use crate::shared::Shared;
use crate::state::change::Change;
use fileshare_protocol::messages::tracker::GroupInfo;
use fileshare_protocol::messages::tracker::{
    AcceptRequest, CreateGroup, JoinGroup, LeaveGroup, ListGroups, ListRequests, RejectRequest,
    RemoveMember,
};
use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerResult};

pub async fn create(shared: &Shared, req: CreateGroup) -> TrackerResult {
    let CreateGroup { session, group } = req;
    let session = &session;
    let user = shared.session_user(session)?;
    group_name(&group)?;
    let quota = quota(shared.settings.limits.groups_per_user);
    shared
        .submit(Change::CreateGroup { user, group, quota })
        .await?;
    Ok(TrackerReply::Done)
}

/// Every group, marked for the caller, as many as fit a frame: the
/// caller's own groups (owned, joined, pending) first, so a flood of
/// others' groups can never hide them.
pub fn list(shared: &Shared, req: ListGroups) -> TrackerResult {
    let session = &req.session;
    let user = shared.session_user(session)?;
    let state = shared.state.read();
    let info = |(name, g): (&String, &crate::state::Group)| GroupInfo {
        name: name.clone(),
        owner: g.owner.clone(),
        members: u32::try_from(g.member_count()).unwrap_or(u32::MAX),
        is_owner: g.owner == user,
        is_member: g.is_member(&user),
        pending: g.is_pending(&user),
    };
    let mine = state
        .groups()
        .filter(|(_, g)| g.is_member(&user) || g.is_pending(&user));
    let others = state
        .groups()
        .filter(|(_, g)| !g.is_member(&user) && !g.is_pending(&user));
    let mut groups = bounded(LISTING_BUDGET, mine.chain(others).map(info), info_size);
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(TrackerReply::Groups(groups))
}

/// An upper bound of a [`GroupInfo`]'s encoding.
fn info_size(g: &GroupInfo) -> usize {
    g.name.len() + g.owner.len() + 32
}

pub async fn join(shared: &Shared, req: JoinGroup) -> TrackerResult {
    let JoinGroup { session, group } = req;
    let session = &session;
    let user = shared.session_user(session)?;
    group_name(&group)?;
    let quota = quota(shared.settings.limits.pending_requests);
    shared
        .submit(Change::JoinGroup { user, group, quota })
        .await?;
    Ok(TrackerReply::Done)
}

pub async fn leave(shared: &Shared, req: LeaveGroup) -> TrackerResult {
    let LeaveGroup { session, group } = req;
    let session = &session;
    let user = shared.session_user(session)?;
    group_name(&group)?;
    shared.submit(Change::LeaveGroup { user, group }).await?;
    Ok(TrackerReply::Done)
}

/// Pending requests, oldest first; the owner's view only.
pub fn requests(shared: &Shared, req: ListRequests) -> TrackerResult {
    let ListRequests { session, group } = &req;
    let user = shared.session_user(session)?;
    group_name(group)?;
    let state = shared.state.read();
    let g = state.owned_group(group, &user)?;
    let requests = bounded(LISTING_BUDGET, g.requests().into_iter(), |u| u.len() + 16);
    Ok(TrackerReply::Requests(requests))
}

pub async fn accept_request(shared: &Shared, req: AcceptRequest) -> TrackerResult {
    let AcceptRequest {
        session,
        group,
        user,
    } = req;
    decide_request(shared, &session, group, user, true).await
}

pub async fn reject_request(shared: &Shared, req: RejectRequest) -> TrackerResult {
    let RejectRequest {
        session,
        group,
        user,
    } = req;
    decide_request(shared, &session, group, user, false).await
}

async fn decide_request(
    shared: &Shared,
    session: &SessionToken,
    group: String,
    user: String,
    accept: bool,
) -> TrackerResult {
    let owner = shared.session_user(session)?;
    group_name(&group)?;
    user_name(&user)?;
    let change = if accept {
        Change::AcceptRequest { owner, group, user }
    } else {
        Change::RejectRequest { owner, group, user }
    };
    shared.submit(change).await?;
    Ok(TrackerReply::Done)
}

/// The owner takes `user` out of `group`. Their listings are refused from
/// now on, and they get no new tickets, so peers refuse them within one
/// ticket lifetime.
pub async fn remove_member(shared: &Shared, req: RemoveMember) -> TrackerResult {
    let RemoveMember {
        session,
        group,
        user,
    } = req;
    let session = &session;
    let owner = shared.session_user(session)?;
    group_name(&group)?;
    user_name(&user)?;
    shared
        .submit(Change::RemoveMember { owner, group, user })
        .await?;
    Ok(TrackerReply::Done)
}

#[cfg(test)]
mod tests {
    use crate::cmd::testing::Fixture;
    use fileshare_protocol::messages::tracker::GroupInfo;
    use fileshare_protocol::messages::tracker::*;
    use fileshare_protocol::messages::TrackerReply;
    use fileshare_protocol::ErrorCode;

    #[tokio::test]
    async fn the_whole_membership_flow() {
        let fx = Fixture::new().await;
        let alice = fx.user("alice").await;
        let bob = fx.user("bob").await;
        let create = CreateGroup {
            session: alice,
            group: "g".into(),
        };
        assert_eq!(fx.call(create.clone()).await, Ok(TrackerReply::Done));
        assert_eq!(
            fx.call(create).await,
            Err(ErrorCode::GroupExists("g".into()))
        );
        let join = JoinGroup {
            session: bob,
            group: "g".into(),
        };
        fx.call(join).await.unwrap();
        let list = |session| ListGroups { session };
        assert_eq!(
            fx.call(list(bob)).await,
            Ok(TrackerReply::Groups(vec![GroupInfo {
                name: "g".into(),
                owner: "alice".into(),
                members: 1,
                is_owner: false,
                is_member: false,
                pending: true,
            }]))
        );
        let reqs = |session| ListRequests {
            session,
            group: "g".into(),
        };
        assert_eq!(
            fx.call(reqs(alice)).await,
            Ok(TrackerReply::Requests(vec!["bob".into()]))
        );
        assert_eq!(
            fx.call(reqs(bob)).await,
            Err(ErrorCode::NotOwner("g".into()))
        );
        let accept = |session, user: &str| AcceptRequest {
            session,
            group: "g".into(),
            user: user.into(),
        };
        assert_eq!(
            fx.call(accept(bob, "bob")).await,
            Err(ErrorCode::NotOwner("g".into()))
        );
        fx.call(accept(alice, "bob")).await.unwrap();
        assert_eq!(
            fx.call(accept(alice, "bob")).await,
            Err(ErrorCode::NoSuchRequest {
                group: "g".into(),
                user: "bob".into()
            })
        );
        let fx = fx.restart().await;
        let Ok(TrackerReply::Groups(gs)) = fx.call(list(bob)).await else {
            panic!()
        };
        assert!(gs[0].is_member && !gs[0].pending && gs[0].members == 2);

        // The owner leaves: bob, the longest-standing member left, owns it.
        fx.call(LeaveGroup {
            session: alice,
            group: "g".into(),
        })
        .await
        .unwrap();
        let Ok(TrackerReply::Groups(gs)) = fx.call(list(bob)).await else {
            panic!()
        };
        assert!(gs[0].is_owner && gs[0].owner == "bob" && gs[0].members == 1);
        fx.call(LeaveGroup {
            session: bob,
            group: "g".into(),
        })
        .await
        .unwrap();
        assert_eq!(fx.call(list(bob)).await, Ok(TrackerReply::Groups(vec![])));
    }

    #[tokio::test]
    async fn a_removed_member_is_refused_listings_at_once() {
        let fx = Fixture::new().await;
        let [alice, bob, _carol] = crate::cmd::file::tests::group(&fx).await;
        let m = crate::cmd::file::tests::meta("a", b"x");
        fx.call(ShareFile {
            session: alice,
            group: "g".into(),
            meta: m,
        })
        .await
        .unwrap();
        let remove = |session, user: &str| RemoveMember {
            session,
            group: "g".into(),
            user: user.into(),
        };
        assert_eq!(
            fx.call(remove(bob, "alice")).await,
            Err(ErrorCode::NotOwner("g".into()))
        );
        assert_eq!(
            fx.call(remove(alice, "alice")).await,
            Err(ErrorCode::OwnerCannotBeRemoved("g".into()))
        );
        assert_eq!(
            fx.call(remove(alice, "carol")).await,
            Err(ErrorCode::NoSuchMember {
                group: "g".into(),
                user: "carol".into()
            })
        );
        let list = ListFiles {
            session: bob,
            group: "g".into(),
        };
        assert!(fx.call(list.clone()).await.is_ok());
        fx.call(remove(alice, "bob")).await.unwrap();
        let not_member = Err(ErrorCode::NotMember("g".into()));
        assert_eq!(fx.call(list).await, not_member);
        let locate = Locate {
            session: bob,
            group: "g".into(),
            name: "a".into(),
        };
        assert_eq!(fx.call(locate).await, not_member);
        let search = Search {
            session: bob,
            pattern: "a".into(),
        };
        assert_eq!(fx.call(search).await, Ok(TrackerReply::Files(vec![])));
        let Ok(TrackerReply::Groups(gs)) = fx.call(ListGroups { session: bob }).await else {
            panic!()
        };
        assert!(!gs[0].is_member && gs[0].members == 1);
        // Durable: still out after a restart.
        let fx = fx.restart().await;
        let list = ListFiles {
            session: bob,
            group: "g".into(),
        };
        assert_eq!(fx.call(list).await, not_member);
    }

    #[tokio::test]
    async fn bad_group_names_are_refused() {
        let fx = Fixture::new().await;
        let alice = fx.user("alice").await;
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            let r = fx
                .call(CreateGroup {
                    session: alice,
                    group: bad.into(),
                })
                .await;
            assert!(
                matches!(&r, Err(ErrorCode::BadName { what, .. }) if what == "group"),
                "{bad:?}: {r:?}"
            );
        }
    }

    #[tokio::test]
    async fn group_and_request_quotas_name_their_limit_and_spare_others() {
        let fx = Fixture::with(crate::shared::Settings {
            limits: crate::shared::Limits {
                groups_per_user: 2,
                pending_requests: 1,
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let alice = fx.user("alice").await;
        let bob = fx.user("bob").await;
        let carol = fx.user("carol").await;
        let create = |session, group: &str| CreateGroup {
            session,
            group: group.into(),
        };
        fx.call(create(alice, "a1")).await.unwrap();
        fx.call(create(alice, "a2")).await.unwrap();
        let Err(ErrorCode::LimitReached {
            limit: fileshare_protocol::Limit::GroupsPerUser,
            message: why,
        }) = fx.call(create(alice, "a3")).await
        else {
            panic!("the third group must be refused");
        };
        assert!(why.contains("--max-groups-per-user 2"), "{why}");
        // Someone else still creates, and alice still lists hers.
        fx.call(create(bob, "b1")).await.unwrap();
        let Ok(TrackerReply::Groups(gs)) = fx.call(ListGroups { session: alice }).await else {
            panic!()
        };
        assert_eq!(gs.len(), 3);
        let join = |session| JoinGroup {
            session,
            group: "a1".into(),
        };
        fx.call(join(bob)).await.unwrap();
        let Err(ErrorCode::LimitReached {
            limit: fileshare_protocol::Limit::PendingRequests,
            message: why,
        }) = fx.call(join(carol)).await
        else {
            panic!("the second pending request must be refused");
        };
        assert!(why.contains("--max-pending-requests 1"), "{why}");
        fx.call(AcceptRequest {
            session: alice,
            group: "a1".into(),
            user: "bob".into(),
        })
        .await
        .unwrap();
        fx.call(join(carol)).await.unwrap();
    }

    #[test]
    fn a_listing_of_more_groups_than_a_frame_holds_is_bounded() {
        // 20,000 groups with 250-byte names: 5 MB of names.
        let all = (0..20_000).map(|i| GroupInfo {
            name: format!("{i:05}{}", "x".repeat(245)),
            owner: "o".repeat(64),
            members: u32::MAX,
            is_owner: false,
            is_member: false,
            pending: false,
        });
        let gs = super::bounded(super::LISTING_BUDGET, all, super::info_size);
        let reply = fileshare_protocol::codec::encode(&TrackerReply::Groups(gs.clone())).unwrap();
        assert!(reply.len() <= super::LISTING_BUDGET, "{}", reply.len());
        assert!(gs.len() > 10_000, "{}", gs.len());
    }

    /// A user's notices ride on the reply to their next command, a write
    /// sent once included, and only that one.
    #[tokio::test]
    async fn a_users_notices_come_with_their_next_command_once() {
        let fx = Fixture::new().await;
        let alice = fx.user("alice").await;
        let notice = Notice::GaveWay {
            change: "created group \"g\"".into(),
            why: ErrorCode::GroupExists("g".into()),
        };
        fx.shared
            .state
            .write()
            .apply(&crate::state::records::Record::Noticed {
                user: "alice".into(),
                notice: notice.clone(),
            });
        let create = TrackerRequest::Once {
            client: 7,
            seq: 1,
            request: Box::new(
                CreateGroup {
                    session: alice,
                    group: "h".into(),
                }
                .into(),
            ),
        };
        assert_eq!(
            fx.call(create).await,
            Ok(TrackerReply::Noted {
                notices: vec![notice],
                reply: Box::new(TrackerReply::Done),
            })
        );
        assert!(matches!(
            fx.call(ListGroups { session: alice }).await,
            Ok(TrackerReply::Groups(_))
        ));
        assert_eq!(fx.shared.state.read().notices("alice").count(), 0);
    }
}
