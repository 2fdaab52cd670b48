//! The few file-system calls the store needs beyond `std`: punching holes,
//! copying between files in the kernel, syncing a directory, and the size
//! of the file system the home is on.

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

/// Copies `len` bytes at `offset` of `from` to the same offset of `to`,
/// in the kernel (`copy_file_range`: no copy through this process, a
/// shared extent where the file system can), or through a buffer where it
/// cannot (another file system on an older kernel, a special file).
pub fn copy_range(from: &File, to: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (mut done, end) = (0u64, len);
    while done < end {
        let mut off_in = libc::loff_t::try_from(offset + done).map_err(std::io::Error::other)?;
        let mut off_out = off_in;
        let want = usize::try_from(end - done).unwrap_or(usize::MAX);
        // SAFETY: both descriptors are open and owned by their `File`s; the
        // offsets are valid for the call.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut off_in,
                to.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        match n {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the source ended early",
                ))
            }
            n if n > 0 => done += n as u64,
            _ => {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                        let mut buf = vec![0u8; usize::try_from(end - done).unwrap_or(0)];
                        from.read_exact_at(&mut buf, offset + done)?;
                        return to.write_all_at(&buf, offset + done);
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Reads exactly `len` bytes at `offset` into a new buffer that is never
/// zeroed first: on the read path, zeroing half a MiB costs as much as
/// reading it from the page cache.
pub fn read_exact_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        let at = libc::off_t::try_from(offset + done as u64).map_err(std::io::Error::other)?;
        // SAFETY: pread writes at most `len - done` bytes into the spare
        // capacity, which holds that many; `set_len` covers only bytes it
        // wrote.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(done).cast(),
                len - done,
                at,
            )
        };
        match n {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ))
            }
            // SAFETY: see above; `n` bytes past `done` were written.
            n if n > 0 => unsafe { buf.set_len(done + n as usize) },
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

/// Starts writing `len` bytes at `offset` of `file` back to the disk, and
/// returns at once: the `fsync` at the end then waits for what is still
/// in flight, not for the whole file.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Ok(());
    };
    // SAFETY: sync_file_range on a descriptor `file` owns; it only starts
    // writeback of dirty pages in the range.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
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

    #[test]
    fn a_range_is_copied_to_the_same_offset() {
        let dir = tempfile::tempdir().unwrap();
        let from = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("a"))
            .unwrap();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        from.write_all_at(&bytes, 0).unwrap();
        let to = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("b"))
            .unwrap();
        copy_range(&from, &to, 100_000, 150_000).unwrap();
        let mut got = vec![0u8; 150_000];
        to.read_exact_at(&mut got, 100_000).unwrap();
        assert_eq!(got, bytes[100_000..250_000]);
        let err = copy_range(&from, &to, 250_000, 100_000).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");

        assert_eq!(read_exact_at(&from, 7, 200_000).unwrap(), bytes[7..200_007]);
        assert!(read_exact_at(&from, 0, 0).unwrap().is_empty());
        let err = read_exact_at(&from, 299_999, 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    }
}
