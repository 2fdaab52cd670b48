//! The record log on disk: one redb table from index (1, 2, ...) to
//! `checksum || record bytes`, and the commit index beside it.
//!
//! This module only writes batches and reads them back; it neither decides
//! nor applies records, so a follower appends what its leader sent through
//! the same [`Store::write`]. The checksum is the first 8 bytes of SHA-256
//! over the index and the record bytes, so a damaged or misplaced record is
//! found whenever it is read (at start-up, or to send it to another
//! tracker) and the tracker refuses to use it instead of serving or
//! spreading a wrong state.

use crate::error::{storage, TrackerError};
use crate::replication::log::LogRead;
use crate::state::records::Record;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// Small values beside the log: [`COMMIT`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The highest index known committed (on every member of its view) when
/// the last batch was written. Absent in logs written before replication,
/// whose every record was acknowledged.
const COMMIT: &str = "commit";

/// One durable write: drop the records from `truncate_from` on, append
/// `entries` (index and encoded record) right after, record `commit`.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub truncate_from: Option<u64>,
    pub entries: Vec<(u64, &'a [u8])>,
    pub commit: u64,
}

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
        // Created owner-only before redb opens it, and made so if an older
        // tracker left it readable by others.
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| open_err(e.into()))?;
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

    /// The commit index written with the last batch; `None` for a log
    /// written before replication.
    pub fn commit(&self) -> Result<Option<u64>, TrackerError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let v = meta.get(COMMIT).map_err(storage)?;
        Ok(v.map(|v| v.value()))
    }

    /// Writes `batch` in one durable transaction: when this returns `Ok` it
    /// survives a crash, and when it fails none of it was stored. Its
    /// entries must follow the log (after the truncation) without a gap.
    pub fn write(&mut self, batch: &Batch<'_>) -> Result<(), TrackerError> {
        let mut next = self.next;
        if let Some(t) = batch.truncate_from {
            next = next.min(t.max(1));
        }
        if let Some(&(first, _)) = batch.entries.first() {
            if first != next {
                return Err(TrackerError::Gap {
                    expected: next,
                    found: first,
                });
            }
        }
        let mut value = Vec::new();
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(LOG).map_err(storage)?;
            if next < self.next {
                table.retain_in(next.., |_, _| false).map_err(storage)?;
            }
            for (index, bytes) in &batch.entries {
                value.clear();
                value.extend_from_slice(&checksum(*index, bytes).to_be_bytes());
                value.extend_from_slice(bytes);
                table.insert(*index, value.as_slice()).map_err(storage)?;
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(COMMIT, batch.commit).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        self.next = next + batch.entries.len() as u64;
        Ok(())
    }

    /// Appends `records` in one durable transaction, all of them committed
    /// (a log of one tracker). Returns their indexes.
    pub fn append(&mut self, records: &[Record]) -> Result<Range<u64>, TrackerError> {
        let first = self.next;
        let encoded = records
            .iter()
            .map(|r| r.encode().map_err(TrackerError::Encode))
            .collect::<Result<Vec<_>, _>>()?;
        let entries = (first..).zip(encoded.iter().map(Vec::as_slice)).collect();
        let commit = first + records.len() as u64 - 1;
        self.write(&Batch {
            truncate_from: None,
            entries,
            commit,
        })?;
        Ok(first..self.next)
    }

    /// Up to `max` records from index `from` on, each checked against its
    /// checksum, in order and without gaps.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Record)>, TrackerError> {
        self.read_raw(from, max, usize::MAX)?
            .into_iter()
            .map(|(index, bytes)| {
                Record::decode(&bytes)
                    .map(|r| (index, r))
                    .map_err(|error| TrackerError::Decode { index, error })
            })
            .collect()
    }

    /// Up to `max` encoded records from index `from` on, stopping once
    /// `max_bytes` are reached (but returning at least one), each checked
    /// against its checksum, in order and without gaps.
    pub fn read_raw(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, TrackerError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(LOG).map_err(storage)?;
        let mut out = Vec::new();
        let mut bytes_out = 0usize;
        let from = from.max(1);
        for (expected, entry) in (from..).zip(table.range(from..).map_err(storage)?) {
            if out.len() >= max || (!out.is_empty() && bytes_out >= max_bytes) {
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
            bytes_out += bytes.len();
            out.push((index, bytes.to_vec()));
        }
        Ok(out)
    }

    /// Every record, in order, for replay.
    pub fn read_all(&self, mut each: impl FnMut(u64, Record)) -> Result<u64, TrackerError> {
        self.read_all_raw(|i, bytes| {
            let r =
                Record::decode(&bytes).map_err(|error| TrackerError::Decode { index: i, error })?;
            each(i, r);
            Ok(())
        })
    }

    /// Every encoded record, in order; stops at the first error `each`
    /// returns.
    pub fn read_all_raw(
        &self,
        mut each: impl FnMut(u64, Vec<u8>) -> Result<(), TrackerError>,
    ) -> Result<u64, TrackerError> {
        let mut from = 1;
        loop {
            let chunk = self.read_raw(from, 4096, 64 << 20)?;
            let Some((last, _)) = chunk.last() else {
                return Ok(from - 1);
            };
            from = last + 1;
            for (i, r) in chunk {
                each(i, r)?;
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

impl LogRead for Store {
    fn read(&self, from: u64, max: usize, max_bytes: usize) -> Result<Vec<Vec<u8>>, String> {
        self.read_raw(from, max, max_bytes)
            .map(|v| v.into_iter().map(|(_, b)| b).collect())
            .map_err(|e| e.to_string())
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
    fn truncation_and_commit_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let bytes: Vec<Vec<u8>> = (1..=4).map(|i| user(i).encode().unwrap()).collect();
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.commit().unwrap(), None);
            let entries = (1..).zip(bytes.iter().map(Vec::as_slice)).collect();
            s.write(&Batch {
                truncate_from: None,
                entries,
                commit: 2,
            })
            .unwrap();
            // Replace 3 and 4 by one other record.
            let other = user(9).encode().unwrap();
            s.write(&Batch {
                truncate_from: Some(3),
                entries: vec![(3, other.as_slice())],
                commit: 3,
            })
            .unwrap();
            let gap = s.write(&Batch {
                truncate_from: None,
                entries: vec![(9, other.as_slice())],
                commit: 3,
            });
            assert!(matches!(gap, Err(TrackerError::Gap { .. })));
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.last_index(), 3);
        assert_eq!(s.commit().unwrap(), Some(3));
        let all = s.read_from(1, 10).unwrap();
        assert_eq!(all.last().unwrap().1, user(9));
        assert_eq!(s.read_raw(1, 10, 1).unwrap().len(), 1, "stops at max_bytes");
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
