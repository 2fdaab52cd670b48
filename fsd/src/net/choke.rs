//! Which connections this daemon uploads to (choking).
//!
//! An uplink split among every requester at once gives each a trickle, and
//! a new file's readers all ask its source first: they would all drain it
//! and trade little. So at most [`REGULAR`] connections are *unchoked* for
//! their merit, plus one *optimistic* unchoke; a choked connection's piece
//! requests are served only with upload no unchoked one takes, and
//! answered `Busy` after a short wait otherwise, so its requester turns to
//! its other peers (but for a piece's first copy, see
//! `upload_scheduler.rs`).
//!
//! - **Rotation**, every [`ROTATE`]: the regular set is chosen again among
//!   the *interested* connections (those that asked for a piece during the
//!   round or have requests waiting): first those whose peers uploaded the
//!   most to this daemon during the round (tit-for-tat: readers that trade
//!   are served by each other), then those this daemon sent the least (a
//!   seed downloads nothing: it takes its readers in turns, so its pieces
//!   spread over all of them and each has something of its own to trade),
//!   then those already unchoked, then connection order.
//! - **Optimistic unchoke**: one more interested connection, moved every
//!   [`OPTIMISTIC_ROUNDS`] rounds to the choked one that held it longest
//!   ago (never first): a newcomer has nothing to offer yet, and this is
//!   how it gets its first pieces and shows its upload.
//! - **Between rotations**, a choked connection that asks is unchoked at
//!   once while fewer than [`REGULAR`] + 1 unchoked connections are active
//!   (an unchoked one that asked nothing for a while gives its slot up), so
//!   a daemon with few requesters serves them all from their first request.
//!
//! A connection is told each time it is choked or unchoked ([`Notices`],
//! sent on its subscriptions), and a choked request refused says so, so
//! requesters ask the peers that unchoke them and keep only a request at
//! the others, instead of waiting out choked waits one peer after another.
//!
//! Pure but for [`Notices`]: the upload scheduler (`upload_scheduler.rs`)
//! calls it under its lock with what it counted.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// Connections unchoked for their merit.
pub const REGULAR: usize = 4;

/// How often the unchoked set is chosen again.
pub const ROTATE: Duration = Duration::from_secs(2);

/// Rounds between two moves of the optimistic unchoke.
pub const OPTIMISTIC_ROUNDS: u64 = 2;

/// An unchoked connection that asked nothing for this long (and has nothing
/// waiting) gives its slot to a choked one that asks.
pub const IDLE: Duration = Duration::from_secs(1);

/// Requests of one choked connection that may wait for a spare upload
/// (`upload_scheduler.rs`); its further ones are refused at once.
pub const MAX_CHOKED_WAITING: usize = 2;

/// How long a choked request may wait, whatever the uplink: at least
/// this, at most [`CHOKED_WAIT_MAX`]; about one piece's time on the
/// uplink in between ([`choked_wait`]).
pub const CHOKED_WAIT_MIN: Duration = Duration::from_millis(100);
pub const CHOKED_WAIT_MAX: Duration = Duration::from_secs(1);

/// A choked request's wait while the uplink's rate is not measured yet.
pub const CHOKED_WAIT_UNMEASURED: Duration = Duration::from_millis(500);

/// How long a choked request may wait for a spare upload at an uplink of
/// `rate` bytes per second (0: not measured): about the time one piece
/// takes on it, when the window frees at the latest once full. Longer, it
/// would hold its requester's slot while other holders could serve it;
/// shorter, it is refused before any room frees.
pub fn choked_wait(rate: f64) -> Duration {
    if rate > 0.0 && rate.is_finite() {
        Duration::from_secs_f64(fileshare_protocol::PIECE_LEN as f64 / rate)
            .clamp(CHOKED_WAIT_MIN, CHOKED_WAIT_MAX)
    } else {
        CHOKED_WAIT_UNMEASURED
    }
}

/// What the choker knows of one connection at a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub conn: u64,
    /// Asked for a piece during the round, or has requests waiting.
    pub interested: bool,
    /// Bytes its peer uploaded to this daemon during the round.
    pub received: u64,
    /// Bytes this daemon uploaded to it during the round.
    pub sent: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Choker {
    regular: Vec<u64>,
    optimistic: Option<u64>,
    round: u64,
    /// The round in which each connection last got the optimistic slot.
    last_optimistic: HashMap<u64, u64>,
}

impl Choker {
    pub fn is_unchoked(&self, conn: u64) -> bool {
        self.regular.contains(&conn) || self.optimistic == Some(conn)
    }

    pub fn unchoked(&self) -> impl Iterator<Item = u64> + '_ {
        self.regular.iter().copied().chain(self.optimistic)
    }

    /// A choked connection asks: unchoked at once if a slot is free, after
    /// unchoked connections that are not `active` gave theirs up.
    pub fn try_unchoke(&mut self, conn: u64, active: impl Fn(u64) -> bool) -> bool {
        if self.is_unchoked(conn) {
            return true;
        }
        self.regular.retain(|&c| active(c));
        if self.optimistic.is_some_and(|c| !active(c)) {
            self.optimistic = None;
        }
        if self.regular.len() < REGULAR {
            self.regular.push(conn);
        } else if self.optimistic.is_none() {
            self.optimistic = Some(conn);
            self.last_optimistic.insert(conn, self.round);
        } else {
            return false;
        }
        true
    }

    /// A rotation (every [`ROTATE`]); returns the connections it choked.
    pub fn rotate(&mut self, candidates: &[Candidate]) -> Vec<u64> {
        self.round += 1;
        let before: Vec<u64> = self.unchoked().collect();
        let mut ranked: Vec<&Candidate> = candidates.iter().filter(|c| c.interested).collect();
        ranked.sort_by_key(|c| {
            (
                Reverse(c.received),
                c.sent,
                !before.contains(&c.conn),
                c.conn,
            )
        });
        self.regular = ranked.iter().take(REGULAR).map(|c| c.conn).collect();
        let rest = ranked.get(REGULAR..).unwrap_or_default();
        let keep = self.optimistic.filter(|o| {
            !self.round.is_multiple_of(OPTIMISTIC_ROUNDS) && rest.iter().any(|c| c.conn == *o)
        });
        self.optimistic = keep.or_else(|| {
            (rest.iter())
                .min_by_key(|c| (self.last_optimistic.get(&c.conn).map(|&r| r + 1), c.conn))
                .map(|c| c.conn)
        });
        if let Some(o) = self.optimistic.filter(|o| keep != Some(*o)) {
            self.last_optimistic.insert(o, self.round);
        }
        before
            .into_iter()
            .filter(|&c| !self.is_unchoked(c))
            .collect()
    }

    /// The connection ended.
    pub fn forget(&mut self, conn: u64) {
        self.regular.retain(|&c| c != conn);
        if self.optimistic == Some(conn) {
            self.optimistic = None;
        }
        self.last_optimistic.remove(&conn);
    }
}

/// Whether each connection is unchoked, as its subscriptions watch it.
#[derive(Debug, Default)]
pub struct Notices(HashMap<u64, watch::Sender<bool>>);

impl Notices {
    /// Watches `conn`'s state (choked until it is unchoked).
    pub fn watch(&mut self, conn: u64, choker: &Choker) -> watch::Receiver<bool> {
        let on = choker.is_unchoked(conn);
        (self.0.entry(conn))
            .or_insert_with(|| watch::channel(on).0)
            .subscribe()
    }

    /// Tells the watched connections whose state changed.
    pub fn publish(&self, choker: &Choker) {
        for (&conn, tx) in &self.0 {
            let on = choker.is_unchoked(conn);
            tx.send_if_modified(|v| std::mem::replace(v, on) != on);
        }
    }

    /// The connection ended.
    pub fn forget(&mut self, conn: u64) {
        self.0.remove(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(conn: u64, received: u64, sent: u64) -> Candidate {
        Candidate {
            conn,
            interested: true,
            received,
            sent,
        }
    }

    #[test]
    fn a_choked_request_waits_about_one_pieces_time_on_the_uplink() {
        let mib = 1024.0 * 1024.0;
        assert_eq!(choked_wait(mib), Duration::from_millis(500));
        assert_eq!(choked_wait(0.0), CHOKED_WAIT_UNMEASURED);
        assert_eq!(choked_wait(f64::NAN), CHOKED_WAIT_UNMEASURED);
        assert_eq!(choked_wait(100.0 * mib), CHOKED_WAIT_MIN);
        assert_eq!(choked_wait(0.1 * mib), CHOKED_WAIT_MAX);
    }

    #[test]
    fn first_askers_are_unchoked_at_once_up_to_the_slots() {
        let mut c = Choker::default();
        let active = |_| true;
        for conn in 0..5 {
            assert!(c.try_unchoke(conn, active), "{conn}");
        }
        assert!(!c.try_unchoke(5, active));
        assert_eq!(c.unchoked().count(), REGULAR + 1);
        // An idle one gives its slot up.
        assert!(c.try_unchoke(5, |conn| conn != 2));
        assert!(!c.is_unchoked(2));
        assert!(c.is_unchoked(5));
    }

    #[test]
    fn rotation_keeps_who_uploads_to_us_and_chokes_the_rest() {
        let mut c = Choker::default();
        for conn in 0..5 {
            c.try_unchoke(conn, |_| true);
        }
        // Peers 6..9 upload to us the most, 0 and 1 not at all.
        let cands: Vec<Candidate> = (0..10).map(|i| cand(i, i * 100, 0)).collect();
        let mut choked = c.rotate(&cands);
        choked.sort_unstable();
        let regular: Vec<u64> = c.regular.clone();
        assert_eq!(regular, vec![9, 8, 7, 6]);
        let opt = c.optimistic.expect("an optimistic unchoke");
        assert!(opt < 6, "{opt}");
        let mut want: Vec<u64> = (0..5).filter(|&i| i != opt).collect();
        want.sort_unstable();
        assert_eq!(choked, want);
    }

    #[test]
    fn a_seed_takes_its_readers_in_turns() {
        let mut c = Choker::default();
        for conn in [3, 4, 5, 6] {
            c.try_unchoke(conn, |_| true);
        }
        // Nothing received (a seed); conns 3..6 were served, 1 and 8 not.
        let cands = [
            cand(1, 0, 0),
            cand(3, 0, 10),
            cand(4, 0, 10),
            cand(5, 0, 20),
            cand(6, 0, 10),
            cand(8, 0, 0),
        ];
        c.rotate(&cands);
        assert_eq!(c.regular, vec![1, 8, 3, 4]);
    }

    #[test]
    fn the_optimistic_slot_goes_round_the_choked() {
        let mut c = Choker::default();
        // Four regulars upload to us; four others never do.
        let cands: Vec<Candidate> = (0..8)
            .map(|i| cand(i, if i < 4 { 1000 } else { 0 }, 0))
            .collect();
        let mut seen = Vec::new();
        for _ in 0..8 * OPTIMISTIC_ROUNDS {
            c.rotate(&cands);
            assert_eq!(c.regular.len(), REGULAR);
            seen.extend(c.optimistic);
        }
        for i in 4..8 {
            assert!(seen.contains(&i), "{i} never optimistic: {seen:?}");
        }
        // Held for OPTIMISTIC_ROUNDS rounds at a time.
        assert!(seen.windows(2).any(|w| w[0] == w[1]));
    }

    #[test]
    fn a_watched_connection_hears_each_change_once() {
        let mut c = Choker::default();
        let mut n = Notices::default();
        let mut rx = n.watch(1, &c);
        assert!(!*rx.borrow_and_update());
        c.try_unchoke(1, |_| true);
        n.publish(&c);
        assert!(rx.has_changed().unwrap());
        assert!(*rx.borrow_and_update());
        n.publish(&c);
        assert!(!rx.has_changed().unwrap(), "no change, no notice");
        c.forget(1);
        n.publish(&c);
        assert!(!*rx.borrow_and_update());
        n.forget(1);
        assert!(rx.has_changed().is_err(), "the connection ended");
    }

    #[test]
    fn the_uninterested_are_choked_and_forgotten_connections_free_slots() {
        let mut c = Choker::default();
        for conn in 0..5 {
            c.try_unchoke(conn, |_| true);
        }
        let mut cands: Vec<Candidate> = (0..5).map(|i| cand(i, 0, 0)).collect();
        cands[0].interested = false;
        let choked = c.rotate(&cands);
        assert_eq!(choked, vec![0]);
        c.forget(1);
        assert!(!c.is_unchoked(1));
        assert!(c.try_unchoke(7, |_| true));
    }
}
