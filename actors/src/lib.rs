//! tstore's actors.
//!
//! - [`node::NodeActor`]: one per process. Owns the QUIC endpoint and the
//!   gossip membership, routes inbound peer messages, reacts to liveness
//!   events, and leaves the cluster politely on shutdown.
//! - [`admin::AdminActor`]: serves client/operator sessions: the member list,
//!   the raw gossip state, and a live stream of gossip changes.
//!
//! The wire protocols spoken between nodes and with clients are in [`wire`].
//! Actors are thin shells: the decisions they carry out live in plain types
//! (in this crate's later modules, and in `tstore-membership`'s `view`).
//!
//! Uses `tstore-transport` and `tstore-membership`; used by the `tstore` binary.

pub mod admin;
pub mod cluster_map;
pub mod control;
pub mod coordinator;
pub mod data;
pub mod keys;
pub mod node;
pub mod replication;
pub mod router;
mod service;
pub mod shard;
pub mod storage;
pub mod wire;

pub use node::{start_node, NodeHandle, NodeSettings, StartError};
