//! Reverse connections and the relay: a reader that cannot dial a holder
//! asks the tracker to have the holder dial it, or, when the reader cannot
//! be dialled either, to meet it at this tracker's relay; the holder
//! collects such calls by waiting on the tracker (see [`crate::reach`] and
//! [`crate::relay`]).

use super::{group_name, Caller};
use crate::peers::Card;
use crate::shared::Shared;
use fileshare_protocol::messages::tracker::{Call, CallKind, Reach};
use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerResult};
use fileshare_protocol::{ErrorCode, PeerId};
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

/// Places a call for `holder` to dial the caller's own daemon back. Both
/// must be online members of `group`, and the caller's offered address
/// must not be known unreachable: a holder would dial it in vain.
pub fn call_back(
    shared: &Shared,
    caller: &Caller,
    session: &SessionToken,
    group: &str,
    holder: PeerId,
    nonce: [u8; 16],
) -> TrackerResult {
    let (me, them) = pair(shared, caller, session, group, &holder)?;
    if shared.reach.of(&me.id, &me.addr) == Reach::Unreachable {
        return Err(ErrorCode::BadRequest(format!(
            "this daemon is not reachable at {} either: {holder} cannot dial it",
            me.addr
        )));
    }
    let call = Call {
        from: me.id,
        addr: me.addr.clone(),
        nonce,
        how: CallKind::DialBack,
    };
    (shared.reach)
        .place(them.id, call)
        .map_err(ErrorCode::LimitReached)?;
    Ok(TrackerReply::Done)
}

/// Calls `holder` to punch a path to the caller's daemon: both dial each
/// other's offered address from their listening ports at once.
pub fn punch(
    shared: &Shared,
    caller: &Caller,
    session: &SessionToken,
    group: &str,
    holder: PeerId,
    nonce: [u8; 16],
) -> TrackerResult {
    let (me, them) = pair(shared, caller, session, group, &holder)?;
    let call = Call {
        from: me.id,
        addr: me.addr.clone(),
        nonce,
        how: CallKind::Punch,
    };
    (shared.reach)
        .place(them.id, call)
        .map_err(ErrorCode::LimitReached)?;
    Ok(TrackerReply::Done)
}

/// Opens a relay slot between the caller's daemon and `holder` (both
/// online members of `group`) and calls the holder to it.
pub fn relay(
    shared: &Shared,
    caller: &Caller,
    session: &SessionToken,
    group: &str,
    holder: PeerId,
    nonce: [u8; 16],
) -> TrackerResult {
    let (me, them) = pair(shared, caller, session, group, &holder)?;
    (shared.relay)
        .open_slot(nonce, &me.user, &them.user)
        .map_err(ErrorCode::LimitReached)?;
    let call = Call {
        from: me.id,
        addr: String::new(),
        nonce,
        how: CallKind::Relay,
    };
    (shared.reach)
        .place(them.id, call)
        .map_err(ErrorCode::LimitReached)?;
    Ok(TrackerReply::Done)
}

/// The calls placed for the caller's daemon `peer`, waiting a while for
/// one.
pub async fn await_calls(
    shared: &Shared,
    caller: &Caller,
    session: &SessionToken,
    peer: PeerId,
    wait_ms: u32,
) -> TrackerResult {
    shared.session_user(session)?;
    caller.speaks_for(&peer)?;
    let wait = Duration::from_millis(u64::from(wait_ms));
    Ok(TrackerReply::Calls(shared.reach.collect(peer, wait).await))
}
