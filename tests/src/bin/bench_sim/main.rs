//! A discrete-event simulation of one file's swarm at scale: one source and
//! 1,000 or 10,000 readers, each peer running the daemon's own piece
//! picker (`fsd::pieces::picker`) and upload scheduler
//! (`fsd::net::upload_scheduler::plan`, `fsd::net::choke::Choker`), each
//! reader's neighbours drawn by the tracker's own Locate sample
//! (`fileshare_tracker::sample`). Prints, per case, the last reader's
//! finish time against the Kumar-Ross bound D_min, pieces uploaded per
//! reader, the source's copies and the duplicates. Run it through
//! `scripts/bench.sh sim`; the model is described in `world.rs` and
//! `docs/swarm-scale.md`.
//!
//! `BENCH_SIM_PEERS` (default `1000,10000`) sets the reader counts,
//! `BENCH_SIM_CASES` (default `equal,fast,staggered`) the cases,
//! `BENCH_SIM_PIECES` (default 128, a 64 MiB file) the file's pieces.

mod fetcher;
mod uploader;
mod world;

#[cfg(test)]
mod tests;

use fetcher::Reading;
use fileshare_protocol::PIECE_LEN;
use std::time::Instant;
use world::{Outcome, Params, World};

const MIB: f64 = (1 << 20) as f64;

/// The Kumar-Ross bound for readers joining at `joined` (peer 0, the
/// source, is skipped), downlinks unlimited: the largest of F/u_s, what
/// every reader must receive over all the uplinks present from when each
/// could upload, and the last reader's file from everyone else after it
/// joins. With every reader joining at 0 it is
/// `max(F / u_s, N F / (u_s + sum u_i))`.
pub fn d_min(p: &Params, joined: &[u64]) -> f64 {
    let f = f64::from(p.pieces) * PIECE_LEN as f64;
    let n = p.readers as f64;
    let mut t: Vec<f64> = joined[1..].iter().map(|&us| us as f64 / 1e6).collect();
    t.sort_by(f64::total_cmp);
    let t1 = t.get(1).copied().unwrap_or(0.0);
    let total = p.source_rate + n * p.reader_rate;
    let late: f64 = t.iter().map(|&ti| p.reader_rate * ti.max(t1)).sum();
    let last = t.last().copied().unwrap_or(0.0);
    let after = last + f / (p.source_rate + (n - 1.0) * p.reader_rate);
    (f / p.source_rate)
        .max((n * f + late) / total)
        .max(if t1 > 0.0 { after } else { 0.0 })
}

fn params(case: &str, readers: usize, pieces: u32) -> Params {
    let mut p = Params {
        readers,
        pieces,
        source_rate: 8.0 * MIB,
        reader_rate: 8.0 * MIB,
        latency_us: env_ms("BENCH_SIM_LATENCY_MS", 10),
        tick_us: env_ms("BENCH_SIM_TICK_MS", 10),
        budget: std::env::var("BENCH_SIM_BUDGET").map_or(50, |s| {
            s.parse().expect("BENCH_SIM_BUDGET: a connection count")
        }),
        locate_peers: fileshare_tracker::sample::DEFAULT_LOCATE_PEERS,
        arrivals_over_us: 0,
        reading: Reading::Mount,
        defer_us: std::env::var("BENCH_SIM_DEFER_MS").map_or(fetcher::busy_defer_us(), |s| {
            s.parse::<u64>().expect("BENCH_SIM_DEFER_MS") * 1000
        }),
        trace: std::env::var("BENCH_SIM_TRACE").is_ok_and(|v| v == "1"),
        choking: std::env::var("BENCH_SIM_CHOKE").map_or(true, |v| v != "0"),
        seed: 0x5eed ^ readers as u64,
        max_us: 600_000_000,
    };
    match case {
        "equal" => {}
        "fast" => {
            p.source_rate = 16.0 * MIB;
            p.reader_rate = 4.0 * MIB;
        }
        "staggered" => p.arrivals_over_us = 8_000_000,
        "download" => p.reading = Reading::Download,
        other => panic!("unknown case {other:?} (equal, fast, staggered, download)"),
    }
    p
}

/// Milliseconds from `name`, in µs.
fn env_ms(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |s| s.parse().expect(name)) * 1000
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// CPU seconds (user and system) this process used so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) } != 0 {
        return f64::NAN;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

fn report(case: &str, p: &Params, o: &Outcome, wall: f64, cpu: f64) {
    let d = d_min(p, &o.joined_us);
    let readers = &o.uploaded[1..];
    let mean = readers.iter().sum::<u64>() as f64 / readers.len() as f64;
    let max = readers.iter().max().copied().unwrap_or(0);
    let mut finish: Vec<u64> = o.finished_us[1..].iter().flatten().copied().collect();
    finish.sort_unstable();
    let median = finish
        .get(finish.len() / 2)
        .map_or(f64::NAN, |&t| t as f64 / 1e6);
    let last = o.last_finish_us().map(|t| t as f64 / 1e6);
    let dup = 100.0 * o.duplicates as f64 / o.received.max(1) as f64;
    let last_s = last.map_or_else(|| "unfinished".into(), |t| format!("{t:.2} s"));
    let ratio = last.map_or_else(|| "-".into(), |t| format!("{:.2}", t / d));
    println!(
        "| {case} | {} | {} MiB | {} MiB/s | {} MiB/s | {d:.2} s | {last_s} | **{ratio}** | {:.2} | {mean:.1} / {max} | {:.2} | {dup:.1}% | {:.1} / {} | {cpu:.0} s ({wall:.0} s) |",
        p.readers,
        (u64::from(p.pieces) * PIECE_LEN) >> 20,
        p.source_rate / MIB,
        p.reader_rate / MIB,
        median / d,
        o.uploaded[0] as f64 / f64::from(p.pieces),
        o.links_mean,
        o.links_min,
    );
    eprintln!(
        "   {case} N={}: {} Locates, {} scheduling steps ({} sent nothing), {} requests ({:.0}% refused busy, {:.0}% choked), {} of {} readers finished; every piece left the source by {:.2} s",
        p.readers,
        o.locates,
        o.picks,
        o.empty_picks,
        o.requests,
        100.0 * o.busy as f64 / o.requests.max(1) as f64,
        100.0 * o.choked as f64 / o.requests.max(1) as f64,
        finish.len(),
        p.readers,
        o.source_all_us.map_or(f64::NAN, |t| t as f64 / 1e6),
    );
    if p.trace {
        let t = (o.ticks * p.readers as u64).max(1) as f64;
        eprintln!(
            "   readers' uplinks idle: {:.0}% with nothing a neighbour wants, {:.0}% with no request for what they want, {:.0}% with requests waiting",
            100.0 * o.idle[0] as f64 / t,
            100.0 * o.idle[1] as f64 / t,
            100.0 * o.idle[2] as f64 / t
        );
    }
}

fn main() {
    let peers: Vec<usize> = env_list("BENCH_SIM_PEERS", "1000,10000")
        .iter()
        .map(|s| s.parse().expect("BENCH_SIM_PEERS: reader counts"))
        .collect();
    let cases = env_list("BENCH_SIM_CASES", "equal,fast,staggered");
    let pieces: u32 = std::env::var("BENCH_SIM_PIECES")
        .map(|s| s.parse().expect("BENCH_SIM_PIECES: a piece count"))
        .unwrap_or(128);
    println!(
        "| case | N | F | u_s | u_i | D_min | last reader | ratio | median / D_min | pieces sent per reader (mean / max) | source copies | duplicates | connections at finish (mean / min) | CPU (wall) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for case in &cases {
        for &n in &peers {
            let p = params(case, n, pieces);
            let (started, cpu) = (Instant::now(), cpu_secs());
            let o = World::new(p.clone()).run();
            let wall = started.elapsed().as_secs_f64();
            report(case, &p, &o, wall, cpu_secs() - cpu);
        }
    }
}
