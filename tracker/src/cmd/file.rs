//! The file index: sharing, listing, searching and locating files.

use super::{bounded, file_name, group_name, quota, LISTING_BUDGET};
use crate::peers::Peers;
use crate::sample;
use crate::shared::Shared;
use crate::state::change::Change;
use crate::state::{Group, SharedFile};
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::ids::{MAX_FILE_PIECES, MAX_FILE_SIZE};
use fileshare_protocol::messages::tracker::{FileEntry, PeerLocation, Reach};
use fileshare_protocol::messages::tracker::{
    ListFiles, Locate, RenameShare, ReplaceShare, Search, ShareFile, StopShare,
};
use fileshare_protocol::messages::{TrackerReply, TrackerResult};
use fileshare_protocol::{ErrorCode, Limit, MAX_FRAME_LEN, PIECE_LEN};
use std::time::Instant;

/// Longest search pattern: a name can be no longer.
const MAX_PATTERN_LEN: usize = fileshare_protocol::ids::MAX_NAME_LEN;

/// Online peers of members of `g` that hold part of `f`: a peer of someone
/// who has left is not offered, even before it announces again.
fn online_holders<'p>(
    peers: &'p Peers,
    g: &'p Group,
    f: &'p SharedFile,
    now: Instant,
) -> impl Iterator<Item = PeerLocation> + 'p {
    peers
        .holders(&f.id, now)
        .filter(|h| g.is_member(&h.card.user))
        .map(|h| PeerLocation {
            peer: h.card.id,
            user: h.card.user.clone(),
            addr: h.card.addr.clone(),
            have: h.have.clone(),
            reach: Reach::Unknown,
            also: h.card.also.clone(),
        })
}

fn entry(group: &str, g: &Group, f: &SharedFile, peers: &Peers, now: Instant) -> FileEntry {
    let online = peers
        .holders(&f.id, now)
        .filter(|h| g.is_member(&h.card.user))
        .count();
    FileEntry {
        group: group.to_string(),
        name: f.meta.name.clone(),
        size: f.meta.size,
        id: f.id,
        peers_online: u32::try_from(online).unwrap_or(u32::MAX),
        holders: u32::try_from(f.holders.len()).unwrap_or(u32::MAX),
    }
}

/// Refuses metadata that does not describe a file of this protocol.
pub fn check_meta(meta: &FileMeta) -> Result<(), ErrorCode> {
    file_name(&meta.name)?;
    if meta.piece_len != PIECE_LEN {
        return Err(ErrorCode::BadRequest(format!(
            "piece length must be {PIECE_LEN}, not {}",
            meta.piece_len
        )));
    }
    meta.layout()
        .map_err(|why| ErrorCode::BadRequest(format!("inconsistent file metadata: {why}")))?;
    if meta.hashes.len() > MAX_FILE_PIECES as usize {
        return Err(ErrorCode::LimitReached {
            limit: Limit::FileMetadata,
            message: format!(
                "{} has {} pieces; a file may have at most {MAX_FILE_PIECES} (its piece hashes \
                 fill one message), so at most {} GiB",
                meta.name,
                meta.hashes.len(),
                MAX_FILE_SIZE >> 30
            ),
        });
    }
    Ok(())
}

pub async fn share(shared: &Shared, req: ShareFile) -> TrackerResult {
    let ShareFile {
        session,
        group,
        meta,
    } = req;
    let session = &session;
    let user = shared.session_user(session)?;
    group_name(&group)?;
    check_meta(&meta)?;
    shared
        .submit(Change::ShareFile {
            user,
            group,
            meta,
            quota: quota(shared.settings.limits.files_per_user),
            metadata_quota: shared.settings.limits.metadata_per_user,
        })
        .await?;
    Ok(TrackerReply::Done)
}

pub async fn stop_share(shared: &Shared, req: StopShare) -> TrackerResult {
    let StopShare {
        session,
        group,
        name,
    } = req;
    let session = &session;
    let user = shared.session_user(session)?;
    group_name(&group)?;
    file_name(&name)?;
    shared
        .submit(Change::StopShare { user, group, name })
        .await?;
    Ok(TrackerReply::Done)
}

/// Moves the caller's holding of `from` to the name `to` in one record.
pub async fn rename_share(shared: &Shared, req: RenameShare) -> TrackerResult {
    let RenameShare {
        session,
        group,
        from,
        to,
    } = req;
    let session = &session;
    let user = shared.session_user(session)?;
    group_name(&group)?;
    file_name(&from)?;
    file_name(&to)?;
    shared
        .submit(Change::RenameShare {
            user,
            group,
            from,
            to,
        })
        .await?;
    Ok(TrackerReply::Done)
}

/// Shares `meta`, replacing the caller's own different file of its name.
pub async fn replace_share(shared: &Shared, req: ReplaceShare) -> TrackerResult {
    let ReplaceShare {
        session,
        group,
        meta,
    } = req;
    let session = &session;
    let user = shared.session_user(session)?;
    group_name(&group)?;
    check_meta(&meta)?;
    shared
        .submit(Change::ReplaceShare {
            user,
            group,
            meta,
            quota: quota(shared.settings.limits.files_per_user),
            metadata_quota: shared.settings.limits.metadata_per_user,
        })
        .await?;
    Ok(TrackerReply::Done)
}

/// The files of a group, by name; members only.
pub fn list(shared: &Shared, req: ListFiles) -> TrackerResult {
    let ListFiles { session, group } = &req;
    let user = shared.session_user(session)?;
    group_name(group)?;
    let now = Instant::now();
    let state = shared.state.read();
    let g = state.member_group(group, &user)?;
    let peers = shared.peers.read();
    let files = bounded(
        LISTING_BUDGET,
        g.files().map(|f| entry(group, g, f, &peers, now)),
        |e| e.group.len() + e.name.len() + 96,
    );
    Ok(TrackerReply::Files(files))
}

/// Files whose name contains `pattern` in the caller's groups.
pub fn search(shared: &Shared, req: Search) -> TrackerResult {
    let Search { session, pattern } = &req;
    let user = shared.session_user(session)?;
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(ErrorCode::BadRequest(format!(
            "a search pattern is at most {MAX_PATTERN_LEN} bytes"
        )));
    }
    let now = Instant::now();
    let state = shared.state.read();
    let peers = shared.peers.read();
    let mut found = Vec::new();
    // A reply must fit in one frame; entries are small, names at most 255.
    let max_entries = MAX_FRAME_LEN / 512;
    for (name, g) in state.groups_of(&user) {
        for f in g.files().filter(|f| f.meta.name.contains(pattern)) {
            if found.len() >= max_entries {
                return Err(ErrorCode::BadRequest(
                    "too many matches; use a longer pattern".into(),
                ));
            }
            found.push(entry(name, g, f, &peers, now));
        }
    }
    Ok(TrackerReply::Files(found))
}

/// A file's metadata and the online peers holding any of it; members only.
/// The caller's own peers are included: the client filters them.
pub fn locate(shared: &Shared, req: Locate) -> TrackerResult {
    let Locate {
        session,
        group,
        name,
    } = &req;
    let user = shared.session_user(session)?;
    group_name(group)?;
    file_name(name)?;
    let now = Instant::now();
    let state = shared.state.read();
    let g = state.member_group(group, &user)?;
    let f = g.file(name).ok_or_else(|| ErrorCode::NoSuchFile {
        group: group.to_string(),
        name: name.to_string(),
    })?;
    let peers = shared.peers.read();
    // The hashes go along, and each peer's bitfield.
    let meta = f.meta.hashes.len() * 32 + f.meta.name.len() + 64;
    let holders: Vec<PeerLocation> = online_holders(&peers, g, f, now)
        .map(|mut p| {
            p.reach = shared.reach.of(&p.peer, &p.addr);
            p.also
                .retain(|a| shared.reach.of(&p.peer, a) == Reach::Direct);
            p
        })
        .collect();
    let mut holders = sample::locations(
        holders,
        &user,
        shared.settings.limits.locate_peers,
        sample::seed(session),
    );
    // Of the sample, peers this tracker could dial come first, those it
    // could not last: a reader asks those to dial back instead.
    holders.sort_by_key(|p| match p.reach {
        _ if !p.also.is_empty() => 0,
        Reach::Direct => 0,
        Reach::Unknown => 1,
        Reach::Unreachable => 2,
    });
    let located = bounded(
        LISTING_BUDGET.saturating_sub(meta),
        holders.into_iter(),
        |p| p.user.len() + p.addr.len() + p.have.len() as usize / 8 + 64,
    );
    Ok(TrackerReply::Location {
        meta: (*f.meta).clone(),
        peers: located,
    })
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests {
    use super::*;
    use crate::cmd::testing::Fixture;
    use fileshare_protocol::messages::tracker::Holding;
    use fileshare_protocol::messages::tracker::*;
    use fileshare_protocol::messages::TrackerRequest;
    use fileshare_protocol::{Bitfield, PeerId, PieceHash};

    pub fn meta(name: &str, content: &[u8]) -> FileMeta {
        let hashes = content
            .chunks(PIECE_LEN as usize)
            .map(PieceHash::of)
            .collect();
        FileMeta {
            name: name.into(),
            size: content.len() as u64,
            piece_len: PIECE_LEN,
            hashes,
        }
    }

    /// alice owns g with member bob; carol is outside.
    /// The largest file a share may describe fits a record of the log; one
    /// piece more is refused, naming the limit.
    #[test]
    fn a_files_metadata_is_capped_at_what_one_record_carries() {
        let of = |pieces: u32| FileMeta {
            name: "n".repeat(fileshare_protocol::ids::MAX_NAME_LEN),
            size: u64::from(pieces) * PIECE_LEN,
            piece_len: PIECE_LEN,
            hashes: vec![PieceHash::of(b"x"); pieces as usize],
        };
        let largest = of(MAX_FILE_PIECES);
        assert_eq!(check_meta(&largest), Ok(()));
        assert_eq!(largest.size, 62 << 30);
        let record = crate::state::records::Record::FileShared {
            group: "g".repeat(fileshare_protocol::ids::MAX_NAME_LEN),
            meta: largest,
            user: "u".repeat(fileshare_protocol::ids::MAX_NAME_LEN),
        };
        assert!(record.encode().unwrap().len() <= fileshare_protocol::MAX_FRAME_LEN - 64);
        let Err(ErrorCode::LimitReached { limit, message }) = check_meta(&of(MAX_FILE_PIECES + 1))
        else {
            panic!("one piece more must be refused");
        };
        assert_eq!(limit, Limit::FileMetadata);
        assert!(message.contains("at most 62 GiB"), "{message}");
    }

    pub async fn group(fx: &Fixture) -> [SessionToken; 3] {
        let alice = fx.user("alice").await;
        let bob = fx.user("bob").await;
        let carol = fx.user("carol").await;
        let g = || "g".to_string();
        fx.call(CreateGroup {
            session: alice,
            group: g(),
        })
        .await
        .unwrap();
        fx.call(JoinGroup {
            session: bob,
            group: g(),
        })
        .await
        .unwrap();
        fx.call(AcceptRequest {
            session: alice,
            group: g(),
            user: "bob".into(),
        })
        .await
        .unwrap();
        [alice, bob, carol]
    }

    fn share(session: SessionToken, meta: FileMeta) -> TrackerRequest {
        ShareFile {
            session,
            group: "g".into(),
            meta,
        }
        .into()
    }

    fn files(r: TrackerResult) -> Vec<FileEntry> {
        match r {
            Ok(TrackerReply::Files(f)) => f,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn share_list_search_stop() {
        let fx = Fixture::new().await;
        let [alice, bob, carol] = group(&fx).await;
        let a = meta("report.pdf", b"hello");
        fx.call(share(alice, a.clone())).await.unwrap();
        fx.call(share(bob, a.clone())).await.unwrap();
        assert_eq!(
            fx.call(share(bob, meta("report.pdf", b"other"))).await,
            Err(ErrorCode::NameTaken {
                group: "g".into(),
                name: "report.pdf".into()
            })
        );
        assert_eq!(
            fx.call(share(carol, meta("c", b"c"))).await,
            Err(ErrorCode::NotMember("g".into()))
        );
        let list = |session| ListFiles {
            session,
            group: "g".into(),
        };
        let l = files(fx.call(list(bob)).await);
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].size, l[0].holders, l[0].peers_online), (5, 2, 0));
        assert_eq!(l[0].id, a.id());
        assert_eq!(
            fx.call(list(carol)).await,
            Err(ErrorCode::NotMember("g".into()))
        );
        let search = |session, p: &str| Search {
            session,
            pattern: p.into(),
        };
        assert_eq!(files(fx.call(search(bob, "port")).await).len(), 1);
        assert_eq!(files(fx.call(search(bob, "xyz")).await).len(), 0);
        assert_eq!(files(fx.call(search(carol, "port")).await).len(), 0);

        let fx = fx.restart().await;
        let stop = |session| StopShare {
            session,
            group: "g".into(),
            name: "report.pdf".into(),
        };
        fx.call(stop(alice)).await.unwrap();
        assert_eq!(files(fx.call(list(bob)).await)[0].holders, 1);
        assert!(fx.call(stop(alice)).await.is_err());
        fx.call(stop(bob)).await.unwrap();
        assert!(files(fx.call(list(bob)).await).is_empty());
    }

    #[tokio::test]
    async fn rename_is_one_durable_step_seen_by_every_member() {
        let fx = Fixture::new().await;
        let [alice, bob, carol] = group(&fx).await;
        let a = meta("draft.txt", b"words");
        fx.call(share(alice, a.clone())).await.unwrap();
        fx.call(share(bob, meta("bobs.txt", b"his"))).await.unwrap();
        let rename = |session, from: &str, to: &str| RenameShare {
            session,
            group: "g".into(),
            from: from.into(),
            to: to.into(),
        };
        let list = |session| ListFiles {
            session,
            group: "g".into(),
        };
        let names = |r| {
            let mut n: Vec<String> = files(r).into_iter().map(|f| f.name).collect();
            n.sort();
            n
        };
        assert_eq!(
            fx.call(rename(carol, "draft.txt", "x")).await,
            Err(ErrorCode::NotMember("g".into()))
        );
        assert!(matches!(
            fx.call(rename(alice, "draft.txt", "a/b")).await,
            Err(ErrorCode::BadName { .. })
        ));
        assert_eq!(
            fx.call(rename(alice, "draft.txt", "bobs.txt")).await,
            Err(ErrorCode::NameTaken {
                group: "g".into(),
                name: "bobs.txt".into()
            })
        );
        fx.call(rename(alice, "draft.txt", "final.txt"))
            .await
            .unwrap();
        assert_eq!(names(fx.call(list(bob)).await), ["bobs.txt", "final.txt"]);
        let fx = fx.restart().await;
        let Ok(TrackerReply::Location { meta: got, .. }) = fx
            .call(Locate {
                session: bob,
                group: "g".into(),
                name: "final.txt".into(),
            })
            .await
        else {
            panic!("final.txt is not located after a restart")
        };
        assert_eq!(got.name, "final.txt");
        assert_eq!(got.hashes, a.hashes);
        // Sent again (a retry on another tracker): already done.
        fx.call(rename(alice, "draft.txt", "final.txt"))
            .await
            .unwrap();
        // A new version replaces the caller's own file in one step.
        let v2 = meta("final.txt", b"more words");
        fx.call(ReplaceShare {
            session: alice,
            group: "g".into(),
            meta: v2.clone(),
        })
        .await
        .unwrap();
        let l = files(fx.call(list(bob)).await);
        assert!(l.iter().any(|f| f.name == "final.txt" && f.id == v2.id()));
        assert_eq!(
            fx.call(ReplaceShare {
                session: alice,
                group: "g".into(),
                meta: meta("bobs.txt", b"mine now"),
            })
            .await,
            Err(ErrorCode::NameTaken {
                group: "g".into(),
                name: "bobs.txt".into()
            })
        );
    }

    #[tokio::test]
    async fn a_save_over_a_file_its_readers_hold_replaces_it() {
        let fx = Fixture::new().await;
        let [alice, bob, _] = group(&fx).await;
        let v1 = meta("notes.txt", b"one");
        let v2 = meta("notes.txt", b"two!");
        fx.call(share(alice, v1)).await.unwrap();
        fx.call(ReplaceShare {
            session: alice,
            group: "g".into(),
            meta: v2.clone(),
        })
        .await
        .unwrap();
        // Bob read it whole: he holds it too.
        fx.call(share(bob, v2)).await.unwrap();
        let tmp = meta("sedX1", b"three");
        fx.call(share(alice, tmp.clone())).await.unwrap();
        fx.call(RenameShare {
            session: alice,
            group: "g".into(),
            from: "sedX1".into(),
            to: "notes.txt".into(),
        })
        .await
        .unwrap();
        let l = files(
            fx.call(ListFiles {
                session: bob,
                group: "g".into(),
            })
            .await,
        );
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(l[0].name, "notes.txt");
        assert_eq!(l[0].size, 5);
    }

    #[tokio::test]
    async fn inconsistent_metadata_is_refused() {
        let fx = Fixture::new().await;
        let [alice, ..] = group(&fx).await;
        let mut wrong_count = meta("a", &[1; 10]);
        wrong_count.hashes.push(PieceHash::of(b""));
        let mut wrong_piece_len = meta("a", &[1; 10]);
        wrong_piece_len.piece_len = 1024;
        for m in [wrong_count, wrong_piece_len] {
            let r = fx.call(share(alice, m)).await;
            assert!(matches!(r, Err(ErrorCode::BadRequest(_))), "{r:?}");
        }
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            let r = fx.call(share(alice, meta(bad, b"x"))).await;
            assert!(
                matches!(&r, Err(ErrorCode::BadName { what, .. }) if what == "file"),
                "{bad:?}: {r:?}"
            );
        }
    }

    #[tokio::test]
    async fn locate_offers_online_peers_of_members_only() {
        let fx = Fixture::new().await;
        let [alice, bob, carol] = group(&fx).await;
        let m = meta("a", &[7; (PIECE_LEN * 2) as usize]);
        fx.call(share(alice, m.clone())).await.unwrap();
        let announce = |session, peer: u8, have: Bitfield| Announce {
            session,
            peer: PeerId([peer; 16]),
            addr: format!("127.0.0.1:{}", 1000 + u16::from(peer)),
            also: vec![],
            holdings: vec![Holding { file: m.id(), have }],
        };
        fx.call(announce(alice, 1, Bitfield::full(2)))
            .await
            .unwrap();
        fx.call(announce(bob, 2, Bitfield::new(2))).await.unwrap();
        // carol cannot see the file: her holding is ignored.
        fx.call(announce(carol, 3, Bitfield::full(2)))
            .await
            .unwrap();
        let locate = |session| Locate {
            session,
            group: "g".into(),
            name: "a".into(),
        };
        let Ok(TrackerReply::Location { meta: got, peers }) = fx.call(locate(bob)).await else {
            panic!()
        };
        assert_eq!(got, m);
        assert_eq!(peers.len(), 1, "bob holds no piece yet: {peers:?}");
        assert_eq!(peers[0].addr, "127.0.0.1:1001");
        fx.call(ReportPieces {
            session: bob,
            peer: PeerId([2; 16]),
            file: m.id(),
            pieces: vec![1],
        })
        .await
        .unwrap();
        let Ok(TrackerReply::Location { peers, .. }) = fx.call(locate(bob)).await else {
            panic!()
        };
        assert_eq!(peers.len(), 2);
        assert_eq!(
            fx.call(locate(carol)).await,
            Err(ErrorCode::NotMember("g".into()))
        );
        let l = files(
            fx.call(ListFiles {
                session: bob,
                group: "g".into(),
            })
            .await,
        );
        assert_eq!(l[0].peers_online, 2);

        // bob leaves the group: his peer is no longer offered.
        fx.call(LeaveGroup {
            session: bob,
            group: "g".into(),
        })
        .await
        .unwrap();
        let Ok(TrackerReply::Location { peers, .. }) = fx.call(locate(alice)).await else {
            panic!()
        };
        assert_eq!(peers.len(), 1);
        fx.call(LeaveNetwork {
            session: alice,
            peer: PeerId([1; 16]),
        })
        .await
        .unwrap();
        let Ok(TrackerReply::Location { peers, .. }) = fx.call(locate(alice)).await else {
            panic!()
        };
        assert!(peers.is_empty());
    }

    #[tokio::test]
    async fn locate_answers_a_bounded_sample_that_covers_rare_pieces() {
        let mut settings = crate::shared::Settings::default();
        settings.limits.peers_per_user = 100;
        let fx = Fixture::with(settings).await;
        let [alice, bob, _] = group(&fx).await;
        let m = meta("a", &[7; (PIECE_LEN * 4) as usize]);
        fx.call(share(alice, m.clone())).await.unwrap();
        // Sixty peers hold piece 0; one alone holds piece 3.
        for peer in 1..=61u8 {
            let mut have = Bitfield::new(4);
            have.set(if peer == 61 { 3 } else { 0 });
            fx.call(Announce {
                session: alice,
                peer: PeerId([peer; 16]),
                addr: format!("127.0.0.1:{}", 1000 + u16::from(peer)),
                also: vec![],
                holdings: vec![Holding { file: m.id(), have }],
            })
            .await
            .unwrap();
        }
        let mut answers = Vec::new();
        for _ in 0..4 {
            let Ok(TrackerReply::Location { peers, .. }) = fx
                .call(Locate {
                    session: bob,
                    group: "g".into(),
                    name: "a".into(),
                })
                .await
            else {
                panic!()
            };
            assert_eq!(peers.len(), 50);
            let ids: std::collections::BTreeSet<PeerId> = peers.iter().map(|p| p.peer).collect();
            assert_eq!(ids.len(), 50, "no peer twice");
            assert!(ids.contains(&PeerId([61; 16])), "the rare piece's holder");
            answers.push(ids);
        }
        assert!(
            answers.windows(2).any(|w| w[0] != w[1]),
            "every answer was the same sample"
        );
    }
}
