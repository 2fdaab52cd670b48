//! Replication: every tracker of the trackers file keeps the same record
//! log, ordered by one leader and acknowledged once every tracker that is
//! up has it. See STATE.md here for the roles, the transitions and what is
//! guaranteed.
//!
//! # Layout
//! - [`log`]: entries, indexes, the hash chain, commit and apply marks.
//! - [`node`]: the core, with no I/O: events in, a [`node::Ready`] out;
//!   its leader's side in `node/leader.rs`, every role's in
//!   `node/follower.rs`.
//! - [`transport`]: the connections between trackers; the only I/O here.

pub mod log;
pub mod node;
pub mod transport;

/// The simulated cluster the core's tests run on.
#[cfg(test)]
mod sim;
