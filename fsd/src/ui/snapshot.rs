//! What the dashboard and `fsd status` show, gathered from the engine, the
//! swarms, the meter and the trackers into one plain, serializable value.
//!
//! The local part (pieces, links, rates, downloads) is read fresh each
//! time, under each swarm's lock once. The trackers' part (groups, files,
//! requests) is kept for [`TRACKER_TTL`], so a page open in several tabs
//! costs the trackers one listing per interval; an action clears it.

use crate::engine::download_status::{DownloadState, DownloadStatus};
use crate::engine::Engine;
use crate::fuse::passthrough::{KernelReads, KernelReadsView};
use crate::pieces::registry::Registry;
use crate::pieces::swarm::{Swarm, SwarmView};
use crate::trackers::{now_ms, TrackerLink};
use crate::ui::meter::{Meter, Sample};
use fileshare_protocol::messages::tracker::{FileEntry, ListRequests};
use fileshare_protocol::{Bitfield, FileId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the trackers' part of a snapshot is reused.
pub const TRACKER_TTL: Duration = Duration::from_secs(2);

/// Cells of a piece map at most: a larger file's pieces are drawn in
/// groups, each cell standing for several pieces.
pub const MAP_CELLS: u32 = 400;

/// Everything on the dashboard at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub user: String,
    pub pid: u32,
    pub mountpoint: String,
    pub at_ms: u64,
    /// Why the trackers' part is old or missing, if it is.
    pub tracker_error: Option<String>,
    pub groups: Vec<GroupView>,
    /// Total rates now, and over the last minutes (oldest first).
    pub total: Sample,
    pub history: Vec<Sample>,
    pub peers: Vec<PeerView>,
    pub downloads: Vec<DownloadView>,
    /// Where `download-file` from the page puts files by default.
    pub download_dir: String,
    /// Bytes of verified pieces in the piece store (files shared in place
    /// take none).
    pub stored: u64,
    /// The cache budget (`--cache-size`), and what files fetched from
    /// others take of it now.
    pub cache_budget: u64,
    pub cache_used: u64,
    /// Whether files held whole are read by the kernel directly, and what
    /// the daemon counts of reads.
    pub kernel_reads: KernelReadsView,
    /// How peers reach this daemon, as the trackers found (see
    /// [`crate::net::reach::describe`]).
    #[serde(default)]
    pub reachability: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub owner: String,
    pub members: u32,
    pub is_owner: bool,
    /// The user asked to join and awaits the owner.
    pub pending: bool,
    /// Users waiting to join (the owner's view only).
    pub requests: Vec<String>,
    pub files: Vec<FileView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileView {
    pub name: String,
    pub size: u64,
    pub peers_online: u32,
    /// Present when this daemon holds or fetches the file.
    pub local: Option<LocalFile>,
}

/// A file as this daemon has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFile {
    pub pieces: u32,
    pub verified: u32,
    pub in_flight: u32,
    /// The piece map, one character per cell (see [`piece_map`]).
    pub map: String,
    pub down: u64,
    pub up: u64,
    pub links: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub addr: String,
    pub group: String,
    pub file: String,
    /// Bytes per second received from it for this file.
    pub down: u64,
    /// Bytes per second sent to it, over every file.
    pub up: u64,
    pub in_flight: u32,
    /// Which way the connection was opened (`direct`, `reverse`), for
    /// peers this daemon fetches from.
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadView {
    pub id: u64,
    pub group: String,
    pub name: String,
    pub dest: String,
    pub size: u64,
    pub done: u64,
    pub rate: u64,
    pub peers: u32,
    /// `fetching`, `writing`, `complete` or `failed`.
    pub state: String,
    pub error: Option<String>,
}

impl From<&DownloadStatus> for DownloadView {
    fn from(s: &DownloadStatus) -> Self {
        let (state, error, rate) = match &s.state {
            DownloadState::Fetching => ("fetching", None, s.rate),
            DownloadState::Writing => ("writing", None, s.rate),
            DownloadState::Complete { millis } => (
                "complete",
                None,
                s.size.saturating_mul(1000) / (*millis).max(1),
            ),
            DownloadState::Failed(why) => ("failed", Some(why.clone()), 0),
        };
        DownloadView {
            id: s.id,
            group: s.group.clone(),
            name: s.name.clone(),
            dest: s.dest.display().to_string(),
            size: s.size,
            done: s.done,
            rate,
            peers: s.peers,
            state: state.to_string(),
            error,
        }
    }
}

/// The piece map of `view`, at most [`MAP_CELLS`] characters: `v` every
/// piece of the cell verified, `f` some in flight, else a digit `0`-`9`
/// for the verified share of the cell (`0`: none).
pub fn piece_map(have: &Bitfield, in_flight: &Bitfield) -> String {
    let n = have.len();
    if n == 0 {
        return String::new();
    }
    let cells = n.min(MAP_CELLS);
    (0..cells)
        .map(|c| {
            let from = u64::from(c) * u64::from(n) / u64::from(cells);
            let to = (u64::from(c) + 1) * u64::from(n) / u64::from(cells);
            let (from, to) = (
                u32::try_from(from).unwrap_or(n),
                u32::try_from(to).unwrap_or(n),
            );
            let len = to.saturating_sub(from).max(1);
            let got = (from..to).filter(|&i| have.get(i)).count();
            if u32::try_from(got).unwrap_or(0) == len {
                'v'
            } else if (from..to).any(|i| in_flight.get(i)) {
                'f'
            } else {
                let tenths = got * 9 / len as usize;
                char::from_digit(u32::try_from(tenths).unwrap_or(0), 10).unwrap_or('0')
            }
        })
        .collect()
}

/// The trackers' part, as last fetched.
#[derive(Clone)]
struct Listing {
    at: Instant,
    groups: Vec<GroupView>,
}

/// Where snapshots come from: the daemon's parts, shared by the dashboard
/// and the control socket.
pub struct Source {
    pub engine: Arc<Engine>,
    pub tracker: Arc<TrackerLink>,
    pub registry: Arc<Registry>,
    pub meter: Arc<Meter>,
    pub kernel_reads: Arc<KernelReads>,
    pub mountpoint: PathBuf,
    /// The dashboard's address (`http://ip:port/`), once it listens.
    pub ui_addr: std::sync::OnceLock<String>,
    listing: tokio::sync::Mutex<Option<Listing>>,
}

impl Source {
    pub fn new(
        engine: Arc<Engine>,
        tracker: Arc<TrackerLink>,
        registry: Arc<Registry>,
        meter: Arc<Meter>,
        kernel_reads: Arc<KernelReads>,
        mountpoint: PathBuf,
    ) -> Source {
        Source {
            engine,
            tracker,
            registry,
            meter,
            kernel_reads,
            mountpoint,
            ui_addr: std::sync::OnceLock::new(),
            listing: tokio::sync::Mutex::new(None),
        }
    }

    /// Forgets the trackers' part, after an action changed it.
    pub async fn invalidate(&self) {
        *self.listing.lock().await = None;
        self.tracker.invalidate(None);
    }

    /// The dashboard as of now.
    pub async fn snapshot(&self) -> Snapshot {
        let (mut groups, tracker_error) = self.listing().await;
        let swarms = self.registry.all();
        let views: Vec<(Arc<Swarm>, SwarmView)> =
            swarms.into_iter().map(|s| (s.clone(), s.view())).collect();
        let mut peers = Vec::new();
        for (swarm, view) in &views {
            for l in &view.links {
                peers.push(PeerView {
                    addr: l.addr.clone(),
                    group: swarm.file.group.clone(),
                    file: swarm.file.meta.name.clone(),
                    down: rate(l.rate),
                    up: self.meter.peer_up(&l.peer),
                    in_flight: u32::try_from(l.in_flight).unwrap_or(u32::MAX),
                    path: (self.engine.reach().path_of(&l.addr))
                        .map_or("", |p| p.as_str())
                        .to_string(),
                });
            }
        }
        // Peers this daemon only uploads to: no link of ours names them,
        // so they go by their peer id.
        for (peer, up) in self.meter.peers_up() {
            if views
                .iter()
                .any(|(_, v)| v.links.iter().any(|l| l.peer == peer))
            {
                continue;
            }
            peers.push(PeerView {
                addr: format!("peer {}", short_id(&peer)),
                group: String::new(),
                file: String::new(),
                down: 0,
                up,
                in_flight: 0,
                path: String::new(),
            });
        }
        peers.sort_by(|a, b| {
            (b.down + b.up)
                .cmp(&(a.down + a.up))
                .then(a.addr.cmp(&b.addr))
        });
        for g in &mut groups {
            for f in &mut g.files {
                f.local = views
                    .iter()
                    .find(|(s, _)| s.file.meta.name == f.name && s.file.in_group(&g.name))
                    .map(|(s, v)| self.local(&s.file.id, v));
            }
        }
        let stored = views
            .iter()
            .filter(|(s, _)| matches!(s.file.source, crate::store::Source::Store))
            .map(|(s, v)| {
                let layout = s.file.layout;
                v.have
                    .ones()
                    .filter_map(|i| layout.validate(i))
                    .map(|p| layout.piece_size(p))
                    .sum::<u64>()
            })
            .sum();
        let (cache_budget, cache_used) = self.engine.cache_usage();
        let downloads = self
            .engine
            .downloads()
            .iter()
            .rev()
            .map(DownloadView::from)
            .collect();
        Snapshot {
            user: self.engine.user().to_string(),
            pid: std::process::id(),
            reachability: crate::net::reach::describe(
                self.tracker.seen_as().as_ref(),
                self.engine.reach().mapped(),
            ),
            mountpoint: self.mountpoint.display().to_string(),
            at_ms: now_ms(),
            tracker_error,
            groups,
            total: self.meter.total(),
            history: self.meter.history(),
            peers,
            downloads,
            download_dir: download_dir(),
            stored,
            cache_budget,
            cache_used,
            kernel_reads: self.kernel_reads.view(),
        }
    }

    fn local(&self, id: &FileId, v: &SwarmView) -> LocalFile {
        let (down, up) = self.meter.file(id);
        LocalFile {
            pieces: v.have.len(),
            verified: v.have.count(),
            in_flight: v.in_flight.count(),
            map: piece_map(&v.have, &v.in_flight),
            down,
            up,
            links: u32::try_from(v.links.len()).unwrap_or(u32::MAX),
        }
    }

    /// The groups and their files, fresh within [`TRACKER_TTL`]; when no
    /// tracker answers, the last ones known and why.
    async fn listing(&self) -> (Vec<GroupView>, Option<String>) {
        let mut cached = self.listing.lock().await;
        if let Some(l) = cached.as_ref() {
            if l.at.elapsed() < TRACKER_TTL {
                return (l.groups.clone(), None);
            }
        }
        match self.fetch_listing().await {
            Ok(groups) => {
                *cached = Some(Listing {
                    at: Instant::now(),
                    groups: groups.clone(),
                });
                (groups, None)
            }
            Err(e) => {
                let last = cached
                    .as_ref()
                    .map(|l| l.groups.clone())
                    .unwrap_or_default();
                (last, Some(format!("{e:#}")))
            }
        }
    }

    async fn fetch_listing(&self) -> Result<Vec<GroupView>, crate::trackers::LinkError> {
        let mut out = Vec::new();
        for g in self.tracker.groups().await? {
            if !g.is_member && !g.pending {
                continue;
            }
            let files = if g.is_member {
                self.tracker.files(&g.name).await.unwrap_or_default()
            } else {
                Vec::new()
            };
            let requests = if g.is_owner {
                let waiting = ListRequests {
                    session: self.tracker.session,
                    group: g.name.clone(),
                };
                (self.tracker.client.call(waiting).await).unwrap_or_default()
            } else {
                Vec::new()
            };
            out.push(GroupView {
                name: g.name,
                owner: g.owner,
                members: g.members,
                is_owner: g.is_owner,
                pending: g.pending && !g.is_member,
                requests,
                files: files.iter().map(file_view).collect(),
            });
        }
        Ok(out)
    }
}

/// The first eight hex digits of a peer id, enough to tell peers apart.
fn short_id(p: &fileshare_protocol::PeerId) -> String {
    fileshare_protocol::ids::hex(&p.0).chars().take(8).collect()
}

fn file_view(f: &FileEntry) -> FileView {
    FileView {
        name: f.name.clone(),
        size: f.size,
        peers_online: f.peers_online,
        local: None,
    }
}

// A float-to-int `as` saturates, which is what a rate display wants.
#[allow(clippy::cast_possible_truncation)]
fn rate(bps: f64) -> u64 {
    if bps.is_finite() && bps > 0.0 {
        bps as u64
    } else {
        0
    }
}

/// `~/Downloads` if it exists, else the home directory.
fn download_dir() -> String {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home {
        Some(h) if h.join("Downloads").is_dir() => h.join("Downloads").display().to_string(),
        Some(h) => h.display().to_string(),
        None => "/tmp".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_maps_mark_verified_in_flight_and_missing() {
        let mut have = Bitfield::new(4);
        let mut fly = Bitfield::new(4);
        have.set(0);
        fly.set(2);
        assert_eq!(piece_map(&have, &fly), "v0f0");
        assert_eq!(piece_map(&Bitfield::new(0), &Bitfield::new(0)), "");
        // 800 pieces in 400 cells: two per cell, half verified is a 4.
        let mut have = Bitfield::new(800);
        let fly = Bitfield::new(800);
        have.set(0);
        have.set(1);
        have.set(2);
        let map = piece_map(&have, &fly);
        assert_eq!(map.len(), 400);
        assert!(map.starts_with("v40"), "{map}");
    }
}
