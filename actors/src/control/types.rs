//! The control plane's Raft types.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use tstore_core::cluster_map::{MapCommand, MapError};

/// A Raft member: the tstore node id and the address it serves on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    pub node_id: String,
    pub addr: String,
}

/// The result of applying one committed command: the map version after it,
/// or why the command was refused (the map is then unchanged).
pub type MapResponse = Result<u64, MapError>;

openraft::declare_raft_types!(
    /// The cluster-map Raft group.
    pub MapRaft:
        D = MapCommand,
        R = MapResponse,
        NodeId = u64,
        Node = RaftNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<MapRaft>;
pub type RaftId = u64;

/// The Raft id of a node id: 64-bit FNV-1a of its name. Stable across
/// restarts and computable by every node without coordination; two node ids
/// colliding is refused when the second joins.
pub fn raft_id(node_id: &str) -> RaftId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::raft_id;

    #[test]
    fn raft_ids_are_stable_and_distinct() {
        assert_eq!(raft_id("n1"), raft_id("n1"));
        assert_ne!(raft_id("n1"), raft_id("n2"));
        // FNV-1a test vector.
        assert_eq!(raft_id("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
