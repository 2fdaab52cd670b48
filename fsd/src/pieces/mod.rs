//! Piece state and the choice of what to fetch next.

pub mod picker;
