//! Group commit: one thread turns queued changes into durable records.
//!
//! Each round it takes every queued change (up to [`MAX_BATCH`]), decides
//! them all against the current state under a read lock, appends the
//! resulting records to the store in one durable transaction with no lock
//! held, then applies them under a brief write lock and acknowledges each
//! caller. Readers are never blocked by the disk, and never see a change
//! before it is durable: the state only changes after the commit returned.
//! A failed commit stores nothing and changes nothing; its callers are told.
//!
//! The thread is the only writer of the state, so the state cannot move
//! between deciding and applying. Changes touching the same key in one round
//! would be decided against a state missing the earlier one, so the later
//! one waits for the next round (see [`crate::change`]).

use crate::change::{decide, Change};
use crate::state::State;
use crate::store::Store;
use fileshare_protocol::ErrorCode;
use parking_lot::RwLock;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most changes decided and committed in one round.
const MAX_BATCH: usize = 4096;

/// Changes that may wait in the queue before submitters wait too.
const QUEUE: usize = 8192;

type Ack = oneshot::Sender<Result<(), ErrorCode>>;

enum Msg {
    Change(Change, Ack),
    Stop,
}

/// Submits changes to the writer thread; cheap to share.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Msg>,
}

impl WriterHandle {
    /// Returns once `change` is durable and visible, or refused.
    pub async fn submit(&self, change: Change) -> Result<(), ErrorCode> {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Change(change, ack)).await.is_err() {
            return Err(stopping());
        }
        done.await.unwrap_or_else(|_| Err(stopping()))
    }
}

fn stopping() -> ErrorCode {
    ErrorCode::Unavailable("the tracker is shutting down".into())
}

/// The running writer thread; [`WriterThread::stop`] ends and joins it.
pub struct WriterThread {
    tx: mpsc::Sender<Msg>,
    thread: std::thread::JoinHandle<()>,
}

impl WriterThread {
    /// Stops after every change queued before this call is done.
    pub async fn stop(self) {
        let _ = self.tx.send(Msg::Stop).await;
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Starts the writer thread over `store`, which must already be replayed
/// into `state`.
pub fn spawn(
    store: Store,
    state: Arc<RwLock<State>>,
) -> Result<(WriterHandle, WriterThread), std::io::Error> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut writer = Writer {
        store,
        state,
        rx,
        deferred: VecDeque::new(),
    };
    let thread = std::thread::Builder::new()
        .name("record-writer".into())
        .spawn(move || writer.run())?;
    Ok((WriterHandle { tx: tx.clone() }, WriterThread { tx, thread }))
}

struct Writer {
    store: Store,
    state: Arc<RwLock<State>>,
    rx: mpsc::Receiver<Msg>,
    /// Changes pushed out of a round by a key conflict, oldest first.
    deferred: VecDeque<(Change, Ack)>,
}

impl Writer {
    fn run(&mut self) {
        let mut stopping = false;
        loop {
            let mut batch: Vec<(Change, Ack)> = self.deferred.drain(..).collect();
            if batch.is_empty() {
                if stopping {
                    break;
                }
                match self.rx.blocking_recv() {
                    Some(Msg::Change(c, ack)) => batch.push((c, ack)),
                    Some(Msg::Stop) | None => break,
                }
            }
            while !stopping && batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(Msg::Change(c, ack)) => batch.push((c, ack)),
                    Ok(Msg::Stop) => stopping = true,
                    Err(_) => break,
                }
            }
            self.round(batch);
        }
        tracing::debug!(last = self.store.last_index(), "record writer stopped");
    }

    fn round(&mut self, batch: Vec<(Change, Ack)>) {
        let mut keys = HashSet::new();
        let mut records = Vec::new();
        let mut accepted = Vec::new();
        {
            let state = self.state.read();
            for (change, ack) in batch {
                if !keys.insert(change.key()) {
                    self.deferred.push_back((change, ack));
                    continue;
                }
                match decide(&state, change) {
                    Ok(recs) => {
                        records.extend(recs);
                        accepted.push(ack);
                    }
                    // A refusal rests on durable state only: answer now.
                    Err(code) => {
                        let _ = ack.send(Err(code));
                    }
                }
            }
        }
        if !records.is_empty() {
            if let Err(e) = self.store.append(&records) {
                tracing::error!("cannot save {} record(s): {e:#}", records.len());
                for ack in accepted {
                    let _ = ack.send(Err(ErrorCode::Internal(
                        "the tracker could not save the change".into(),
                    )));
                }
                return;
            }
            let mut state = self.state.write();
            for r in &records {
                state.apply(r);
            }
        }
        for ack in accepted {
            let _ = ack.send(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> Change {
        Change::CreateUser {
            user: u.into(),
            phc: "x".into(),
        }
    }

    #[tokio::test]
    async fn concurrent_changes_are_durable_and_conflicts_decided_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let state = Arc::new(RwLock::new(State::default()));
        let (handle, thread) = spawn(Store::open(&path).unwrap(), state.clone()).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let h = handle.clone();
            // Every name twice: exactly one of each pair wins.
            tasks.spawn(async move { h.submit(user(&format!("u{}", i % 100))).await });
        }
        let mut ok = 0;
        let mut exists = 0;
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(()) => ok += 1,
                Err(ErrorCode::UserExists(_)) => exists += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((ok, exists), (100, 100));
        assert_eq!(state.read().user_count(), 100);
        thread.stop().await;
        assert!(handle.submit(user("late")).await.is_err());

        let store = Store::open(&path).unwrap();
        let mut replayed = State::default();
        store.read_all(|_, r| replayed.apply(&r)).unwrap();
        assert_eq!(replayed.user_count(), 100);
        assert_eq!(replayed.applied(), 100);
    }
}
