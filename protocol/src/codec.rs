//! The body encoding. Everything else in the workspace encodes and decodes
//! through these two functions, so the format can change in one place.

use crate::{error::ProtocolError, MAX_FRAME_LEN};
use serde::{de::DeserializeOwned, Serialize};

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let start = out.len();
    bincode::serde::encode_into_std_write(value, out, config())
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    let len = out.len() - start;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(ProtocolError::FrameTooLarge {
            len: len as u64,
            limit: MAX_FRAME_LEN,
        });
    }
    Ok(())
}

/// Encodes `value` into a fresh buffer.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes one whole body; trailing bytes are an error, so a frame means
/// exactly one message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(ProtocolError::TrailingBytes {
            used,
            len: body.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::messages::peer::{PeerReply, PeerRequest};
    use crate::messages::tracker::{TrackerReply, TrackerRequest};
    use crate::messages::{Hello, Reply, Request};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Hostile bodies of any shape decode to an error or a value, never
        /// a panic, and never allocate past the frame limit (bincode's limit
        /// covers lengths declared inside the body).
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Hello>(&body);
            let _ = decode::<Request<TrackerRequest>>(&body);
            let _ = decode::<Reply<Result<TrackerReply, ErrorCode>>>(&body);
            let _ = decode::<Request<PeerRequest>>(&body);
            let _ = decode::<Reply<PeerReply>>(&body);
        }

        /// Valid messages with one byte flipped or the tail cut off are
        /// refused or decode to something else, never a panic.
        #[test]
        fn mutated_messages_never_panic(
            user in "[a-z]{0,40}",
            flip in any::<usize>(),
            cut in any::<usize>(),
        ) {
            let msg = Request { id: 3, body: TrackerRequest::Login { user, password: "pw".into() } };
            let mut bytes = encode(&msg).unwrap();
            let i = flip % bytes.len();
            bytes[i] ^= 0xa5;
            let _ = decode::<Request<TrackerRequest>>(&bytes);
            let cut = cut % (bytes.len() + 1);
            let _ = decode::<Request<TrackerRequest>>(&bytes[..cut]);
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&Request {
            id: 1,
            body: PeerRequest::Subscribe {
                file: crate::FileId([0; 32]),
            },
        })
        .unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Request<PeerRequest>>(&bytes),
            Err(ProtocolError::TrailingBytes { .. })
        ));
    }
}
