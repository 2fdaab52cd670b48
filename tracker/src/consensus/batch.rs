//! Writes that queue up while the log is busy go into one entry.
//!
//! openraft 0.9 appends each proposed entry on its own, waiting for it to
//! be on disk before it takes the next, so one entry per client write
//! bounds a tracker's writes by its disk's syncs per second. Here a write
//! is proposed at once when the log is idle; while entries are in flight,
//! the writes that arrive meanwhile are gathered and proposed together as
//! one [`Command::Batch`]: one durable append and one round to the other
//! trackers for all of them, each still decided on its own, in order.

use crate::consensus::{Answer, Command, Raft};
use fileshare_protocol::{codec, ErrorCode};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

/// Entries proposed and not yet applied: one being written while the one
/// before it goes round the other trackers.
const IN_FLIGHT: usize = 2;

/// Most commands in one entry.
const MOST: usize = 512;

/// Most encoded bytes of commands in one entry (a single larger write
/// goes alone): an entry stays well within a frame.
const MOST_BYTES: usize = 1 << 20;

/// What became of one proposed command.
#[derive(Debug)]
pub enum Proposed {
    /// Applied at log index `index` with this answer.
    Applied {
        index: u64,
        answer: Result<(), ErrorCode>,
    },
    /// This tracker does not lead: nothing was proposed.
    NotLeader,
    /// The engine refused or failed; whether it takes effect is unknown.
    Failed(String),
}

type Queued = (Command, oneshot::Sender<Proposed>);

/// The queue in front of the engine's log.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Queued>,
}

impl Batcher {
    /// Starts gathering writes for `raft` until `cancel`.
    pub fn start(raft: Raft, cancel: CancellationToken) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(raft, rx, cancel));
        Batcher { tx }
    }

    /// Proposes `command`, alone or with others queued with it.
    pub async fn propose(&self, command: Command) -> Proposed {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((command, tx)).is_err() {
            return Proposed::Failed("the tracker is shutting down".into());
        }
        rx.await
            .unwrap_or_else(|_| Proposed::Failed("the tracker is shutting down".into()))
    }
}

async fn gather(raft: Raft, mut rx: mpsc::UnboundedReceiver<Queued>, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let slot = tokio::select! {
            () = cancel.cancelled() => return,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let first = tokio::select! {
            () = cancel.cancelled() => return,
            q = rx.recv() => match q {
                Some(q) => q,
                None => return,
            },
        };
        let mut bytes = encoded_len(&first.0);
        let mut batch = vec![first];
        while batch.len() < MOST && bytes < MOST_BYTES {
            let Ok(q) = rx.try_recv() else { break };
            bytes += encoded_len(&q.0);
            batch.push(q);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            write(&raft, batch).await;
            drop(slot);
        });
    }
}

fn encoded_len(command: &Command) -> usize {
    codec::encode(command).map_or(MOST_BYTES, |b| b.len())
}

/// Proposes `batch` as one entry and answers each of its writers.
async fn write(raft: &Raft, batch: Vec<Queued>) {
    let (commands, writers): (Vec<Command>, Vec<oneshot::Sender<Proposed>>) =
        batch.into_iter().unzip();
    let entry = match <[Command; 1]>::try_from(commands) {
        Ok([one]) => one,
        Err(many) => Command::Batch(many),
    };
    let outcome = raft.client_write(entry).await;
    let answers = match outcome {
        Ok(resp) => {
            let index = resp.log_id.index;
            let Answer(answers) = resp.data;
            answers
                .into_iter()
                .map(|answer| Proposed::Applied { index, answer })
                .collect()
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            writers.iter().map(|_| Proposed::NotLeader).collect()
        }
        Err(e) => {
            let why = e.to_string();
            writers
                .iter()
                .map(|_| Proposed::Failed(why.clone()))
                .collect::<Vec<_>>()
        }
    };
    debug_assert_eq!(answers.len(), writers.len());
    let mut answers = answers.into_iter();
    for w in writers {
        let a = answers
            .next()
            .unwrap_or_else(|| Proposed::Failed("BUG: an entry answered fewer writes".into()));
        let _ = w.send(a);
    }
}
