//! The data path's building blocks: table operations evaluated at apply
//! time ([`ops`]), the client sessions that make writes exactly-once
//! ([`sessions`]), shard storage on LMDB ([`store`]) and the node-wide
//! group commit that writes it ([`committer`]).

pub mod committer;
pub mod ops;
pub mod sessions;
pub mod store;
pub mod validate;
