//! Trackers in a cluster, as real processes on 127.0.0.1: every tracker
//! answers the same, writes through one are read back through the others,
//! and a `kill -9` of any one loses nothing acknowledged.

use fileshare_protocol::client::{ClientError, TrackerClient};
use fileshare_protocol::ids::FileMeta;
use fileshare_protocol::messages::tracker::{
    AskTicketKey, CreateGroup, IssueTicket, ListFiles, ListGroups, ShareFile,
};
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::tls::{self, ClientTls, Pin, SecureStream};
use fileshare_protocol::{Identity, PieceHash, PIECE_LEN};
use fileshare_tests::cluster::Cluster;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    fileshare_tests::tracker::sign_up(client, name).await
}

async fn groups(client: &TrackerClient, session: SessionToken) -> Vec<String> {
    let groups = client.call(ListGroups { session }).await.unwrap();
    groups.into_iter().map(|g| g.name).collect()
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
                let group = format!("g{i}");
                c.call(CreateGroup {
                    session: s,
                    group: group.to_string(),
                })
                .await
                .unwrap();
                c.call(ShareFile {
                    session: s,
                    group: group.to_string(),
                    meta: meta(&format!("f{i}")),
                })
                .await
                .unwrap();
                // Read back at once through every tracker.
                for j in 1..=n {
                    let other = cluster.client(j);
                    let gs = groups(&other, s).await;
                    assert!(gs.contains(&group), "tracker {j}: {gs:?}");
                    let files = other
                        .call(ListFiles {
                            session: s,
                            group: group.to_string(),
                        })
                        .await
                        .unwrap();
                    assert_eq!(files.len(), 1, "tracker {j}");
                    // A ticket from one tracker is good with every
                    // other's key: they are the cluster's. (It is issued
                    // to the daemon that asks: the key its client shows.)
                    let daemon = Identity::generate().unwrap();
                    let holder = daemon.peer_id();
                    let t = cluster.client_as(i, &daemon);
                    let t = t
                        .call(IssueTicket {
                            session: s,
                            group: group.to_string(),
                            holder,
                        })
                        .await
                        .unwrap();
                    let key = other.call(AskTicketKey).await.unwrap();
                    t.verify(&key, &holder, t.issued_unix_ms).unwrap();
                }
            }
        });
    }
}

/// What the clients of a write stream saw acknowledged.
#[derive(Default)]
struct Acked {
    groups: BTreeSet<String>,
    /// Files, each in its client's home group `home{c}`.
    files: BTreeMap<usize, BTreeSet<String>>,
    count: usize,
    errors: usize,
}

/// Several clients writing at once, each through the cluster starting at
/// a different tracker: new groups and new files, alternately, until
/// `stop` is set. Each client carries on after a failed write.
struct Stream {
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sessions: Vec<SessionToken>,
}

impl Stream {
    fn start(rt: &tokio::runtime::Runtime, cluster: &Cluster, clients: usize) -> Stream {
        let n = cluster.size();
        let sessions: Vec<SessionToken> = rt.block_on(async {
            let mut v = vec![];
            for c in 0..clients {
                let client = cluster.client_from(1);
                let s = user(&client, &format!("writer{c}")).await;
                client
                    .call(CreateGroup {
                        session: s,
                        group: format!("home{c}"),
                    })
                    .await
                    .unwrap();
                v.push(s);
            }
            v
        });
        let acked = Arc::new(Mutex::new(Acked::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = vec![];
        for (c, session) in sessions.iter().copied().enumerate() {
            let first = u32::try_from(c).unwrap() % n + 1;
            let client = cluster.client_from(first);
            let (acked, stop) = (acked.clone(), stop.clone());
            tasks.push(rt.spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let group = i.is_multiple_of(2);
                    let name = if group {
                        format!("g-{c}-{i}")
                    } else {
                        format!("f-{c}-{i}")
                    };
                    let r = if group {
                        client
                            .call(CreateGroup {
                                session,
                                group: name.to_string(),
                            })
                            .await
                    } else {
                        let home = format!("home{c}");
                        client
                            .call(ShareFile {
                                session,
                                group: home.to_string(),
                                meta: meta(&name),
                            })
                            .await
                    };
                    let mut a = acked.lock().unwrap();
                    match r {
                        Ok(()) => {
                            a.count += 1;
                            if group {
                                a.groups.insert(name);
                            } else {
                                a.files.entry(c).or_default().insert(name);
                            }
                        }
                        Err(e @ ClientError::UnexpectedReply(_)) => panic!("{e}"),
                        Err(_) => a.errors += 1,
                    }
                }
            }));
        }
        Stream {
            acked,
            stop,
            tasks,
            sessions,
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().count
    }

    /// Waits until `more` further writes are acknowledged.
    fn wait_more(&self, more: usize, what: &str) {
        let target = self.count() + more;
        let start = Instant::now();
        while self.count() < target {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: only {} of {target} writes acknowledged",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self, rt: &tokio::runtime::Runtime) -> (Acked, Vec<SessionToken>) {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            for t in self.tasks {
                t.await.unwrap();
            }
        });
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        (acked, self.sessions)
    }
}

/// Tracker `i`'s listings: every group, and the files of each home group.
async fn listings(
    cluster: &Cluster,
    i: u32,
    sessions: &[SessionToken],
) -> (BTreeSet<String>, Vec<BTreeSet<String>>) {
    let client = cluster.client(i);
    let all: BTreeSet<String> = groups(&client, sessions[0]).await.into_iter().collect();
    let mut files = vec![];
    for (c, s) in sessions.iter().enumerate() {
        let f = client
            .call(ListFiles {
                session: *s,
                group: format!("home{c}"),
            })
            .await
            .unwrap();
        files.push(f.into_iter().map(|f| f.name).collect());
    }
    (all, files)
}

/// Every acknowledged write is in tracker `i`'s listings.
fn assert_has_all(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    i: u32,
    acked: &Acked,
    sessions: &[SessionToken],
) {
    let (all, files) = rt.block_on(listings(cluster, i, sessions));
    let lost: Vec<_> = acked.groups.difference(&all).collect();
    assert!(
        lost.is_empty(),
        "tracker {i} lost acknowledged groups {lost:?}"
    );
    for (c, names) in &acked.files {
        let lost: Vec<_> = names.difference(&files[*c]).collect();
        assert!(
            lost.is_empty(),
            "tracker {i} lost acknowledged files {lost:?}"
        );
    }
}

/// Every tracker of `trackers` answers the same listings.
fn assert_same(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    trackers: &[u32],
    sessions: &[SessionToken],
) {
    let first = rt.block_on(listings(cluster, trackers[0], sessions));
    for &i in &trackers[1..] {
        let l = rt.block_on(listings(cluster, i, sessions));
        assert!(
            l == first,
            "trackers {} and {i} answer differently",
            trackers[0]
        );
    }
}

fn multi_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `kill -9` of tracker `victim` of an `n`-tracker cluster in the middle of
/// a stream of writes from several clients.
fn kill_one_during_writes(n: u32, victim: u32) {
    let mut cluster = Cluster::start(n);
    let rt = multi_rt();
    let stream = Stream::start(&rt, &cluster, 6);
    stream.wait_more(150, "before the kill");
    cluster.kill9(victim);
    // The clients carry on through the survivors.
    stream.wait_more(150, "after the kill");
    let (acked, sessions) = stream.finish(&rt);
    let survivors: Vec<u32> = (1..=n).filter(|i| *i != victim).collect();
    for &i in &survivors {
        assert_has_all(&rt, &cluster, i, &acked, &sessions);
    }
    assert_same(&rt, &cluster, &survivors, &sessions);
    // Back, it catches up and answers as the others do.
    cluster.restart(victim);
    cluster.wait_serving(victim);
    let all: Vec<u32> = (1..=n).collect();
    assert_has_all(&rt, &cluster, victim, &acked, &sessions);
    assert_same(&rt, &cluster, &all, &sessions);
    eprintln!(
        "{n} trackers, tracker {victim} killed: {} writes acknowledged, {} failed",
        acked.count, acked.errors
    );
}

#[test]
fn two_trackers_kill_9_of_the_leader_loses_nothing() {
    kill_one_during_writes(2, 1);
}

#[test]
fn two_trackers_kill_9_of_the_follower_loses_nothing() {
    kill_one_during_writes(2, 2);
}

#[test]
fn three_trackers_kill_9_of_any_one_loses_nothing() {
    kill_one_during_writes(3, 1);
    kill_one_during_writes(3, 3);
}

#[test]
fn both_trackers_killed_and_restarted_in_turn_lose_nothing() {
    let mut cluster = Cluster::start(2);
    let rt = multi_rt();
    let stream = Stream::start(&rt, &cluster, 4);
    stream.wait_more(50, "at first");
    cluster.kill9(1);
    stream.wait_more(50, "with tracker 2 alone");
    cluster.restart(1);
    cluster.wait_serving(1);
    stream.wait_more(50, "with both back");
    cluster.kill9(2);
    stream.wait_more(50, "with tracker 1 alone");
    cluster.restart(2);
    cluster.wait_serving(2);
    stream.wait_more(50, "with both back again");
    // Both down at once, then back one by one: the first one back must
    // not serve its own state alone, since the other may have more.
    cluster.kill9(1);
    stream.wait_more(20, "with tracker 2 alone again");
    cluster.kill9(2);
    let (acked, sessions) = stream.finish(&rt);
    cluster.restart(1);
    std::thread::sleep(Duration::from_millis(1500));
    let answer = cluster.answer(1);
    assert!(
        answer.contains("waiting for tracker(s) 2"),
        "tracker 1 must wait for tracker 2, not serve alone an old state: {answer}"
    );
    cluster.restart(2);
    cluster.wait_serving(2);
    cluster.wait_serving(1);
    for i in [1, 2] {
        assert_has_all(&rt, &cluster, i, &acked, &sessions);
    }
    assert_same(&rt, &cluster, &[1, 2], &sessions);
}

/// A secure connection to tracker `i`, presenting `key`, that says it is
/// tracker `claim`; what follows is raw frames.
async fn as_tracker(cluster: &Cluster, i: u32, claim: u32, key: &Identity) -> SecureStream {
    use fileshare_protocol::codec;
    use fileshare_protocol::messages::{Hello, Role, MAGIC};
    let tls = ClientTls::new(Some(key), Pin::FirstUse).unwrap();
    let (mut s, _) = tls::connect_stream(cluster.addr(i), &tls, Duration::from_secs(10))
        .await
        .unwrap();
    let hello = codec::encode(&Hello {
        magic: MAGIC,
        version: fileshare_protocol::PROTOCOL_VERSION,
        role: Role::Tracker { no: claim },
    })
    .unwrap();
    send_frame(&mut s, &hello).await;
    s
}

/// Sends `body` as one frame.
async fn send_frame(s: &mut SecureStream, body: &[u8]) {
    let _ = s
        .write_all(&fileshare_protocol::frame::header(body.len()))
        .await;
    let _ = s.write_all(body).await;
}

/// Reads until the tracker closes the connection (after its hello).
async fn wait_closed(mut s: SecureStream) {
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        match read.expect("the tracker did not close the connection") {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return
            }
            Err(e) => panic!("the tracker did not close the connection: {e}"),
        }
    }
}

/// Tracker `i`'s own key, read from its data directory: what a real
/// member of the cluster presents.
fn key_of(cluster: &Cluster, i: u32) -> Identity {
    Identity::load_or_create(cluster.tracker(i).data_dir(), "tracker").unwrap()
}

#[test]
fn hostile_bytes_on_the_cluster_channel_close_only_their_connection() {
    use fileshare_protocol::codec;
    use fileshare_protocol::messages::cluster::{ClusterMsg, LogPoint, ViewId};
    let cluster = Cluster::start(2);
    let rt = rt();
    let (stranger, one, two) = (
        Identity::generate().unwrap(),
        key_of(&cluster, 1),
        key_of(&cluster, 2),
    );
    rt.block_on(async {
        // Numbers that are not another tracker of the file, even with a
        // member's key.
        for claim in [0, 1, 3, u32::MAX] {
            wait_closed(as_tracker(&cluster, 1, claim, &two).await).await;
        }
        // Tracker 2's number without tracker 2's key.
        wait_closed(as_tracker(&cluster, 1, 2, &stranger).await).await;
        // Garbage, an oversized length, and appends that fit no log, from
        // the members' own keys.
        let mut s = as_tracker(&cluster, 1, 2, &two).await;
        send_frame(&mut s, &[0xff; 64]).await;
        wait_closed(s).await;
        let mut s = as_tracker(&cluster, 1, 2, &two).await;
        send_frame(&mut s, &[]).await;
        let _ = s.write_all(&u32::MAX.to_be_bytes()).await;
        wait_closed(s).await;
        let mut s = as_tracker(&cluster, 2, 1, &one).await;
        for prev in [0, 7, u64::MAX] {
            let append = ClusterMsg::Append {
                view: ViewId {
                    epoch: u64::MAX,
                    leader: 1,
                },
                prev: LogPoint {
                    index: prev,
                    hash: [9; 32],
                },
                entries: vec![serde_bytes::ByteBuf::from(vec![0xee; 40])],
                commit: u64::MAX,
            };
            send_frame(&mut s, &codec::encode(&append).unwrap()).await;
        }
        drop(s);
    });
    // Both still serve, and agree.
    for i in [1, 2] {
        cluster.wait_serving(i);
    }
    rt.block_on(async {
        let s = user(&cluster.client(2), "after").await;
        for i in [1, 2] {
            assert!(groups(&cluster.client(i), s).await.is_empty());
        }
    });
    let log = cluster.tracker(1).log();
    assert_eq!(
        log.matches("refused a connection claiming to be tracker 2")
            .count(),
        1,
        "the stranger is logged once:\n{log}"
    );
}

#[test]
fn a_tracker_cut_off_for_a_while_rejoins_and_nothing_is_lost() {
    let cluster = Cluster::start(2);
    let rt = multi_rt();
    let stream = Stream::start(&rt, &cluster, 4);
    stream.wait_more(50, "at first");
    // Tracker 1 stops answering (as if cut off) and tracker 2 goes on
    // alone, keeping what it acknowledges aside.
    cluster.tracker(1).pause();
    stream.wait_more(100, "with tracker 1 cut off");
    // Back, it rejoins; whichever of the two leads then, what each
    // acknowledged goes through the log and both answer the same.
    cluster.tracker(1).resume();
    cluster.wait_serving(1);
    stream.wait_more(50, "with both back");
    let (acked, sessions) = stream.finish(&rt);
    for i in [1, 2] {
        assert_has_all(&rt, &cluster, i, &acked, &sessions);
    }
    assert_same(&rt, &cluster, &[1, 2], &sessions);
    let log = cluster.tracker(1).log();
    assert!(!log.contains("split brain"), "{log}");
}
