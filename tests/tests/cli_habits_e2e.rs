//! The habits of a Linux tool: `fsd status` on one screen, shell
//! completions, the man page, the trackers file remembered from login,
//! download-file's progress to its last line, and the systemd user unit.

use fileshare_tests::daemon::{fsd_command, text};
use fileshare_tests::world::World;
use fileshare_tests::{random_file, reserve_port, MIB};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `fsd ARGS` with no home, trackers or password from the test's world.
fn fsd_bare(w: &World, args: &[&str]) -> Output {
    Command::new(&w.fsd)
        .args(args)
        .env_remove("FILESHARE_TRACKERS")
        .env_remove("FILESHARE_HOME")
        .stdin(Stdio::null())
        .output()
        .expect("run fsd")
}

/// A note on the test run's own stderr, past the harness's capture, so a
/// part of a test left out is never left out silently.
fn say(note: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "note: {note}");
}

fn ok(out: &Output, what: &str) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "{what} failed: {stderr}");
    stdout
}

#[test]
fn status_shows_mount_daemon_trackers_groups_and_files() {
    let (w, u) = World::network(&["alice", "bob"]);
    let m = w.mount(&u[0], &[]);
    let src = w.path("x.bin");
    random_file(&src, 3 * MIB, 5);
    w.fsd_ok(&u[0], &["upload-file", src.to_str().unwrap(), "g"]);
    let status = w.fsd_ok(&u[0], &["status"]);
    let pid = std::fs::read_to_string(u[0].home.join("fsd.pid")).unwrap();
    eprintln!("fsd status:\n{status}");
    let lines: Vec<&str> = status.lines().collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(
        has(&format!(
            "mounted    {} (user alice, daemon pid {})",
            m.mountpoint.display(),
            pid.trim()
        )),
        "{status}"
    );
    assert!(has("dashboard  http://127.0.0.1:"), "{status}");
    assert!(
        has(&format!("trackers   {}", w.trackers_file().display())),
        "{status}"
    );
    assert!(
        has(&format!("  {}  answers (", w.tracker().addr())),
        "{status}"
    );
    assert!(has("groups     g (owner, 2 members)"), "{status}");
    assert!(has("files      1 held here, 3.0 MiB"), "{status}");
    assert!(has("  g/x.bin  3.0 MiB  6/6 pieces  down "), "{status}");
    assert!(has("transfers  down "), "{status}");
    assert!(has("store      "), "{status}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("store      ") && l.contains("; cache 0 B of ")),
        "the cache budget and its use: {status}"
    );
    assert!(
        !status.contains("token="),
        "status never shows the token: {status}"
    );

    // No daemon: it says so, and still checks the trackers.
    let status = w.fsd_ok(&u[1], &["status"]);
    assert!(
        status.starts_with("mounted    no: the daemon is not running"),
        "{status}"
    );
    assert!(status.contains("logged in as bob"), "{status}");
    assert!(status.contains("  answers ("), "{status}");

    // A tracker that is down is named as such.
    let dead = reserve_port();
    let two = w.path("two-trackers.txt");
    let live = std::fs::read_to_string(w.trackers_file()).unwrap();
    std::fs::write(&two, format!("{live}\n127.0.0.1:{}\n", dead.get())).unwrap();
    let out = Command::new(&w.fsd)
        .arg("--home")
        .arg(&u[1].home)
        .arg("--trackers")
        .arg(&two)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let status = ok(&out, "status with a dead tracker");
    assert!(
        status.contains(&format!("  127.0.0.1:{}  does not answer", dead.get())),
        "{status}"
    );
    drop(m);
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let w = World::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&fsd_bare(&w, &["completions", shell]), shell);
        assert!(script.contains("download-file"), "{shell}: {script}");
        assert!(script.contains("completions"), "{shell}");
    }
    let bash = ok(&fsd_bare(&w, &["completions", "bash"]), "bash");
    let file = w.path("fsd.bash");
    std::fs::write(&file, &bash).unwrap();
    // It loads in bash and registers a completion for fsd.
    let out = Command::new("bash")
        .arg("--norc")
        .arg("-c")
        .arg(format!("source {} && complete -p fsd", file.display()))
        .output()
        .expect("run bash");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "bash: {stderr}");
    assert!(stdout.contains("fsd"), "{stdout}");
    assert!(ok(&fsd_bare(&w, &["completions", "zsh"]), "zsh").starts_with("#compdef fsd"));
    assert!(ok(&fsd_bare(&w, &["completions", "fish"]), "fish").contains("complete -c fsd"));
    let out = fsd_bare(&w, &["completions", "tcsh"]);
    assert!(!out.status.success(), "an unknown shell is refused");
}

#[test]
fn man_page_is_roff_that_man_renders() {
    let w = World::new();
    let roff = ok(&fsd_bare(&w, &["man"]), "man");
    assert!(roff.contains(".TH fsd 1"), "{roff}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(roff.contains(section), "{section} missing:\n{roff}");
    }
    assert!(roff.contains("download\\-file"), "{roff}");
    let page = w.path("fsd.1");
    std::fs::write(&page, &roff).unwrap();
    let out = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output();
    match out {
        Ok(out) => {
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "man -l: {stderr}");
            assert!(
                stdout.contains("SYNOPSIS") && stdout.contains("fsd"),
                "{stdout}"
            );
        }
        Err(e) => say(&format!(
            "not rendering the man page: `man` cannot run here ({e}); the roff was checked"
        )),
    }
}

#[test]
fn login_remembers_the_trackers_file_for_later_commands() {
    let w = World::new();
    let home = w.path("home-dave");
    let home_s = home.to_str().unwrap();
    let trackers = w.trackers_file().to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        Command::new(&w.fsd)
            .args(args)
            .env_remove("FILESHARE_TRACKERS")
            .env("FILESHARE_PASSWORD", "pw-dave")
            .stdin(Stdio::null())
            .output()
            .expect("run fsd")
    };
    ok(
        &run(&[
            "--home",
            home_s,
            "--trackers",
            &trackers,
            "create-user",
            "dave",
        ]),
        "create-user",
    );
    ok(
        &run(&["--home", home_s, "--trackers", &trackers, "login", "dave"]),
        "login",
    );
    let mode = std::fs::metadata(home.join("trackers.path")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // No --trackers from here on.
    ok(
        &run(&["--home", home_s, "create-group", "dg"]),
        "create-group",
    );
    let groups = ok(&run(&["--home", home_s, "list-groups"]), "list-groups");
    assert!(groups.contains("dg  owner=dave"), "{groups}");
    let status = ok(&run(&["--home", home_s, "status"]), "status");
    assert!(
        status.contains(&format!("trackers   {trackers}")),
        "{status}"
    );
    let out = run(&["--home", home_s, "logout"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "logout without --trackers: {stderr}");
    assert!(stdout.contains("logged out dave"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
    // And logging in again needs no --trackers either.
    ok(&run(&["--home", home_s, "login", "dave"]), "login again");
}

/// The progress lines of a plain (not terminal) download-file.
fn progress_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("% (")).collect()
}

#[test]
fn download_file_progress_ends_on_the_real_rate() {
    let (w, u) = World::network(&["alice", "bob"]);
    let _ma = w.mount(&u[0], &["--max-upload-rate", "4M"]);
    let _mb = w.mount(&u[1], &[]);
    let src = w.path("rate.bin");
    random_file(&src, 8 * MIB, 21);
    w.fsd_ok(&u[0], &["upload-file", src.to_str().unwrap(), "g"]);
    for (round, dest) in [(1, w.path("first.bin")), (2, w.path("second.bin"))] {
        let out = fsd_command(
            &w,
            &u[1],
            &["download-file", "g", "rate.bin", dest.to_str().unwrap()],
        )
        .output()
        .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "download {round}: {stderr}");
        let lines = progress_lines(&stderr);
        let last = lines
            .last()
            .unwrap_or_else(|| panic!("no progress: {stderr}"));
        assert!(last.contains("100.0% (8.0 MiB of 8.0 MiB)"), "{stderr}");
        assert!(
            !last.contains(" 0 B/s"),
            "download {round} ends on 0 B/s: {stderr}"
        );
        assert!(stdout.contains("(8.0 MiB in "), "{stdout}");
        assert!(stdout.trim_end().ends_with("/s)"), "{stdout}");
        fileshare_tests::cmp(&src, &dest);
    }
}

/// Whether a systemd user manager answers here, or why not.
fn user_manager() -> Result<(), String> {
    let out = Command::new("systemctl")
        .args(["--user", "is-system-running"])
        .output()
        .map_err(|e| format!("systemctl cannot run: {e}"))?;
    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match state.as_str() {
        "running" | "degraded" => Ok(()),
        _ => Err(format!(
            "`systemctl --user is-system-running` says {state:?} {err:?}"
        )),
    }
}

#[test]
fn systemd_user_unit_verifies_and_runs_where_a_user_manager_is() {
    let w = World::new();
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/fsd.service");
    let text_unit = std::fs::read_to_string(&unit).expect("contrib/fsd.service");
    assert!(text_unit.contains("ExecStart=/usr/local/bin/fsd mount %h/FileShare --daemon"));
    // The unit as installed, with this build's fsd where it would be.
    let dir = w.path("units");
    std::fs::create_dir_all(&dir).unwrap();
    let installed = dir.join("fsd.service");
    std::fs::write(
        &installed,
        text_unit.replace("/usr/local/bin/fsd", w.fsd.to_str().unwrap()),
    )
    .unwrap();
    let runtime = w.path("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(&installed)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .expect("systemd-analyze is missing: install systemd (scripts/test.sh does)");
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify: {stdout}{stderr}"
    );
    assert!(
        stderr.trim().is_empty() && stdout.trim().is_empty(),
        "systemd-analyze has remarks on the unit:\n{stdout}{stderr}"
    );

    if let Err(why) = user_manager() {
        say(&format!(
            "systemd_user_unit: verified, but NOT run under `systemd-run --user`: \
             no user manager here: {why}"
        ));
        return;
    }
    // Where a user manager runs: the unit's own command line, as a
    // transient forking service, mounts; stopping the service unmounts.
    let alice = w.user("alice");
    let mp = w.path("mnt-systemd");
    std::fs::create_dir_all(&mp).unwrap();
    let name = format!("fsd-test-{}", std::process::id());
    let out = Command::new("systemd-run")
        .args(["--user", "--collect", "--unit", &name])
        .args(["-p", "Type=forking", "-p", "KillMode=mixed"])
        .arg("-p")
        .arg(format!("PIDFile={}", alice.home.join("fsd.pid").display()))
        .arg(&w.fsd)
        .arg("--home")
        .arg(&alice.home)
        .arg("--trackers")
        .arg(w.trackers_file())
        .arg("mount")
        .arg(&mp)
        .args(["--daemon", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run systemd-run");
    let stop = || {
        let _ = Command::new("systemctl")
            .args(["--user", "stop", &name])
            .status();
    };
    if !out.status.success() {
        stop();
        panic!(
            "systemd-run --user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mounted = fileshare_tests::mount::is_mounted(&mp);
    stop();
    assert!(mounted, "the service did not mount {}", mp.display());
    fileshare_tests::mount::wait_for(
        "the service to unmount",
        std::time::Duration::from_secs(20),
        || (!fileshare_tests::mount::is_mounted(&mp)).then_some(()),
    );
}
