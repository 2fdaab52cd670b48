//! Groups: creation, listing, membership requests, leaving and removal.

use super::{group_name, user_name};
use crate::shared::Shared;
use crate::state::change::Change;
use fileshare_protocol::messages::tracker::GroupInfo;
use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerResult};

pub async fn create(shared: &Shared, session: &SessionToken, group: String) -> TrackerResult {
    let user = shared.session_user(session)?;
    group_name(&group)?;
    shared.submit(Change::CreateGroup { user, group }).await?;
    Ok(TrackerReply::Done)
}

/// Every group, marked for the caller.
pub fn list(shared: &Shared, session: &SessionToken) -> TrackerResult {
    let user = shared.session_user(session)?;
    let state = shared.state.read();
    let groups = state
        .groups()
        .map(|(name, g)| GroupInfo {
            name: name.clone(),
            owner: g.owner.clone(),
            members: u32::try_from(g.member_count()).unwrap_or(u32::MAX),
            is_owner: g.owner == user,
            is_member: g.is_member(&user),
            pending: g.is_pending(&user),
        })
        .collect();
    Ok(TrackerReply::Groups(groups))
}

pub async fn join(shared: &Shared, session: &SessionToken, group: String) -> TrackerResult {
    let user = shared.session_user(session)?;
    group_name(&group)?;
    shared.submit(Change::JoinGroup { user, group }).await?;
    Ok(TrackerReply::Done)
}

pub async fn leave(shared: &Shared, session: &SessionToken, group: String) -> TrackerResult {
    let user = shared.session_user(session)?;
    group_name(&group)?;
    shared.submit(Change::LeaveGroup { user, group }).await?;
    Ok(TrackerReply::Done)
}

/// Pending requests, oldest first; the owner's view only.
pub fn requests(shared: &Shared, session: &SessionToken, group: &str) -> TrackerResult {
    let user = shared.session_user(session)?;
    group_name(group)?;
    let state = shared.state.read();
    let g = state.owned_group(group, &user)?;
    Ok(TrackerReply::Requests(g.requests()))
}

pub async fn decide_request(
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
pub async fn remove_member(
    shared: &Shared,
    session: &SessionToken,
    group: String,
    user: String,
) -> TrackerResult {
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
    use fileshare_protocol::messages::{TrackerReply, TrackerRequest};
    use fileshare_protocol::ErrorCode;

    #[tokio::test]
    async fn the_whole_membership_flow() {
        let fx = Fixture::new();
        let alice = fx.user("alice").await;
        let bob = fx.user("bob").await;
        let create = TrackerRequest::CreateGroup {
            session: alice,
            group: "g".into(),
        };
        assert_eq!(fx.call(create.clone()).await, Ok(TrackerReply::Done));
        assert_eq!(
            fx.call(create).await,
            Err(ErrorCode::GroupExists("g".into()))
        );
        let join = TrackerRequest::JoinGroup {
            session: bob,
            group: "g".into(),
        };
        fx.call(join).await.unwrap();
        let list = |session| TrackerRequest::ListGroups { session };
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
        let reqs = |session| TrackerRequest::ListRequests {
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
        let accept = |session, user: &str| TrackerRequest::AcceptRequest {
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
        fx.call(TrackerRequest::LeaveGroup {
            session: alice,
            group: "g".into(),
        })
        .await
        .unwrap();
        let Ok(TrackerReply::Groups(gs)) = fx.call(list(bob)).await else {
            panic!()
        };
        assert!(gs[0].is_owner && gs[0].owner == "bob" && gs[0].members == 1);
        fx.call(TrackerRequest::LeaveGroup {
            session: bob,
            group: "g".into(),
        })
        .await
        .unwrap();
        assert_eq!(fx.call(list(bob)).await, Ok(TrackerReply::Groups(vec![])));
    }

    #[tokio::test]
    async fn a_removed_member_is_refused_listings_at_once() {
        let fx = Fixture::new();
        let [alice, bob, _carol] = crate::cmd::file::tests::group(&fx).await;
        let m = crate::cmd::file::tests::meta("a", b"x");
        fx.call(TrackerRequest::ShareFile {
            session: alice,
            group: "g".into(),
            meta: m,
        })
        .await
        .unwrap();
        let remove = |session, user: &str| TrackerRequest::RemoveMember {
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
        let list = TrackerRequest::ListFiles {
            session: bob,
            group: "g".into(),
        };
        assert!(fx.call(list.clone()).await.is_ok());
        fx.call(remove(alice, "bob")).await.unwrap();
        let not_member = Err(ErrorCode::NotMember("g".into()));
        assert_eq!(fx.call(list).await, not_member);
        let locate = TrackerRequest::Locate {
            session: bob,
            group: "g".into(),
            name: "a".into(),
        };
        assert_eq!(fx.call(locate).await, not_member);
        let search = TrackerRequest::Search {
            session: bob,
            pattern: "a".into(),
        };
        assert_eq!(fx.call(search).await, Ok(TrackerReply::Files(vec![])));
        let Ok(TrackerReply::Groups(gs)) =
            fx.call(TrackerRequest::ListGroups { session: bob }).await
        else {
            panic!()
        };
        assert!(!gs[0].is_member && gs[0].members == 1);
        // Durable: still out after a restart.
        let fx = fx.restart().await;
        let list = TrackerRequest::ListFiles {
            session: bob,
            group: "g".into(),
        };
        assert_eq!(fx.call(list).await, not_member);
    }

    #[tokio::test]
    async fn bad_group_names_are_refused() {
        let fx = Fixture::new();
        let alice = fx.user("alice").await;
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            let r = fx
                .call(TrackerRequest::CreateGroup {
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
}
