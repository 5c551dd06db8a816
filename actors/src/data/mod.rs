//! The data path's building blocks: table operations evaluated at apply
//! time ([`ops`]) and shard storage on LMDB ([`store`]).

pub mod ops;
pub mod store;
