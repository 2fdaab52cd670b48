//! Who may do what: another local user at the mount, members of two
//! groups sharing one file, homes that others could change.

use fileshare_tests::local_user::LocalUser;
use fileshare_tests::mount::wait_for;
use fileshare_tests::world::World;
use fileshare_tests::{cmp, random_file, MIB};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// `cp SRC DEST`, as a user shares a file.
fn cp(src: &std::path::Path, dest: &std::path::Path) {
    let out = std::process::Command::new("cp")
        .arg(src)
        .arg(dest)
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "cp {} {}: {}",
        src.display(),
        dest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn another_local_user_gets_eacces_everywhere_in_the_mount() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let src = w.path("secret.bin");
    random_file(&src, MIB, 7);
    cp(&src, &a.path("g/secret.bin"));
    // The test's own folders are open to everyone, so a refusal can only
    // come from the mount.
    std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let stranger = LocalUser::ensure();
    let outside = stranger.run("ls", &[w.dir.path().to_str().unwrap()]);
    assert!(
        outside.status.success(),
        "the stranger can list the test folder: {}",
        String::from_utf8_lossy(&outside.stderr)
    );
    let root = a.mountpoint.to_str().unwrap().to_string();
    for (cmd, path) in [
        ("ls", root.clone()),
        ("ls", format!("{root}/g")),
        ("cat", format!("{root}/g/secret.bin")),
        ("stat", format!("{root}/g/secret.bin")),
        ("mkdir", format!("{root}/stolen")),
    ] {
        let out = stranger.run(cmd, &[&path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "{cmd} {path} as another user: status {:?}, stderr {err}",
            out.status
        );
    }
    // The user who mounted still reads it.
    cmp(&src, &a.path("g/secret.bin"));
}

#[test]
fn a_file_shared_in_two_groups_is_read_by_members_of_both() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    w.group("g1", &alice, &[&bob]);
    w.group("g2", &alice, &[&carol]);
    let a = w.mount(&alice, &[]);
    let b = w.mount(&bob, &["--read-timeout", "15"]);
    let c = w.mount(&carol, &["--read-timeout", "15"]);
    let src = w.path("both.bin");
    random_file(&src, 3 * MIB, 11);
    cp(&src, &a.path("g1/both.bin"));
    cp(&src, &a.path("g2/both.bin"));
    for (m, g) in [(&c, "g2"), (&b, "g1")] {
        wait_for(
            &format!("both.bin listed in {g}"),
            Duration::from_secs(15),
            || m.path(&format!("{g}/both.bin")).exists().then_some(()),
        );
        cmp(&src, &m.path(&format!("{g}/both.bin")));
    }
}

#[test]
fn the_trackers_state_and_the_daemons_files_are_owner_only() {
    let (w, u) = World::network(&["alice"]);
    let a = w.mount(&u[0], &[]);
    let src = w.path("mine.bin");
    random_file(&src, MIB, 3);
    cp(&src, &a.path("g/mine.bin"));
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let data = w.tracker().data_dir();
    assert_eq!(mode(data), 0o700, "{}", data.display());
    for entry in std::fs::read_dir(data).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    // Every file of the daemon's home, the piece store included (but the
    // log this test harness writes there).
    let mut stack = vec![u[0].home.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && !p.ends_with("mount.log") {
                files += 1;
                assert_eq!(mode(&p) & 0o077, 0, "{} is open to others", p.display());
            }
        }
    }
    assert!(files > 3, "the home holds the session and the store");
}

/// A home directory another user owns, or that group or others may write,
/// is refused with a message that says why and what to do; nothing is
/// written into it.
#[test]
fn a_home_others_own_or_can_write_is_refused() {
    let w = World::new();
    let stranger = LocalUser::ensure();
    for (name, mode, owner, says) in [
        ("open", 0o777, None, "writable by group or others"),
        ("group", 0o770, None, "writable by group or others"),
        ("theirs", 0o700, Some(stranger.uid), "not to you"),
    ] {
        let home = w.path(&format!("home-{name}"));
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&home, Some(uid), None).unwrap();
        }
        let out = std::process::Command::new(&w.fsd)
            .arg("--home")
            .arg(&home)
            .arg("--trackers")
            .arg(w.trackers_file())
            .args(["login", "nobody"])
            .env("FILESHARE_PASSWORD", "pw")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run fsd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{name}: {err}");
        assert_eq!(
            std::fs::read_dir(&home).unwrap().count(),
            0,
            "{name}: written into"
        );
    }
}

/// The kernel itself keeps another user out of the mount (its root shows
/// mode 0700 and it checks every access against the modes it shows), so
/// what it has cached answers nobody else either: a `stat` right after
/// the owner's own, while the file's attributes are cached, is refused.
#[test]
fn another_user_is_refused_by_the_kernel_even_with_attributes_cached() {
    let (w, u) = World::network(&["alice"]);
    let a = w.mount(&u[0], &[]);
    let src = w.path("secret.bin");
    random_file(&src, MIB, 8);
    cp(&src, &a.path("g/secret.bin"));
    std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let stranger = LocalUser::ensure();
    let file = a.path("g/secret.bin");
    for round in 0..10 {
        // The owner's stat leaves the name and attributes cached.
        let mine = std::fs::metadata(&file).expect("the owner stats it");
        assert_eq!(mine.len(), MIB as u64);
        let out = stranger.run("stat", &[file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "round {round}: another user's stat right after the owner's: {}{err}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let root = std::fs::metadata(&a.mountpoint).unwrap();
    assert_eq!(
        root.permissions().mode() & 0o777,
        0o700,
        "the root is owner-only"
    );
}
