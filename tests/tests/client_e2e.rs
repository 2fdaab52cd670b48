//! The client's whole life through the running daemon: upload-file in
//! place, download-file with show-downloads, stop-share, logout and login
//! again, `mount --daemon`, destinations that cannot be written, and the
//! shell. Real tracker, real daemons, real FUSE mounts.

use fileshare_tests::daemon::{alive, fsd_command, text, Detached, Tmpfs};
use fileshare_tests::mount::{is_mounted, wait_for};
use fileshare_tests::world::{User, World};
use fileshare_tests::{cmp, random_file, MIB};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `list-files g` as `user`: (name, peers online).
fn listed(w: &World, user: &User) -> Vec<(String, u32)> {
    w.fsd_ok(user, &["list-files", "g"])
        .lines()
        .filter_map(|l| {
            let mut f = l.split("  ");
            let name = f.next()?.to_string();
            let peers = f.nth(1)?.strip_prefix("peers=")?.parse().ok()?;
            Some((name, peers))
        })
        .collect()
}

fn wait_listing(w: &World, user: &User, what: &str, f: impl Fn(&[(String, u32)]) -> bool) {
    wait_for(what, Duration::from_secs(20), || {
        f(&listed(w, user)).then_some(())
    });
}

/// Stderr of a command that must fail, as its one line.
fn one_line_failure(out: &std::process::Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(!out.status.success(), "expected failure; stdout: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.trim_end().to_string()
}

#[test]
fn commands_that_need_the_daemon_say_how_to_start_it() {
    let (w, u) = World::network(&["alice"]);
    let f = w.path("x.bin");
    random_file(&f, 1000, 1);
    for args in [
        vec!["upload-file", f.to_str().unwrap(), "g"],
        vec!["download-file", "g", "x.bin", "/tmp"],
        vec!["show-downloads"],
        vec!["stop-share", "g", "x.bin"],
    ] {
        let out = w.fsd(&u[0], &args);
        assert_eq!(
            one_line_failure(&out),
            "fsd: the daemon is not running; start it with `fsd mount`",
            "{args:?}"
        );
    }
}

#[test]
fn upload_in_place_is_read_by_others_and_withdrawn_when_it_changes() {
    let (w, u) = World::network(&["alice", "bob"]);
    let ma = w.mount(&u[0], &[]);
    let mb = w.mount(&u[1], &[]);
    let src = w.path("in-place.bin");
    random_file(&src, 3 * MIB + 12345, 7);
    let out = w.fsd_ok(&u[0], &["upload-file", src.to_str().unwrap(), "g"]);
    assert!(out.contains("shared in-place.bin in g"), "{out}");
    // No copy: alice's store holds metadata only.
    let store_bytes: u64 = walk_size(&u[0].home.join("store"));
    assert!(store_bytes < MIB as u64, "store holds {store_bytes} bytes");
    cmp(&src, &mb.path("g/in-place.bin"));
    // Bob read it all, so he offers it too.
    wait_listing(&w, &u[1], "two holders online", |l| {
        l.iter().any(|(n, p)| n == "in-place.bin" && *p == 2)
    });

    // The user's file changes: alice stops offering it, and says so once.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&src)
        .unwrap()
        .write_all(b"changed")
        .unwrap();
    wait_listing(&w, &u[1], "only bob offers it", |l| {
        l.iter().any(|(n, p)| n == "in-place.bin" && *p == 1)
    });
    wait_for("the log line", Duration::from_secs(10), || {
        ma.log().contains("no longer sharing it").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ma.log().matches("no longer sharing it").count(), 1);
    drop((ma, mb));
}

fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let md = e.metadata().unwrap();
        if md.is_dir() {
            total += walk_size(&e.path());
        } else {
            total += md.len();
        }
    }
    total
}

#[test]
fn download_file_shows_progress_and_lands_whole() {
    let (w, u) = World::network(&["alice", "bob"]);
    // A slow seeder, so the download is seen while it runs.
    let _ma = w.mount(&u[0], &["--max-upload-rate", "4M"]);
    let _mb = w.mount(&u[1], &[]);
    let src = w.path("big.bin");
    random_file(&src, 12 * MIB + 3, 11);
    w.fsd_ok(&u[0], &["upload-file", src.to_str().unwrap(), "g"]);

    let out_dir = w.path("downloads");
    std::fs::create_dir_all(&out_dir).unwrap();
    let dest = out_dir.join("big.bin");
    let child = fsd_command(
        &w,
        &u[1],
        &["download-file", "g", "big.bin", out_dir.to_str().unwrap()],
    )
    .spawn()
    .unwrap();
    let line = wait_for("a [D] line", Duration::from_secs(20), || {
        let out = w.fsd_ok(&u[1], &["show-downloads"]);
        out.lines()
            .find(|l| l.starts_with("[D] [g] big.bin "))
            .map(str::to_string)
    });
    assert!(
        line.contains('%') && line.contains("/s") && line.contains("peer"),
        "{line}"
    );
    assert!(
        !dest.exists(),
        "the destination appeared before it was whole"
    );
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "download-file failed: {stderr}");
    assert!(stdout.contains("downloaded g/big.bin to"), "{stdout}");
    // Without a terminal: plain progress lines, no escape codes.
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    cmp(&src, &dest);
    let shown = w.fsd_ok(&u[1], &["show-downloads"]);
    assert!(
        shown.lines().any(|l| l.starts_with("[C] [g] big.bin 100%")),
        "{shown}"
    );
    // Only the destination is left, no temporary file.
    let names: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("big.bin")]);

    // A file path as DEST, a second time: now from bob's own store.
    let renamed = out_dir.join("copy.bin");
    w.fsd_ok(
        &u[1],
        &["download-file", "g", "big.bin", renamed.to_str().unwrap()],
    );
    cmp(&src, &renamed);
}

#[test]
fn stop_share_removes_the_file_from_other_listings() {
    let (w, u) = World::network(&["alice", "bob"]);
    let _ma = w.mount(&u[0], &[]);
    let mb = w.mount(&u[1], &[]);
    let src = w.path("s.bin");
    random_file(&src, MIB, 3);
    w.fsd_ok(&u[0], &["upload-file", src.to_str().unwrap(), "g"]);
    wait_listing(&w, &u[1], "s.bin listed", |l| {
        l.iter().any(|(n, _)| n == "s.bin")
    });
    let out = w.fsd_ok(&u[0], &["stop-share", "g", "s.bin"]);
    assert!(out.contains("stopped sharing s.bin in g"), "{out}");
    wait_listing(&w, &u[1], "s.bin gone", |l| {
        !l.iter().any(|(n, _)| n == "s.bin")
    });
    wait_for("s.bin gone from the mount", Duration::from_secs(10), || {
        (!mb.path("g/s.bin").exists()).then_some(())
    });
    // Stopping again is a clear error.
    let again = w.fsd(&u[0], &["stop-share", "g", "s.bin"]);
    one_line_failure(&again);
}

#[test]
fn logout_stops_the_daemon_and_the_next_mount_offers_files_again() {
    let (w, u) = World::network(&["alice", "bob"]);
    let mp = w.path("mnt-alice-detached");
    let (out, daemon) = Detached::start(&w, &u[0], &mp);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "mount --daemon: {stderr}\n{}",
        daemon.log()
    );
    assert!(stdout.contains("mounted at"), "{stdout}");
    assert!(is_mounted(&mp), "--daemon returned before the mount was up");
    let pid = daemon.pid().expect("pid file");
    assert!(alive(pid));
    let socket = u[0].home.join("control.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let _mb = w.mount(&u[1], &[]);
    let src = w.path("again.bin");
    random_file(&src, 2 * MIB + 1, 5);
    w.fsd_ok(&u[0], &["upload-file", src.to_str().unwrap(), "g"]);
    wait_listing(&w, &u[1], "again.bin online", |l| {
        l.iter().any(|(n, p)| n == "again.bin" && *p == 1)
    });

    let out = w.fsd_ok(&u[0], &["logout"]);
    assert!(out.contains("logged out alice"), "{out}");
    assert!(!is_mounted(&mp), "still mounted after logout");
    assert!(!alive(pid), "daemon still running after logout");
    assert!(!socket.exists(), "control socket left behind");
    wait_listing(&w, &u[1], "again.bin offline", |l| {
        l.iter().any(|(n, p)| n == "again.bin" && *p == 0)
    });

    w.fsd_ok(&u[0], &["login", "alice"]);
    let (out, daemon2) = Detached::start(&w, &u[0], &mp);
    assert!(out.status.success(), "{}", daemon2.log());
    wait_listing(&w, &u[1], "again.bin online again", |l| {
        l.iter().any(|(n, p)| n == "again.bin" && *p == 1)
    });
    let dest = w.path("again-copy.bin");
    w.fsd_ok(
        &u[1],
        &["download-file", "g", "again.bin", dest.to_str().unwrap()],
    );
    cmp(&src, &dest);

    // A second daemon for the same home is refused, in the foreground.
    let (out, _second) = Detached::start(&w, &u[0], &w.path("mnt-other"));
    let line = one_line_failure(&out);
    assert!(line.contains("already running"), "{line}");
    drop(daemon);
    drop(daemon2);
}

#[test]
fn unwritable_destinations_fail_clearly_and_leave_nothing() {
    let (w, u) = World::network(&["alice", "bob"]);
    let _ma = w.mount(&u[0], &[]);
    let _mb = w.mount(&u[1], &[]);
    let src = w.path("two-mib.bin");
    random_file(&src, 2 * MIB, 9);
    w.fsd_ok(&u[0], &["upload-file", src.to_str().unwrap(), "g"]);

    let ro = Tmpfs::mount(&w.path("ro"), "1m", true);
    let out = w.fsd(
        &u[1],
        &[
            "download-file",
            "g",
            "two-mib.bin",
            ro.dir.to_str().unwrap(),
        ],
    );
    let line = one_line_failure(&out);
    assert!(line.contains("Read-only file system"), "{line}");
    assert!(ro.entries().is_empty(), "{:?}", ro.entries());

    let full = Tmpfs::mount(&w.path("full"), "1m", false);
    let dest = full.dir.join("out.bin");
    let out = w.fsd(
        &u[1],
        &["download-file", "g", "two-mib.bin", dest.to_str().unwrap()],
    );
    let line = one_line_failure(&out);
    assert!(line.contains("not enough space"), "{line}");
    assert!(full.entries().is_empty(), "{:?}", full.entries());

    let out = w.fsd(
        &u[1],
        &[
            "download-file",
            "g",
            "no-such.bin",
            full.dir.to_str().unwrap(),
        ],
    );
    assert!(one_line_failure(&out).contains("no file no-such.bin in group g"));
}

#[test]
fn shell_takes_the_seed_lines() {
    let w = World::new();
    let home = w.path("home-carol");
    let mut child = Command::new(&w.fsd)
        .arg("--home")
        .arg(&home)
        .arg("--trackers")
        .arg(w.trackers_file())
        .arg("shell")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = "create_user carol s3cret\n\
                  login carol s3cret\n\
                  create_group g1\n\
                  list_groups\n\
                  bogus_command\n\
                  show_downloads\n\
                  list_files g1\n\
                  logout\n\
                  quit\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("logged in as carol"), "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("g1 ")), "{stdout}");
    assert!(stdout.contains("logged out carol"), "{stdout}");
    // The first contact with the tracker says once which key it
    // remembered; everything else on stderr is an error line.
    assert_eq!(stderr.matches("remembered tracker").count(), 1, "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("remembered tracker"))
        .collect();
    assert_eq!(
        errors,
        [
            "fsd: unknown command `bogus_command`; type `help` for the list",
            "fsd: the daemon is not running; start it with `fsd mount`",
        ],
        "{stderr}"
    );
    // Passwords never reach the history file.
    let history = std::fs::read_to_string(home.join("shell_history")).unwrap_or_default();
    assert!(!history.contains("s3cret"));
}
