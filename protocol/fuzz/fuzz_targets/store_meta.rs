//! A daemon store's metadata: the `meta` record of a stored file (the
//! shape of `fsd`'s `store::MetaRecord`, decoded with the same codec) and
//! its `have` log. A damaged record is refused, never a panic; a layout is
//! only accepted when it is consistent.
#![no_main]

use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::{codec, Bitfield};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use std::path::PathBuf;

/// `fsd::store::Source`, field for field.
#[allow(dead_code)]
#[derive(Deserialize)]
enum Source {
    Store,
    InPlace {
        path: PathBuf,
        size: u64,
        mtime_ns: i128,
    },
}

/// `fsd::store::MetaRecord`, field for field.
#[allow(dead_code)]
#[derive(Deserialize)]
struct MetaRecord {
    group: String,
    meta: FileMeta,
    source: Source,
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes split the input into `meta` and `have`.
    if data.len() < 2 {
        return;
    }
    let split = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let (meta, have) = data[2..].split_at(split);
    let Ok(rec) = codec::decode::<MetaRecord>(meta) else {
        return;
    };
    let _ = rec.meta.id();
    let Ok(layout) = rec.meta.layout() else {
        return;
    };
    // As the store reads its have log: out-of-range entries are ignored.
    let mut bits = Bitfield::new(layout.num_pieces());
    for chunk in have.chunks_exact(4) {
        bits.set(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
    }
    assert!(bits.count() <= layout.num_pieces());
});
