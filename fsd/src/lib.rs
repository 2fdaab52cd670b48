//! `fsd`: the FileShare daemon and its command-line client.
//!
//! Data flows one way: the FUSE layer asks the engine for bytes, the engine
//! asks peers and trackers.
//!
//! # Layout
//! - [`cli`]: the command line (clap).
//! - [`session`]: the home directory, the saved session, the peer id.
//! - [`account`]: commands that only talk to trackers.
//! - [`control`]: the control socket's messages and client;
//!   [`daemon_client`]: the commands served by the running daemon.
//! - [`shell`]: `fsd shell`, the interactive prompt.
//! - [`daemon`]: `fsd mount`: FUSE, piece store, engine, peer server.
//! - [`pieces`]: piece state and the piece picker.
//! - [`rate`]: byte-rate parsing.
#![warn(clippy::cast_possible_truncation)]

pub mod account;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod daemon_client;
pub mod pieces;
pub mod rate;
pub mod session;
pub mod shell;
