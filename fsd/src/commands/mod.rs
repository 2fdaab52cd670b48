//! The command line's side of every command: the ones that only talk to the
//! trackers ([`tracker`]), the ones the running daemon serves ([`daemon`]),
//! `fsd status` and `fsd ui` ([`status`]), completions and the man page
//! ([`docs`]), and the interactive prompt ([`shell`]).

pub mod daemon;
pub mod docs;
pub mod shell;
pub mod status;
pub mod tracker;

pub use tracker::run;
