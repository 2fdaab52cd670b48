//! The daemon's side of the trackers, and the one place it asks them
//! anything: listings with a short-lived cache that outlives tracker
//! outages, shares, tickets, ticket checks for the peer server, and the
//! calls that keep this peer offered: one announce and the queued piece
//! reports. The loop that makes them on schedule is the engine's
//! (`Engine::announce_loop` in `engine/mod.rs`).

use fileshare_protocol::client::{ClientError, TrackerClient};
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::{FileEntry, GroupInfo, Holding, PeerLocation};
use fileshare_protocol::messages::{SessionToken, Ticket};
use fileshare_protocol::{ErrorCode, FileId, PeerId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a listing is served without asking the tracker again, so an
/// `ls -l` over a large group is one round trip.
pub const LISTING_TTL: Duration = Duration::from_millis(1500);

/// How long a listing refresh may take before the cached one is served.
pub const REFRESH_BUDGET: Duration = Duration::from_millis(800);

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

pub struct TrackerLink {
    pub client: TrackerClient,
    pub session: SessionToken,
    pub user: String,
    pub peer: PeerId,
    groups: Mutex<Option<Cached<Vec<GroupInfo>>>>,
    files: Mutex<HashMap<String, Cached<Vec<FileEntry>>>>,
    tickets: Mutex<HashMap<String, Ticket>>,
    /// Tickets already checked with a tracker, by MAC.
    verified: Mutex<HashMap<[u8; 32], (String, u64)>>,
    /// Verified pieces not yet reported, per file.
    reports: Mutex<HashMap<FileId, Vec<u32>>>,
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
            verified: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `fetch` unless the cache is fresh; serves the cache when the
    /// trackers fail or are slow.
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
            Ok(Err(e)) if e.code().is_some() => Err(e),
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
            || async { Ok(self.client.list_groups(self.session).await?) },
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
            || async { Ok(self.client.list_files(self.session, group).await?) },
        )
        .await
    }

    /// Creates a group owned by this user.
    pub async fn create_group(&self, group: &str) -> Result<(), LinkError> {
        self.client.create_group(self.session, group).await?;
        self.invalidate(None);
        Ok(())
    }

    /// Makes this user a holder of `meta` in `group`.
    pub async fn share_file(&self, group: &str, meta: FileMeta) -> Result<(), LinkError> {
        self.client.share_file(self.session, group, meta).await?;
        self.invalidate(Some(group));
        Ok(())
    }

    /// Ends this user's holding of `name` in `group`.
    pub async fn stop_share(&self, group: &str, name: &str) -> Result<(), LinkError> {
        self.client.stop_share(self.session, group, name).await?;
        self.invalidate(Some(group));
        Ok(())
    }

    /// Moves this user's holding of `from` in `group` to the name `to`, in
    /// one tracker change: other members never see both names or neither.
    pub async fn rename_share(&self, group: &str, from: &str, to: &str) -> Result<(), LinkError> {
        self.client
            .rename_share(self.session, group, from, to)
            .await?;
        self.invalidate(Some(group));
        Ok(())
    }

    /// Makes this user a holder of `meta` in `group`, replacing their own
    /// different file of that name in the same tracker change.
    pub async fn replace_share(&self, group: &str, meta: FileMeta) -> Result<(), LinkError> {
        self.client.replace_share(self.session, group, meta).await?;
        self.invalidate(Some(group));
        Ok(())
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
        let found = self.client.locate(self.session, group, name).await?;
        Ok((found.meta, found.peers))
    }

    /// A ticket for `group`, reused until a minute before it expires.
    pub async fn ticket(&self, group: &str) -> Result<Ticket, LinkError> {
        if let Some(t) = self.tickets.lock().get(group) {
            if t.expires_unix_ms > now_ms() + 60_000 {
                return Ok(t.clone());
            }
        }
        let t = self.client.issue_ticket(self.session, group).await?;
        self.tickets.lock().insert(group.to_string(), t.clone());
        Ok(t)
    }

    /// Checks a ticket a peer presented, with the tracker the first time.
    /// Returns the group it grants.
    pub async fn verify_ticket(&self, ticket: &Ticket) -> Result<String, LinkError> {
        if let Some((group, exp)) = self.verified.lock().get(&ticket.mac) {
            if *exp > now_ms() {
                return Ok(group.clone());
            }
        }
        let group = self.client.verify_ticket(ticket).await?.group;
        let exp = ticket.expires_unix_ms.min(now_ms() + 120_000);
        self.verified
            .lock()
            .insert(ticket.mac, (group.clone(), exp));
        Ok(group)
    }

    /// Queues a verified piece for the next report.
    pub fn report_piece(&self, file: FileId, piece: u32) {
        self.reports.lock().entry(file).or_default().push(piece);
    }

    /// Sends the queued piece reports.
    pub async fn flush_reports(&self) -> Result<(), LinkError> {
        let pending: Vec<(FileId, Vec<u32>)> = self.reports.lock().drain().collect();
        for (file, pieces) in pending {
            if let Err(e) = (self.client)
                .report_pieces(self.session, self.peer, file, pieces.clone())
                .await
            {
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
        addr: &str,
        holdings: Vec<Holding>,
    ) -> Result<Duration, LinkError> {
        self.reports.lock().clear();
        let interval = (self.client)
            .announce(self.session, self.peer, addr, holdings)
            .await?;
        Ok(interval.clamp(Duration::from_secs(1), Duration::from_secs(300)))
    }

    pub async fn leave(&self) -> Result<(), LinkError> {
        Ok(self.client.leave_network(self.session, self.peer).await?)
    }
}
