//! The messages a shard copy actor ([`CopyActor`](super::actor::CopyActor))
//! handles: its configuration and lifecycle from the NodeActor, replication
//! from the other members, and the reads, writes and status requests the
//! router hands it. One file, as tikv keeps its store messages in `msg.rs`.

use actix::prelude::*;
use tstore_core::cluster_map::RowKey;
use tstore_core::data::ops::{Op, OpResult, RowRecord};
use tstore_core::data::sessions::RequestId;
use tstore_core::replication::ReplMsg;
use tstore_core::shard::LocalCopy;
use tstore_core::wire::{CopyStatus, DataError, ReadMode};

/// Replace the copy's configuration (new epoch, new members, new role).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub LocalCopy);

/// Stop holding the copy (its data stays until the table is dropped).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopCopy {
    /// The shard left the map for good (table dropped): delete its data.
    pub drop_data: bool,
}

/// A replication message from another member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Replicate {
    pub from: String,
    pub msg: ReplMsg,
}

/// A client write, to the primary, with its request identity.
#[derive(Message)]
#[rtype(result = "Result<OpResult, DataError>")]
pub struct Write {
    pub id: RequestId,
    pub op: Op,
}

/// A point read.
#[derive(Message, Clone)]
/// Refused as `Unavailable` when this copy may not serve it now
/// (`ReadRefusal` says why).
#[rtype(result = "Result<Option<RowRecord>, DataError>")]
pub struct Read {
    pub key: RowKey,
    pub mode: ReadMode,
    /// Set on a read the primary held (while its rows caught up, or for
    /// the lease a quiet primary woke up to renew): the commit point when
    /// it arrived, all the rows must hold to serve it
    /// (`Primary::read_permit_upto`). `None` for a read just arrived.
    pub needs: Option<u64>,
}

/// A range read within the shard.
#[derive(Message, Clone)]
#[rtype(result = "Result<Vec<(RowKey, RowRecord)>, DataError>")]
pub struct ScanShard {
    pub from: Option<RowKey>,
    pub to: Option<RowKey>,
    pub limit: usize,
    pub mode: ReadMode,
    /// As [`Read::needs`]: set on a scan the primary held.
    pub needs: Option<u64>,
    /// The shard's epoch the scan was planned at (`ShardRequest::Scan`).
    pub epoch: u64,
}

/// The median key of the copy's rows, with its row (`ShardRequest::Middle`).
#[derive(Message)]
#[rtype(result = "Result<Option<(RowKey, RowRecord)>, DataError>")]
pub struct MiddleKey;

/// A primary's size and load for the elastic planner
/// (`tstore_core::coordinator::elastic`); `None` from a copy that does not
/// lead its shard. The median key is found (a pass over the keys) only for
/// a range shard over one of the two thresholds.
#[derive(Message)]
#[rtype(result = "Option<tstore_core::coordinator::elastic::ShardStats>")]
pub struct LoadReport {
    pub split_size_bytes: u64,
    pub split_load_ops: u64,
}

/// The copy's replication state.
#[derive(Message)]
#[rtype(result = "CopyStatus")]
pub struct GetStatus {
    pub checksum: bool,
}
