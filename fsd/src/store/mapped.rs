//! A range of a data file mapped read-only, for a FUSE reply to take its
//! bytes straight from the page cache: the kernel copies them once, into
//! the reply, where reading them first copied them into this process too.
//! Mapping a MiB (populated in the same call) and unmapping it costs this
//! process less than half of what copying it out with `pread` does.
//!
//! Only the kernel reads a mapping (the reply's `writev`): a page the file
//! no longer has fails that call (`EFAULT`) instead of raising `SIGBUS`
//! in this process. The caller holds the file's read guard while the bytes
//! are in use, so no eviction punches them meanwhile.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `[offset, offset + len)` of a file, mapped read-only until dropped.
pub struct Mapped {
    base: *mut libc::c_void,
    map_len: usize,
    /// Where the range starts in the mapping (mappings start on a page).
    skip: usize,
    len: usize,
}

// SAFETY: a read-only mapping owned by this value alone; nothing in it is
// tied to the thread that made it.
unsafe impl Send for Mapped {}

impl Mapped {
    /// Maps `len` bytes at `offset` of `file`; `None` when the range is
    /// empty, reaches past the file's end, or the kernel refuses (the
    /// caller reads it instead).
    pub fn new(file: &File, offset: u64, len: usize) -> Option<Mapped> {
        let end = offset.checked_add(len as u64)?;
        if len == 0 || file.metadata().ok()?.len() < end {
            return None;
        }
        let page = page_size();
        let skip = usize::try_from(offset % page as u64).ok()?;
        let start = libc::off_t::try_from(offset - skip as u64).ok()?;
        let map_len = skip.checked_add(len)?;
        // SAFETY: a new read-only shared mapping of an open descriptor at a
        // page-aligned offset; no existing memory is touched, and the
        // result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                start,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        Some(Mapped {
            base,
            map_len,
            skip,
            len,
        })
    }

    /// The range's bytes: for the kernel to read (see the module's note).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `skip + len == map_len` bytes are mapped readable at
        // `base` for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.skip), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no slice of it
        // outlives `self`.
        unsafe {
            libc::munmap(self.base, self.map_len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_mapped_range_holds_the_files_bytes_and_stops_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap();
        let bytes: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&bytes, 0).unwrap();
        for (offset, len) in [(0, bytes.len()), (4096, 4096), (5000, 7000), (1, 1)] {
            let m = Mapped::new(&f, offset as u64, len).unwrap();
            assert_eq!(m.bytes(), &bytes[offset..offset + len], "{offset}+{len}");
        }
        assert!(Mapped::new(&f, 4096, bytes.len()).is_none(), "past the end");
        assert!(Mapped::new(&f, 0, 0).is_none());
    }
}
