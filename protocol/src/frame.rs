//! Length-prefixed frames: a big-endian `u32` body length, then the body.
//!
//! [`check_header`] is the pure step: it reads a header out of a buffer and
//! refuses an oversized length before the caller allocates for the body.

use crate::{error::ProtocolError, MAX_FRAME_LEN};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// What a buffer holds so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// Fewer than [`HEADER_LEN`] bytes: read more.
    Incomplete,
    /// A body of this many bytes follows the header.
    Body(usize),
}

/// Parses the header at the start of `buf`, rejecting lengths over
/// [`MAX_FRAME_LEN`].
pub fn check_header(buf: &[u8]) -> Result<Header, ProtocolError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(Header::Incomplete);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let len = usize::try_from(len).map_err(|_| ProtocolError::FrameTooLarge {
        len: u64::from(len),
        limit: MAX_FRAME_LEN,
    })?;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            len: len as u64,
            limit: MAX_FRAME_LEN,
        });
    }
    Ok(Header::Body(len))
}

/// The header for a body of `len` bytes (callers have already bounded it).
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffer_is_incomplete() {
        assert_eq!(check_header(&[0, 0, 1]).unwrap(), Header::Incomplete);
    }

    #[test]
    fn length_is_big_endian() {
        assert_eq!(check_header(&[0, 0, 1, 0, 9]).unwrap(), Header::Body(256));
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let err = check_header(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
        let just_over = header(MAX_FRAME_LEN + 1);
        assert!(check_header(&just_over).is_err());
        assert_eq!(
            check_header(&header(MAX_FRAME_LEN)).unwrap(),
            Header::Body(MAX_FRAME_LEN)
        );
    }
}
