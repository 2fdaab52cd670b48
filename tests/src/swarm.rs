//! A swarm of mounts reading one file together: what the swarm tests share.

use crate::mount::{fetched, wait_for, Mount};
use std::time::Duration;

/// Every reader reads `rel` through its mount at once, as soon as it is
/// listed there; each must get exactly `want` and have fetched something
/// from a peer other than `source`. Returns how many copies of the file
/// the source uploaded.
pub fn read_together(source: &Mount, readers: &[Mount], rel: &str, want: &[u8]) -> f64 {
    for m in readers {
        let p = m.path(rel);
        wait_for("the file listed", Duration::from_secs(15), || {
            p.exists().then_some(())
        });
    }
    let threads: Vec<_> = (readers.iter())
        .map(|m| {
            let p = m.path(rel);
            std::thread::spawn(move || std::fs::read(p))
        })
        .collect();
    for t in threads {
        let got = t.join().unwrap().expect("read through the mount");
        assert!(got == want, "wrong bytes");
    }
    for m in readers {
        let counters = fetched(m, rel);
        assert!(
            counters.iter().any(|c| c.0 != source.listen && c.1 > 0),
            "{} fetched nothing from another reader: {counters:?}",
            m.listen
        );
    }
    let uploaded: u64 = (source.xattr(rel, "user.fileshare.uploaded").trim())
        .parse()
        .expect("uploaded bytes");
    uploaded as f64 / want.len() as f64
}
