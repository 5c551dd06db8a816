//! The coordinator: decides changes to the cluster map. Active only on the
//! Raft leader. Its decisions are pure functions of (map, liveness) in the
//! submodules; the actor proposes them through Raft.

pub mod actor;
pub mod failover;
pub mod placement;
pub mod rebalance;
pub mod silence;
pub mod voters;
