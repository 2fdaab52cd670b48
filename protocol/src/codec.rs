//! The body encoding. Everything else in the workspace encodes and decodes
//! through these two functions, so the format can change in one place.

use crate::messages::{Payload, PeerReply, Reply};
use crate::{error::ProtocolError, MAX_FRAME_LEN};
use serde::{de::DeserializeOwned, Serialize};

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let start = out.len();
    bincode::serde::encode_into_std_write(value, out, config()).map_err(ProtocolError::Encode)?;
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
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(ProtocolError::Decode)?;
    if used != body.len() {
        return Err(ProtocolError::TrailingBytes {
            used,
            len: body.len(),
        });
    }
    Ok(value)
}

/// Encodes a value that may outgrow a frame: for what a process keeps on
/// its own disk (a tracker's snapshot of its whole state), never for a
/// message, which [`encode`] bounds.
pub fn encode_large<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(ProtocolError::Encode)
}

/// Decodes what [`encode_large`] made. The bytes must come from this
/// process's own disk or from an authenticated peer of its cluster: the
/// frame limit does not bound what this allocates.
pub fn decode_large<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(ProtocolError::Decode)?;
    if used != body.len() {
        return Err(ProtocolError::TrailingBytes {
            used,
            len: body.len(),
        });
    }
    Ok(value)
}

/// The variant indexes of [`PeerReply::Piece`] and [`PeerReply::Part`] in
/// the derived encoding.
const PIECE_VARIANT: u32 = 2;
const PART_VARIANT: u32 = 6;

/// The body of `Reply { id, body: PeerReply::Piece { data } }` without
/// `data`'s bytes, which end the body: the caller sends them right after,
/// from where they are, instead of copying them into the frame first.
pub fn encode_piece_head(id: u64, len: usize, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    // The derived encoding of the struct, the variant and a byte string:
    // the id, the variant index, then the length, each a varint.
    encode_into(&(id, PIECE_VARIANT, len as u64), out)
}

/// As [`encode_piece_head`], for `PeerReply::Part { data }`.
pub fn encode_part_head(id: u64, len: usize, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_into(&(id, PART_VARIANT, len as u64), out)
}

/// Whether `body` starts as a [`PeerReply::Piece`] reply does: the bodies
/// worth handing to [`decode_peer_reply`] whole.
pub fn is_piece_reply(body: &[u8]) -> bool {
    matches!(
        bincode::serde::decode_from_slice::<(u64, u32), _>(body, config()),
        Ok(((_, PIECE_VARIANT), _))
    )
}

/// Decodes a peer reply from a body it takes whole. A piece's bytes stay
/// where they arrived: the payload keeps the body buffer, which the caller
/// may hand back to the connection once the piece is stored
/// ([`crate::connection::FrameReader::recycle`]). Any other reply decodes
/// as [`decode`] does.
pub fn decode_peer_reply(body: Vec<u8>) -> Result<Reply<PeerReply>, ProtocolError> {
    let head = bincode::serde::decode_from_slice::<(u64, u32), _>(&body, config());
    let Ok(((id, PIECE_VARIANT), used)) = head else {
        return decode(&body);
    };
    let rest = &body[used..];
    let (data, n) =
        bincode::serde::borrow_decode_from_slice::<&serde_bytes::Bytes, _>(rest, config())
            .map_err(ProtocolError::Decode)?;
    if used + n != body.len() {
        return Err(ProtocolError::TrailingBytes {
            used: used + n,
            len: body.len(),
        });
    }
    let start = body.len() - data.len();
    Ok(Reply {
        id,
        body: PeerReply::Piece {
            data: Payload::within(body, start),
        },
    })
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
            let general = decode::<Reply<PeerReply>>(&body).ok();
            // The in-place decoder of peer links agrees with the derived one.
            prop_assert_eq!(decode_peer_reply(body).ok(), general);
        }

        /// Valid messages with one byte flipped or the tail cut off are
        /// refused or decode to something else, never a panic.
        #[test]
        fn mutated_messages_never_panic(
            user in "[a-z]{0,40}",
            flip in any::<usize>(),
            cut in any::<usize>(),
        ) {
            let msg = Request { id: 3, body: TrackerRequest::Login(crate::messages::tracker::Login { user, password: "pw".into() }) };
            let mut bytes = encode(&msg).unwrap();
            let i = flip % bytes.len();
            bytes[i] ^= 0xa5;
            let _ = decode::<Request<TrackerRequest>>(&bytes);
            let cut = cut % (bytes.len() + 1);
            let _ = decode::<Request<TrackerRequest>>(&bytes[..cut]);
        }
    }

    /// The head written before a piece's bytes and the borrowing decoder
    /// agree with the derived encoding, byte for byte.
    #[test]
    fn pieces_are_framed_and_read_in_place_as_the_derived_encoding() {
        for (id, len) in [(0u64, 0usize), (1, 1), (300, 250), (u64::MAX, 512 * 1024)] {
            let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
            let reply = Reply {
                id,
                body: PeerReply::Piece {
                    data: Payload::from(data.clone()),
                },
            };
            let derived = encode(&reply).unwrap();
            let mut ours = Vec::new();
            encode_piece_head(id, len, &mut ours).unwrap();
            ours.extend_from_slice(&data);
            assert_eq!(ours, derived, "id {id} len {len}");
            let base = derived.as_ptr() as usize;
            let back = decode_peer_reply(derived).unwrap();
            assert_eq!(back, reply);
            let PeerReply::Piece { data: got } = back.body else {
                unreachable!()
            };
            // The bytes were not copied out of the body.
            if len > 0 {
                assert_eq!(got.as_ptr() as usize, base + got.into_buffer().len() - len);
            }
        }
        let part = Reply {
            id: 5,
            body: PeerReply::Part {
                data: vec![7u8; 9].into(),
            },
        };
        let mut head = Vec::new();
        encode_part_head(5, 9, &mut head).unwrap();
        head.extend_from_slice(&[7u8; 9]);
        assert_eq!(
            head,
            encode(&part).unwrap(),
            "a part's head is the derived one"
        );
        assert_eq!(decode_peer_reply(head).unwrap(), part);
        // Other replies decode as usual; a short or long piece is refused.
        let have = Reply {
            id: 4,
            body: PeerReply::Have(7),
        };
        assert!(!is_piece_reply(&encode(&have).unwrap()));
        let mut head = Vec::new();
        encode_piece_head(9, 3, &mut head).unwrap();
        assert!(is_piece_reply(&head));
        assert_eq!(decode_peer_reply(encode(&have).unwrap()).unwrap(), have);
        let mut cut = Vec::new();
        encode_piece_head(1, 10, &mut cut).unwrap();
        cut.extend_from_slice(&[0; 9]);
        assert!(decode_peer_reply(cut.clone()).is_err());
        cut.extend_from_slice(&[0; 2]);
        assert!(matches!(
            decode_peer_reply(cut),
            Err(ProtocolError::TrailingBytes { .. })
        ));
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
