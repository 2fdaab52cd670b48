//! Swarm efficiency: many readers of one file, each daemon with an upload
//! limit, against the fluid-model bound of Kumar & Ross.
//!
//! For a file of F bytes, one source uploading at `u_s` and N readers
//! uploading at `u_i` (download unlimited), no schedule finishes every
//! reader before `D_min = max(F / u_s, N F / (u_s + sum u_i))`, while one
//! server alone needs `N F / u_s`. Every case runs a real tracker and one
//! `fsd mount` per user on 127.0.0.1, each with `--max-upload-rate`; each
//! reader reads the whole file through its mount (1 MiB reads, the
//! product's main path) and checks the bytes. The time is from the start
//! (the first reader's open) to the last reader's last byte.
//!
//! Readers that join late (`stagger`) change the bound: reader i joins at
//! `t_i` and can upload only from then on, and the first one only once a
//! second reader is there to take anything, from `t_1`. Every byte the N
//! readers receive was uploaded by time T, so
//! `T >= (N F + sum u_i max(t_i, t_1)) / (u_s + sum u_i)`; the source must
//! still send the file once (`T >= F / u_s`) and the last reader needs
//! `F / (u_s + sum of the others' u)` after it joins. `D_min` is the largest
//! of the three, and the single server needs `max(N F / u_s, t_last + F / u_s)`.
//!
//! Writes the per-reader times to `docs/swarm.csv` and draws them against
//! `D_min` in `docs/swarm.svg` (`BENCH_OUT` to change the directory).
//! `BENCH_CASES=1,3` runs some cases only (5 is 48 readers of a 16 MiB
//! file at 1 MiB/s each, the source too); `BENCH_MODE=download` fetches
//! with `fsd download-file` through each reader's daemon instead of reading
//! through the mount. Run through `scripts/bench.sh swarm` (release build).
//!
//! `BENCH_SHAPE=net` shapes the network instead of the daemons: the tracker
//! and every daemon run in a network namespace of their own on one bridge
//! (`fileshare_tests::netns`), each daemon's uplink shaped by `tbf` to the
//! case's rate, and no daemon has a rate flag: the uploads are scheduled
//! from what each daemon measures. The outputs are then `swarm-net.csv` and
//! `swarm-net.svg`. The shaped rate counts packet headers too, so about 4%
//! of it is not file bytes, and the bound is taken at the full rate.
//! `BENCH_MOUNT_ARGS` adds flags to every daemon (e.g.
//! `--max-peers-per-file 16`). `BENCH_QUEUE_MS` sets how long a packet may wait in a shaped uplink's
//! queue (`tbf ... latency`, 200 ms by default).
//!
//! `BENCH_RATE_SCALE=0.5` scales every case's rates (the bound scales with
//! them): the same swarm at half the traffic per second needs about half
//! the CPU, which tells what the machine costs a case from what its
//! schedule does.
//!
//! `BENCH_KEEP_LOGS=DIR` keeps every daemon's log there (the source's is
//! `daemon-0.log`); `FILESHARE_TEST_LOG` sets what they log.
//!
//! `BENCH_HOG=N` starves the daemons of CPU the same way in every run:
//! N busy loops (`sh -c 'while :; do :; done'`, normal priority) run for
//! the whole benchmark and are ended by their PIDs at its end (two take
//! both cores of a 2-core machine, as a build does; see "Under CPU
//! starvation" in docs/swarm.md). Each case's summary line
//! gives the load average at its end and `run_delay_ms_per_s`: per daemon
//! and second, how long its threads waited for a CPU while runnable.

use fileshare_tests::mount::{wait_for, Mount};
use fileshare_tests::netns::{Lan, Shape};
use fileshare_tests::world::{User, World};
use plotters::prelude::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    readers: usize,
    size_mib: u64,
    source_mib_s: f64,
    reader_mib_s: f64,
    /// Seconds between two readers' joins (0: all at once).
    stagger_s: f64,
}

impl Case {
    fn joins(&self) -> Vec<f64> {
        (0..self.readers)
            .map(|i| i as f64 * self.stagger_s)
            .collect()
    }

    /// The fluid-model bound; see the module documentation.
    fn d_min(&self) -> f64 {
        let f = self.size_mib as f64;
        let n = self.readers as f64;
        let (us, ui) = (self.source_mib_s, self.reader_mib_s);
        let joins = self.joins();
        let t1 = joins.get(1).copied().unwrap_or(0.0);
        let late: f64 = joins.iter().map(|&t| ui * t.max(t1)).sum();
        let capacity = (n * f + late) / (us + n * ui);
        let last = joins.last().copied().unwrap_or(0.0) + f / (us + (n - 1.0) * ui);
        (f / us).max(capacity).max(last)
    }

    fn client_server(&self) -> f64 {
        let f = self.size_mib as f64;
        let last = self.joins().last().copied().unwrap_or(0.0);
        (self.readers as f64 * f / self.source_mib_s).max(last + f / self.source_mib_s)
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "equal",
            readers: 8,
            size_mib: 64,
            source_mib_s: 8.0,
            reader_mib_s: 8.0,
            stagger_s: 0.0,
        },
        Case {
            name: "fast-source",
            readers: 8,
            size_mib: 64,
            source_mib_s: 16.0,
            reader_mib_s: 4.0,
            stagger_s: 0.0,
        },
        Case {
            name: "sixteen",
            readers: 16,
            size_mib: 32,
            source_mib_s: 4.0,
            reader_mib_s: 4.0,
            stagger_s: 0.0,
        },
        Case {
            name: "staggered",
            readers: 8,
            size_mib: 64,
            source_mib_s: 8.0,
            reader_mib_s: 8.0,
            stagger_s: 1.0,
        },
        // More readers than one Locate's worth of links would ever need
        // to reach, at rates two cores keep up with for 49 daemons.
        Case {
            name: "forty-eight",
            readers: 48,
            size_mib: 16,
            source_mib_s: 1.0,
            reader_mib_s: 1.0,
            stagger_s: 0.0,
        },
    ]
}

struct Outcome {
    case: Case,
    /// Per reader: (join, done), seconds from the start.
    times: Vec<(f64, f64)>,
    measured: f64,
    /// The whole machine's CPU while the readers ran (other work included).
    cpu_mean: f64,
    cpu_peak: f64,
    /// Cores used by this benchmark's processes (tracker, daemons, readers).
    ours: f64,
    /// Per daemon and second, on average: the time its threads waited
    /// for a CPU while runnable.
    run_delay: f64,
    /// What the source uploaded, in copies of the file.
    source_copies: f64,
    /// What the readers received twice (end game, late cancels), in copies.
    duplicate_copies: f64,
    /// The most TCP connections one daemon had established at once (peer
    /// connections both ways, and its tracker's), sampled every 4 s.
    max_connections: usize,
    /// Readers that fetched from a peer they heard of by peer exchange.
    exchanged: usize,
}

/// The daemons' connections are counted every this many 500 ms ticks.
const CONNECTIONS_EVERY: u32 = 8;

/// TCP connections established by process `pid`: its socket descriptors
/// matched against the TCP tables of its network namespace.
fn tcp_established(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    // State 01 is ESTABLISHED; field 9 the socket's inode.
                    (f.get(3) == Some(&"01")).then(|| f.get(9).map(|i| i.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

/// Seconds the threads of process `pid` alive now have spent runnable
/// but waiting for a CPU (`run_delay` in `/proc/<pid>/task/*/schedstat`):
/// how starved of CPU the process was.
fn run_delay_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// Busy and total jiffies of the whole machine, from `/proc/stat`.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn busy_between(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        0.0
    } else {
        b.0.saturating_sub(a.0) as f64 / total as f64
    }
}

fn wait_listed(m: &Mount, name: &str) {
    let p = m.path(&format!("g/{name}"));
    wait_for("file listed", Duration::from_secs(30), || {
        p.exists().then_some(())
    });
}

/// Reads the whole file through the mount and checks it against `want`.
fn read_and_check(path: &Path, want: &[u8]) {
    let mut f = std::fs::File::open(path).expect("open in the mount");
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0usize;
    loop {
        let n = f.read(&mut buf).expect("read through the mount");
        if n == 0 {
            break;
        }
        assert!(
            want.get(at..at + n) == Some(&buf[..n]),
            "{}: wrong bytes at {at}",
            path.display()
        );
        at += n;
    }
    assert_eq!(at, want.len(), "{}: short read", path.display());
}

fn rate_arg(mib_s: f64) -> String {
    format!("{}K", (mib_s * 1024.0).round())
}

/// Whether the network is shaped instead of the daemons (`BENCH_SHAPE=net`).
fn net_shaped() -> bool {
    std::env::var("BENCH_SHAPE").is_ok_and(|s| s == "net")
}

/// Host 0 runs the tracker, host 1 the source, host 2 + i reader i.
fn shaped(lan: &Lan, host: usize, mib_s: f64) -> &fileshare_tests::netns::Host {
    // A float-to-int `as` saturates, which is what a rate wants.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rate = (mib_s * MIB as f64) as u64;
    let mut shape = Shape::rate(rate);
    if let Some(ms) = std::env::var("BENCH_QUEUE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        shape.latency = Duration::from_millis(ms);
    }
    lan.shape(host, shape);
    lan.host(host)
}

fn run_case(case: &Case) -> Outcome {
    let lan = net_shaped().then(|| Lan::new(case.readers + 2));
    // Every user signs up from the benchmark's one address.
    let signups = (case.readers + 1).to_string();
    let args = ["--max-sign-ups-per-address", &signups];
    let w = match &lan {
        Some(lan) => World::on_with_args(lan.host(0), &args),
        None => World::with_tracker_args(&args),
    };
    let owner = w.user("source");
    let readers: Vec<User> = (0..case.readers)
        .map(|i| w.user(&format!("r{i}")))
        .collect();
    w.group("g", &owner, &readers.iter().collect::<Vec<_>>());

    let size = case.size_mib * MIB;
    let src = w.path("file.bin");
    let data = Arc::new(fileshare_tests::random_file(
        &src,
        usize::try_from(size).expect("size fits"),
        7,
    ));
    // More flags for every daemon, e.g. `--max-peers-per-file 16`.
    let extra = std::env::var("BENCH_MOUNT_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let mount = |u: &User, host: usize, mib_s: f64| match &lan {
        Some(lan) => {
            let m = w.mount_on(shaped(lan, host, mib_s), u, &extra);
            lan.track_mount(&m.mountpoint);
            m
        }
        None => {
            let rate = rate_arg(mib_s);
            let mut args = vec!["--max-upload-rate", rate.as_str()];
            args.extend_from_slice(&extra);
            w.mount(u, &args)
        }
    };
    let source = mount(&owner, 1, case.source_mib_s);
    std::fs::copy(&src, source.path("g/file.bin")).expect("cp into the source's mount");
    let mounts: Vec<Mount> = (readers.iter().enumerate())
        .map(|(i, u)| mount(u, i + 2, case.reader_mib_s))
        .collect();
    for m in &mounts {
        wait_listed(m, "file.bin");
    }
    // The source's pages are the machine's, not FileShare's: drop them so
    // every case starts alike.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");

    let joins = case.joins();
    let barrier = Arc::new(Barrier::new(case.readers + 1));
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let download = std::env::var("BENCH_MODE").is_ok_and(|m| m == "download");
    let threads: Vec<_> = mounts
        .iter()
        .zip(&readers)
        .zip(&joins)
        .map(|((m, u), &join)| {
            let (path, data, barrier, start) = (
                m.path("g/file.bin"),
                data.clone(),
                barrier.clone(),
                start.clone(),
            );
            // `fsd download-file` through the reader's daemon instead.
            let cmd = download.then(|| {
                let mut c = std::process::Command::new(&w.fsd);
                c.arg("--home")
                    .arg(&u.home)
                    .arg("--trackers")
                    .arg(w.trackers_file())
                    .args(["download-file", "g", "file.bin"])
                    .arg(w.path(&format!("out-{}.bin", u.name)))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                c
            });
            let out = w.path(&format!("out-{}.bin", u.name));
            std::thread::spawn(move || {
                barrier.wait();
                let t0 = *start.wait();
                let at = t0 + Duration::from_secs_f64(join);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                match cmd {
                    Some(mut cmd) => {
                        let status = cmd.status().expect("run fsd download-file");
                        assert!(status.success(), "fsd download-file failed");
                        let got = std::fs::read(&out).expect("read the download");
                        assert!(got == **data, "{}: wrong bytes", out.display());
                    }
                    None => read_and_check(&path, &data),
                }
                t0.elapsed().as_secs_f64()
            })
        })
        .collect();

    let mut pids: Vec<String> = mounts
        .iter()
        .chain(std::iter::once(&source))
        .filter_map(Mount::pid)
        .chain(w.tracker().pid())
        .map(|p| p.to_string())
        .collect();
    pids.push("self".into());
    let ours = || {
        pids.iter()
            .map(|p| fileshare_tests::cpu_secs(p))
            .sum::<f64>()
    };
    let ours0 = ours();
    let cpu0 = cpu_jiffies();
    let _ = start.set(Instant::now());
    eprintln!("# {}: the readers start", case.name);
    barrier.wait();
    // Sample the machine's CPU while the readers run.
    let mut peak: f64 = 0.0;
    let mut last = cpu0;
    let daemons: Vec<u32> = (mounts.iter())
        .chain(std::iter::once(&source))
        .filter_map(Mount::pid)
        .collect();
    let delays = || daemons.iter().map(|&p| run_delay_secs(p)).sum::<f64>();
    let delay0 = delays();
    let mut max_connections = 0;
    let mut ticks = 0u32;
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(500));
        let now = cpu_jiffies();
        peak = peak.max(busy_between(last, now));
        last = now;
        // Reading a TCP table walks the kernel's whole connection hash
        // (every namespace's): at each daemon twice a tick it took a fifth
        // of the machine from the swarm measured. Every fourth second.
        ticks += 1;
        if ticks % CONNECTIONS_EVERY == 1 {
            let most = daemons.iter().map(|&p| tcp_established(p)).max();
            max_connections = max_connections.max(most.unwrap_or(0));
        }
    }
    let cpu_mean = busy_between(cpu0, cpu_jiffies());
    let ours = ours() - ours0;
    let run_delay = (delays() - delay0).max(0.0);
    let done: Vec<f64> = (threads.into_iter().zip(&mounts))
        .map(|(t, m)| match t.join() {
            Ok(done) => done,
            Err(_) => {
                // What its daemon said went wrong.
                let log = m.log();
                let said: Vec<&str> = (log.lines())
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                let keep = out_dir().join("failed-reader.log");
                let _ = std::fs::write(&keep, &log);
                let _ = std::fs::write(out_dir().join("failed-source.log"), source.log());
                panic!(
                    "a reader failed; its daemon said ({} has all of its log):\n{}",
                    keep.display(),
                    said.join("\n")
                );
            }
        })
        .collect();
    let measured = done.iter().copied().fold(0.0, f64::max);
    // Every daemon's log, to study a run (`FILESHARE_TEST_LOG` sets what
    // they log): the source's is `daemon-0.log`.
    if let Some(dir) = std::env::var_os("BENCH_KEEP_LOGS") {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for (i, m) in std::iter::once(&source).chain(&mounts).enumerate() {
            let _ = std::fs::write(dir.join(format!("daemon-{i}.log")), m.log());
        }
    }
    let run_delay = run_delay / daemons.len().max(1) as f64 / measured.max(1e-3);

    let counter =
        |m: &Mount, name: &str| -> u64 { m.xattr("g/file.bin", name).trim().parse().unwrap_or(0) };
    let from_source = counter(&source, "user.fileshare.uploaded");
    let duplicates: u64 = (mounts.iter())
        .map(|m| counter(m, "user.fileshare.duplicates"))
        .sum();
    let exchanged = (mounts.iter())
        .filter(|m| {
            let e = m.xattr("g/file.bin", "user.fileshare.exchange");
            !e.contains("bytes=0") && e.contains("bytes=")
        })
        .count();
    if let Some(dir) = std::env::var_os("BENCH_LOGS") {
        // For a closer look: FILESHARE_TEST_LOG=info,fsd=trace logs every
        // upload decision and every verified piece.
        let dir = PathBuf::from(dir).join(case.name);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("source.listen"), &source.listen);
        for (name, m) in std::iter::once(("source".to_string(), &source))
            .chain(mounts.iter().enumerate().map(|(i, m)| (format!("r{i}"), m)))
        {
            let _ = std::fs::write(dir.join(format!("{name}.log")), m.log());
        }
    }
    drop(mounts);
    drop(source);
    Outcome {
        case: case.clone(),
        times: joins.into_iter().zip(done).collect(),
        measured,
        cpu_mean,
        cpu_peak: peak,
        ours: ours / measured.max(1e-3),
        run_delay,
        source_copies: from_source as f64 / size as f64,
        duplicate_copies: duplicates as f64 / size as f64,
        max_connections,
        exchanged,
    }
}

fn out_dir() -> PathBuf {
    std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs"))
}

fn write_csv(path: &Path, outcomes: &[Outcome]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "case,readers,size_mib,source_mib_s,reader_mib_s,reader,join_s,done_s,d_min_s,client_server_s"
    )?;
    for o in outcomes {
        let c = &o.case;
        for (i, (join, done)) in o.times.iter().enumerate() {
            writeln!(
                f,
                "{},{},{},{},{},{i},{join:.3},{done:.3},{:.3},{:.3}",
                c.name,
                c.readers,
                c.size_mib,
                c.source_mib_s,
                c.reader_mib_s,
                c.d_min(),
                c.client_server()
            )?;
        }
    }
    Ok(())
}

/// One panel per case: each reader's span from join to last byte, the
/// bound `D_min` and 1.25 x `D_min`.
fn draw_svg(path: &Path, outcomes: &[Outcome]) -> Result<(), Box<dyn std::error::Error>> {
    let cols = 2;
    let rows = outcomes.len().div_ceil(cols).max(1);
    let height = u32::try_from(rows * 300).unwrap_or(600);
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((rows, cols));
    for (o, area) in outcomes.iter().zip(panels.iter()) {
        let c = &o.case;
        let d_min = c.d_min();
        // Head room above the bars for the legend.
        let y_max = (o.measured.max(1.25 * d_min) * 1.5).ceil();
        let n = o.times.len();
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: N={} F={} MiB, u_s={} u_i={} MiB/s: {:.2} s = {:.2} x D_min (one server: {:.0} s)",
                    c.name,
                    c.readers,
                    c.size_mib,
                    c.source_mib_s,
                    c.reader_mib_s,
                    o.measured,
                    o.measured / d_min,
                    c.client_server()
                ),
                ("sans-serif", 13),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(52)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("reader")
            .y_desc("seconds from start")
            .x_labels(n.min(16))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .disable_x_mesh()
            .light_line_style(WHITE)
            .draw()?;
        let span = |(i, &(join, done)): (usize, &(f64, f64))| {
            PathElement::new(
                vec![(i as f64, join), (i as f64, done)],
                BLUE.stroke_width(3),
            )
        };
        chart
            .draw_series(o.times.iter().enumerate().map(span))?
            .label("join to last byte")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(3)));
        chart.draw_series(
            (o.times.iter().enumerate())
                .map(|(i, &(_, done))| Circle::new((i as f64, done), 3, BLUE.filled())),
        )?;
        let hline = |y: f64| vec![(-0.5, y), (n as f64 - 0.5, y)];
        chart
            .draw_series(LineSeries::new(hline(d_min), RED.stroke_width(2)))?
            .label(format!("D_min {d_min:.2} s"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                hline(1.25 * d_min),
                RGBColor(240, 150, 0).stroke_width(1),
            ))?
            .label("1.25 x D_min")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 16, y)],
                    RGBColor(240, 150, 0).stroke_width(1),
                )
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 11))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Busy loops that compete with the benchmark for CPU (`BENCH_HOG`),
/// killed by their PIDs when dropped.
struct Hog(Vec<std::process::Child>);

impl Hog {
    fn start(n: usize) -> Hog {
        Hog((0..n)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(std::process::Stdio::null())
                    .spawn()
                    .expect("start a busy loop")
            })
            .collect())
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The 1-minute load average, from `/proc/loadavg`.
fn load_average() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().next().unwrap_or("?").to_string()
}

fn main() {
    let hogs = std::env::var("BENCH_HOG")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let _hog = Hog::start(hogs);
    let only: Option<Vec<usize>> = std::env::var("BENCH_CASES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let rate_scale: f64 = std::env::var("BENCH_RATE_SCALE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&s: &f64| s > 0.0 && s.is_finite())
        .unwrap_or(1.0);
    let mut outcomes = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&(i + 1))) {
            continue;
        }
        let mut case = case;
        case.source_mib_s *= rate_scale;
        case.reader_mib_s *= rate_scale;
        let o = run_case(&case);
        let c = &o.case;
        println!(
            "# {}: this benchmark's processes used {:.2} cores; the machine ({} cores, other work included) was {:.0}% busy, {:.0}% at peak; the source uploaded {:.2} copies of the file; the readers received {:.2} copies' worth twice",
            c.name,
            o.ours,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            o.cpu_mean * 100.0,
            o.cpu_peak * 100.0,
            o.source_copies,
            o.duplicate_copies
        );
        println!(
            "case={} N={} F={}MiB u_s={}MiB/s u_i={}MiB/s stagger={}s D_min={:.2}s client_server={:.2}s measured={:.2}s ratio={:.2}",
            c.name,
            c.readers,
            c.size_mib,
            c.source_mib_s,
            c.reader_mib_s,
            c.stagger_s,
            c.d_min(),
            c.client_server(),
            o.measured,
            o.measured / c.d_min()
        );
        println!(
            "summary case={} shape={} ratio={:.2} source_copies={:.2} duplicates={:.1}% max_connections_per_host={} readers_fetching_by_exchange={} hog={hogs} load={} run_delay_ms_per_s={:.1}",
            c.name,
            if net_shaped() { "net" } else { "daemon" },
            o.measured / c.d_min(),
            o.source_copies,
            // Of all the readers received: each received one copy.
            o.duplicate_copies / c.readers as f64 * 100.0,
            o.max_connections,
            o.exchanged,
            load_average(),
            o.run_delay * 1e3
        );
        outcomes.push(o);
    }
    let dir = out_dir();
    std::fs::create_dir_all(&dir).expect("create the output directory");
    let dir = dir.canonicalize().unwrap_or(dir);
    let name = if net_shaped() { "swarm-net" } else { "swarm" };
    let csv = dir.join(format!("{name}.csv"));
    let svg = dir.join(format!("{name}.svg"));
    write_csv(&csv, &outcomes).expect("write the CSV");
    draw_svg(&svg, &outcomes).expect("draw the SVG");
    println!(
        "# per-reader times: {}; chart: {}",
        csv.display(),
        svg.display()
    );
}
