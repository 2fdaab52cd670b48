//! The verified-pieces log of one stored file (`verified` in its entry).
//!
//! Records are appended as pieces are stored and evicted; nothing is synced
//! per piece. A sync point makes them durable in batches:
//!
//! - `Add(i)`: piece `i` was written to `data` and verified. Appended right
//!   after the bytes, without a sync: a killed daemon keeps it, a power
//!   loss may not have its bytes.
//! - `Sync(n)`: the data file was `fdatasync`ed after the first `n` records
//!   were appended, so every `Add` among them has its bytes on disk.
//! - `Lost(i)`: piece `i` was evicted. Synced before its hole is punched,
//!   so a replay never trusts bytes that are gone.
//!
//! Replaying the log gives the pieces held and, apart, those added after
//! the last sync point covering them: after an unclean stop their bytes may
//! be zeros or stale, so the store hashes them again before they are served
//! ([`crate::store::Store`]). After a clean stop the last sync point covers
//! every record.
//!
//! Each record is 8 bytes, an index and a tag derived from it and the kind,
//! so a tail of zeros or garbage (a torn append, a lost page) is not a
//! record: replay stops at the first one that does not check out.

use fileshare_protocol::Bitfield;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The first bytes of a log in this format.
pub const HEADER: &[u8; 8] = b"FSVLOG01";
const RECORD_LEN: usize = 8;
const TAG_ADD: u32 = 0x6164_6431;
const TAG_LOST: u32 = 0x6c6f_7374;
const TAG_SYNC: u32 = 0x7379_6e63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Add(u32),
    Lost(u32),
    Sync(u32),
}

impl Record {
    fn encode(self) -> [u8; RECORD_LEN] {
        let (v, tag) = match self {
            Record::Add(i) => (i, TAG_ADD),
            Record::Lost(i) => (i, TAG_LOST),
            Record::Sync(n) => (n, TAG_SYNC),
        };
        let mut out = [0u8; RECORD_LEN];
        out[..4].copy_from_slice(&v.to_le_bytes());
        out[4..].copy_from_slice(&(tag ^ v.rotate_left(7)).to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Record> {
        let v = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
        let tag = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?) ^ v.rotate_left(7);
        match tag {
            TAG_ADD => Some(Record::Add(v)),
            TAG_LOST => Some(Record::Lost(v)),
            TAG_SYNC => Some(Record::Sync(v)),
            _ => None,
        }
    }
}

/// Adds not yet covered by a sync point, by record number and by piece.
#[derive(Debug, Default, Clone)]
struct Pending {
    by_record: BTreeMap<u64, u32>,
    by_piece: HashMap<u32, u64>,
}

impl Pending {
    fn add(&mut self, record: u64, piece: u32) {
        self.remove(piece);
        self.by_record.insert(record, piece);
        self.by_piece.insert(piece, record);
    }

    fn remove(&mut self, piece: u32) {
        if let Some(r) = self.by_piece.remove(&piece) {
            self.by_record.remove(&r);
        }
    }

    /// Every add among the first `n` records is durable now.
    fn synced(&mut self, n: u64) {
        let later = self.by_record.split_off(&n);
        for (_, piece) in std::mem::replace(&mut self.by_record, later) {
            self.by_piece.remove(&piece);
        }
    }

    fn len(&self) -> usize {
        self.by_record.len()
    }

    fn pieces(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_record.values().copied()
    }
}

/// What a log says.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// Pieces held.
    pub have: Bitfield,
    /// Held pieces added after the last sync point that covers them.
    pub unsure: Bitfield,
    /// Whether the file holds exactly the header and records that check
    /// out, with no `Lost` among them: nothing worth rewriting.
    pub tidy: bool,
    records: u64,
}

/// Replays a log's bytes for a file of `num_pieces` pieces. A log without
/// the header is empty (and not tidy).
pub fn replay(bytes: &[u8], num_pieces: u32) -> Replayed {
    let mut have = Bitfield::new(num_pieces);
    let mut pending = Pending::default();
    let mut records = 0u64;
    let mut tidy = bytes.starts_with(HEADER);
    if tidy {
        let body = &bytes[HEADER.len()..];
        tidy = body.len().is_multiple_of(RECORD_LEN);
        for chunk in body.chunks(RECORD_LEN) {
            let record = match Record::decode(chunk) {
                Some(r @ (Record::Add(i) | Record::Lost(i))) if i < num_pieces => r,
                Some(r @ Record::Sync(_)) => r,
                _ => {
                    tidy = false;
                    break;
                }
            };
            match record {
                Record::Add(i) => {
                    have.set(i);
                    pending.add(records, i);
                }
                Record::Lost(i) => {
                    have.clear(i);
                    pending.remove(i);
                    tidy = false;
                }
                Record::Sync(n) => pending.synced(u64::from(n)),
            }
            records += 1;
        }
    }
    let mut unsure = Bitfield::new(num_pieces);
    for p in pending.pieces() {
        unsure.set(p);
    }
    Replayed {
        have,
        unsure,
        tidy,
        records,
    }
}

/// Reads the log of an older daemon (`have`: one little-endian index per
/// piece, written with no sync point): every piece in it is unsure.
pub fn replay_legacy(bytes: &[u8], num_pieces: u32) -> Replayed {
    let mut have = Bitfield::new(num_pieces);
    for chunk in bytes.chunks_exact(4) {
        let i = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if i < num_pieces {
            have.set(i);
        }
    }
    Replayed {
        unsure: have.clone(),
        have,
        tidy: false,
        records: 0,
    }
}

/// The open log of one file: the append handle and what its records say.
#[derive(Debug)]
pub struct PieceLog {
    path: PathBuf,
    file: File,
    num_pieces: u32,
    /// What a replay would give as held.
    logged: Bitfield,
    pending: Pending,
    records: u64,
    /// When the oldest pending add was appended.
    pending_since: Option<Instant>,
    /// An append failed and could not be undone: nothing more is written,
    /// so no record can hide behind a torn one.
    broken: bool,
    /// Whether the entry's directory was synced since the log was created
    /// (its name, and the data's, durable); the first sync point does it.
    dir_synced: bool,
}

fn io_other(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

impl PieceLog {
    /// Opens the log at `path`, which a replay found `state` in and which
    /// holds exactly its records (rewrite it first otherwise).
    pub fn open(path: &Path, num_pieces: u32, state: &Replayed) -> std::io::Result<PieceLog> {
        // A replay keeps no record numbers for unsure pieces: a log with
        // some is checked and rewritten instead (the store does).
        if state.unsure.count() > 0 {
            return Err(io_other("the log has unchecked pieces"));
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(PieceLog {
            path: path.to_path_buf(),
            file,
            num_pieces,
            logged: state.have.clone(),
            pending: Pending::default(),
            records: state.records,
            pending_since: None,
            broken: false,
            dir_synced: true,
        })
    }

    /// Writes a fresh log at `path` saying `synced` are held and durable and
    /// `unsynced` are held but not yet synced, replacing any old one
    /// (durably if it claims durable pieces), and opens it.
    pub fn create(
        path: &Path,
        num_pieces: u32,
        synced: &Bitfield,
        unsynced: &Bitfield,
    ) -> std::io::Result<PieceLog> {
        let mut bytes = Vec::with_capacity(HEADER.len() + RECORD_LEN * (num_pieces as usize + 1));
        bytes.extend_from_slice(HEADER);
        let mut records = 0u64;
        let mut logged = Bitfield::new(num_pieces);
        for i in synced.ones() {
            bytes.extend_from_slice(&Record::Add(i).encode());
            logged.set(i);
            records += 1;
        }
        if records > 0 {
            let n = u32::try_from(records).map_err(|_| io_other("log too long"))?;
            bytes.extend_from_slice(&Record::Sync(n).encode());
            records += 1;
        }
        let mut pending = Pending::default();
        for i in unsynced.ones() {
            if logged.get(i) {
                continue;
            }
            bytes.extend_from_slice(&Record::Add(i).encode());
            logged.set(i);
            pending.add(records, i);
            records += 1;
        }
        // A new log that claims no durable piece needs no sync now: lost,
        // it claims nothing that could be wrong. The next sync point syncs
        // it. One that replaces another must be durable, or the old one
        // could come back.
        let durable = synced.count() > 0 || path.exists();
        let tmp = path.with_extension("tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            if durable {
                f.sync_data()?;
            }
        }
        std::fs::rename(&tmp, path)?;
        if let (true, Some(dir)) = (durable, path.parent()) {
            super::disk::sync_dir(dir)?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        let pending_since = (pending.len() > 0).then(Instant::now);
        Ok(PieceLog {
            path: path.to_path_buf(),
            file,
            num_pieces,
            logged,
            pending,
            records,
            pending_since,
            broken: false,
            dir_synced: durable,
        })
    }

    fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        if self.broken {
            return Err(io_other("the log of verified pieces could not be written"));
        }
        let mut buf = Vec::with_capacity(records.len() * RECORD_LEN);
        for r in records {
            buf.extend_from_slice(&r.encode());
        }
        if let Err(e) = self.file.write_all(&buf) {
            // Undo a torn append so later records stay readable.
            let good = HEADER.len() as u64 + self.records * RECORD_LEN as u64;
            if self.file.set_len(good).is_err() {
                self.broken = true;
            }
            return Err(e);
        }
        self.records += records.len() as u64;
        Ok(())
    }

    /// Records that `piece` was written and verified (not yet synced).
    pub fn add(&mut self, piece: u32) -> std::io::Result<()> {
        let r = self.records;
        self.append(&[Record::Add(piece)])?;
        self.logged.set(piece);
        self.pending.add(r, piece);
        self.pending_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Records `pieces` as added again (kept after all by an eviction).
    pub fn add_all(&mut self, pieces: &[u32]) -> std::io::Result<()> {
        for &p in pieces {
            self.add(p)?;
        }
        Ok(())
    }

    /// Records that `pieces` are gone and makes that durable, so their
    /// holes may be punched.
    pub fn lost(&mut self, pieces: &[u32]) -> std::io::Result<()> {
        let records: Vec<Record> = pieces.iter().map(|&p| Record::Lost(p)).collect();
        self.append(&records)?;
        for &p in pieces {
            self.logged.clear(p);
            self.pending.remove(p);
        }
        if self.pending.len() == 0 {
            self.pending_since = None;
        }
        self.sync_file()
    }

    /// The sync mark: the number of records now. Once the data file is
    /// synced, [`PieceLog::synced`] with it covers every add before it.
    pub fn mark(&self) -> u64 {
        self.records
    }

    /// The data file was synced after [`PieceLog::mark`] returned `mark`.
    pub fn synced(&mut self, mark: u64) -> std::io::Result<()> {
        let n = u32::try_from(mark).map_err(|_| io_other("log too long"))?;
        self.append(&[Record::Sync(n)])?;
        self.pending.synced(mark);
        if self.pending.len() == 0 {
            self.pending_since = None;
        }
        self.sync_file()
    }

    /// Makes the log durable, and its name the first time.
    fn sync_file(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        if !self.dir_synced {
            if let Some(dir) = self.path.parent() {
                super::disk::sync_dir(dir)?;
            }
            self.dir_synced = true;
        }
        Ok(())
    }

    /// Pieces added and not yet synced, and since when.
    pub fn pending(&self) -> (usize, Option<Instant>) {
        (self.pending.len(), self.pending_since)
    }

    /// Whether the log has grown well past what it describes.
    pub fn wants_compaction(&self) -> bool {
        self.records > 2 * u64::from(self.num_pieces) + 256
    }

    /// Rewrites the log as one add per held piece, synced ones first.
    pub fn compact(&mut self) -> std::io::Result<()> {
        let mut unsynced = Bitfield::new(self.num_pieces);
        for p in self.pending.pieces() {
            unsynced.set(p);
        }
        let mut synced = self.logged.clone();
        for p in unsynced.ones() {
            synced.clear(p);
        }
        let since = self.pending_since;
        *self = PieceLog::create(&self.path, self.num_pieces, &synced, &unsynced)?;
        self.pending_since = since.filter(|_| self.pending.len() > 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(b: &Bitfield) -> Vec<u32> {
        b.ones().collect()
    }

    #[test]
    fn adds_after_the_last_sync_point_are_unsure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verified");
        let empty = Bitfield::new(8);
        let mut log = PieceLog::create(&path, 8, &empty, &empty).unwrap();
        log.add(1).unwrap();
        log.add(2).unwrap();
        let mark = log.mark();
        log.add(3).unwrap();
        log.synced(mark).unwrap();
        log.add(4).unwrap();
        log.lost(&[2]).unwrap();
        let r = replay(&std::fs::read(&path).unwrap(), 8);
        assert_eq!(pieces(&r.have), vec![1, 3, 4]);
        // 3 was appended after the mark: the sync did not cover it.
        assert_eq!(pieces(&r.unsure), vec![3, 4]);
        assert!(!r.tidy);
        assert_eq!(log.pending().0, 2);
    }

    #[test]
    fn a_torn_or_zeroed_tail_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verified");
        let mut have = Bitfield::new(4);
        have.set(0);
        let mut log = PieceLog::create(&path, 4, &have, &Bitfield::new(4)).unwrap();
        log.add(1).unwrap();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let good = replay(&bytes, 4);
        assert!(good.tidy);
        assert_eq!(pieces(&good.have), vec![0, 1]);
        // A page of zeros after it (a lost write), then a torn record.
        bytes.extend_from_slice(&[0u8; 16]);
        bytes.extend_from_slice(&Record::Add(2).encode()[..5]);
        let r = replay(&bytes, 4);
        assert_eq!(pieces(&r.have), vec![0, 1]);
        assert_eq!(pieces(&r.unsure), vec![1]);
        assert!(!r.tidy);
        // Indexes past the file end the log too.
        let mut past = std::fs::read(&path).unwrap();
        past.extend_from_slice(&Record::Add(9).encode());
        past.extend_from_slice(&Record::Add(3).encode());
        assert_eq!(pieces(&replay(&past, 4).have), vec![0, 1]);
    }

    #[test]
    fn compaction_keeps_what_the_log_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verified");
        let empty = Bitfield::new(3);
        let mut log = PieceLog::create(&path, 3, &empty, &empty).unwrap();
        for _ in 0..200 {
            log.add(0).unwrap();
            log.lost(&[0]).unwrap();
        }
        log.add(1).unwrap();
        let mark = log.mark();
        log.synced(mark).unwrap();
        log.add(2).unwrap();
        assert!(log.wants_compaction());
        log.compact().unwrap();
        assert!(!log.wants_compaction());
        let r = replay(&std::fs::read(&path).unwrap(), 3);
        assert_eq!(pieces(&r.have), vec![1, 2]);
        assert_eq!(pieces(&r.unsure), vec![2]);
        assert!(r.tidy);
        // Appends after a compaction land in the new file.
        log.add(0).unwrap();
        let r = replay(&std::fs::read(&path).unwrap(), 3);
        assert_eq!(pieces(&r.have), vec![0, 1, 2]);
    }
}
