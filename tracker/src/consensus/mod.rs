//! Agreement between trackers through openraft: the engine owns elections,
//! log replication, commitment, snapshots and log compaction; this module
//! supplies the three things it asks of an application.
//!
//! # Layout
//! - this module: the type configuration ([`TypeConfig`]), what the log
//!   carries ([`Command`]) and what applying it answers ([`Answer`]), and
//!   the engine's settings ([`config`]).
//! - [`log_store`]: the log, the vote and the commit mark in the tracker's
//!   redb file.
//! - [`state_machine`]: the durable state behind openraft's state machine:
//!   each committed command is decided against the state
//!   ([`crate::state::change::decide`]) and its records applied through
//!   [`crate::state::State::apply`], the one mutator; snapshots are the
//!   state serialized, kept in the same redb file.
//! - [`network`]: openraft's calls to another tracker as [`network::Rpc`]
//!   values over a [`network::Wire`], and [`network::serve`] for the
//!   receiving end; the wire itself is the caller's.
//! - [`wire`]: that wire over the trackers' own TLS connections, and who
//!   was heard from lately.
//! - [`transport`]: those connections, and the gossip of soft state.
//! - [`node`]: this tracker's part: the engine started over the store,
//!   writes proposed or forwarded to the leader, the majority rule, when
//!   reads are served.
//! - [`batch`]: writes that queue up while the log is busy, proposed
//!   together as one entry.
//! - [`aside`]: a tracker of two serving alone, and what it acknowledged
//!   then going through the log once the pair is whole again.
//!
//! The log holds requested changes, not their records: every tracker
//! decides each committed change against the same state in the same order,
//! so all reach the same records and the same answer, and a change is
//! checked against the state it is applied to, never an older one.

pub mod aside;
pub mod batch;
pub mod log_store;
pub mod network;
pub mod node;
pub mod state_machine;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

use crate::state::change::Change;
use fileshare_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::time::Duration;

/// A tracker's number in the trackers file (1-based) is its node id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The trackers' Raft: node ids are tracker numbers, snapshots are
    /// bytes in memory.
    pub TypeConfig:
        D = Command,
        R = Answer,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The running engine of one tracker.
pub type Raft = openraft::Raft<TypeConfig>;

/// What one log entry asks of the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// The ticket signing key's seed, proposed by whoever leads first;
    /// only the first one applied counts.
    Init { ticket_seed: [u8; 32] },
    /// A change, decided when applied.
    Change(Change),
    /// Write `seq` of client `client`: applied once, however often it is
    /// proposed; each time it is answered as the first time.
    Once {
        client: u64,
        seq: u64,
        change: Change,
    },
    /// Several writes gathered while the log was busy ([`batch`]), applied
    /// one after the other; never nested.
    Batch(Vec<Command>),
    /// A write a tracker of two acknowledged alone ([`aside`]), a
    /// [`Command::Change`] or [`Command::Once`]: if it is refused now, its
    /// user is told ([`crate::state::change::gave_way`]).
    Aside(Box<Command>),
}

impl Command {
    /// `change`, once per (`client`, `seq`) if given.
    pub fn of(change: Change, once: Option<(u64, u64)>) -> Command {
        match once {
            Some((client, seq)) => Command::Once {
                client,
                seq,
                change,
            },
            None => Command::Change(change),
        }
    }
}

/// The outcome of applying one entry, handed back to whoever proposed it:
/// one result per command (a [`Command::Batch`] holds several).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer(pub Vec<Result<(), ErrorCode>>);

/// Log entries since the last snapshot before another is taken.
pub const SNAPSHOT_EVERY: u64 = 10_000;

/// Entries kept behind a snapshot, so a tracker slightly behind catches
/// up from the log rather than the whole snapshot.
pub const KEEP_BEHIND_SNAPSHOT: u64 = 1_000;

/// Largest piece of a snapshot in one message: well under a frame.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Heartbeat period; a follower that hears nothing for an election
/// timeout (a random time between 4 and 8 heartbeats) stands.
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// The engine's settings for a cluster named `cluster`.
pub fn config(cluster: &str) -> Result<openraft::Config, Box<openraft::ConfigError>> {
    let beat = u64::try_from(HEARTBEAT.as_millis()).unwrap_or(100);
    openraft::Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: beat,
        election_timeout_min: beat * 4,
        election_timeout_max: beat * 8,
        max_payload_entries: 256,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: KEEP_BEHIND_SNAPSHOT,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK as u64,
        ..Default::default()
    }
    .validate()
    .map_err(Box::new)
}
