//! The control plane: the cluster map, committed through Raft (openraft)
//! among a few voter nodes and stored on LMDB; every node follows the log
//! (voters and learners alike) and so holds the committed map.

pub mod store;
pub mod types;
