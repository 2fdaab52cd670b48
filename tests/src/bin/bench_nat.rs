//! Reads through each way daemons reach each other across home routers
//! (see `docs/reachability.md`): a file of `BENCH_MIB` MiB (64) read cold
//! through the mount from one seeder, in a routed internet of network
//! namespaces with nftables routers (`fileshare_tests::netns::nat`):
//!
//! - direct: seeder and reader on the public side;
//! - reverse: the seeder behind NAT, the reader public (the seeder dials);
//! - punched: both behind port-keeping NAT (TCP simultaneous open);
//! - relayed: both behind random-port NAT, through the tracker's relay
//!   (its rate limit raised out of the way), with the tracker's CPU
//!   seconds per GiB relayed.
//!
//! The links are veths: the figures are what the paths cost in CPU and
//! round trips, not an internet's bandwidth. Each line also says which
//! path `getfattr` reported, so a line is never credited to the wrong
//! path. Run through `scripts/bench.sh nat` (release build).

use fileshare_tests::cpu_secs;
use fileshare_tests::mount::{wait_for, Mount};
use fileshare_tests::netns::nat::{HomeSpec, Internet, Mapping, Nat};
use fileshare_tests::netns::Host;
use fileshare_tests::random_file;
use fileshare_tests::world::{User, World};
use std::io::Read;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn size_mib() -> usize {
    std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Where the seeder and the reader sit.
#[derive(Clone, Copy)]
enum Place {
    Public(usize),
    Home(usize),
}

struct Case {
    name: &'static str,
    homes: &'static [Nat],
    seeder: Place,
    reader: Place,
}

const CASES: &[Case] = &[
    Case {
        name: "direct",
        homes: &[],
        seeder: Place::Public(1),
        reader: Place::Public(2),
    },
    Case {
        name: "reverse",
        homes: &[Nat::Masquerade],
        seeder: Place::Home(0),
        reader: Place::Public(1),
    },
    Case {
        name: "punched",
        homes: &[Nat::Masquerade, Nat::Masquerade],
        seeder: Place::Home(0),
        reader: Place::Home(1),
    },
    Case {
        name: "relayed",
        homes: &[Nat::Random, Nat::Random],
        seeder: Place::Home(0),
        reader: Place::Home(1),
    },
];

fn host(net: &Internet, p: Place) -> Host {
    match p {
        Place::Public(i) => net.public(i).clone(),
        Place::Home(k) => net.home_host(k, 0).clone(),
    }
}

fn mount(w: &World, net: &Internet, h: &Host, u: &User) -> Mount {
    let m = w.mount_on(h, u, &[]);
    net.track_mount(&m.mountpoint);
    m
}

fn run(case: &Case, size: usize) {
    let homes: Vec<HomeSpec> = (case.homes.iter())
        .map(|&nat| HomeSpec {
            hosts: 1,
            nat,
            mapping: Mapping::None,
        })
        .collect();
    let net = Internet::new(3, &homes);
    // The relay's per-user rate out of the way: its cost is measured.
    let w = World::on_with_args(net.public(0), &["--relay-rate", "100000000000"]);
    let (owner, reader_user) = (w.user("seed"), w.user("read"));
    w.group("g", &owner, &[&reader_user]);
    let seeder = mount(&w, &net, &host(&net, case.seeder), &owner);
    let reader = mount(&w, &net, &host(&net, case.reader), &reader_user);
    let src = w.path("n.bin");
    let data = random_file(&src, size, 91);
    seeder.cp_in(&src, "g");
    let path = reader.path("g/n.bin");
    wait_for("the file listed", Duration::from_secs(30), || {
        path.exists().then_some(())
    });
    // Both daemons announced and were probed: the tracker's view settles.
    std::thread::sleep(Duration::from_secs(4));
    let tracker_pid = w.tracker().pid().expect("tracker pid").to_string();
    // The first MiB pays for opening the path (a failed punch takes its
    // window before the relay); the rest is the path's rate.
    let start = Instant::now();
    let mut f = std::fs::File::open(&path).expect("open");
    let mut got = vec![0u8; MIB];
    f.read_exact(&mut got).expect("read through the mount");
    let first = start.elapsed().as_secs_f64();
    let cpu0 = cpu_secs(&tracker_pid);
    let rest_start = Instant::now();
    f.read_to_end(&mut got).expect("read through the mount");
    let secs = rest_start.elapsed().as_secs_f64();
    let cpu = cpu_secs(&tracker_pid) - cpu0;
    assert!(got == data, "{}: wrong bytes", case.name);
    let paths = reader.xattr("g/n.bin", "user.fileshare.paths");
    let rest = (size - MIB) as f64;
    let gib = rest / (1u64 << 30) as f64;
    println!(
        "nat {:<8} first MiB in {first:.2} s, then {} MiB at {:.1} MB/s; tracker CPU {:.2} s/GiB  (getfattr: {paths})",
        case.name,
        size / MIB - 1,
        rest / secs / 1e6,
        cpu / gib,
    );
}

fn main() {
    let size = size_mib() * MIB;
    let only = std::env::var("BENCH_NAT_CASES").ok();
    for case in CASES {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|c| c == case.name))
        {
            continue;
        }
        run(case, size);
    }
}
