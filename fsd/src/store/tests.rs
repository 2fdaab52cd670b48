//! The store's durability and eviction as a crash would see them: entries
//! dropped and opened again from disk.

use super::*;
use fileshare_protocol::PIECE_LEN;

fn bytes(len: u64, seed: u64) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

/// A fetched copy of a 4-piece file, with every piece written.
fn fetched_copy(dir: &Path) -> (Store, Arc<StoredFile>, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    let origin = Store::open(src.path()).unwrap();
    let st = origin.staging().unwrap();
    let data = bytes(PIECE_LEN * 3 + 100, 5);
    st.file.write_all_at(&data, 0).unwrap();
    let meta = Store::hash_file(&st.file, "a.bin").unwrap();
    let store = Store::open(dir).unwrap();
    let (f, have) = store.create("g", &meta).unwrap();
    assert_eq!(have.count(), 0);
    assert!(f.is_fetched());
    for p in f.layout.pieces() {
        let off = usize::try_from(f.layout.piece_offset(p)).unwrap();
        let len = usize::try_from(f.layout.piece_size(p)).unwrap();
        f.write_piece(p, &data[off..off + len]).unwrap();
    }
    (store, f, data)
}

fn held(store: &Store) -> Vec<u32> {
    let all = store.load_all();
    assert_eq!(all.len(), 1);
    all[0].1.ones().collect()
}

#[test]
fn staged_file_round_trips_and_fetched_pieces_survive_reload() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let st = store.staging().unwrap();
    let data = bytes(PIECE_LEN * 2 + 7, 0);
    st.file.write_all_at(&data, 0).unwrap();
    let meta = Store::hash_file(&st.file, "a.bin").unwrap();
    assert_eq!(meta.hashes.len(), 3);
    let f = store.import_staging("g", &meta, &st.path).unwrap();
    assert!(!f.is_fetched());
    assert_eq!(
        f.read_at(PIECE_LEN - 2, 4).unwrap(),
        data[usize::try_from(PIECE_LEN - 2).unwrap()..][..4]
    );
    assert_eq!(f.pending().0, 3, "its bytes await a sync point");
    assert!(f.sync().unwrap());
    assert_eq!(f.pending().0, 0);

    let other = tempfile::tempdir().unwrap();
    let store2 = Store::open(other.path()).unwrap();
    let (g, have) = store2.create("g", &meta).unwrap();
    assert_eq!(have.count(), 0);
    let p1 = g.layout.validate(1).unwrap();
    g.write_piece(p1, &f.read_piece(p1).unwrap()).unwrap();
    drop(g);
    assert_eq!(held(&store2), vec![1]);
    let all = store2.load_all();
    assert_eq!(all[0].0.read_piece(p1).unwrap(), f.read_piece(p1).unwrap());
    store2.remove(&meta.id()).unwrap();
    assert!(store2.load_all().is_empty());
}

#[test]
fn unsynced_pieces_are_hashed_again_and_bad_ones_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, f, _) = fetched_copy(dir.path());
    assert_eq!(f.pending().0, 4);
    // An unclean stop, and piece 2's bytes never reached the disk.
    let p2 = f.layout.validate(2).unwrap();
    f.data
        .write_all_at(&vec![0u8; 4096], f.layout.piece_offset(p2) + 8192)
        .unwrap();
    drop(f);
    assert_eq!(held(&store), vec![0, 1, 3]);
    // The check was recorded as a sync point: the next load trusts it.
    assert_eq!(held(&store), vec![0, 1, 3]);
}

#[test]
fn synced_pieces_are_trusted_and_evicted_ones_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, f, data) = fetched_copy(dir.path());
    assert!(f.sync().unwrap());
    assert!(!f.sync().unwrap(), "nothing left to sync");
    let before = f.allocated();
    let p1 = f.layout.validate(1).unwrap();
    f.record_lost(&[p1]).unwrap();
    {
        let _g = f.punch_guard();
        f.punch(&[p1]).unwrap();
    }
    assert!(f.allocated() < before);
    assert!(f.read_piece(p1).unwrap().iter().all(|&b| b == 0));
    drop(f);
    assert_eq!(held(&store), vec![0, 2, 3]);
    let (f, _) = store.load_all().pop().unwrap();
    let p0 = f.layout.validate(0).unwrap();
    assert_eq!(
        f.read_piece(p0).unwrap(),
        data[..usize::try_from(PIECE_LEN).unwrap()]
    );
    // Recorded lost, then kept after all.
    let p3 = f.layout.validate(3).unwrap();
    f.record_lost(&[p3]).unwrap();
    f.record_kept(&[p3]).unwrap();
    drop(f);
    assert_eq!(held(&store), vec![0, 2, 3]);
}

#[test]
fn an_older_daemons_log_is_checked_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, f, _) = fetched_copy(dir.path());
    let entry = f.dir.clone();
    drop(f);
    std::fs::remove_file(entry.join(LOG)).unwrap();
    let old: Vec<u8> = [0u32, 2, 7].iter().flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(entry.join(LEGACY_LOG), old).unwrap();
    assert_eq!(held(&store), vec![0, 2]);
    assert!(!entry.join(LEGACY_LOG).exists());
    assert_eq!(held(&store), vec![0, 2]);
}

#[test]
fn a_file_hashed_on_several_threads_has_each_piece_hash_in_order() {
    use fileshare_protocol::ids::PieceHash;
    let dir = tempfile::tempdir().unwrap();
    let len = PIECE_LEN * 9 + 1234;
    let data = bytes(len, 3);
    let f = std::fs::File::create_new(dir.path().join("f")).unwrap();
    f.write_all_at(&data, 0).unwrap();
    let meta = Store::hash_file(&f, "f").unwrap();
    let want: Vec<PieceHash> = data
        .chunks(usize::try_from(PIECE_LEN).unwrap())
        .map(PieceHash::of)
        .collect();
    assert_eq!(meta.hashes, want);
    assert_eq!(meta.size, len);
}
