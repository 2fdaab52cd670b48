//! Reverse connections and the relay: a reader that cannot dial a holder
//! asks the tracker to have the holder dial it, or, when the reader cannot
//! be dialled either, to meet it at this tracker's relay; the holder
//! collects such calls by waiting on the tracker (see [`crate::reach`] and
//! [`crate::reach::relay`]).

use super::{group_name, Caller};
use crate::peers::Card;
use crate::shared::Shared;
use fileshare_protocol::messages::tracker::{AwaitCalls, Call, CallKind, Contact, Reach};
use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerResult};
use fileshare_protocol::{ErrorCode, Limit, PeerId};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The caller's daemon and `holder`, both online members of `group`.
fn pair(
    shared: &Shared,
    caller: &Caller,
    session: &SessionToken,
    group: &str,
    holder: &PeerId,
) -> Result<(Arc<Card>, Arc<Card>), ErrorCode> {
    let user = shared.session_user(session)?;
    group_name(group)?;
    let reader = caller.client_key().map(|k| k.peer_id()).ok_or_else(|| {
        ErrorCode::BadRequest("only a daemon presenting its key can be called back".into())
    })?;
    let now = Instant::now();
    let state = shared.state.read();
    let g = state.member_group(group, &user)?;
    let peers = shared.peers.read();
    let me = (peers.card(&reader, now))
        .filter(|c| c.user == user)
        .ok_or_else(|| ErrorCode::BadRequest(format!("peer {reader} has not announced itself")))?;
    let them = (peers.card(holder, now))
        .filter(|c| g.is_member(&c.user))
        .ok_or_else(|| {
            ErrorCode::BadRequest(format!("peer {holder} is not online in group {group}"))
        })?;
    Ok((me, them))
}

/// Places a call of kind `how` for `contact.holder`, on behalf of the
/// caller's own daemon; both must be online members of the group. One
/// function for the three kinds, as they differ in two steps only: a dial
/// back needs the caller's offered address not known unreachable (the
/// holder would dial it in vain), and a relay opens its slot first.
pub fn place_call(
    shared: &Shared,
    caller: &Caller,
    how: CallKind,
    contact: Contact,
) -> TrackerResult {
    let Contact {
        session,
        group,
        holder,
        nonce,
    } = contact;
    let (me, them) = pair(shared, caller, &session, &group, &holder)?;
    let addr = match how {
        CallKind::DialBack => {
            if shared.reach.of(&me.id, &me.addr) == Reach::Unreachable {
                return Err(ErrorCode::BadRequest(format!(
                    "this daemon is not reachable at {} either: {holder} cannot dial it",
                    me.addr
                )));
            }
            me.addr.clone()
        }
        CallKind::Punch => me.addr.clone(),
        CallKind::Relay => {
            (shared.relay)
                .open_slot(nonce, &me.user, &them.user)
                .map_err(|message| ErrorCode::LimitReached {
                    limit: Limit::Relay,
                    message,
                })?;
            String::new()
        }
    };
    let call = Call {
        from: me.id,
        addr,
        nonce,
        how,
    };
    (shared.reach).place(them.id, call).map_err(calls_waiting)?;
    Ok(TrackerReply::Done)
}

/// The calls placed for the caller's daemon `peer`, waiting a while for
/// one.
pub async fn await_calls(shared: &Shared, caller: &Caller, req: AwaitCalls) -> TrackerResult {
    let AwaitCalls {
        session,
        peer,
        wait_ms,
    } = req;
    shared.session_user(&session)?;
    caller.speaks_for(&peer)?;
    let wait = Duration::from_millis(u64::from(wait_ms));
    Ok(TrackerReply::Calls(shared.reach.collect(peer, wait).await))
}

/// A call refused because too many wait for its daemon.
fn calls_waiting(message: String) -> ErrorCode {
    ErrorCode::LimitReached {
        limit: Limit::CallsWaiting,
        message,
    }
}

#[cfg(test)]
mod tests {
    use crate::cmd::dispatch;
    use crate::cmd::file::tests::{group, meta};
    use crate::cmd::testing::{key_of, Fixture};
    use crate::cmd::Caller;
    use fileshare_protocol::ids::FileMeta;
    use fileshare_protocol::messages::tracker::*;
    use fileshare_protocol::messages::tracker::{CallKind, Holding, Reach};
    use fileshare_protocol::messages::{SessionToken, TrackerReply};
    use fileshare_protocol::{Bitfield, ErrorCode, PeerId};

    /// `peer` announces at `addr` (and `also`) holding all of `m`.
    async fn holds(
        fx: &Fixture,
        session: SessionToken,
        peer: PeerId,
        addr: String,
        also: Vec<String>,
        m: &FileMeta,
    ) {
        let have = Bitfield::full(1);
        let holdings = vec![Holding { file: m.id(), have }];
        let req = Announce {
            session,
            peer,
            addr,
            also,
            holdings,
        };
        fx.call(req).await.unwrap();
    }

    /// The holders `session` is told of for file "a" of group "g".
    async fn locate(fx: &Fixture, session: SessionToken) -> Vec<PeerLocation> {
        let req = Locate {
            session,
            group: "g".into(),
            name: "a".into(),
        };
        match fx.call(req).await {
            Ok(TrackerReply::Location { peers, .. }) => peers,
            other => panic!("locating a group's file: {other:?}"),
        }
    }

    /// A holder the tracker could not dial is listed last and marked; a
    /// reader it could dial gets that holder to dial back; a reader it
    /// could not dial is refused (the relay is its way), and so is anyone
    /// outside the group.
    #[tokio::test]
    async fn unreachable_holders_come_last_and_are_called_back() {
        let fx = Fixture::new().await;
        let [alice, bob, carol] = group(&fx).await;
        let m = meta("a", b"abc");
        for session in [alice, bob] {
            fx.call(ShareFile {
                session,
                group: "g".into(),
                meta: m.clone(),
            })
            .await
            .unwrap();
        }
        let (a, b, c) = (PeerId([1; 16]), PeerId([2; 16]), PeerId([3; 16]));
        let addr = |p: &PeerId| format!("127.0.0.1:{}", 9 + u16::from(p.0[0]));
        // Known before the announces, so no probe replaces them.
        fx.shared.reach.set(a, &addr(&a), Reach::Unreachable);
        fx.shared.reach.set(b, &addr(&b), Reach::Direct);
        for (session, peer) in [(alice, a), (bob, b), (carol, c)] {
            holds(&fx, session, peer, addr(&peer), vec![], &m).await;
        }
        let peers = locate(&fx, alice).await;
        let listed: Vec<(PeerId, Reach)> = peers.iter().map(|p| (p.peer, p.reach)).collect();
        assert_eq!(listed, vec![(b, Reach::Direct), (a, Reach::Unreachable)]);
        let call_back = |session, from: PeerId, holder| {
            let caller = Caller {
                addr: None,
                key: Some(key_of(from)),
            };
            let req = PlaceCall {
                how: CallKind::DialBack,
                contact: Contact {
                    session,
                    group: "g".into(),
                    holder,
                    nonce: [7; 16],
                },
            };
            let shared = fx.shared.clone();
            async move { dispatch(&shared, &caller, req.into()).await }
        };
        // Bob can be dialled: alice's daemon is called to dial him.
        call_back(bob, b, a).await.unwrap();
        let calls = fx.shared.reach.collect(a, std::time::Duration::ZERO).await;
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].from, calls[0].how), (b, CallKind::DialBack));
        assert_eq!(calls[0].addr, addr(&b));
        // Alice cannot be dialled: a call back to her is pointless.
        let r = call_back(alice, a, b).await;
        assert!(matches!(r, Err(ErrorCode::BadRequest(_))), "{r:?}");
        // Carol is not in the group.
        let r = call_back(carol, c, a).await;
        assert!(r.is_err(), "{r:?}");
        assert!(fx
            .shared
            .reach
            .collect(a, std::time::Duration::ZERO)
            .await
            .is_empty());
    }

    /// A holder's address in another family is handed out only once the
    /// tracker has dialled it there itself.
    #[tokio::test]
    async fn other_family_addresses_are_offered_once_dialled() {
        let fx = Fixture::new().await;
        let [alice, bob, _] = group(&fx).await;
        let m = meta("a", b"abc");
        fx.call(ShareFile {
            session: alice,
            group: "g".into(),
            meta: m.clone(),
        })
        .await
        .unwrap();
        let (a, b) = (PeerId([1; 16]), PeerId([2; 16]));
        fx.shared.reach.set(a, "[::1]:10", Reach::Direct);
        fx.shared.reach.set(b, "[::1]:11", Reach::Unreachable);
        for (session, peer, six) in [(alice, a, "[::1]:10"), (bob, b, "[::1]:11")] {
            let v4 = format!("127.0.0.1:{}", 9 + u16::from(peer.0[0]));
            // The second IPv6 address, and the IPv4 one, are dropped.
            let also = vec![six.into(), "[::1]:99".into(), "127.0.0.1:98".into()];
            holds(&fx, session, peer, v4, also, &m).await;
        }
        let peers = locate(&fx, alice).await;
        let also = |p: PeerId| peers.iter().find(|l| l.peer == p).map(|l| l.also.clone());
        assert_eq!(also(a), Some(vec!["[::1]:10".to_string()]));
        assert_eq!(also(b), Some(vec![]));
    }
}
