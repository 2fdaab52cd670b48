//! The durable state as openraft's state machine.
//!
//! Applying a committed [`Command`] decides it against the state
//! ([`decide`], pure) and applies the resulting records with
//! [`State::apply`], the state's one mutator, under one brief write lock
//! per batch; the answer goes back to whoever proposed it. Every tracker
//! applies the same commands in the same order, so all reach the same
//! state and the same answers.
//!
//! A snapshot is the state serialized, with the log id and membership it
//! covers. The last one is kept in table `raft_snapshot` of the tracker's
//! redb file; start-up loads it and the engine applies the log after it,
//! so a restart replays at most [`super::SNAPSHOT_EVERY`] entries.
//!
//! The serialized state begins with its format's version
//! ([`SNAPSHOT_VERSION`]): a snapshot found on disk or received from the
//! leader in a format this build does not know is refused
//! ([`SnapshotError::UnknownVersion`]), never decoded as if it were its own.

// openraft's storage traits fix the error type, a large one.
#![allow(clippy::result_large_err)]

use crate::consensus::aside::Aside;
use crate::consensus::{Answer, Command, NodeId, TypeConfig};
use crate::state::change::{decide, gave_way};
use crate::state::records::Record;
use crate::state::State;
use fileshare_protocol::{codec, ProtocolError};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

/// The one row of [`SNAPSHOT`]: a [`Stored`] value.
const CURRENT: &str = "current";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

type Meta = SnapshotMeta<NodeId, BasicNode>;

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

/// The snapshot on disk: its meta and the encoded state.
#[derive(Serialize, Deserialize)]
struct Stored {
    meta: Meta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// What a snapshot's bytes begin with, before its format's version.
const SNAPSHOT_MAGIC: &[u8; 8] = b"FSsnap\0\0";

/// The format of the state in the snapshots this build writes, the only
/// one it reads. Raise it with any change to how [`State`] serializes.
/// Snapshots written before formats had a version (no [`SNAPSHOT_MAGIC`])
/// are of version 1.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Why a snapshot's bytes do not give a state.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "the snapshot is in format version {found}, and this tracker reads version {known} \
         only: run a build that reads version {found}"
    )]
    UnknownVersion { found: u32, known: u32 },
    #[error("the snapshot ends before its format's version")]
    Truncated,
    #[error("the snapshot's state does not decode")]
    Decode(#[source] ProtocolError),
}

/// A snapshot's bytes: the format's version, then `state`, serialized.
fn snapshot_bytes(state: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SNAPSHOT_MAGIC.len() + 4 + state.len());
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    bytes.extend_from_slice(state);
    bytes
}

/// The state in a snapshot's bytes, if their format is this build's.
pub fn snapshot_state(bytes: &[u8]) -> std::result::Result<State, SnapshotError> {
    let state = match bytes.strip_prefix(SNAPSHOT_MAGIC) {
        Some(rest) => {
            let (version, state) = rest
                .split_first_chunk::<4>()
                .ok_or(SnapshotError::Truncated)?;
            let found = u32::from_le_bytes(*version);
            if found != SNAPSHOT_VERSION {
                return Err(SnapshotError::UnknownVersion {
                    found,
                    known: SNAPSHOT_VERSION,
                });
            }
            state
        }
        None => bytes,
    };
    codec::decode_large(state).map_err(SnapshotError::Decode)
}

/// Applies one entry's command to `state`; what its proposers are
/// answered, one result per command.
pub fn apply_command(state: &mut State, command: Command) -> Answer {
    match command {
        Command::Batch(commands) => {
            Answer(commands.into_iter().map(|c| apply_one(state, c)).collect())
        }
        c => Answer(vec![apply_one(state, c)]),
    }
}

fn apply_one(
    state: &mut State,
    command: Command,
) -> std::result::Result<(), fileshare_protocol::ErrorCode> {
    match command {
        Command::Init { ticket_seed } => {
            state.apply(&Record::ClusterInit { ticket_seed });
            Ok(())
        }
        Command::Change(change) => decide_and_apply(state, change),
        Command::Once {
            client,
            seq,
            change,
        } => {
            if let Some(first) = state.answer(client, seq) {
                return first.clone();
            }
            let answer = decide_and_apply(state, change);
            state.apply(&Record::Answered {
                client,
                seq,
                answer: answer.clone(),
            });
            answer
        }
        Command::Aside(inner) => {
            let change = match &*inner {
                Command::Change(c) => c.clone(),
                Command::Once { client, seq, .. } if state.answer(*client, *seq).is_some() => {
                    // Decided through the log already, and answered then.
                    return apply_one(state, *inner);
                }
                Command::Once { change, .. } => change.clone(),
                _ => {
                    return Err(fileshare_protocol::ErrorCode::Internal(
                        "not a write kept aside".into(),
                    ))
                }
            };
            let answer = apply_one(state, *inner);
            if let Err(why) = &answer {
                if let Some(notice) = gave_way(&change, why.clone()) {
                    state.apply(&notice);
                }
            }
            answer
        }
        // Never nested: what an inner batch holds is a log's bug, refused
        // the same way on every tracker.
        Command::Batch(_) => Err(fileshare_protocol::ErrorCode::Internal(
            "a batch inside a batch".into(),
        )),
    }
}

fn decide_and_apply(
    state: &mut State,
    change: crate::state::change::Change,
) -> std::result::Result<(), fileshare_protocol::ErrorCode> {
    let records = decide(state, change)?;
    for r in &records {
        state.apply(r);
    }
    Ok(())
}

/// openraft's state machine over the tracker's state, which request
/// handlers read through the same lock.
pub struct StateMachine {
    state: Arc<RwLock<State>>,
    db: Arc<Database>,
    /// A tracker of two: what it acknowledged alone.
    aside: Option<Arc<Aside>>,
    /// Invariant: the last entry whose command is in `state`.
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// Snapshots built by this process, to name them apart.
    built: u64,
}

impl StateMachine {
    /// The state machine over `db`: `state` becomes the last snapshot's,
    /// or stays as it is if there is none.
    pub fn open(
        db: Arc<Database>,
        state: Arc<RwLock<State>>,
        aside: Option<Arc<Aside>>,
    ) -> Result<StateMachine> {
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(SNAPSHOT).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        let mut sm = StateMachine {
            state,
            db,
            aside,
            last_applied: None,
            membership: StoredMembership::default(),
            built: 0,
        };
        if let Some(stored) = sm.load()? {
            let restored = snapshot_state(&stored.data).map_err(read_err)?;
            *sm.state.write() = restored;
            sm.last_applied = stored.meta.last_log_id;
            sm.membership = stored.meta.last_membership;
        }
        Ok(sm)
    }

    fn load(&self) -> Result<Option<Stored>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(SNAPSHOT).map_err(read_err)?;
        let Some(v) = table.get(CURRENT).map_err(read_err)? else {
            return Ok(None);
        };
        codec::decode_large(v.value()).map(Some).map_err(read_err)
    }

    /// The last entry applied.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.last_applied
    }
}

fn save(db: &Database, stored: &Stored) -> Result<()> {
    let bytes = codec::encode_large(stored).map_err(write_err)?;
    let txn = db.begin_write().map_err(write_err)?;
    txn.open_table(SNAPSHOT)
        .map_err(write_err)?
        .insert(CURRENT, bytes.as_slice())
        .map_err(write_err)?;
    txn.commit().map_err(write_err)
}

/// Saves a snapshot taken by [`StateMachine::get_snapshot_builder`].
pub struct Builder {
    db: Arc<Database>,
    stored: Option<Stored>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let stored = self
            .stored
            .take()
            .ok_or_else(|| write_err(std::io::Error::other("snapshot already built")))?;
        save(&self.db, &stored)?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answer>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut answers = Vec::new();
        let mut state = self.state.write();
        if let Some(aside) = &self.aside {
            aside.leave(&mut state);
        }
        for e in entries {
            self.last_applied = Some(e.log_id);
            let answer = match e.payload {
                EntryPayload::Blank => Answer(vec![Ok(())]),
                EntryPayload::Normal(command) => apply_command(&mut state, command),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    Answer(vec![Ok(())])
                }
            };
            answers.push(answer);
        }
        Ok(answers)
    }

    /// Serializes the state now, between two applies, so the snapshot is
    /// exactly the state at `last_applied`; the builder only saves it.
    async fn get_snapshot_builder(&mut self) -> Builder {
        self.built += 1;
        let encoded = {
            let state = self.state.read();
            match &self.aside {
                Some(aside) => aside.snapshot_of(&state),
                None => codec::encode_large(&*state),
            }
        };
        let stored = match encoded {
            Ok(state) => {
                let data = snapshot_bytes(&state);
                let id = match self.last_applied {
                    Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.built),
                    None => format!("none-{}", self.built),
                };
                Some(Stored {
                    meta: SnapshotMeta {
                        last_log_id: self.last_applied,
                        last_membership: self.membership.clone(),
                        snapshot_id: id,
                    },
                    data,
                })
            }
            Err(e) => {
                tracing::error!("cannot encode a snapshot of the state: {e}");
                None
            }
        };
        Builder {
            db: self.db.clone(),
            stored,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let restored = snapshot_state(&data).map_err(|e| {
            tracing::error!("refusing the leader's snapshot: {e}");
            read_err(e)
        })?;
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        save(&self.db, &stored)?;
        let mut state = self.state.write();
        if let Some(aside) = &self.aside {
            aside.leave(&mut state);
        }
        *state = restored;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        Ok(self.load()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::change::Change;
    use fileshare_protocol::messages::tracker::{Notice, MAX_NOTICES};
    use fileshare_protocol::ErrorCode;

    fn create(user: &str, group: &str) -> Change {
        Change::CreateGroup {
            user: user.into(),
            group: group.into(),
            quota: 100,
        }
    }

    fn aside(seq: u64, change: Change) -> Command {
        Command::Aside(Box::new(Command::Once {
            client: 1,
            seq,
            change,
        }))
    }

    fn state_with(users: &[&str]) -> State {
        let mut state = State::default();
        for u in users {
            state.apply(&Record::UserCreated {
                user: u.to_string(),
                phc: String::new(),
            });
        }
        state
    }

    fn notices(state: &State, user: &str) -> Vec<Notice> {
        state.notices(user).map(|(_, n)| n.clone()).collect()
    }

    #[test]
    fn a_write_kept_aside_and_refused_now_leaves_its_user_a_notice() {
        let mut state = state_with(&["alice", "bob"]);
        apply_command(&mut state, Command::Change(create("bob", "g")));
        let answer = apply_command(&mut state, aside(1, create("alice", "g")));
        let taken = ErrorCode::GroupExists("g".into());
        assert_eq!(answer, Answer(vec![Err(taken.clone())]));
        assert_eq!(
            notices(&state, "alice"),
            vec![Notice::GaveWay {
                change: "created group \"g\"".into(),
                why: taken,
            }]
        );
        assert!(notices(&state, "bob").is_empty());
        // Proposed again (its first answer was lost): answered as the
        // first time, and told once.
        apply_command(&mut state, aside(1, create("alice", "g")));
        assert_eq!(notices(&state, "alice").len(), 1);
        // Kept aside and accepted: nothing to tell.
        let answer = apply_command(&mut state, aside(2, create("alice", "h")));
        assert_eq!(answer, Answer(vec![Ok(())]));
        assert_eq!(notices(&state, "alice").len(), 1);
        // The same refusal through the log directly is the user's own
        // answer, not a notice.
        apply_command(&mut state, Command::Change(create("alice", "g")));
        assert_eq!(notices(&state, "alice").len(), 1);
    }

    /// A state's snapshot bytes as format version `version` would begin.
    fn of_version(version: u32, state: &State) -> Vec<u8> {
        let mut bytes = snapshot_bytes(&codec::encode_large(state).unwrap());
        bytes[SNAPSHOT_MAGIC.len()..][..4].copy_from_slice(&version.to_le_bytes());
        bytes
    }

    #[tokio::test]
    async fn a_snapshot_of_an_unknown_format_is_refused_naming_both_versions() {
        let state = state_with(&["alice"]);
        let ours = of_version(SNAPSHOT_VERSION, &state);
        assert_eq!(snapshot_state(&ours).unwrap().user_count(), 1);
        // Written before formats had a version: version 1.
        let unversioned = codec::encode_large(&state).unwrap();
        assert_eq!(snapshot_state(&unversioned).unwrap().user_count(), 1);
        let theirs = of_version(SNAPSHOT_VERSION + 1, &state);
        let refusal = snapshot_state(&theirs).unwrap_err();
        assert!(
            matches!(
                refusal,
                SnapshotError::UnknownVersion { found, known: SNAPSHOT_VERSION }
                    if found == SNAPSHOT_VERSION + 1
            ),
            "{refusal:?}"
        );
        let named = |e: &str| {
            e.contains(&format!("version {}", SNAPSHOT_VERSION + 1))
                && e.contains(&format!("reads version {SNAPSHOT_VERSION}"))
        };
        assert!(named(&refusal.to_string()), "{refusal}");
        assert!(matches!(
            snapshot_state(&theirs[..SNAPSHOT_MAGIC.len() + 2]),
            Err(SnapshotError::Truncated)
        ));

        // Received from a leader: refused, the state left as it was.
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("t.redb")).unwrap());
        let held = Arc::new(RwLock::new(state_with(&["bob", "carol"])));
        let mut sm = StateMachine::open(db.clone(), held.clone(), None).unwrap();
        let meta = Meta::default();
        let refused = sm
            .install_snapshot(&meta, Box::new(Cursor::new(theirs.clone())))
            .await
            .unwrap_err();
        assert!(named(&refused.to_string()), "{refused}");
        assert_eq!(held.read().user_count(), 2);
        assert!(sm.get_current_snapshot().await.unwrap().is_none());

        // Found on disk at start: the tracker does not start.
        save(&db, &Stored { meta, data: theirs }).unwrap();
        let found = StateMachine::open(db, held.clone(), None).err().unwrap();
        assert!(named(&found.to_string()), "{found}");
        assert_eq!(held.read().user_count(), 2);
    }

    #[test]
    fn a_user_keeps_the_newest_notices_until_they_are_sent() {
        let mut state = state_with(&["alice", "bob"]);
        let n = u64::try_from(MAX_NOTICES).unwrap() + 4;
        for i in 0..n {
            let g = format!("g{i}");
            apply_command(&mut state, Command::Change(create("bob", &g)));
            apply_command(&mut state, aside(i, create("alice", &g)));
        }
        let kept: Vec<u64> = state.notices("alice").map(|(k, _)| *k).collect();
        assert_eq!(kept, (5..=n).collect::<Vec<_>>());
        let Notice::GaveWay { why, .. } = &notices(&state, "alice")[MAX_NOTICES - 1];
        assert_eq!(*why, ErrorCode::GroupExists(format!("g{}", n - 1)));
        let sent = |through| {
            Command::Change(Change::NoticesSent {
                user: "alice".into(),
                through,
            })
        };
        apply_command(&mut state, sent(10));
        let left: Vec<u64> = state.notices("alice").map(|(k, _)| *k).collect();
        assert_eq!(left, (11..=n).collect::<Vec<_>>());
        apply_command(&mut state, sent(n));
        assert_eq!(state.notices("alice").count(), 0);
        // Sent again: nothing left to do.
        assert_eq!(apply_command(&mut state, sent(n)), Answer(vec![Ok(())]));
    }
}
