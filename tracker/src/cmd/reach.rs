//! Reverse connections: a reader that cannot dial a holder asks the
//! tracker to have the holder dial it; the holder collects such calls by
//! waiting on the tracker (see [`crate::reach`]).

use super::{group_name, Caller};
use crate::shared::Shared;
use fileshare_protocol::messages::tracker::{Call, Reach};
use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerResult};
use fileshare_protocol::{ErrorCode, PeerId};
use std::time::{Duration, Instant};

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
    let user = shared.session_user(session)?;
    group_name(group)?;
    let reader = caller.client_key().map(|k| k.peer_id()).ok_or_else(|| {
        ErrorCode::BadRequest("only a daemon presenting its key can be called back".into())
    })?;
    let now = Instant::now();
    let state = shared.state.read();
    let g = state.member_group(group, &user)?;
    let peers = shared.peers.read();
    let me = peers
        .card(&reader, now)
        .ok_or_else(|| ErrorCode::BadRequest(format!("peer {reader} has not announced itself")))?;
    let them = peers
        .card(&holder, now)
        .filter(|c| g.is_member(&c.user))
        .ok_or_else(|| {
            ErrorCode::BadRequest(format!("peer {holder} is not online in group {group}"))
        })?;
    drop(peers);
    drop(state);
    if shared.reach.of(&reader, &me.addr) == Reach::Unreachable {
        return Err(ErrorCode::BadRequest(format!(
            "this daemon is not reachable at {} either: {holder} cannot dial it",
            me.addr
        )));
    }
    let call = Call {
        from: reader,
        addr: me.addr.clone(),
        nonce,
    };
    shared
        .reach
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
