//! Where a download-file job stands: what the engine reports, the control
//! socket carries and the dashboard shows.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a download stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownloadState {
    /// Fetching pieces from peers.
    Fetching,
    /// Every piece is verified; copying them to the destination.
    Writing,
    /// The destination is complete; `millis` is the whole download's time.
    Complete { millis: u64 },
    /// Gave up; nothing was left at the destination.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadStatus {
    pub id: u64,
    pub group: String,
    pub name: String,
    #[serde(with = "raw_path")]
    pub dest: PathBuf,
    pub size: u64,
    /// Bytes verified so far.
    pub done: u64,
    /// Recent bytes per second while fetching.
    pub rate: u64,
    /// Peers linked now while fetching; peers fetched from once complete.
    pub peers: u32,
    pub state: DownloadState,
}

impl DownloadStatus {
    pub fn percent(&self) -> f64 {
        if self.size == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.size as f64
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(
            self.state,
            DownloadState::Complete { .. } | DownloadState::Failed(_)
        )
    }
}

/// A path as its raw bytes: Unix paths need not be UTF-8.
mod raw_path {
    use serde::{Deserializer, Serializer};
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(path.as_os_str().as_bytes(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let bytes: serde_bytes::ByteBuf = serde_bytes::deserialize(d)?;
        Ok(PathBuf::from(OsString::from_vec(bytes.into_vec())))
    }
}

#[cfg(test)]
impl DownloadStatus {
    /// A 4 MiB `a.iso` of `g1`, a quarter fetched at 3 MiB/s from 2 peers:
    /// what tests of its lines and messages show.
    pub(crate) fn sample(state: DownloadState) -> DownloadStatus {
        DownloadStatus {
            id: 3,
            group: "g1".into(),
            name: "a.iso".into(),
            dest: PathBuf::from("/tmp/a.iso"),
            size: 4 << 20,
            done: 1 << 20,
            rate: 3 << 20,
            peers: 2,
            state,
        }
    }
}
