//! Files held whole, read by the kernel directly (FUSE passthrough), through
//! real mounts as root: the sharer's own copy and a reader's fetched copy
//! are opened with passthrough, their reads never reach the daemon, and
//! their bytes, `mmap`, `rm`, `mv` and eviction behave as they do through
//! the daemon.

use fileshare_tests::mount::{wait_for, Mount};
use fileshare_tests::world::World;
use fileshare_tests::{cmp, drop_pages, random_file, MIB};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PIECE: u64 = 512 * 1024;

/// A numeric `user.fileshare.*` attribute.
fn counter(m: &Mount, rel: &str, name: &str) -> u64 {
    let v = m.xattr(rel, &format!("user.fileshare.{name}"));
    v.parse()
        .unwrap_or_else(|_| panic!("{rel} {name} is not a number: {v:?}"))
}

/// `user.fileshare.pieces` as (held, total).
fn pieces(m: &Mount, rel: &str) -> (u64, u64) {
    let v = m.xattr(rel, "user.fileshare.pieces");
    let (a, b) = v.split_once('/').expect("held/total");
    (a.parse().unwrap(), b.parse().unwrap())
}

fn wait_listed(m: &Mount, rel: &str) {
    let path = m.path(rel);
    wait_for(
        &format!("{} listed", path.display()),
        Duration::from_secs(15),
        || path.exists().then_some(()),
    );
}

/// Shares `n` files of 8 MiB, `PREFIX0.bin`... in group g from `a` and
/// waits until `b` lists them all; returns their sources.
fn share_8_mib(w: &World, a: &Mount, b: &Mount, prefix: &str, n: u64, seed: u64) -> Vec<PathBuf> {
    let srcs: Vec<_> = (0..n)
        .map(|i| {
            let p = w.path(&format!("{prefix}{i}.bin"));
            random_file(&p, 8 * MIB, seed + i);
            a.cp_in(&p, "g");
            p
        })
        .collect();
    for i in 0..n {
        wait_listed(b, &format!("g/{prefix}{i}.bin"));
    }
    srcs
}

/// The whole of an open file as read through `mmap`.
fn read_mmap(f: &File) -> Vec<u8> {
    let len = usize::try_from(f.metadata().expect("fstat").len()).unwrap();
    // SAFETY: a read-only private mapping of an open file, unmapped below,
    // copied out before.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let bytes = std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec();
        libc::munmap(p, len);
        bytes
    }
}

fn read_fd(f: &mut File) -> Vec<u8> {
    let mut out = Vec::new();
    f.read_to_end(&mut out).expect("read");
    out
}

/// Opens a file held whole and returns it once an open of it was passed
/// through: an open just after a close through the daemon may still be
/// answered through the daemon, until the daemon hears of that close (the
/// kernel never mixes the two on one file).
fn open_passed_through(m: &Mount, rel: &str) -> File {
    wait_for(
        &format!("{rel} opened with passthrough"),
        Duration::from_secs(10),
        || {
            let before = counter(m, rel, "passthrough_opens");
            let f = File::open(m.path(rel)).expect("open");
            (counter(m, rel, "passthrough_opens") > before).then_some(f)
        },
    )
}

fn run_ok(cmd: &str, args: &[&Path]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn files_held_whole_are_read_by_the_kernel_and_read_as_through_the_daemon() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let status = w.fsd_ok(&u[0], &["status"]);
    assert!(
        status.contains("files held whole: read by the kernel directly (passthrough)"),
        "{status}"
    );
    let src = w.path("a.bin");
    random_file(&src, 8 * MIB + 4321, 51);
    let original = std::fs::read(&src).unwrap();
    a.cp_in(&src, "g");
    wait_listed(&a, "g/a.bin");
    wait_listed(&b, "g/a.bin");

    // The sharer's own copy: opened with passthrough, and while it is
    // open every other open is too; none of its bytes go through the
    // daemon, the mount's cached pages dropped or not.
    let mut f = open_passed_through(&a, "g/a.bin");
    drop_pages(&a.path("g/a.bin"));
    cmp(&src, &a.path("g/a.bin"));
    assert!(read_mmap(&f) == original, "mmap of alice's copy differs");
    assert!(read_fd(&mut f) == original, "read of alice's copy differs");
    assert_eq!(counter(&a, "g/a.bin", "daemon_read_bytes"), 0);
    drop(f);

    // The reader: the first read fetches through the daemon, and once the
    // file is whole it is opened with passthrough.
    assert_eq!(counter(&b, "g/a.bin", "passthrough_opens"), 0);
    cmp(&src, &b.path("g/a.bin"));
    assert_eq!(pieces(&b, "g/a.bin"), (17, 17));
    let mut g = open_passed_through(&b, "g/a.bin");
    let through_daemon = counter(&b, "g/a.bin", "daemon_read_bytes");
    assert!(through_daemon >= original.len() as u64, "{through_daemon}");
    drop_pages(&b.path("g/a.bin"));
    cmp(&src, &b.path("g/a.bin"));
    assert!(read_mmap(&g) == original, "mmap of bob's copy differs");
    assert!(read_fd(&mut g) == original, "read of bob's copy differs");
    assert_eq!(
        counter(&b, "g/a.bin", "daemon_read_bytes"),
        through_daemon,
        "a passed-through read reached bob's daemon"
    );
    let status = w.fsd_ok(&u[1], &["status"]);
    assert!(status.contains(" so far, 1 now"), "{status}");
    drop(g);

    // `mv` and `rm` of alice's own copy while it is open: the open file
    // reads on, as a local file would, and the new name reads the same.
    let mut f = open_passed_through(&a, "g/a.bin");
    run_ok("mv", &[&a.path("g/a.bin"), &a.path("g/b.bin")]);
    assert!(read_fd(&mut f) == original, "read after mv differs");
    wait_listed(&a, "g/b.bin");
    cmp(&src, &a.path("g/b.bin"));
    run_ok("rm", &[&a.path("g/b.bin")]);
    assert!(!a.path("g/b.bin").exists(), "rm left the file listed");
    assert!(
        read_mmap(&f) == original,
        "mmap after rm of the open file differs"
    );
    drop(f);
    wait_for(
        "b.bin gone from bob's listing",
        Duration::from_secs(15),
        || (!b.path("g/b.bin").exists()).then_some(()),
    );
}

#[test]
fn a_passed_through_open_keeps_its_pieces_from_eviction_until_closed() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &["--cache-size", "12M"]);
    let srcs = share_8_mib(&w, &a, &b, "f", 4, 60);
    let whole = 8 * MIB as u64 / PIECE;
    // Fetched whole by `download-file`, f0 is in no reader's window: only
    // an open's pin keeps eviction from it.
    let dest = w.path("f0-copy.bin");
    w.fsd_ok(
        &u[1],
        &["download-file", "g", "f0.bin", dest.to_str().unwrap()],
    );
    cmp(&srcs[0], &dest);
    assert_eq!(pieces(&b, "g/f0.bin"), (whole, whole));

    // f0 open with passthrough: reading f1 and f2 overfills the budget
    // twice, and eviction leaves f0 whole.
    let mut f0 = File::open(b.path("g/f0.bin")).unwrap();
    assert_eq!(counter(&b, "g/f0.bin", "passthrough_opens"), 1);
    cmp(&srcs[1], &b.path("g/f1.bin"));
    cmp(&srcs[2], &b.path("g/f2.bin"));
    assert_eq!(
        pieces(&b, "g/f0.bin"),
        (whole, whole),
        "evicted while open:\n{}",
        b.log()
    );
    assert!(
        read_fd(&mut f0) == std::fs::read(&srcs[0]).unwrap(),
        "the open file read differently"
    );
    drop(f0);

    // Closed, f0 is evictable again.
    cmp(&srcs[3], &b.path("g/f3.bin"));
    wait_for("f0 evicted once closed", Duration::from_secs(15), || {
        (pieces(&b, "g/f0.bin").0 < whole).then_some(())
    });
    assert!(
        b.log().contains("fsd::pieces::cache: evicted file=f0.bin"),
        "{}",
        b.log()
    );
    // Not whole, it reads through the daemon, fetching what was evicted.
    cmp(&srcs[0], &b.path("g/f0.bin"));
}

/// An open handle's reads while the cache evicts around it: a file held
/// whole, opened with passthrough, read half through `read`, mapped, and
/// then, after reads of other files have overfilled the cache budget twice
/// and the page cache of its bytes on disk was dropped, read on: the rest
/// and the whole again through the same handle, and through the mapping
/// made before the eviction. Without the open's pin, eviction punches
/// the file's pieces out of its data file and these reads return zeros.
#[test]
fn eviction_leaves_an_open_passed_through_handle_reading_its_bytes() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &["--cache-size", "12M"]);
    let srcs = share_8_mib(&w, &a, &b, "h", 3, 80);
    let original = std::fs::read(&srcs[0]).unwrap();
    let half = original.len() / 2;
    // Fetched whole by `download-file`, h0 is in no reader's window.
    let dest = w.path("h0-copy.bin");
    w.fsd_ok(
        &u[1],
        &["download-file", "g", "h0.bin", dest.to_str().unwrap()],
    );
    let whole = 8 * MIB as u64 / PIECE;
    assert_eq!(pieces(&b, "g/h0.bin"), (whole, whole));

    let mut f = open_passed_through(&b, "g/h0.bin");
    let mut first = vec![0u8; half];
    f.read_exact(&mut first).expect("the first half");
    assert!(first == original[..half], "the first half differs");
    let len = original.len();
    // SAFETY: a read-only private mapping of an open file, unmapped at the
    // end of the test, read only while it lives.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());

    // Two budgets' worth of other files through the daemon.
    cmp(&srcs[1], &b.path("g/h1.bin"));
    cmp(&srcs[2], &b.path("g/h2.bin"));
    assert!(
        b.log().contains("fsd::pieces::cache: evicted"),
        "the cache evicted nothing:\n{}",
        b.log()
    );
    // What the handle reads next comes from the disk, not from pages
    // cached before the eviction.
    let id = b.xattr("g/h0.bin", "user.fileshare.id");
    drop_pages(&b.home.join("store").join(id).join("data"));

    let mut rest = Vec::new();
    f.read_to_end(&mut rest).expect("the rest");
    assert!(
        rest == original[half..],
        "the rest read after eviction differs"
    );
    let mut again = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut again, 0).expect("pread");
    assert!(
        again == original,
        "the whole re-read after eviction differs"
    );
    // SAFETY: the mapping above, `len` bytes, still mapped.
    let mapped = unsafe { std::slice::from_raw_parts(map.cast::<u8>(), len).to_vec() };
    // SAFETY: unmaps the mapping made above, not used after.
    unsafe { libc::munmap(map, len) };
    assert!(
        mapped == original,
        "the mapping made before the eviction reads differently"
    );
    assert_eq!(pieces(&b, "g/h0.bin"), (whole, whole));
    assert_eq!(counter(&b, "g/h0.bin", "daemon_read_bytes"), 0);
}

#[test]
fn a_file_shared_in_place_is_read_by_the_kernel_from_the_users_own_file() {
    let (w, u) = World::network(&["alice"]);
    let a = w.mount(&u[0], &[]);
    let src = w.path("own.bin");
    random_file(&src, 3 * MIB + 17, 71);
    let original = std::fs::read(&src).unwrap();
    w.fsd_ok(&u[0], &["upload-file", src.to_str().unwrap(), "g"]);
    wait_listed(&a, "g/own.bin");
    let mut f = open_passed_through(&a, "g/own.bin");
    drop_pages(&a.path("g/own.bin"));
    cmp(&src, &a.path("g/own.bin"));
    assert!(
        read_mmap(&f) == original,
        "mmap of the in-place file differs"
    );
    assert!(
        read_fd(&mut f) == original,
        "read of the in-place file differs"
    );
    assert_eq!(counter(&a, "g/own.bin", "daemon_read_bytes"), 0);
    // Nothing of it was copied into the store.
    let store = a
        .home
        .join("store")
        .join(a.xattr("g/own.bin", "user.fileshare.id"));
    assert!(
        !store.join("data").exists(),
        "an in-place share has no data file"
    );
}
