//! The tracker's own errors: what can stop it from starting or from saving.
//! Refusals sent to clients are [`fileshare_protocol::ErrorCode`]s instead.
//!
//! A variant whose cause is a typed error of another crate keeps it as its
//! `source` and leaves it out of its own message; the others carry the
//! cause's text in the message. Print one with
//! [`fileshare_protocol::error::chain`] to see each cause once.

use fileshare_protocol::identity::IdentityError;
use fileshare_protocol::tls::TlsError;
use fileshare_protocol::trackers_file::TrackersFileError;
use fileshare_protocol::{Fingerprint, ProtocolError};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("cannot open the state store {path}: {error}")]
    Open { path: PathBuf, error: redb::Error },
    #[error("state store: {0}")]
    Storage(redb::Error),
    #[error("record {index} of the state store cannot be decoded: {error}")]
    Decode { index: u64, error: ProtocolError },
    #[error("cannot encode a record: {0}")]
    Encode(ProtocolError),
    #[error("{0}")]
    TrackersFile(#[from] TrackersFileError),
    #[error("tracker number {no} is not in {path}, which lists {count} tracker(s)")]
    NoSuchTracker {
        no: u32,
        path: PathBuf,
        count: usize,
    },
    #[error("cannot create data directory {path}: {error}")]
    DataDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot load this tracker's key")]
    Identity(#[source] IdentityError),
    #[error("cannot load this tracker's key")]
    KeyUnusable(#[source] TlsError),
    #[error("cannot load this tracker's key")]
    KeyTask(#[source] tokio::task::JoinError),
    #[error(
        "the trackers file {path} pins tracker {no} to key {pinned}, but this tracker's key \
         (in {dir}) is {own}: if this tracker's key was replaced, put the new fingerprint in \
         the trackers files"
    )]
    NotPinnedKey {
        no: u32,
        path: PathBuf,
        dir: PathBuf,
        pinned: Fingerprint,
        own: Fingerprint,
    },
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error(
        "{} holds the log of an earlier tracker version, which this one does not read; move \
         it aside to start this tracker with an empty state",
        path.display()
    )]
    OldStore { path: PathBuf },
    #[error("the consensus engine")]
    Consensus(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Shorthand for mapping redb's many error types.
pub(crate) fn storage<E: Into<redb::Error>>(e: E) -> TrackerError {
    TrackerError::Storage(e.into())
}
