//! Hashing a file while it is written. `cp` into the mount writes in order
//! from the start, so every whole piece behind the write position is final
//! unless a later write goes back: each is hashed as soon as it is
//! complete, on a thread of its own, while the writes go on on another
//! core. At close only the pieces not hashed yet remain ([`Store::hash_file_after`]).
//!
//! Any write that is not at the end of what was written in order (an
//! overwrite or a gap) and any change of size ends it: the file is then
//! hashed whole at close, as it would be without this.
//!
//! [`Store::hash_file_after`]: super::Store::hash_file_after

use fileshare_protocol::ids::PieceHash;
use fileshare_protocol::PIECE_LEN;
use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The hashing of one staging file's complete pieces, beside its writes.
pub struct Prehash {
    shared: Arc<Shared>,
}

struct Shared {
    st: Mutex<State>,
    /// Woken when work arrives, when it ends, and when a piece is done.
    cv: Condvar,
}

#[derive(Default)]
struct State {
    /// Bytes written in order from offset 0.
    end: u64,
    /// The hashes of pieces `0..hashed.len()`.
    hashed: Vec<PieceHash>,
    /// No out-of-order write or size change happened.
    valid: bool,
    /// No more pieces are to be hashed (finished or dropped).
    stop: bool,
    /// The thread is hashing a piece outside the lock.
    busy: bool,
    /// The thread was started (it starts with the first whole piece).
    started: bool,
}

impl Default for Prehash {
    fn default() -> Self {
        Self::new()
    }
}

impl Prehash {
    pub fn new() -> Prehash {
        Prehash {
            shared: Arc::new(Shared {
                st: Mutex::new(State {
                    valid: true,
                    ..State::default()
                }),
                cv: Condvar::new(),
            }),
        }
    }

    /// `len` bytes were written at `offset` of `file`: whole pieces behind
    /// the written end are hashed on this file's thread.
    pub fn wrote(&self, file: &File, offset: u64, len: u64) {
        let mut st = self.shared.st.lock();
        if !st.valid || st.stop {
            return;
        }
        if offset != st.end {
            st.valid = false;
            self.shared.cv.notify_all();
            return;
        }
        st.end += len;
        if st.end < PIECE_LEN {
            return;
        }
        if !st.started {
            let Ok(file) = file.try_clone() else {
                // No descriptor to spare: hashed at close instead.
                st.valid = false;
                return;
            };
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("prehash".into())
                .spawn(move || shared.run(&file));
            if spawned.is_err() {
                st.valid = false;
                return;
            }
            st.started = true;
        }
        self.shared.cv.notify_all();
    }

    /// The file's size changed (a truncation): hashed whole at close.
    pub fn resized(&self) {
        let mut st = self.shared.st.lock();
        st.valid = false;
        self.shared.cv.notify_all();
    }

    /// Stops hashing and returns the hashes of the file's first pieces,
    /// in order; empty if anything but in-order writes happened.
    pub fn finish(&self) -> Vec<PieceHash> {
        let mut st = self.shared.st.lock();
        st.stop = true;
        self.shared.cv.notify_all();
        while st.busy {
            self.shared.cv.wait(&mut st);
        }
        if st.valid {
            std::mem::take(&mut st.hashed)
        } else {
            Vec::new()
        }
    }
}

impl Drop for Prehash {
    fn drop(&mut self) {
        let mut st = self.shared.st.lock();
        st.stop = true;
        self.shared.cv.notify_all();
    }
}

impl Shared {
    /// The thread: hashes each whole piece behind the written end, until
    /// told to stop or the writes go out of order.
    fn run(&self, file: &File) {
        let piece = usize::try_from(PIECE_LEN).unwrap_or(512 * 1024);
        let mut buf = vec![0u8; piece];
        loop {
            let offset = {
                let mut st = self.st.lock();
                loop {
                    if st.stop || !st.valid {
                        return;
                    }
                    let next = st.hashed.len() as u64 * PIECE_LEN;
                    if st.end >= next + PIECE_LEN {
                        st.busy = true;
                        break next;
                    }
                    self.cv.wait(&mut st);
                }
            };
            let hash = file
                .read_exact_at(&mut buf, offset)
                .map(|()| PieceHash::of(&buf));
            let mut st = self.st.lock();
            st.busy = false;
            match hash {
                Ok(h) if st.valid => st.hashed.push(h),
                _ => st.valid = false,
            }
            self.cv.notify_all();
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn written(size: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        let f = tempfile::NamedTempFile::new().unwrap();
        (f, data)
    }

    #[test]
    fn in_order_writes_hash_the_whole_pieces_as_they_complete() {
        let size = 3 * PIECE_LEN as usize + 1000;
        let (f, data) = written(size);
        let file = f.as_file();
        let pre = Prehash::new();
        for (i, chunk) in data.chunks(128 * 1024 + 3).enumerate() {
            let offset = (i * (128 * 1024 + 3)) as u64;
            file.write_all_at(chunk, offset).unwrap();
            pre.wrote(file, offset, chunk.len() as u64);
        }
        // The thread catches up with the three whole pieces (what it has
        // not hashed by the close is hashed then).
        let t = std::time::Instant::now();
        while pre.shared.st.lock().hashed.len() < 3 {
            assert!(t.elapsed().as_secs() < 10, "not hashed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let done = pre.finish();
        assert_eq!(done.len(), 3, "the three whole pieces");
        let whole = Store::hash_file(file, "a").unwrap();
        assert_eq!(&whole.hashes[..3], &done[..]);
        let after = Store::hash_file_after(file, "a", done).unwrap();
        assert_eq!(after, whole);
    }

    #[test]
    fn an_overwrite_a_gap_or_a_truncation_leaves_the_hashing_to_the_close() {
        let size = 2 * PIECE_LEN as usize;
        for case in 0..3 {
            let (f, data) = written(size);
            let file = f.as_file();
            let pre = Prehash::new();
            file.write_all_at(&data, 0).unwrap();
            pre.wrote(file, 0, size as u64);
            match case {
                0 => {
                    file.write_all_at(b"x", 10).unwrap();
                    pre.wrote(file, 10, 1);
                }
                1 => pre.wrote(file, size as u64 + 5, 1),
                _ => pre.resized(),
            }
            assert!(pre.finish().is_empty(), "case {case}");
        }
    }

    #[test]
    fn dropping_it_ends_its_thread() {
        let (f, data) = written(PIECE_LEN as usize);
        let pre = Prehash::new();
        f.as_file().write_all_at(&data, 0).unwrap();
        pre.wrote(f.as_file(), 0, data.len() as u64);
        let shared = Arc::downgrade(&pre.shared);
        drop(pre);
        let t = std::time::Instant::now();
        while shared.strong_count() > 0 {
            assert!(t.elapsed().as_secs() < 10, "the thread did not end");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
