//! Shard storage on LMDB ([`store`]) and the node-wide group commit that
//! writes it ([`committer`]). What is stored, and how operations evaluate,
//! is `tstore_core::data`.

pub mod committer;
pub mod store;
