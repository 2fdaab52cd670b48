//! The Debian package as a user gets it: built by `scripts/package.sh` from
//! the binaries the tests run, installed into this machine with `dpkg -i`,
//! checked where a user and an operator look (the programs on PATH, the
//! man pages, the completions, both units verified, the tracker's unit
//! scored by `systemd-analyze security`), the tracker run as its unit runs
//! it, then purged with nothing of it left behind.

use fileshare_tests::daemon::{alive, text};
use fileshare_tests::{bin, reserve_port, wait_until};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const PACKAGE: &str = "fileshare";
/// Where the programs of the package are found, and nothing built here.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
const TRACKER_UNIT: &str = "/usr/lib/systemd/system/fileshare-tracker@.service";
const USER_UNIT: &str = "/usr/lib/systemd/user/fsd.service";

/// A note on the test run's own stderr, past the harness's capture, so a
/// test left out is never left out silently.
fn say(note: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "note: {note}");
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, panics with its output unless it succeeds; its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}{stderr}",
        out.status
    );
    stdout
}

/// An installed program, found as a user's shell finds it.
fn installed(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", SYSTEM_PATH);
    cmd
}

/// Whether dpkg knows the package as installed (or half so).
fn is_installed() -> bool {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", PACKAGE]));
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    out.status.success() && !status.ends_with(" not-installed")
}

/// The package, installed for as long as this lives: purged on drop, the
/// test passed or not.
struct Installed;

impl Installed {
    /// Runs `dpkg -i deb`; armed before, so a half-done install goes too.
    fn install(deb: &Path) -> Installed {
        let guard = Installed;
        ok(Command::new("dpkg")
            .arg("-i")
            .arg(deb)
            .env("DEBIAN_FRONTEND", "noninteractive"));
        guard
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let out = run(Command::new("dpkg")
            .args(["--purge", PACKAGE])
            .env("DEBIAN_FRONTEND", "noninteractive"));
        if !out.status.success() {
            let (stdout, stderr) = text(&out);
            say(&format!(
                "`dpkg --purge {PACKAGE}` failed: {stdout}{stderr}; remove it by hand"
            ));
        }
    }
}

/// The installed tracker, run as its unit runs it (standard input
/// /dev/null); killed by PID on drop if the test ends before it does.
struct UnitTracker(Child);

impl Drop for UnitTracker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The paths a .deb holds, absolute (`/usr`, `/usr/bin/fsd`, ...).
fn paths_in(deb: &Path) -> BTreeSet<PathBuf> {
    let listing = ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| Path::new("/").join(p.trim_start_matches("./").trim_end_matches('/')))
        .collect()
}

/// The `systemd-analyze security` verdict of a unit file: its exposure
/// (0 to 10) and the word for it.
fn exposure(unit: &str) -> (f64, String) {
    let out = ok(Command::new("systemd-analyze").args(["security", "--offline=yes", unit]));
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{out}"));
    let verdict = line.rsplit(':').next().unwrap_or_default();
    let mut words = verdict.split_whitespace();
    let score = words
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    (score, words.next().unwrap_or_default().to_string())
}

#[test]
fn deb_installs_both_programs_their_docs_and_units_and_purges_clean() {
    if let Err(e) = Command::new("dpkg").arg("--version").output() {
        say(&format!(
            "package_e2e: SKIPPED: no dpkg on this machine ({e}): the Debian package is not checked"
        ));
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "installing the package needs root"
    );
    assert!(
        run(Command::new("cargo").args(["deb", "--version"]))
            .status
            .success(),
        "cargo-deb is missing: scripts/lib/ensure-deps.sh installs it"
    );
    // One run at a time on this machine: they install the same package.
    let lock = std::fs::File::create(std::env::temp_dir().join("fileshare-package-e2e.lock"))
        .expect("create the lock file");
    lock.lock().expect("lock the package test");
    assert!(
        !is_installed(),
        "{PACKAGE} is installed on this machine already: `dpkg --purge {PACKAGE}` first \
         (this test installs and removes it)"
    );

    // The package of the binaries the other tests run: no build of its own.
    let fsd = bin("fsd");
    let profile = match fsd.parent().and_then(Path::file_name) {
        Some(dir) if dir == "debug" => "dev".to_string(),
        Some(dir) => dir.to_string_lossy().into_owned(),
        None => panic!("no profile directory above {}", fsd.display()),
    };
    let out_dir = tempfile::tempdir().expect("temp dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let made = ok(Command::new(root.join("scripts/package.sh"))
        .args(["--profile", &profile, "--no-build", "--fast", "--output"])
        .arg(out_dir.path()));
    let deb = PathBuf::from(made.lines().last().unwrap_or_default());
    assert!(deb.is_file(), "package.sh made no .deb: {made}");
    let paths = paths_in(&deb);
    let new: Vec<&PathBuf> = paths.iter().filter(|p| !p.exists()).collect();
    for p in [
        "/usr/bin/fsd",
        "/usr/bin/fileshare-tracker",
        "/usr/share/man/man1/fsd.1.gz",
        "/usr/share/man/man1/fileshare-tracker.1.gz",
        "/usr/share/bash-completion/completions/fsd",
        "/usr/share/zsh/vendor-completions/_fsd",
        "/usr/share/fish/vendor_completions.d/fsd.fish",
        USER_UNIT,
        TRACKER_UNIT,
        "/etc/fileshare/trackers.txt",
    ] {
        assert!(paths.contains(Path::new(p)), "the package lacks {p}");
        assert!(!Path::new(p).exists(), "{p} is on this machine already");
    }

    let guard = Installed::install(&deb);

    let version = format!("{}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        ok(installed("fsd").arg("--version")),
        format!("fsd {version}")
    );
    assert_eq!(
        ok(installed("fileshare-tracker").arg("--version")),
        format!("fileshare-tracker {version}")
    );
    for (page, says) in [("fsd", "create-user"), ("fileshare-tracker", "--data-dir")] {
        let file = format!("/usr/share/man/man1/{page}.1.gz");
        assert!(
            Path::new(&file).is_file(),
            "{file} is not installed: does a path-exclude in /etc/dpkg/dpkg.cfg.d drop man pages?"
        );
        let at = ok(installed("man").args(["-w", page]));
        assert_eq!(at.trim(), file);
        let shown = ok(installed("man").arg(page).env("MANPAGER", "cat"));
        assert!(shown.contains(says), "man {page} lacks {says}:\n{shown}");
    }
    // Completions as bash-completion loads them.
    let complete = ok(installed("bash").args([
        "-c",
        ". /usr/share/bash-completion/completions/fsd && complete -p fsd",
    ]));
    assert!(complete.contains(" fsd"), "{complete}");
    for file in [
        "/usr/share/zsh/vendor-completions/_fsd",
        "/usr/share/fish/vendor_completions.d/fsd.fish",
    ] {
        let script = std::fs::read_to_string(file).expect("read the completions");
        assert!(script.contains("create-user"), "{file}: {script}");
    }

    // Both units verify with no remark, against the programs installed.
    let runtime = tempfile::tempdir().expect("temp dir");
    for (scope, unit) in [("--system", TRACKER_UNIT), ("--user", USER_UNIT)] {
        let out = run(Command::new("systemd-analyze")
            .args([scope, "verify", unit])
            .env("XDG_RUNTIME_DIR", runtime.path()));
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
            "systemd-analyze {scope} verify {unit}:\n{stdout}{stderr}"
        );
    }
    let user_unit = std::fs::read_to_string(USER_UNIT).expect("read the user unit");
    assert!(
        user_unit.contains("\nExecStart=/usr/bin/fsd mount %h/FileShare --daemon\n"),
        "{user_unit}"
    );
    let (score, word) = exposure(TRACKER_UNIT);
    say(&format!(
        "package_e2e: systemd-analyze security of the tracker's unit: {score} {word}"
    ));
    assert!(
        score < 4.0 && (word == "OK" || word == "SAFE"),
        "the tracker's unit is exposed: {score} {word}"
    );

    tracker_runs_as_its_unit_runs_it();

    drop(guard);
    assert!(!is_installed(), "{PACKAGE} still installed after purge");
    let left: Vec<&&PathBuf> = new.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "left behind by the purge: {left:?}");
}

/// The unit's command line, from its ExecStart, with stdin at EOF as
/// systemd gives it: the tracker keeps serving past the end of its input,
/// and SIGTERM stops it cleanly (exit status 0).
fn tracker_runs_as_its_unit_runs_it() {
    let unit = std::fs::read_to_string(TRACKER_UNIT).expect("read the tracker's unit");
    assert!(
        unit.contains(
            "\nExecStart=/usr/bin/fileshare-tracker /etc/fileshare/trackers.txt %i \
             --data-dir %S/fileshare-tracker/%i\n"
        ),
        "{unit}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let port = reserve_port();
    let addr = format!("127.0.0.1:{}", port.get());
    let trackers = dir.path().join("trackers.txt");
    std::fs::write(&trackers, format!("{addr}\n")).expect("write the trackers file");
    let log = std::fs::File::create(dir.path().join("tracker.log")).expect("create the log");
    let child = installed("/usr/bin/fileshare-tracker")
        .arg(&trackers)
        .arg("1")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup the log"))
        .stderr(log)
        .spawn()
        .expect("start the installed tracker");
    let mut tracker = UnitTracker(child);
    let pid = tracker.0.id();
    let log = || std::fs::read_to_string(dir.path().join("tracker.log")).unwrap_or_default();
    wait_until(
        "the installed tracker to listen",
        Duration::from_secs(20),
        || {
            assert!(alive(pid), "the tracker exited:\n{}", log());
            std::net::TcpStream::connect(&addr).is_ok()
        },
    );
    // Its stdin thread has read the end of its input and ended...
    wait_until(
        "the tracker to read its stdin's end",
        Duration::from_secs(20),
        || {
            !std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("list the tracker's threads")
                .filter_map(Result::ok)
                .any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "stdin")
                })
        },
    );
    // ...and the tracker serves on: the installed fsd signs a user up.
    let home = dir.path().join("home");
    ok(installed("fsd")
        .arg("--home")
        .arg(&home)
        .arg("--trackers")
        .arg(&trackers)
        .args(["create-user", "alice"])
        .env("FILESHARE_PASSWORD", "pw-alice"));
    let pid_t = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: kill on a child of this process, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid_t, libc::SIGTERM) }, 0);
    let status = fileshare_tests::wait_for(
        "the tracker to stop on SIGTERM",
        Duration::from_secs(30),
        || tracker.0.try_wait().expect("wait for the tracker"),
    );
    assert!(
        status.success(),
        "SIGTERM did not stop the tracker cleanly: {status}\n{}",
        log()
    );
}
