//! The record log as replication sees it: indexes, the hash chain, the
//! views recorded in it, how far it is durable, committed and applied, and
//! the bytes of recent entries.
//!
//! The chain hash at index `i` is SHA-256 over the hash at `i - 1`, `i` and
//! the entry's bytes (index 0 is the empty log, all zeroes). Two logs with
//! the same hash at an index hold the same entries up to it, so comparing
//! one position compares whole prefixes.
//!
//! Entry bytes older than the cache are read back from the store through
//! [`LogRead`]; everything not yet applied stays cached, so applying never
//! reads the disk.

use crate::state::records::Record;
use fileshare_protocol::messages::cluster::{LogPoint, View, ViewId};
use fileshare_protocol::ProtocolError;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The hash of the empty log.
pub const GENESIS: [u8; 32] = [0; 32];

/// Cached entry bytes kept beyond what is still needed (not yet applied).
const CACHE_BYTES: usize = 32 << 20;

/// One entry: its encoding, which is what is stored, sent and hashed, and
/// the record it decodes to.
#[derive(Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub bytes: Vec<u8>,
    pub record: Record,
}

impl LogEntry {
    pub fn new(record: Record) -> Result<LogEntry, ProtocolError> {
        Ok(LogEntry {
            bytes: record.encode()?,
            record,
        })
    }

    /// Decodes an entry that came from another tracker or the disk.
    pub fn decode(bytes: Vec<u8>) -> Result<LogEntry, ProtocolError> {
        let record = Record::decode(&bytes)?;
        Ok(LogEntry { bytes, record })
    }
}

/// The chain hash at `index` of an entry with `bytes` after `prev`.
pub fn chain(prev: &[u8; 32], index: u64, bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(index.to_be_bytes());
    h.update(bytes);
    h.finalize().into()
}

/// Reads entry bytes back from durable storage, each checked against its
/// checksum: up to `max_entries` from `from` on, stopping once `max_bytes`
/// are reached (at least one entry is returned if there is one).
pub trait LogRead {
    fn read(&self, from: u64, max_entries: usize, max_bytes: usize)
        -> Result<Vec<Vec<u8>>, String>;
}

/// Orders views: a later epoch wins; of two views made at the same epoch,
/// the lower-numbered leader's wins. No view ranks lowest.
pub fn view_rank(v: Option<ViewId>) -> (u64, std::cmp::Reverse<u32>) {
    match v {
        Some(v) => (v.epoch.saturating_add(1), std::cmp::Reverse(v.leader)),
        None => (0, std::cmp::Reverse(u32::MAX)),
    }
}

#[derive(Debug)]
pub struct Log {
    /// Invariant: `hashes[i]` is the chain hash at index `i`;
    /// `hashes[0] == GENESIS`; the last index is `hashes.len() - 1`.
    hashes: Vec<[u8; 32]>,
    /// Invariant: exactly the view records of the log, by index.
    views: BTreeMap<u64, View>,
    /// Invariant: `persisted <= last`; entries up to it are durable.
    persisted: u64,
    /// Invariant: `commit <= last`; entries up to it are on every member
    /// of their view. It only goes down when views after the last committed
    /// change are replaced (see [`Log::truncate`]).
    commit: u64,
    /// Invariant: `applied <= commit` and `applied <= persisted`; the state
    /// has applied exactly entries `1..=applied`.
    applied: u64,
    /// Invariant: `cache[k]` is entry `cache_first + k`; the cache ends at
    /// the last index and starts at or before `applied + 1`.
    cache: VecDeque<Arc<LogEntry>>,
    cache_first: u64,
    /// Invariant: the sum of the cached entries' byte lengths.
    cache_bytes: usize,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            hashes: vec![GENESIS],
            views: BTreeMap::new(),
            persisted: 0,
            commit: 0,
            applied: 0,
            cache: VecDeque::new(),
            cache_first: 1,
            cache_bytes: 0,
        }
    }
}

impl Log {
    /// Adds a durable entry while reading the store at start-up; `applied`
    /// says whether the state was replayed through it. Applied entries must
    /// all come before unapplied ones.
    pub fn restore(&mut self, entry: LogEntry, applied: bool) {
        let index = self.push(Arc::new(entry));
        self.persisted = index;
        if applied {
            self.applied = index;
            self.commit = index;
            self.trim_cache();
        }
    }

    /// Sets the commit index found on disk (never below what was replayed).
    pub fn restore_commit(&mut self, commit: u64) {
        self.commit = commit.clamp(self.applied, self.last_index());
    }

    fn push(&mut self, entry: Arc<LogEntry>) -> u64 {
        let index = self.last_index() + 1;
        let prev = self.hashes[self.hashes.len() - 1];
        self.hashes.push(chain(&prev, index, &entry.bytes));
        if let Some(v) = entry.record.view() {
            self.views.insert(index, v.clone());
        }
        if self.cache.is_empty() {
            self.cache_first = index;
        }
        self.cache_bytes += entry.bytes.len();
        self.cache.push_back(entry);
        index
    }

    /// Appends an entry that is not durable yet; returns its index.
    pub fn append(&mut self, entry: Arc<LogEntry>) -> u64 {
        self.push(entry)
    }

    /// Drops entries `from..`. Entries up to the last committed change
    /// must stay (the caller checks); committed views after it may go, and
    /// the commit and applied indexes come down with them.
    pub fn truncate(&mut self, from: u64) {
        let keep = from.saturating_sub(1).min(self.last_index());
        let keep_len = usize::try_from(keep).unwrap_or(usize::MAX);
        self.hashes.truncate(keep_len + 1);
        self.views.split_off(&(keep + 1));
        self.persisted = self.persisted.min(keep);
        self.commit = self.commit.min(keep);
        self.applied = self.applied.min(keep);
        while self.cache_first + self.cache.len() as u64 > keep + 1 {
            match self.cache.pop_back() {
                Some(e) => self.cache_bytes -= e.bytes.len(),
                None => break,
            }
        }
        if self.cache.is_empty() {
            self.cache_first = keep + 1;
        }
    }

    pub fn last_index(&self) -> u64 {
        (self.hashes.len() - 1) as u64
    }

    pub fn last(&self) -> LogPoint {
        let index = self.last_index();
        LogPoint {
            index,
            hash: self.hashes[self.hashes.len() - 1],
        }
    }

    pub fn hash(&self, index: u64) -> Option<[u8; 32]> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.hashes.get(i))
            .copied()
    }

    pub fn point(&self, index: u64) -> Option<LogPoint> {
        self.hash(index).map(|hash| LogPoint { index, hash })
    }

    /// Whether this log holds `p`, and so everything before it.
    pub fn contains(&self, p: &LogPoint) -> bool {
        self.hash(p.index) == Some(p.hash)
    }

    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    pub fn set_persisted(&mut self, index: u64) {
        self.persisted = self.persisted.max(index.min(self.last_index()));
    }

    pub fn commit(&self) -> u64 {
        self.commit
    }

    /// Raises the commit index (never past the last entry).
    pub fn raise_commit(&mut self, index: u64) {
        self.commit = self.commit.max(index.min(self.last_index()));
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The committed entries not applied yet and durable, now marked
    /// applied: the caller applies them in this order.
    pub fn take_to_apply(&mut self) -> Vec<Arc<LogEntry>> {
        let upto = self.commit.min(self.persisted);
        let mut out = Vec::new();
        while self.applied < upto {
            match self.cached(self.applied + 1) {
                Some(e) => out.push(e),
                // Unreachable by the cache invariant; stop rather than skip.
                None => break,
            }
            self.applied += 1;
        }
        self.trim_cache();
        out
    }

    /// The cached entry at `index`.
    pub fn cached(&self, index: u64) -> Option<Arc<LogEntry>> {
        let k = index.checked_sub(self.cache_first)?;
        self.cache.get(usize::try_from(k).ok()?).cloned()
    }

    /// The first cached index (the last index + 1 when the cache is empty).
    pub fn cache_first(&self) -> u64 {
        self.cache_first
    }

    /// Entries `persisted + 1..=last`, for the next durable write.
    pub fn unpersisted(&self) -> Vec<(u64, Arc<LogEntry>)> {
        (self.persisted + 1..=self.last_index())
            .filter_map(|i| self.cached(i).map(|e| (i, e)))
            .collect()
    }

    /// Drops old applied entries while the cache is over its budget.
    fn trim_cache(&mut self) {
        while self.cache_bytes > CACHE_BYTES && self.cache_first <= self.applied {
            match self.cache.pop_front() {
                Some(e) => {
                    self.cache_bytes -= e.bytes.len();
                    self.cache_first += 1;
                }
                None => break,
            }
        }
    }

    /// The last view of the log, committed or not, with its index.
    pub fn last_view(&self) -> Option<(u64, &View)> {
        self.views.iter().next_back().map(|(i, v)| (*i, v))
    }

    /// The last view at or before `index`.
    pub fn view_at(&self, index: u64) -> Option<(u64, &View)> {
        self.views.range(..=index).next_back().map(|(i, v)| (*i, v))
    }

    pub fn committed_view(&self) -> Option<ViewId> {
        self.view_at(self.commit).map(|(_, v)| v.id)
    }

    /// The last committed entry that is not a view (index 0 if none): what
    /// this tracker may have acknowledged.
    pub fn base(&self) -> LogPoint {
        let mut i = self.commit;
        while i > 0 && self.views.contains_key(&i) {
            i -= 1;
        }
        LogPoint {
            index: i,
            hash: self.hash(i).unwrap_or(GENESIS),
        }
    }

    /// Whether entry `index` is a view.
    pub fn is_view(&self, index: u64) -> bool {
        self.views.contains_key(&index)
    }

    /// Entry bytes from `from` for an append: cached ones, else read back
    /// from `storage`; at most `max_entries` and about `max_bytes`.
    pub fn bytes_from(
        &self,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
        storage: &dyn LogRead,
    ) -> Result<Vec<Vec<u8>>, String> {
        let last = self.last_index();
        if from > last {
            return Ok(vec![]);
        }
        if from < self.cache_first {
            let upto = (self.cache_first - from).min(max_entries as u64);
            return storage.read(
                from,
                usize::try_from(upto).unwrap_or(max_entries),
                max_bytes,
            );
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for i in from..=last {
            let Some(e) = self.cached(i) else { break };
            if !out.is_empty() && (out.len() >= max_entries || bytes + e.bytes.len() > max_bytes) {
                break;
            }
            bytes += e.bytes.len();
            out.push(e.bytes.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn user(i: u32) -> Arc<LogEntry> {
        Arc::new(
            LogEntry::new(Record::UserCreated {
                user: format!("u{i}"),
                phc: "x".into(),
            })
            .unwrap(),
        )
    }

    fn view(epoch: u64, members: &[u32]) -> Arc<LogEntry> {
        Arc::new(
            LogEntry::new(Record::View(View {
                id: ViewId {
                    epoch,
                    leader: members[0],
                },
                members: members.to_vec(),
            }))
            .unwrap(),
        )
    }

    struct NoDisk;
    impl LogRead for NoDisk {
        fn read(&self, _: u64, _: usize, _: usize) -> Result<Vec<Vec<u8>>, String> {
            Err("no disk".into())
        }
    }

    #[test]
    fn equal_prefixes_have_equal_hashes_and_differ_after() {
        let mut a = Log::default();
        let mut b = Log::default();
        for i in 0..3 {
            a.append(user(i));
            b.append(user(i));
        }
        a.append(user(10));
        b.append(user(11));
        assert_eq!(a.point(3), b.point(3));
        assert_ne!(a.point(4), b.point(4));
        assert!(b.contains(&a.point(2).unwrap()));
        assert!(!b.contains(&a.last()));
        assert!(!b.contains(&LogPoint {
            index: 99,
            hash: GENESIS
        }));
    }

    #[test]
    fn commit_apply_base_and_truncation() {
        let mut l = Log::default();
        l.append(view(1, &[1, 2]));
        l.append(user(1));
        l.append(user(2));
        l.append(view(2, &[1]));
        assert_eq!(l.take_to_apply().len(), 0, "nothing durable yet");
        l.set_persisted(4);
        l.raise_commit(4);
        assert_eq!(l.take_to_apply().len(), 4);
        assert_eq!(l.base().index, 3, "the last committed change, not the view");
        assert_eq!(l.committed_view().map(|v| v.epoch), Some(2));
        // Replacing the committed view after the base is allowed.
        l.truncate(4);
        assert_eq!((l.last_index(), l.commit(), l.applied()), (3, 3, 3));
        assert_eq!(l.last_view().map(|(i, _)| i), Some(1));
        l.append(user(3));
        assert_eq!(l.unpersisted().len(), 1);
        assert_eq!(l.bytes_from(2, 10, 1 << 20, &NoDisk).unwrap().len(), 3);
        assert_eq!(l.bytes_from(2, 1, 1 << 20, &NoDisk).unwrap().len(), 1);
    }
}
