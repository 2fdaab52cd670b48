//! A pair of trackers keeps the seeds' promise that either one alone
//! serves every command: a tracker of two that lost its partner decides
//! writes against its own state, keeps each one aside (durably, table
//! `raft_aside` of its redb file) and acknowledges it; once the pair
//! commits again, every change kept aside is proposed through the log, in
//! the order it was acknowledged, and decided again by the same rules.
//!
//! While alone, the state readers see is the log's state plus the changes
//! kept aside; the log's own state is kept encoded ([`Inner::pristine`])
//! and put back before the log applies anything again, so the replicated
//! state never holds a change that did not go through the log.
//!
//! Lock order: the state's lock, then [`Aside`]'s.

use crate::consensus::state_machine::apply_command;
use crate::consensus::{Answer, Command};
use crate::error::{storage, TrackerError};
use crate::state::change::decide;
use crate::state::State;
use fileshare_protocol::{codec, ErrorCode};
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::sync::Arc;

const ASIDE: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_aside");

#[derive(Default)]
struct Inner {
    /// Acknowledged alone, not yet through the log, by acknowledgement
    /// order. Invariant: the same as the table.
    pending: BTreeMap<u64, Command>,
    /// While alone: the log's state, encoded.
    pristine: Option<Vec<u8>>,
}

pub struct Aside {
    db: Arc<Database>,
    inner: Mutex<Inner>,
}

impl Aside {
    /// The changes kept aside in `db`.
    pub fn open(db: Arc<Database>) -> Result<Aside, TrackerError> {
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(ASIDE).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let mut pending = BTreeMap::new();
        {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(ASIDE).map_err(storage)?;
            for row in table.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let index = k.value();
                let change = codec::decode(v.value())
                    .map_err(|error| TrackerError::Decode { index, error })?;
                pending.insert(index, change);
            }
        }
        Ok(Aside {
            db,
            inner: Mutex::new(Inner {
                pending,
                pristine: None,
            }),
        })
    }

    /// Whether this tracker serves alone now.
    pub fn alone(&self) -> bool {
        self.inner.lock().pristine.is_some()
    }

    /// Changes acknowledged alone and not yet through the log.
    pub fn pending(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// The oldest change kept aside.
    pub fn first(&self) -> Option<(u64, Command)> {
        let inner = self.inner.lock();
        inner
            .pending
            .first_key_value()
            .map(|(k, c)| (*k, c.clone()))
    }

    /// Starts serving alone: the log's state is kept, and what was kept
    /// aside before (by an earlier run) is in `state` again.
    pub fn enter(&self, state: &mut State) -> Result<(), ErrorCode> {
        let mut inner = self.inner.lock();
        if inner.pristine.is_some() {
            return Ok(());
        }
        let encoded = codec::encode_large(&*state)
            .map_err(|e| ErrorCode::Internal(format!("cannot keep the state: {e}")))?;
        inner.pristine = Some(encoded);
        for command in inner.pending.values() {
            apply_command(state, command.clone());
        }
        Ok(())
    }

    /// Before the log applies anything: the log's state is put back.
    pub fn leave(&self, state: &mut State) {
        let mut inner = self.inner.lock();
        let Some(pristine) = inner.pristine.take() else {
            return;
        };
        match codec::decode_large(&pristine) {
            Ok(s) => *state = s,
            // It was encoded by this process a moment ago.
            Err(e) => tracing::error!("BUG: the state kept while alone does not decode: {e}"),
        }
        tracing::info!(
            pending = inner.pending.len(),
            "the pair commits again: changes acknowledged alone go through the log"
        );
    }

    /// The state a snapshot must hold: the log's, never the one with the
    /// changes kept aside.
    pub fn snapshot_of(&self, state: &State) -> Result<Vec<u8>, fileshare_protocol::ProtocolError> {
        match &self.inner.lock().pristine {
            Some(p) => Ok(p.clone()),
            None => codec::encode_large(state),
        }
    }

    /// While alone: decides `command` against `state`, keeps it aside
    /// durably and applies it. `None` if not alone (the caller proposes
    /// it through the log).
    pub fn write(&self, state: &mut State, command: Command) -> Option<Result<(), ErrorCode>> {
        let mut inner = self.inner.lock();
        inner.pristine.as_ref()?;
        if let Command::Once { client, seq, .. } = &command {
            if let Some(first) = state.answer(*client, *seq) {
                return Some(first.clone());
            }
        }
        // A refusal is answered and not kept.
        let change = match &command {
            Command::Change(c) | Command::Once { change: c, .. } => c.clone(),
            Command::Init { .. } | Command::Batch(_) | Command::Aside(_) => {
                return Some(Err(ErrorCode::BadRequest("not a write".into())))
            }
        };
        if let Err(code) = decide(state, change) {
            return Some(Err(code));
        }
        let next = inner.pending.last_key_value().map_or(1, |(k, _)| k + 1);
        if let Err(e) = self.save(next, &command) {
            return Some(Err(ErrorCode::Internal(format!(
                "cannot save the change: {e}"
            ))));
        }
        inner.pending.insert(next, command.clone());
        let Answer(answers) = apply_command(state, command);
        Some(answers.into_iter().next().unwrap_or(Ok(())))
    }

    fn save(&self, key: u64, command: &Command) -> Result<(), TrackerError> {
        let bytes = codec::encode(command).map_err(TrackerError::Encode)?;
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(ASIDE)
            .map_err(storage)?
            .insert(key, bytes.as_slice())
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// The change `key` went through the log (or was refused there).
    pub fn done(&self, key: u64) -> Result<(), TrackerError> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(ASIDE)
            .map_err(storage)?
            .remove(key)
            .map_err(storage)?;
        txn.commit().map_err(storage)?;
        self.inner.lock().pending.remove(&key);
        Ok(())
    }
}
