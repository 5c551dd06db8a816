//! The coordinator's shell: the actor whose timer runs a coordinator round
//! on every node ([`actor`]), and the round itself ([`round`]): bootstrap,
//! node registration, voter upkeep, failover, re-replication and
//! rebalancing on the Raft leader. Its decisions are the pure planners of
//! `tstore_core::coordinator`.

pub mod actor;
mod elastic;
mod merge;
mod round;
