//! What operators and actors see of gossip: plain, serializable views of the
//! chitchat state, and the pure functions that derive the member list and the
//! changes between two snapshots.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Gossip key: the address peers and clients reach the node at.
pub const KEY_ADDR: &str = "addr";
/// Gossip key: the node's zone (empty when none).
pub const KEY_ZONE: &str = "zone";
/// Gossip key: comma-separated roles.
pub const KEY_ROLES: &str = "roles";
/// Gossip key: the tstore version the node runs.
pub const KEY_VERSION: &str = "version";
/// Gossip key: `active`, or `leaving` once the node has started a polite shutdown.
pub const KEY_STATUS: &str = "status";
pub const STATUS_ACTIVE: &str = "active";
pub const STATUS_LEAVING: &str = "leaving";
/// Gossip key: `ok`, or `failed: <why>` while the node's shard store cannot
/// write (disk full, I/O errors). The coordinator then treats the node as
/// down for its shard copies (they fail over and come back once it is `ok`).
pub const KEY_STORAGE: &str = "storage";
pub const STORAGE_OK: &str = "ok";
const STORAGE_FAILED: &str = "failed: ";

/// The `storage` value of a node whose store cannot write.
pub fn storage_failed_value(why: &str) -> String {
    format!("{STORAGE_FAILED}{why}")
}

/// Why a node's store cannot write, from its `storage` value; `None` when
/// it can (or says nothing).
pub fn storage_failure(value: &str) -> Option<&str> {
    value.strip_prefix(STORAGE_FAILED)
}

/// A node's liveness as one observer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Known through gossip, but the failure detector has not yet heard enough
    /// heartbeats to call it live.
    Joining,
    /// Heartbeats arrive in time.
    Live,
    /// Was live, heartbeats stopped: crashed, paused or cut off.
    Down,
    /// Announced that it was shutting down.
    Left,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStatus::Joining => "joining",
            NodeStatus::Live => "live",
            NodeStatus::Down => "down",
            NodeStatus::Left => "left",
        })
    }
}

/// One gossip key with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub value: String,
    pub version: u64,
    /// A tombstone: deleted, kept until garbage-collected.
    pub deleted: bool,
}

/// One incarnation (node id + generation) in the gossip state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    pub status: NodeStatus,
    pub heartbeat: u64,
    pub max_version: u64,
    pub keys: BTreeMap<String, KeyView>,
}

impl NodeView {
    pub fn key(&self, key: &str) -> Option<&str> {
        self.keys
            .get(key)
            .filter(|k| !k.deleted)
            .map(|k| k.value.as_str())
    }
}

/// The whole gossip state as seen by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipSnapshot {
    /// The node this view was taken on.
    pub observer: String,
    pub cluster_id: String,
    pub seeds: Vec<SocketAddr>,
    /// Sorted by (node id, generation).
    pub nodes: Vec<NodeView>,
}

/// A cluster member: the newest incarnation of one node id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub generation: u64,
    pub status: NodeStatus,
    pub addr: String,
    pub zone: String,
    pub roles: Vec<String>,
    pub version: String,
    /// Heartbeat counter: grows while the node is live.
    pub heartbeat: u64,
    /// Why the node's shard store cannot write, while it cannot (see
    /// [`KEY_STORAGE`]).
    #[serde(default)]
    pub storage_error: Option<String>,
}

/// The member list: for each node id, its newest generation (older
/// incarnations of a restarted node are left out), sorted by node id.
pub fn members(snapshot: &GossipSnapshot) -> Vec<Member> {
    let mut newest: BTreeMap<&str, &NodeView> = BTreeMap::new();
    for n in &snapshot.nodes {
        let slot = newest.entry(&n.node_id).or_insert(n);
        if n.generation > slot.generation {
            *slot = n;
        }
    }
    newest
        .into_values()
        .map(|n| Member {
            node_id: n.node_id.clone(),
            generation: n.generation,
            status: n.status,
            addr: n
                .key(KEY_ADDR)
                .map(str::to_owned)
                .unwrap_or_else(|| n.gossip_addr.to_string()),
            zone: n.key(KEY_ZONE).unwrap_or_default().to_owned(),
            roles: n
                .key(KEY_ROLES)
                .unwrap_or_default()
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            version: n.key(KEY_VERSION).unwrap_or_default().to_owned(),
            heartbeat: n.heartbeat,
            storage_error: n
                .key(KEY_STORAGE)
                .and_then(storage_failure)
                .map(str::to_owned),
        })
        .collect()
}

/// One change between two snapshots (heartbeat ticks are not changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipChange {
    NodeAppeared {
        node_id: String,
        generation: u64,
        status: NodeStatus,
    },
    StatusChanged {
        node_id: String,
        generation: u64,
        from: NodeStatus,
        to: NodeStatus,
    },
    KeySet {
        node_id: String,
        generation: u64,
        key: String,
        value: String,
        version: u64,
    },
    KeyDeleted {
        node_id: String,
        generation: u64,
        key: String,
        version: u64,
    },
    NodeForgotten {
        node_id: String,
        generation: u64,
    },
}

impl fmt::Display for GossipChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GossipChange::NodeAppeared {
                node_id,
                generation,
                status,
            } => write!(f, "{node_id} (gen {generation}) appeared: {status}"),
            GossipChange::StatusChanged {
                node_id,
                generation,
                from,
                to,
            } => write!(
                f,
                "{node_id} (gen {generation}) {}: {from} -> {to}",
                to.to_string().to_uppercase()
            ),
            GossipChange::KeySet {
                node_id,
                generation,
                key,
                value,
                version,
            } => write!(
                f,
                "{node_id} (gen {generation}) {key} = {value:?} (v{version})"
            ),
            GossipChange::KeyDeleted {
                node_id,
                generation,
                key,
                version,
            } => write!(f, "{node_id} (gen {generation}) {key} deleted (v{version})"),
            GossipChange::NodeForgotten {
                node_id,
                generation,
            } => write!(f, "{node_id} (gen {generation}) forgotten"),
        }
    }
}

/// The changes that turn `prev` into `next`, in node order.
pub fn diff(prev: &GossipSnapshot, next: &GossipSnapshot) -> Vec<GossipChange> {
    let index = |s: &GossipSnapshot| -> BTreeMap<(String, u64), NodeView> {
        s.nodes
            .iter()
            .map(|n| ((n.node_id.clone(), n.generation), n.clone()))
            .collect()
    };
    let (before, after) = (index(prev), index(next));
    let mut out = Vec::new();
    for ((node_id, generation), n) in &after {
        let (node_id, generation) = (node_id.clone(), *generation);
        let old = before.get(&(node_id.clone(), generation));
        match old {
            None => out.push(GossipChange::NodeAppeared {
                node_id: node_id.clone(),
                generation,
                status: n.status,
            }),
            Some(o) if o.status != n.status => out.push(GossipChange::StatusChanged {
                node_id: node_id.clone(),
                generation,
                from: o.status,
                to: n.status,
            }),
            Some(_) => {}
        }
        for (key, kv) in &n.keys {
            let was = old.and_then(|o| o.keys.get(key));
            if was == Some(kv) {
                continue;
            }
            out.push(if kv.deleted {
                GossipChange::KeyDeleted {
                    node_id: node_id.clone(),
                    generation,
                    key: key.clone(),
                    version: kv.version,
                }
            } else {
                GossipChange::KeySet {
                    node_id: node_id.clone(),
                    generation,
                    key: key.clone(),
                    value: kv.value.clone(),
                    version: kv.version,
                }
            });
        }
    }
    for (node_id, generation) in before.keys() {
        if !after.contains_key(&(node_id.clone(), *generation)) {
            out.push(GossipChange::NodeForgotten {
                node_id: node_id.clone(),
                generation: *generation,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, generation: u64, status: NodeStatus, keys: &[(&str, &str, u64)]) -> NodeView {
        NodeView {
            node_id: id.into(),
            generation,
            gossip_addr: "127.0.0.1:7401".parse().unwrap(),
            status,
            heartbeat: 10,
            max_version: keys.iter().map(|k| k.2).max().unwrap_or(0),
            keys: keys
                .iter()
                .map(|(k, v, ver)| {
                    (
                        k.to_string(),
                        KeyView {
                            value: v.to_string(),
                            version: *ver,
                            deleted: false,
                        },
                    )
                })
                .collect(),
        }
    }

    fn snap(nodes: Vec<NodeView>) -> GossipSnapshot {
        GossipSnapshot {
            observer: "n1".into(),
            cluster_id: "c".into(),
            seeds: vec![],
            nodes,
        }
    }

    #[test]
    fn members_keep_only_the_newest_incarnation() {
        let s = snap(vec![
            node("n2", 5, NodeStatus::Down, &[("addr", "127.0.0.1:2", 1)]),
            node(
                "n1",
                1,
                NodeStatus::Live,
                &[("zone", "a", 1), ("roles", "data,voter", 2)],
            ),
            node("n2", 9, NodeStatus::Live, &[("addr", "127.0.0.1:2", 1)]),
        ]);
        let m = members(&s);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].node_id.as_str(), m[0].zone.as_str()), ("n1", "a"));
        assert_eq!(m[0].roles, vec!["data", "voter"]);
        assert_eq!((m[1].generation, m[1].status), (9, NodeStatus::Live));
        assert_eq!(m[1].addr, "127.0.0.1:2");
    }

    #[test]
    fn diff_reports_status_keys_and_departures_but_not_heartbeats() {
        let a = snap(vec![
            node("n1", 1, NodeStatus::Live, &[("status", "active", 1)]),
            node("n2", 1, NodeStatus::Live, &[]),
        ]);
        let mut b = a.clone();
        b.nodes[0].heartbeat += 5; // a heartbeat is not a change
        assert!(diff(&a, &b).is_empty());

        b.nodes[0].keys.insert(
            "status".into(),
            KeyView {
                value: "leaving".into(),
                version: 2,
                deleted: false,
            },
        );
        b.nodes[1].status = NodeStatus::Down;
        b.nodes.push(node("n3", 1, NodeStatus::Joining, &[]));
        let changes = diff(&a, &b);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes.contains(&GossipChange::StatusChanged {
            node_id: "n2".into(),
            generation: 1,
            from: NodeStatus::Live,
            to: NodeStatus::Down
        }));
        assert_eq!(
            changes
                .iter()
                .find(|c| matches!(c, GossipChange::StatusChanged { .. }))
                .unwrap()
                .to_string(),
            "n2 (gen 1) DOWN: live -> down"
        );
        let back = diff(&b, &a);
        assert!(back.contains(&GossipChange::NodeForgotten {
            node_id: "n3".into(),
            generation: 1
        }));
    }
}
