//! tstore's actors: the I/O shells around `tstore-core`'s decisions.
//!
//! - [`node`]: the NodeActor, one per process: the QUIC endpoint, gossip
//!   membership, the shard copies this node holds, shutdown.
//! - [`shard`]: the actor holding one shard copy (primary, backup or
//!   learner), driving `tstore_core::replication`'s state machines.
//! - [`control`]: the control plane (Raft over the cluster map) and DDL.
//! - [`coordinator`]: the coordinator: its timer, and one round of it.
//! - [`router`]: serving the row requests a client routed itself.
//! - [`admin`]: the client/operator service (members, gossip, tables, …).
//! - [`data`]: shard storage on LMDB and the node's group commit.
//! - [`storage`]: the node's LMDB environment.
//! - [`node_stats`]: a node's storage figures for operators.
//! - [`metrics`]: the counters and histograms the hot paths keep, as atomics.
//! - [`observe`]: a node's figures for its Prometheus endpoint and console.
//! - [`peer`]: the node-to-node messages.
//! - [`clock`]: the monotonic and wall clocks handed to the core.
//! - [`peer_link`]: how copies and the router reach other nodes (QUIC, or an
//!   in-memory network with faults for in-process tests).
//! - [`dispatch`]: the one place inbound peer messages are dispatched.
//! - [`hearing`]: which peers this node still hears; reports silent
//!   primaries to the coordinator.
//!
//! Decisions live in `tstore-core` (pure, no I/O); this crate carries them
//! out. Uses `tstore-transport`, `tstore-membership` and `tstore-core`; used
//! by the `tstore` binary.

pub mod admin;
pub mod clock;
pub mod control;
pub mod coordinator;
pub mod data;
pub mod dispatch;
pub mod hearing;
pub mod metrics;
pub mod node;
pub mod node_stats;
pub mod observe;
pub mod peer;
pub mod peer_link;
pub mod recovery;
pub mod router;
mod service;
pub mod shard;
pub mod storage;

pub use node::{start_node, NodeHandle, NodeSettings, StartError};
