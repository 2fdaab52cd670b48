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
