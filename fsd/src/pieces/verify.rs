//! Where received bytes become a verified piece: checked against the
//! file's SHA-256 piece hash, written to the store (through the cache,
//! which makes room for it), marked verified in the swarm (which offers it
//! to other peers at once) and reported to the trackers.

use crate::pieces::cache::Cache;
use crate::pieces::swarm::{FetchLinkId, Swarm, Verdict, Waste, MAX_FAILURES};
use crate::trackers::TrackerLink;
use fileshare_protocol::ids::PieceHash;
use fileshare_protocol::PieceIndex;

/// Why the connection a piece came by must end.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("peer sent {MAX_FAILURES} pieces that fail their hash")]
    BadPieces,
}

/// Checks a received piece against its SHA-256 and, if it matches, stores
/// it and marks it verified. Says whether the bytes matched; errs when the
/// link it came by must end. A piece that cannot be stored fails its
/// readers and keeps the link.
pub fn verify_and_store(
    swarm: &Swarm,
    cache: &Cache,
    tracker: &TrackerLink,
    key: FetchLinkId,
    piece: PieceIndex,
    data: &[u8],
) -> Result<bool, Rejected> {
    let file = &swarm.file;
    let ok = data.len() as u64 == file.layout.piece_size(piece)
        && PieceHash::of(data) == file.meta.hashes[piece.usize()];
    if !ok {
        return match swarm.mark_hash_failed(key, piece) {
            Verdict::DropPeer => Err(Rejected::BadPieces),
            Verdict::KeepPeer => Ok(false),
        };
    }
    if !swarm.still_needed(piece) {
        swarm.count_duplicate(key, piece, Waste::Verified, data.len() as u64);
        return Ok(true);
    }
    if cache.store(swarm, key, piece, data) {
        tracker.report_piece(file.id, piece.get());
    }
    Ok(true)
}
