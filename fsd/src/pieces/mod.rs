//! Piece state: [`swarm`] is the single owner of one file's pieces (see
//! `STATE.md` beside it): which are verified, wanted, in flight and awaited,
//! and where a FUSE read waits. [`picker`] is the pure choice of what to
//! fetch next, [`verify`] where received bytes are hashed and become a
//! verified piece, [`arriving`] the pieces passed on while they arrive,
//! [`registry`] every swarm this daemon holds.

pub mod arriving;
pub mod cache;
pub mod picker;
pub mod registry;
pub mod swarm;
pub mod verify;
