//! The coordinator: decides changes to the cluster map. Active only on the
//! Raft leader. Its decisions are pure functions of (map, liveness) in the
//! submodules; the coordinator actor (`tstore_actors::coordinator`)
//! proposes them through Raft.

pub mod elastic;
pub mod failover;
pub mod health;
pub mod merge;
pub mod placement;
pub mod rebalance;
pub mod replan;
pub mod silence;
pub mod suspicion;
pub mod voters;

#[cfg(test)]
pub(crate) mod test_maps;
