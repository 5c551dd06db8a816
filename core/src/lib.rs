//! tstore's pure core: every decision the cluster makes, and the data it
//! makes them on, with no I/O.
//!
//! - [`cluster_map`]: tables, shards, replica sets, node states, map events.
//! - [`keys`]: row keys, their encoding and hashing.
//! - [`data`]: table operations, client sessions (exactly-once), validation.
//! - [`replication`]: the primary and backup state machines, and their
//!   simulation.
//! - [`coordinator`]: the placement, failover, rebalance and voter planners,
//!   and the silence tracker.
//! - [`shard`]: which copies a node holds.
//! - [`copy_gossip`]: how a node shows its copies in gossip (one compact
//!   value for all of them).
//! - [`view`]: gossip state as plain data (members, snapshots, changes).
//! - [`wire`]: the client-facing messages.
//!
//! Like quinn's protocol crate, this crate gets no time from the operating
//! system and opens no socket or file: callers pass `now` in, and carry out
//! the effects a state machine returns. Its `Cargo.toml` names serde-family
//! crates and thiserror only, so that stays true by construction.
//!
//! Used by `tstore-membership`, `tstore-actors` and `tstore-client`.

pub mod cluster_map;
pub mod coordinator;
pub mod copy_gossip;
pub mod data;
pub mod keys;
pub mod replication;
pub mod shard;
pub mod view;
pub mod wire;
