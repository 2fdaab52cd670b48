//! Trackers in a cluster, as real processes on 127.0.0.1: every tracker
//! answers the same, writes through one are read back through the others,
//! and a `kill -9` of any one loses nothing acknowledged.

use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerRequest};
use fileshare_protocol::{PieceHash, PIECE_LEN};
use fileshare_tests::cluster::Cluster;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn meta(name: &str) -> FileMeta {
    FileMeta {
        name: name.into(),
        size: 10,
        piece_len: PIECE_LEN,
        hashes: vec![PieceHash::of(name.as_bytes())],
    }
}

async fn user(client: &TrackerClient, name: &str) -> SessionToken {
    client
        .call(TrackerRequest::CreateUser {
            user: name.into(),
            password: "pw".into(),
        })
        .await
        .unwrap();
    match client
        .call(TrackerRequest::Login {
            user: name.into(),
            password: "pw".into(),
        })
        .await
        .unwrap()
    {
        TrackerReply::Session { token, .. } => token,
        other => panic!("{other:?}"),
    }
}

async fn groups(client: &TrackerClient, session: SessionToken) -> Vec<String> {
    match client
        .call(TrackerRequest::ListGroups { session })
        .await
        .unwrap()
    {
        TrackerReply::Groups(g) => g.into_iter().map(|g| g.name).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn writes_through_one_tracker_are_read_through_every_other() {
    for n in [2, 3] {
        let cluster = Cluster::start(n);
        let rt = rt();
        rt.block_on(async {
            for i in 1..=n {
                let c = cluster.client(i);
                let s = user(&c, &format!("user{i}")).await;
                c.call(TrackerRequest::CreateGroup {
                    session: s,
                    group: format!("g{i}"),
                })
                .await
                .unwrap();
                c.call(TrackerRequest::ShareFile {
                    session: s,
                    group: format!("g{i}"),
                    meta: meta(&format!("f{i}")),
                })
                .await
                .unwrap();
                // Read back at once through every tracker.
                for j in 1..=n {
                    let other = cluster.client(j);
                    let gs = groups(&other, s).await;
                    assert!(gs.contains(&format!("g{i}")), "tracker {j}: {gs:?}");
                    let TrackerReply::Files(files) = other
                        .call(TrackerRequest::ListFiles {
                            session: s,
                            group: format!("g{i}"),
                        })
                        .await
                        .unwrap()
                    else {
                        panic!()
                    };
                    assert_eq!(files.len(), 1, "tracker {j}");
                    // A ticket from one tracker is good at every other.
                    let TrackerReply::Ticket(t) = c
                        .call(TrackerRequest::IssueTicket {
                            session: s,
                            group: format!("g{i}"),
                        })
                        .await
                        .unwrap()
                    else {
                        panic!()
                    };
                    other
                        .call(TrackerRequest::VerifyTicket { ticket: t })
                        .await
                        .unwrap();
                }
            }
        });
    }
}
