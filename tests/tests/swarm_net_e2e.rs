//! Readers of one file on a shaped network, with no rate flag on any
//! daemon: each daemon runs in a network namespace of its own, its uplink
//! shaped by `tbf`, and schedules its uploads from what it measures. The
//! source must send each piece about once while the readers trade the
//! rest. Counts bytes, never times (the timing targets live in
//! `bench_swarm`, `BENCH_SHAPE=net`).

use fileshare_tests::mount::Mount;
use fileshare_tests::netns::{Lan, Shape};
use fileshare_tests::random_file;
use fileshare_tests::swarm::read_together;
use fileshare_tests::world::{User, World};

const MIB: usize = 1 << 20;

#[test]
fn an_unflagged_source_on_a_shaped_link_sends_each_piece_about_once() {
    // Host 0: the tracker; host 1: the source; hosts 2..6: four readers.
    let lan = Lan::new(6);
    let w = World::on(lan.host(0));
    let names = ["src", "r1", "r2", "r3", "r4"];
    let users: Vec<User> = names.iter().map(|n| w.user(n)).collect();
    let (owner, rest) = users.split_first().unwrap();
    w.group("g", owner, &rest.iter().collect::<Vec<_>>());
    let mount = |i: usize, u: &User| {
        lan.shape(i, Shape::rate(4_000_000));
        let m = w.mount_on(lan.host(i), u, &[]);
        lan.track_mount(&m.mountpoint);
        m
    };
    let source = mount(1, owner);
    let size = 8 * MIB;
    let src = w.path("s.bin");
    let data = random_file(&src, size, 33);
    std::fs::copy(&src, source.path("g/s.bin")).expect("cp into the mount");
    let readers: Vec<Mount> = (rest.iter().enumerate())
        .map(|(i, u)| mount(i + 2, u))
        .collect();
    // One server alone would send the file four times. The source measures
    // its uplink, serves every piece once before any twice and leaves the
    // rest to the readers' trading.
    let copies = read_together(&source, &readers, "g/s.bin", &data);
    eprintln!("the source sent {copies:.2} copies");
    assert!(
        copies <= 1.5,
        "the source sent {copies:.2} copies of the file\n{}",
        source.log()
    );
}
