//! The daemon's side of the trackers: its session, and the requests that
//! need more than a call ([`TrackerClient::call`] with the request struct,
//! which the engine makes itself for shares and renames): listings with a
//! short-lived cache that outlives tracker outages, tickets and the
//! cluster's ticket key, the calls that keep this peer offered (one
//! announce and the queued piece reports), and the one request of the
//! three ways to reach a daemon that cannot be dialled.
//! The loop that makes them on schedule is the engine's
//! (`Engine::announce_loop` in `engine/mod.rs`).
//!
//! It also remembers the groups the trackers said this user is no longer a
//! member of, so reads of their files fail at once with EACCES instead of
//! waiting for peers that will refuse.
//!
//! And it tells the serving side which incarnation of a group is current
//! ([`TrackerLink::check_incarnation`]), so a ticket of a group deleted and
//! created again under its name opens nothing here.

use fileshare_protocol::client::{ClientError, TrackerClient};
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::{
    Announce, Announced, AskTicketKey, CallKind, Contact, FileEntry, GroupInfo, Holding,
    IssueTicket, ListFiles, ListGroups, Locate, PeerLocation, PlaceCall, ReportPieces,
};
use fileshare_protocol::messages::PeerError;
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::ticket::{Ticket, TicketError, TicketKey};
use fileshare_protocol::{ErrorCode, FileId, PeerId};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a listing is served without asking the tracker again, so an
/// `ls -l` over a large group is one round trip.
pub const LISTING_TTL: Duration = Duration::from_millis(1500);

/// How long a listing refresh may take before the cached one is served.
pub const REFRESH_BUDGET: Duration = Duration::from_millis(800);

/// How long a tracker's word that this user is in no group of a name is
/// trusted before it is asked again when a ticket for that name comes in.
pub const NOT_MEMBER_TTL: Duration = Duration::from_secs(10);

/// Groups whose incarnation is remembered before stale ones are forgotten.
const MAX_INCARNATIONS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Tracker(#[from] ClientError),
    #[error("no tracker answered within {0} ms and nothing is cached")]
    Slow(u64),
}

impl LinkError {
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            LinkError::Tracker(e) => e.code(),
            _ => None,
        }
    }
}

struct Cached<T> {
    at: Instant,
    value: T,
}

/// A ticket for one of this user's groups, and when to get the next one:
/// once less than a third of its lifetime is left, so links that renew it
/// then never present an expired one.
#[derive(Debug, Clone)]
pub struct HeldTicket {
    pub ticket: Ticket,
    pub renew_at_ms: u64,
}

impl HeldTicket {
    fn new(ticket: Ticket, now_ms: u64) -> HeldTicket {
        let lifetime = ticket.expires_unix_ms.saturating_sub(now_ms);
        HeldTicket {
            renew_at_ms: now_ms + lifetime - lifetime / 3,
            ticket,
        }
    }
}

/// Whether a refusal says the user is not (or no longer) in `group`.
fn lost_membership(e: &ClientError) -> bool {
    e.code().is_some_and(lost_membership_code)
}

fn lost_membership_code(code: &ErrorCode) -> bool {
    matches!(code, ErrorCode::NotMember(_) | ErrorCode::NoSuchGroup(_))
}

/// Whether a refusal says the caller may not see what it asked for: then a
/// cached listing must not be served either.
fn denies_access(code: &ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InvalidSession
            | ErrorCode::NotMember(_)
            | ErrorCode::NoSuchGroup(_)
            | ErrorCode::NotOwner(_)
    )
}

pub struct TrackerLink {
    pub client: TrackerClient,
    pub session: SessionToken,
    pub user: String,
    pub peer: PeerId,
    groups: Mutex<Option<Cached<Vec<GroupInfo>>>>,
    files: Mutex<HashMap<String, Cached<Vec<FileEntry>>>>,
    tickets: Mutex<HashMap<String, HeldTicket>>,
    /// Group -> the creation id of its current incarnation, as this daemon
    /// last learned it (from a ticket of its own), or `None` if this user
    /// is in no group of that name; and when.
    incarnations: Mutex<HashMap<String, (Option<u64>, Instant)>>,
    /// The cluster's ticket key, once a tracker told it; it never changes.
    ticket_key: Mutex<Option<TicketKey>>,
    /// Groups the trackers said this user is not a member of (any more).
    lost: Mutex<HashSet<String>>,
    /// Woken when a group is added to `lost`.
    lost_news: tokio::sync::Notify,
    /// Verified pieces not yet reported, per file.
    reports: Mutex<HashMap<FileId, Vec<u32>>>,
    /// How the tracker saw this daemon at its last announce.
    seen_as: Mutex<Option<Announced>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(fileshare_protocol::millis)
        .unwrap_or(0)
}

impl TrackerLink {
    pub fn new(client: TrackerClient, session: SessionToken, user: String, peer: PeerId) -> Self {
        TrackerLink {
            client,
            session,
            user,
            peer,
            groups: Mutex::new(None),
            files: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
            incarnations: Mutex::new(HashMap::new()),
            ticket_key: Mutex::new(None),
            lost: Mutex::new(HashSet::new()),
            lost_news: tokio::sync::Notify::new(),
            reports: Mutex::new(HashMap::new()),
            seen_as: Mutex::new(None),
        }
    }

    /// Runs `fetch` unless the cache is fresh; serves the cache when the
    /// trackers fail or are slow, or answer with any error but one that
    /// says the caller may not see the listing (a reply too large, a busy or
    /// failing tracker must not empty `ls` for everyone).
    async fn cached<T: Clone, F, Fut>(
        &self,
        get: impl Fn() -> Option<(Instant, T)>,
        put: impl Fn(T),
        fetch: F,
    ) -> Result<T, LinkError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, LinkError>>,
    {
        let cached = get();
        if let Some((at, v)) = &cached {
            if at.elapsed() < LISTING_TTL {
                return Ok(v.clone());
            }
        }
        let budget = if cached.is_some() {
            REFRESH_BUDGET
        } else {
            REFRESH_BUDGET * 4
        };
        match tokio::time::timeout(budget, fetch()).await {
            Ok(Ok(v)) => {
                put(v.clone());
                Ok(v)
            }
            Ok(Err(e)) if e.code().is_some_and(denies_access) => Err(e),
            Ok(Err(e)) => match cached {
                Some((_, v)) => {
                    tracing::debug!("serving cached listing: {e:#}");
                    Ok(v)
                }
                None => Err(e),
            },
            Err(_) => match cached {
                Some((_, v)) => Ok(v),
                None => Err(LinkError::Slow(fileshare_protocol::millis(budget))),
            },
        }
    }

    pub async fn groups(&self) -> Result<Vec<GroupInfo>, LinkError> {
        self.cached(
            || self.groups.lock().as_ref().map(|c| (c.at, c.value.clone())),
            |v| {
                *self.groups.lock() = Some(Cached {
                    at: Instant::now(),
                    value: v,
                })
            },
            || async {
                let groups = (self.client)
                    .call(ListGroups {
                        session: self.session,
                    })
                    .await?;
                self.note_listing(&groups);
                Ok(groups)
            },
        )
        .await
    }

    pub async fn member_groups(&self) -> Result<Vec<String>, LinkError> {
        Ok(self
            .groups()
            .await?
            .into_iter()
            .filter(|g| g.is_member)
            .map(|g| g.name)
            .collect())
    }

    pub async fn files(&self, group: &str) -> Result<Vec<FileEntry>, LinkError> {
        self.cached(
            || {
                self.files
                    .lock()
                    .get(group)
                    .map(|c| (c.at, c.value.clone()))
            },
            |v| {
                self.files.lock().insert(
                    group.to_string(),
                    Cached {
                        at: Instant::now(),
                        value: v,
                    },
                );
            },
            || async {
                let files = (self.client)
                    .call(ListFiles {
                        session: self.session,
                        group: group.into(),
                    })
                    .await;
                Ok(self.note(group, files)?)
            },
        )
        .await
    }

    /// Forgets cached listings after a change this daemon made.
    pub fn invalidate(&self, group: Option<&str>) {
        match group {
            Some(g) => {
                self.files.lock().remove(g);
            }
            None => {
                *self.groups.lock() = None;
            }
        }
    }

    pub async fn locate(
        &self,
        group: &str,
        name: &str,
    ) -> Result<(FileMeta, Vec<PeerLocation>), LinkError> {
        let found = (self.client)
            .call(Locate {
                session: self.session,
                group: group.into(),
                name: name.into(),
            })
            .await;
        let found = self.note(group, found)?;
        Ok((found.meta, found.peers))
    }

    /// A ticket for this daemon in `group`, reused until it is due for
    /// renewal (a third of its lifetime left). A tracker gives one to
    /// members only.
    pub async fn ticket(&self, group: &str) -> Result<HeldTicket, LinkError> {
        if let Some(t) = self.tickets.lock().get(group) {
            if now_ms() < t.renew_at_ms {
                return Ok(t.clone());
            }
        }
        self.fresh_ticket(group).await
    }

    /// A new ticket for this daemon in `group`, whatever is held.
    async fn fresh_ticket(&self, group: &str) -> Result<HeldTicket, LinkError> {
        let t = (self.client)
            .call(IssueTicket {
                session: self.session,
                group: group.into(),
                holder: self.peer,
            })
            .await;
        let held = HeldTicket::new(self.note(group, t)?, now_ms());
        self.tickets.lock().insert(group.to_string(), held.clone());
        self.learn_incarnation(group, Some(held.ticket.group_id));
        Ok(held)
    }

    fn learn_incarnation(&self, group: &str, id: Option<u64>) {
        let mut known = self.incarnations.lock();
        // Bounded: tickets name groups that exist, but may name many.
        if known.len() >= MAX_INCARNATIONS {
            known.retain(|_, (_, at)| at.elapsed() < NOT_MEMBER_TTL);
        }
        known.insert(group.to_string(), (id, Instant::now()));
    }

    /// Refuses a ticket (already verified) for an incarnation of its group
    /// other than the current one, which this user's own ticket names: a
    /// group deleted and created again under its name is another group,
    /// and one this user is not in is served to nobody. Asks a tracker for
    /// every ticket (a group may have been created again a moment ago),
    /// unless one said within [`NOT_MEMBER_TTL`] that this user is in no
    /// group of the name; with none answering, the incarnation last learned
    /// decides, and with none learned the ticket alone.
    pub async fn check_incarnation(&self, ticket: &Ticket) -> Result<(), PeerError> {
        let group = ticket.group.as_str();
        let known = self.incarnations.lock().get(group).copied();
        let current = match known {
            Some((None, at)) if at.elapsed() < NOT_MEMBER_TTL => None,
            _ => match self.fresh_ticket(group).await {
                Ok(held) => Some(held.ticket.group_id),
                Err(e) if e.code().is_some_and(lost_membership_code) => {
                    self.learn_incarnation(group, None);
                    None
                }
                Err(e) => {
                    tracing::debug!(group, "cannot learn the group's current incarnation: {e:#}");
                    known.map_or(Some(ticket.group_id), |(id, _)| id)
                }
            },
        };
        match current {
            None => Err(PeerError::NotMember),
            Some(current) if current != ticket.group_id => {
                Err(PeerError::TicketRefused(TicketError::OtherGroup {
                    group: group.to_string(),
                    ticket: ticket.group_id,
                    current,
                }))
            }
            Some(_) => Ok(()),
        }
    }

    /// The cluster's ticket key, from a tracker the first time.
    pub async fn ticket_key(&self) -> Result<TicketKey, LinkError> {
        if let Some(k) = *self.ticket_key.lock() {
            return Ok(k);
        }
        let k = self.client.call(AskTicketKey).await?;
        *self.ticket_key.lock() = Some(k);
        Ok(k)
    }

    /// Keeps what a tracker's answer about `group` says of this user's
    /// membership there: a refusal for not being a member marks the group
    /// lost (and drops its ticket); any other answer clears the mark.
    fn note<T>(&self, group: &str, r: Result<T, ClientError>) -> Result<T, ClientError> {
        match &r {
            Err(e) if lost_membership(e) => self.mark_lost(group),
            Err(_) => {}
            Ok(_) => {
                self.lost.lock().remove(group);
            }
        }
        r
    }

    /// Marks every group of `groups` the user is not a member of lost, if
    /// this daemon was using it, and every one it is a member of not lost.
    fn note_listing(&self, groups: &[GroupInfo]) {
        let mut lost = Vec::new();
        {
            let tickets = self.tickets.lock();
            let mut marked = self.lost.lock();
            for g in groups {
                if g.is_member {
                    marked.remove(&g.name);
                } else if tickets.contains_key(&g.name) {
                    lost.push(g.name.clone());
                }
            }
            // A group deleted since (its last member left) is lost too.
            for name in tickets.keys() {
                if !groups.iter().any(|g| g.name == *name) {
                    lost.push(name.clone());
                }
            }
        }
        for g in lost {
            self.mark_lost(&g);
        }
    }

    fn mark_lost(&self, group: &str) {
        self.tickets.lock().remove(group);
        if self.lost.lock().insert(group.to_string()) {
            tracing::info!(group, "no longer a member; its files are out of reach");
        }
        self.lost_news.notify_waiters();
    }

    /// Refuses with `NotMember` if the trackers said this user is no longer
    /// in `group`.
    pub fn check_member(&self, group: &str) -> Result<(), LinkError> {
        if self.lost.lock().contains(group) {
            let code = ErrorCode::NotMember(group.to_string());
            return Err(LinkError::Tracker(ClientError::Refused(code)));
        }
        Ok(())
    }

    /// Completes (with the refusal) once the trackers say this user is no
    /// longer in `group`.
    pub async fn membership_lost(&self, group: &str) -> LinkError {
        loop {
            let news = self.lost_news.notified();
            if let Err(e) = self.check_member(group) {
                return e;
            }
            news.await;
        }
    }

    /// Queues a verified piece for the next report.
    pub fn report_piece(&self, file: FileId, piece: u32) {
        self.reports.lock().entry(file).or_default().push(piece);
    }

    /// Sends the queued piece reports.
    pub async fn flush_reports(&self) -> Result<(), LinkError> {
        let pending: Vec<(FileId, Vec<u32>)> = self.reports.lock().drain().collect();
        for (file, pieces) in pending {
            let report = ReportPieces {
                session: self.session,
                peer: self.peer,
                file,
                pieces: pieces.clone(),
            };
            if let Err(e) = self.client.call(report).await {
                self.reports.lock().entry(file).or_default().extend(pieces);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// One announce of everything this peer holds; returns the interval
    /// until the next one is due.
    pub async fn announce(
        &self,
        (addr, also): (&str, &[String]),
        holdings: Vec<Holding>,
    ) -> Result<Duration, LinkError> {
        self.reports.lock().clear();
        let announced = (self.client)
            .call(Announce {
                session: self.session,
                peer: self.peer,
                addr: addr.into(),
                also: also.to_vec(),
                holdings,
            })
            .await?;
        let interval = announced.interval;
        *self.seen_as.lock() = Some(announced);
        Ok(interval.clamp(Duration::from_secs(1), Duration::from_secs(300)))
    }

    /// How the tracker saw this daemon at its last announce, if any
    /// answered yet.
    pub fn seen_as(&self) -> Option<Announced> {
        self.seen_as.lock().clone()
    }

    /// Asks the tracker to call `holder` in `group` to reach this daemon
    /// the way `how` says (dial back, punch, or meet at the relay), with
    /// `nonce` to know the connection by: the request of all three, built
    /// in this one place.
    pub async fn place_call(
        &self,
        how: CallKind,
        group: &str,
        holder: PeerId,
        nonce: [u8; 16],
    ) -> Result<(), LinkError> {
        let contact = Contact {
            session: self.session,
            group: group.into(),
            holder,
            nonce,
        };
        Ok(self.client.call(PlaceCall { how, contact }).await?)
    }
}
