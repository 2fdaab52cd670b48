//! Who may do what: another local user at the mount, members of two
//! groups sharing one file.

use fileshare_tests::local_user::LocalUser;
use fileshare_tests::mount::wait_for;
use fileshare_tests::world::World;
use fileshare_tests::{cmp, random_file, MIB};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn another_local_user_gets_eacces_everywhere_in_the_mount() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let src = w.path("secret.bin");
    random_file(&src, MIB, 7);
    std::fs::copy(&src, a.path("g/secret.bin")).expect("cp into the mount");
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
    std::fs::copy(&src, a.path("g1/both.bin")).expect("share in g1");
    std::fs::copy(&src, a.path("g2/both.bin")).expect("share in g2");
    for (m, g) in [(&c, "g2"), (&b, "g1")] {
        wait_for(
            &format!("both.bin listed in {g}"),
            Duration::from_secs(15),
            || m.path(&format!("{g}/both.bin")).exists().then_some(()),
        );
        cmp(&src, &m.path(&format!("{g}/both.bin")));
    }
}
