//! The `user.fileshare.*` extended attributes, for `getfattr -d`: a file's
//! id, its pieces verified here, its peers, the bytes moved, and how often
//! it was opened for the kernel to read directly.

use super::MountedFs;
use crate::fuse::inodes::Node;
use fileshare_protocol::PIECE_LEN;
use fuser::{Errno, INodeNo, ReplyXattr};
use std::ffi::OsStr;
use std::sync::atomic::Ordering;

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len <= size {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

impl MountedFs {
    pub(super) fn getxattr(&self, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = match self.xattrs(ino) {
            Ok(attrs) => attrs
                .into_iter()
                .find(|(k, _)| OsStr::new(k) == name)
                .map(|(_, v)| v),
            Err(e) => return reply.error(e),
        };
        let Some(value) = value else {
            return reply.error(Errno::NO_XATTR);
        };
        xattr_reply(reply, size, value.as_bytes());
    }

    pub(super) fn listxattr(&self, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = match self.xattrs(ino) {
            Ok(attrs) => attrs
                .into_iter()
                .flat_map(|(k, _)| k.into_bytes().into_iter().chain([0]))
                .collect::<Vec<u8>>(),
            Err(e) => return reply.error(e),
        };
        xattr_reply(reply, size, &names);
    }

    /// The `user.fileshare.*` attributes of a file, for `getfattr -d`.
    fn xattrs(&self, ino: INodeNo) -> Result<Vec<(String, String)>, Errno> {
        let Node::File { entry, .. } = self.node(ino)? else {
            return Ok(Vec::new());
        };
        let mut out = vec![
            ("user.fileshare.id".to_string(), entry.id.to_hex()),
            (
                "user.fileshare.peers_online".to_string(),
                entry.peers_online.to_string(),
            ),
        ];
        if let Some(swarm) = self.engine.swarm(&entry.id) {
            let have = swarm.have();
            out.push((
                "user.fileshare.pieces".into(),
                format!("{}/{}", have.count(), have.len()),
            ));
            let counters = swarm.counters();
            let fetched: Vec<String> = (counters.iter())
                .map(|(addr, c)| {
                    format!(
                        "{addr} bytes={} pieces={} failures={}",
                        c.bytes, c.pieces, c.failures
                    )
                })
                .collect();
            out.push(("user.fileshare.fetched".into(), fetched.join("; ")));
            // Which way each connection was opened (see `net::reach`).
            let reach = self.engine.reach();
            let paths: Vec<String> = (counters.iter())
                .filter_map(|(addr, _)| Some(format!("{addr} {}", reach.path_of(addr)?.as_str())))
                .collect();
            out.push(("user.fileshare.paths".into(), paths.join("; ")));
            let count = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed).to_string();
            out.push(("user.fileshare.uploaded".into(), count(&swarm.uploaded)));
            out.push((
                "user.fileshare.duplicates".into(),
                count(&swarm.duplicate_bytes),
            ));
            // Links open now and at most at once; peers met by exchange.
            let pex = swarm.peers.counts();
            out.push((
                "user.fileshare.links".into(),
                format!("{} peak={}", pex.links, pex.peak_links),
            ));
            let bytes: u64 = pex.linked.iter().map(|p| swarm.received_from(p)).sum();
            out.push((
                "user.fileshare.exchange".into(),
                format!(
                    "learned={} linked={} bytes={bytes}",
                    pex.learned,
                    pex.linked.len()
                ),
            ));
        } else {
            let n = entry.size.div_ceil(PIECE_LEN);
            out.push(("user.fileshare.pieces".into(), format!("0/{n}")));
            out.push(("user.fileshare.fetched".into(), String::new()));
            out.push(("user.fileshare.paths".into(), String::new()));
            out.push(("user.fileshare.uploaded".into(), "0".into()));
            out.push(("user.fileshare.duplicates".into(), "0".into()));
            out.push(("user.fileshare.links".into(), "0 peak=0".into()));
            let none = "learned=0 linked=0 bytes=0";
            out.push(("user.fileshare.exchange".into(), none.into()));
        }
        let tally = self.kernel_reads.tally(ino.0).unwrap_or_default();
        out.push((
            "user.fileshare.passthrough_opens".into(),
            count(&tally.passthrough_opens),
        ));
        out.push((
            "user.fileshare.daemon_read_bytes".into(),
            count(&tally.daemon_read_bytes),
        ));
        Ok(out)
    }
}

fn count(n: &std::sync::atomic::AtomicU64) -> String {
    n.load(Ordering::Relaxed).to_string()
}
