//! The daemon's one task discipline: every task has a name, is counted by
//! one [`TaskTracker`] and ends when its [`CancellationToken`] is
//! cancelled; blocking work runs on a bounded pool.
//!
//! # The tree
//! `mount::serve` makes the root [`Tasks`] and gives each subsystem a
//! [`child`](Tasks::child), which it may split again:
//!
//! ```text
//! root (mount::serve)
//! ├── engine: announce loop, in-place watcher, ticket prefetch,
//! │   │       stop-share retries, download jobs
//! │   └── one token per swarm: its discovery, its peer links, the
//! │                            verification of the pieces they bring
//! ├── peers: the peer server's accept loop, the upload pacer, the
//! │   │      dashboard's rate meter
//! │   └── one per connection: its requests and subscriptions
//! ├── fuse: the FUSE calls that wait for the network
//! └── control: the control socket's accept loop, the dashboard's server
//!     └── one per connection
//! ```
//!
//! Cancelling a node ends everything under it; every node shares the one
//! tracker, so shutdown is: close, cancel, wait with a bound
//! ([`Tasks::shutdown`]). A task need not watch its token itself: when the
//! token is cancelled, the task's future is dropped at its next wake-up
//! (a future that watches the token too finishes its own cleanup first).
//!
//! # Blocking work
//! Disk reads and writes, `stat`s, hashing and helper processes run on
//! tokio's blocking threads, never on a runtime worker, and at most
//! [`BLOCKING_PERMITS`] at once ([`Tasks::blocking`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Blocking jobs running at once, daemon-wide.
///
/// The jobs are piece-sized disk I/O and SHA-256 (one per piece received or
/// served, plus whole-file hashing when sharing): a handful of threads keep
/// the cores and the disk queue busy, and more only add contention. Left
/// unbounded, a burst of received pieces would grow tokio's blocking pool
/// towards its 512 threads; past this bound a job waits as a small task
/// instead, its piece buffer in memory either way.
pub const BLOCKING_PERMITS: usize = 16;

/// The blocking job could not run or did not finish: the runtime is
/// shutting down, or the job panicked (logged).
#[derive(Debug, thiserror::Error)]
#[error("the daemon is stopping")]
pub struct Stopped;

/// A node of the task tree: the daemon's tracker and blocking pool, and the
/// token tasks spawned through this node end with. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    token: CancellationToken,
    blocking: Arc<Semaphore>,
    /// Where tasks run, so threads outside the runtime (FUSE's) can spawn.
    rt: Handle,
}

impl Tasks {
    /// A root: a fresh tracker, token and blocking pool on the current
    /// runtime. Panics outside a runtime.
    pub fn root() -> Tasks {
        Tasks {
            tracker: TaskTracker::new(),
            token: CancellationToken::new(),
            blocking: Arc::new(Semaphore::new(BLOCKING_PERMITS)),
            rt: Handle::current(),
        }
    }

    /// A node under this one: cancelled with it, or on its own.
    pub fn child(&self) -> Tasks {
        self.with_token(self.token.child_token())
    }

    /// The same tracker and pool, with tasks ending on `token` (a token
    /// made from this node's, such as a swarm's).
    pub fn with_token(&self, token: CancellationToken) -> Tasks {
        Tasks {
            tracker: self.tracker.clone(),
            token,
            blocking: self.blocking.clone(),
            rt: self.rt.clone(),
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns `fut` as the task `name`, tracked, ending early when this
    /// node is cancelled (then the handle yields `None`). Callable from any
    /// thread. Start and end are logged at trace level.
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn_on(
            async move {
                let id = tokio::task::id();
                if token.is_cancelled() {
                    tracing::trace!(task = name, %id, "task not started: cancelled");
                    return None;
                }
                tracing::trace!(task = name, %id, "task started");
                // The future first: one that watches the token itself sees
                // the cancellation and finishes its cleanup in this poll.
                let out = tokio::select! {
                    biased;
                    out = fut => Some(out),
                    () = token.cancelled() => None,
                };
                tracing::trace!(task = name, %id, cancelled = out.is_none(), "task ended");
                out
            },
            &self.rt,
        )
    }

    /// Runs `f` on a blocking thread once one of the [`BLOCKING_PERMITS`]
    /// is free. The job is tracked; it holds its permit until it returns,
    /// even if the caller stops waiting.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, Stopped>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .blocking
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Stopped)?;
        let job = self.tracker.spawn_blocking_on(
            move || {
                let _permit = permit;
                f()
            },
            &self.rt,
        );
        job.await.map_err(|e| {
            if e.is_panic() {
                tracing::error!("a blocking job panicked: {e}");
            }
            Stopped
        })
    }

    /// Ends this node's tasks: no new ones are waited for, the token is
    /// cancelled, and tasks and blocking jobs get `bound` to finish.
    /// Returns how many were still running then.
    pub async fn shutdown(&self, bound: Duration) -> usize {
        self.tracker.close();
        self.token.cancel();
        match tokio::time::timeout(bound, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn cancelling_a_node_ends_its_tasks_and_not_its_parents() {
        let root = Tasks::root();
        let child = root.child();
        let forever = child.spawn("forever", std::future::pending::<()>());
        let parent = root.spawn("parent", async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            7
        });
        child.token().cancel();
        assert_eq!(forever.await.unwrap(), None);
        assert_eq!(parent.await.unwrap(), Some(7));
        // Spawned on a cancelled node: never started.
        assert_eq!(child.spawn("late", async { 1 }).await.unwrap(), None);
    }

    #[tokio::test]
    async fn shutdown_cancels_and_joins_everything() {
        let root = Tasks::root();
        let grandchild = root.child().child();
        grandchild.spawn("forever", std::future::pending::<()>());
        assert_eq!(root.shutdown(Duration::from_secs(5)).await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_jobs_never_exceed_the_bound() {
        let tasks = Tasks::root();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..BLOCKING_PERMITS * 3)
            .map(|_| {
                let (tasks, running, peak) = (tasks.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    tasks
                        .blocking(move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(10));
                            running.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= BLOCKING_PERMITS, "{peak} jobs at once");
    }
}
