//! The messages nodes exchange with each other (ALPN `tstore-peer/1`):
//! gossip, Raft, replication, forwarded requests and snapshot streams.
//! Framed and versioned by `tstore_transport::frame` (bump `WIRE_VERSION` on
//! an incompatible change). The client half is `tstore_core::wire`.

use serde::{Deserialize, Serialize};

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tstore_core::cluster_map::Table;
use tstore_core::data::sessions::SessionClock;
use tstore_core::replication::ReplMsg;
use tstore_core::shard::ShardKey;
use tstore_core::wire::{ControlError, ControlRequest, DataReply, ShardRequest};

use crate::control::types::MapRaft;

/// Node-to-node messages (ALPN `tstore-peer/1`).
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A chitchat envelope, one-way.
    Gossip(Vec<u8>),
    /// Liveness probe; answered with [`PeerReply::Pong`].
    Ping,
    /// A Raft RPC of the control plane.
    Raft(RaftRpc),
    /// A cluster-map change forwarded to the Raft leader (the coordinator).
    Control(ControlRequest),
    /// Replication between the members of a shard, one-way.
    Repl { shard: ShardKey, msg: ReplMsg },
    /// A client's read or write, forwarded to the node holding the shard copy.
    Data(ShardRequest),
    /// A learner asks the shard's primary for a snapshot of its rows;
    /// answered by a stream of [`SnapshotPart`]s.
    Snapshot { shard: ShardKey },
    /// To the Raft leader, one-way: `node` leads a shard backed up on the
    /// sender and has sent it nothing for `silent_ms`
    /// (`tstore_core::coordinator::suspicion`).
    Suspect { node: String, silent_ms: u64 },
    /// One-way, every replication heartbeat, to each node backing a shard
    /// the sender leads: it lives (`crate::hearing::send_heartbeats`).
    Heartbeat,
    /// From the coordinator: the size and load of every shard the receiver
    /// leads (elastic tables), with the split thresholds (the median key is
    /// found only for a shard over one); answered by [`PeerReply::Loads`].
    Loads {
        split_size_bytes: u64,
        split_load_ops: u64,
        /// The tables whose shards may split by themselves: only their
        /// copies answer.
        tables: Vec<String>,
    },
}

/// One frame of a snapshot stream: a header, row chunks, client session
/// chunks, the end.
#[derive(Debug, Serialize, Deserialize)]
pub enum SnapshotPart {
    /// The rows and sessions that follow reflect every entry up to
    /// `applied`; `clock` is the shard's session clock there.
    Header {
        applied: u64,
        clock: SessionClock,
        /// The shards split off this one whose split the snapshot already
        /// reflects (their split marks), each with its birth.
        splits: Vec<(u32, (u64, u64))>,
        /// Which shard the copy was built for (`store::Birth`): the
        /// installed copy is marked with it.
        born: Option<(u64, u64)>,
    },
    /// Raw `(encoded key, row)` pairs.
    Rows(Vec<(Vec<u8>, Vec<u8>)>),
    /// Raw `(client id, client record)` pairs (see `data::sessions`).
    Sessions(Vec<(Vec<u8>, Vec<u8>)>),
    End,
}

/// Replies to node-to-node requests.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    Pong {
        node_id: String,
        generation: u64,
    },
    Raft(RaftRpcReply),
    /// The map version that holds the change, and the table it created, or why not.
    Control(Result<(u64, Option<Table>), ControlError>),
    Data(DataReply),
    Snapshot(SnapshotPart),
    /// The request is not one this node answers.
    Refused(String),
    /// The shards the node leads, with their size and load.
    Loads(Vec<(ShardKey, tstore_core::coordinator::elastic::ShardStats)>),
}

/// The control plane's Raft RPCs.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries(AppendEntriesRequest<MapRaft>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<MapRaft>),
}

/// Answers to [`RaftRpc`]s, with the receiving node's Raft error if any.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcReply {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}
