//! Reaching a daemon that cannot be dialled: a reader asks the tracker to
//! have the holder dial back, punch or meet at the relay ([`PlaceCall`]),
//! and a holder waits for such calls ([`AwaitCalls`]).

use super::{Call, CallKind, SessionToken};
use crate::ids::PeerId;
use serde::{Deserialize, Serialize};

/// Whom a reader wants to reach and how it will know the connection:
/// `holder`, in `group` (both must be in it), and `nonce`, which both ends
/// send first. The body of the `CallBack`, `Relay` and `Punch` variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub session: SessionToken,
    pub group: String,
    pub holder: PeerId,
    pub nonce: [u8; 16],
}

/// Asks the tracker to hand `contact.holder` a [`Call`] of kind `how`:
/// to dial the caller's offered address back ([`CallKind::DialBack`]),
/// to dial it from its own listening port while the caller dials the
/// holder's ([`CallKind::Punch`]), or to meet the caller at this
/// tracker's relay ([`CallKind::Relay`]: both connect to it at the
/// address the caller reaches this tracker at, send
/// [`RELAY_MAGIC`](super::RELAY_MAGIC), the nonce and their side, 0 the
/// caller and 1 the holder, and the peer TLS runs end to end inside). One
/// struct for the three, as they differ only in the kind; on the wire each
/// kind is a variant of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceCall {
    pub how: CallKind,
    pub contact: Contact,
}

impl From<PlaceCall> for super::TrackerRequest {
    fn from(r: PlaceCall) -> Self {
        match r.how {
            CallKind::DialBack => super::TrackerRequest::CallBack(r.contact),
            CallKind::Relay => super::TrackerRequest::Relay(r.contact),
            CallKind::Punch => super::TrackerRequest::Punch(r.contact),
        }
    }
}
answers!(PlaceCall, done);

/// A daemon waits (at most `wait_ms`, capped by the tracker) for calls
/// other daemons placed for it; answered empty when none came (keep it
/// under the client's timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwaitCalls {
    pub session: SessionToken,
    pub peer: PeerId,
    pub wait_ms: u32,
}
wraps!(AwaitCalls);
answers!(AwaitCalls, "Calls", Vec<Call>, super::TrackerReply::Calls(c) => c);
