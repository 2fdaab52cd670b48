//! The upload scheduler: the pure plan, then the pacer with the uplink's
//! window, the token bucket and choking, in paused time.

use super::*;
use std::sync::Arc;
use std::time::Duration;

/// Piece `n` of the 64-piece file the asks are for.
fn pi(n: u32) -> PieceIndex {
    let layout = fileshare_protocol::Layout::new(
        64 * fileshare_protocol::PIECE_LEN,
        fileshare_protocol::PIECE_LEN,
    );
    layout.unwrap().validate(n).unwrap()
}

fn ask(conn: u64, piece: u32) -> Ask {
    Ask {
        conn,
        file: FileId([1; 32]),
        piece: pi(piece),
        num_pieces: 64,
        bytes: 1000,
        second: false,
    }
}

/// A request for a whole piece: one fills much of the uplink's window.
fn big(conn: u64, piece: u32) -> Ask {
    Ask {
        bytes: fileshare_protocol::PIECE_LEN,
        ..ask(conn, piece)
    }
}

fn waiting(asks: &[Ask]) -> Vec<Waiting> {
    (asks.iter().enumerate())
        .map(|(i, &ask)| Waiting { ask, seq: i as u64 })
        .collect()
}

#[test]
fn never_uploaded_pieces_first_and_stale_first_asks_refused() {
    // Pieces 0 and 1 went out once already; piece 2 never did.
    let w = waiting(&[ask(1, 0), ask(2, 1), ask(3, 2), ask(4, 0)]);
    let uploads = |_: &FileId, p: PieceIndex| u32::from(p.get() < 2);
    let p = plan(&w, uploads, |_| 0);
    assert_eq!(p.serve, Some(2));
    assert_eq!(p.refuse, vec![0, 1, 3]);
}

#[test]
fn a_second_ask_waits_for_fresh_pieces_but_is_never_refused() {
    let mut w = waiting(&[ask(1, 0), ask(2, 5), ask(3, 0)]);
    w[0].ask.second = true;
    let uploads = |_: &FileId, p: PieceIndex| u32::from(p.get() == 0);
    let p = plan(&w, uploads, |_| 0);
    assert_eq!(p.serve, Some(1), "the never-uploaded piece first");
    assert_eq!(p.refuse, vec![2], "the first ask for piece 0 only");
    // Without fresh work: the second ask before stale first asks.
    let w = [w[2], w[0]];
    assert_eq!(plan(&w, uploads, |_| 0).serve, Some(1));
}

#[test]
fn nothing_refused_without_fresher_work() {
    // Everything went out once or twice: the least uploaded is served,
    // nothing is refused, so the upload never idles.
    let w = waiting(&[ask(1, 0), ask(2, 1), ask(3, 0)]);
    let uploads = |_: &FileId, p: PieceIndex| if p.get() == 0 { 2 } else { 1 };
    let p = plan(&w, uploads, |_| 0);
    assert_eq!(
        p,
        Plan {
            serve: Some(1),
            refuse: vec![]
        }
    );
    assert_eq!(plan(&[], uploads, |_| 0), Plan::default());
}

#[test]
fn other_first_asks_for_the_piece_chosen_are_refused_while_other_pieces_wait() {
    // Everything went out once; three connections want piece 3, one piece 1.
    let mut w = waiting(&[ask(1, 3), ask(2, 3), ask(3, 1), ask(4, 3)]);
    w[3].ask.second = true;
    let p = plan(&w, |_, _| 1, |_| 0);
    assert_eq!(p.serve, Some(3), "the second ask, then the most wanted");
    assert_eq!(p.refuse, vec![0, 1], "its first asks: get it from conn 4");
    // With nothing else to send, they wait for their turn.
    let w = waiting(&[ask(1, 3), ask(2, 3)]);
    assert_eq!(plan(&w, |_, _| 1, |_| 0).refuse, Vec::<usize>::new());
}

#[test]
fn connections_take_turns() {
    // Connection 1 asked first for two pieces, but was just served.
    let w = waiting(&[ask(1, 0), ask(1, 1), ask(2, 2)]);
    let last = |c: u64| if c == 1 { 5 } else { 3 };
    assert_eq!(plan(&w, |_, _| 0, last).serve, Some(2));
    // Same turn: arrival order.
    assert_eq!(plan(&w, |_, _| 0, |_| 0).serve, Some(0));
}

#[test]
fn the_piece_most_requesters_wait_for_goes_first() {
    // All went out once: piece 3 is asked for by three connections,
    // piece 1 by one that has waited longer.
    let w = waiting(&[ask(1, 1), ask(2, 3), ask(3, 3), ask(4, 3)]);
    let once = |_: &FileId, _: PieceIndex| 1;
    let last = |c: u64| [0, 1, 4, 3, 2][usize::try_from(c).unwrap_or(0)];
    // Of piece 3's requesters, the one served longest ago.
    assert_eq!(plan(&w, once, last).serve, Some(3));
    // Fresh pieces likewise.
    assert_eq!(plan(&w, |_, _| 0, last).serve, Some(3));
    // But never before a piece uploaded fewer times.
    let w = waiting(&[ask(1, 1), ask(2, 3), ask(3, 3)]);
    let fewer = |_: &FileId, p: PieceIndex| if p.get() == 1 { 1 } else { 2 };
    assert_eq!(plan(&w, fewer, last).serve, Some(0));
}

proptest::proptest! {
    /// Each plan answers distinct requests, serves one whenever any
    /// waits, serves a least-uploaded one, and refuses only first asks
    /// of uploaded pieces while a fresh request waits.
    #[test]
    fn plans_are_sound(
        asks in proptest::collection::vec((0u64..3, 0u32..6, proptest::bool::weighted(0.25)), 0..8),
        counts in proptest::collection::vec(0u32..3, 6),
        turns in proptest::collection::vec(0u64..4, 3),
    ) {
        let asks: Vec<Ask> = (asks.iter())
            .map(|&(conn, piece, second)| Ask { second, ..ask(conn, piece) })
            .collect();
        let w = waiting(&asks);
        let p = plan(&w, |_, i| counts[i.usize()], |c| turns[usize::try_from(c).unwrap_or(0)]);
        let rank = |i: usize| match counts[asks[i].piece.usize()] {
            0 => 0,
            _ if asks[i].second => 1,
            c => c + 1,
        };
        let n = asks.len();
        proptest::prop_assert_eq!(p.serve.is_some(), n > 0);
        if let Some(s) = p.serve {
            proptest::prop_assert!(!p.refuse.contains(&s));
            proptest::prop_assert!((0..n).all(|i| p.refuse.contains(&i) || rank(i) >= rank(s)));
        }
        for &r in &p.refuse {
            proptest::prop_assert!(!asks[r].second);
            let same = p.serve.is_some_and(|s| asks[s].piece == asks[r].piece);
            proptest::prop_assert!(same || (rank(r) > 0 && (0..n).any(|i| rank(i) == 0)));
        }
    }
}

fn what(a: Admission) -> &'static str {
    match a {
        Admission::Serve(_) => "serve",
        Admission::Busy => "busy",
        Admission::Choked => "choked",
    }
}

fn pacer(up: &Arc<Uploads>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let (u, s) = (up.clone(), shutdown.clone());
    (shutdown, tokio::spawn(async move { u.run(s).await }))
}

#[tokio::test(start_paused = true)]
async fn cancelled_requests_cost_no_upload() {
    // 1000 B/s with a 1-byte burst: each 1000-byte piece puts the
    // bucket a second into debt, so later requests wait their turn.
    let up = Arc::new(Uploads::new(Some(1000), 1, |_| 0));
    let (shutdown, pacer) = pacer(&up);
    let admit = |a: Ask| {
        let up = up.clone();
        tokio::spawn(async move { what(up.admit(a).await) })
    };
    let start = tokio::time::Instant::now();
    assert_eq!(admit(ask(1, 0)).await.unwrap(), "serve");
    // While the pacer waits out that second: a never-uploaded piece is
    // asked for, then a first ask for piece 0, which already went out.
    let fresh = admit(ask(2, 1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let again = admit(ask(3, 0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The fresh request is cancelled (its piece came from elsewhere):
    // it leaves the queue, so it neither costs a second of upload nor
    // turns the other request away as `Busy` in favour of itself.
    fresh.abort();
    assert_eq!(again.await.unwrap(), "serve");
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    shutdown.cancel();
    pacer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_same_piece_goes_out_once_while_others_wait() {
    let up = Arc::new(Uploads::new(Some(1000), 1000, |_| 0));
    // Queue everything before the pacer runs: four readers ask for
    // piece 0, one for piece 1.
    let asks = [ask(1, 0), ask(2, 0), ask(3, 0), ask(4, 0), ask(5, 1)];
    let tasks: Vec<_> = (asks.iter().copied())
        .map(|a| {
            let up = up.clone();
            tokio::spawn(async move { what(up.admit(a).await) })
        })
        .collect();
    tokio::task::yield_now().await;
    let (shutdown, pacer) = pacer(&up);
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(got, vec!["serve", "busy", "busy", "busy", "serve"]);
    shutdown.cancel();
    pacer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn without_a_rate_the_unwritten_bytes_pace_the_uploads() {
    let up = Arc::new(Uploads::new(None, 0, |_| 0));
    let (shutdown, pacer) = pacer(&up);
    // Two pieces fill the smallest window: both go at once.
    let Admission::Serve(a) = up.admit(big(1, 0)).await else {
        panic!("not served")
    };
    let Admission::Serve(_b) = up.admit(big(2, 1)).await else {
        panic!("not served")
    };
    // The next ones wait: a fresh piece, then a first ask for piece 0.
    let spawn = |a: Ask| {
        let up = up.clone();
        tokio::spawn(async move { what(up.admit(a).await) })
    };
    let fresh = spawn(big(3, 2));
    let stale = spawn(big(4, 0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!fresh.is_finished() && !stale.is_finished());
    // One write returns: the fresh piece takes its room, and the stale
    // ask is refused rather than sent twice while fresh work waited.
    a.written();
    assert_eq!(fresh.await.unwrap(), "serve");
    assert_eq!(stale.await.unwrap(), "busy");
    shutdown.cancel();
    pacer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn choked_connections_are_served_only_spare_upload_until_they_upload_to_us() {
    // The peer of connection 6 uploads to us; nobody else does.
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = received.clone();
    // A token bucket in debt for 10 ms after each 1000-byte piece, so
    // the uplink is not idle when a choked connection asks right after
    // another was served: it gets no spare upload.
    let up = Arc::new(Uploads::new(Some(100_000), 1, move |p: &PeerId| {
        if p.0[0] == 6 {
            r.load(std::sync::atomic::Ordering::Relaxed)
        } else {
            0
        }
    }));
    for conn in 1..=6u8 {
        up.connected(u64::from(conn), PeerId([conn; 16]));
    }
    let (shutdown, pacer) = pacer(&up);
    let unchoked = |c: u64| up.inner.state.lock().choker.is_unchoked(c);
    // Five connections take the four regular slots and the optimistic
    // one; the sixth, asking for a piece already sent, is choked: it
    // waits, and is served once the bucket pays and nobody else waits.
    for conn in 1..=5u32 {
        let a = up.admit(ask(u64::from(conn), conn)).await;
        assert_eq!(what(a), "serve");
    }
    assert_eq!(what(up.admit(ask(6, 1)).await), "serve");
    assert!(!unchoked(6));
    // Its peer uploads to us, and everyone keeps asking: after the
    // next rotation it is served, and one of the others is choked.
    received.store(1 << 20, std::sync::atomic::Ordering::Relaxed);
    let mut last = Vec::new();
    for round in 0..6u32 {
        tokio::time::sleep(choke::ROTATE / 4).await;
        last.clear();
        for conn in 1..=6u32 {
            let a = up.admit(ask(u64::from(conn), 1 + (conn + round) % 5)).await;
            last.push(what(a));
        }
    }
    assert_eq!(last[5], "serve", "{last:?}");
    assert!(unchoked(6));
    assert!((1..=5).any(|c| !unchoked(c)));
    shutdown.cancel();
    pacer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_choked_connection_is_served_when_the_uplink_would_idle() {
    let up = Arc::new(Uploads::new(None, 0, |_| 0));
    let (shutdown, pacer) = pacer(&up);
    // Five connections take every unchoked slot; two of them hold a
    // whole piece each, unwritten, which fills the uplink's window.
    for conn in 3..=5u64 {
        assert_eq!(what(up.admit(ask(conn, 0)).await), "serve");
    }
    let mut held = Vec::new();
    for conn in 1..=2u64 {
        let Admission::Serve(s) = up.admit(big(conn, 0)).await else {
            panic!("not served")
        };
        held.push(s);
    }
    // The window is full: a sixth connection is choked, and refused
    // once its wait ran out with the window still full.
    assert_eq!(what(up.admit(big(6, 0)).await), "choked");
    // The window frees and no unchoked request waits: it is served.
    drop(held);
    tokio::task::yield_now().await;
    assert_eq!(what(up.admit(big(6, 0)).await), "serve");
    // Not while an unchoked connection's request waits for room.
    let Admission::Serve(a) = up.admit(big(1, 3)).await else {
        panic!("not served")
    };
    let Admission::Serve(_b) = up.admit(big(2, 4)).await else {
        panic!("not served")
    };
    let waiting = {
        let up = up.clone();
        tokio::spawn(async move { what(up.admit(big(3, 5)).await) })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(what(up.admit(big(6, 0)).await), "choked");
    // Unless it asks for a piece never sent: that goes to whoever asks.
    let fresh = {
        let up = up.clone();
        tokio::spawn(async move { what(up.admit(big(6, 7)).await) })
    };
    a.written();
    assert_eq!(fresh.await.unwrap(), "serve");
    assert_eq!(waiting.await.unwrap(), "serve");
    shutdown.cancel();
    pacer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_reads_holds_at_most_two_pieces() {
    // Small pieces: the uplink's window is no limit here.
    let up = Arc::new(Uploads::new(None, 0, |_| 0));
    let (shutdown, pacer) = pacer(&up);
    let mut held = Vec::new();
    for piece in 0..MAX_UNWRITTEN {
        let Admission::Serve(s) = up.admit(ask(1, piece)).await else {
            panic!("not served")
        };
        held.push(s);
    }
    // Its third waits while the first two are unwritten; another
    // connection is served meanwhile.
    let third = {
        let up = up.clone();
        tokio::spawn(async move { what(up.admit(ask(1, 10)).await) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!third.is_finished());
    assert!(matches!(up.admit(ask(2, 20)).await, Admission::Serve(_)));
    held.pop().unwrap().written();
    assert_eq!(third.await.unwrap(), "serve");
    shutdown.cancel();
    pacer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_choked_first_copy_request_is_refused_once_the_copy_went_elsewhere() {
    let up = Arc::new(Uploads::new(None, 0, |_| 0));
    let (shutdown, pacer) = pacer(&up);
    // Connection 6 is served once while the uplink is idle (a spare
    // upload), after five others took every unchoked slot.
    for conn in 3..=5u64 {
        assert_eq!(what(up.admit(ask(conn, 0)).await), "serve");
    }
    for conn in 1..=2u64 {
        assert_eq!(what(up.admit(ask(conn, 0)).await), "serve");
    }
    assert_eq!(what(up.admit(ask(6, 0)).await), "serve");
    // The window fills; both 6 (choked) and 1 then ask for fresh piece 7.
    let mut held = Vec::new();
    for conn in 1..=2u64 {
        let Admission::Serve(s) = up.admit(big(conn, 1)).await else {
            panic!("not served")
        };
        held.push(s);
    }
    let spawn = |a: Ask| {
        let up = up.clone();
        tokio::spawn(async move { what(up.admit(a).await) })
    };
    let six = spawn(big(6, 7));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let three = spawn(big(3, 7));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Connection 3 was served longer ago: it gets the first copy, and 6,
    // choked, is refused rather than sent a second one.
    drop(held);
    assert_eq!(three.await.unwrap(), "serve");
    assert_eq!(six.await.unwrap(), "choked");
    shutdown.cancel();
    pacer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lone_requester_is_served_in_its_own_order() {
    let up = Arc::new(Uploads::new(None, 0, |_| 0));
    let (shutdown, pacer) = pacer(&up);
    // Another peer fetched pieces 0 and 1 earlier, then went quiet.
    for piece in [0, 1] {
        let Admission::Serve(s) = up.admit(big(1, piece)).await else {
            panic!("not served")
        };
        s.written();
    }
    tokio::time::sleep(crate::net::choke::IDLE).await;
    // A lone reader asks for 0, 1 and 2, in that order, while the uplink
    // is busy: nothing is refused, and 0 goes first.
    let Admission::Serve(a) = up.admit(big(2, 5)).await else {
        panic!("not served")
    };
    let Admission::Serve(_b) = up.admit(big(2, 6)).await else {
        panic!("not served")
    };
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let tasks: Vec<_> = [0, 1, 2]
        .into_iter()
        .map(|piece| {
            let (up, order) = (up.clone(), order.clone());
            tokio::spawn(async move {
                let got = up.admit(big(2, piece)).await;
                let served = matches!(got, Admission::Serve(_));
                order.lock().push(piece);
                served
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(a);
    for t in tasks {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(t.await.unwrap(), "refused");
    }
    assert_eq!(*order.lock(), vec![0, 1, 2]);
    shutdown.cancel();
    pacer.await.unwrap();
}

/// Five connections take every unchoked slot; two of them hold a whole
/// piece each, unwritten, which fills the uplink's window. Pieces 0 to 2
/// went out.
async fn full_window(up: &Arc<Uploads>) -> Vec<Sending> {
    for conn in 3..=5u64 {
        let piece = u32::try_from(conn).unwrap() - 3;
        assert_eq!(what(up.admit(ask(conn, piece)).await), "serve");
    }
    let mut held = Vec::new();
    for conn in 1..=2u64 {
        let Admission::Serve(s) = up.admit(big(conn, 0)).await else {
            panic!("not served")
        };
        held.push(s);
    }
    held
}

#[tokio::test(start_paused = true)]
async fn a_choked_request_waits_for_room_behind_unchoked_ones() {
    let up = Arc::new(Uploads::new(None, 0, |_| 0));
    let (shutdown, pacer) = pacer(&up);
    let mut held = full_window(&up).await;
    let spawn = |a: Ask| {
        let up = up.clone();
        tokio::spawn(async move { what(up.admit(a).await) })
    };
    // A choked connection asks while the window is full: it waits.
    let six = spawn(big(6, 0));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!six.is_finished());
    // An unchoked one asks after it, but takes the room that frees first.
    let three = {
        let up = up.clone();
        tokio::spawn(async move { up.admit(big(3, 2)).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    held.pop().unwrap().written();
    let Admission::Serve(_three) = three.await.unwrap() else {
        panic!("not served")
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!six.is_finished());
    // The next room, with no unchoked request waiting, goes to it.
    held.pop().unwrap().written();
    assert_eq!(six.await.unwrap(), "serve");
    shutdown.cancel();
    pacer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_choked_request_is_refused_when_its_wait_runs_out() {
    let up = Arc::new(Uploads::new(None, 0, |_| 0));
    let (shutdown, pacer) = pacer(&up);
    let _held = full_window(&up).await;
    let start = tokio::time::Instant::now();
    let spawn = |a: Ask| {
        let up = up.clone();
        tokio::spawn(async move { what(up.admit(a).await) })
    };
    // Two of its requests wait; a third is refused at once.
    let waiting = [spawn(big(6, 0)), spawn(big(6, 1))];
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(what(up.admit(big(6, 2)).await), "choked");
    assert_eq!(start.elapsed(), Duration::from_millis(10));
    // The window stays full: both are refused once their wait ran out
    // (the uplink's rate not measured yet).
    for w in waiting {
        assert_eq!(w.await.unwrap(), "choked");
    }
    assert_eq!(start.elapsed(), choke::CHOKED_WAIT_UNMEASURED);
    // Cancelled or refused, they hold no place: it may wait again.
    let again = spawn(big(6, 3));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!again.is_finished());
    shutdown.cancel();
    pacer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_connection_hears_when_it_is_unchoked_and_when_it_ends() {
    let up = Arc::new(Uploads::new(None, 0, |_| 0));
    let (shutdown, pacer) = pacer(&up);
    let mut one = up.watch_choke(1);
    let six = up.watch_choke(6);
    assert!(!*one.borrow_and_update(), "choked until it asks");
    for conn in 1..=5u64 {
        assert_eq!(what(up.admit(ask(conn, 0)).await), "serve");
    }
    assert!(one.has_changed().unwrap());
    assert!(*one.borrow_and_update(), "unchoked by its first ask");
    // Every slot is taken: the sixth asker stays choked, and hears nothing.
    let _ = up.admit(ask(6, 0)).await;
    assert!(!six.has_changed().unwrap());
    assert!(!*six.borrow());
    up.forget_conn(1);
    assert!(one.changed().await.is_err(), "the connection ended");
    shutdown.cancel();
    pacer.await.unwrap();
}
