//! Health: what gossip says about the nodes of the map and their copies,
//! turned into the [`Health`] the failover and rebalance planners decide on.
//!
//! - a node of the map is **live** when the newest incarnation gossip knows
//!   of it is live (the coordinator's own node always is);
//! - it is **down** when gossip says down or left, or when it has been
//!   neither live nor known down (joining, or unknown to this leader's
//!   gossip, e.g. it died before this leader started) for [`NOT_LIVE_MS`];
//! - a live node whose shard store cannot write (its `storage` key says
//!   `failed: ...`: disk full, I/O errors) counts as down for its copies:
//!   they fail over like a dead node's, and come back once it says `ok`;
//! - a copy whose node's gossip says it `failed` is down, for its shard
//!   only (`crate::copy_gossip`: one value for all of a node's copies);
//! - a learner that gossip says is `ready` has caught up;
//! - primaries' reports of silent backups go through the
//!   [`SilenceTracker`], and the nodes they show cut off become suspect.
//!
//! Pure: the caller passes the gossip snapshot, the map, the time, and the
//! [`HealthMemory`] kept between coordinator rounds.

use std::collections::{BTreeMap, HashMap};

use crate::cluster_map::{ClusterMap, NodeId, NodeState};
use crate::coordinator::failover::Health;
use crate::coordinator::silence::{cut_off_nodes, Reports, Silence, SilenceTracker};
use crate::copy_gossip::node_copies;
use crate::replication::Millis;
use crate::shard::LocalRole;
use crate::view::{
    storage_failure, GossipSnapshot, NodeStatus, NodeView, KEY_ADDR, KEY_STORAGE, KEY_ZONE,
};

/// A node neither live nor known down counts as down after this long.
pub const NOT_LIVE_MS: Millis = 10_000;

/// Gossip key: the `--bootstrap-expect` a node was started with.
pub const KEY_BOOTSTRAP_EXPECT: &str = "bootstrap_expect";

/// What health derivation remembers between coordinator rounds.
#[derive(Debug, Default)]
pub struct HealthMemory {
    /// When each node of the map was first seen not live.
    pub not_live_since: HashMap<NodeId, Millis>,
    /// Primaries' reports of silent backups, confirmed over rounds.
    pub silence: SilenceTracker,
}

/// A live node as gossip shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePeer {
    pub node_id: NodeId,
    /// Where peers and clients reach it (its gossip address if it did not
    /// publish one).
    pub addr: String,
    pub zone: String,
    /// The `--bootstrap-expect` it was started with, if it published one.
    pub bootstrap_expect: Option<usize>,
}

/// The newest incarnation of each node id in a snapshot.
pub fn newest_incarnations(snapshot: &GossipSnapshot) -> BTreeMap<&str, &NodeView> {
    let mut newest: BTreeMap<&str, &NodeView> = BTreeMap::new();
    for n in &snapshot.nodes {
        let slot = newest.entry(&n.node_id).or_insert(n);
        if n.generation > slot.generation {
            *slot = n;
        }
    }
    newest
}

/// The live nodes (newest incarnation of each id) in a snapshot.
pub fn live_peers(snapshot: &GossipSnapshot) -> Vec<LivePeer> {
    newest_incarnations(snapshot)
        .into_values()
        .filter(|n| n.status == NodeStatus::Live)
        .map(|n| {
            let key = |k: &str| {
                n.keys
                    .get(k)
                    .filter(|v| !v.deleted)
                    .map(|v| v.value.clone())
            };
            LivePeer {
                node_id: n.node_id.clone(),
                addr: key(KEY_ADDR).unwrap_or_else(|| n.gossip_addr.to_string()),
                zone: key(KEY_ZONE).unwrap_or_default(),
                bootstrap_expect: key(KEY_BOOTSTRAP_EXPECT).and_then(|v| v.parse().ok()),
            }
        })
        .collect()
}

/// Derives the planners' [`Health`] as node `me` sees the cluster at `now`.
pub fn derive(
    me: &str,
    snapshot: &GossipSnapshot,
    map: &ClusterMap,
    memory: &mut HealthMemory,
    now: Millis,
) -> Health {
    let newest = newest_incarnations(snapshot);
    let mut health = Health::default();
    memory
        .not_live_since
        .retain(|n, _| map.nodes.contains_key(n));
    for (id, entry) in &map.nodes {
        if entry.state == NodeState::Removed {
            continue;
        }
        let status = if id == me {
            Some(NodeStatus::Live)
        } else {
            newest.get(id.as_str()).map(|n| n.status)
        };
        let unwritable = newest
            .get(id.as_str())
            .and_then(|n| n.key(KEY_STORAGE))
            .and_then(storage_failure)
            .is_some();
        match status {
            Some(NodeStatus::Live) if unwritable => {
                memory.not_live_since.remove(id);
                health.down.insert(id.clone());
            }
            Some(NodeStatus::Live) => {
                memory.not_live_since.remove(id);
                health.live.insert(id.clone());
            }
            Some(NodeStatus::Down | NodeStatus::Left) => {
                health.down.insert(id.clone());
            }
            Some(NodeStatus::Joining) | None => {
                let since = *memory.not_live_since.entry(id.clone()).or_insert(now);
                if now.saturating_sub(since) >= NOT_LIVE_MS {
                    health.down.insert(id.clone());
                }
            }
        }
    }
    let mut silent_now: Reports = Vec::new();
    for n in newest.values().filter(|n| n.status == NodeStatus::Live) {
        let keys = n.keys.iter().filter(|(_, v)| !v.deleted);
        let groups = node_copies(keys.map(|(k, v)| (k.as_str(), v.value.as_str())));
        for group in groups {
            let (table, copy) = (group.table, group.state);
            // Most copies have nothing to report: skip them whole.
            let interesting = copy.failed
                || (copy.role == LocalRole::Learner && copy.ready)
                || (copy.role == LocalRole::Primary && !copy.silent.is_empty());
            if !interesting {
                continue;
            }
            for index in group.shards {
                if copy.failed {
                    health
                        .failed
                        .insert((table.clone(), index, n.node_id.clone()));
                    continue;
                }
                match copy.role {
                    LocalRole::Learner if copy.ready => {
                        health
                            .ready
                            .insert((table.clone(), index, n.node_id.clone(), copy.epoch));
                    }
                    LocalRole::Primary if !copy.silent.is_empty() => {
                        silent_now.push((
                            (table.clone(), index),
                            Silence {
                                primary: n.node_id.clone(),
                                epoch: copy.epoch,
                                silent: copy.silent.iter().cloned().collect(),
                            },
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    health.silent = memory.silence.observe(now, silent_now);
    health.namings = memory.silence.namings(now);
    for deaf in cut_off_nodes(map, &health.silent, &health.namings) {
        memory.silence.suspect(&deaf, now);
    }
    health.suspect = memory.silence.suspects(now);
    health
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::MapCommand;
    use crate::view::KeyView;

    fn node(id: &str, generation: u64, status: NodeStatus, keys: &[(&str, &str)]) -> NodeView {
        NodeView {
            node_id: id.into(),
            generation,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            status,
            heartbeat: 0,
            max_version: 0,
            keys: keys
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        KeyView {
                            value: (*v).to_owned(),
                            version: 1,
                            deleted: false,
                        },
                    )
                })
                .collect(),
        }
    }

    fn map_of(nodes: &[&str]) -> ClusterMap {
        let mut map = ClusterMap::default();
        for n in nodes {
            map.apply(&MapCommand::RegisterNode {
                node_id: (*n).into(),
                addr: "127.0.0.1:1".into(),
                zone: String::new(),
            })
            .unwrap();
        }
        map
    }

    #[test]
    fn newest_incarnation_decides_and_unknown_nodes_go_down_after_the_limit() {
        let snapshot = GossipSnapshot {
            observer: "n1".into(),
            cluster_id: "c".into(),
            seeds: vec![],
            nodes: vec![
                node("n2", 1, NodeStatus::Live, &[]),
                node("n2", 2, NodeStatus::Down, &[]),
                node("n3", 1, NodeStatus::Joining, &[]),
            ],
        };
        let map = map_of(&["n1", "n2", "n3", "n4"]);
        let mut memory = HealthMemory::default();
        let h = derive("n1", &snapshot, &map, &mut memory, 1_000);
        assert!(h.live.contains("n1"), "the coordinator's own node is live");
        assert!(h.down.contains("n2"), "the newest incarnation is down");
        assert!(!h.down.contains("n3") && !h.down.contains("n4"));
        let h = derive("n1", &snapshot, &map, &mut memory, 1_000 + NOT_LIVE_MS - 1);
        assert!(!h.down.contains("n3"));
        let h = derive("n1", &snapshot, &map, &mut memory, 1_000 + NOT_LIVE_MS);
        assert!(h.down.contains("n3") && h.down.contains("n4"));
    }

    #[test]
    fn a_live_node_whose_store_cannot_write_is_down_for_its_copies() {
        let snapshot = GossipSnapshot {
            observer: "n1".into(),
            cluster_id: "c".into(),
            seeds: vec![],
            nodes: vec![
                node("n1", 1, NodeStatus::Live, &[(KEY_STORAGE, "ok")]),
                node(
                    "n2",
                    1,
                    NodeStatus::Live,
                    &[(KEY_STORAGE, "failed: the LMDB map is full")],
                ),
                node("n3", 1, NodeStatus::Live, &[]),
            ],
        };
        let map = map_of(&["n1", "n2", "n3"]);
        let h = derive("n1", &snapshot, &map, &mut HealthMemory::default(), 1_000);
        assert!(h.down.contains("n2") && !h.live.contains("n2"));
        assert!(h.live.contains("n1") && h.live.contains("n3"));
        assert!(h.down.len() == 1);
    }

    #[test]
    fn ready_learners_and_silent_reports_are_read_from_copy_keys() {
        let snapshot = GossipSnapshot {
            observer: "n1".into(),
            cluster_id: "c".into(),
            seeds: vec![],
            nodes: vec![
                node(
                    "n2",
                    1,
                    NodeStatus::Live,
                    &[("copies:0", "v1 t=l4r:3;b4f:5"), ("copies:1", "v1 u=l4c:0")],
                ),
                node(
                    "n3",
                    1,
                    NodeStatus::Live,
                    &[("copies:0", "v1 t=p2/n2:0;b2:1"), ("addr", "x")],
                ),
            ],
        };
        let map = map_of(&["n1", "n2", "n3"]);
        let mut memory = HealthMemory::default();
        let h = derive("n1", &snapshot, &map, &mut memory, 0);
        assert!(h.ready.contains(&("t".into(), 3, "n2".into(), 4)));
        assert_eq!(h.ready.len(), 1, "a learner still copying is not ready");
        assert!(h.failed.contains(&("t".into(), 5, "n2".into())));
        assert_eq!(h.failed.len(), 1);
        assert!(h.silent.is_empty(), "a report counts once confirmed");
        let h = derive(
            "n1",
            &snapshot,
            &map,
            &mut memory,
            crate::coordinator::silence::CONFIRM_MS,
        );
        assert_eq!(h.silent[&("t".to_owned(), 0)].primary, "n3");
    }

    #[test]
    fn live_peers_read_address_zone_and_bootstrap_expect() {
        let snapshot = GossipSnapshot {
            observer: "n1".into(),
            cluster_id: "c".into(),
            seeds: vec![],
            nodes: vec![
                node(
                    "n1",
                    1,
                    NodeStatus::Live,
                    &[
                        ("addr", "10.0.0.1:7400"),
                        ("zone", "a"),
                        (KEY_BOOTSTRAP_EXPECT, "3"),
                    ],
                ),
                node("n2", 1, NodeStatus::Down, &[]),
            ],
        };
        let peers = live_peers(&snapshot);
        assert_eq!(
            peers,
            vec![LivePeer {
                node_id: "n1".into(),
                addr: "10.0.0.1:7400".into(),
                zone: "a".into(),
                bootstrap_expect: Some(3),
            }]
        );
    }
}
