//! One member's daemon without its mount: the tracker link, the engine over
//! the piece store, and the peer server with its upload scheduler. `fsd
//! mount` puts FUSE, the dashboard and the control socket in front of it;
//! tests drive the same node in-process, without FUSE or root.

use crate::engine::{Engine, EngineConfig};
use crate::net::serve::ServeCtx;
use crate::net::token_bucket::TokenBucket;
use crate::net::upload_scheduler::Uploads;
use crate::pieces::registry::Registry;
use crate::store::Store;
use crate::tasks::Tasks;
use crate::trackers::TrackerLink;
use anyhow::Context;
use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::messages::tracker::LeaveNetwork;
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::tls::{ClientCerts, ServerTls};
use fileshare_protocol::Identity;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// How a node is set up: everything `fsd mount` takes that is not about
/// the mount itself.
pub struct NodeConfig {
    pub store: Store,
    pub identity: Identity,
    pub client: TrackerClient,
    pub session: SessionToken,
    pub user: String,
    /// Where the peer server listens (`127.0.0.1:0` in tests).
    pub listen: String,
    pub max_upload_rate: Option<u64>,
    pub max_download_rate: Option<u64>,
    pub read_timeout: Duration,
    pub cache_size: Option<u64>,
    /// Peers fetched from at once, per file and in all.
    pub max_peers_per_file: usize,
    pub max_peers: usize,
    /// Testing only: flip a byte of every piece sent.
    pub corrupt_uploads: bool,
}

/// A running node. Its parts run under two children of the task tree it
/// was started under: the peers' and the engine's.
pub struct Node {
    pub engine: Arc<Engine>,
    pub tracker: Arc<TrackerLink>,
    pub registry: Arc<Registry>,
    pub uploads: Arc<Uploads>,
    /// The address announced to other peers.
    pub addr: String,
    pub peer_tasks: Tasks,
    pub engine_tasks: Tasks,
    /// Files found in the store and offered again.
    pub resumed: usize,
}

impl Node {
    /// Starts the peer server and the engine (which offers the store's files
    /// again and announces them).
    pub async fn start(config: NodeConfig, tasks: &Tasks) -> anyhow::Result<Node> {
        let NodeConfig {
            store,
            identity,
            client,
            session,
            user,
            listen,
            max_upload_rate,
            max_download_rate,
            read_timeout,
            cache_size,
            max_peers_per_file,
            max_peers,
            corrupt_uploads,
        } = config;
        let my_id = identity.peer_id();
        // Peers are served only to daemons that present a key: the
        // requester's peer id is its key's.
        let peer_tls = ServerTls::new(&identity, ClientCerts::Required)
            .context("cannot set up TLS for the peer server")?;
        let first_tracker = client.addrs().first().cloned().unwrap_or_default();
        let tracker = Arc::new(TrackerLink::new(client, session, user, my_id));

        let listener = crate::net::reach::listen(&listen)
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener.local_addr()?;
        let primary = crate::net::reach::family::primary(bound, &first_tracker);
        let addr = primary.to_string();
        crate::net::send_buffer::limit_unsent(&listener);

        let registry = Arc::new(Registry::default());
        let reach = Arc::new(crate::net::reach::Reach::default());
        reach.set_listen(bound);
        reach.set_also(crate::net::reach::family::others(bound, primary));
        let burst = fileshare_protocol::PIECE_LEN;
        let engine_tasks = tasks.child();
        let engine = Engine::new(
            store,
            identity,
            tracker.clone(),
            registry.clone(),
            EngineConfig {
                download: max_download_rate.map(|r| TokenBucket::new(r, burst)),
                read_timeout: read_timeout.max(Duration::from_millis(100)),
                cache_size,
                reach: reach.clone(),
                links: crate::net::fetch::LinkBudget::new(max_peers_per_file, max_peers),
            },
            engine_tasks.clone(),
        );
        let resumed = engine.load_store().await?;

        let peer_tasks = tasks.child();
        let uploads = Arc::new(Uploads::new(max_upload_rate, burst, {
            let registry = registry.clone();
            move |peer: &fileshare_protocol::PeerId| registry.received_from(peer)
        }));
        peer_tasks.spawn("upload-pacer", {
            let (uploads, token) = (uploads.clone(), peer_tasks.token().clone());
            async move { uploads.run(token).await }
        });
        let serve_ctx = Arc::new(ServeCtx {
            my_id,
            tls: peer_tls,
            tracker: tracker.clone(),
            registry: registry.clone(),
            uploads: uploads.clone(),
            corrupt: corrupt_uploads,
            send_buffers: Default::default(),
            next_conn: AtomicU64::new(0),
            tasks: peer_tasks.clone(),
            reach,
        });
        peer_tasks.spawn(
            "port-mapping",
            crate::net::reach::mapping::run(serve_ctx.reach.clone()),
        );
        peer_tasks.spawn(
            "call-answerer",
            crate::net::reach::reverse::answer(serve_ctx.clone()),
        );
        peer_tasks.spawn("peer-server", crate::net::serve::run(listener, serve_ctx));
        engine.start(addr.clone());
        Ok(Node {
            engine,
            tracker,
            registry,
            uploads,
            addr,
            peer_tasks,
            engine_tasks,
            resumed,
        })
    }

    /// Stops serving and fetching (the caller joins the task tree), after
    /// telling the trackers this peer leaves.
    pub async fn stop(&self) {
        for t in [&self.peer_tasks, &self.engine_tasks] {
            t.token().cancel();
        }
        crate::net::reach::mapping::remove(self.engine.reach()).await;
        let leave = LeaveNetwork {
            session: self.tracker.session,
            peer: self.tracker.peer,
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.client.call(leave)).await;
    }
}
