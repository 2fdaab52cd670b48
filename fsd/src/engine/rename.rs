//! Renaming a file this user shares (`mv` in the mount).
//!
//! A file's id covers its name, so the renamed file is new metadata: the
//! new name with the same size and piece hashes, hence a new id. The store
//! gets an entry for the new id whose bytes are a hard link to the old
//! entry's ([`crate::store::Store::link_renamed`]); then one tracker change
//! (`RenameShare`) lists the file under the new name and no longer under the
//! old one; then the old entry leaves the group (and the store, if no other
//! group lists it). A read already open under the old name keeps its swarm
//! and its open file, so it reads on.

use super::{Engine, EngineError};
use crate::pieces::swarm::Swarm;
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::RenameShare;
use fileshare_protocol::{Bitfield, FileId};
use std::sync::Arc;

impl Engine {
    /// This daemon's swarm of `name` in `group`, complete ones first.
    fn local(&self, group: &str, name: &str) -> Option<Arc<Swarm>> {
        let mut found: Vec<Arc<Swarm>> = self
            .registry
            .all()
            .into_iter()
            .filter(|s| s.file.in_group(group) && s.file.meta.name == name)
            .collect();
        found.sort_by_key(|s| !s.is_complete());
        found.into_iter().next()
    }

    /// Renames `from` to `to` in `group`: a file this daemon holds whole
    /// and this user shares. A file named `to` that this user alone shares
    /// is replaced; one that another member shares is refused (`NameTaken`).
    pub async fn rename(
        &self,
        group: &str,
        from: &str,
        to: &str,
    ) -> Result<Arc<Swarm>, EngineError> {
        let old = self
            .local(group, from)
            .filter(|s| s.is_complete())
            .ok_or(EngineError::NotShared)?;
        let renamed = FileMeta {
            name: to.to_string(),
            ..old.file.meta.clone()
        };
        let id = renamed.id();
        // The same file under the new name may be held here already.
        let existing = self.registry.get(&id).filter(|s| s.is_complete());
        let stored = match &existing {
            Some(s) => s.file.clone(),
            None => {
                let (file, g, m) = (old.file.clone(), group.to_string(), renamed.clone());
                self.with_store(move |s| s.link_renamed(&file, &g, &m))
                    .await?
            }
        };
        let rename = RenameShare {
            session: self.tracker.session,
            group: group.into(),
            from: from.into(),
            to: to.into(),
        };
        if let Err(e) = self.tracker.client.call(rename).await {
            if existing.is_none() {
                let _ = self.with_store(move |s| s.remove(&id)).await;
            }
            return Err(e.into());
        }
        self.drop_replaced(group, to, &id).await?;
        let swarm = match existing {
            Some(s) => {
                let (file, g) = (s.file.clone(), group.to_string());
                self.with_store(move |_| file.add_group(&g)).await?;
                s
            }
            None => {
                let have = Bitfield::full(stored.layout.num_pieces());
                let swarm = self.new_swarm(stored, have);
                // A partial copy fetched under that name is superseded.
                if let Some(stale) = self.registry.get(&id) {
                    stale.cancel.cancel();
                }
                self.registry.insert(swarm.clone());
                swarm
            }
        };
        self.leave_group(&old, group).await?;
        self.tracker.invalidate(Some(group));
        self.announce_now.notify_one();
        Ok(swarm)
    }

    /// After `name` in `group` became the file `id`: a different local file
    /// of that name (the one replaced) leaves the group.
    pub(super) async fn drop_replaced(
        &self,
        group: &str,
        name: &str,
        id: &FileId,
    ) -> Result<(), EngineError> {
        let replaced: Vec<Arc<Swarm>> = self
            .registry
            .all()
            .into_iter()
            .filter(|s| s.file.id != *id && s.file.in_group(group) && s.file.meta.name == name)
            .collect();
        for s in replaced {
            self.leave_group(&s, group).await?;
        }
        Ok(())
    }

    /// A local file stops being offered in `group`; with no group left it
    /// leaves the registry and the store. Handles open on it keep reading
    /// (they hold the swarm and its open file).
    async fn leave_group(&self, swarm: &Arc<Swarm>, group: &str) -> Result<(), EngineError> {
        let (file, g) = (swarm.file.clone(), group.to_string());
        if self.with_store(move |_| file.remove_group(&g)).await? > 0 {
            return Ok(());
        }
        let id = swarm.file.id;
        if self
            .registry
            .get(&id)
            .is_some_and(|s| Arc::ptr_eq(&s, swarm))
        {
            self.registry.remove(&id);
        }
        swarm.cancel.cancel();
        self.with_store(move |s| s.remove(&id)).await
    }
}
