//! The actors holding this node's shard copies. Which copies a node holds is
//! decided by `tstore_core::shard::plan`; this module carries it out.
//!
//! - [`actor`]: the copy actor (primary, backup, learner).
//! - [`messages`]: the messages a copy actor handles.
//! - [`local`]: the registry of the copies held here.
//! - [`publish`]: the node's publisher of its copies' state in gossip.
//! - [`snapshot`]: both ends of the snapshot stream a learner is built from.

pub mod actor;
pub mod local;
pub mod messages;
pub mod publish;
pub mod snapshot;
