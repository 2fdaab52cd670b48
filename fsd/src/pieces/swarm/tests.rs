//! The swarm's transitions as the peer links see them: what each link's
//! queue receives.

use super::*;
use crate::store::Store;
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::{PieceHash, PIECE_LEN};

pub(super) fn swarm(pieces: u32) -> (tempfile::TempDir, Swarm) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let meta = FileMeta {
        name: "f.bin".into(),
        size: u64::from(pieces) * PIECE_LEN,
        piece_len: PIECE_LEN,
        hashes: (0..pieces)
            .map(|i| PieceHash::of(&i.to_le_bytes()))
            .collect(),
    };
    let (file, have) = store.create("g", &meta).unwrap();
    let s = Swarm::new(file, have, 7, CancellationToken::new());
    (dir, s)
}

/// Piece `n` of a file of at least `n + 1` pieces.
pub(super) fn pi(n: u32) -> PieceIndex {
    let layout = fileshare_protocol::Layout::new(u64::from(n + 1) * PIECE_LEN, PIECE_LEN);
    layout.unwrap().validate(n).unwrap()
}

pub(super) fn peer(n: u8) -> PeerId {
    PeerId([n; 16])
}

pub(super) fn drain(rx: &mut mpsc::UnboundedReceiver<FetchCmd>) -> Vec<FetchCmd> {
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        out.push(c);
    }
    out
}

fn requested(cmds: &[FetchCmd]) -> Vec<u32> {
    let mut v: Vec<u32> = (cmds.iter())
        .filter_map(|c| match c {
            FetchCmd::Request(p) => Some(p.get()),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn end_game_duplicates_are_cancelled_when_a_copy_arrives() {
    let (_dir, s) = swarm(4);
    let full = Bitfield::full(4);
    let (a, mut rx_a) = s.add_link(peer(1), "a".into(), full.clone()).unwrap();
    let (b, mut rx_b) = s.add_link(peer(2), "b".into(), full).unwrap();
    s.want_all();
    // Four pieces, two peers with four slots each: every piece goes to one
    // peer, and nothing twice while the requests are fresh.
    let (first_a, first_b) = (requested(&drain(&mut rx_a)), requested(&drain(&mut rx_b)));
    let mut all: Vec<u32> = first_a.iter().chain(&first_b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, vec![0, 1, 2, 3]);
    s.tick_at(a, Instant::now());
    assert!(drain(&mut rx_a).is_empty() && drain(&mut rx_b).is_empty());
    // Once they are late, the end game asks the other peer too.
    s.tick_at(a, Instant::now() + END_LATE_MIN);
    assert_eq!(requested(&drain(&mut rx_a)), first_b);
    assert_eq!(requested(&drain(&mut rx_b)), first_a);
    // A piece arrives from a: b is told to cancel it, a is not.
    let p = first_a[0];
    s.mark_hash_ok(a, pi(p), PIECE_LEN);
    assert_eq!(drain(&mut rx_b), vec![FetchCmd::Cancel(pi(p))]);
    assert!(drain(&mut rx_a).is_empty());
    // A late copy from b changes nothing and cancels nothing.
    s.mark_hash_ok(b, pi(p), PIECE_LEN);
    assert!(drain(&mut rx_a).is_empty() && drain(&mut rx_b).is_empty());
    assert!(s.has(s.file.layout.validate(p).unwrap()));
}

#[test]
fn no_piece_is_asked_twice_of_one_peer() {
    let (_dir, s) = swarm(6);
    let (a, mut rx) = s.add_link(peer(1), "a".into(), Bitfield::full(6)).unwrap();
    s.want_all();
    let first = requested(&drain(&mut rx));
    assert_eq!(first.len(), INITIAL_SLOTS as usize);
    // Every later schedule (a piece arriving) adds distinct pieces only.
    s.mark_hash_ok(a, pi(first[0]), PIECE_LEN);
    let next = requested(&drain(&mut rx));
    assert!(
        next.iter().all(|p| !first.contains(p)),
        "{first:?} then {next:?}"
    );
}

#[test]
fn a_pushed_have_makes_the_peer_a_source_at_once() {
    let (_dir, s) = swarm(4);
    let (a, mut rx) = s.add_link(peer(1), "a".into(), Bitfield::new(4)).unwrap();
    s.want_all();
    assert!(drain(&mut rx).is_empty());
    s.add_have(a, pi(3));
    assert_eq!(drain(&mut rx), vec![FetchCmd::Request(pi(3))]);
    // A repeated or unwanted Have asks nothing more.
    s.add_have(a, pi(3));
    assert!(drain(&mut rx).is_empty());
}

#[test]
fn a_busy_piece_comes_from_another_peer_or_later_from_the_same() {
    let (_dir, s) = swarm(1);
    let one = Bitfield::full(1);
    let (a, mut rx_a) = s.add_link(peer(1), "a".into(), one.clone()).unwrap();
    s.want_all();
    assert_eq!(drain(&mut rx_a), vec![FetchCmd::Request(pi(0))]);
    // a sent piece 0 to someone else and refuses: nothing to ask now.
    s.piece_busy(a, pi(0));
    assert!(drain(&mut rx_a).is_empty());
    s.tick(a);
    assert!(
        drain(&mut rx_a).is_empty(),
        "asked again before the deferral"
    );
    // The one it went to offers it: it is asked there.
    let (b, mut rx_b) = s.add_link(peer(2), "b".into(), Bitfield::new(1)).unwrap();
    s.add_have(b, pi(0));
    assert_eq!(drain(&mut rx_b), vec![FetchCmd::Request(pi(0))]);
    // After the deferral a may be asked again (here as an end-game copy).
    s.tick_at(a, Instant::now() + BUSY_DEFER);
    assert_eq!(drain(&mut rx_a), vec![FetchCmd::Request(pi(0))]);
}

#[test]
fn a_lone_refusing_peer_is_asked_again_after_the_deferral() {
    let (_dir, s) = swarm(2);
    let (a, mut rx) = s.add_link(peer(1), "a".into(), Bitfield::full(2)).unwrap();
    s.want_all();
    assert_eq!(requested(&drain(&mut rx)), vec![0, 1]);
    s.piece_busy(a, pi(1));
    assert!(drain(&mut rx).is_empty());
    // A fresh bitfield keeps the deferral.
    s.update_have(a, Bitfield::new(2));
    s.update_have(a, Bitfield::full(2));
    assert!(drain(&mut rx).is_empty());
    s.tick_at(a, Instant::now() + BUSY_DEFER);
    assert_eq!(drain(&mut rx), vec![FetchCmd::Request(pi(1))]);
}

#[test]
fn readers_fetch_from_each_other_before_the_seed() {
    let (_dir, s) = swarm(4);
    let (src, mut from_src) = s
        .add_link(peer(1), "src".into(), Bitfield::full(4))
        .unwrap();
    let mut half = Bitfield::new(4);
    half.set(0);
    half.set(1);
    let (_r, mut from_r) = s.add_link(peer(2), "r".into(), half).unwrap();
    s.want_all();
    let mut r = requested(&drain(&mut from_r));
    r.sort_unstable();
    assert_eq!(r, vec![0, 1]);
    let mut from_seed = requested(&drain(&mut from_src));
    from_seed.sort_unstable();
    assert_eq!(from_seed, vec![2, 3]);
    // What it received, by peer, for the uploads' tit-for-tat.
    s.mark_hash_ok(src, pi(2), 100);
    assert_eq!(s.received_from(&peer(1)), 100);
    assert_eq!(s.received_from(&peer(2)), 0);
}

#[test]
fn request_window_follows_the_measured_rate() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut l = FetchLink::new(FetchLinkId(1), peer(1), String::new(), Bitfield::new(1), tx);
    l.ask(0, Instant::now());
    assert_eq!(l.slots(), INITIAL_SLOTS);
    // 1 MiB/s: half a second is one piece.
    l.rate = 1024.0 * 1024.0;
    assert_eq!((l.slots(), l.free_slots()), (1, 0));
    l.rate = 4.0 * 1024.0 * 1024.0;
    assert_eq!(l.slots(), 4);
    l.rate = 1e12;
    assert_eq!(l.slots(), SLOTS_PER_PEER);
    l.rate = f64::NAN;
    assert_eq!(l.slots(), INITIAL_SLOTS);
    // A seed keeps a few requests waiting even at a low rate.
    l.have = Bitfield::full(1);
    l.rate = 1024.0 * 1024.0;
    assert_eq!(l.slots(), INITIAL_SLOTS);
}

#[test]
fn one_link_per_peer_while_connecting() {
    let (_dir, s) = swarm(1);
    assert!(s.connect_started(peer(1)));
    assert!(
        !s.connect_started(peer(1)),
        "a second link task while connecting"
    );
    assert_eq!(s.links(), 1);
    let (key, _rx) = s.add_link(peer(1), "a".into(), Bitfield::new(1)).unwrap();
    assert!(!s.connect_started(peer(1)), "a link task while linked");
    assert!(s.add_link(peer(1), "a".into(), Bitfield::new(1)).is_none());
    s.connect_ended(&peer(1));
    assert_eq!(s.links(), 1);
    s.release_link(key);
    assert_eq!(s.links(), 0);
    assert!(
        s.connect_started(peer(1)),
        "not linked again after the link ended"
    );
}

#[test]
fn a_peer_dropped_for_bad_pieces_is_never_linked_again() {
    let (_dir, s) = swarm(MAX_FAILURES);
    let (a, mut rx) = s
        .add_link(peer(1), "a".into(), Bitfield::full(MAX_FAILURES))
        .unwrap();
    s.want_all();
    for p in requested(&drain(&mut rx)) {
        let verdict = s.mark_hash_failed(a, pi(p));
        assert_eq!(verdict == Verdict::DropPeer, p + 1 == MAX_FAILURES);
    }
    assert_eq!(s.links(), 0);
    assert!(!s.connect_started(peer(1)));
    assert!(s
        .add_link(peer(1), "a".into(), Bitfield::full(MAX_FAILURES))
        .is_none());
    assert_eq!(
        s.counters(),
        vec![(
            "a".into(),
            PeerCounters {
                failures: MAX_FAILURES,
                ..Default::default()
            }
        )]
    );
}

/// Stores every piece of `s` (its bytes are the piece's index).
fn store_all(s: &Swarm) {
    for p in s.file.layout.pieces() {
        let byte = u8::try_from(p.get()).unwrap();
        let data = vec![byte; usize::try_from(s.file.layout.piece_size(p)).unwrap()];
        assert_eq!(
            s.store_verified(FetchLinkId(0), p, &data).unwrap(),
            PIECE_LEN
        );
    }
}

fn offset(piece: u32) -> u64 {
    u64::from(piece) * PIECE_LEN
}

fn evictable(s: &Swarm) -> Vec<u32> {
    let mut v = s.evictable();
    v.sort_unstable();
    v.into_iter().map(|(_, p)| p.get()).collect()
}

#[test]
fn eviction_takes_the_least_recently_read_outside_readers_windows() {
    let (_dir, s) = swarm(8);
    store_all(&s);
    assert_eq!(s.held_bytes(), 8 * PIECE_LEN);
    // Stored in order, nothing read: oldest first.
    assert_eq!(evictable(&s), vec![0, 1, 2, 3, 4, 5, 6, 7]);
    // A reader at 4 reading 2 ahead: 4..=6 are kept; what it read before
    // 4 is not in its window once it moved on.
    s.read_range(offset(2), 1, 2, <[u8]>::to_vec).unwrap();
    s.read_range(offset(4), 1, 2, <[u8]>::to_vec).unwrap();
    assert_eq!(evictable(&s), vec![0, 1, 3, 7, 2]);
    let mut subscription = s.subscribe();
    let out = s.evict(&[pi(0), pi(5), pi(3)]).unwrap();
    assert_eq!(
        out.pieces,
        vec![pi(0), pi(3)],
        "5 is in the reader's window"
    );
    assert_eq!(out.bytes, 2 * PIECE_LEN);
    assert!(out.was_complete);
    assert_eq!(subscription.try_recv().unwrap(), Offer::Lost);
    assert_eq!(s.held_bytes(), 6 * PIECE_LEN);
    assert!(matches!(
        s.read_range(offset(0), 1, 0, <[u8]>::to_vec),
        Err(RangeError::Missing)
    ));
    assert!(s.read_piece(s.file.layout.validate(3).unwrap()).is_none());
    assert_eq!(
        s.read_range(offset(5), 3, 0, <[u8]>::to_vec).unwrap(),
        vec![5u8; 3]
    );
    // Evicted pieces are not fetched again unless a reader asks.
    let (_a, mut rx) = s.add_link(peer(1), "a".into(), Bitfield::full(8)).unwrap();
    assert!(drain(&mut rx).is_empty());
    // A download holds every piece.
    s.pin();
    assert!(s.evictable().is_empty());
    assert!(s.evict(&[pi(1)]).unwrap().pieces.is_empty());
    s.unpin();
    assert_eq!(s.evict(&[pi(1)]).unwrap().pieces, vec![pi(1)]);
}

#[test]
fn a_piece_that_cannot_be_stored_fails_its_readers_at_once() {
    let (_dir, s) = swarm(4);
    let (a, mut rx) = s.add_link(peer(1), "a".into(), Bitfield::full(4)).unwrap();
    let mut waits = s.acquire_range(offset(1), 10, 2);
    assert_eq!(waits.len(), 1);
    assert!(requested(&drain(&mut rx)).contains(&1));
    s.piece_unstorable(a, pi(1), libc::ENOSPC);
    assert_eq!(waits[0].1.try_recv().unwrap(), Err(libc::ENOSPC));
    assert_eq!(
        (s.store_failures(), s.last_store_errno()),
        (1, libc::ENOSPC)
    );
    assert!(s.links() == 1, "the link stays");
    // Not asked again until a reader wants it.
    s.piece_busy(a, pi(2));
    assert!(!requested(&drain(&mut rx)).contains(&1));
    let again = s.acquire_range(offset(1), 10, 0);
    assert_eq!(again.len(), 1);
    assert!(requested(&drain(&mut rx)).contains(&1));
}

fn link_at(rate: f64) -> FetchLink {
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut l = FetchLink::new(
        FetchLinkId(1),
        peer(1),
        String::new(),
        Bitfield::full(8),
        tx,
    );
    l.rate = rate;
    l
}

#[test]
fn the_rate_is_sampled_over_a_while_not_between_two_pieces() {
    let mut l = link_at(0.0);
    let t = Instant::now();
    // Pieces verified in a burst say nothing: the first starts the
    // sample, and no time passes.
    for _ in 0..4 {
        l.measure(PIECE_LEN, t);
    }
    assert_eq!(l.rate, 0.0);
    // The first sample ends after four pieces: 2 MiB in 100 ms.
    l.measure(PIECE_LEN, t + Duration::from_millis(100));
    let mib_s = l.rate / (1024.0 * 1024.0);
    assert!((19.9..20.1).contains(&mib_s), "{mib_s} MiB/s");
    // Later ones last 200 ms however many pieces come: 8 pieces (4 MiB)
    // move the rate half-way to 20 MiB/s, then 5 MiB half-way to 25.
    for k in 1..=8 {
        l.measure(PIECE_LEN, t + Duration::from_millis(100 + 25 * k));
    }
    let mib_s = l.rate / (1024.0 * 1024.0);
    assert!((19.9..20.1).contains(&mib_s), "{mib_s} MiB/s");
    l.measure(10 * PIECE_LEN, t + Duration::from_millis(500));
    let mib_s = l.rate / (1024.0 * 1024.0);
    assert!((22.4..22.6).contains(&mib_s), "{mib_s} MiB/s");
}

#[test]
fn a_queue_worked_through_at_the_peers_rate_is_on_time() {
    // 20 MB/s: a piece every 26 ms.
    let mut l = link_at(20e6);
    let t = Instant::now();
    for p in 0..8 {
        l.ask(p, t);
    }
    let piece = Duration::from_secs_f64(PIECE_LEN as f64 / 20e6);
    // The peer delivers one piece after another: the next one is never
    // late, though it was asked long ago.
    let mut now = t;
    for p in 0..6 {
        now += piece;
        l.measure(PIECE_LEN, now);
        l.forget(p);
        assert!(!l.late(0, now + piece, END_LATE_MIN, 0.0), "piece {p}");
    }
    // A peer that stops is late once it has sent nothing for a while.
    assert!(!l.late(0, now + END_LATE_MIN / 2, END_LATE_MIN, 0.0));
    assert!(l.late(0, now + END_LATE_MIN, END_LATE_MIN, 0.0));
    // However it delivers, a request in flight for LATE_MAX is late.
    l.measure(PIECE_LEN, t + LATE_MAX);
    assert!(l.late(0, t + LATE_MAX, END_LATE_MIN, 0.0));
}

#[test]
fn an_unmeasured_link_is_late_at_the_files_typical_rate() {
    // A link that has delivered nothing yet, on a swarm whose links go at
    // 1 MiB/s: its first request takes three pieces' time (1.5 s) to be
    // late, not LATE_MIN.
    let mut l = link_at(0.0);
    let t = Instant::now();
    l.ask(0, t);
    l.ask(1, t);
    let mib = 1024.0 * 1024.0;
    assert!(!l.late(0, t + LATE_MIN, LATE_MIN, mib));
    assert!(!l.late(0, t + Duration::from_millis(1400), LATE_MIN, mib));
    assert!(l.late(0, t + Duration::from_millis(1500), LATE_MIN, mib));
    // The second in its queue waits its turn too, up to LATE_MAX.
    assert!(!l.late(1, t + Duration::from_millis(2900), LATE_MIN, mib));
    assert!(l.late(1, t + LATE_MAX, LATE_MIN, mib));
    // With no rate known anywhere, LATE_MIN as before.
    assert!(l.late(0, t + LATE_MIN, LATE_MIN, 0.0));
    // Its own measured rate comes first.
    l.rate = 10.0 * mib;
    assert!(l.late(0, t + LATE_MIN, LATE_MIN, mib));
}

#[test]
fn a_blocked_readers_piece_at_a_new_link_is_not_copied_while_on_time() {
    // Peer a is measured at 1 MiB/s; b has just joined. A reader waits on
    // piece 0, asked of b: at LATE_MIN it is not asked of a as well, since
    // b is taken to go at a's rate; once three pieces' time passed, it is.
    let (_dir, s) = swarm(64);
    let full = Bitfield::full(64);
    let (a, mut rx_a) = s.add_link(peer(1), "a".into(), full.clone()).unwrap();
    let mut only_0 = Bitfield::new(64);
    only_0.set(0);
    s.state.lock().links[0].rate = 1024.0 * 1024.0;
    // a has no free slot for piece 0: fill it with other pieces first.
    let slots = s.state.lock().links[0].slots();
    for p in 1..=slots {
        s.state.lock().links[0].ask(p, Instant::now());
    }
    let (b, mut rx_b) = s.add_link(peer(2), "b".into(), only_0).unwrap();
    let _wait = s.acquire_range(0, 10, 0);
    assert_eq!(requested(&drain(&mut rx_b)), vec![0]);
    // a's slot frees up; piece 0 is in flight at b and on time.
    s.state.lock().links[0].forget(1);
    let t = Instant::now();
    s.tick_at(b, t + LATE_MIN);
    s.tick_at(a, t + LATE_MIN);
    assert!(!requested(&drain(&mut rx_a)).contains(&0));
    s.tick_at(a, t + Duration::from_millis(1600));
    assert!(requested(&drain(&mut rx_a)).contains(&0));
}
