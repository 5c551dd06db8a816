//! The actors holding this node's shard copies. Which copies a node holds is
//! decided by `tstore_core::shard::plan`; this module carries it out.

pub mod actor;
