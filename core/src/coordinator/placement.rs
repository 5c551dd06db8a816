//! The placement planner: which nodes hold each shard of a new table.
//!
//! Pure and deterministic. For every shard, in order:
//! 1. its first copy goes to the candidate with the fewest copies, then the
//!    fewest primaries, then the smallest id;
//! 2. its other copies go, one at a time, to the candidate not yet chosen
//!    for it whose zone it does not use yet (when zones are set), then with
//!    the fewest copies, then the *most* primaries, then the smallest id;
//! 3. its primary is the chosen node with the fewest primaries, then the
//!    most copies, then the smallest id;
//! 4. then primaries are moved between members of the new shards, along
//!    chains, until no node could give one to a node with two fewer (this
//!    only ever fires on loads that rules 1-3 did not make even, see below:
//!    with zones, or after nodes came and went).
//!
//! Load carries over from the tables already placed; a new table never
//! moves an existing table's primary (the rebalancer does that, with an
//! epoch change). Call a load *even* when every node's primary count is
//! within one of every other's, its copy count too, and no node has more
//! primaries than another but fewer copies. Without zones, placing a shard
//! by rules 1-3 keeps an even load even, so tables placed one after another
//! on the same nodes from an empty cluster keep primaries within one and
//! copies within one, whatever their shard counts and copies per shard
//! (single-copy tables included). Why, with `P` the nodes with the higher
//! primary count and `Q` those with the higher copy count (each empty when
//! all counts are equal; evenness says one contains the other), for a shard
//! of `r` copies:
//! - at least `r` nodes outside `Q`: all copies go there. The node of rule 1
//!   is outside `P` (if `P` is in `Q`, every node outside `Q` is; otherwise
//!   the nodes outside `P` are all outside `Q`, and it has the fewest
//!   primaries among those), so the primary, at the fewest primaries, is
//!   outside `P`. If `P` is in `Q` it stays so. Otherwise rule 2 takes the
//!   other copies from `P` outside `Q` first: either all come from there
//!   (the new `Q` is then in the new `P`) or all of those are taken (the
//!   new `P` is then in the new `Q`);
//! - fewer: every node outside `Q` gets a copy and the `t` left go to nodes
//!   of `Q`, those of `P` first; these `t` are the new `Q`. If `Q` is in
//!   `P`, so is the new `Q`, and the primary is one of the nodes outside
//!   `P`, which all got a copy. If `P` is in `Q`: if `t <= |P|` the new `Q`
//!   is in `P`; otherwise it contains `P` and nodes outside `P`, which,
//!   having more copies than the other members, take the primary (rule 3),
//!   and the new `P` is in the new `Q`.
//!
//! (A set that grows to every node empties: the counts are equal again.)
//!
//! Tie-breaking the other way in rule 2 (toward fewer primaries) is what let
//! primaries drift three apart: the nodes left behind on copies were then
//! the ones with more primaries, so a later shard that could only use them
//! had to make one of them primary. The tests below check the argument on
//! every even load of up to seven nodes, and long sequences of tables.
//! With zones, a shard's copies cover `min(replicas, zones)` zones; balance
//! is then best effort.

use std::cmp::Reverse;
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
            // Rules 1 and 2 of the module doc: among nodes tied on copies,
            // the first copy goes to the fewest primaries, the others to the
            // most.
            let first = chosen.is_empty();
            let next = nodes
                .iter()
                .filter(|c| !chosen.iter().any(|x| x.node_id == c.node_id))
                .min_by_key(|c| {
                    let primaries = load.primaries(&c.node_id);
                    (
                        !c.zone.is_empty() && zones.contains(c.zone.as_str()),
                        load.copies(&c.node_id),
                        if first {
                            primaries
                        } else {
                            usize::MAX - primaries
                        },
                        &c.node_id,
                    )
                })
                .expect("enough candidates");
            zones.insert(&next.zone);
            chosen.push(next);
        }
        let primary_at = (0..chosen.len())
            .min_by_key(|&i| {
                let id = &chosen[i].node_id;
                (load.primaries(id), Reverse(load.copies(id)), id)
            })
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
    // The fewest primaries any member has: no chain ends below it.
    let floor = placed
        .iter()
        .flat_map(|(p, backups)| std::iter::once(p).chain(backups))
        .map(|n| load.primaries(n))
        .min()?;
    let mut starts: Vec<&NodeId> = placed.iter().map(|(p, _)| p).collect();
    starts.sort_by_key(|n| Reverse(load.primaries(n)));
    let mut listed = BTreeSet::new();
    starts.retain(|n| listed.insert(*n));
    for start in starts {
        let top = load.primaries(start);
        if top < floor + 2 {
            // Nor below any later start, which has no more primaries.
            break;
        }
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

    /// Why `load` is not even on `all` (see the module doc), if it is not.
    fn uneven(load: &Load, all: &[Candidate]) -> Option<String> {
        if spread(&load.primaries, all) > 1 || spread(&load.copies, all) > 1 {
            return Some(format!("not within one: {load:?}"));
        }
        for a in all {
            for b in all {
                let (a, b) = (&a.node_id, &b.node_id);
                if load.primaries(a) > load.primaries(b) && load.copies(a) < load.copies(b) {
                    return Some(format!(
                        "{a} has more primaries than {b} but fewer copies: {load:?}"
                    ));
                }
            }
        }
        None
    }

    /// Places `tables` one after another on `all`, checking each placement
    /// and that the load stays even; returns the first problem.
    fn place_in_sequence(all: &[Candidate], tables: &[(u32, usize)]) -> Result<Load, String> {
        let mut load = Load::default();
        for &(shards, rf) in tables {
            let rf = rf.min(all.len());
            let p = place(all, &mut load, shards, rf).map_err(|e| e.to_string())?;
            if p.len() != shards as usize {
                return Err(format!("{} shards placed, not {shards}", p.len()));
            }
            for (primary, backups) in &p {
                let mut m: Vec<&String> = std::iter::once(primary).chain(backups).collect();
                m.sort();
                m.dedup();
                if m.len() != rf || backups.len() + 1 != rf {
                    return Err(format!(
                        "shard {primary} {backups:?}: not {rf} distinct copies"
                    ));
                }
            }
            if let Some(why) = uneven(&load, all) {
                return Err(format!("after {shards}x{rf}: {why}"));
            }
        }
        Ok(load)
    }

    /// The cases proptest found against the earlier tie-breaking (rule 2
    /// toward fewer primaries): primaries three apart after tables of two
    /// copies (the first ended at n0..n7 = 11, 12, 10, 10, 11, 11, 9, 10), and
    /// with a single-copy table.
    #[test]
    fn the_counterexamples_found_earlier_stay_even() {
        for (n, tables) in [
            (8, vec![(37, 2), (18, 2), (19, 2), (10, 2)]),
            (8, vec![(26, 2), (22, 2), (4, 2)]),
            (6, vec![(33, 2), (21, 3), (21, 1), (1, 1)]),
        ] {
            let load = place_in_sequence(&nodes(n, 0), &tables).unwrap();
            assert_eq!(
                load.primaries.values().sum::<usize>(),
                tables.iter().map(|t| t.0 as usize).sum::<usize>()
            );
        }
    }

    /// The induction step of the module doc's argument, on every even load
    /// of up to seven nodes (as offsets above some base counts) and every
    /// number of copies: one more shard leaves the load even.
    #[test]
    fn one_shard_keeps_every_small_even_load_even() {
        let mut checked = 0;
        for n in 1..=7usize {
            let all = nodes(n, 0);
            for code in 0..4usize.pow(n as u32) {
                let mut load = Load::default();
                for (i, c) in all.iter().enumerate() {
                    let bits = code >> (2 * i);
                    load.primaries.insert(c.node_id.clone(), 5 + (bits & 1));
                    load.copies.insert(c.node_id.clone(), 9 + ((bits >> 1) & 1));
                }
                if uneven(&load, &all).is_some() {
                    continue;
                }
                for rf in 1..=n {
                    let mut after = load.clone();
                    place(&all, &mut after, 1, rf).unwrap();
                    if let Some(why) = uneven(&after, &all) {
                        panic!("one shard of {rf} copies on {load:?}: {why}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
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

        /// Several tables of two or three copies placed one after another,
        /// without zones: copies on distinct nodes, and the load stays even
        /// (module doc): primaries within one, copies within one. A new
        /// table never moves an existing shard's primary. (Single-copy
        /// tables are in the next test; this one keeps its inputs so that
        /// the saved regression seeds still replay the cases they found.)
        #[test]
        fn tables_in_sequence_stay_balanced(
            n in 1usize..9,
            tables in proptest::collection::vec((1u32..40, 2usize..4), 1..5),
        ) {
            let all = nodes(n, 0);
            if let Err(why) = place_in_sequence(&all, &tables) {
                prop_assert!(false, "{}", why);
            }
        }

        /// The same on more nodes, with longer sequences, single-copy tables
        /// and more copies.
        #[test]
        fn long_sequences_on_more_nodes_stay_even(
            n in 1usize..17,
            tables in proptest::collection::vec((1u32..80, 1usize..6), 1..12),
        ) {
            let all = nodes(n, 0);
            if let Err(why) = place_in_sequence(&all, &tables) {
                prop_assert!(false, "{}", why);
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
