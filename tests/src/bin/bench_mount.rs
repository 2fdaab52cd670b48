//! Throughput of the mount: a 1 GiB file read cold through FUSE from one,
//! two and four seeders, the warm re-read, the time to the first 4 KiB of a
//! cold file, and the reading daemon's peak memory.
//!
//! Run through `scripts/bench.sh mount` (release build).

use fileshare_tests::mount::{wait_for, Mount};
use fileshare_tests::world::{User, World};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

fn size_mib() -> usize {
    std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Reads a file through the mount in 1 MiB reads; returns MB/s.
fn read_all(path: &Path) -> (f64, u64) {
    let start = Instant::now();
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    (total as f64 / secs / 1e6, total)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn wait_listed(m: &Mount, name: &str) {
    let p = m.path(&format!("g/{name}"));
    wait_for("file listed", Duration::from_secs(30), || {
        p.exists().then_some(())
    });
}

fn drop_caches() {
    // The seeders' page cache is part of the machine, not of FileShare; the
    // reader's pages are new either way. Dropping makes runs comparable.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

fn main() {
    let mib = size_mib();
    let w = World::new();
    let names = ["alice", "bob", "carol", "dave", "eve", "frank"];
    let users: Vec<User> = names.iter().map(|n| w.user(n)).collect();
    let rest: Vec<&User> = users[1..].iter().collect();
    w.group("g", &users[0], &rest);

    let src = w.path("big.bin");
    fileshare_tests::random_file(&src, mib << 20, 42);
    let a = w.mount(&users[0], &[]);
    let t = Instant::now();
    std::fs::copy(&src, a.path("g/big.bin")).expect("cp into the mount");
    let share_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&src).ok();
    println!(
        "bench=share   size_mib={mib} cp_into_mount_s={share_secs:.2} mb_s={:.0}",
        (mib << 20) as f64 / share_secs / 1e6
    );

    let b = w.mount(&users[1], &[]);
    wait_listed(&b, "big.bin");
    drop_caches();
    let (rate1, n) = read_all(&b.path("g/big.bin"));
    assert_eq!(n, (mib << 20) as u64);
    let rss_b = b.pid().map(peak_rss_mib).unwrap_or(0.0);
    println!("bench=cold    seeders=1 size_mib={mib} mb_s={rate1:.0}");
    let (warm, _) = read_all(&b.path("g/big.bin"));
    println!("bench=warm    size_mib={mib} mb_s={warm:.0}");
    println!("bench=memory  reader_peak_rss_mib={rss_b:.1}");

    let c = w.mount(&users[2], &[]);
    wait_for("bob seeding", Duration::from_secs(30), || {
        w.fsd_ok(&users[2], &["list-files", "g"])
            .contains("peers=2")
            .then_some(())
    });
    drop_caches();
    let (rate2, _) = read_all(&c.path("g/big.bin"));
    println!("bench=cold    seeders=2 size_mib={mib} mb_s={rate2:.0}");

    let d = w.mount(&users[3], &[]);
    wait_for("carol seeding", Duration::from_secs(30), || {
        w.fsd_ok(&users[3], &["list-files", "g"])
            .contains("peers=3")
            .then_some(())
    });
    let (_, _) = read_all(&d.path("g/big.bin"));
    let e = w.mount(&users[4], &[]);
    wait_for("dave seeding", Duration::from_secs(30), || {
        w.fsd_ok(&users[4], &["list-files", "g"])
            .contains("peers=4")
            .then_some(())
    });
    drop_caches();
    let (rate4, _) = read_all(&e.path("g/big.bin"));
    println!("bench=cold    seeders=4 size_mib={mib} mb_s={rate4:.0}");

    let f = w.mount(&users[5], &[]);
    wait_listed(&f, "big.bin");
    // Cold for the reader (it never saw the file); the seeders' page cache
    // is warm, as it is for a file others just read.
    let t = Instant::now();
    let mut file = std::fs::File::open(f.path("g/big.bin")).expect("open");
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut buf = [0u8; 4096];
    file.read_exact(&mut buf).expect("first 4 KiB");
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("bench=first4k open_ms={open_ms:.1} open_to_first_4k_ms={first_ms:.1}");
    drop(file);
    if std::env::var_os("BENCH_SHOW_LOG").is_some() {
        eprintln!("{}", f.log());
    }
    drop((a, b, c, d, e, f));
}
