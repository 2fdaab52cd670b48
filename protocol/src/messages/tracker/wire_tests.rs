//! The wire as it was: the request enum before each variant wrapped a
//! struct, kept here only to check that every request still encodes to
//! the same bytes, so trackers and clients of either shape understand
//! each other.

// A test-only file (see `request.rs`); the `#[cfg(test)]` below also marks
// it so for the module graph check (`scripts/modgraph.py`).
use super::super::*;
#[cfg(test)]
use crate::codec::encode;
use crate::ids::{FileId, FileMeta, PeerId, PieceHash};
use serde::Serialize;

/// `TrackerRequest` as it was, variant for variant.
#[derive(Serialize)]
#[allow(dead_code)]
enum Before {
    CreateUser {
        user: String,
        password: String,
    },
    Login {
        user: String,
        password: String,
    },
    Logout {
        session: SessionToken,
    },
    CreateGroup {
        session: SessionToken,
        group: String,
    },
    ListGroups {
        session: SessionToken,
    },
    JoinGroup {
        session: SessionToken,
        group: String,
    },
    LeaveGroup {
        session: SessionToken,
        group: String,
    },
    ListRequests {
        session: SessionToken,
        group: String,
    },
    AcceptRequest {
        session: SessionToken,
        group: String,
        user: String,
    },
    RejectRequest {
        session: SessionToken,
        group: String,
        user: String,
    },
    RemoveMember {
        session: SessionToken,
        group: String,
        user: String,
    },
    ListFiles {
        session: SessionToken,
        group: String,
    },
    Search {
        session: SessionToken,
        pattern: String,
    },
    ShareFile {
        session: SessionToken,
        group: String,
        meta: FileMeta,
    },
    StopShare {
        session: SessionToken,
        group: String,
        name: String,
    },
    Locate {
        session: SessionToken,
        group: String,
        name: String,
    },
    Announce {
        session: SessionToken,
        peer: PeerId,
        addr: String,
        also: Vec<String>,
        holdings: Vec<Holding>,
    },
    ReportPieces {
        session: SessionToken,
        peer: PeerId,
        file: FileId,
        pieces: Vec<u32>,
    },
    LeaveNetwork {
        session: SessionToken,
        peer: PeerId,
    },
    IssueTicket {
        session: SessionToken,
        group: String,
        holder: PeerId,
    },
    TicketKey,
    RenameShare {
        session: SessionToken,
        group: String,
        from: String,
        to: String,
    },
    ReplaceShare {
        session: SessionToken,
        group: String,
        meta: FileMeta,
    },
    CallBack {
        session: SessionToken,
        group: String,
        holder: PeerId,
        nonce: [u8; 16],
    },
    Relay {
        session: SessionToken,
        group: String,
        holder: PeerId,
        nonce: [u8; 16],
    },
    Punch {
        session: SessionToken,
        group: String,
        holder: PeerId,
        nonce: [u8; 16],
    },
    AwaitCalls {
        session: SessionToken,
        peer: PeerId,
        wait_ms: u32,
    },
    Once {
        client: u64,
        seq: u64,
        request: Box<Before>,
    },
}

#[test]
fn every_request_encodes_as_its_struct_variant_did() {
    let session = SessionToken([5; 32]);
    let (peer, holder, nonce) = (PeerId([6; 16]), PeerId([7; 16]), [8; 16]);
    let (group, user, name) = (String::from("g"), String::from("bob"), String::from("f"));
    let meta = FileMeta {
        name: name.clone(),
        size: 3,
        piece_len: 1 << 20,
        hashes: vec![PieceHash([9; 32])],
    };
    let file = FileId([4; 32]);
    let holdings = vec![Holding {
        file,
        have: crate::ids::Bitfield::full(1),
    }];
    let contact = Contact {
        session,
        group: group.clone(),
        holder,
        nonce,
    };
    let place = |how| PlaceCall {
        how,
        contact: contact.clone(),
    };
    let (g, u, n) = (|| group.clone(), || user.clone(), || name.clone());
    let cases: Vec<(TrackerRequest, Before)> = vec![
        (
            CreateUser {
                user: u(),
                password: n(),
            }
            .into(),
            Before::CreateUser {
                user: u(),
                password: n(),
            },
        ),
        (
            Login {
                user: u(),
                password: n(),
            }
            .into(),
            Before::Login {
                user: u(),
                password: n(),
            },
        ),
        (Logout { session }.into(), Before::Logout { session }),
        (
            CreateGroup {
                session,
                group: g(),
            }
            .into(),
            Before::CreateGroup {
                session,
                group: g(),
            },
        ),
        (
            ListGroups { session }.into(),
            Before::ListGroups { session },
        ),
        (
            JoinGroup {
                session,
                group: g(),
            }
            .into(),
            Before::JoinGroup {
                session,
                group: g(),
            },
        ),
        (
            LeaveGroup {
                session,
                group: g(),
            }
            .into(),
            Before::LeaveGroup {
                session,
                group: g(),
            },
        ),
        (
            ListRequests {
                session,
                group: g(),
            }
            .into(),
            Before::ListRequests {
                session,
                group: g(),
            },
        ),
        (
            AcceptRequest {
                session,
                group: g(),
                user: u(),
            }
            .into(),
            Before::AcceptRequest {
                session,
                group: g(),
                user: u(),
            },
        ),
        (
            RejectRequest {
                session,
                group: g(),
                user: u(),
            }
            .into(),
            Before::RejectRequest {
                session,
                group: g(),
                user: u(),
            },
        ),
        (
            RemoveMember {
                session,
                group: g(),
                user: u(),
            }
            .into(),
            Before::RemoveMember {
                session,
                group: g(),
                user: u(),
            },
        ),
        (
            ListFiles {
                session,
                group: g(),
            }
            .into(),
            Before::ListFiles {
                session,
                group: g(),
            },
        ),
        (
            Search {
                session,
                pattern: n(),
            }
            .into(),
            Before::Search {
                session,
                pattern: n(),
            },
        ),
        (
            ShareFile {
                session,
                group: g(),
                meta: meta.clone(),
            }
            .into(),
            Before::ShareFile {
                session,
                group: g(),
                meta: meta.clone(),
            },
        ),
        (
            StopShare {
                session,
                group: g(),
                name: n(),
            }
            .into(),
            Before::StopShare {
                session,
                group: g(),
                name: n(),
            },
        ),
        (
            Locate {
                session,
                group: g(),
                name: n(),
            }
            .into(),
            Before::Locate {
                session,
                group: g(),
                name: n(),
            },
        ),
        (
            Announce {
                session,
                peer,
                addr: n(),
                also: vec![n()],
                holdings: holdings.clone(),
            }
            .into(),
            Before::Announce {
                session,
                peer,
                addr: n(),
                also: vec![n()],
                holdings: holdings.clone(),
            },
        ),
        (
            ReportPieces {
                session,
                peer,
                file,
                pieces: vec![0, 300],
            }
            .into(),
            Before::ReportPieces {
                session,
                peer,
                file,
                pieces: vec![0, 300],
            },
        ),
        (
            LeaveNetwork { session, peer }.into(),
            Before::LeaveNetwork { session, peer },
        ),
        (
            IssueTicket {
                session,
                group: g(),
                holder,
            }
            .into(),
            Before::IssueTicket {
                session,
                group: g(),
                holder,
            },
        ),
        (AskTicketKey.into(), Before::TicketKey),
        (
            RenameShare {
                session,
                group: g(),
                from: n(),
                to: u(),
            }
            .into(),
            Before::RenameShare {
                session,
                group: g(),
                from: n(),
                to: u(),
            },
        ),
        (
            ReplaceShare {
                session,
                group: g(),
                meta: meta.clone(),
            }
            .into(),
            Before::ReplaceShare {
                session,
                group: g(),
                meta: meta.clone(),
            },
        ),
        (
            place(CallKind::DialBack).into(),
            Before::CallBack {
                session,
                group: g(),
                holder,
                nonce,
            },
        ),
        (
            place(CallKind::Relay).into(),
            Before::Relay {
                session,
                group: g(),
                holder,
                nonce,
            },
        ),
        (
            place(CallKind::Punch).into(),
            Before::Punch {
                session,
                group: g(),
                holder,
                nonce,
            },
        ),
        (
            AwaitCalls {
                session,
                peer,
                wait_ms: 1000,
            }
            .into(),
            Before::AwaitCalls {
                session,
                peer,
                wait_ms: 1000,
            },
        ),
        (
            TrackerRequest::Once {
                client: 1 << 40,
                seq: 3,
                request: Box::new(
                    ShareFile {
                        session,
                        group: g(),
                        meta: meta.clone(),
                    }
                    .into(),
                ),
            },
            Before::Once {
                client: 1 << 40,
                seq: 3,
                request: Box::new(Before::ShareFile {
                    session,
                    group: g(),
                    meta,
                }),
            },
        ),
    ];
    assert_eq!(cases.len(), 28, "one case per variant");
    for (now, before) in cases {
        assert_eq!(
            encode(&now).unwrap(),
            encode(&before).unwrap(),
            "{}",
            now.name()
        );
    }
}
