//! Trackers' engines on an in-memory wire that can cut any tracker off:
//! each call is encoded with the protocol codec and bounded by a frame, as
//! on the real connections; storage is real redb files.

use super::log_store::LogStore;
use super::network::{serve, Network, Rpc, RpcReply, Wire, WireError};
use super::state_machine::StateMachine;
use super::{config, Answer, Command, NodeId, Raft};
use crate::state::change::Change;
use crate::state::State;
use fileshare_protocol::{codec, ErrorCode, MAX_FRAME_LEN};
use openraft::{BasicNode, SnapshotPolicy};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Router {
    nodes: Mutex<BTreeMap<NodeId, Raft>>,
    cut: Mutex<BTreeSet<NodeId>>,
}

/// One tracker's end of the router.
struct Link {
    from: NodeId,
    router: Arc<Router>,
}

impl Wire for Link {
    async fn call(&self, to: NodeId, rpc: Rpc) -> Result<RpcReply, WireError> {
        let raft = {
            let cut = self.router.cut.lock();
            if cut.contains(&self.from) || cut.contains(&to) {
                return Err(WireError::Unreachable(to));
            }
            self.router.nodes.lock().get(&to).cloned()
        };
        let raft = raft.ok_or(WireError::Unreachable(to))?;
        let bytes = codec::encode(&rpc).map_err(|_| WireError::TooLarge { to, len: 0 })?;
        assert!(bytes.len() <= MAX_FRAME_LEN);
        let rpc: Rpc = codec::decode(&bytes).expect("a call decodes");
        let reply = serve(&raft, rpc).await;
        let bytes = codec::encode(&reply).expect("a reply fits a frame");
        Ok(codec::decode(&bytes).expect("a reply decodes"))
    }
}

struct Tracker {
    raft: Raft,
    state: Arc<RwLock<State>>,
    log: LogStore,
}

fn test_config(snapshot_every: u64) -> Arc<openraft::Config> {
    let mut c = config("test").unwrap();
    c.snapshot_policy = SnapshotPolicy::LogsSinceLast(snapshot_every);
    c.max_in_snapshot_log_to_keep = 0;
    c.purge_batch_size = 1;
    Arc::new(c.validate().unwrap())
}

async fn start(
    router: &Arc<Router>,
    id: NodeId,
    dir: &Path,
    cfg: &Arc<openraft::Config>,
) -> Tracker {
    let path = dir.join(format!("{id}.redb"));
    // A stopped engine lets go of its file a moment after `shutdown`.
    let mut tries = 0;
    let db = loop {
        match redb::Database::create(&path) {
            Ok(db) => break Arc::new(db),
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    };
    let state = Arc::new(RwLock::new(State::default()));
    let log = LogStore::open(db.clone()).unwrap();
    let sm = StateMachine::open(db, state.clone(), None).unwrap();
    let link = Arc::new(Link {
        from: id,
        router: router.clone(),
    });
    let raft = Raft::new(id, cfg.clone(), Network::new(link), log.clone(), sm)
        .await
        .unwrap();
    router.nodes.lock().insert(id, raft.clone());
    Tracker { raft, state, log }
}

async fn cluster(n: u64, dir: &Path, cfg: &Arc<openraft::Config>) -> (Arc<Router>, Vec<Tracker>) {
    let router = Arc::new(Router::default());
    let mut trackers = vec![];
    for id in 1..=n {
        trackers.push(start(&router, id, dir, cfg).await);
    }
    let members: BTreeMap<NodeId, BasicNode> = (1..=n).map(|i| (i, BasicNode::default())).collect();
    trackers[0].raft.initialize(members).await.unwrap();
    (router, trackers)
}

/// The leader among `among`, once one of them leads.
async fn leader(trackers: &[Tracker], among: &[NodeId]) -> NodeId {
    for _ in 0..200 {
        for &i in among {
            let t = &trackers[usize::try_from(i - 1).unwrap()];
            let m = t.raft.metrics().borrow().clone();
            if m.current_leader == Some(i) && m.state.is_leader() {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader among {among:?}");
}

fn user(name: &str) -> Command {
    Command::Change(Change::CreateUser {
        user: name.into(),
        phc: "phc".into(),
    })
}

async fn write(t: &Tracker, c: Command) -> Answer {
    t.raft.client_write(c).await.unwrap().data
}

async fn wait_users(t: &Tracker, names: &[String]) {
    for _ in 0..400 {
        if names.iter().all(|n| t.state.read().user(n).is_some()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let missing: Vec<_> = (names.iter())
        .filter(|n| t.state.read().user(n).is_none())
        .collect();
    panic!("users missing: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_commits_and_every_tracker_applies_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (_router, trackers) = cluster(3, dir.path(), &test_config(1000)).await;
    let l = &trackers[usize::try_from(leader(&trackers, &[1, 2, 3]).await - 1).unwrap()];
    assert_eq!(write(l, user("alice")).await, Answer(vec![Ok(())]));
    // Decided against the state it is applied to: the second is refused.
    assert_eq!(
        write(l, user("alice")).await,
        Answer(vec![Err(ErrorCode::UserExists("alice".into()))])
    );
    // A batch: each write decided in order against the state the ones
    // before it left, each answered on its own.
    assert_eq!(
        write(
            l,
            Command::Batch(vec![user("bob"), user("alice"), user("bob")])
        )
        .await,
        Answer(vec![
            Ok(()),
            Err(ErrorCode::UserExists("alice".into())),
            Err(ErrorCode::UserExists("bob".into()))
        ])
    );
    assert_eq!(
        write(
            l,
            Command::Init {
                ticket_seed: [7; 32]
            }
        )
        .await,
        Answer(vec![Ok(())])
    );
    for t in &trackers {
        wait_users(t, &["alice".into(), "bob".into()]).await;
        for _ in 0..200 {
            if t.state.read().ticket_seed().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(t.state.read().ticket_seed(), Some(&[7; 32]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_cut_off_commits_nothing_and_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (router, trackers) = cluster(3, dir.path(), &test_config(20)).await;
    leader(&trackers, &[1, 2, 3]).await;
    router.cut.lock().insert(3);
    let l = &trackers[usize::try_from(leader(&trackers, &[1, 2]).await - 1).unwrap()];
    let names: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    for n in &names {
        assert_eq!(write(l, user(n)).await, Answer(vec![Ok(())]));
    }
    // Alone, tracker 3 commits nothing: a write there finds no leader.
    let lone = tokio::time::timeout(
        Duration::from_secs(2),
        trackers[2].raft.client_write(user("lost")),
    )
    .await;
    assert!(
        !matches!(lone, Ok(Ok(_))),
        "tracker 3 alone committed a write"
    );
    assert!(trackers[2].state.read().user("u0").is_none());
    assert!(trackers[2].state.read().user("lost").is_none());
    // The leader compacted its log behind its snapshots.
    for _ in 0..200 {
        if l.log.len().unwrap() < 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        l.log.len().unwrap() < 40,
        "{} entries kept",
        l.log.len().unwrap()
    );
    router.cut.lock().clear();
    wait_users(&trackers[2], &names).await;
    let m = trackers[2].raft.metrics().borrow().clone();
    assert!(
        m.snapshot.is_some(),
        "tracker 3 caught up without a snapshot"
    );
    for t in &trackers {
        assert!(t.state.read().user("lost").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_the_state_from_the_snapshot_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(20);
    let (router, trackers) = cluster(1, dir.path(), &cfg).await;
    leader(&trackers, &[1]).await;
    let names: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    for n in &names {
        assert_eq!(write(&trackers[0], user(n)).await, Answer(vec![Ok(())]));
    }
    let [t] = <[Tracker; 1]>::try_from(trackers).ok().unwrap();
    t.raft.shutdown().await.unwrap();
    router.nodes.lock().clear();
    drop(t);
    let again = start(&router, 1, dir.path(), &cfg).await;
    wait_users(&again, &names).await;
    assert!(again.log.len().unwrap() < 40);
    let snapshot = again
        .raft
        .wait(Some(Duration::from_secs(5)))
        .metrics(|m| m.snapshot.is_some(), "the snapshot known")
        .await;
    assert!(snapshot.is_ok(), "the restarted engine knows no snapshot");
}
