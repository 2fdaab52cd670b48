//! The piece store under pressure, through real mounts: pieces lost in a
//! crash fetched again, never served.

use fileshare_tests::mount::{fetched, wait_for, Mount};
use fileshare_tests::world::World;
use fileshare_tests::{cmp, random_file, MIB};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PIECE: u64 = 512 * 1024;

fn cp_in(src: &Path, m: &Mount, group: &str) {
    let out = Command::new("cp")
        .arg(src)
        .arg(m.path(group))
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "cp into the mount failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
}

/// Waits until `m` lists `group/name`.
fn wait_listed(m: &Mount, group: &str, name: &str) {
    let path = m.path(&format!("{group}/{name}"));
    wait_for(
        &format!("{} listed", path.display()),
        Duration::from_secs(15),
        || path.exists().then_some(()),
    );
}

/// `user.fileshare.pieces` as (held, total).
fn pieces(m: &Mount, rel: &str) -> (u64, u64) {
    let v = m.xattr(rel, "user.fileshare.pieces");
    let (a, b) = v.split_once('/').expect("held/total");
    (a.parse().unwrap(), b.parse().unwrap())
}

/// The store entry of a file, by the id the mount shows.
fn entry_of(m: &Mount, rel: &str) -> PathBuf {
    m.home.join("store").join(m.xattr(rel, "user.fileshare.id"))
}

#[test]
fn a_piece_lost_in_a_crash_is_fetched_again_never_served_wrong() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let mut b = w.mount(&u[1], &[]);
    let size = 8 * MIB;
    let src = w.path("f.bin");
    random_file(&src, size, 41);
    cp_in(&src, &a, "g");
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
