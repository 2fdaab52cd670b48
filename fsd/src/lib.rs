//! `fsd`: the FileShare daemon and its command-line client.
//!
//! Data flows one way: the FUSE layer asks the engine for bytes, the engine
//! asks peers and trackers.
//!
//! # Layout
//! - [`cli`]: the command line (clap); [`commands`]: what each command does
//!   on the client side, and `fsd shell`.
//! - [`home`]: the home directory, the saved session, the peer id.
//! - [`control`]: the control socket between the command line and the
//!   daemon: its messages, its client and its server.
//! - [`mount`]: `fsd mount`: starts and stops everything below.
//! - [`fuse`]: the filesystem the kernel calls: inodes, attributes,
//!   directories, reads, writes, renames, xattrs.
//! - [`engine`]: what FUSE and the control socket ask for: reads, shares,
//!   unshares, peer discovery, announces, download-file jobs.
//! - [`pieces`]: one file's piece state (its single owner, with `STATE.md`),
//!   the piece picker, piece verification, the registry of swarms.
//! - [`net`]: peer connections: fetching from a peer, serving peers, the
//!   upload scheduler, the token bucket that limits both directions.
//! - [`store`]: pieces on disk.
//! - [`trackers`]: the daemon's side of the trackers: every tracker request
//!   the daemon makes, cached listings, tickets and the cluster's ticket
//!   key, the groups this user was removed from.
//! - [`tasks`]: named tasks in one tree of cancellation tokens, joined on
//!   shutdown, and the bounded pool for blocking work.
//! - [`units`]: byte sizes and rates, parsed and shown.
//! - [`ui`]: the dashboard the daemon serves, and the snapshot of the
//!   daemon it shows (also what `fsd status` prints).
#![warn(clippy::cast_possible_truncation)]

pub mod cli;
pub mod commands;
pub mod control;
pub mod engine;
pub mod fuse;
pub mod home;
pub mod mount;
pub mod net;
pub mod pieces;
pub mod store;
pub mod tasks;
pub mod trackers;
pub mod ui;
pub mod units;
