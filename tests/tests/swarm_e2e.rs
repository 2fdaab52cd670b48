//! Several readers of one file at once, through their mounts: the source
//! spreads distinct pieces and the readers trade the rest. Counts bytes,
//! never times (the timing targets live in `bench_swarm`).

use fileshare_tests::mount::{fetched, Mount};
use fileshare_tests::swarm::read_together;
use fileshare_tests::world::{User, World};
use fileshare_tests::{random_file, wait_for};
use std::time::Duration;

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

/// A file's reader learns from its linked peers of the others (peer
/// exchange), and reads from both holders though a Locate hands out one.
///
/// A reader asks its tracker again every quarter second while it needs
/// pieces, and each answer is one holder drawn at random: one whose
/// tracker named the other holder before any exchange update did shows
/// nothing either way, so fresh readers are tried, up to [`ATTEMPTS`]; with
/// exchange broken every one fails.
#[test]
fn a_reader_fetches_from_a_peer_it_heard_of_only_by_exchange() {
    const ATTEMPTS: usize = 6;
    let w = World::with_tracker_args(&["--locate-peers", "1"]);
    let names: Vec<String> = ["src", "r1"]
        .into_iter()
        .map(String::from)
        .chain((0..ATTEMPTS).map(|i| format!("n{i}")))
        .collect();
    let users: Vec<User> = names.iter().map(|n| w.user(n)).collect();
    let (owner, rest) = users.split_first().unwrap();
    w.group("g", owner, &rest.iter().collect::<Vec<_>>());
    // Slow enough that a later reader still needs pieces when the peer
    // it heard of is linked.
    let source = w.mount(owner, &["--max-upload-rate", "2M"]);
    let src = w.path("s.bin");
    let data = random_file(&src, 8 * MIB, 31);
    std::fs::copy(&src, source.path("g/s.bin")).expect("cp into the mount");
    // The first reader gets the source, the only holder.
    let first = w.mount(&rest[0], &["--max-upload-rate", "2M"]);
    wait_listed(&first, "g/s.bin");
    assert!(std::fs::read(first.path("g/s.bin")).unwrap() == data);
    // Each later one is handed one of the two: the other it may hear of
    // from it.
    let mut tried = Vec::new();
    for user in &rest[1..] {
        let reader = w.mount(user, &[]);
        wait_listed(&reader, "g/s.bin");
        assert!(std::fs::read(reader.path("g/s.bin")).unwrap() == data);
        let exchange = reader.xattr("g/s.bin", "user.fileshare.exchange");
        let field = |k: &str| -> u64 {
            (exchange.split(' '))
                .find_map(|kv| kv.strip_prefix(k)?.parse().ok())
                .unwrap_or(0)
        };
        let fetched = fetched(&reader, "g/s.bin");
        // Linking the peer heard of races the tracker's next answer, which
        // may name it first: learning it by exchange is what is certain.
        if field("learned=") >= 1 {
            assert!(
                fetched.iter().filter(|c| c.1 > 0).count() == 2,
                "{fetched:?}"
            );
            return;
        }
        tried.push(format!("{exchange}; fetched {fetched:?}"));
    }
    panic!(
        "no reader of {ATTEMPTS} learned of a peer by exchange:\n{}\n{}",
        tried.join("\n"),
        source.log()
    );
}

/// More holders than a reader's `--max-peers-per-file`: it never has more
/// links to the file open than that.
#[test]
fn a_readers_links_to_a_file_stay_within_its_budget() {
    let w = World::new();
    let names = ["src", "h1", "h2", "h3", "r"];
    let users: Vec<User> = names.iter().map(|n| w.user(n)).collect();
    let (owner, rest) = users.split_first().unwrap();
    w.group("g", owner, &rest.iter().collect::<Vec<_>>());
    let rate = ["--max-upload-rate", "4M"];
    let source = w.mount(owner, &rate);
    let src = w.path("s.bin");
    let data = random_file(&src, 8 * MIB, 32);
    std::fs::copy(&src, source.path("g/s.bin")).expect("cp into the mount");
    // Three more holders, each reading the whole file.
    let holders: Vec<Mount> = (rest[..3].iter())
        .map(|u| {
            let m = w.mount(u, &rate);
            wait_listed(&m, "g/s.bin");
            assert!(std::fs::read(m.path("g/s.bin")).unwrap() == data);
            m
        })
        .collect();
    let reader = w.mount(&rest[3], &["--max-peers-per-file", "2"]);
    wait_listed(&reader, "g/s.bin");
    assert!(std::fs::read(reader.path("g/s.bin")).unwrap() == data);
    let links = reader.xattr("g/s.bin", "user.fileshare.links");
    let peak: usize = (links.split(' '))
        .find_map(|kv| kv.strip_prefix("peak=")?.parse().ok())
        .expect("a peak");
    let fetched = fetched(&reader, "g/s.bin");
    assert!(
        peak == 2,
        "links {links} with a budget of 2; fetched {fetched:?}\n{}",
        reader.log()
    );
    assert!(
        fetched.iter().filter(|c| c.1 > 0).count() >= 2,
        "{fetched:?}"
    );
    drop(holders);
}

fn wait_listed(m: &Mount, rel: &str) {
    let p = m.path(rel);
    wait_for("the file listed", Duration::from_secs(15), || {
        p.exists().then_some(())
    });
}
