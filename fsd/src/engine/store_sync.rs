//! Sync points of the store, batched: pieces are written and logged as
//! they arrive with no sync, and every [`SYNC_CHECK`] the engine looks at
//! what is pending. Once [`SYNC_BYTES`] are pending over the store, or the
//! oldest has waited [`SYNC_AGE`], each file with pending pieces gets one
//! `fdatasync` of its data and one of its log ([`StoredFile::sync`]).
//! Stopping cleanly syncs everything ([`Engine::sync_store`]), so only an
//! unclean stop leaves pieces to hash again at the next start, at most
//! about `SYNC_BYTES` of them.
//!
//! The same loop recounts the cache's use from the swarms, and evicts what
//! readers no longer keep while the cache is over its budget.

use crate::engine::Engine;
use crate::store::StoredFile;
use fileshare_protocol::PIECE_LEN;
use std::sync::Arc;
use std::time::Duration;

/// How often pending pieces are looked at.
const SYNC_CHECK: Duration = Duration::from_secs(1);

/// Pending bytes over the store that call for a sync point.
const SYNC_BYTES: u64 = 256 << 20;

/// The longest a piece waits for a sync point while the daemon runs.
const SYNC_AGE: Duration = Duration::from_secs(30);

impl Engine {
    /// Makes pending pieces durable in batches until the daemon stops (the
    /// task ends with the engine's token; [`Engine::start`] starts it).
    pub(super) async fn store_sync_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SYNC_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.cache.recount();
            // Pieces kept for readers who have moved on go now.
            let (budget, used) = self.cache.usage();
            if used > budget {
                let cache = self.cache.clone();
                let _ = self.tasks.blocking(move || cache.make_room(0)).await;
            }
            let files = self.files();
            let mut bytes = 0u64;
            let mut oldest = Duration::ZERO;
            for f in &files {
                let (n, since) = f.pending();
                bytes += n as u64 * PIECE_LEN;
                if let Some(t) = since {
                    oldest = oldest.max(t.elapsed());
                }
            }
            if bytes == 0 || (bytes < SYNC_BYTES && oldest < SYNC_AGE) {
                continue;
            }
            let _ = self.tasks.blocking(move || sync_files(&files)).await;
        }
    }

    /// One sync point for every file with pending pieces (blocking; for
    /// the end of the daemon, after its tasks).
    pub fn sync_store(&self) {
        sync_files(&self.files());
    }

    fn files(&self) -> Vec<Arc<StoredFile>> {
        (self.registry.all().iter())
            .map(|s| s.file.clone())
            .collect()
    }
}

fn sync_files(files: &[Arc<StoredFile>]) {
    for f in files {
        if let Err(e) = f.sync() {
            tracing::warn!(file = %f.meta.name, "cannot sync the store: {e:#}");
        }
    }
}
