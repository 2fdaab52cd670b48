//! A group's files: listing, searching, sharing and locating them.

use super::{FileEntry, PeerLocation, SessionToken};
use crate::ids::FileMeta;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFiles {
    pub session: SessionToken,
    pub group: String,
}
wraps!(ListFiles);
answers!(ListFiles, "Files", Vec<FileEntry>, super::TrackerReply::Files(f) => f);

/// Files whose name contains `pattern`, in every group of the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Search {
    pub session: SessionToken,
    pub pattern: String,
}
wraps!(Search);
answers!(Search, "Files", Vec<FileEntry>, super::TrackerReply::Files(f) => f);

/// Makes the caller a holder of `meta` in `group` (durable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareFile {
    pub session: SessionToken,
    pub group: String,
    pub meta: FileMeta,
}
wraps!(ShareFile);
answers!(ShareFile, done);

/// Ends the caller's holding of `name` in `group` (durable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopShare {
    pub session: SessionToken,
    pub group: String,
    pub name: String,
}
wraps!(StopShare);
answers!(StopShare, done);

/// The file's metadata and the online peers holding any of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locate {
    pub session: SessionToken,
    pub group: String,
    pub name: String,
}
wraps!(Locate);
answers!(Locate, "Location", Location, super::TrackerReply::Location { meta, peers } => Location { meta, peers });

/// A file's metadata and the online peers holding any of it, as
/// [`Locate`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub meta: FileMeta,
    pub peers: Vec<PeerLocation>,
}

/// Moves the caller's holding of `from` in `group` to the name `to` in
/// one durable step: no listing ever shows both names or neither. The
/// file under `to` is the old metadata with the new name (so a new id,
/// the same piece hashes). `from` stays listed while others hold it
/// too. A different file named `to` is replaced if the caller alone
/// holds it, and refused with `NameTaken` if anyone else does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameShare {
    pub session: SessionToken,
    pub group: String,
    pub from: String,
    pub to: String,
}
wraps!(RenameShare);
answers!(RenameShare, done);

/// [`ShareFile`], except that a different file named `meta.name` that the
/// caller alone holds is replaced by this one in the same step, as
/// rename(2) of a new file onto an old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceShare {
    pub session: SessionToken,
    pub group: String,
    pub meta: FileMeta,
}
wraps!(ReplaceShare);
answers!(ReplaceShare, done);
