//! Tracker to tracker: replication of the record log, the failure
//! detector's heartbeats, writes forwarded to the leader, and gossip of the
//! soft state (which daemons are online with which pieces).
//!
//! Every tracker dials every other one and sends only on the connection it
//! dialed, so each connection carries messages one way. Replies go back on
//! the replier's own connection; a forwarded write and its answer are
//! matched by the request id the forwarder chose.
//!
//! Log entries travel as opaque bytes: the tracker owns the record format,
//! this crate only frames it. A log position is an index and the hash chain
//! value at that index (SHA-256 over the previous hash, the index and the
//! entry's bytes), so two trackers agreeing on a position agree on the
//! whole log up to it.

use crate::error::ErrorCode;
use crate::ids::{FileId, PeerId};
use crate::messages::tracker::Holding;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::fmt;

/// Names a view: the `epoch`-th membership change, made by `leader`.
/// Two trackers making a view change at once may pick the same epoch; the
/// leader part keeps their views apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ViewId {
    pub epoch: u64,
    pub leader: u32,
}

/// Which trackers were up when the leader recorded the view; every change
/// made in it is acknowledged only once all of them have it durably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub id: ViewId,
    /// Tracker numbers, ascending, the leader among them.
    pub members: Vec<u32>,
}

impl View {
    pub fn has(&self, no: u32) -> bool {
        self.members.contains(&no)
    }
}

/// A position in a log: an index and the hash chain at it (index 0 is the
/// empty log, hash all zeroes).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPoint {
    pub index: u64,
    pub hash: [u8; 32],
}

impl fmt::Debug for LogPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{:02x}{:02x}{:02x}{:02x}",
            self.index, self.hash[0], self.hash[1], self.hash[2], self.hash[3]
        )
    }
}

/// What a tracker is doing, as it tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    /// Decides the order of changes for its view.
    Leader,
    /// A member of `leader`'s view, or being brought up to date by it.
    Follower { leader: u32 },
    /// Not serving: waiting to learn which tracker holds the latest state,
    /// or catching up from `source`.
    Recovering { source: Option<u32> },
    /// Not serving, and will not until an operator steps in: its state
    /// conflicts with the cluster's.
    Refused { reason: String },
    /// Shutting down cleanly: treat it as down at once.
    Stopping,
}

/// The heartbeat every tracker sends every other one, and what a follower
/// answers when an append does not fit its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub role: MemberRole,
    /// The last view recorded in its log, committed or not.
    pub view: Option<View>,
    /// The last view at or before its commit index.
    pub committed_view: Option<ViewId>,
    pub last: LogPoint,
    /// Entries known to be on every member of their view.
    pub commit: u64,
    /// The last committed entry that is a change rather than a view: what
    /// this tracker may have acknowledged to a client, so another tracker's
    /// log must contain it before this one may follow that log.
    pub base: LogPoint,
    pub applied: u64,
    /// The trackers whose last reported `base` this log holds, with that
    /// base: they have acknowledged nothing this tracker lacks. When two
    /// leaders meet, one whose base the other holds yields first.
    pub holds: Vec<(u32, LogPoint)>,
}

/// How a follower took an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// Durable up to `matched`, applied up to `applied`.
    Ok { matched: u64, applied: u64 },
    /// `prev` is not in its log; the status says where its log stands.
    Mismatch(Status),
    /// It does not take appends from this sender now (it follows another
    /// leader, or a newer view).
    Rejected(Status),
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterMsg {
    Status(Status),
    /// Leader to member: `entries` follow `prev`; everything up to `commit`
    /// is on every member of the view.
    Append {
        view: ViewId,
        prev: LogPoint,
        entries: Vec<ByteBuf>,
        commit: u64,
    },
    /// Member to leader, about the append sent in `view`.
    Appended {
        view: ViewId,
        result: AppendResult,
    },
    /// Member to leader: a client's write, encoded by the tracker.
    Forward {
        id: u64,
        change: ByteBuf,
    },
    /// Leader to member: the outcome of the forwarded write `id`, applied
    /// by the leader at log index `index` (0: never in the log). The member
    /// answers its client once it has applied that far itself.
    Forwarded {
        id: u64,
        result: Result<(), ErrorCode>,
        index: u64,
    },
    /// Leader to a tracker whose acknowledged state is not in the leader's
    /// log: it must stop serving.
    Diverged {
        reason: String,
    },
    /// Gossip: a daemon announced itself to the sender (holdings already
    /// checked against the user's groups, address already dialable).
    PeerAnnounced {
        peer: PeerId,
        user: String,
        addr: String,
        /// Its addresses in other families, as announced (each tracker
        /// dials them itself before offering them).
        also: Vec<String>,
        holdings: Vec<Holding>,
    },
    /// Gossip: a daemon reported verified pieces of `file` to the sender.
    PiecesReported {
        peer: PeerId,
        user: String,
        file: FileId,
        pieces: Vec<u32>,
    },
    /// Gossip: a daemon left the network.
    PeerLeft {
        peer: PeerId,
        user: String,
    },
    /// A call `id` of the trackers' consensus engine (encoded by the
    /// tracker); the receiver answers with [`ClusterMsg::RaftReply`].
    Raft {
        id: u64,
        body: ByteBuf,
    },
    /// The answer to the receiver's call `id`.
    RaftReply {
        id: u64,
        body: ByteBuf,
    },
    /// The sender has applied the replicated log up to `index` (said on
    /// contact, as it advances but at most every 50 ms, as what it keeps
    /// aside goes through the log, and every half second). `pending`:
    /// writes it acknowledged while alone (one of a pair) and has not put
    /// through the log yet; its partner is not caught up until they are.
    Applied {
        index: u64,
        pending: u64,
    },
    /// Member to leader: how far must a read that begins now wait? Asked
    /// on behalf of every read that began before it was sent.
    ReadMark {
        id: u64,
    },
    /// Leader to member, answering [`ClusterMsg::ReadMark`] `id`: every
    /// write acknowledged before it was asked lies at or below `index`.
    ReadMarkIs {
        id: u64,
        index: u64,
    },
}

/// Entries are summarized, so logs of appends stay short.
impl fmt::Debug for ClusterMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterMsg::Status(s) => write!(f, "Status({s:?})"),
            ClusterMsg::Append {
                view,
                prev,
                entries,
                commit,
            } => write!(
                f,
                "Append({view:?}, prev {prev:?}, {} entries, commit {commit})",
                entries.len()
            ),
            ClusterMsg::Appended { view, result } => write!(f, "Appended({view:?}, {result:?})"),
            ClusterMsg::Forward { id, change } => {
                write!(f, "Forward({id}, {} bytes)", change.len())
            }
            ClusterMsg::Forwarded { id, result, index } => {
                write!(f, "Forwarded({id}, {result:?} at {index})")
            }
            ClusterMsg::Diverged { reason } => write!(f, "Diverged({reason})"),
            ClusterMsg::PeerAnnounced { peer, user, .. } => {
                write!(f, "PeerAnnounced({peer:?}, {user})")
            }
            ClusterMsg::PiecesReported { peer, file, .. } => {
                write!(f, "PiecesReported({peer:?}, {file:?})")
            }
            ClusterMsg::PeerLeft { peer, .. } => write!(f, "PeerLeft({peer:?})"),
            ClusterMsg::Raft { id, body } => write!(f, "Raft({id}, {} bytes)", body.len()),
            ClusterMsg::RaftReply { id, body } => {
                write!(f, "RaftReply({id}, {} bytes)", body.len())
            }
            ClusterMsg::Applied { index, pending } => write!(f, "Applied({index}, {pending})"),
            ClusterMsg::ReadMark { id } => write!(f, "ReadMark({id})"),
            ClusterMsg::ReadMarkIs { id, index } => write!(f, "ReadMarkIs({id}, {index})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn messages_round_trip() {
        let status = Status {
            role: MemberRole::Refused {
                reason: "split".into(),
            },
            view: Some(View {
                id: ViewId {
                    epoch: 3,
                    leader: 1,
                },
                members: vec![1, 2],
            }),
            committed_view: None,
            last: LogPoint {
                index: 9,
                hash: [7; 32],
            },
            commit: 8,
            base: LogPoint {
                index: 7,
                hash: [1; 32],
            },
            applied: 8,
            holds: vec![(
                2,
                LogPoint {
                    index: 3,
                    hash: [2; 32],
                },
            )],
        };
        let all = [
            ClusterMsg::Status(status.clone()),
            ClusterMsg::Append {
                view: ViewId {
                    epoch: 3,
                    leader: 1,
                },
                prev: status.last,
                entries: vec![ByteBuf::from(vec![1, 2, 3]), ByteBuf::new()],
                commit: 4,
            },
            ClusterMsg::Appended {
                view: ViewId {
                    epoch: 3,
                    leader: 1,
                },
                result: AppendResult::Mismatch(status),
            },
            ClusterMsg::Forward {
                id: 5,
                change: ByteBuf::from(vec![9]),
            },
            ClusterMsg::Forwarded {
                id: 5,
                result: Err(ErrorCode::GroupExists("g".into())),
                index: 7,
            },
            ClusterMsg::ReadMark { id: 6 },
            ClusterMsg::ReadMarkIs { id: 6, index: 8 },
        ];
        for m in all {
            let bytes = codec::encode(&m).unwrap();
            assert_eq!(codec::decode::<ClusterMsg>(&bytes).unwrap(), m);
            assert!(!format!("{m:?}").is_empty());
        }
    }

    #[test]
    fn a_lying_entry_count_is_refused_without_allocating() {
        let empty = ClusterMsg::Append {
            view: ViewId {
                epoch: 1,
                leader: 1,
            },
            prev: LogPoint {
                index: 0,
                hash: [0; 32],
            },
            entries: vec![],
            commit: 0,
        };
        let mut body = codec::encode(&empty).unwrap();
        // The encoding ends with the entry count (0) and the commit (0):
        // claim 2^40 entries instead.
        assert_eq!(body[body.len() - 2..], [0, 0]);
        body.truncate(body.len() - 2);
        body.push(253);
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        body.push(0);
        assert!(codec::decode::<ClusterMsg>(&body).is_err());
    }
}
