//! openraft's calls between trackers, as values: [`Rpc`] out, [`RpcReply`]
//! back, over a [`Wire`] that the caller supplies (the tracker's TLS
//! connections between trackers, or an in-memory one in tests).
//! [`serve`] is the receiving end: it hands a call to the local engine.
//!
//! Both are plain serde values, so a wire encodes them with the protocol
//! codec; a call too large for one frame is reported to the engine, which
//! sends fewer entries, and snapshots travel in chunks of
//! [`super::SNAPSHOT_CHUNK`] bytes.

use crate::consensus::{NodeId, Raft, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;

/// One call of the engine to another tracker's engine.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The other engine's answer to an [`Rpc`] of the same variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("tracker {0} is not reachable")]
    Unreachable(NodeId),
    #[error("tracker {0} did not answer in time")]
    NoAnswer(NodeId),
    #[error("the call to tracker {to} is {len} bytes, more than one frame holds")]
    TooLarge { to: NodeId, len: usize },
    #[error("tracker {0} answered a different call")]
    Mismatch(NodeId),
}

/// Carries calls to other trackers and brings their answers back.
pub trait Wire: Send + Sync + 'static {
    /// Sends `rpc` to tracker `to` and waits for its answer.
    fn call(
        &self,
        to: NodeId,
        rpc: Rpc,
    ) -> impl Future<Output = Result<RpcReply, WireError>> + Send;
}

/// Hands a call from another tracker to the local engine.
pub async fn serve(raft: &Raft, rpc: Rpc) -> RpcReply {
    match rpc {
        Rpc::Append(r) => RpcReply::Append(raft.append_entries(r).await),
        Rpc::Vote(r) => RpcReply::Vote(raft.vote(r).await),
        Rpc::Snapshot(r) => RpcReply::Snapshot(raft.install_snapshot(r).await),
    }
}

/// The engine's network: one [`Peer`] per other tracker, over one wire.
pub struct Network<W> {
    wire: Arc<W>,
}

impl<W: Wire> Network<W> {
    pub fn new(wire: Arc<W>) -> Network<W> {
        Network { wire }
    }
}

impl<W: Wire> RaftNetworkFactory<TypeConfig> for Network<W> {
    type Network = Peer<W>;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Peer<W> {
        Peer {
            to: target,
            wire: self.wire.clone(),
        }
    }
}

/// The engine's connection to one other tracker.
pub struct Peer<W> {
    to: NodeId,
    wire: Arc<W>,
}

impl<W: Wire> Peer<W> {
    async fn call<E: std::error::Error>(
        &self,
        rpc: Rpc,
        option: &RPCOption,
        action: RPCTypes,
        entries: usize,
    ) -> Result<RpcReply, RPCError<NodeId, BasicNode, E>> {
        let call = self.wire.call(self.to, rpc);
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Ok(r) => r,
            Err(_) => Err(WireError::NoAnswer(self.to)),
        };
        reply.map_err(|e| match e {
            WireError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            WireError::TooLarge { .. } if action == RPCTypes::AppendEntries && entries > 1 => {
                let hint = u64::try_from(entries / 2).unwrap_or(1);
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        })
    }

    fn mismatch<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&WireError::Mismatch(self.to)))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new(self.to, e))
    }
}

impl<W: Wire> RaftNetwork<TypeConfig> for Peer<W> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        match (self.call(Rpc::Append(rpc), &option, RPCTypes::AppendEntries, entries)).await? {
            RpcReply::Append(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match (self.call(Rpc::Snapshot(rpc), &option, RPCTypes::InstallSnapshot, 0)).await? {
            RpcReply::Snapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match (self.call(Rpc::Vote(rpc), &option, RPCTypes::Vote, 0)).await? {
            RpcReply::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.mismatch()),
        }
    }
}
