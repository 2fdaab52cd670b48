//! The record log on disk: one redb table from index (1, 2, ...) to
//! `checksum || record bytes`.
//!
//! This module only appends batches and reads them back; it neither decides
//! nor applies records, so a follower can later append what a leader sent.
//! The checksum is the first 8 bytes of SHA-256 over the index and the
//! record bytes, so a damaged or misplaced record is found at start-up and
//! the tracker refuses to run on it instead of serving a wrong state.

use crate::error::{storage, TrackerError};
use crate::records::Record;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::Path;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// Bytes of checksum in front of each record.
const SUM_LEN: usize = 8;

pub struct Store {
    db: Database,
    /// Invariant: one more than the last stored index (1 when empty).
    next: u64,
}

fn checksum(index: u64, bytes: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(index.to_be_bytes());
    h.update(bytes);
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl Store {
    /// Opens or creates the log at `path`. redb itself refuses a second
    /// process on the same file.
    pub fn open(path: &Path) -> Result<Store, TrackerError> {
        let open_err = |e: redb::Error| TrackerError::Open {
            path: path.to_path_buf(),
            error: e,
        };
        let db = Database::create(path).map_err(|e| open_err(e.into()))?;
        let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        let last = {
            let table = txn.open_table(LOG).map_err(|e| open_err(e.into()))?;
            let last = table.last().map_err(|e| open_err(e.into()))?;
            last.map(|(k, _)| k.value())
        };
        txn.commit().map_err(|e| open_err(e.into()))?;
        Ok(Store {
            db,
            next: last.unwrap_or(0) + 1,
        })
    }

    /// The index of the last stored record, 0 when empty.
    pub fn last_index(&self) -> u64 {
        self.next - 1
    }

    /// Appends `records` in one durable transaction: when this returns `Ok`
    /// they survive a crash, and when it fails none of them was stored.
    /// Returns their indexes.
    pub fn append(&mut self, records: &[Record]) -> Result<Range<u64>, TrackerError> {
        let first = self.next;
        let mut value = Vec::new();
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(LOG).map_err(storage)?;
            for (index, rec) in (first..).zip(records) {
                let bytes = rec.encode().map_err(TrackerError::Encode)?;
                value.clear();
                value.extend_from_slice(&checksum(index, &bytes).to_be_bytes());
                value.extend_from_slice(&bytes);
                table.insert(index, value.as_slice()).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        self.next = first + records.len() as u64;
        Ok(first..self.next)
    }

    /// Up to `max` records from index `from` on, each checked against its
    /// checksum, in order and without gaps.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Record)>, TrackerError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(LOG).map_err(storage)?;
        let mut out = Vec::new();
        let from = from.max(1);
        for (expected, entry) in (from..).zip(table.range(from..).map_err(storage)?) {
            if out.len() >= max {
                break;
            }
            let (k, v) = entry.map_err(storage)?;
            let index = k.value();
            if index != expected {
                return Err(TrackerError::Gap {
                    expected,
                    found: index,
                });
            }
            let value = v.value();
            let (sum, bytes) =
                value
                    .split_at_checked(SUM_LEN)
                    .ok_or(TrackerError::ShortRecord {
                        index,
                        len: value.len(),
                    })?;
            let stored = u64::from_be_bytes(sum.try_into().unwrap_or([0; SUM_LEN]));
            let computed = checksum(index, bytes);
            if stored != computed {
                return Err(TrackerError::Checksum {
                    index,
                    stored,
                    computed,
                });
            }
            let rec =
                Record::decode(bytes).map_err(|error| TrackerError::Decode { index, error })?;
            out.push((index, rec));
        }
        Ok(out)
    }

    /// Every record, in order, for replay.
    pub fn read_all(&self, mut each: impl FnMut(u64, Record)) -> Result<u64, TrackerError> {
        let mut from = 1;
        loop {
            let chunk = self.read_from(from, 4096)?;
            let Some((last, _)) = chunk.last() else {
                return Ok(from - 1);
            };
            from = last + 1;
            for (i, r) in chunk {
                each(i, r);
            }
        }
    }

    /// Overwrites a stored record's bytes, keeping its old checksum: what a
    /// bit flip on disk looks like.
    #[cfg(test)]
    pub(crate) fn corrupt(&mut self, index: u64) {
        let txn = self.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(LOG).unwrap();
            let mut v = table.get(index).unwrap().unwrap().value().to_vec();
            let last = v.len() - 1;
            v[last] ^= 0x40;
            table.insert(index, v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(i: u32) -> Record {
        Record::UserCreated {
            user: format!("user{i}"),
            phc: "phc".into(),
        }
    }

    #[test]
    fn appended_batches_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.last_index(), 0);
            assert_eq!(s.append(&[user(1), user(2)]).unwrap(), 1..3);
            assert_eq!(s.append(&[user(3)]).unwrap(), 3..4);
            assert_eq!(s.append(&[]).unwrap(), 4..4);
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.last_index(), 3);
        let mut seen = vec![];
        assert_eq!(s.read_all(|i, r| seen.push((i, r))).unwrap(), 3);
        assert_eq!(seen, vec![(1, user(1)), (2, user(2)), (3, user(3))]);
        let tail = s.read_from(2, 1).unwrap();
        assert_eq!(tail, vec![(2, user(2))]);
        assert!(s.read_from(4, 10).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_record_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let mut s = Store::open(&path).unwrap();
            s.append(&[user(1), user(2), user(3)]).unwrap();
            s.corrupt(2);
        }
        let s = Store::open(&path).unwrap();
        let err = s.read_all(|_, _| {}).unwrap_err();
        assert!(
            matches!(err, TrackerError::Checksum { index: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("record 2"), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let _s = Store::open(&path).unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, TrackerError::Open { .. }), "{err}");
    }
}
