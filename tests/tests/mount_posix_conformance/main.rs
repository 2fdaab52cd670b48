//! POSIX conformance of the mount: a small suite of our own (pjdfstest is
//! neither in Debian nor on crates.io), in pjdfstest's manner: one system
//! call, one expected result, through a real mount. It covers the calls
//! that apply to a directory of immutable shared files; the README lists
//! what does not apply. Every case prints one line; the test fails if any
//! case does not give its expected result.
//!
//! `cargo test -p fileshare-tests --test mount_posix_conformance -- --nocapture`
//! prints one line per case (in a folder of its own so `tests/tests/` stays
//! at ten files).

use fileshare_tests::mount::Mount;
use fileshare_tests::world::World;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in a path")
}

/// A call's outcome: `Ok` or the errno.
fn rc(r: libc::c_int) -> Result<(), i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

fn errno_name(e: i32) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EACCES, "EACCES"),
        (libc::EEXIST, "EEXIST"),
        (libc::EXDEV, "EXDEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::EBADF, "EBADF"),
        (libc::EIO, "EIO"),
        (libc::ENOSYS, "ENOSYS"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno {e}"), |(_, s)| s.to_string())
}

struct Suite {
    failed: Vec<String>,
    passed: usize,
}

impl Suite {
    /// One case: `got` must be `want` (`Ok` or an errno).
    fn case(&mut self, call: &str, want: Result<(), i32>, got: Result<(), i32>) {
        let show = |r: &Result<(), i32>| match r {
            Ok(()) => "0".to_string(),
            Err(e) => errno_name(*e),
        };
        let ok = want == got;
        println!(
            "{} {call}: expected {}, got {}",
            if ok { "ok  " } else { "FAIL" },
            show(&want),
            show(&got)
        );
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(format!(
                "{call}: expected {}, got {}",
                show(&want),
                show(&got)
            ));
        }
    }

    /// A case whose result is a condition on what a call returned.
    fn check(&mut self, call: &str, cond: bool) {
        self.case(call, Ok(()), if cond { Ok(()) } else { Err(libc::EIO) });
    }
}

fn stat(p: &Path) -> Result<libc::stat, i32> {
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and st is writable.
    rc(unsafe { libc::stat(c(p).as_ptr(), &mut st) })?;
    Ok(st)
}

fn open(p: &Path, flags: i32) -> Result<i32, i32> {
    // SAFETY: the path is NUL-terminated.
    let fd = unsafe { libc::open(c(p).as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    rc(fd).map(|()| fd)
}

fn open_rc(p: &Path, flags: i32) -> Result<(), i32> {
    open(p, flags).map(|fd| {
        // SAFETY: fd was just opened.
        unsafe { libc::close(fd) };
    })
}

/// Writes `data` to a new file at `p` and closes it (which shares it).
fn put(p: &Path, data: &[u8]) -> Result<(), i32> {
    std::fs::write(p, data).map_err(|e| e.raw_os_error().unwrap_or(0))
}

fn rename2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    // SAFETY: both paths are NUL-terminated.
    rc(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(from).as_ptr(),
            libc::AT_FDCWD,
            c(to).as_ptr(),
            flags,
        )
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), i32> {
    rename2(from, to, 0)
}

#[test]
fn posix_calls_that_apply_to_the_mount() {
    let (w, u) = World::network(&["alice", "bob"]);
    w.group("h", &u[0], &[]);
    w.group("empty", &u[0], &[]);
    let a: Mount = w.mount(&u[0], &[]);
    let b: Mount = w.mount(&u[1], &[]);
    let p = |rel: &str| a.path(rel);
    let mut t = Suite {
        failed: Vec::new(),
        passed: 0,
    };
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    put(&b.path("g/bobs.txt"), b"bob's").expect("bob shares a file");

    // open(2), write(2), fchmod, futimens, fchown, fsync on a new file.
    let fd = open(&p("g/new.txt"), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR);
    t.case("open O_CREAT|O_EXCL of a new name", Ok(()), fd.map(|_| ()));
    let fd = fd.unwrap_or(-1);
    // SAFETY: fd is open (or -1, which the calls refuse); buffers are valid.
    unsafe {
        t.case(
            "write 10 bytes",
            Ok(()),
            rc(libc::write(fd, b"0123456789".as_ptr().cast(), 10) as i32),
        );
        let mut st: libc::stat = std::mem::zeroed();
        t.case(
            "fstat of a file being written",
            Ok(()),
            rc(libc::fstat(fd, &mut st)),
        );
        t.check("fstat size is what was written", st.st_size == 10);
        t.case(
            "fchmod 0600 while writing",
            Ok(()),
            rc(libc::fchmod(fd, 0o600)),
        );
        libc::fstat(fd, &mut st);
        t.check("fstat shows mode 0600", st.st_mode & 0o7777 == 0o600);
        let times = [
            libc::timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            },
        ];
        t.case(
            "futimens while writing",
            Ok(()),
            rc(libc::futimens(fd, times.as_ptr())),
        );
        libc::fstat(fd, &mut st);
        t.check("fstat shows the mtime set", st.st_mtime == 1_000_000_000);
        t.case(
            "fchown to the owner",
            Ok(()),
            rc(libc::fchown(fd, uid, gid)),
        );
        t.case("fsync", Ok(()), rc(libc::fsync(fd)));
        let mut buf = [0u8; 10];
        let n = libc::pread(fd, buf.as_mut_ptr().cast(), 10, 0);
        t.check(
            "pread of a file being written",
            n == 10 && &buf == b"0123456789",
        );
        t.case("close (shares it)", Ok(()), rc(libc::close(fd)));
    }

    // A shared file is immutable.
    let shared = p("g/new.txt");
    t.case(
        "open O_CREAT|O_EXCL of an existing name",
        Err(libc::EEXIST),
        open_rc(&shared, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY),
    );
    for (what, flags) in [
        ("O_WRONLY", libc::O_WRONLY),
        ("O_RDWR", libc::O_RDWR),
        ("O_TRUNC", libc::O_RDONLY | libc::O_TRUNC),
        ("O_APPEND", libc::O_WRONLY | libc::O_APPEND),
    ] {
        t.case(
            &format!("open {what} of a shared file"),
            Err(libc::EPERM),
            open_rc(&shared, flags),
        );
    }
    t.case(
        "open O_RDONLY of a shared file",
        Ok(()),
        open_rc(&shared, libc::O_RDONLY),
    );
    t.case(
        "open O_DIRECTORY of a file",
        Err(libc::ENOTDIR),
        open_rc(&shared, libc::O_RDONLY | libc::O_DIRECTORY),
    );
    // SAFETY: NUL-terminated paths.
    unsafe {
        t.case(
            "truncate a shared file to another size",
            Err(libc::EPERM),
            rc(libc::truncate(c(&shared).as_ptr(), 5)),
        );
        t.case(
            "truncate a shared file to its size",
            Ok(()),
            rc(libc::truncate(c(&shared).as_ptr(), 10)),
        );
        t.case(
            "chmod of one's shared file (no effect)",
            Ok(()),
            rc(libc::chmod(c(&shared).as_ptr(), 0o644)),
        );
        t.case(
            "chown of one's shared file to oneself",
            Ok(()),
            rc(libc::chown(c(&shared).as_ptr(), uid, gid)),
        );
        t.case(
            "utimensat of one's shared file (no effect)",
            Ok(()),
            rc(libc::utimensat(
                libc::AT_FDCWD,
                c(&shared).as_ptr(),
                std::ptr::null(),
                0,
            )),
        );
        t.case(
            "access R_OK of a shared file",
            Ok(()),
            rc(libc::access(c(&shared).as_ptr(), libc::R_OK)),
        );
        // The kernel answers by the mode (0444), as for any file: root
        // may write anything by mode, and opening it for writing is then
        // refused (EPERM, above) by the daemon.
        t.case(
            "access W_OK of a shared file",
            if libc::geteuid() == 0 {
                Ok(())
            } else {
                Err(libc::EACCES)
            },
            rc(libc::access(c(&shared).as_ptr(), libc::W_OK)),
        );
        t.case(
            "access W_OK of a group",
            Ok(()),
            rc(libc::access(c(&p("g")).as_ptr(), libc::W_OK)),
        );
    }
    let st = stat(&shared);
    t.check(
        "stat of a shared file: regular, 0444, its size",
        st.is_ok_and(|s| {
            s.st_mode & libc::S_IFMT == libc::S_IFREG
                && s.st_mode & 0o7777 == 0o444
                && s.st_size == 10
        }),
    );

    // Names.
    let long = "l".repeat(256);
    let longest = "l".repeat(255);
    t.case(
        "open O_CREAT of a 256-byte name",
        Err(libc::ENAMETOOLONG),
        open_rc(&p(&format!("g/{long}")), libc::O_CREAT | libc::O_WRONLY),
    );
    t.case(
        "stat of a 256-byte name",
        Err(libc::ENAMETOOLONG),
        stat(&p(&format!("g/{long}"))).map(|_| ()),
    );
    t.case(
        "rename to a 256-byte name",
        Err(libc::ENAMETOOLONG),
        rename(&shared, &p(&format!("g/{long}"))),
    );
    t.case(
        "mkdir of a 256-byte name",
        Err(libc::ENAMETOOLONG),
        // SAFETY: NUL-terminated path.
        rc(unsafe { libc::mkdir(c(&p(&long)).as_ptr(), 0o755) }),
    );
    t.case(
        "create a 255-byte name",
        Ok(()),
        put(&p(&format!("g/{longest}")), b"x"),
    );
    t.case(
        "create a name with a newline",
        Err(libc::EINVAL),
        put(&p("g/bad\nname"), b"x"),
    );

    // Directories.
    // SAFETY: NUL-terminated paths.
    unsafe {
        t.case(
            "mkdir in a group",
            Err(libc::EPERM),
            rc(libc::mkdir(c(&p("g/sub")).as_ptr(), 0o755)),
        );
        t.case(
            "mkdir of an existing group",
            Err(libc::EEXIST),
            rc(libc::mkdir(c(&p("g")).as_ptr(), 0o755)),
        );
        t.case(
            "mkdir in the root (creates a group)",
            Ok(()),
            rc(libc::mkdir(c(&p("made")).as_ptr(), 0o755)),
        );
        t.case(
            "rmdir of a group with files",
            Err(libc::ENOTEMPTY),
            rc(libc::rmdir(c(&p("g")).as_ptr())),
        );
        t.case(
            "rmdir of an empty group",
            Err(libc::EPERM),
            rc(libc::rmdir(c(&p("empty")).as_ptr())),
        );
        t.case(
            "rmdir of a file",
            Err(libc::ENOTDIR),
            rc(libc::rmdir(c(&shared).as_ptr())),
        );
        t.case(
            "create a file in the root",
            Err(libc::EPERM),
            open_rc(&p("rootfile"), libc::O_CREAT | libc::O_WRONLY),
        );
        t.case(
            "utimensat of a group (no effect)",
            Ok(()),
            rc(libc::utimensat(
                libc::AT_FDCWD,
                c(&p("g")).as_ptr(),
                std::ptr::null(),
                0,
            )),
        );
        t.case(
            "chmod of a group (no effect)",
            Ok(()),
            rc(libc::chmod(c(&p("g")).as_ptr(), 0o700)),
        );
    }
    let listed = std::fs::read_dir(p("g"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name() == "new.txt")
        })
        .unwrap_or(false);
    t.check("readdir lists a created file", listed);

    // unlink(2).
    // SAFETY: NUL-terminated paths.
    unsafe {
        t.case(
            "unlink of a missing name",
            Err(libc::ENOENT),
            rc(libc::unlink(c(&p("g/missing")).as_ptr())),
        );
        t.case(
            "unlink of another member's file",
            Err(libc::EPERM),
            rc(libc::unlink(c(&p("g/bobs.txt")).as_ptr())),
        );
        put(&p("g/.gone.txt.Ab12Cd"), b"temporary").ok();
        t.case(
            "unlink of a closed, unshared temporary file",
            Ok(()),
            rc(libc::unlink(c(&p("g/.gone.txt.Ab12Cd")).as_ptr())),
        );
        put(&p("g/rm-me"), b"x").ok();
        t.case(
            "unlink of one's shared file",
            Ok(()),
            rc(libc::unlink(c(&p("g/rm-me")).as_ptr())),
        );
    }

    // rename(2).
    let ino = stat(&shared).map(|s| s.st_ino).unwrap_or(0);
    t.case(
        "rename within a group",
        Ok(()),
        rename(&shared, &p("g/moved.txt")),
    );
    t.case(
        "stat of the old name after rename",
        Err(libc::ENOENT),
        stat(&shared).map(|_| ()),
    );
    t.check(
        "rename keeps the inode number",
        stat(&p("g/moved.txt")).is_ok_and(|s| s.st_ino == ino),
    );
    t.case(
        "rename onto itself",
        Ok(()),
        rename(&p("g/moved.txt"), &p("g/moved.txt")),
    );
    put(&p("g/older.txt"), b"older").ok();
    t.case(
        "rename onto one's own file (replaces it)",
        Ok(()),
        rename(&p("g/moved.txt"), &p("g/older.txt")),
    );
    t.check(
        "the replaced name has the renamed bytes",
        std::fs::read(p("g/older.txt")).is_ok_and(|d| d == b"0123456789"),
    );
    t.case(
        "rename onto another member's file",
        Err(libc::EPERM),
        rename(&p("g/older.txt"), &p("g/bobs.txt")),
    );
    put(&p("g/third.txt"), b"3").ok();
    t.case(
        "renameat2 RENAME_NOREPLACE onto an existing name",
        Err(libc::EEXIST),
        rename2(&p("g/older.txt"), &p("g/third.txt"), libc::RENAME_NOREPLACE),
    );
    t.case(
        "renameat2 RENAME_EXCHANGE",
        Err(libc::EINVAL),
        rename2(&p("g/older.txt"), &p("g/third.txt"), libc::RENAME_EXCHANGE),
    );
    t.case(
        "rename across groups",
        Err(libc::EXDEV),
        rename(&p("g/older.txt"), &p("h/older.txt")),
    );
    t.case(
        "rename of a group",
        Err(libc::EPERM),
        rename(&p("h"), &p("h2")),
    );
    t.case(
        "rename of a file into the root",
        Err(libc::EPERM),
        rename(&p("g/older.txt"), &p("older.txt")),
    );
    t.case(
        "rename of a missing name",
        Err(libc::ENOENT),
        rename(&p("g/missing"), &p("g/other")),
    );
    put(&p("g/.draft.txt.Zz9Yy8"), b"draft").ok();
    t.case(
        "rename of an unshared temporary file (shares it)",
        Ok(()),
        rename(&p("g/.draft.txt.Zz9Yy8"), &p("g/draft.txt")),
    );
    t.check(
        "the other member lists the new name, never the temporary",
        w.fsd_ok(&u[1], &["list-files", "g"])
            .contains("draft.txt  5")
            && !w
                .fsd_ok(&u[1], &["list-files", "g"])
                .contains(".draft.txt."),
    );

    // Links, special files, extended attributes, statfs.
    // SAFETY: NUL-terminated paths and valid buffers.
    unsafe {
        t.case(
            "link",
            Err(libc::EPERM),
            rc(libc::link(
                c(&p("g/draft.txt")).as_ptr(),
                c(&p("g/hard")).as_ptr(),
            )),
        );
        t.case(
            "symlink",
            Err(libc::EPERM),
            rc(libc::symlink(
                c(Path::new("draft.txt")).as_ptr(),
                c(&p("g/soft")).as_ptr(),
            )),
        );
        t.case(
            "mkfifo",
            Err(libc::EPERM),
            rc(libc::mkfifo(c(&p("g/fifo")).as_ptr(), 0o644)),
        );
        let name = CString::new("user.note").expect("name");
        t.case(
            "setxattr",
            Err(libc::EOPNOTSUPP),
            rc(libc::setxattr(
                c(&p("g/draft.txt")).as_ptr(),
                name.as_ptr(),
                b"x".as_ptr().cast(),
                1,
                0,
            )),
        );
        let id = CString::new("user.fileshare.id").expect("name");
        let mut buf = [0u8; 128];
        let n = libc::getxattr(
            c(&p("g/draft.txt")).as_ptr(),
            id.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        t.check("getxattr user.fileshare.id", n == 64);
        let mut sv: libc::statvfs = std::mem::zeroed();
        t.case(
            "statvfs",
            Ok(()),
            rc(libc::statvfs(c(&a.mountpoint).as_ptr(), &mut sv)),
        );
        t.check(
            "statvfs: a size, room and 255-byte names",
            sv.f_blocks > 0 && sv.f_bavail > 0 && sv.f_namemax == 255,
        );
    }

    println!(
        "\nconformance: {} of {} cases as expected",
        t.passed,
        t.passed + t.failed.len()
    );
    assert!(
        t.failed.is_empty(),
        "cases that failed:\n{}\n{}",
        t.failed.join("\n"),
        a.log()
    );
}
