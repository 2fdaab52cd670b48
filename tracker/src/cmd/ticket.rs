//! Tickets: a tracker's signed word that a user belongs to a group, which
//! a serving peer checks back with any tracker of the cluster.

use super::group_name;
use crate::auth;
use crate::shared::Shared;
use fileshare_protocol::messages::{SessionToken, Ticket, TrackerReply, TrackerResult};
use fileshare_protocol::ErrorCode;

/// A ticket for the caller in `group`; members only.
pub fn issue(shared: &Shared, session: &SessionToken, group: &str) -> TrackerResult {
    let user = shared.session_user(session)?;
    group_name(group)?;
    let state = shared.state.read();
    state.member_group(group, &user)?;
    let secret = state
        .secret()
        .ok_or_else(|| ErrorCode::Unavailable("the cluster is not initialized".into()))?;
    let expires =
        auth::now_unix_ms().saturating_add(fileshare_protocol::millis(shared.settings.ticket_ttl));
    Ok(TrackerReply::Ticket(auth::sign_ticket(
        secret, &user, group, expires,
    )))
}

/// Valid if signed by this cluster, unexpired, and its user is still a
/// member: leaving a group revokes outstanding tickets at once.
pub fn verify(shared: &Shared, ticket: &Ticket) -> TrackerResult {
    let state = shared.state.read();
    let secret = state.secret().ok_or(ErrorCode::BadTicket)?;
    if !auth::ticket_is_authentic(secret, ticket, auth::now_unix_ms()) {
        return Err(ErrorCode::BadTicket);
    }
    if !state
        .group(&ticket.group)
        .is_some_and(|g| g.is_member(&ticket.user))
    {
        return Err(ErrorCode::BadTicket);
    }
    Ok(TrackerReply::TicketValid {
        user: ticket.user.clone(),
        group: ticket.group.clone(),
    })
}

#[cfg(test)]
mod tests {
    use crate::cmd::file::tests::group;
    use crate::cmd::testing::Fixture;
    use fileshare_protocol::messages::{TrackerReply, TrackerRequest};
    use fileshare_protocol::ErrorCode;

    #[tokio::test]
    async fn tickets_prove_membership_until_the_member_leaves() {
        let fx = Fixture::new();
        let [alice, bob, carol] = group(&fx).await;
        let issue = |session| TrackerRequest::IssueTicket {
            session,
            group: "g".into(),
        };
        assert_eq!(
            fx.call(issue(carol)).await,
            Err(ErrorCode::NotMember("g".into()))
        );
        let Ok(TrackerReply::Ticket(t)) = fx.call(issue(bob)).await else {
            panic!()
        };
        let verify = |ticket| TrackerRequest::VerifyTicket { ticket };
        // The key survives a restart, so old tickets stay valid.
        let fx = fx.restart().await;
        assert_eq!(
            fx.call(verify(t.clone())).await,
            Ok(TrackerReply::TicketValid {
                user: "bob".into(),
                group: "g".into()
            })
        );
        let mut forged = t.clone();
        forged.user = "carol".into();
        assert_eq!(fx.call(verify(forged)).await, Err(ErrorCode::BadTicket));
        let _ = alice;
        fx.call(TrackerRequest::LeaveGroup {
            session: bob,
            group: "g".into(),
        })
        .await
        .unwrap();
        assert_eq!(fx.call(verify(t)).await, Err(ErrorCode::BadTicket));
    }
}
