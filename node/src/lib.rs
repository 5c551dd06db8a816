//! The `tstore` binary and its client library.
//!
//! - [`cli`]: the command line (`tstore cert|start|admin|demo`).
//! - [`config`]: node configuration from a TOML file and flags (flags win).
//! - [`client`]: [`client::AdminClient`], the Rust client for a node's admin
//!   service; the CLI's `admin` commands are built on it.
//! - [`data_client`]: [`data_client::Client`], the routing client for rows:
//!   each key goes straight to its shard's primary or a replica.
//! - [`run`]: starting a node process and shutting it down on SIGINT/SIGTERM.
//! - [`demo`]: a local 3-node cluster with generated certificates.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod data_client;
pub mod demo;
pub mod import;
mod output;
pub mod run;

/// The wire types of the admin protocol, for clients that speak it directly.
pub use tstore_actors::wire;

/// The cluster map types (tables, shards, replica sets), as the admin API returns them.
pub use tstore_actors::cluster_map;

/// Operators' changes to one shard (promote, move, remove a copy).
pub use tstore_actors::coordinator::failover::ManualOp;

/// Row types of the data API.
pub mod data {
    pub use tstore_actors::data::ops::{OpResult, RowRecord};
    pub use tstore_actors::data::sessions::{ClientId, RequestId, CLIENT_TTL_MS};
    pub use tstore_actors::shard::actor::ReadMode;
    pub use tstore_actors::wire::{BatchOp, DataError, ErrorKind};
}
