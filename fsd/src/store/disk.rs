//! The few file-system calls the store needs beyond `std`: punching holes,
//! syncing a directory, and the size of the file system the home is on.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The largest default cache budget: 50 GiB.
pub const MAX_DEFAULT_BUDGET: u64 = 50 << 30;

/// Frees the blocks of `[offset, offset + len)` of `file`, keeping its size:
/// reads there return zeros from now on.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    let len = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: fallocate on a descriptor owned by `file`; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes the entries of `dir` (a rename, a new file) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The size in bytes of the file system `path` is on.
pub fn fs_size(path: &Path) -> std::io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_blocks.saturating_mul(st.f_frsize))
}

/// The cache budget when none is given: a tenth of the file system the
/// store is on, at most [`MAX_DEFAULT_BUDGET`].
pub fn default_budget(store: &Path) -> u64 {
    fs_size(store)
        .map(|s| s / 10)
        .unwrap_or(MAX_DEFAULT_BUDGET)
        .min(MAX_DEFAULT_BUDGET)
}

/// Bytes a file occupies on disk (holes excluded).
pub fn allocated(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_punched_hole_reads_zeros_and_frees_its_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("d"))
            .unwrap();
        f.write_all_at(&vec![7u8; 1 << 20], 0).unwrap();
        f.sync_all().unwrap();
        let before = allocated(&f).unwrap();
        punch_hole(&f, 0, 512 * 1024).unwrap();
        let mut buf = vec![1u8; 4096];
        f.read_exact_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        f.read_exact_at(&mut buf, 600 * 1024).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
        assert!(allocated(&f).unwrap() <= before - 512 * 1024);
        assert!(default_budget(dir.path()) <= MAX_DEFAULT_BUDGET);
    }
}
