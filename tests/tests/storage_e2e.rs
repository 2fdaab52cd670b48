//! The piece store under pressure, through real mounts: the cache budget
//! and eviction, a user's own shares kept whatever the budget, pieces lost
//! in a crash fetched again, full disks (small tmpfs homes), stale
//! temporary files of downloads, and downloads resumed after a restart.

use fileshare_tests::daemon::{fsd_command, text, Tmpfs};
use fileshare_tests::mount::{fetched, wait_for, Mount};
use fileshare_tests::world::{User, World};
use fileshare_tests::{cmp, random_file, HANG_LIMIT, MIB};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PIECE: u64 = 512 * 1024;

/// What one sequential reader keeps from eviction, beyond the budget: the
/// kernel's read-ahead (4 MiB, whose pieces are kept until read) and the
/// daemon's (half the budget, at most 32 MiB).
fn read_window(budget: u64) -> u64 {
    4 * MIB as u64 + (budget / 2).clamp(PIECE, 64 * PIECE)
}

/// Waits until `m` lists `group/name`.
fn wait_listed(m: &Mount, group: &str, name: &str) {
    let path = m.path(&format!("{group}/{name}"));
    wait_for(&format!("{} listed", path.display()), HANG_LIMIT, || {
        path.exists().then_some(())
    });
}

/// `user.fileshare.pieces` as (held, total).
fn pieces(m: &Mount, rel: &str) -> (u64, u64) {
    let v = m.xattr(rel, "user.fileshare.pieces");
    let (a, b) = v.split_once('/').expect("held/total");
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Bytes on disk of the files this home fetched from others (holes
/// excluded): the pieces the cache budget bounds.
fn cache_bytes(home: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(home.join("store")).into_iter().flatten() {
        let dir = e.unwrap().path();
        if dir.join("fetched").exists() {
            if let Ok(md) = std::fs::metadata(dir.join("data")) {
                total += md.blocks() * 512;
            }
        }
    }
    total
}

/// The store entry of a file, by the id the mount shows.
fn entry_of(m: &Mount, rel: &str) -> PathBuf {
    m.home.join("store").join(m.xattr(rel, "user.fileshare.id"))
}

/// A world whose named users get their homes on small tmpfs file systems
/// (`size` each); the others on the test's disk. Every user is in `g`,
/// owned by the first.
fn world_with_small_homes(users: &[(&str, Option<&str>)]) -> (World, Vec<Tmpfs>, Vec<User>) {
    let w = World::new();
    let homes = (users.iter())
        .filter_map(|(name, size)| {
            size.map(|size| {
                let fs = Tmpfs::mount(&w.path(&format!("home-{name}")), size, false);
                // A home others can write is refused: owner-only, as fsd
                // makes its homes.
                let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o700);
                std::fs::set_permissions(&fs.dir, owner_only).expect("chmod the home");
                fs
            })
        })
        .collect();
    let us: Vec<User> = users.iter().map(|(name, _)| w.user(name)).collect();
    let rest: Vec<&User> = us[1..].iter().collect();
    w.group("g", &us[0], &rest);
    (w, homes, us)
}

#[test]
fn a_file_four_times_the_budget_streams_within_the_budget() {
    let (w, u) = World::network(&["alice", "bob", "carol"]);
    let mut a = w.mount(&u[0], &[]);
    let budget = 16 * MIB as u64;
    let b = w.mount(&u[1], &["--cache-size", "16M"]);
    let size = 64 * MIB;
    let src = w.path("movie.bin");
    random_file(&src, size, 21);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "movie.bin");

    // Bob's store, sampled while he reads the whole file.
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = {
        let (stop, peak, home) = (stop.clone(), peak.clone(), b.home.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(cache_bytes(&home), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    cmp(&src, &b.path("g/movie.bin"));
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let window = read_window(budget);
    eprintln!("bob's store peaked at {peak} bytes");
    assert!(
        peak <= budget + window,
        "bob's store held {peak} bytes; budget {budget} plus window {window}"
    );
    assert!(peak >= budget / 2, "the budget was not used: {peak}");
    let (held, total) = pieces(&b, "g/movie.bin");
    assert_eq!(total, size as u64 / PIECE);
    assert!(
        held * PIECE <= budget + window && cache_bytes(&b.home) <= budget + window,
        "{held} pieces held after the read"
    );
    assert!(
        b.log().contains("fsd::pieces::cache: evicted"),
        "{}",
        b.log()
    );
    // `df` shows the budget as the mount's size and its use.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    let at = std::ffi::CString::new(b.mountpoint.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::statvfs(at.as_ptr(), &mut sv) }, 0);
    let (df_size, avail) = (sv.f_blocks * sv.f_frsize, sv.f_bavail * sv.f_frsize);
    assert_eq!(df_size, budget, "df size");
    let held_now = cache_bytes(&b.home);
    assert!(
        avail <= budget.saturating_sub(held_now) + PIECE,
        "df available {avail}, with {held_now} of {budget} held"
    );

    // Evicted pieces are no longer offered: with alice gone, carol reads
    // the end of the file from bob, and the start, which bob evicted,
    // from no one.
    a.unmount();
    let c = w.mount(&u[2], &["--read-timeout", "3"]);
    wait_listed(&c, "g", "movie.bin");
    let tail_at = (size - 2 * MIB) as u64;
    let mut f = std::fs::File::open(c.path("g/movie.bin")).unwrap();
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(tail_at)).unwrap();
    f.read_to_end(&mut tail).unwrap();
    assert!(
        tail == std::fs::read(&src).unwrap()[tail_at as usize..],
        "the tail differs"
    );
    let mut head = vec![0u8; 4096];
    let err = f.read_exact_at(&mut head, 0).expect_err("bob evicted it");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let from_bob = fetched(&c, "g/movie.bin");
    assert!(
        from_bob.iter().all(|x| x.3 == 0),
        "bob served a bad piece: {from_bob:?}"
    );
}

#[test]
fn a_users_own_shares_survive_a_budget_smaller_than_them() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &["--cache-size", "1M"]);
    let b = w.mount(&u[1], &[]);
    let copied = w.path("copied.bin");
    random_file(&copied, 6 * MIB + 7, 31);
    a.cp_in(&copied, "g");
    let in_place = w.path("in-place.bin");
    random_file(&in_place, 5 * MIB, 32);
    w.fsd_ok(&u[0], &["upload-file", in_place.to_str().unwrap(), "g"]);
    // Alice reads a file of bob's: her cache keeps at most about 1M of it.
    let theirs = w.path("theirs.bin");
    random_file(&theirs, 8 * MIB, 33);
    b.cp_in(&theirs, "g");
    wait_listed(&a, "g", "theirs.bin");
    cmp(&theirs, &a.path("g/theirs.bin"));
    // Pieces kept for a read that has ended go at the store's next sync;
    // a loaded machine may end the read with more held.
    let budget = MIB as u64;
    let within = || {
        let kept = cache_bytes(&a.home);
        (pieces(&a, "g/theirs.bin").0 < 16 && kept <= budget + read_window(budget)).then_some(())
    };
    let settled = Instant::now() + HANG_LIMIT;
    while within().is_none() && Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        within().is_some(),
        "{:?} held, {} bytes\n{}",
        pieces(&a, "g/theirs.bin"),
        cache_bytes(&a.home),
        a.log()
    );
    // Her own files are whole: every piece held, every byte on disk.
    assert_eq!(pieces(&a, "g/copied.bin"), (13, 13));
    assert_eq!(pieces(&a, "g/in-place.bin"), (10, 10));
    let data = entry_of(&a, "g/copied.bin").join("data");
    assert!(std::fs::metadata(&data).unwrap().blocks() * 512 >= 6 * MIB as u64);
    // And bob reads them from her.
    wait_listed(&b, "g", "copied.bin");
    wait_listed(&b, "g", "in-place.bin");
    cmp(&copied, &b.path("g/copied.bin"));
    cmp(&in_place, &b.path("g/in-place.bin"));
}

#[test]
fn a_piece_lost_in_a_crash_is_fetched_again_never_served_wrong() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let mut b = w.mount(&u[1], &[]);
    let size = 8 * MIB;
    let src = w.path("f.bin");
    random_file(&src, size, 41);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "f.bin");
    cmp(&src, &b.path("g/f.bin"));
    assert_eq!(pieces(&b, "g/f.bin"), (16, 16));
    let data = entry_of(&b, "g/f.bin").join("data");
    // Killed before a sync point made the pieces durable; piece 5's bytes
    // never reached the disk, as a power loss would leave them.
    b.kill9();
    let store = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    store
        .write_all_at(&vec![0u8; PIECE as usize], 5 * PIECE)
        .unwrap();
    store.sync_all().unwrap();
    drop(store);
    b.restart();
    wait_listed(&b, "g", "f.bin");
    assert_eq!(
        pieces(&b, "g/f.bin"),
        (15, 16),
        "piece 5 is checked at start and dropped:\n{}",
        b.log()
    );
    assert!(
        b.log().contains("no longer match their hash"),
        "{}",
        b.log()
    );
    cmp(&src, &b.path("g/f.bin"));
    let again: u64 = fetched(&b, "g/f.bin").iter().map(|c| c.2).sum();
    assert_eq!(again, 1, "only the lost piece is fetched again");
}

#[test]
fn a_full_disk_during_cp_fails_the_close_and_shares_nothing() {
    let (w, _homes, u) = world_with_small_homes(&[("alice", Some("48m")), ("bob", None)]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let big = w.path("big.bin");
    random_file(&big, 64 * MIB, 51);
    let out = Command::new("cp")
        .arg(&big)
        .arg(a.path("g"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "cp into a full home succeeded");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // Nothing staged is left, nothing is shared, and one line says so.
    let staging = u[0].home.join("store/staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    assert!(!a.path("g/big.bin").exists());
    w.fsd_ok(&u[1], &["list-files", "g"])
        .lines()
        .for_each(|l| assert!(!l.starts_with("big.bin"), "{l}"));
    let log = a.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("big.bin")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("No space left on device"), "{lines:?}");
    // The space is free again: the next read works.
    let small = w.path("small.bin");
    random_file(&small, 4 * MIB, 52);
    b.cp_in(&small, "g");
    wait_listed(&a, "g", "small.bin");
    cmp(&small, &a.path("g/small.bin"));
}

#[test]
fn a_piece_that_cannot_be_stored_fails_the_read_at_once() {
    let (w, homes, u) = world_with_small_homes(&[("alice", None), ("bob", Some("16m"))]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &["--read-timeout", "60"]);
    let src = w.path("z.bin");
    random_file(&src, 4 * MIB, 61);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "z.bin");
    let f = std::fs::File::open(b.path("g/z.bin")).unwrap();
    // Bob's disk fills up.
    let filler_path = homes[0].dir.join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    for chunk in [MIB, 4096] {
        while filler.write_all(&vec![1u8; chunk]).is_ok() {}
    }
    // A read left to wait for the piece would end at `--read-timeout`
    // with EIO; it fails with the store's error instead.
    let mut buf = vec![0u8; 4096];
    let err = f
        .read_exact_at(&mut buf, 0)
        .expect_err("nowhere to store it");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}\n{}", b.log());
    assert!(
        !b.log().contains("no peer served these pieces"),
        "the read waited for its timeout:\n{}",
        b.log()
    );
    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    // Room again: the same handle reads, over the same link.
    let mut all = Vec::new();
    (&f).read_to_end(&mut all).unwrap();
    assert!(all == std::fs::read(&src).unwrap(), "bytes differ");
    let joined = b
        .log()
        .lines()
        .filter(|l| l.contains("peer joined") && l.contains("z.bin"))
        .count();
    assert_eq!(joined, 1, "the link to alice dropped:\n{}", b.log());
}

/// `fsd download-file g NAME DEST` as `user`, run to its end.
fn download(w: &World, user: &User, name: &str, dest: &Path) -> std::process::Output {
    w.fsd(user, &["download-file", "g", name, dest.to_str().unwrap()])
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn stale_download_files_go_and_a_full_destination_keeps_nothing() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let _b = w.mount(&u[1], &[]);
    let six = w.path("six.bin");
    random_file(&six, 6 * MIB, 71);
    a.cp_in(&six, "g");
    let twelve = w.path("twelve.bin");
    random_file(&twelve, 12 * MIB, 72);
    a.cp_in(&twelve, "g");

    // A killed download's leftover fills most of the destination; a file
    // of another pattern stays.
    let dest = Tmpfs::mount(&w.path("dest"), "8m", false);
    std::fs::write(dest.dir.join(".six.bin.0123abcd.part"), vec![0u8; 3 * MIB]).unwrap();
    std::fs::write(dest.dir.join(".six.bin.part"), b"not ours").unwrap();
    let out = download(&w, &u[1], "six.bin", &dest.dir);
    assert!(out.status.success(), "{}", text(&out).1);
    cmp(&six, &dest.dir.join("six.bin"));
    assert_eq!(names_in(&dest.dir), [".six.bin.part", "six.bin"]);

    // No room for the next one: it fails and leaves nothing.
    let out = download(&w, &u[1], "twelve.bin", &dest.dir);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("not enough space"), "{stderr}");
    assert_eq!(names_in(&dest.dir), [".six.bin.part", "six.bin"]);
}

#[test]
fn a_download_is_resumed_after_a_restart() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &["--max-upload-rate", "2M"]);
    let mut b = w.mount(&u[1], &[]);
    let size = 12 * MIB;
    let src = w.path("slow.bin");
    random_file(&src, size, 81);
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "slow.bin");
    let out_dir = w.path("downloads");
    std::fs::create_dir_all(&out_dir).unwrap();
    let child = fsd_command(
        &w,
        &u[1],
        &["download-file", "g", "slow.bin", out_dir.to_str().unwrap()],
    )
    .spawn()
    .unwrap();
    let part = wait_for("a quarter downloaded", HANG_LIMIT, || {
        let shown = w.fsd_ok(&u[1], &["show-downloads"]);
        let pct: f64 = shown
            .lines()
            .find(|l| l.starts_with("[D] [g] slow.bin "))?
            .split_whitespace()
            .nth(3)?
            .trim_end_matches('%')
            .parse()
            .ok()?;
        (pct >= 25.0).then(|| names_in(&out_dir))
    });
    assert_eq!(part.len(), 1, "{part:?}");
    assert!(part[0].starts_with(".slow.bin.") && part[0].ends_with(".part"));
    b.kill9();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "download-file outlived its daemon");
    assert_eq!(names_in(&out_dir), part, "the leftover of the crash");

    b.restart();
    let shown = w.fsd_ok(&u[1], &["show-downloads"]);
    assert!(
        shown.lines().any(|l| l.contains("[g] slow.bin ")),
        "not listed: {shown}\n{}",
        b.log()
    );
    assert!(
        !names_in(&out_dir).contains(&part[0]),
        "the stale temporary file stayed"
    );
    wait_for("the resumed download", HANG_LIMIT, || {
        let shown = w.fsd_ok(&u[1], &["show-downloads"]);
        assert!(!shown.contains("[F]"), "{shown}\n{}", b.log());
        shown
            .lines()
            .any(|l| l.starts_with("[C] [g] slow.bin "))
            .then_some(())
    });
    cmp(&src, &out_dir.join("slow.bin"));
    assert_eq!(names_in(&out_dir), ["slow.bin"]);
    let again: u64 = fetched(&b, "g/slow.bin").iter().map(|c| c.2).sum();
    assert!(
        again < size as u64 / PIECE,
        "{again} pieces fetched again: the store's were not used"
    );
    assert!(b.log().contains("download resumed"), "{}", b.log());
    drop(a);
}

/// Reads through the daemon answer from the store's pages as they are
/// when the read comes: an open handle of a file twice the cache budget
/// reads its start, reads on to the end (which evicts the start), and,
/// with the mount's pages of the file dropped, reads the start again
/// through the same handle: fetched again, the same bytes, never the
/// zeros of a punched hole or a stale piece.
#[test]
fn an_open_handle_rereads_exact_bytes_the_cache_evicted_under_it() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &["--cache-size", "8M"]);
    let size = 16 * MIB;
    let src = w.path("clip.bin");
    random_file(&src, size, 23);
    let original = std::fs::read(&src).unwrap();
    a.cp_in(&src, "g");
    wait_listed(&b, "g", "clip.bin");

    let path = b.path("g/clip.bin");
    let mut f = std::fs::File::open(&path).unwrap();
    let head = 4 * MIB;
    let mut first = vec![0u8; head];
    f.read_exact(&mut first).expect("the start");
    assert!(first == original[..head], "the start differs");
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).expect("the rest");
    assert!(rest == original[head..], "the rest differs");
    assert!(
        b.log().contains("fsd::pieces::cache: evicted"),
        "the cache evicted nothing:\n{}",
        b.log()
    );
    let (held, _) = pieces(&b, "g/clip.bin");
    assert!(
        held < size as u64 / PIECE,
        "every piece is still held ({held}): nothing to fetch again"
    );

    fileshare_tests::drop_pages(&path);
    let mut again = vec![0u8; head];
    f.read_exact_at(&mut again, 0).expect("the start again");
    assert!(again == original[..head], "the start read again differs");
    let read: u64 = b
        .xattr("g/clip.bin", "user.fileshare.daemon_read_bytes")
        .parse()
        .expect("a byte count");
    assert!(
        read >= (size + head) as u64,
        "the daemon answered {read} bytes of reads"
    );
}
