//! Every swarm this daemon holds, by file id: the engine adds and removes
//! them, the peer server looks up what it may serve.

use crate::pieces::swarm::Swarm;
use fileshare_protocol::{FileId, PeerId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The files this daemon can serve, by id.
#[derive(Default)]
pub struct Registry {
    swarms: Mutex<HashMap<FileId, Arc<Swarm>>>,
}

impl Registry {
    pub fn get(&self, id: &FileId) -> Option<Arc<Swarm>> {
        self.swarms.lock().get(id).cloned()
    }

    pub fn insert(&self, swarm: Arc<Swarm>) {
        self.swarms.lock().insert(swarm.file.id, swarm);
    }

    pub fn remove(&self, id: &FileId) -> Option<Arc<Swarm>> {
        self.swarms.lock().remove(id)
    }

    pub fn all(&self) -> Vec<Arc<Swarm>> {
        self.swarms.lock().values().cloned().collect()
    }

    /// Verified bytes received from `peer` so far, over every file: what
    /// the upload scheduler reciprocates.
    pub fn received_from(&self, peer: &PeerId) -> u64 {
        self.all().iter().map(|s| s.received_from(peer)).sum()
    }
}
