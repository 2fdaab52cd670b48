//! One simulated peer's upload side: the daemon's upload scheduler as
//! `fsd/src/net/upload_scheduler.rs` runs it, in simulated time. The
//! decisions are the daemon's own functions ([`plan`] for the order and
//! refusals, [`Choker`] for choking); what is here is the bookkeeping the
//! daemon's `Uploads` keeps around them (admission of an ask, the window
//! of pieces granted and not yet written, the rotation's counters), which
//! the daemon ties to tokio's clock and channels.

use fileshare_protocol::{FileId, Layout};
use fsd::net::choke::{self, Candidate, Choker};
use fsd::net::upload_scheduler::{plan, Ask, Waiting, MAX_UNWRITTEN};
use std::collections::HashMap;

/// The only file of the simulation.
pub const FILE: FileId = FileId([7; 32]);

/// What the upload side answers a request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Granted: it goes out on the uplink.
    Serve,
    /// Refused by the order (`Busy`): the requester's next ask for it is
    /// a second ask.
    Busy,
    /// Refused because the connection is choked (sent as `Busy` too).
    Choked,
}

struct Entry {
    w: Waiting,
    first_copy: bool,
}

#[derive(Default)]
struct Conn {
    last_ask: u64,
    asked: bool,
    sent: u64,
    received_mark: u64,
    unwritten: u32,
    /// Pieces refused `Busy` to it: its next ask is a second one.
    refused: Vec<u32>,
}

/// The upload scheduler of one peer. Connection ids are the requesters'
/// peer numbers; times are microseconds.
pub struct Uploader {
    entries: Vec<Entry>,
    next_seq: u64,
    uploads: Vec<u32>,
    last_served: HashMap<u64, u64>,
    grants: u64,
    choker: Choker,
    conns: HashMap<u64, Conn>,
    askers: Vec<(u64, u64)>,
    /// Pieces granted and not yet written, and how many may be.
    pub in_window: u32,
    window: u32,
    pub next_rotation: u64,
    /// Pieces this peer chose to upload, in all.
    pub granted: u64,
    /// False only in experiments: every connection is served as if
    /// unchoked, to measure what choking costs.
    choking: bool,
}

const IDLE_US: u64 = choke::IDLE.as_micros() as u64;

impl Uploader {
    /// An uplink of `rate` bytes/s: its window is what it drains in 50 ms,
    /// at least two pieces (`fsd/src/net/uplink.rs`).
    pub fn new(rate: f64, pieces: u32, piece_len: u64, first_rotation: u64, choking: bool) -> Self {
        let window = ((rate * 0.05 / piece_len as f64) as u32).max(2);
        Uploader {
            entries: Vec::new(),
            next_seq: 0,
            uploads: vec![0; pieces as usize],
            last_served: HashMap::new(),
            grants: 0,
            choker: Choker::default(),
            conns: HashMap::new(),
            askers: Vec::new(),
            in_window: 0,
            window,
            next_rotation: first_rotation,
            granted: 0,
            choking,
        }
    }

    pub fn has_room(&self) -> bool {
        self.in_window < self.window
    }

    pub fn has_waiting(&self) -> bool {
        !self.entries.is_empty()
    }

    fn never_uploaded(&self, piece: u32) -> bool {
        self.uploads[piece as usize] == 0
    }

    fn active(&self, conn: u64, now: u64) -> bool {
        self.entries.iter().any(|e| e.w.ask.conn == conn)
            || (self.conns.get(&conn)).is_some_and(|c| now.saturating_sub(c.last_ask) < IDLE_US)
    }

    fn spare(&self) -> bool {
        self.has_room()
            && (self.entries.iter()).all(|e| {
                (self.conns.get(&e.w.ask.conn)).is_some_and(|c| c.unwritten >= MAX_UNWRITTEN)
            })
    }

    fn contested(&self, now: u64) -> bool {
        let recent = (self.askers.iter())
            .filter(|&&(_, at)| now.saturating_sub(at) < IDLE_US)
            .map(|&(c, _)| c);
        let waiting = self.entries.iter().map(|e| e.w.ask.conn);
        let mut first = None;
        recent.chain(waiting).any(|c| *first.get_or_insert(c) != c)
    }

    /// A request arrives (`Uploads::admit`): `Some(Choked)` at once, or
    /// `None` when it waits for [`Uploader::step`].
    pub fn admit(&mut self, conn: u64, piece: u32, layout: &Layout, now: u64) -> Option<Answer> {
        let c = self.conns.entry(conn).or_default();
        c.last_ask = now;
        c.asked = true;
        let second = c.refused.contains(&piece);
        self.askers
            .retain(|&(c, at)| c == conn || now.saturating_sub(at) < IDLE_US);
        match self.askers.iter_mut().find(|(c, _)| *c == conn) {
            Some(e) => e.1 = now,
            None => self.askers.push((conn, now)),
        }
        let mut first_copy = false;
        if self.choking && !self.choker.is_unchoked(conn) {
            let mut choker = std::mem::take(&mut self.choker);
            let unchoked = choker.try_unchoke(conn, |c| self.active(c, now));
            self.choker = choker;
            if !unchoked && !self.never_uploaded(piece) {
                if !self.spare() {
                    return Some(Answer::Choked);
                }
            } else if !unchoked {
                first_copy = true;
            }
        }
        let p = layout.validate(piece)?;
        let ask = Ask {
            conn,
            file: FILE,
            piece: p,
            num_pieces: layout.num_pieces(),
            bytes: layout.piece_size(p),
            second,
        };
        self.entries.push(Entry {
            w: Waiting {
                ask,
                seq: self.next_seq,
            },
            first_copy,
        });
        self.next_seq += 1;
        None
    }

    /// The requester withdrew a waiting request (its piece came from
    /// elsewhere); a granted one goes out anyway.
    pub fn cancel(&mut self, conn: u64, piece: u32) {
        self.entries
            .retain(|e| !(e.w.ask.conn == conn && e.w.ask.piece.get() == piece));
    }

    /// One pacer step while the window has room (`State::step`): the
    /// answers given, `(conn, piece, answer)`, at most one `Serve`.
    pub fn step(&mut self, now: u64, out: &mut Vec<(u64, u32, Answer)>) -> bool {
        let mut kept = Vec::with_capacity(self.entries.len());
        for e in std::mem::take(&mut self.entries) {
            if e.first_copy && !self.never_uploaded(e.w.ask.piece.get()) {
                out.push((e.w.ask.conn, e.w.ask.piece.get(), Answer::Choked));
            } else {
                kept.push(e);
            }
        }
        self.entries = kept;
        loop {
            let full = |c: u64| (self.conns.get(&c)).is_some_and(|c| c.unwritten >= MAX_UNWRITTEN);
            let eligible: Vec<usize> = (0..self.entries.len())
                .filter(|&i| !full(self.entries[i].w.ask.conn))
                .collect();
            let waiting: Vec<Waiting> = eligible.iter().map(|&i| self.entries[i].w).collect();
            let contested = self.contested(now);
            let p = plan(
                &waiting,
                |_, i| {
                    if contested {
                        self.uploads[i.usize()]
                    } else {
                        0
                    }
                },
                |c| self.last_served.get(&c).copied().unwrap_or(0),
            );
            let mut take: Vec<(usize, bool)> =
                p.refuse.iter().map(|&i| (eligible[i], false)).collect();
            take.extend(p.serve.map(|i| (eligible[i], true)));
            take.sort_unstable_by_key(|t| std::cmp::Reverse(t.0));
            let mut served = false;
            for (i, serve) in take {
                let a = self.entries.swap_remove(i).w.ask;
                let piece = a.piece.get();
                let c = self.conns.entry(a.conn).or_default();
                if serve {
                    c.refused.retain(|&q| q != piece);
                    c.unwritten += 1;
                    self.uploads[a.piece.usize()] += 1;
                    self.grants += 1;
                    self.last_served.insert(a.conn, self.grants);
                    self.in_window += 1;
                    self.granted += 1;
                    served = true;
                    out.push((a.conn, piece, Answer::Serve));
                } else {
                    if !c.refused.contains(&piece) {
                        c.refused.push(piece);
                    }
                    out.push((a.conn, piece, Answer::Busy));
                }
            }
            if served || p.serve.is_none() {
                return served;
            }
        }
    }

    /// The uplink finished writing a piece to `conn`.
    pub fn written(&mut self, conn: u64, bytes: u64) {
        self.in_window = self.in_window.saturating_sub(1);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.unwritten = c.unwritten.saturating_sub(1);
            c.sent += bytes;
        }
    }

    /// The choke rotation (`Uploads::rotate_if_due`); `received(conn)` is
    /// the bytes this peer verified from that connection's peer so far.
    /// Pushes the waiting requests of the connections it choked.
    pub fn rotate(
        &mut self,
        now: u64,
        received: impl Fn(u64) -> u64,
        out: &mut Vec<(u64, u32, Answer)>,
    ) {
        self.next_rotation = now + choke::ROTATE.as_micros() as u64;
        let waiting: Vec<u64> = self.entries.iter().map(|e| e.w.ask.conn).collect();
        let mut ids: Vec<u64> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        let candidates: Vec<Candidate> = ids
            .into_iter()
            .filter_map(|conn| {
                let total = received(conn);
                let c = self.conns.get_mut(&conn)?;
                let cand = Candidate {
                    conn,
                    interested: c.asked || waiting.contains(&conn),
                    received: total.saturating_sub(c.received_mark),
                    sent: c.sent,
                };
                c.received_mark = total;
                c.asked = false;
                c.sent = 0;
                Some(cand)
            })
            .collect();
        let choked = self.choker.rotate(&candidates);
        let mut kept = Vec::with_capacity(self.entries.len());
        for e in std::mem::take(&mut self.entries) {
            if choked.contains(&e.w.ask.conn) {
                out.push((e.w.ask.conn, e.w.ask.piece.get(), Answer::Choked));
            } else {
                kept.push(e);
            }
        }
        self.entries = kept;
    }

    /// The connection ended (`Uploads::forget_conn`): its waiting requests
    /// are dropped unanswered.
    pub fn forget(&mut self, conn: u64) {
        self.entries.retain(|e| e.w.ask.conn != conn);
        self.last_served.remove(&conn);
        self.conns.remove(&conn);
        self.choker.forget(conn);
        self.askers.retain(|&(c, _)| c != conn);
    }
}
