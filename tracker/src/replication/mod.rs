//! Replication: every tracker of the trackers file keeps the same record
//! log, ordered by one leader and acknowledged once every tracker that is
//! up has it. See STATE.md here for the roles, the transitions and what is
//! guaranteed.
//!
//! # Layout
//! - [`log`]: entries, indexes, the hash chain, commit and apply marks.
//! - [`node`]: the core, with no I/O: events in, a [`node::Ready`] out.
//!   In `node/`: `leader.rs`, the leader's side (leading a view, sending
//!   appends, counting acknowledgements, changing the view);
//!   `follower.rs`, taking a leader's appends; `status.rs`, every role's
//!   answer to another tracker's status; `succession.rs`, who leads when
//!   that is open (catching up, taking over, starting again).
//! - [`transport`]: the connections between trackers; the only I/O here.
//!   It owns the gossip and the delivery between trackers and imports
//!   nothing of the tracker above replication: the record writer sends
//!   through its `Outbox`, and the server hands it an `Inbox` for what
//!   arrives.
//! - `sim/`: the simulated cluster the core's tests run on (`mod.rs`, the
//!   harness) and those tests (`scenarios.rs`).
//!
//! Replication depends only on the record type ([`crate::state::records`]);
//! the record writer drives it.

pub mod log;
pub mod node;
pub mod transport;

/// The simulated cluster the core's tests run on.
#[cfg(test)]
mod sim;
