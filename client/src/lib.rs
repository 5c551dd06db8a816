//! tstore's Rust client.
//!
//! - [`routing`]: [`routing::Client`], the routing client for rows: each key
//!   goes straight to its shard's primary or a replica; it alone retries,
//!   and every write carries a request identity so a resend is applied once.
//! - [`admin`]: [`admin::AdminClient`], the client for a node's admin
//!   service (members, gossip, tables, drain, manual shard changes); its row
//!   methods delegate to the routing client.
//!
//! It depends on `tstore-transport` (QUIC, TLS, frames) and `tstore-core`
//! (the wire types and the cluster map) only, so a program using it links
//! no actor framework, Raft or LMDB (`cargo tree -p tstore-client`).

pub mod admin;
pub mod batch;
mod coalesce;
pub mod error;
pub mod routing;

pub use admin::AdminClient;
pub use error::ClientError;
pub use routing::{Client, ClientOptions, Consistency};

/// The wire types of the client protocol, for programs that speak it directly.
pub use tstore_core::wire;

/// The cluster map types (tables, shards, replica sets), as the admin API returns them.
pub use tstore_core::cluster_map;

/// How a node shows its shard copies in gossip (read a gossip snapshot's
/// `copies:<n>` keys with `copy_gossip::node_copies`).
pub use tstore_core::copy_gossip;

/// Operators' changes to one shard (promote, move, remove a copy).
pub use tstore_core::coordinator::failover::ManualOp;

/// Row types of the data API.
pub mod data {
    pub use tstore_core::data::ops::{OpResult, RowRecord};
    pub use tstore_core::data::sessions::{ClientId, RequestId, CLIENT_TTL_MS};
    pub use tstore_core::wire::{BatchOp, DataError, ErrorKind, ReadMode};
}
