//! The command line's side of every command: the ones that only talk to the
//! trackers ([`tracker`]), the ones the running daemon serves ([`daemon`]),
//! and the interactive prompt ([`shell`]).

pub mod daemon;
pub mod shell;
pub mod tracker;

pub use tracker::run;
