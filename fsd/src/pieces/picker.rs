//! Which piece to request from which peer: a pure function (see below).
