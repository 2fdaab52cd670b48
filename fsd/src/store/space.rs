//! How much room the store has, and what `df` shows of the mount: the
//! cache budget as its size, the fetched pieces held as used, and the room
//! left under the budget (never more than the disk has) as available.

use super::{Store, StoreError};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

/// Sizes in blocks of `frsize` bytes and file counts, as `statvfs` gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub frsize: u32,
}

impl Store {
    /// The room of the filesystem that holds the store. The one place that
    /// says how big the mount is.
    pub fn space(&self) -> Result<Space, StoreError> {
        let path = CString::new(self.root.as_os_str().as_bytes()).map_err(|e| {
            StoreError::io(
                &self.root,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            )
        })?;
        // SAFETY: statvfs fills the struct it is given; the path is
        // NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(StoreError::io(&self.root, std::io::Error::last_os_error()));
        }
        #[allow(clippy::useless_conversion)]
        Ok(Space {
            blocks: u64::from(st.f_blocks),
            bfree: u64::from(st.f_bfree),
            bavail: u64::from(st.f_bavail),
            files: u64::from(st.f_files),
            ffree: u64::from(st.f_ffree),
            bsize: u32::try_from(st.f_bsize).unwrap_or(4096),
            frsize: u32::try_from(st.f_frsize).unwrap_or(4096),
        })
    }
}

impl Space {
    /// The mount as `df` shows it: a `budget` of which `used` bytes are
    /// taken, on this filesystem.
    pub fn within_budget(self, budget: u64, used: u64) -> Space {
        let frsize = u64::from(self.frsize.max(1));
        let size = (budget / frsize).min(self.blocks);
        let room = size.saturating_sub(used.div_ceil(frsize));
        Space {
            blocks: size,
            bfree: room.min(self.bfree),
            bavail: room.min(self.bavail),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_shows_the_budget_and_its_use() {
        let disk = Space {
            blocks: 1000,
            bfree: 600,
            bavail: 500,
            files: 10,
            ffree: 5,
            bsize: 4096,
            frsize: 4096,
        };
        let s = disk.within_budget(400 * 4096, 100 * 4096 + 1);
        assert_eq!((s.blocks, s.bfree, s.bavail), (400, 299, 299));
        // A budget over the disk: the disk's size and room.
        let s = disk.within_budget(u64::MAX, 0);
        assert_eq!((s.blocks, s.bfree, s.bavail), (1000, 600, 500));
        // Held over the budget (readers keep their windows): no room.
        let s = disk.within_budget(400 * 4096, 500 * 4096);
        assert_eq!((s.blocks, s.bavail), (400, 0));
    }

    #[test]
    fn the_store_reports_its_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = store.space().unwrap();
        assert!(
            s.blocks > 0 && s.bavail <= s.blocks && s.frsize > 0,
            "{s:?}"
        );
    }
}
