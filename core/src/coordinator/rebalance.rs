//! The rebalancer: spreads copies and primaries over the nodes, so a node
//! that joins a healthy cluster gets its share. Pure and deterministic, like
//! the failover planner; the coordinator runs it only in a round where the
//! failover planner had nothing to do, and commits what it returns.
//!
//! It acts only on a **settled** cluster, and does nothing at all otherwise:
//! every shard has exactly its replication factor of members; every holder
//! of a copy is live and active (none down, joining or draining); and the
//! only learners are those of moves already in flight. Healing always goes
//! first.
//!
//! The nodes it balances over are the *active, live* ones. A node's load
//! counts the moves in flight as done (the learner's node has the copy, the
//! node it replaces does not), so a round never plans past what is coming.
//!
//! Rules, in order, within a budget of `max_moves` changes in flight
//! cluster-wide (the moves already in the map count; at most one change per
//! shard per round):
//! 1. **copies**: while some node holds at least two more copies than
//!    another, a backup copy moves from the fuller node to the emptier one,
//!    which must hold no copy of that shard, as the operator's `move-shard`
//!    does (a learner first, swapped in by the failover planner once caught
//!    up, then the old copy dropped). A move never lowers the number of zones
//!    a shard's copies cover. Among candidates: the move that raises it most,
//!    then between the two nodes furthest apart, then the most loaded source,
//!    least loaded target, table and shard order. If the only movable copies
//!    are primaries, one such shard's primary is first handed over (cleanly,
//!    as `promote` does) to the backup leading the fewest shards, and the
//!    round ends; a later round moves the copy;
//!
//!    1b. **halves apart**: with nothing to do by rule 1, a backup copy of
//!    a shard split off another and still on exactly its parent's nodes
//!    moves to the least loaded node holding neither half, if that node
//!    holds fewer copies than the source (the primary's copy, after a
//!    handover, when no backup's can) (elastic tables: a split spreads load
//!    only once its halves are apart);
//! 2. **primaries**: with no move in flight and nothing left to do by rule 1,
//!    while a node leads at least two more shards than one of its backups
//!    there, it hands one over to that backup (a clean handover, as
//!    `promote` does), most-leading node first, to the backup leading the
//!    fewest.
//!
//! The two shards of a merge under way (`cluster_map::Merging`) are left
//! alone by every rule: the merge places their copies
//! (`coordinator::merge`).
//!
//! Every rule 1 move strictly lowers the sum of squares of the copy counts,
//! every rule 2 handover that of the primary counts (leaving copies alone),
//! and a rule 1 handover only happens when it makes a rule 1 move possible,
//! so repeated planning converges: a balanced map yields nothing (no
//! flapping). `max_moves = 0` disables rebalancing. Copies whose only possible source is a
//! single-copy shard's primary cannot move (there is no backup to hand the
//! primary to), so single-copy tables may stay unbalanced.
//!
//! Each change carries `why = "rebalance: ..."`, and becomes a map event that
//! `tstore admin events` shows.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster_map::{ClusterMap, NodeId, NodeState, ReplicaSet};
use crate::coordinator::failover::{manual, Change, Health, ManualOp};

/// Why the cluster is not settled enough to rebalance, if it is not.
pub fn unsettled(map: &ClusterMap, health: &Health) -> Option<String> {
    for t in map.tables.values() {
        for s in &t.shards {
            let r = &s.replicas;
            let name = format!("{}/{}", t.spec.name, s.index);
            let members = r.members().count();
            if members != t.spec.replicas as usize {
                return Some(format!(
                    "{name} has {members} of {} copies",
                    t.spec.replicas
                ));
            }
            if let Some(l) = r
                .learners
                .iter()
                .find(|l| !r.moves.iter().any(|(x, _)| x == *l))
            {
                return Some(format!("{name}: learner {l} is being built"));
            }
            for h in r.holders() {
                if !health.live.contains(h) || health.down.contains(h) {
                    return Some(format!("{name}: {h} is not live"));
                }
                match map.nodes.get(h).map(|e| e.state) {
                    Some(NodeState::Active) => {}
                    Some(state) => return Some(format!("{name}: {h} is {state}")),
                    None => return Some(format!("{name}: {h} is not in the map")),
                }
            }
        }
    }
    None
}

/// The rebalancing changes to commit now (empty when balanced, unsettled, or
/// `max_moves` is 0).
///
/// Tables with a placement rule are left out: their copies stay where the
/// operator put them (the failover planner keeps the rule), they count in
/// no node's load, and one of their shards running short (a named node is
/// down) does not hold back rebalancing the other tables.
pub fn plan(map: &ClusterMap, health: &Health, max_moves: usize) -> Vec<Change> {
    if map.tables.values().any(|t| t.placement.is_some()) {
        let mut free = map.clone();
        free.tables.retain(|_, t| t.placement.is_none());
        return plan_free(&free, health, max_moves);
    }
    plan_free(map, health, max_moves)
}

fn plan_free(map: &ClusterMap, health: &Health, max_moves: usize) -> Vec<Change> {
    if max_moves == 0 || unsettled(map, health).is_some() {
        return vec![];
    }
    let in_flight: usize = shards(map).map(|(_, _, r)| r.moves.len()).sum();
    let mut budget = max_moves.saturating_sub(in_flight);
    if budget == 0 {
        return vec![];
    }
    let nodes: BTreeSet<NodeId> = map
        .nodes
        .iter()
        .filter(|(id, e)| e.state == NodeState::Active && health.live.contains(*id))
        .map(|(id, _)| id.clone())
        .collect();
    if nodes.len() < 2 {
        return vec![];
    }
    let mut plan = Planner {
        map,
        health,
        nodes,
        touched: BTreeSet::new(),
        out: vec![],
    };
    plan.copies(&mut budget);
    if plan.out.is_empty() && in_flight == 0 {
        plan.primaries(&mut budget);
    }
    plan.out
}

/// Every shard: (table, index, replica set).
fn shards(map: &ClusterMap) -> impl Iterator<Item = (&str, u32, &ReplicaSet)> {
    map.tables.values().flat_map(|t| {
        t.shards
            .iter()
            .map(move |s| (t.spec.name.as_str(), s.index, &s.replicas))
    })
}

/// A copy to move (rule 1).
struct CopyMove {
    table: String,
    shard: u32,
    from: NodeId,
    to: NodeId,
    /// `from` leads the shard: it hands the primary over first.
    handover_first: bool,
}

struct Planner<'a> {
    map: &'a ClusterMap,
    health: &'a Health,
    /// Active, live nodes.
    nodes: BTreeSet<NodeId>,
    /// Shards changed this round.
    touched: BTreeSet<(String, u32)>,
    out: Vec<Change>,
}

/// A count per node, over `nodes` (zero for a node with none).
fn counts(nodes: &BTreeSet<NodeId>) -> BTreeMap<NodeId, usize> {
    nodes.iter().map(|n| (n.clone(), 0)).collect()
}

/// Nodes ordered by count: most first, ties by id.
fn most_first(c: &BTreeMap<NodeId, usize>) -> Vec<NodeId> {
    let mut v: Vec<(&NodeId, usize)> = c.iter().map(|(n, k)| (n, *k)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().map(|(n, _)| n.clone()).collect()
}

impl Planner<'_> {
    fn zone(&self, n: &str) -> &str {
        self.map.nodes.get(n).map_or("", |e| e.zone.as_str())
    }

    fn zones<'b>(&self, members: impl Iterator<Item = &'b NodeId>) -> usize {
        members
            .map(|m| self.zone(m))
            .filter(|z| !z.is_empty())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// A shard this round may change: none under way, and not one of a
    /// merge (its copies are placed for the merge).
    fn free(&self, table: &str, shard: u32, r: &ReplicaSet) -> bool {
        r.learners.is_empty()
            && !self.touched.contains(&(table.to_owned(), shard))
            && !self.map.tables.get(table).is_some_and(|t| t.merging(shard))
    }

    fn push(&mut self, table: &str, shard: u32, op: ManualOp, why: String) {
        // The same change the operator's command makes; the checks cannot
        // fail here (the cluster is settled, the nodes are live and active).
        match manual(self.map, table, shard, &op, self.health) {
            Ok(mut c) => {
                c.why = why;
                self.touched.insert((table.to_owned(), shard));
                self.out.push(c);
            }
            Err(e) => debug_assert!(false, "rebalance planned an invalid {op:?}: {e}"),
        }
    }

    /// Copies per node, counting moves in flight as done.
    fn copy_load(&self) -> BTreeMap<NodeId, usize> {
        let mut load = counts(&self.nodes);
        for (_, _, r) in shards(self.map) {
            let leaving: Vec<&NodeId> = r.moves.iter().map(|(_, m)| m).collect();
            for h in r.holders().filter(|h| !leaving.contains(h)) {
                if let Some(k) = load.get_mut(h) {
                    *k += 1;
                }
            }
        }
        load
    }

    fn primary_load(&self) -> BTreeMap<NodeId, usize> {
        let mut load = counts(&self.nodes);
        for (_, _, r) in shards(self.map) {
            if let Some(k) = load.get_mut(&r.primary) {
                *k += 1;
            }
        }
        load
    }

    /// Rule 1, then rule 1b.
    fn copies(&mut self, budget: &mut usize) {
        let mut load = self.copy_load();
        while *budget > 0 {
            let (
                CopyMove {
                    table,
                    shard,
                    from,
                    to,
                    handover_first,
                },
                why,
            ) = match self.best_copy_move(&load) {
                Some(m) => {
                    let why = format!(
                        "rebalance: {from} holds {} copies, {to} holds {}",
                        load[&m.from],
                        load[&m.to],
                        from = m.from,
                        to = m.to
                    );
                    (m, why)
                }
                None => match self.sibling_move(&load) {
                    Some((m, parent)) => {
                        let why = format!(
                            "rebalance: {}/{} was split off {}/{parent} and sits on the same nodes; {} holds {} copies, {} holds {}",
                            m.table, m.shard, m.table, m.from, load[&m.from], m.to, load[&m.to]
                        );
                        (m, why)
                    }
                    None => return,
                },
            };
            *budget -= 1;
            if handover_first {
                let r = &self.map.tables[&table].shards[shard as usize].replicas;
                let primaries = self.primary_load();
                let Some(b) = r
                    .backups
                    .iter()
                    .filter(|b| self.nodes.contains(*b))
                    .min_by_key(|b| (primaries.get(*b).copied().unwrap_or(0), (*b).clone()))
                    .cloned()
                else {
                    return;
                };
                self.push(
                    &table,
                    shard,
                    ManualOp::Promote { node: b },
                    format!("{why}; {from} leads this shard, so it hands over first"),
                );
                // The copy moves in a later round; nothing else changed.
                return;
            } else {
                *load.get_mut(&from).expect("a balanced node") -= 1;
                *load.get_mut(&to).expect("a balanced node") += 1;
                self.push(&table, shard, ManualOp::Move { from, to }, why);
            }
        }
    }

    /// Rule 1b, **halves apart**: a shard split off another (elastic
    /// tables) starts on its parent's nodes, so the split spreads nothing
    /// until one half moves. With rule 1 satisfied, a backup copy of such a
    /// child moves to the least loaded node holding neither half, if that
    /// node holds fewer copies than the source (so the sum of squares of
    /// the copy counts does not grow, and rule 1 never moves it back).
    /// Returns the move and the parent's index.
    fn sibling_move(&self, load: &BTreeMap<NodeId, usize>) -> Option<(CopyMove, u32)> {
        for t in self.map.tables.values() {
            for s in &t.shards {
                let Some(parent) = s
                    .origin
                    .as_ref()
                    .and_then(|o| t.shards.get(o.parent as usize))
                else {
                    continue;
                };
                let (r, pr) = (&s.replicas, &parent.replicas);
                let holders: BTreeSet<&NodeId> = r.holders().collect();
                if holders != pr.holders().collect::<BTreeSet<_>>()
                    || !self.free(&t.spec.name, s.index, r)
                {
                    continue;
                }
                let target = load
                    .iter()
                    .filter(|(n, _)| !holders.contains(n))
                    .min_by_key(|(n, k)| (**k, (*n).clone()));
                let Some((to, to_load)) = target else {
                    continue;
                };
                let fuller = |n: &NodeId| load.get(n).is_some_and(|k| k > to_load);
                let from = r
                    .backups
                    .iter()
                    .filter(|b| fuller(b))
                    .max_by_key(|b| (load[*b], std::cmp::Reverse((*b).clone())));
                // Else the primary's copy, once it has handed over.
                let (from, handover_first) = match from {
                    Some(b) => (b, false),
                    None if fuller(&r.primary) && !r.backups.is_empty() => (&r.primary, true),
                    None => continue,
                };
                return Some((
                    CopyMove {
                        table: t.spec.name.clone(),
                        shard: s.index,
                        from: from.clone(),
                        to: to.clone(),
                        handover_first,
                    },
                    parent.index,
                ));
            }
        }
        None
    }

    /// The move of rule 1 to make next. Among the pairs of
    /// nodes two or more copies apart, the move that adds the most zones to
    /// its shard, then between the nodes furthest apart, then the first in
    /// (most loaded source, least loaded target, table, shard) order.
    fn best_copy_move(&self, load: &BTreeMap<NodeId, usize>) -> Option<CopyMove> {
        let sources = most_first(load);
        let mut targets = sources.clone();
        targets.reverse();
        // A backup copy that can move, else a primary's that can after a
        // handover (only if no backup copy anywhere can).
        let mut best: Option<((usize, usize), CopyMove)> = None;
        let mut fallback = None;
        let copy_move = |table: &str, shard, from: &NodeId, to: &NodeId, handover_first| CopyMove {
            table: table.to_owned(),
            shard,
            from: from.clone(),
            to: to.clone(),
            handover_first,
        };
        for from in &sources {
            for to in &targets {
                if load[from] <= load[to] + 1 {
                    continue;
                }
                let apart = load[from] - load[to];
                for (table, shard, r) in shards(self.map) {
                    if !self.free(table, shard, r)
                        || !r.members().any(|m| m == from)
                        || r.holders().any(|h| h == to)
                    {
                        continue;
                    }
                    let before = self.zones(r.members());
                    let after = self.zones(
                        r.members()
                            .filter(|m| *m != from)
                            .chain(std::iter::once(to)),
                    );
                    if after < before {
                        continue;
                    }
                    if r.primary == *from {
                        let has_backup = r.backups.iter().any(|b| self.nodes.contains(b));
                        if has_backup && fallback.is_none() {
                            fallback = Some(copy_move(table, shard, from, to, true));
                        }
                        continue;
                    }
                    let score = (after - before, apart);
                    if best.as_ref().is_none_or(|(s, _)| score > *s) {
                        best = Some((score, copy_move(table, shard, from, to, false)));
                    }
                }
            }
        }
        best.map(|(_, m)| m).or(fallback)
    }

    /// Rule 2.
    fn primaries(&mut self, budget: &mut usize) {
        let mut load = self.primary_load();
        while *budget > 0 {
            let mut pick: Option<(String, u32, NodeId, NodeId)> = None;
            'from: for from in most_first(&load) {
                let mut best: Option<(usize, &str, u32, &NodeId)> = None;
                for (table, shard, r) in shards(self.map) {
                    if r.primary != from || !self.free(table, shard, r) {
                        continue;
                    }
                    for b in r.backups.iter().filter(|b| self.nodes.contains(*b)) {
                        let k = load[b];
                        if load[&from] > k + 1 && best.is_none_or(|(x, _, _, y)| (k, b) < (x, y)) {
                            best = Some((k, table, shard, b));
                        }
                    }
                }
                if let Some((_, table, shard, b)) = best {
                    pick = Some((table.to_owned(), shard, from.clone(), b.clone()));
                    break 'from;
                }
            }
            let Some((table, shard, from, to)) = pick else {
                return;
            };
            let why = format!(
                "rebalance: {from} leads {} shards, {to} leads {}",
                load[&from], load[&to]
            );
            *budget -= 1;
            *load.get_mut(&from).expect("a balanced node") -= 1;
            *load.get_mut(&to).expect("a balanced node") += 1;
            self.push(&table, shard, ManualOp::Promote { node: to }, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::{MapCommand, Sharding, TableSpec};
    use crate::coordinator::failover;
    use crate::coordinator::placement::{self, Candidate, Load};
    use proptest::prelude::*;

    fn register(m: &mut ClusterMap, id: &str, zone: &str) {
        m.apply(&MapCommand::RegisterNode {
            node_id: id.into(),
            addr: String::new(),
            zone: zone.into(),
        })
        .unwrap();
    }

    /// A table placed by the placement planner on `zones.len()` nodes.
    fn cluster(zones: &[&str], tables: &[(u32, usize)]) -> ClusterMap {
        let mut m = ClusterMap::default();
        let mut cands = vec![];
        for (i, z) in zones.iter().enumerate() {
            let id = format!("n{}", i + 1);
            register(&mut m, &id, z);
            cands.push(Candidate {
                node_id: id,
                zone: z.to_string(),
            });
        }
        let mut load = Load::default();
        for (i, (shards, rf)) in tables.iter().enumerate() {
            let rf = (*rf).min(zones.len());
            let placement = placement::place(&cands, &mut load, *shards, rf).unwrap();
            m.apply(&MapCommand::CreateTable {
                spec: TableSpec {
                    name: format!("t{i}"),
                    key: "id".into(),
                    sharding: Sharding::Hash { shards: *shards },
                    replicas: rf as u32,
                    min_copies: 0,
                },
                placement,
            })
            .unwrap();
        }
        m
    }

    fn all_live(m: &ClusterMap) -> Health {
        Health {
            live: m.nodes.keys().cloned().collect(),
            ..Health::default()
        }
    }

    use crate::coordinator::failover::tests::commit;

    /// The two halves of a split start on the same nodes; with copies
    /// balanced within one (rule 1 idle), rule 1b moves a copy of the child
    /// to a node holding neither half, once, and then nothing more.
    #[test]
    fn the_halves_of_a_split_are_moved_apart() {
        let mut m = cluster(&["", "", "", ""], &[(2, 2)]);
        let holders = |m: &ClusterMap, s: usize| -> BTreeSet<NodeId> {
            m.tables["t0"].shards[s]
                .replicas
                .holders()
                .cloned()
                .collect()
        };
        assert!(holders(&m, 0).is_disjoint(&holders(&m, 1)));
        let epoch = m.tables["t0"].shards[0].replicas.epoch;
        m.apply(&MapCommand::SplitShard {
            table: "t0".into(),
            shard: 0,
            expect_epoch: epoch,
            at: None,
            why: String::new(),
            at_unix_ms: 0,
        })
        .unwrap();
        let health = all_live(&m);
        let changes = plan(&m, &health, 2);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].shard, 2);
        assert!(
            changes[0].why.contains("was split off t0/0"),
            "{}",
            changes[0].why
        );
        commit(&mut m, &changes);
        // The learner catches up and is swapped in (the failover planner's
        // part), then nothing more moves.
        let r = m.tables["t0"].shards[2].replicas.clone();
        let (learner, leaving) = r.moves[0].clone();
        m.apply(&MapCommand::SetReplicas {
            table: "t0".into(),
            shard: 2,
            expect_epoch: r.epoch,
            primary: r.primary.clone(),
            backups: r
                .backups
                .iter()
                .filter(|b| **b != leaving)
                .cloned()
                .chain([learner])
                .collect(),
            learners: vec![],
            moves: vec![],
            what: String::new(),
            why: String::new(),
            at_unix_ms: 0,
            away: vec![],
        })
        .unwrap();
        assert_ne!(holders(&m, 0), holders(&m, 2));
        let next = plan(&m, &health, 2);
        assert!(
            next.iter().all(|c| c.learners.is_empty()),
            "no copy moves again: {next:?}"
        );
    }

    /// A table with a placement rule is the operator's: a fourth node
    /// holding nothing gets none of its copies, while the same table
    /// without the rule would be rebalanced onto it; and a table of it
    /// running short does not hold the others back.
    #[test]
    fn tables_with_a_placement_rule_are_left_alone() {
        let mut m = cluster(&["", "", ""], &[(4, 3)]);
        register(&mut m, "n4", "");
        let rule = |r: Option<crate::cluster_map::PlacementRule>| MapCommand::SetPlacement {
            table: "t0".into(),
            rule: r,
            at_unix_ms: 0,
        };
        let named = crate::cluster_map::PlacementRule {
            primaries: vec!["n1".into(), "n2".into(), "n3".into()],
            backups: vec!["n1".into(), "n2".into(), "n3".into()],
        };
        m.apply(&rule(Some(named))).unwrap();
        assert!(plan(&m, &all_live(&m), 2).is_empty());
        let mut free = m.clone();
        free.apply(&rule(None)).unwrap();
        assert!(!plan(&free, &all_live(&free), 2).is_empty());
        // A second table, unbalanced, beside a short ruled one (a backup
        // gone from its shard 0): the second is still rebalanced.
        let mut short = m.clone();
        let r = short.tables["t0"].shards[0].replicas.clone();
        short
            .apply(&MapCommand::SetReplicas {
                table: "t0".into(),
                shard: 0,
                expect_epoch: r.epoch,
                primary: r.primary.clone(),
                backups: r.backups[1..].to_vec(),
                learners: vec![],
                moves: vec![],
                what: String::new(),
                why: String::new(),
                at_unix_ms: 0,
                away: vec![],
            })
            .unwrap();
        short
            .apply(&MapCommand::CreateTable {
                spec: TableSpec {
                    name: "t1".into(),
                    key: "id".into(),
                    sharding: Sharding::Hash { shards: 2 },
                    replicas: 2,
                    min_copies: 0,
                },
                placement: vec![("n1".into(), vec!["n2".into()]); 2],
            })
            .unwrap();
        let changes = plan(&short, &all_live(&short), 2);
        assert!(!changes.is_empty());
        assert!(changes.iter().all(|c| c.table == "t1"), "{changes:?}");
    }

    fn in_flight(m: &ClusterMap) -> usize {
        shards(m).map(|(_, _, r)| r.moves.len()).sum()
    }

    fn spread(c: &BTreeMap<NodeId, usize>) -> usize {
        c.values().max().unwrap() - c.values().min().unwrap()
    }

    fn copies(m: &ClusterMap) -> BTreeMap<NodeId, usize> {
        let mut c: BTreeMap<NodeId, usize> = m.nodes.keys().map(|n| (n.clone(), 0)).collect();
        for (_, _, r) in shards(m) {
            for h in r.holders() {
                *c.get_mut(h).unwrap() += 1;
            }
        }
        c
    }

    fn primaries(m: &ClusterMap) -> BTreeMap<NodeId, usize> {
        let mut c: BTreeMap<NodeId, usize> = m.nodes.keys().map(|n| (n.clone(), 0)).collect();
        for (_, _, r) in shards(m) {
            *c.get_mut(&r.primary).unwrap() += 1;
        }
        c
    }

    fn zone_spread(m: &ClusterMap) -> BTreeMap<(String, u32), usize> {
        let zone = |n: &NodeId| m.nodes[n].zone.clone();
        shards(m)
            .map(|(t, s, r)| {
                let z: BTreeSet<String> = r.members().map(zone).filter(|z| !z.is_empty()).collect();
                ((t.to_owned(), s), z.len())
            })
            .collect()
    }

    /// Runs coordinator rounds (heal first, rebalance when healing has
    /// nothing to do) until nothing changes. A learner reports ready when
    /// `ready(round, shard)` says so. Checks the budget and zone spread after
    /// every round; returns the number of rounds.
    fn settle(
        m: &mut ClusterMap,
        max_moves: usize,
        mut ready: impl FnMut(usize, u32) -> bool,
    ) -> usize {
        for round in 0..10_000 {
            let mut h = all_live(m);
            for t in m.tables.values() {
                for s in &t.shards {
                    for l in &s.replicas.learners {
                        if ready(round, s.index) {
                            h.ready.insert((
                                t.spec.name.clone(),
                                s.index,
                                l.clone(),
                                s.replicas.epoch,
                            ));
                        }
                    }
                }
            }
            let heal = failover::plan(m, &h, 4);
            let changes = if heal.is_empty() {
                plan(m, &h, max_moves)
            } else {
                heal
            };
            if changes.is_empty() && in_flight(m) == 0 {
                return round;
            }
            let zones = zone_spread(m);
            commit(m, &changes);
            m.check_invariants();
            assert!(
                in_flight(m) <= max_moves,
                "{} moves in flight",
                in_flight(m)
            );
            for (k, z) in zone_spread(m) {
                assert!(z >= zones[&k], "{k:?}: zone spread {} -> {z}", zones[&k]);
            }
        }
        panic!("no convergence in 10000 rounds");
    }

    #[test]
    fn a_fourth_empty_node_gets_copies_then_primaries() {
        let mut m = cluster(&["", "", ""], &[(8, 3)]);
        assert!(plan(&m, &all_live(&m), 2).is_empty(), "balanced already");
        register(&mut m, "n4", "");
        let first = plan(&m, &all_live(&m), 2);
        assert_eq!(first.len(), 2, "{first:?}");
        for c in &first {
            assert_eq!(c.learners, vec!["n4".to_string()]);
            assert!(c.what.starts_with("added learner n4 to replace n"), "{c:?}");
            assert!(c.why.starts_with("rebalance: "), "{c:?}");
        }
        let rounds = settle(&mut m, 2, |_, _| true);
        assert!(rounds < 100, "{rounds} rounds");
        let c = copies(&m);
        assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![6, 6, 6, 6]);
        assert!(spread(&primaries(&m)) <= 1, "{:?}", primaries(&m));
        assert!(primaries(&m)["n4"] >= 1);
        // Every shard still at RF with no learner, and a further plan is empty.
        assert!(unsettled(&m, &all_live(&m)).is_none());
        assert!(plan(&m, &all_live(&m), 2).is_empty());
        assert!(m
            .events
            .iter()
            .any(|e| e.why.starts_with("rebalance: ") && e.what.starts_with("handed primary")));
    }

    #[test]
    fn never_more_than_max_moves_in_flight() {
        let mut m = cluster(&["", "", ""], &[(8, 3)]);
        register(&mut m, "n4", "");
        register(&mut m, "n5", "");
        let h = all_live(&m);
        let c = plan(&m, &h, 3);
        assert_eq!(c.len(), 3);
        commit(&mut m, &c[..2]);
        // Two in flight, none caught up: one more may start.
        let c = plan(&m, &h, 3);
        assert_eq!(c.len(), 1, "{c:?}");
        commit(&mut m, &c);
        assert!(plan(&m, &h, 3).is_empty());
        // The bound holds when learners catch up slowly, too.
        settle(&mut m, 3, |round, shard| (round + shard as usize) % 3 == 0);
        assert!(spread(&copies(&m)) <= 1, "{:?}", copies(&m));
    }

    #[test]
    fn zero_disables_rebalancing() {
        let mut m = cluster(&["", "", ""], &[(8, 3)]);
        register(&mut m, "n4", "");
        assert!(plan(&m, &all_live(&m), 0).is_empty());
    }

    #[test]
    fn nothing_happens_while_a_shard_is_unhealthy_or_a_node_drains() {
        let mut m = cluster(&["", "", ""], &[(8, 3)]);
        register(&mut m, "n4", "");
        // A holder down.
        let mut h = all_live(&m);
        h.live.remove("n2");
        h.down.insert("n2".into());
        assert!(plan(&m, &h, 2).is_empty());
        // A holder joining (neither live nor down yet).
        let mut h = all_live(&m);
        h.live.remove("n3");
        assert!(plan(&m, &h, 2).is_empty());
        // A shard under-replicated, with a learner being built.
        let mut m2 = m.clone();
        let r = &m2.tables["t0"].shards[0].replicas;
        let backups = vec![r.backups[0].clone()];
        let drop = Change {
            table: "t0".into(),
            shard: 0,
            expect_epoch: r.epoch,
            primary: r.primary.clone(),
            backups,
            learners: vec![],
            moves: vec![],
            what: "dropped".into(),
            why: "test".into(),
            away: vec![],
        };
        commit(&mut m2, &[drop]);
        assert_eq!(
            unsettled(&m2, &all_live(&m2)).unwrap(),
            "t0/0 has 2 of 3 copies"
        );
        assert!(plan(&m2, &all_live(&m2), 2).is_empty());
        let heal = failover::plan(&m2, &all_live(&m2), 4);
        commit(&mut m2, &heal);
        assert!(unsettled(&m2, &all_live(&m2)).is_some());
        assert!(plan(&m2, &all_live(&m2), 2).is_empty());
        // A node draining while it holds copies.
        m.apply(&MapCommand::SetNodeState {
            node_id: "n1".into(),
            state: NodeState::Draining,
        })
        .unwrap();
        assert_eq!(
            unsettled(&m, &all_live(&m)).unwrap(),
            "t0/0: n1 is draining"
        );
        assert!(plan(&m, &all_live(&m), 2).is_empty());
    }

    #[test]
    fn a_drained_node_does_not_block_and_gets_nothing() {
        let mut m = cluster(&["", "", "", ""], &[(8, 3)]);
        m.apply(&MapCommand::SetNodeState {
            node_id: "n4".into(),
            state: NodeState::Draining,
        })
        .unwrap();
        settle(&mut m, 2, |_, _| true);
        assert_eq!(copies(&m)["n4"], 0);
        // Undrained: it gets its share back.
        m.apply(&MapCommand::SetNodeState {
            node_id: "n4".into(),
            state: NodeState::Active,
        })
        .unwrap();
        settle(&mut m, 2, |_, _| true);
        assert_eq!(copies(&m)["n4"], 6);
    }

    #[test]
    fn zone_spread_is_kept() {
        // Three zones, RF 3: each shard covers all three. A new node in zone
        // b may only take copies from zone b nodes.
        let mut m = cluster(&["a", "b", "c"], &[(6, 3)]);
        register(&mut m, "n4", "b");
        settle(&mut m, 2, |_, _| true);
        let c = copies(&m);
        assert_eq!((c["n2"], c["n4"]), (3, 3), "{c:?}");
        assert_eq!((c["n1"], c["n3"]), (6, 6), "{c:?}");
        for (_, z) in zone_spread(&m) {
            assert_eq!(z, 3);
        }
        assert!(plan(&m, &all_live(&m), 2).is_empty());
    }

    #[test]
    fn a_move_that_adds_a_zone_is_preferred() {
        // RF 2 over zones a, a, b: some shards sit in zone a only. A new node
        // in zone c takes copies of those first.
        let mut m = ClusterMap::default();
        for (n, z) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
            register(&mut m, n, z);
        }
        m.apply(&MapCommand::CreateTable {
            spec: TableSpec {
                name: "t".into(),
                key: "id".into(),
                sharding: Sharding::Hash { shards: 3 },
                replicas: 2,
                min_copies: 0,
            },
            placement: vec![
                ("n3".into(), vec!["n1".into()]),
                ("n3".into(), vec!["n2".into()]),
                ("n1".into(), vec!["n2".into()]),
            ],
        })
        .unwrap();
        register(&mut m, "n4", "c");
        let c = plan(&m, &all_live(&m), 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].shard, 2, "{c:?}");
    }

    #[test]
    fn a_primary_only_source_hands_over_first() {
        // n1 holds four copies, two more than n2 and n3, but the copies they
        // lack are ones n1 leads: it hands one of those over first.
        let mut m = ClusterMap::default();
        for n in ["n1", "n2", "n3"] {
            register(&mut m, n, "");
        }
        m.apply(&MapCommand::CreateTable {
            spec: TableSpec {
                name: "t".into(),
                key: "id".into(),
                sharding: Sharding::Hash { shards: 4 },
                replicas: 2,
                min_copies: 0,
            },
            placement: vec![
                ("n1".into(), vec!["n2".into()]),
                ("n1".into(), vec!["n2".into()]),
                ("n1".into(), vec!["n3".into()]),
                ("n1".into(), vec!["n3".into()]),
            ],
        })
        .unwrap();
        let c = plan(&m, &all_live(&m), 2);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].what, "handed primary over from n1 to n2");
        assert!(c[0].why.ends_with("so it hands over first"), "{c:?}");
        commit(&mut m, &c);
        let c = plan(&m, &all_live(&m), 2);
        assert_eq!(c[0].what, "added learner n3 to replace n1");
        settle(&mut m, 2, |_, _| true);
        assert!(spread(&copies(&m)) <= 1, "{:?}", copies(&m));
        assert!(spread(&primaries(&m)) <= 1, "{:?}", primaries(&m));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any placed cluster plus empty nodes converges: no more than
        /// `max_moves` in flight, zone spread never worse, every shard back
        /// at its replication factor, and nothing more to plan at the end.
        /// Without zones and with two copies or more, copies end within one.
        #[test]
        fn rebalancing_converges(
            zones in proptest::collection::vec(0usize..3, 2..6),
            joining in proptest::collection::vec(0usize..3, 1..3),
            tables in proptest::collection::vec((1u32..20, 1usize..4), 1..3),
            max_moves in 1usize..4,
            slow in any::<bool>(),
            use_zones in any::<bool>(),
        ) {
            let name = |z: usize| if use_zones { ["a", "b", "c"][z] } else { "" };
            let first: Vec<&str> = zones.iter().map(|z| name(*z)).collect();
            let mut m = cluster(&first, &tables);
            for (i, z) in joining.iter().enumerate() {
                register(&mut m, &format!("n{}", first.len() + i + 1), name(*z));
            }
            settle(&mut m, max_moves, |round, shard| !slow || (round + shard as usize) % 2 == 0);
            prop_assert!(unsettled(&m, &all_live(&m)).is_none());
            prop_assert!(plan(&m, &all_live(&m), max_moves).is_empty());
            let multi = tables.iter().all(|(_, rf)| *rf >= 2);
            if !use_zones && multi {
                prop_assert!(spread(&copies(&m)) <= 1, "copies {:?}", copies(&m));
            }
        }
    }
}
