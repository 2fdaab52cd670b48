//! The simulator's bookkeeping against cases whose times are known.

use super::*;

const PIECES: u32 = 16;
const RATE: f64 = 8.0 * MIB;

fn small(readers: usize) -> Params {
    let mut p = params("equal", readers, PIECES);
    p.source_rate = RATE;
    p.reader_rate = RATE;
    p.max_us = 60_000_000;
    p
}

/// A piece's time on an uplink of [`RATE`], in µs.
fn tau() -> f64 {
    PIECE_LEN as f64 / RATE * 1e6
}

/// Every piece that left an uplink arrived once, and every reader has
/// the file with the duplicates counted apart.
fn balanced(p: &Params, o: &Outcome) {
    assert_eq!(o.uploaded.iter().sum::<u64>(), o.received);
    assert_eq!(
        o.received - o.duplicates,
        p.readers as u64 * u64::from(p.pieces)
    );
    assert!(o.uploaded[0] >= u64::from(p.pieces), "{:?}", o.uploaded);
}

#[test]
fn a_lone_reader_takes_the_file_at_the_sources_rate() {
    let p = small(1);
    let o = World::new(p.clone()).run();
    balanced(&p, &o);
    // The Locate's round trip, a request's way there, n pieces back to
    // back, the last one's way back: within the decisions' ticks.
    let want = 4.0 * p.latency_us as f64 + f64::from(PIECES) * tau();
    let got = o.last_finish_us().expect("finished") as f64;
    assert!(
        (got - want).abs() <= 2.0 * p.tick_us as f64,
        "{got} µs, want {want} µs"
    );
    assert_eq!(o.uploaded[0], u64::from(PIECES));
    assert_eq!(o.duplicates, 0);
}

#[test]
fn two_readers_trade_what_the_source_sends_once() {
    // D_min is F / u; pieces travel whole, so the last piece to leave the
    // source needs one more hop: (n + 1) pieces' time at least.
    let p = small(2);
    let o = World::new(p.clone()).run();
    balanced(&p, &o);
    let floor = f64::from(PIECES + 1) * tau() + p.latency_us as f64;
    let got = o.last_finish_us().expect("finished") as f64;
    assert!(got >= floor, "{got} µs beats the floor {floor} µs");
    assert!(
        got <= floor + 2.0 * tau(),
        "{got} µs, {:.2} pieces' time over the floor",
        (got - floor) / tau()
    );
    assert!(o.uploaded[1] > 0 && o.uploaded[2] > 0, "{:?}", o.uploaded);
    assert!((d_min(&p, &o.joined_us) - f64::from(PIECES) * tau() / 1e6).abs() < 1e-9);
}

#[test]
fn readers_joining_at_once_form_one_mesh_not_cliques_of_the_first() {
    // The Locate samples every announced peer, holding pieces or not, so
    // the readers that happened to join first do not take up each other's
    // connections and the source's, leaving the rest to wait until they
    // are done.
    let mut p = small(200);
    p.pieces = 32;
    let o = World::new(p.clone()).run();
    balanced(&p, &o);
    let d = d_min(&p, &o.joined_us) * 1e6;
    assert!(
        (o.first_piece_us as f64) < d * 0.75,
        "the last reader's first piece came at {} µs of {d} µs",
        o.first_piece_us
    );
    assert!(o.links_mean >= 40.0, "{} connections", o.links_mean);
}

#[test]
fn the_bound_counts_late_joiners() {
    let p = small(2);
    let f = f64::from(PIECES) * PIECE_LEN as f64;
    // One reader at 0, the other after the file's time: the second needs
    // F over the source's and the first's uplinks once it joins.
    let t = f / RATE;
    let joined = [0, 0, (t * 1e6) as u64];
    assert!((d_min(&p, &joined) - (t + f / (2.0 * RATE))).abs() < 1e-6);
}
