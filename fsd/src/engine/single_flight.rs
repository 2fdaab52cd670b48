//! One at a time per key: concurrent first opens of a file wait for the
//! one that creates its store entry instead of racing it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Weak};

/// A lock per key, made on first use and gone once nobody holds or waits
/// for it.
pub struct SingleFlight<K> {
    gates: Mutex<HashMap<K, Weak<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for SingleFlight<K> {
    fn default() -> Self {
        SingleFlight {
            gates: Mutex::new(HashMap::new()),
        }
    }
}

/// Held while its key's work runs; the next caller for the key waits.
pub struct Turn {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl<K: Eq + Hash + Clone> SingleFlight<K> {
    /// Waits until no other caller holds `key`'s turn, and takes it.
    pub async fn turn(&self, key: &K) -> Turn {
        let gate = {
            let mut gates = self.gates.lock();
            // Forget the gates nobody holds any more, so the map stays as
            // small as the work in flight.
            gates.retain(|_, g| g.strong_count() > 0);
            match gates.get(key).and_then(Weak::upgrade) {
                Some(g) => g,
                None => {
                    let g = Arc::new(tokio::sync::Mutex::new(()));
                    gates.insert(key.clone(), Arc::downgrade(&g));
                    g
                }
            }
        };
        Turn {
            _guard: gate.lock_owned().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_turn_at_a_time_per_key() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (flight, inside, most) = (flight.clone(), inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = flight.turn(&7).await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        // Another key is not held up by this one.
        let _a = flight.turn(&1).await;
        let _b = flight.turn(&2).await;
        drop((_a, _b));
        let _c = flight.turn(&3).await;
        assert_eq!(flight.gates.lock().len(), 1, "unheld gates are forgotten");
    }
}
