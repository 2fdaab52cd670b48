//! Where received bytes become a verified piece: checked against the
//! file's SHA-256 piece hash, written to the store (through the cache,
//! which makes room for it), marked verified in the swarm (which offers it
//! to other peers at once) and reported to the trackers.

use crate::pieces::cache::Cache;
use crate::pieces::swarm::{FetchLinkId, Swarm, Verdict, MAX_FAILURES};
use crate::trackers::TrackerLink;
use fileshare_protocol::ids::PieceHash;

/// Why the connection a piece came by must end. Causes are in the
/// messages, never also a `source`, so an error chain names each once.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("peer sent piece {0}, which the file does not have")]
    NoSuchPiece(u32),
    #[error("peer sent {MAX_FAILURES} pieces that fail their hash")]
    BadPieces,
}

/// Checks a received piece against its SHA-256 and, if it matches, stores
/// it and marks it verified. Errs when the link it came by must end; a
/// piece that cannot be stored fails its readers and keeps the link.
pub fn verify_and_store(
    swarm: &Swarm,
    cache: &Cache,
    tracker: &TrackerLink,
    key: FetchLinkId,
    index: u32,
    data: &[u8],
) -> Result<(), Rejected> {
    let file = &swarm.file;
    let Some(piece) = file.layout.validate(index) else {
        return Err(Rejected::NoSuchPiece(index));
    };
    let ok = data.len() as u64 == file.layout.piece_size(piece)
        && PieceHash::of(data) == file.meta.hashes[piece.usize()];
    if !ok {
        return match swarm.mark_hash_failed(key, index) {
            Verdict::DropPeer => Err(Rejected::BadPieces),
            Verdict::KeepPeer => Ok(()),
        };
    }
    if !swarm.still_needed(index) {
        swarm.count_duplicate(data);
        return Ok(());
    }
    if cache.store(swarm, key, piece, data) {
        tracker.report_piece(file.id, index);
    }
    Ok(())
}
