//! The durable changes. The tracker's durable state is exactly what
//! [`crate::state::State::apply`] makes of the ordered sequence of these
//! records, so a record says what happened, never how to check it: checks
//! were made when the record was decided ([`crate::state::change`]).
//!
//! Records are stored and replicated as [`fileshare_protocol::codec`]
//! encodings. Variants may be added at the end; existing ones never change
//! shape, or old logs stop replaying.

use fileshare_protocol::codec;
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::cluster::View;
use fileshare_protocol::messages::tracker::Notice;
use fileshare_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// SHA-256 of a session token: what the tracker keeps, so a copy of the
/// store does not hand out live sessions.
pub type TokenHash = [u8; 32];

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The first record of every cluster: the Ed25519 seed (private key)
    /// that signs tickets, so every tracker replaying the log signs with the
    /// same key and one public key checks every ticket. (Logs from before
    /// signed tickets hold an HMAC key here: 32 random bytes as well, which
    /// serve as the seed.)
    ClusterInit {
        ticket_seed: [u8; 32],
    },
    /// `phc` is an argon2id PHC string; the password itself is never stored.
    UserCreated {
        user: String,
        phc: String,
    },
    SessionOpened {
        token_hash: TokenHash,
        user: String,
        /// When it was opened; lets replay prune sessions that had already
        /// expired by then, without reading a clock.
        opened_unix_ms: u64,
        expires_unix_ms: u64,
    },
    SessionClosed {
        token_hash: TokenHash,
    },
    /// The owner is the group's first member.
    GroupCreated {
        group: String,
        owner: String,
    },
    JoinRequested {
        group: String,
        user: String,
    },
    RequestAccepted {
        group: String,
        user: String,
    },
    RequestRejected {
        group: String,
        user: String,
    },
    /// Also withdraws a pending request and drops the user's shares there.
    MemberLeft {
        group: String,
        user: String,
    },
    /// `user` becomes one more holder of `meta` in `group`.
    FileShared {
        group: String,
        meta: FileMeta,
        user: String,
    },
    /// `user` stops holding the file named `name` in `group`.
    ShareStopped {
        group: String,
        name: String,
        user: String,
    },
    /// The cluster's leader recorded which trackers are up: changes after
    /// it are acknowledged once all of them have them. No effect on the
    /// state; it sits in the log so views are ordered with the changes.
    View(View),
    /// The owner took `user` out of `group`: as [`Record::MemberLeft`], but
    /// never the owner.
    MemberRemoved {
        group: String,
        user: String,
    },
    /// `user` stops holding `from` in `group` and holds the same file under
    /// the name `to` instead: its metadata with the new name (a new id, the
    /// same piece hashes). A file named `to` held by `user` alone gives way.
    ShareRenamed {
        group: String,
        from: String,
        to: String,
        user: String,
    },
    /// `user` holds `meta` in `group`; a different file of its name held by
    /// `user` alone gives way.
    ShareReplaced {
        group: String,
        meta: FileMeta,
        user: String,
    },
    /// The answer to write `seq` of client `client`, kept so that the same
    /// write sent again is answered the same and takes effect once.
    Answered {
        client: u64,
        seq: u64,
        answer: Result<(), ErrorCode>,
    },
    /// `user` is to be told `notice` on their next command.
    Noticed {
        user: String,
        notice: Notice,
    },
    /// `user` was sent their notices up to number `through`.
    NoticesSent {
        user: String,
        through: u64,
    },
}

impl Record {
    /// The view this record starts, if it is one.
    pub fn view(&self) -> Option<&View> {
        match self {
            Record::View(v) => Some(v),
            _ => None,
        }
    }
}

impl Record {
    pub fn encode(&self) -> Result<Vec<u8>, fileshare_protocol::ProtocolError> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, fileshare_protocol::ProtocolError> {
        codec::decode(bytes)
    }
}

/// Never prints secrets or password hashes, so records can be logged.
impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::ClusterInit { .. } => f.write_str("ClusterInit"),
            Record::UserCreated { user, .. } => write!(f, "UserCreated({user})"),
            Record::SessionOpened { user, .. } => write!(f, "SessionOpened({user})"),
            Record::SessionClosed { .. } => f.write_str("SessionClosed"),
            Record::GroupCreated { group, owner } => write!(f, "GroupCreated({group}, {owner})"),
            Record::JoinRequested { group, user } => write!(f, "JoinRequested({group}, {user})"),
            Record::RequestAccepted { group, user } => {
                write!(f, "RequestAccepted({group}, {user})")
            }
            Record::RequestRejected { group, user } => {
                write!(f, "RequestRejected({group}, {user})")
            }
            Record::MemberLeft { group, user } => write!(f, "MemberLeft({group}, {user})"),
            Record::FileShared { group, meta, user } => {
                write!(f, "FileShared({group}, {}, {user})", meta.name)
            }
            Record::ShareStopped { group, name, user } => {
                write!(f, "ShareStopped({group}, {name}, {user})")
            }
            Record::View(v) => write!(f, "View({}/{} {:?})", v.id.epoch, v.id.leader, v.members),
            Record::MemberRemoved { group, user } => write!(f, "MemberRemoved({group}, {user})"),
            Record::ShareRenamed {
                group,
                from,
                to,
                user,
            } => write!(f, "ShareRenamed({group}, {from} -> {to}, {user})"),
            Record::ShareReplaced { group, meta, user } => {
                write!(f, "ShareReplaced({group}, {}, {user})", meta.name)
            }
            Record::Answered { client, seq, .. } => write!(f, "Answered({client:x}, {seq})"),
            Record::Noticed { user, .. } => write!(f, "Noticed({user})"),
            Record::NoticesSent { user, through } => write!(f, "NoticesSent({user}, {through})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fileshare_protocol::{PieceHash, PIECE_LEN};

    #[test]
    fn every_variant_round_trips() {
        let meta = FileMeta {
            name: "a".into(),
            size: 3,
            piece_len: PIECE_LEN,
            hashes: vec![PieceHash::of(b"abc")],
        };
        let all = [
            Record::ClusterInit {
                ticket_seed: [1; 32],
            },
            Record::Answered {
                client: 7,
                seq: 3,
                answer: Err(fileshare_protocol::ErrorCode::GroupExists("g".into())),
            },
            Record::UserCreated {
                user: "u".into(),
                phc: "$argon2id$x".into(),
            },
            Record::Noticed {
                user: "u".into(),
                notice: Notice::GaveWay {
                    change: "created group g".into(),
                    why: fileshare_protocol::ErrorCode::GroupExists("g".into()),
                },
            },
            Record::NoticesSent {
                user: "u".into(),
                through: 4,
            },
            Record::SessionOpened {
                token_hash: [2; 32],
                user: "u".into(),
                opened_unix_ms: 1,
                expires_unix_ms: 2,
            },
            Record::SessionClosed {
                token_hash: [2; 32],
            },
            Record::GroupCreated {
                group: "g".into(),
                owner: "u".into(),
            },
            Record::JoinRequested {
                group: "g".into(),
                user: "v".into(),
            },
            Record::RequestAccepted {
                group: "g".into(),
                user: "v".into(),
            },
            Record::RequestRejected {
                group: "g".into(),
                user: "v".into(),
            },
            Record::MemberLeft {
                group: "g".into(),
                user: "v".into(),
            },
            Record::FileShared {
                group: "g".into(),
                meta: meta.clone(),
                user: "u".into(),
            },
            Record::ShareRenamed {
                group: "g".into(),
                from: "a".into(),
                to: "b".into(),
                user: "u".into(),
            },
            Record::ShareReplaced {
                group: "g".into(),
                meta,
                user: "u".into(),
            },
            Record::ShareStopped {
                group: "g".into(),
                name: "a".into(),
                user: "u".into(),
            },
            Record::View(View {
                id: fileshare_protocol::messages::cluster::ViewId {
                    epoch: 2,
                    leader: 1,
                },
                members: vec![1, 3],
            }),
            Record::MemberRemoved {
                group: "g".into(),
                user: "v".into(),
            },
        ];
        for r in all {
            let bytes = r.encode().unwrap();
            assert_eq!(Record::decode(&bytes).unwrap(), r);
            assert!(!format!("{r:?}").contains("argon2"));
        }
    }
}
