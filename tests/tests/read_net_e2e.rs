//! A lone reader of a file held by several seeders on slow uplinks: each
//! daemon runs in a network namespace of its own, each seeder's uplink
//! shaped by `tbf`, no rate flag on any daemon. The reader must pull from
//! every seeder about evenly, and get each piece about once. Counts bytes,
//! never times (the rate is measured by `bench_mount`'s shaped case).

use fileshare_tests::mount::{fetched, wait_for, Mount};
use fileshare_tests::netns::{Lan, Shape};
use fileshare_tests::random_file;
use fileshare_tests::world::{User, World};
use std::time::Duration;

const MIB: usize = 1 << 20;

#[test]
fn a_lone_reader_pulls_evenly_from_four_shaped_seeders() {
    // Host 0: the tracker; hosts 1 to 4: the seeders; host 5: the reader.
    let lan = Lan::new(6);
    let w = World::on(lan.host(0));
    let names = ["s1", "s2", "s3", "s4", "reader"];
    let users: Vec<User> = names.iter().map(|n| w.user(n)).collect();
    let (owner, rest) = users.split_first().unwrap();
    w.group("g", owner, &rest.iter().collect::<Vec<_>>());
    let mount = |i: usize| {
        let m = w.mount_on(lan.host(i + 1), &users[i], &[]);
        lan.track_mount(&m.mountpoint);
        m
    };
    let seeders: Vec<Mount> = (0..4).map(mount).collect();
    let size = 16 * MIB;
    let src = w.path("f.bin");
    let data = random_file(&src, size, 61);
    seeders[0].cp_in(&src, "g");
    // The other seeders fetch the file over the unshaped bridge.
    for s in &seeders[1..] {
        let p = s.path("g/f.bin");
        wait_for("the file listed", Duration::from_secs(15), || {
            p.exists().then_some(())
        });
        assert!(
            std::fs::read(&p).expect("read") == data,
            "a seeder got wrong bytes"
        );
    }
    let reader = mount(4);
    wait_for("four seeders", Duration::from_secs(15), || {
        w.fsd_ok(&users[4], &["list-files", "g"])
            .lines()
            .any(|l| l.contains("f.bin") && l.contains("peers=4"))
            .then_some(())
    });
    for i in 1..=4 {
        lan.shape(i, Shape::rate(4_000_000));
    }
    // The seeders' trading among themselves is over when the reader comes.
    std::thread::sleep(Duration::from_secs(2));

    let got = std::fs::read(reader.path("g/f.bin")).expect("read through the mount");
    assert!(got == data, "wrong bytes");

    let from = fetched(&reader, "g/f.bin");
    let duplicates: u64 = (reader.xattr("g/f.bin", "user.fileshare.duplicates").trim())
        .parse()
        .expect("duplicate bytes");
    eprintln!("fetched {from:?}, duplicates {duplicates}");
    let log = || reader.log();
    assert!(
        duplicates * 20 < size as u64,
        "{duplicates} bytes arrived twice (5% of the file is {})\n{}",
        size / 20,
        log()
    );
    // Each seeder's fair share is a quarter; a reader that drains one
    // (or leaves one idle) fails here.
    assert_eq!(from.len(), 4, "not every seeder sent something: {from:?}");
    let total: u64 = from.iter().map(|c| c.1).sum();
    assert!(total >= size as u64, "{total} bytes fetched of {size}");
    for (addr, bytes, ..) in &from {
        let share = *bytes as f64 / size as f64;
        assert!(
            (0.15..=0.35).contains(&share),
            "{addr} sent {:.0}% of the file (a fair share is 25%): {from:?}\n{}",
            share * 100.0,
            log()
        );
    }
}
