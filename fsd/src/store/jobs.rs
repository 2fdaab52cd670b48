//! The `download-file` jobs to resume (`HOME/store/downloads`): one record
//! per job from its start until it completes or fails, rewritten whole
//! (a temporary file, synced, renamed) on every change, so a daemon that
//! stops, cleanly or not, finds every unfinished job at its next start.

use crate::store::{disk, Store, StoreError};
use fileshare_protocol::{codec, FileId};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

const FILE: &str = "downloads";

/// One unfinished download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub group: String,
    pub name: String,
    /// The destination file (not a directory), as raw bytes.
    dest: Vec<u8>,
    pub file: FileId,
    pub size: u64,
}

impl JobRecord {
    pub fn new(group: &str, name: &str, dest: &Path, file: FileId, size: u64) -> JobRecord {
        JobRecord {
            group: group.to_string(),
            name: name.to_string(),
            dest: dest.as_os_str().as_bytes().to_vec(),
            file,
            size,
        }
    }

    pub fn dest(&self) -> PathBuf {
        PathBuf::from(OsString::from_vec(self.dest.clone()))
    }
}

impl Store {
    /// The recorded jobs; none if the record is missing or unreadable (said
    /// once in the log).
    pub fn jobs(&self) -> Vec<JobRecord> {
        let path = self.root().join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => codec::decode(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring {}: {e}", path.display());
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    /// Replaces the recorded jobs, durably.
    pub fn set_jobs(&self, jobs: &[JobRecord]) -> Result<(), StoreError> {
        let path = self.root().join(FILE);
        let tmp = self.root().join("downloads.tmp");
        let bytes = codec::encode(&jobs.to_vec()).map_err(|error| StoreError::Encode {
            path: path.display().to_string(),
            error,
        })?;
        let io = |e| StoreError::Io {
            path: path.display().to_string(),
            error: e,
        };
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        disk::sync_dir(self.root()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.jobs().is_empty());
        let dest = Path::new("/tmp/a b/\u{e9}.bin");
        let jobs = vec![JobRecord::new("g", "x.bin", dest, FileId([1; 32]), 10)];
        store.set_jobs(&jobs).unwrap();
        assert_eq!(store.jobs(), jobs);
        assert_eq!(store.jobs()[0].dest(), dest);
        store.set_jobs(&[]).unwrap();
        assert!(store.jobs().is_empty());
    }
}
