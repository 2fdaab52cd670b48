//! Content hashes, ids, the piece layout of a file, bitfields and the rules
//! for names.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Every file is cut into pieces of this many bytes; the last may be shorter.
pub const PIECE_LEN: u64 = 512 * 1024;

/// Longest user, group or file name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// SHA-256 of one piece.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PieceHash(pub [u8; 32]);

impl PieceHash {
    pub fn of(data: &[u8]) -> Self {
        PieceHash(Sha256::digest(data).into())
    }
}

impl fmt::Debug for PieceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PieceHash({})", hex(&self.0[..8]))
    }
}

/// A file's id: SHA-256 over its name, size, piece length and piece hashes,
/// so two holders of the same id hold the same bytes under the same name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId(pub [u8; 32]);

impl FileId {
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = unhex(s)?;
        Some(FileId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0[..8]))
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", hex(&self.0[..8]))
    }
}

/// A running daemon's identity, random per home directory. It will become
/// the hash of the peer's certificate once connections carry TLS.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 16]);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0[..6]))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What the tracker and every peer know of a shared file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub name: String,
    pub size: u64,
    pub piece_len: u64,
    pub hashes: Vec<PieceHash>,
}

impl FileMeta {
    pub fn id(&self) -> FileId {
        let mut h = Sha256::new();
        h.update((self.name.len() as u64).to_be_bytes());
        h.update(self.name.as_bytes());
        h.update(self.size.to_be_bytes());
        h.update(self.piece_len.to_be_bytes());
        for p in &self.hashes {
            h.update(p.0);
        }
        FileId(h.finalize().into())
    }

    /// The piece layout, if the metadata is self-consistent.
    pub fn layout(&self) -> Result<Layout, String> {
        let layout = Layout::new(self.size, self.piece_len)?;
        if layout.num_pieces() as usize != self.hashes.len() {
            return Err(format!(
                "{} pieces need {} hashes, got {}",
                layout.num_pieces(),
                layout.num_pieces(),
                self.hashes.len()
            ));
        }
        Ok(layout)
    }
}

/// The most pieces a file may have: the hashes of its pieces travel in one
/// message (a share, a record of the tracker's log), with room for the rest
/// of it. At [`PIECE_LEN`] that is a file of [`MAX_FILE_SIZE`] (62 GiB).
pub const MAX_FILE_PIECES: u32 = 126_976;

/// The largest file at [`PIECE_LEN`]: [`MAX_FILE_PIECES`] pieces.
pub const MAX_FILE_SIZE: u64 = MAX_FILE_PIECES as u64 * crate::PIECE_LEN;

/// The longest piece any layout accepts: a piece travels in one frame
/// (with room for its reply's envelope), so a longer one could never be
/// served. The tracker refuses to list such a file and a daemon to store it.
pub const MAX_PIECE_LEN: u64 = (crate::MAX_FRAME_LEN - (64 << 10)) as u64;

/// A piece index known to be inside its file; only [`Layout`] makes one.
/// It reads as its number, in messages and in logs alike.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceIndex(u32);

impl std::fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for PieceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl PieceIndex {
    pub fn get(self) -> u32 {
        self.0
    }

    pub fn usize(self) -> usize {
        self.0 as usize
    }
}

/// Sizes and offsets of a file's pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    size: u64,
    piece_len: u64,
    num_pieces: u32,
}

impl Layout {
    pub fn new(size: u64, piece_len: u64) -> Result<Self, String> {
        if piece_len == 0 || piece_len > MAX_PIECE_LEN {
            return Err(format!(
                "piece length {piece_len} out of range: a piece must fit one frame, \
                 so at most {MAX_PIECE_LEN} bytes"
            ));
        }
        let n = size.div_ceil(piece_len);
        let num_pieces = u32::try_from(n).map_err(|_| format!("{n} pieces is too many"))?;
        Ok(Layout {
            size,
            piece_len,
            num_pieces,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn piece_len(&self) -> u64 {
        self.piece_len
    }

    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    pub fn validate(&self, index: u32) -> Option<PieceIndex> {
        (index < self.num_pieces).then_some(PieceIndex(index))
    }

    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> + use<> {
        (0..self.num_pieces).map(PieceIndex)
    }

    pub fn piece_offset(&self, p: PieceIndex) -> u64 {
        u64::from(p.0) * self.piece_len
    }

    pub fn piece_size(&self, p: PieceIndex) -> u64 {
        let start = self.piece_offset(p);
        (self.size - start).min(self.piece_len)
    }

    /// The piece holding byte `offset`, if the offset is inside the file.
    pub fn piece_at(&self, offset: u64) -> Option<PieceIndex> {
        if offset >= self.size {
            return None;
        }
        self.validate(u32::try_from(offset / self.piece_len).ok()?)
    }

    /// Pieces overlapping `[offset, offset + len)`, clipped to the file.
    pub fn pieces_for_range(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Iterator<Item = PieceIndex> + use<> {
        let end = offset.saturating_add(len).min(self.size);
        let (first, last) = if offset >= end {
            (1, 0)
        } else {
            (offset / self.piece_len, (end - 1) / self.piece_len)
        };
        (first..=last).map(|i| PieceIndex(u32::try_from(i).unwrap_or(u32::MAX)))
    }
}

/// One bit per piece.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Bitfield {
    len: u32,
    bits: Vec<u8>,
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.count(), self.len)
    }
}

impl Bitfield {
    pub fn new(len: u32) -> Self {
        Bitfield {
            len,
            bits: vec![0; (len as usize).div_ceil(8)],
        }
    }

    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A bitfield from the wire is only trusted once its length matches.
    pub fn is_valid_for(&self, num_pieces: u32) -> bool {
        self.len == num_pieces && self.bits.len() == (num_pieces as usize).div_ceil(8)
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len
            && self
                .bits
                .get((i / 8) as usize)
                .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    pub fn set(&mut self, i: u32) {
        if i < self.len {
            if let Some(b) = self.bits.get_mut((i / 8) as usize) {
                *b |= 1 << (i % 8);
            }
        }
    }

    pub fn clear(&mut self, i: u32) {
        if let Some(b) = self.bits.get_mut((i / 8) as usize) {
            *b &= !(1 << (i % 8));
        }
    }

    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

/// What kind of thing a name names, for error messages.
#[derive(Debug, Clone, Copy)]
pub enum NameKind {
    User,
    Group,
    File,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::User => "user",
            NameKind::Group => "group",
            NameKind::File => "file",
        })
    }
}

/// Checks a user, group or file name: 1 to 255 bytes of UTF-8, no `/`, no
/// NUL, not `.` or `..`. Returns the reason on refusal.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are reserved");
    }
    if name.contains('/') {
        return Err("contains `/`");
    }
    if name.contains('\0') {
        return Err("contains NUL");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    Ok(())
}

/// [`check_name`] as the tracker's error code.
pub fn validate_name(kind: NameKind, name: &str) -> Result<(), crate::ErrorCode> {
    check_name(name).map_err(|why| crate::ErrorCode::BadName {
        what: kind.to_string(),
        name: name.chars().take(64).collect(),
        why: why.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_uneven_file() {
        let l = Layout::new(PIECE_LEN * 2 + 10, PIECE_LEN).unwrap();
        assert_eq!(l.num_pieces(), 3);
        let last = l.validate(2).unwrap();
        assert_eq!(l.piece_size(last), 10);
        assert!(l.validate(3).is_none());
        assert_eq!(l.piece_at(PIECE_LEN * 2 + 9), Some(last));
        assert_eq!(l.piece_at(PIECE_LEN * 2 + 10), None);
        let r: Vec<_> = l
            .pieces_for_range(PIECE_LEN - 1, 2)
            .map(|p| p.get())
            .collect();
        assert_eq!(r, vec![0, 1]);
        assert_eq!(l.pieces_for_range(l.size(), 100).count(), 0);
    }

    #[test]
    fn empty_file_has_no_pieces() {
        assert!(Layout::new(1 << 30, MAX_PIECE_LEN).is_ok());
        let err = Layout::new(1 << 30, MAX_PIECE_LEN + 1).unwrap_err();
        assert!(err.contains("must fit one frame"), "{err}");
        let l = Layout::new(0, PIECE_LEN).unwrap();
        assert_eq!(l.num_pieces(), 0);
        assert_eq!(l.pieces_for_range(0, 4096).count(), 0);
    }

    #[test]
    fn bitfield_ops() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        b.set(10);
        assert!(b.get(0) && b.get(9) && !b.get(10));
        assert_eq!(b.count(), 2);
        b.clear(0);
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![9]);
        assert!(Bitfield::full(10).is_full());
        assert!(b.is_valid_for(10) && !b.is_valid_for(11));
    }

    #[test]
    fn names() {
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256), "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "report.pdf", "ünïcödé", "..a", &"x".repeat(255)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn file_id_covers_name_and_content() {
        let a = FileMeta {
            name: "a".into(),
            size: 1,
            piece_len: PIECE_LEN,
            hashes: vec![PieceHash::of(b"x")],
        };
        let mut b = a.clone();
        b.name = "b".into();
        assert_ne!(a.id(), b.id());
        assert_eq!(FileId::from_hex(&a.id().to_hex()), Some(a.id()));
    }
}
