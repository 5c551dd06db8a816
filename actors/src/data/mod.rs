//! The data path's building blocks: table operations evaluated at apply
//! time ([`ops`]), shard storage on LMDB ([`store`]) and the node-wide
//! group commit that writes it ([`committer`]).

pub mod committer;
pub mod ops;
pub mod store;
