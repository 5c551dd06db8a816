//! Raft RPCs over the node's QUIC endpoint (peer protocol).
//!
//! A transport failure (peer down, handshake refused, timeout) is reported to
//! openraft as `Unreachable`, which makes it back off and retry; an error the
//! remote Raft returned comes back as `RemoteError`.

use std::net::SocketAddr;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tstore_transport::Endpoint;

use super::types::{MapRaft, RaftNode};
use crate::peer::{PeerMessage, PeerReply, RaftRpc, RaftRpcReply};

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, RaftNode, RaftError<u64, E>>>;

/// Makes one [`Connection`] per Raft peer.
pub struct Network {
    pub(crate) endpoint: Endpoint,
}

/// A Raft peer, reached through the endpoint's connection cache.
pub struct Connection {
    endpoint: Endpoint,
    target: u64,
    addr: Result<SocketAddr, String>,
}

impl RaftNetworkFactory<MapRaft> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &RaftNode) -> Connection {
        Connection {
            endpoint: self.endpoint.clone(),
            target,
            addr: node.addr.parse().map_err(|e| {
                format!(
                    "node {} has a bad address {:?}: {e}",
                    node.node_id, node.addr
                )
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

impl Connection {
    async fn call<E: std::error::Error>(
        &self,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, RPCError<u64, RaftNode, RaftError<u64, E>>> {
        let addr = self
            .addr
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Failure(e))))?;
        match self.endpoint.request(addr, &PeerMessage::Raft(rpc)).await {
            Ok(PeerReply::Raft(reply)) => Ok(reply),
            Ok(other) => Err(RPCError::Network(NetworkError::new(&Failure(format!(
                "unexpected answer to a Raft RPC: {other:?}"
            ))))),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }

    #[allow(clippy::result_large_err)] // openraft's error type
    fn remote<T, E: std::error::Error>(&self, res: Result<T, RaftError<u64, E>>) -> Rpc<T, E> {
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn mismatch<E: std::error::Error>() -> RPCError<u64, RaftNode, RaftError<u64, E>> {
    RPCError::Network(NetworkError::new(&Failure(
        "Raft reply of the wrong kind".into(),
    )))
}

impl RaftNetwork<MapRaft> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MapRaft>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<u64>> {
        match self.call(RaftRpc::AppendEntries(rpc)).await? {
            RaftRpcReply::AppendEntries(r) => self.remote(r),
            _ => Err(mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<MapRaft>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        match self.call(RaftRpc::InstallSnapshot(rpc)).await? {
            RaftRpcReply::InstallSnapshot(r) => self.remote(r),
            _ => Err(mismatch()),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, _option: RPCOption) -> Rpc<VoteResponse<u64>> {
        match self.call(RaftRpc::Vote(rpc)).await? {
            RaftRpcReply::Vote(r) => self.remote(r),
            _ => Err(mismatch()),
        }
    }
}
