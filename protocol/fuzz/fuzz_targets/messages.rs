//! Every message decoder: the first byte picks the message type, the rest
//! is its body. Whatever decodes must encode, and that encoding must
//! decode to a value that encodes to the same bytes again.
#![no_main]

use fileshare_protocol::codec;
use fileshare_protocol::messages::{
    ClusterMsg, Hello, PeerReply, PeerRequest, Reply, Request, Ticket, TicketKey, TrackerRequest,
    TrackerResult,
};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn check<T: DeserializeOwned + Serialize>(body: &[u8]) {
    if let Ok(v) = codec::decode::<T>(body) {
        let once = codec::encode(&v).expect("a decoded message encodes");
        let back = codec::decode::<T>(&once).expect("an encoding decodes");
        let twice = codec::encode(&back).expect("a decoded message encodes");
        assert_eq!(once, twice, "a message does not survive a round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 9 {
        0 => check::<Hello>(body),
        1 => check::<Request<TrackerRequest>>(body),
        2 => check::<Reply<TrackerResult>>(body),
        3 => check::<Request<PeerRequest>>(body),
        4 => {
            check::<Reply<PeerReply>>(body);
            // The in-place decoder of peer links agrees with the derived one.
            let general = codec::decode::<Reply<PeerReply>>(body).ok();
            assert_eq!(codec::decode_peer_reply(body.to_vec()).ok(), general);
        }
        5 => check::<ClusterMsg>(body),
        6 => check::<Ticket>(body),
        7 => check::<TicketKey>(body),
        _ => {
            if let Ok(t) = codec::decode::<Ticket>(body) {
                // A ticket that decodes is checked, never trusted.
                let key = TicketKey([0; 32]);
                let _ = t.verify(&key, &t.holder, 0);
            }
        }
    }
});
