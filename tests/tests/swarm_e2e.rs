//! Several readers of one file at once, through their mounts: the source
//! spreads distinct pieces and the readers trade the rest. Counts bytes,
//! never times (the timing targets live in `bench_swarm`).

use fileshare_tests::mount::Mount;
use fileshare_tests::random_file;
use fileshare_tests::swarm::read_together;
use fileshare_tests::world::{User, World};

const MIB: usize = 1 << 20;

#[test]
fn a_rate_limited_source_sends_each_piece_about_once() {
    let w = World::new();
    let names = ["src", "r1", "r2", "r3", "r4", "r5"];
    let users: Vec<User> = names.iter().map(|n| w.user(n)).collect();
    let (owner, rest) = users.split_first().unwrap();
    w.group("g", owner, &rest.iter().collect::<Vec<_>>());
    // The source is the bottleneck by far, even for debug builds on a busy
    // machine: then it always has a never-sent piece to serve instead of a
    // second copy.
    let source = w.mount(owner, &["--max-upload-rate", "2M"]);
    let size = 8 * MIB;
    let src = w.path("s.bin");
    let data = random_file(&src, size, 21);
    std::fs::copy(&src, source.path("g/s.bin")).expect("cp into the mount");
    let readers: Vec<Mount> = (rest.iter())
        .map(|u| w.mount(u, &["--max-upload-rate", "16M"]))
        .collect();
    // One server alone would send the file five times; a swarm whose
    // source serves every piece once before any twice sends it about once
    // (duplicates come only from readers not linked to each other yet).
    let copies = read_together(&source, &readers, "g/s.bin", &data);
    eprintln!("the source sent {copies:.2} copies");
    assert!(
        copies < 1.5,
        "the source sent {copies:.2} copies of the file\n{}",
        source.log()
    );
}
