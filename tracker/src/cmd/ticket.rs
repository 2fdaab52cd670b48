//! Tickets: the cluster's signed word that a member's daemon may fetch a
//! group's files for a few minutes. Serving peers check them alone, with
//! the cluster's public key ([`key`]); membership is checked here, at
//! issue, so a user who leaves or is removed gets no new ones.

use super::{group_name, Caller};
use crate::auth;
use crate::shared::Shared;
use fileshare_protocol::messages::tracker::IssueTicket;
use fileshare_protocol::messages::{TrackerReply, TrackerResult};
use fileshare_protocol::ticket::{Grant, MAX_TICKET_LIFETIME};
use std::time::Instant;

/// A ticket for the caller's daemon `holder` in `group`; members only.
pub fn issue(shared: &Shared, caller: &Caller, req: IssueTicket) -> TrackerResult {
    let IssueTicket {
        session,
        group,
        holder,
    } = &req;
    let holder = *holder;
    let user = shared.session_user(session)?;
    group_name(group)?;
    // Only for the daemon that asks: `holder` must be the peer id of the
    // key this connection presented.
    caller.speaks_for(&holder)?;
    // Cut off from the cluster for longer than a ticket lasts, this
    // tracker may not know of a removal that the others enforce.
    let apart = shared.node.out_of_touch();
    if apart > shared.settings.ticket_ttl {
        return Err(fileshare_protocol::ErrorCode::Unavailable(format!(
            "tracker {} has been out of touch with the cluster for {} s, longer than a ticket \
             lasts; ask another tracker",
            shared.settings.tracker_no,
            apart.as_secs()
        )));
    }
    let signer = shared.ticket_signer()?;
    let state = shared.state.read();
    let group_id = state.member_group(group, &user)?.id;
    // And never for a peer id another user's online daemon announces.
    shared
        .peers
        .read()
        .check_holder(&holder, &user, Instant::now())?;
    drop(state);
    // The flag is checked at start; no ticket outlasts what daemons accept.
    let ttl = fileshare_protocol::millis(shared.settings.ticket_ttl.min(MAX_TICKET_LIFETIME));
    let now = auth::now_unix_ms();
    Ok(TrackerReply::Ticket(signer.sign(Grant {
        user: &user,
        group,
        group_id,
        holder,
        issued_unix_ms: now,
        expires_unix_ms: now.saturating_add(ttl),
    })))
}

/// The cluster's public ticket key; asked by daemons before they serve.
pub fn key(shared: &Shared) -> TrackerResult {
    Ok(TrackerReply::TicketKey(shared.ticket_signer()?.key()))
}

#[cfg(test)]
mod tests {
    use crate::cmd::file::tests::group;
    use crate::cmd::testing::{key_of, Fixture};
    use crate::cmd::{dispatch, Caller};
    use crate::shared::Settings;
    use fileshare_protocol::messages::tracker::*;
    use fileshare_protocol::messages::{SessionToken, TrackerReply};
    use fileshare_protocol::ticket::{Ticket, TicketError, TicketKey};
    use fileshare_protocol::{ErrorCode, PeerId};
    use std::time::Duration;

    const BOBS_DAEMON: PeerId = PeerId([2; 16]);

    async fn issue(fx: &Fixture, session: SessionToken) -> Result<Ticket, ErrorCode> {
        match fx
            .call(IssueTicket {
                session,
                group: "g".into(),
                holder: BOBS_DAEMON,
            })
            .await?
        {
            TrackerReply::Ticket(t) => Ok(t),
            other => panic!("{other:?}"),
        }
    }

    async fn key(fx: &Fixture) -> TicketKey {
        match fx.call(AskTicketKey).await {
            Ok(TrackerReply::TicketKey(k)) => k,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn tickets_go_to_members_only_and_verify_with_the_cluster_key() {
        let fx = Fixture::with(Settings {
            ticket_ttl: Duration::from_secs(60),
            ..Settings::default()
        })
        .await;
        let [alice, bob, carol] = group(&fx).await;
        assert_eq!(
            issue(&fx, carol).await,
            Err(ErrorCode::NotMember("g".into()))
        );
        let t = issue(&fx, bob).await.unwrap();
        assert_eq!((t.user.as_str(), t.group.as_str()), ("bob", "g"));
        assert_eq!(t.holder, BOBS_DAEMON);
        let now = crate::auth::now_unix_ms();
        assert!(t.expires_unix_ms > now + 55_000 && t.expires_unix_ms <= now + 60_000);
        let k = key(&fx).await;
        assert_eq!(t.verify(&k, &BOBS_DAEMON, now), Ok(()));
        assert_eq!(
            t.verify(&k, &PeerId([3; 16]), now),
            Err(TicketError::OtherHolder)
        );

        // The key survives a restart, so tickets issued before still verify.
        let fx = fx.restart().await;
        assert_eq!(key(&fx).await, k);

        // Once bob is removed, no more tickets for him.
        fx.call(RemoveMember {
            session: alice,
            group: "g".into(),
            user: "bob".into(),
        })
        .await
        .unwrap();
        assert_eq!(issue(&fx, bob).await, Err(ErrorCode::NotMember("g".into())));
    }

    #[tokio::test]
    async fn another_users_online_peer_id_is_refused_as_holder() {
        let fx = Fixture::new().await;
        let [alice, bob, _] = group(&fx).await;
        fx.call(Announce {
            session: alice,
            peer: BOBS_DAEMON,
            addr: "127.0.0.1:9".into(),
            also: vec![],
            holdings: vec![],
        })
        .await
        .unwrap();
        assert!(matches!(
            issue(&fx, bob).await,
            Err(ErrorCode::BadRequest(_))
        ));
    }

    /// A ticket is only for the daemon that asks: its holder must be the
    /// peer id of the key the request's connection presented.
    #[tokio::test]
    async fn the_holder_is_the_asking_connections_own_peer() {
        let fx = Fixture::new().await;
        let [_, bob, _] = group(&fx).await;
        let req = IssueTicket {
            session: bob,
            group: "g".into(),
            holder: BOBS_DAEMON,
        };
        for key in [None, Some(key_of(PeerId([3; 16])))] {
            let caller = Caller { addr: None, key };
            let r = dispatch(&fx.shared, &caller, req.clone().into()).await;
            assert!(matches!(r, Err(ErrorCode::BadRequest(_))), "{r:?}");
        }
        let mine = Caller {
            addr: None,
            key: Some(key_of(BOBS_DAEMON)),
        };
        assert!(dispatch(&fx.shared, &mine, req.into()).await.is_ok());
    }
}
