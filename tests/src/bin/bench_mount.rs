//! Throughput of the mount: a 1 GiB file read cold through FUSE from one,
//! two and four seeders, the warm re-read, `fsd download-file` of it, the
//! time to the first 4 KiB of a cold file, and the reading daemon's peak
//! memory. Cold reads also give the CPU seconds per GiB the reader and the
//! seeders spent: the figure other work on the machine moves least.
//! `BENCH_KEEP_CACHES=1` keeps the page cache between reads (the seeders
//! then read from memory); `BENCH_PROFILE=DIR` records `perf` profiles.
//!
//! Then the shaped case: a lone reader of a 64 MiB file from four seeders
//! that are other machines with slow uplinks. Every daemon (and the
//! tracker) runs in a network namespace of its own on one bridge, each
//! seeder's uplink shaped to 20 MB/s by `tbf`, no rate flag on any daemon;
//! the same from one shaped seeder for comparison. Each of
//! `BENCH_SHAPED_RUNS` (3) readers reads alone in turn; the median goes
//! last. `BENCH_SHAPED=0` skips the case, `BENCH_SHAPED=only` runs nothing
//! else.
//!
//! Then the held-whole case: re-reads of a 512 MiB file (`BENCH_HELD_MIB`)
//! that the sharer and a reader hold whole, the mount's pages of it dropped
//! with `posix_fadvise(DONTNEED)` and the store's bytes cached, through the
//! daemon (`FILESHARE_PASSTHROUGH=0`) and with passthrough, against reads
//! of the same bytes from the page cache (the store's data file) in turn
//! with them, the best of five each; and the page cache a read added
//! (`Cached` in /proc/meminfo).
//! `BENCH_HELD=0` skips the case, `BENCH_HELD=only` runs nothing else.
//!
//! Run through `scripts/bench.sh mount` (release build).

use fileshare_tests::mount::{fetched, wait_for, Mount};
use fileshare_tests::netns::{Lan, Shape};
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

/// CPU seconds the daemons of `mounts` have used so far.
fn cpu(mounts: &[&Mount]) -> f64 {
    (mounts.iter())
        .filter_map(|m| m.pid())
        .map(|p| fileshare_tests::cpu_secs(&p.to_string()))
        .sum()
}

/// Reads `path` cold through `reader`'s mount from `seeders`; prints the
/// rate and the CPU seconds per GiB each side spent.
fn cold_read(path: &Path, reader: &Mount, seeders: &[&Mount], mib: usize) -> f64 {
    drop_caches();
    let (r0, s0) = (cpu(&[reader]), cpu(seeders));
    let profiles = profile(reader, seeders);
    let (rate, n) = read_all(path);
    for mut p in profiles {
        // SAFETY: kill has no preconditions; perf writes its file on SIGINT.
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
        let _ = p.wait();
    }
    assert_eq!(n, (mib << 20) as u64);
    let gib = n as f64 / f64::from(1u32 << 30);
    let (r, s) = ((cpu(&[reader]) - r0) / gib, (cpu(seeders) - s0) / gib);
    println!(
        "bench=cold    seeders={} size_mib={mib} mb_s={rate:.0} cpu_s_per_gib reader={r:.2} seeders={s:.2}",
        seeders.len()
    );
    rate
}

/// With `BENCH_PROFILE=DIR`: `perf record` of the reader and of the
/// seeders while they work, into `DIR/reader-N.data` and
/// `DIR/seeders-N.data` (N seeders); `perf report -i FILE` reads them.
/// `BENCH_PROFILE_ARGS` adds to perf's arguments (`--call-graph dwarf`).
fn profile(reader: &Mount, seeders: &[&Mount]) -> Vec<std::process::Child> {
    let Some(dir) = std::env::var_os("BENCH_PROFILE") else {
        return Vec::new();
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("profile dir");
    let pids = |ms: &[&Mount]| {
        (ms.iter().filter_map(|m| m.pid()))
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let n = seeders.len();
    let perfs = [("reader", pids(&[reader])), ("seeders", pids(seeders))]
        .into_iter()
        .map(|(who, pids)| {
            let extra = std::env::var("BENCH_PROFILE_ARGS").unwrap_or_default();
            std::process::Command::new("perf")
                .args(["record", "-q", "-F", "997", "-p", &pids])
                .args(extra.split_whitespace())
                .arg("-o")
                .arg(dir.join(format!("{who}-{n}.data")))
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("perf (Debian's linux-perf)")
        })
        .collect();
    // perf attaches to running processes in a moment.
    std::thread::sleep(Duration::from_millis(300));
    perfs
}

fn drop_caches() {
    // The seeders' page cache is part of the machine, not of FileShare; the
    // reader's pages are new either way. Dropping makes runs comparable.
    if std::env::var_os("BENCH_KEEP_CACHES").is_none() {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    }
}

/// Bytes per second each shaped seeder's uplink carries (headers
/// included, so about 4% less of payload).
const SHAPED_RATE: u64 = 20_000_000;

/// The shaped case's file size.
const SHAPED_MIB: usize = 64;

/// Lone reads of the four seeders' file, one reader after another
/// (`BENCH_SHAPED_RUNS`, default 3): a read takes about a second, so one
/// alone says little on a busy machine.
fn shaped_runs() -> usize {
    std::env::var("BENCH_SHAPED_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// Reads `rel` cold through `reader`; prints and returns the rate, the
/// duplicates and what each seeder sent.
fn shaped_read(reader: &Mount, rel: &str, seeders: usize) -> (f64, f64) {
    drop_caches();
    let (rate, n) = read_all(&reader.path(rel));
    assert_eq!(n, (SHAPED_MIB << 20) as u64);
    let dup: u64 = (reader.xattr(rel, "user.fileshare.duplicates").trim())
        .parse()
        .unwrap_or(0);
    let from: Vec<String> = (fetched(reader, rel).into_iter())
        .map(|(addr, bytes, ..)| format!("{addr}={:.1}", bytes as f64 / 1e6))
        .collect();
    let pct = dup as f64 * 100.0 / n as f64;
    println!(
        "bench=shaped  seeders={seeders} uplink_mb_s={} size_mib={SHAPED_MIB} mb_s={rate:.0} duplicates_mb={:.1} duplicates_pct={pct:.1} fetched_mb {}",
        SHAPED_RATE / 1_000_000,
        dup as f64 / 1e6,
        from.join(" ")
    );
    (rate, pct)
}

/// Lone readers from four seeders on shaped uplinks, then from one.
fn shaped() {
    let runs = shaped_runs();
    // Host 0: the tracker; hosts 1 to 4: the seeders; then the readers.
    let lan = Lan::new(5 + runs);
    let w = World::on(lan.host(0));
    let mut names: Vec<String> = (1..=4).map(|i| format!("s{i}")).collect();
    names.extend((1..=runs).map(|i| format!("reader{i}")));
    let users: Vec<User> = names.iter().map(|n| w.user(n)).collect();
    let rest: Vec<&User> = users[1..].iter().collect();
    w.group("g", &users[0], &rest);
    let mount = |i: usize| {
        let m = w.mount_on(lan.host(i + 1), &users[i], &[]);
        lan.track_mount(&m.mountpoint);
        m
    };
    let seeders: Vec<Mount> = (0..4).map(mount).collect();
    for (name, seed) in [("four.bin", 43), ("one.bin", 44)] {
        let src = w.path(name);
        fileshare_tests::random_file(&src, SHAPED_MIB << 20, seed);
        seeders[0].cp_in(&src, "g");
        std::fs::remove_file(&src).ok();
    }
    // The other seeders get four.bin over the bridge before any shaping.
    for s in &seeders[1..] {
        wait_listed(s, "four.bin");
        read_all(&s.path("g/four.bin"));
    }
    for i in 1..=4 {
        lan.shape(i, Shape::rate(SHAPED_RATE));
    }
    let mut rates = Vec::new();
    let mut dups = Vec::new();
    let mut logs = Vec::new();
    for r in 0..runs {
        // Each reader is alone: the one before has gone.
        let reader = mount(4 + r);
        wait_for("four seeders", Duration::from_secs(30), || {
            w.fsd_ok(&users[4 + r], &["list-files", "g"])
                .lines()
                .any(|l| l.contains("four.bin") && l.contains("peers=4"))
                .then_some(())
        });
        // The seeders fetched the file from each other (or served the
        // reader before) a moment ago: let that go quiet, so the reader
        // is alone as the case says.
        std::thread::sleep(Duration::from_secs(2));
        let (rate, pct) = shaped_read(&reader, "g/four.bin", 4);
        rates.push(rate);
        dups.push(pct);
        if r + 1 == runs {
            shaped_read(&reader, "g/one.bin", 1);
        }
        logs.push(reader.log());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "bench=shaped  seeders=4 runs={runs} median_mb_s={:.0} median_duplicates_pct={:.1}",
        median(&mut rates),
        median(&mut dups)
    );
    // For a closer look: FILESHARE_TEST_LOG=info,fsd=trace logs every
    // request, upload decision and verified piece.
    if let Some(dir) = std::env::var_os("BENCH_LOGS") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let all = seeders.iter().map(Mount::log).chain(logs);
        for (log, name) in all.zip(&names) {
            let _ = std::fs::write(dir.join(format!("{name}.log")), log);
        }
    }
}

fn main() {
    let shaped_case = std::env::var("BENCH_SHAPED").unwrap_or_default();
    let held_case = std::env::var("BENCH_HELD").unwrap_or_default();
    if held_case == "only" {
        return held_whole();
    }
    if shaped_case != "only" {
        loopback();
    }
    if shaped_case != "0" {
        shaped();
    }
    if held_case != "0" {
        held_whole();
    }
}

/// `Cached` of /proc/meminfo, in bytes: the page cache.
fn page_cache() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cached:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

/// Reads per figure of the held-whole case: each read takes a fraction of
/// a second, so the best of several says what the path can do on a busy
/// machine.
const HELD_READS: usize = 5;

/// Held-whole re-reads of `rel` through `m`, [`HELD_READS`] times: the
/// store's copy read from the page cache, then through the mount with the
/// mount's pages dropped; prints the best rate of each and the most page
/// cache a read through the mount added.
fn held_read(m: &Mount, rel: &str, who: &str, passthrough: bool) {
    let id = m.xattr(rel, "user.fileshare.id");
    let data = m.home.join("store").join(id).join("data");
    let path = m.path(rel);
    let opens = || m.xattr(rel, "user.fileshare.passthrough_opens");
    // The store's bytes cached.
    read_all(&data);
    let (mut cache, mut mount, mut added, mut total) = (0f64, 0f64, 0u64, 0u64);
    for _ in 0..HELD_READS {
        cache = cache.max(read_all(&data).0);
        fileshare_tests::drop_pages(&path);
        let (before, opened) = (page_cache(), opens());
        let (rate, n) = read_all(&path);
        added = added.max(page_cache().saturating_sub(before));
        let kernel = opens() != opened;
        assert_eq!(
            kernel, passthrough,
            "{who}: passthrough expected {passthrough}"
        );
        mount = mount.max(rate);
        total = n;
    }
    println!(
        "bench=held-whole who={who:<6} passthrough={} mib={} page_cache_mb_s={cache:.0} mount_mb_s={mount:.0} x={:.2} page_cache_added_mib={}",
        if passthrough { "on " } else { "off" },
        total >> 20,
        mount / cache,
        added >> 20
    );
}

/// The held-whole case: the sharer's and a reader's whole copies re-read
/// through the daemon, then with passthrough, in one run.
fn held_whole() {
    let mib: usize = std::env::var("BENCH_HELD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let w = World::new();
    let (alice, bob) = (w.user("alice"), w.user("bob"));
    w.group("g", &alice, &[&bob]);
    let src = w.path("whole.bin");
    fileshare_tests::random_file(&src, mib << 20, 43);
    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("bench=held-whole loadavg={}", uptime.trim());
    for passthrough in [false, true] {
        // Read at the mount's start: set for the two daemons started here.
        if passthrough {
            std::env::remove_var(fsd::fuse::passthrough::SWITCH);
        } else {
            std::env::set_var(fsd::fuse::passthrough::SWITCH, "0");
        }
        let a = w.mount(&alice, &[]);
        let b = w.mount(&bob, &[]);
        if !passthrough {
            a.cp_in(&src, "g");
            wait_listed(&b, "whole.bin");
            read_all(&b.path("g/whole.bin"));
        }
        wait_listed(&a, "whole.bin");
        wait_listed(&b, "whole.bin");
        held_read(&a, "g/whole.bin", "sharer", passthrough);
        held_read(&b, "g/whole.bin", "reader", passthrough);
    }
    std::env::remove_var(fsd::fuse::passthrough::SWITCH);
    std::fs::remove_file(&src).ok();
}

fn loopback() {
    let mib = size_mib();
    let w = World::new();
    let names = ["alice", "bob", "carol", "dave", "eve", "frank", "grace"];
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
    cold_read(&b.path("g/big.bin"), &b, &[&a], mib);
    let rss_b = b.pid().map(peak_rss_mib).unwrap_or(0.0);
    let (warm, _) = read_all(&b.path("g/big.bin"));
    println!("bench=warm    size_mib={mib} mb_s={warm:.0}");
    println!("bench=memory  reader_peak_rss_mib={rss_b:.1}");

    // download-file from the same two seeders a read through the mount
    // has next.
    let g = w.mount(&users[6], &[]);
    wait_listed(&g, "big.bin");
    let dest = w.path("downloaded.bin");
    drop_caches();
    let (g0, s0) = (cpu(&[&g]), cpu(&[&a, &b]));
    let t = Instant::now();
    w.fsd_ok(
        &users[6],
        &[
            "download-file",
            "g",
            "big.bin",
            dest.to_str().expect("utf-8"),
        ],
    );
    let secs = t.elapsed().as_secs_f64();
    let gib = (mib << 20) as f64 / f64::from(1u32 << 30);
    assert_eq!(
        std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0),
        (mib << 20) as u64
    );
    std::fs::remove_file(&dest).ok();
    println!(
        "bench=download seeders=2 size_mib={mib} mb_s={:.0} cpu_s_per_gib reader={:.2} seeders={:.2}",
        (mib << 20) as f64 / secs / 1e6,
        (cpu(&[&g]) - g0) / gib,
        (cpu(&[&a, &b]) - s0) / gib
    );
    drop(g);

    let c = w.mount(&users[2], &[]);
    wait_for("bob seeding", Duration::from_secs(30), || {
        w.fsd_ok(&users[2], &["list-files", "g"])
            .contains("peers=2")
            .then_some(())
    });
    cold_read(&c.path("g/big.bin"), &c, &[&a, &b], mib);

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
    cold_read(&e.path("g/big.bin"), &e, &[&a, &b, &c, &d], mib);

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
