//! `fsd`: the FileShare daemon and its command-line client.
//!
//! Data flows one way: the FUSE layer asks the engine for bytes, the engine
//! asks peers and trackers.
//!
//! # Layout
//! From the edge in; each module imports only those after it, so there is
//! no circle and no import that points up (`scripts/modgraph.py` checks it):
//!
//! Layers: mount, node, commands, cli, control, ui, fuse, engine, net, pieces, trackers, store, home, tasks, umask, units
//!
//! - [`mount`]: `fsd mount`: starts and stops everything below.
//! - [`node`]: one member's daemon without its mount (tracker link,
//!   engine, peer server), which the mount fronts and tests drive alone.
//! - [`commands`]: what each command does on the client side, and `fsd
//!   shell`; [`cli`]: the command line (clap).
//! - [`control`]: the control socket between the command line and the
//!   daemon: its wire messages, its client and its server.
//! - [`ui`]: the dashboard the daemon serves, and the snapshot of the
//!   daemon it shows (also what `fsd status` prints), built from the engine.
//! - [`fuse`]: the filesystem the kernel calls: inodes, attributes,
//!   directories, reads, writes, renames, xattrs.
//! - [`engine`]: what FUSE and the control socket ask for: reads, shares,
//!   unshares, peer discovery, announces, download-file jobs and their
//!   status.
//! - [`net`]: peer connections: fetching from a peer, serving peers, the
//!   upload scheduler, the token bucket that limits both directions.
//! - [`pieces`]: one file's piece state (its single owner, with `STATE.md`),
//!   the piece picker, piece verification, the registry of swarms and the
//!   cache budget over them.
//! - [`trackers`]: the daemon's side of the trackers: every tracker request
//!   the daemon makes, cached listings, tickets and the cluster's ticket
//!   key, the groups this user was removed from.
//! - [`store`]: pieces on disk.
//! - [`home`]: the home directory, the saved session, the peer id.
//! - [`tasks`]: named tasks in one tree of cancellation tokens, joined on
//!   shutdown, and the bounded pool for blocking work.
//! - [`umask`]: owner-only files in the home, the user's umask elsewhere.
//! - [`units`]: byte sizes and rates, parsed and shown.
#![warn(clippy::cast_possible_truncation)]

pub mod cli;
pub mod commands;
pub mod control;
pub mod engine;
pub mod fuse;
pub mod home;
pub mod mount;
pub mod net;
pub mod node;
pub mod pieces;
pub mod store;
pub mod tasks;
pub mod trackers;
pub mod ui;
pub mod umask;
pub mod units;
