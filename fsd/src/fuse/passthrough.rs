//! Reads by the kernel directly (FUSE passthrough): a shared file whose
//! every piece is verified here is opened on its data file in the store
//! (or the user's own file, for one shared in place), so `read`, `mmap`
//! and `sendfile` never reach the daemon and its bytes sit in the page
//! cache once, as the data file's.
//!
//! The kernel has rules this module keeps:
//! - one backing file per inode while any passthrough open of it lives
//!   (every such open reuses the inode's [`Backing`]);
//! - an inode is open either with passthrough or through the daemon, never
//!   both at once: while it has opens through the daemon, further opens go
//!   through the daemon too, and while it has a backing, every open uses it.
//!
//! A [`Backing`] pins its file's pieces against eviction until the last
//! open that uses it is released. Passthrough needs the kernel's
//! `CONFIG_FUSE_PASSTHROUGH` (Linux 6.9 or later) and CAP_SYS_ADMIN in the
//! daemon; without them every read goes through the daemon, and
//! [`KernelReads::view`] says why.

use crate::engine::Engine;
use crate::pieces::swarm::Swarm;
use fileshare_protocol::messages::tracker::FileEntry;
use fuser::{BackingId, InitFlags, KernelConfig, ReplyOpen};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// The status line's words when passthrough is on.
pub const ON: &str = "read by the kernel directly (passthrough)";

/// The status line's words when the daemon lacks the privilege.
pub const NEEDS_CAP: &str = "read through the daemon: passthrough needs CAP_SYS_ADMIN";

/// Set to `0`, files held whole are read through the daemon all the same:
/// for comparisons, and a way around a kernel's passthrough bugs.
pub const SWITCH: &str = "FILESHARE_PASSTHROUGH";

/// CAP_SYS_ADMIN's bit in the capability sets of `/proc/self/status`.
const CAP_SYS_ADMIN: u32 = 21;

/// Whether files held whole are read by the kernel directly, and the
/// counters of what the daemon still sees of them.
pub struct KernelReads {
    /// `None` while passthrough is usable, else why not (also before the
    /// kernel's first request).
    off: Mutex<Option<String>>,
    inodes: Mutex<HashMap<u64, Inode>>,
    /// Opens answered with passthrough, since the mount.
    passthrough_opens: AtomicU64,
    /// Opens of shared files answered through the daemon, since the mount.
    daemon_opens: AtomicU64,
    /// Bytes of shared files the daemon answered reads with.
    daemon_read_bytes: AtomicU64,
}

/// What `fsd status` and the dashboard show of [`KernelReads`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelReadsView {
    /// Files held whole are opened with passthrough.
    pub passthrough: bool,
    /// [`ON`], or why files are read through the daemon.
    pub how: String,
    pub passthrough_opens: u64,
    /// Passthrough opens not released yet.
    pub passthrough_open_now: u64,
    pub daemon_opens: u64,
    pub daemon_read_bytes: u64,
}

/// One inode's opens.
#[derive(Default)]
struct Inode {
    /// Its backing file while a passthrough open of it lives.
    backing: Weak<Backing>,
    /// Its opens through the daemon.
    through_daemon: usize,
    tally: Arc<Tally>,
}

/// One file's counters, for its `user.fileshare.*` attributes.
#[derive(Default)]
pub struct Tally {
    pub passthrough_opens: AtomicU64,
    pub daemon_read_bytes: AtomicU64,
}

/// A backing file registered with the kernel, and the pin that keeps its
/// pieces from eviction: both end with the last open that uses it.
pub struct Backing {
    id: BackingId,
    swarm: Arc<Swarm>,
}

impl Drop for Backing {
    fn drop(&mut self) {
        self.swarm.unpin();
    }
}

impl Backing {
    /// The id open replies name.
    pub fn id(&self) -> &BackingId {
        &self.id
    }

    /// The swarm whose data file the kernel reads.
    pub fn swarm(&self) -> &Arc<Swarm> {
        &self.swarm
    }
}

/// An open answered with passthrough: holds the inode's backing.
pub struct KernelOpen {
    pub backing: Arc<Backing>,
}

/// An open of a shared file answered through the daemon: while it lives,
/// further opens of the inode go through the daemon too.
pub struct DaemonOpen {
    reads: Arc<KernelReads>,
    ino: u64,
    tally: Arc<Tally>,
}

impl DaemonOpen {
    /// Counts bytes the daemon answered a read with.
    pub fn count_read(&self, bytes: usize) {
        let n = bytes as u64;
        self.tally.daemon_read_bytes.fetch_add(n, Ordering::Relaxed);
        (self.reads.daemon_read_bytes).fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for DaemonOpen {
    fn drop(&mut self) {
        let mut inodes = self.reads.inodes.lock();
        if let Some(i) = inodes.get_mut(&self.ino) {
            i.through_daemon = i.through_daemon.saturating_sub(1);
        }
    }
}

/// How an open is answered.
pub enum Opened {
    Kernel(KernelOpen),
    Daemon(DaemonOpen),
}

impl KernelReads {
    pub fn new() -> Arc<KernelReads> {
        Arc::new(KernelReads {
            off: Mutex::new(Some("the mount is not up yet".into())),
            inodes: Mutex::new(HashMap::new()),
            passthrough_opens: AtomicU64::new(0),
            daemon_opens: AtomicU64::new(0),
            daemon_read_bytes: AtomicU64::new(0),
        })
    }

    /// Asks the kernel for passthrough at the mount's start, where it and
    /// the daemon's privileges allow it.
    pub(super) fn negotiate(&self, config: &mut KernelConfig) {
        let off = if std::env::var_os(SWITCH).is_some_and(|v| v == "0") {
            Some(format!("read through the daemon: turned off by {SWITCH}=0"))
        } else if !config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
            Some(
                "read through the daemon: the kernel offers no passthrough \
                 (it needs Linux 6.9 or later with CONFIG_FUSE_PASSTHROUGH)"
                    .to_string(),
            )
        } else if !has_cap_sys_admin() {
            Some(NEEDS_CAP.to_string())
        } else if let Err(e) = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
            Some(format!(
                "read through the daemon: the kernel refused passthrough ({e:?})"
            ))
        } else {
            // The store may itself be on a stacked filesystem (overlayfs).
            let _ = config
                .set_max_stack_depth(2)
                .or_else(|max| config.set_max_stack_depth(max));
            None
        };
        if let Some(why) = &off {
            tracing::info!("files held whole are {why}");
        }
        *self.off.lock() = off;
    }

    /// Opens `ino` (the shared file `entry`): with passthrough if the inode
    /// has a backing already, or if every piece is verified here and
    /// nothing else has it open through the daemon; else through the
    /// daemon.
    pub(super) fn open(
        self: &Arc<Self>,
        ino: u64,
        entry: &FileEntry,
        engine: &Engine,
        reply: &ReplyOpen,
    ) -> Opened {
        let mut inodes = self.inodes.lock();
        let inode = inodes.entry(ino).or_default();
        let backing = match inode.backing.upgrade() {
            Some(b) => Some(b),
            None if inode.through_daemon == 0 => self.new_backing(entry, engine, reply),
            None => None,
        };
        match backing {
            Some(backing) => {
                inode.backing = Arc::downgrade(&backing);
                inode
                    .tally
                    .passthrough_opens
                    .fetch_add(1, Ordering::Relaxed);
                self.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                Opened::Kernel(KernelOpen { backing })
            }
            None => {
                inode.through_daemon += 1;
                self.daemon_opens.fetch_add(1, Ordering::Relaxed);
                Opened::Daemon(DaemonOpen {
                    reads: self.clone(),
                    ino,
                    tally: inode.tally.clone(),
                })
            }
        }
    }

    /// Registers the data file of `entry` with the kernel if passthrough
    /// is on and every piece is verified here, pinning them.
    fn new_backing(
        &self,
        entry: &FileEntry,
        engine: &Engine,
        reply: &ReplyOpen,
    ) -> Option<Arc<Backing>> {
        if self.off.lock().is_some() {
            return None;
        }
        let swarm = engine.swarm(&entry.id)?;
        // Pinned first: no eviction takes a piece between the check and
        // the open.
        swarm.pin();
        let unpin = |why: &str| {
            tracing::debug!(file = %entry.name, "opened through the daemon: {why}");
            swarm.unpin();
            None
        };
        if !swarm.is_complete() {
            return unpin("not every piece is here");
        }
        if let Err(e) = swarm.file.check_source() {
            return unpin(&e.to_string());
        }
        match reply.open_backing(swarm.file.data_file()) {
            Ok(id) => Some(Arc::new(Backing { id, swarm })),
            Err(e) => {
                let why = if e.raw_os_error() == Some(libc::EPERM) {
                    NEEDS_CAP.to_string()
                } else {
                    format!("read through the daemon: the kernel refused passthrough ({e})")
                };
                tracing::warn!(file = %entry.name, "files held whole are {why}");
                *self.off.lock() = Some(why);
                unpin("passthrough refused")
            }
        }
    }

    /// The counters of one inode, if it was ever opened.
    pub fn tally(&self, ino: u64) -> Option<Arc<Tally>> {
        self.inodes.lock().get(&ino).map(|i| i.tally.clone())
    }

    pub fn view(&self) -> KernelReadsView {
        let off = self.off.lock().clone();
        let open_now = self
            .inodes
            .lock()
            .values()
            .map(|i| i.backing.strong_count() as u64)
            .sum();
        KernelReadsView {
            passthrough: off.is_none(),
            how: off.unwrap_or_else(|| ON.to_string()),
            passthrough_opens: self.passthrough_opens.load(Ordering::Relaxed),
            passthrough_open_now: open_now,
            daemon_opens: self.daemon_opens.load(Ordering::Relaxed),
            daemon_read_bytes: self.daemon_read_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Whether this process holds CAP_SYS_ADMIN, which registering a backing
/// file with the kernel needs.
fn has_cap_sys_admin() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| cap_sys_admin_in(&s))
}

/// Whether the effective set of a `/proc/PID/status` text holds
/// CAP_SYS_ADMIN.
fn cap_sys_admin_in(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_sys_admin_is_read_from_the_effective_set() {
        let root = "Name:\tfsd\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n";
        assert!(cap_sys_admin_in(root));
        let user = "CapPrm:\t0000000000200000\nCapEff:\t0000000000000000\n";
        assert!(!cap_sys_admin_in(user));
        let only_admin = "CapEff:\t0000000000200000\n";
        assert!(cap_sys_admin_in(only_admin));
        assert!(!cap_sys_admin_in("no such line"));
    }
}
