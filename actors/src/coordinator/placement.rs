//! The placement planner: which nodes hold each shard of a new table.
//!
//! Pure and deterministic. For every shard, in order:
//! 1. its copies go, one at a time, to the candidate not yet chosen for it
//!    whose zone it does not use yet (when zones are set), then with the
//!    fewest copies, then the fewest primaries, then the smallest id;
//! 2. its primary is the chosen node with the fewest primaries;
//! 3. then primaries are moved between members of the new shards, along
//!    chains, until no node could give one to a node with two fewer.
//!
//! Load carries over from the tables already placed. Without zones, one table
//! placed on an empty cluster leaves every node's primary count and copy count
//! within one of each other; tables placed in sequence keep copies within one
//! and, when they have two copies or more, primaries within two (a new table
//! never moves an existing primary; single-copy tables can push primaries
//! three apart).
//! With zones, a shard's copies cover `min(replicas, zones)` zones. All of
//! this is property-tested below.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster_map::{ClusterMap, NodeId};

/// A node that may receive copies: live in gossip and active in the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node_id: NodeId,
    /// Empty when the node has no zone.
    pub zone: String,
}

/// Primaries and copies (primaries included) per node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    pub primaries: BTreeMap<NodeId, usize>,
    pub copies: BTreeMap<NodeId, usize>,
}

impl Load {
    /// The load the map already puts on each node.
    pub fn of_map(map: &ClusterMap) -> Self {
        let mut load = Load::default();
        for t in map.tables.values() {
            for s in &t.shards {
                *load
                    .primaries
                    .entry(s.replicas.primary.clone())
                    .or_default() += 1;
                for m in s.replicas.members() {
                    *load.copies.entry(m.clone()).or_default() += 1;
                }
            }
        }
        load
    }

    fn primaries(&self, n: &str) -> usize {
        self.primaries.get(n).copied().unwrap_or(0)
    }

    fn copies(&self, n: &str) -> usize {
        self.copies.get(n).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("the table wants {wanted} replicas but only {available} nodes can take them ({nodes}); start more nodes or lower --replicas")]
    NotEnoughNodes {
        wanted: usize,
        available: usize,
        nodes: String,
    },
}

/// Places `shards` shards of `replicas` copies each on `candidates`, updating
/// `load`. Returns one `(primary, backups)` per shard.
pub fn place(
    candidates: &[Candidate],
    load: &mut Load,
    shards: u32,
    replicas: usize,
) -> Result<Vec<(NodeId, Vec<NodeId>)>, PlacementError> {
    let mut nodes: Vec<&Candidate> = candidates.iter().collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    nodes.dedup_by(|a, b| a.node_id == b.node_id);
    if nodes.len() < replicas || replicas == 0 {
        return Err(PlacementError::NotEnoughNodes {
            wanted: replicas,
            available: nodes.len(),
            nodes: if nodes.is_empty() {
                "none".into()
            } else {
                nodes
                    .iter()
                    .map(|c| c.node_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    let mut out = Vec::with_capacity(shards as usize);
    for _ in 0..shards {
        let mut chosen: Vec<&Candidate> = Vec::with_capacity(replicas);
        let mut zones: BTreeSet<&str> = BTreeSet::new();
        while chosen.len() < replicas {
            let next = nodes
                .iter()
                .filter(|c| !chosen.iter().any(|x| x.node_id == c.node_id))
                .min_by_key(|c| {
                    (
                        !c.zone.is_empty() && zones.contains(c.zone.as_str()),
                        load.copies(&c.node_id),
                        load.primaries(&c.node_id),
                        &c.node_id,
                    )
                })
                .expect("enough candidates");
            zones.insert(&next.zone);
            chosen.push(next);
        }
        let primary_at = (0..chosen.len())
            .min_by_key(|&i| (load.primaries(&chosen[i].node_id), &chosen[i].node_id))
            .expect("at least one copy");
        let primary = chosen.remove(primary_at);
        *load.primaries.entry(primary.node_id.clone()).or_default() += 1;
        for c in chosen.iter().chain([&primary]) {
            *load.copies.entry(c.node_id.clone()).or_default() += 1;
        }
        out.push((
            primary.node_id.clone(),
            chosen.iter().map(|c| c.node_id.clone()).collect(),
        ));
    }
    balance_primaries(&mut out, load);
    Ok(out)
}

/// Moves primaries of the shards just placed between members of the same
/// shard (so copies do not move) until no node has two primaries more than
/// another that it can hand one to, directly or along a chain of shards
/// (an augmenting path). Each move lowers the sum of squared primary counts,
/// so this ends; the loop is bounded all the same.
fn balance_primaries(placed: &mut [(NodeId, Vec<NodeId>)], load: &mut Load) {
    let bound = placed.len() * (placed.len() + 1) + 1;
    for _ in 0..bound {
        let Some(path) = find_primary_move(placed, load) else {
            return;
        };
        let (from, to) = (
            path.first().unwrap().0.clone(),
            path.last().unwrap().1.clone(),
        );
        for (_, new_primary, shard) in &path {
            let (primary, backups) = &mut placed[*shard];
            let slot = backups
                .iter()
                .position(|b| b == new_primary)
                .expect("member");
            std::mem::swap(primary, &mut backups[slot]);
        }
        *load.primaries.get_mut(&from).expect("counted") -= 1;
        *load.primaries.entry(to).or_default() += 1;
    }
}

/// A chain of (current primary, member taking over, shard) from an
/// over-loaded node to a node with at least two fewer primaries.
fn find_primary_move(
    placed: &[(NodeId, Vec<NodeId>)],
    load: &Load,
) -> Option<Vec<(NodeId, NodeId, usize)>> {
    let mut starts: Vec<&NodeId> = placed.iter().map(|(p, _)| p).collect();
    starts.sort_by_key(|n| std::cmp::Reverse(load.primaries(n)));
    starts.dedup();
    for start in starts {
        let top = load.primaries(start);
        // Breadth-first over "u is primary of a shard where v is a backup".
        let mut came_from: BTreeMap<&NodeId, (&NodeId, usize)> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut seen = BTreeSet::from([start]);
        while let Some(u) = queue.pop_front() {
            for (i, (p, backups)) in placed.iter().enumerate() {
                if p != u {
                    continue;
                }
                for v in backups {
                    if !seen.insert(v) {
                        continue;
                    }
                    came_from.insert(v, (u, i));
                    if load.primaries(v) + 2 <= top {
                        let mut path = Vec::new();
                        let mut at = v;
                        while let Some((prev, shard)) = came_from.get(at) {
                            path.push(((*prev).clone(), at.clone(), *shard));
                            at = prev;
                        }
                        path.reverse();
                        return Some(path);
                    }
                    queue.push_back(v);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize, zones: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                node_id: format!("n{i}"),
                zone: if zones == 0 {
                    String::new()
                } else {
                    format!("z{}", i % zones)
                },
            })
            .collect()
    }

    fn spread(counts: &BTreeMap<NodeId, usize>, all: &[Candidate]) -> usize {
        let v: Vec<usize> = all
            .iter()
            .map(|c| counts.get(&c.node_id).copied().unwrap_or(0))
            .collect();
        v.iter().max().unwrap() - v.iter().min().unwrap()
    }

    #[test]
    fn too_few_nodes_is_a_clear_error() {
        let err = place(&nodes(2, 0), &mut Load::default(), 4, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the table wants 3 replicas but only 2 nodes can take them (n0, n1); start more nodes or lower --replicas"
        );
    }

    #[test]
    fn the_briefs_user_table_on_three_nodes() {
        let p = place(&nodes(3, 0), &mut Load::default(), 8, 3).unwrap();
        assert_eq!(p.len(), 8);
        for (primary, backups) in &p {
            assert_eq!(backups.len(), 2);
            assert!(!backups.contains(primary));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// One table on an empty cluster, without zones: copies on distinct
        /// nodes, and primaries and copies each balanced within one.
        #[test]
        fn one_table_is_balanced_within_one(
            n in 1usize..9,
            shards in 1u32..64,
            rf in 1usize..4,
        ) {
            let all = nodes(n, 0);
            let rf = rf.min(n);
            let mut load = Load::default();
            place(&all, &mut load, shards, rf).unwrap();
            prop_assert!(spread(&load.primaries, &all) <= 1, "primaries {:?}", load.primaries);
            prop_assert!(spread(&load.copies, &all) <= 1, "copies {:?}", load.copies);
        }

        /// Several tables placed one after another: copies stay on distinct
        /// nodes and balanced within one. Primaries stay within two: a new
        /// table only moves its own primaries, never an existing shard's
        /// (that is the rebalancer's job, with an epoch change). Tables with
        /// one copy are left out: their only copy is their primary, so
        /// balancing copies decides, and primaries can drift by three
        /// (found by this test: 6 nodes, tables of 33x2, 21x3, 21x1).
        #[test]
        fn tables_in_sequence_stay_balanced(
            n in 1usize..9,
            tables in proptest::collection::vec((1u32..40, 2usize..4), 1..5),
        ) {
            let all = nodes(n, 0);
            let mut load = Load::default();
            for (shards, rf) in tables {
                let rf = rf.min(n);
                let p = place(&all, &mut load, shards, rf).unwrap();
                prop_assert_eq!(p.len(), shards as usize);
                for (primary, backups) in &p {
                    let mut m: Vec<&String> = std::iter::once(primary).chain(backups).collect();
                    prop_assert_eq!(m.len(), rf);
                    m.sort();
                    m.dedup();
                    prop_assert_eq!(m.len(), rf, "two copies on one node");
                }
                prop_assert!(spread(&load.primaries, &all) <= 2, "primaries {:?}", load.primaries);
                prop_assert!(spread(&load.copies, &all) <= 1, "copies {:?}", load.copies);
            }
        }

        /// With zones, each shard's copies cover as many zones as they can.
        #[test]
        fn copies_spread_across_zones(
            n in 2usize..10,
            zones in 1usize..4,
            shards in 1u32..30,
            rf in 1usize..4,
        ) {
            let rf = rf.min(n);
            let all = nodes(n, zones);
            let zone_count = all.iter().map(|c| &c.zone).collect::<BTreeSet<_>>().len();
            let p = place(&all, &mut Load::default(), shards, rf).unwrap();
            for (primary, backups) in &p {
                let zones_used: BTreeSet<&str> = std::iter::once(primary)
                    .chain(backups)
                    .map(|id| all.iter().find(|c| &c.node_id == id).unwrap().zone.as_str())
                    .collect();
                prop_assert_eq!(zones_used.len(), rf.min(zone_count));
            }
        }
    }
}
