//! openraft's log, vote and commit mark, in the tracker's redb file.
//!
//! Table `raft_log` maps an index to the entry, encoded with the protocol
//! codec; `raft_meta` holds the vote, the last committed log id and the
//! last purged one. Every write is one redb transaction. The vote and the
//! entries are durable when it returns, so a vote or an entry the engine
//! was told is saved survives a `kill -9`. The commit mark is not: it only
//! spares a restart re-learning what was committed, so it is kept in
//! memory and written inside the next append's transaction, or in one of
//! its own when it comes [`COMMIT_MARK_EVERY`] or more after the last one
//! written: a transaction at every mark cost a follower about a twentieth
//! of its CPU per replicated write. A mark lost with a crash is an older
//! one, from which the engine commits again what the leader says.

// openraft's storage traits fix the error type, a large one.
#![allow(clippy::result_large_err)]

use crate::consensus::{NodeId, TypeConfig};
use fileshare_protocol::codec;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// A mark saved this long or more after the last one written is written
/// at once, not left for the next append.
pub const COMMIT_MARK_EVERY: Duration = Duration::from_secs(1);

/// The log over a shared redb database; cheap to clone (a clone is the
/// engine's log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    mark: Arc<parking_lot::Mutex<CommitMark>>,
}

/// The engine's commit mark and what of it is on disk.
struct CommitMark {
    /// Saved by the engine and not yet written, if any.
    unwritten: Option<Option<LogId<NodeId>>>,
    /// When a mark was last written.
    written_at: Instant,
}

impl LogStore {
    /// The log in `db`, creating its tables if absent.
    pub fn open(db: Arc<Database>) -> Result<LogStore> {
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(LOG).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        Ok(LogStore {
            db,
            mark: Arc::new(parking_lot::Mutex::new(CommitMark {
                unwritten: None,
                written_at: Instant::now(),
            })),
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let Some(v) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        codec::decode(v.value()).map(Some).map_err(read_err)
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T, durable: bool) -> Result<()> {
        let bytes = codec::encode(value).map_err(write_err)?;
        let mut txn = self.db.begin_write().map_err(write_err)?;
        if !durable {
            txn.set_durability(Durability::None).map_err(write_err)?;
        }
        txn.open_table(META)
            .map_err(write_err)?
            .insert(key, bytes.as_slice())
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }

    /// Entries kept on disk: what compaction leaves.
    pub fn len(&self) -> Result<u64> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        table.len().map_err(read_err)
    }

    /// Whether no entry is kept.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for row in table.range(range).map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            out.push(codec::decode(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(PURGED)?;
        let last = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let last = table.last().map_err(read_err)?;
            match last {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> = codec::decode(v.value()).map_err(read_err)?;
                    Some(e.log_id)
                }
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.put_meta(VOTE, vote, true)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        {
            let mut mark = self.mark.lock();
            if mark.written_at.elapsed() < COMMIT_MARK_EVERY {
                mark.unwritten = Some(committed);
                return Ok(());
            }
            mark.unwritten = None;
            mark.written_at = Instant::now();
        }
        self.put_meta(COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        if let Some(unwritten) = self.mark.lock().unwritten {
            return Ok(unwritten);
        }
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let txn = self.db.begin_write().map_err(write_err)?;
        let unwritten = {
            let mut mark = self.mark.lock();
            let m = mark.unwritten.take();
            if m.is_some() {
                mark.written_at = Instant::now();
            }
            m
        };
        if let Some(committed) = unwritten {
            let bytes = codec::encode(&committed).map_err(write_err)?;
            txn.open_table(META)
                .map_err(write_err)?
                .insert(COMMITTED, bytes.as_slice())
                .map_err(write_err)?;
        }
        {
            let mut table = txn.open_table(LOG).map_err(write_err)?;
            let mut buf = Vec::new();
            for e in entries {
                buf.clear();
                codec::encode_into(&e, &mut buf).map_err(write_err)?;
                table
                    .insert(e.log_id.index, buf.as_slice())
                    .map_err(write_err)?;
            }
        }
        let done = txn.commit().map_err(write_err);
        let io = done
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io);
        done
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let txn = self.db.begin_write().map_err(write_err)?;
        txn.open_table(LOG)
            .map_err(write_err)?
            .retain_in(log_id.index.., |_, _| false)
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let bytes = codec::encode(&log_id).map_err(write_err)?;
        let txn = self.db.begin_write().map_err(write_err)?;
        txn.open_table(META)
            .map_err(write_err)?
            .insert(PURGED, bytes.as_slice())
            .map_err(write_err)?;
        txn.open_table(LOG)
            .map_err(write_err)?
            .retain_in(..=log_id.index, |_, _| false)
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }
}
