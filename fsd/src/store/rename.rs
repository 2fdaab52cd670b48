//! A renamed file's entry: the same bytes under new metadata. A file's id
//! covers its name, so a rename makes a new entry (`<new id>/`) whose
//! `data` is a hard link to the old entry's (or, for a file shared in
//! place, the same source file): no byte is copied, and the old entry can
//! be dropped, or kept for the groups that still list the old name, on its
//! own.

use super::{MetaRecord, Source, Store, StoreError, StoredFile};
use fileshare_protocol::ids::FileMeta;
use std::sync::Arc;

impl Store {
    /// A complete entry for `meta` in `group` with the bytes of `old`.
    /// An entry already stored under `meta`'s id is replaced.
    pub fn link_renamed(
        &self,
        old: &StoredFile,
        group: &str,
        meta: &FileMeta,
    ) -> Result<Arc<StoredFile>, StoreError> {
        let id = meta.id();
        self.remove(&id)?;
        let dir = self.dir_of(&id);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let source = match &old.source {
            Source::Store => {
                let (from, to) = (old.dir.join("data"), dir.join("data"));
                if let Err(e) = std::fs::hard_link(&from, &to) {
                    // A store on a filesystem without hard links: copy.
                    tracing::debug!("cannot link {}: {e}; copying", from.display());
                    std::fs::copy(&from, &to).map_err(|e| StoreError::io(&to, e))?;
                }
                Source::Store
            }
            Source::InPlace { .. } => old.source.clone(),
        };
        // Linked bytes are as durable as the old entry's, which may have
        // pieces not yet synced: counted as unsynced, they are hashed again
        // after an unclean stop. A file shared in place is the user's own.
        let durable = matches!(source, Source::InPlace { .. });
        self.finish_complete(
            dir,
            MetaRecord {
                group: group.to_string(),
                meta: meta.clone(),
                source,
            },
            durable,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn a_renamed_entry_shares_the_bytes_and_outlives_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let st = store.staging().unwrap();
        st.file.write_all_at(b"hello, renamed world", 0).unwrap();
        let meta = Store::hash_file(&st.file, "a.txt").unwrap();
        let old = store.import_staging("g", &meta, &st.path).unwrap();
        let renamed = FileMeta {
            name: "b.txt".into(),
            ..meta.clone()
        };
        let new = store.link_renamed(&old, "g", &renamed).unwrap();
        assert_eq!(new.id, renamed.id());
        assert_ne!(new.id, old.id);
        let data = |f: &StoredFile| std::fs::metadata(f.disk_path().join("data")).unwrap();
        assert_eq!(data(&new).ino(), data(&old).ino(), "a link, not a copy");
        store.remove(&old.id).unwrap();
        assert_eq!(new.read_at(0, 100).unwrap(), b"hello, renamed world");
        let all = store.load_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.meta.name, "b.txt");
        assert_eq!(all[0].1.count(), 1, "complete after a reload");
    }
}
