//! The failover planner: from the committed map and what gossip says about
//! nodes and copies, the configuration changes that keep every shard served
//! and fully replicated. Pure and deterministic; the coordinator (on the Raft
//! leader) commits what it returns, one change per shard per round, each
//! guarded by the shard's epoch.
//!
//! Per shard, the first rule that applies:
//! 1. **primary down** → the live backup with the fewest primaries becomes
//!    primary; down backups and learners are dropped in the same change. Any
//!    backup will do for safety (each holds every committed entry; the others
//!    reconcile with it), and the new primary waits out the old lease itself;
//!    (A copy that reports itself `failed` counts as down, for its shard.)
//! 2. **backup or learner down** → dropped, so writes need only live copies;
//!    then, from what primaries report of backups that stopped answering
//!    (see [`super::silence`]): a **deaf primary** (it hears none of its
//!    backups, which others still hear) → a backup is promoted and the
//!    primary dropped; **silent backups** → dropped. Neither silence rule
//!    shrinks a configuration below the table's `min_copies`;
//! 3. **a learner has caught up** (it says so in gossip, at the current
//!    epoch) → it becomes a backup;
//! 4. **fewer copies than the table's replication factor** and no learner
//!    yet → a learner is added on the live active node that holds no copy,
//!    preferring a zone the shard does not use, then the fewest copies. At
//!    most `max_new_copies` per round, so recovery is paced;
//! 5. **a draining node holds a copy** (and nothing above applied) → its
//!    replacement is added first as a learner (rule 4 counts the draining copy
//!    as leaving); once the replacement is a backup, a draining primary hands
//!    over to a backup, then the draining copy is dropped;
//! 6. **the primary is not on one of its table's named primaries** (a
//!    placement rule, [`PlacementRule`]) while a live backup is → it hands
//!    over to that backup;
//! 7. **no member is on a named primary** → a live named primary that
//!    holds no copy gets a learner that replaces a backup once caught up
//!    (as `move-shard`), after which rule 6 hands the primary over.
//!
//! A table with a placement rule keeps its copies on the rule's nodes: rule
//! 4 adds copies only there (preferring the rule's backup nodes), so a shard
//! whose named nodes are down runs short instead of copying elsewhere, and
//! a copy outside the rule (the rule was set or changed later) is treated
//! like a draining one by rule 5: replaced first, then dropped. Promotion
//! (rules 1 and 2b) prefers a named primary but takes any live backup, so
//! the shard stays writable; rule 6 hands the primary back later.
//!
//! A shard whose every member is down is left alone (unavailable) until one
//! comes back: choosing a copy that missed writes would lose them.

use std::collections::{BTreeMap, BTreeSet};

use super::silence::{cut_off_reasons, Namings, ShardRef, Silence};
use crate::cluster_map::{
    Away, ClusterMap, MapCommand, NodeId, NodeState, PlacementRule, ReplicaSet, Table,
};

/// What the coordinator knows beyond the map.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Nodes gossip sees live (candidates for new copies and promotion).
    pub live: BTreeSet<NodeId>,
    /// Nodes considered gone: down or left in gossip, or not live for long.
    pub down: BTreeSet<NodeId>,
    /// Learners that report having caught up: (table, shard, node, epoch).
    pub ready: BTreeSet<(String, u32, NodeId, u64)>,
    /// Copies that report they failed (corrupt data, a write they could not
    /// carry out) and serve nothing: (table, shard, node). Each is handled
    /// as if its node were down, for that shard only.
    pub failed: BTreeSet<(String, u32, NodeId)>,
    /// Confirmed reports of primaries about backups that stopped answering.
    pub silent: BTreeMap<ShardRef, Silence>,
    /// Nodes recently named silent: no new copy goes there and none is
    /// promoted, until the suspicion expires.
    pub suspect: BTreeSet<NodeId>,
    /// Which nodes each primary named silent recently.
    pub namings: Namings,
    /// The coordinator's wall clock this round (copies away are stamped
    /// with it, and their wait is measured by it).
    pub now_unix_ms: u64,
    /// How long a shard waits for a copy that left because its node was
    /// down before copying the shard to another node (rule 4); 0 does not
    /// wait.
    pub rereplicate_after_ms: u64,
    /// Nodes the silence rules accuse of being cut off that are shown to
    /// hear: they answered the coordinator's probe, or are the
    /// coordinator's own node while a majority of voters answers it. Their
    /// silence is slowness (a node busy starting thousands of copies), not
    /// deafness, and they are not counted cut off. A node that does not
    /// answer the probe is held down instead (`suspicion`).
    pub hears: BTreeSet<NodeId>,
}

/// One configuration change for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: String,
    pub shard: u32,
    pub expect_epoch: u64,
    pub primary: NodeId,
    pub backups: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub moves: Vec<(NodeId, NodeId)>,
    pub what: String,
    pub why: String,
    /// The shard's copies away after the change (see [`ReplicaSet::away`]).
    pub away: Vec<Away>,
}

impl Change {
    /// The map command that commits the change, stamped `at_unix_ms`.
    pub fn into_command(self, at_unix_ms: u64) -> MapCommand {
        MapCommand::SetReplicas {
            table: self.table,
            shard: self.shard,
            expect_epoch: self.expect_epoch,
            primary: self.primary,
            backups: self.backups,
            learners: self.learners,
            moves: self.moves,
            what: self.what,
            why: self.why,
            at_unix_ms,
            away: self.away,
        }
    }
}

#[derive(Default)]
struct Load {
    primaries: BTreeMap<NodeId, usize>,
    copies: BTreeMap<NodeId, usize>,
}

impl Load {
    fn of(map: &ClusterMap) -> Self {
        let mut l = Load::default();
        for t in map.tables.values() {
            for s in &t.shards {
                *l.primaries.entry(s.replicas.primary.clone()).or_default() += 1;
                for h in s.replicas.holders() {
                    *l.copies.entry(h.clone()).or_default() += 1;
                }
            }
        }
        l
    }

    fn primaries(&self, n: &str) -> usize {
        self.primaries.get(n).copied().unwrap_or(0)
    }

    fn copies(&self, n: &str) -> usize {
        self.copies.get(n).copied().unwrap_or(0)
    }
}

/// Why `node` cannot be drained: some table holding a copy on it keeps
/// more copies per shard than the other active nodes can hold, so the drain
/// could never finish. `None` when it can.
pub fn drain_blocker(map: &ClusterMap, node: &str) -> Option<String> {
    let others: Vec<&str> = map
        .nodes
        .iter()
        .filter(|(id, n)| id.as_str() != node && n.state == NodeState::Active)
        .map(|(id, _)| id.as_str())
        .collect();
    map.tables.values().find_map(|t| {
        let held = t.shards.iter().any(|s| s.replicas.holders().any(|h| h == node));
        // A table with a placement rule may use only the nodes it names.
        let others: Vec<&str> = others.iter().copied().filter(|n| t.allows(n)).collect();
        (held && others.len() < t.spec.replicas as usize).then(|| {
            format!(
                "cannot drain {node}: table {:?} keeps {} copies of each shard and only {} other active node{} ({}) could hold them; add a node first{}",
                t.spec.name,
                t.spec.replicas,
                others.len(),
                if others.len() == 1 { "" } else { "s" },
                if others.is_empty() { "none".to_owned() } else { others.join(", ") },
                if t.placement.is_some() { " and name it in the table's placement rule" } else { "" }
            )
        })
    })
}

/// The changes to commit now.
pub fn plan(map: &ClusterMap, health: &Health, max_new_copies: usize) -> Vec<Change> {
    let mut load = Load::of(map);
    let mut budget = max_new_copies;
    let mut out = Vec::new();
    let mut deaf = cut_off_reasons(map, &health.silent, &health.namings);
    deaf.retain(|node, _| !health.hears.contains(node));
    for t in map.tables.values() {
        for s in &t.shards {
            let ctx = Ctx {
                map,
                t,
                shard: s.index,
                r: &s.replicas,
                health,
                deaf: &deaf,
            };
            if let Some(c) = plan_shard(&ctx, &mut load, &mut budget) {
                out.push(c);
            }
        }
    }
    out
}

/// The backup to promote among `candidates`: a live one, preferring one
/// not suspect of silence, not leaving (draining, or outside the table's
/// placement rule), one of the rule's primaries, leading the fewest shards.
fn promotion_choice<'a>(
    map: &ClusterMap,
    t: &Table,
    health: &Health,
    load: &Load,
    candidates: impl Iterator<Item = &'a NodeId>,
) -> Option<NodeId> {
    candidates
        .filter(|b| health.live.contains(*b))
        .min_by_key(|b| {
            (
                health.suspect.contains(*b),
                leaving(map, t, b),
                !named_primary(t.placement.as_ref(), b),
                load.primaries(b),
                (*b).clone(),
            )
        })
        .cloned()
}

/// Whether `n`'s copies of `t` are to go: it is draining, or outside the
/// table's placement rule.
fn leaving(map: &ClusterMap, t: &Table, n: &str) -> bool {
    draining(map, n) || !t.allows(n)
}

/// Whether `n` may lead a shard under `rule` (any node, without one).
fn named_primary(rule: Option<&PlacementRule>, n: &str) -> bool {
    rule.is_none_or(|r| r.primaries.iter().any(|p| p == n))
}

fn draining(map: &ClusterMap, n: &str) -> bool {
    map.nodes
        .get(n)
        .is_some_and(|e| e.state == NodeState::Draining)
}

/// What planning one shard looks at.
struct Ctx<'a> {
    map: &'a ClusterMap,
    t: &'a Table,
    shard: u32,
    r: &'a ReplicaSet,
    health: &'a Health,
    /// Nodes cut off, with the evidence.
    deaf: &'a BTreeMap<NodeId, String>,
}

fn plan_shard(ctx: &Ctx, load: &mut Load, budget: &mut usize) -> Option<Change> {
    let Ctx {
        map,
        t,
        shard,
        r,
        health,
        deaf,
    } = *ctx;
    let down = |n: &NodeId| {
        health.down.contains(n)
            || health
                .failed
                .contains(&(t.spec.name.clone(), shard, n.clone()))
    };
    let change = |primary: NodeId, backups: Vec<NodeId>, learners: Vec<NodeId>, what, why| {
        Some(Change {
            table: t.spec.name.clone(),
            shard,
            expect_epoch: r.epoch,
            primary,
            backups,
            learners,
            moves: r.moves.clone(),
            what,
            why,
            away: r.away.clone(),
        })
    };
    // A live backup `to` takes over the primary; the old primary stays as
    // a backup (rules 5 and 6).
    let hand_over = |to: &NodeId, why| {
        let mut backups: Vec<NodeId> = r.backups.iter().filter(|b| *b != to).cloned().collect();
        backups.push(r.primary.clone());
        let what = format!("handed primary over from {} to {to}", r.primary);
        change(to.clone(), backups, vec![], what, why)
    };
    // The down copies dropped by rules 1 and 2 are away from now on: they
    // may come back with their rows.
    let left_down = |c: Option<Change>, gone: &[&NodeId]| {
        c.map(|mut c| {
            for n in gone {
                if !c.away.iter().any(|a| a.node == **n) {
                    c.away.push(Away {
                        node: (*n).clone(),
                        since_unix_ms: health.now_unix_ms,
                    });
                }
            }
            c
        })
    };
    let live_backups: Vec<NodeId> = r.backups.iter().filter(|b| !down(b)).cloned().collect();
    let live_learners: Vec<NodeId> = r.learners.iter().filter(|l| !down(l)).cloned().collect();
    let gone: Vec<&NodeId> = r.holders().filter(|n| down(n)).collect();
    let gone_list = gone
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");

    // 1. The primary is down: promote a live backup.
    if down(&r.primary) {
        let new = promotion_choice(map, t, health, load, live_backups.iter())?;
        *load.primaries.entry(new.clone()).or_default() += 1;
        let backups = live_backups.into_iter().filter(|b| *b != new).collect();
        let c = change(
            new.clone(),
            backups,
            live_learners,
            format!("promoted {new} to primary (dropped {gone_list})"),
            if health.down.contains(&r.primary) {
                format!("primary {} is down", r.primary)
            } else {
                format!("the primary's copy on {} failed", r.primary)
            },
        );
        return left_down(c, &gone);
    }
    // 2. A backup or learner is down: drop it.
    if !gone.is_empty() {
        let c = change(
            r.primary.clone(),
            live_backups,
            live_learners,
            format!("dropped {gone_list}"),
            format!(
                "{gone_list} {} down",
                if gone.len() == 1 { "is" } else { "are" }
            ),
        );
        return left_down(c, &gone);
    }
    let min_copies = t.spec.min_copies();
    // 2b. The primary is cut off from the others while gossip still sees
    // it live: promote a backup, drop the primary. The promoted copy waits
    // out the old lease as after a crash.
    if let Some(evidence) = deaf
        .get(&r.primary)
        .filter(|_| r.backups.len() >= min_copies)
    {
        let candidates = r.backups.iter().filter(|b| !deaf.contains_key(*b));
        let new = promotion_choice(map, t, health, load, candidates)?;
        *load.primaries.entry(new.clone()).or_default() += 1;
        let backups = r.backups.iter().filter(|b| **b != new).cloned().collect();
        return change(
            new.clone(),
            backups,
            r.learners.clone(),
            format!("promoted {new} to primary (dropped {})", r.primary),
            format!(
                "primary {} is cut off: {evidence}, though gossip sees it live",
                r.primary
            ),
        );
    }
    let report = health
        .silent
        .get(&(t.spec.name.clone(), shard))
        .filter(|s| s.epoch == r.epoch && s.primary == r.primary);
    if let Some(report) = report {
        // 2c. Backups (and caught-up learners, which count for commits
        // too) the primary does not hear: dropped; backups only if the
        // shard keeps min_copies members.
        let heard = |n: &&NodeId| !report.silent.contains(*n);
        let mut silent: Vec<&NodeId> = r.learners.iter().filter(|n| !heard(n)).collect();
        let silent_backups = r.backups.iter().filter(|n| !heard(n)).count();
        let members = 1 + r.backups.len();
        let drop_backups = silent_backups > 0 && members - silent_backups >= min_copies;
        if drop_backups {
            silent.extend(r.backups.iter().filter(|n| !heard(n)));
        }
        if !deaf.contains_key(&r.primary) && !silent.is_empty() {
            let list = silent
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let keep = |set: &[NodeId]| -> Vec<NodeId> {
                set.iter()
                    .filter(|n| !silent.contains(n))
                    .cloned()
                    .collect()
            };
            return change(
                r.primary.clone(),
                keep(&r.backups),
                keep(&r.learners),
                format!("dropped {list}"),
                format!(
                    "primary {} has not heard {list} within its lease (gossip still sees {})",
                    r.primary,
                    if silent.len() == 1 { "it" } else { "them" }
                ),
            );
        }
    }
    // 3. A learner caught up: it becomes a backup (replacing the copy it
    // was moving, if any).
    if let Some(l) = r.learners.iter().find(|l| {
        health
            .ready
            .contains(&(t.spec.name.clone(), shard, (*l).clone(), r.epoch))
    }) {
        let replaced = r.moves.iter().find(|(x, _)| x == l).map(|(_, m)| m);
        if let Some(m) = replaced.filter(|m| r.backups.contains(m)) {
            let mut backups: Vec<NodeId> = r.backups.iter().filter(|b| *b != m).cloned().collect();
            backups.push(l.clone());
            let learners = r.learners.iter().filter(|x| *x != l).cloned().collect();
            return change(
                r.primary.clone(),
                backups,
                learners,
                format!("moved a copy from {m} to {l}"),
                format!("learner {l} caught up with the primary"),
            );
        }
        let mut backups = r.backups.clone();
        backups.push(l.clone());
        let learners = r.learners.iter().filter(|x| *x != l).cloned().collect();
        return change(
            r.primary.clone(),
            backups,
            learners,
            format!("{l} is now a backup"),
            format!("learner {l} caught up with the primary"),
        );
    }
    let wanted = t.spec.replicas as usize;
    let staying = r.members().filter(|m| !leaving(map, t, m)).count();
    // 4. Too few copies (counting draining ones as leaving): add a learner.
    // A copy away that is live again comes back first; while one may
    // still come back within the wait, no copy is made elsewhere, unless
    // the shard is short of the members it needs to take writes.
    if staying + r.learners.len() < wanted && r.learners.is_empty() && *budget > 0 {
        let holders: BTreeSet<&NodeId> = r.holders().collect();
        let eligible = |n: &NodeId| {
            health.live.contains(n)
                && !health.suspect.contains(n)
                && !holders.contains(n)
                && t.allows(n)
                && map
                    .nodes
                    .get(n)
                    .is_some_and(|e| e.state == NodeState::Active)
        };
        let have = r.members().count();
        let returning = r.away.iter().map(|a| &a.node).find(|n| eligible(n));
        let (pick, what, why) = match returning {
            Some(n) => (
                n.clone(),
                format!("added learner {n} (its copy is back)"),
                format!(
                    "under-replicated: {have} of {wanted} copies; {n} left it down and is live again, with the shard's rows up to where it left"
                ),
            ),
            None => {
                let waiting = r.away.iter().any(|a| {
                    health.now_unix_ms
                        < a.since_unix_ms.saturating_add(health.rereplicate_after_ms)
                });
                if waiting && have >= min_copies {
                    return None;
                }
                let zone = |n: &str| map.nodes.get(n).map(|e| e.zone.as_str()).unwrap_or("");
                let used: BTreeSet<&str> = holders
                    .iter()
                    .map(|h| zone(h))
                    .filter(|z| !z.is_empty())
                    .collect();
                let pick = health
                    .live
                    .iter()
                    .filter(|n| eligible(n))
                    .min_by_key(|n| {
                        let z = zone(n);
                        (
                            // A rule's backup nodes first, then its primaries.
                            t.placement
                                .as_ref()
                                .is_some_and(|p| !p.backups.contains(n)),
                            !z.is_empty() && used.contains(z),
                            load.copies(n),
                            (*n).clone(),
                        )
                    })?
                    .clone();
                let why = if staying < have {
                    format!("replacing draining copies: {staying} staying of {wanted} wanted")
                } else if !r.away.is_empty() && health.rereplicate_after_ms > 0 {
                    format!(
                        "under-replicated: {have} of {wanted} copies, and {} did not come back within {} s",
                        r.away
                            .iter()
                            .map(|a| a.node.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        health.rereplicate_after_ms / 1000
                    )
                } else {
                    format!("under-replicated: {have} of {wanted} copies")
                };
                (pick.clone(), format!("added learner {pick}"), why)
            }
        };
        *budget -= 1;
        *load.copies.entry(pick.clone()).or_default() += 1;
        let mut learners = r.learners.clone();
        learners.push(pick);
        let back = returning.is_some();
        return change(r.primary.clone(), r.backups.clone(), learners, what, why).map(|mut c| {
            // Copied elsewhere: the copies away are not waited for any more.
            if !back {
                c.away.clear();
            }
            c
        });
    }
    // Why a copy on `n` is leaving (rule 5).
    let leaving_why = |n: &NodeId| {
        if draining(map, n) {
            format!("{n} is draining")
        } else {
            format!(
                "{n} is outside the placement rule of table {:?}",
                t.spec.name
            )
        }
    };
    // 5. Draining copies (or copies outside the table's placement rule)
    // with their replacement in place.
    if staying >= wanted.min(r.members().count()) && r.learners.is_empty() {
        if leaving(map, t, &r.primary) {
            let to = r
                .backups
                .iter()
                .filter(|b| !leaving(map, t, b) && health.live.contains(*b))
                .min_by_key(|b| {
                    (
                        !named_primary(t.placement.as_ref(), b),
                        load.primaries(b),
                        (*b).clone(),
                    )
                })?;
            return hand_over(to, leaving_why(&r.primary));
        }
        if let Some(d) = r.backups.iter().find(|b| leaving(map, t, b)) {
            if staying >= wanted {
                let backups = r.backups.iter().filter(|b| *b != d).cloned().collect();
                return change(
                    r.primary.clone(),
                    backups,
                    vec![],
                    format!("dropped {d}"),
                    format!("{} and its replacement is in place", leaving_why(d)),
                );
            }
        }
    }
    if let Some(rule) = &t.placement {
        if r.learners.is_empty() && !named_primary(Some(rule), &r.primary) {
            // 6. The primary is not one of the rule's primaries, and a
            // live backup is: it hands over.
            let to = r
                .backups
                .iter()
                .filter(|b| {
                    named_primary(Some(rule), b)
                        && health.live.contains(*b)
                        && !health.suspect.contains(*b)
                })
                .min_by_key(|b| (load.primaries(b), (*b).clone()));
            if let Some(to) = to {
                return hand_over(
                    to,
                    format!(
                        "placement: table {:?} has its primaries on {}",
                        t.spec.name,
                        rule.primaries.join(",")
                    ),
                );
            }
            // 7. No member is one of them: a live one that holds no copy
            // gets one, replacing a backup (as move-shard does), so that
            // rule 6 can then hand over to it.
            if *budget > 0 {
                let holders: BTreeSet<&NodeId> = r.holders().collect();
                let to = rule
                    .primaries
                    .iter()
                    .filter(|n| {
                        health.live.contains(*n)
                            && !health.suspect.contains(*n)
                            && !holders.contains(n)
                            && map
                                .nodes
                                .get(*n)
                                .is_some_and(|e| e.state == NodeState::Active)
                    })
                    .min_by_key(|n| (load.copies(n), (*n).clone()));
                // The backup replaced: one outside the rule's backups first.
                let from = r
                    .backups
                    .iter()
                    .max_by_key(|b| (!rule.backups.contains(b), load.copies(b), (*b).clone()));
                if let (Some(to), Some(from)) = (to, from) {
                    *budget -= 1;
                    *load.copies.entry(to.clone()).or_default() += 1;
                    let mut moves = r.moves.clone();
                    moves.push((to.clone(), from.clone()));
                    return change(
                        r.primary.clone(),
                        r.backups.clone(),
                        vec![to.clone()],
                        format!("added learner {to} to replace {from}"),
                        format!(
                            "placement: table {:?} has its primaries on {}, and none holds a copy",
                            t.spec.name,
                            rule.primaries.join(",")
                        ),
                    )
                    .map(|mut c| {
                        c.moves = moves;
                        c
                    });
                }
            }
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster_map::MapError;
    use crate::coordinator::test_maps::map;

    #[test]
    fn a_drain_that_could_never_finish_is_refused() {
        let mut m = map(3, &[]);
        let why = drain_blocker(&m, "n2").unwrap();
        assert_eq!(
            why,
            "cannot drain n2: table \"t\" keeps 3 copies of each shard and only 2 other active nodes (n1, n3) could hold them; add a node first"
        );
        m.apply(&MapCommand::RegisterNode {
            node_id: "n4".into(),
            addr: String::new(),
            zone: String::new(),
        })
        .unwrap();
        assert_eq!(drain_blocker(&m, "n2"), None);
        // A node already draining is no home for copies either.
        m.apply(&MapCommand::SetNodeState {
            node_id: "n4".into(),
            state: NodeState::Draining,
        })
        .unwrap();
        assert!(drain_blocker(&m, "n2").is_some());
    }

    fn health(live: &[&str], down: &[&str]) -> Health {
        Health {
            live: live.iter().map(|s| s.to_string()).collect(),
            down: down.iter().map(|s| s.to_string()).collect(),
            ..Health::default()
        }
    }

    /// A copy that reports itself failed (corrupt data) is handled as if its
    /// node were down, for its shard only: a failed primary is replaced by
    /// a backup, and the node's other copies stay.
    #[test]
    fn a_failed_copy_is_replaced_like_a_down_one_for_its_shard_only() {
        let m = map(3, &[]);
        let h = Health {
            failed: [("t".to_string(), 0, "n1".to_string())].into(),
            ..health(&["n1", "n2", "n3"], &[])
        };
        let changes = plan(&m, &h, 4);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let c = &changes[0];
        assert_eq!(c.shard, 0);
        assert_ne!(c.primary, "n1");
        assert!(!c.backups.contains(&"n1".to_string()));
        assert_eq!(c.why, "the primary's copy on n1 failed");
        assert_eq!(c.away.len(), 1);
        assert_eq!(c.away[0].node, "n1");
    }

    /// A copy dropped because its node was down is remembered as away; with
    /// a wait set and a fourth node live, nothing is copied to it while the
    /// wait runs; a node that comes back gets its own copies back first;
    /// past the wait the shard is copied elsewhere and the copy away is
    /// given up.
    #[test]
    fn a_copy_away_is_waited_for_then_given_up() {
        let mut m = map(4, &[]);
        let at = |now: u64, wait: u64, live: &[&str], down: &[&str]| Health {
            now_unix_ms: now,
            rereplicate_after_ms: wait,
            ..health(live, down)
        };
        let away = |m: &ClusterMap, shard: usize| -> Vec<(String, u64)> {
            m.tables["t"].shards[shard]
                .replicas
                .away
                .iter()
                .map(|a| (a.node.clone(), a.since_unix_ms))
                .collect()
        };
        // n3 goes down at t=1000: dropped from both shards, and away.
        let changes = plan(&m, &at(1000, 60_000, &["n1", "n2", "n4"], &["n3"]), 4);
        assert_eq!(changes.len(), 2);
        commit(&mut m, &changes);
        assert_eq!(away(&m, 0), vec![("n3".to_string(), 1000)]);
        assert_eq!(away(&m, 1), vec![("n3".to_string(), 1000)]);
        // Within the wait: nothing is copied to n4.
        let waiting = at(30_000, 60_000, &["n1", "n2", "n4"], &["n3"]);
        assert!(plan(&m, &waiting, 4).is_empty());
        // n3 is back: its copies return to it, not to n4.
        let back = at(40_000, 60_000, &["n1", "n2", "n3", "n4"], &[]);
        let changes = plan(&m, &back, 4);
        assert_eq!(changes.len(), 2);
        for c in &changes {
            assert_eq!(c.learners, vec!["n3".to_string()], "{c:?}");
            assert_eq!(c.what, "added learner n3 (its copy is back)");
        }
        let mut back_map = m.clone();
        commit(&mut back_map, &changes);
        assert!(away(&back_map, 0).is_empty(), "a holder is not away");
        // Even with no wait, a node that is back is preferred.
        let changes = plan(&m, &at(40_000, 0, &["n1", "n2", "n3", "n4"], &[]), 4);
        assert!(changes.iter().all(|c| c.learners == vec!["n3".to_string()]));
        // Past the wait, n3 still down: copied to n4, n3 no longer waited for.
        let late = at(61_001, 60_000, &["n1", "n2", "n4"], &["n3"]);
        let changes = plan(&m, &late, 4);
        assert_eq!(changes.len(), 2);
        for c in &changes {
            assert_eq!(c.learners, vec!["n4".to_string()]);
            assert_eq!(
                c.why,
                "under-replicated: 2 of 3 copies, and n3 did not come back within 60 s"
            );
        }
        commit(&mut m, &changes);
        assert!(away(&m, 0).is_empty() && away(&m, 1).is_empty());
        // With no wait, copied at once (today's behaviour).
        let mut m = map(4, &[]);
        let changes = plan(&m, &at(1000, 0, &["n1", "n2", "n4"], &["n3"]), 4);
        commit(&mut m, &changes);
        let changes = plan(&m, &at(1001, 0, &["n1", "n2", "n4"], &["n3"]), 4);
        assert!(changes.iter().all(|c| c.learners == vec!["n4".to_string()]));
    }

    /// The wait never keeps a shard that has fewer members than it needs
    /// to take writes short of them.
    #[test]
    fn the_wait_does_not_hold_a_shard_below_its_min_copies() {
        let mut m = map(4, &[]);
        m.tables.get_mut("t").unwrap().spec.min_copies = 3;
        let h = |now: u64| Health {
            now_unix_ms: now,
            rereplicate_after_ms: 60_000,
            ..health(&["n1", "n2", "n4"], &["n3"])
        };
        let changes = plan(&m, &h(1000), 4);
        commit(&mut m, &changes);
        let changes = plan(&m, &h(2000), 4);
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.learners == vec!["n4".to_string()]));
    }

    /// Commits the changes the way the coordinator does.
    pub(crate) fn commit(m: &mut ClusterMap, changes: &[Change]) {
        for c in changes {
            m.apply(&c.clone().into_command(0)).unwrap();
        }
    }

    fn silence(reports: &[(u32, &str, &[&str])]) -> BTreeMap<ShardRef, Silence> {
        reports
            .iter()
            .map(|(shard, primary, silent)| {
                (
                    ("t".to_string(), *shard),
                    Silence {
                        primary: primary.to_string(),
                        epoch: 1,
                        silent: silent.iter().map(|s| s.to_string()).collect(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_node_that_cannot_hear_loses_its_primaries_and_its_backups() {
        // n1 can send but not hear: gossip still sees it live. It hears
        // neither backup of t/0; n2 does not hear it in t/1.
        let mut m = map(3, &[]);
        let mut h = health(&["n1", "n2", "n3"], &[]);
        h.silent = silence(&[(0, "n1", &["n2", "n3"]), (1, "n2", &["n1"])]);
        h.namings = [
            (
                "n1".to_string(),
                ["n2".to_string(), "n3".to_string()].into(),
            ),
            ("n2".to_string(), ["n1".to_string()].into()),
        ]
        .into();
        h.suspect = ["n1".to_string()].into();
        let changes = plan(&m, &h, 4);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[0].primary, "n3", "the backup leading nothing yet");
        assert_eq!(changes[0].backups, vec!["n2".to_string()]);
        assert_eq!(
            changes[0].why,
            "primary n1 is cut off: it hears none of the backups of t/0 (n2, n3), which others hear, though gossip sees it live"
        );
        // The same reports about a node shown to hear (it answered the
        // coordinator's probe: it is slow, not deaf): its shards stay; only
        // the backup it does not hear would go, were the shard left with
        // enough copies.
        let mut slow = h.clone();
        slow.hears = ["n1".to_string()].into();
        let kept = plan(&m, &slow, 4);
        assert!(
            kept.iter()
                .all(|c| c.table != "t" || c.shard != 0 || c.primary == "n1"),
            "{kept:?}"
        );
        assert_eq!(changes[1].primary, "n2");
        assert_eq!(changes[1].backups, vec!["n3".to_string()]);
        assert_eq!(changes[1].what, "dropped n1");
        commit(&mut m, &changes);
        // Under-replicated now, but the only node with room is suspect: no
        // copy goes there while the suspicion lasts (no add/drop loop).
        let mut h = health(&["n1", "n2", "n3"], &[]);
        h.suspect = ["n1".to_string()].into();
        assert!(plan(&m, &h, 4).is_empty());
        // Once it is no longer suspect, it gets its copies back.
        assert_eq!(plan(&m, &health(&["n1", "n2", "n3"], &[]), 4).len(), 2);
    }

    #[test]
    fn a_node_two_primaries_named_is_failed_over_even_after_they_dropped_it() {
        // n1 cannot hear, and its own reports never arrive. n2 named it and
        // has already dropped it from t/1; n3 names it now (in no shard it
        // leads here, but the naming counts).
        let mut m = map(3, &[]);
        let mut h = health(&["n1", "n2", "n3"], &[]);
        h.namings = [
            ("n2".to_string(), ["n1".to_string()].into()),
            ("n3".to_string(), ["n1".to_string()].into()),
        ]
        .into();
        let changes = plan(&m, &h, 4);
        let c0 = changes.iter().find(|c| c.shard == 0).expect("t/0 moves");
        assert_eq!(c0.primary, "n3");
        assert!(!c0.backups.contains(&"n1".to_string()));
        commit(&mut m, &changes);
    }

    #[test]
    fn silence_never_shrinks_a_shard_below_min_copies() {
        let mut m = map(3, &[]);
        let mut h = health(&["n1", "n2", "n3"], &[]);
        h.silent = silence(&[(0, "n1", &["n3"])]);
        let changes = plan(&m, &h, 4);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].what, "dropped n3");
        commit(&mut m, &changes);
        // t/0 is {n1, n2} now; n2 goes silent too: dropping it would leave
        // one copy (min_copies is 2 for 3 replicas), so nothing happens.
        let mut h = health(&["n1", "n2", "n3"], &[]);
        h.silent = BTreeMap::from([(
            ("t".to_string(), 0),
            Silence {
                primary: "n1".into(),
                epoch: 2,
                silent: ["n2".to_string()].into(),
            },
        )]);
        h.suspect = ["n3".to_string(), "n2".to_string()].into();
        assert!(plan(&m, &h, 4).is_empty(), "{:?}", plan(&m, &h, 4));
    }

    fn rule(primaries: &[&str], backups: &[&str]) -> Option<PlacementRule> {
        Some(PlacementRule {
            primaries: primaries.iter().map(|s| s.to_string()).collect(),
            backups: backups.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn set_rule(m: &mut ClusterMap, r: Option<PlacementRule>) -> Result<(), MapError> {
        m.apply(&MapCommand::SetPlacement {
            table: "t".into(),
            rule: r,
            at_unix_ms: 0,
        })
    }

    fn holders(m: &ClusterMap, shard: usize) -> (String, Vec<String>) {
        let r = &m.tables["t"].shards[shard].replicas;
        let mut b: Vec<String> = r.backups.iter().chain(&r.learners).cloned().collect();
        b.sort();
        (r.primary.clone(), b)
    }

    /// Learners that caught up, as gossip would report them.
    fn ready(m: &ClusterMap) -> BTreeSet<(String, u32, NodeId, u64)> {
        m.tables["t"]
            .shards
            .iter()
            .flat_map(|s| {
                s.replicas
                    .learners
                    .iter()
                    .map(|l| ("t".to_string(), s.index, l.clone(), s.replicas.epoch))
            })
            .collect()
    }

    /// Plans and commits until nothing is left to do (learners catching up
    /// at once); returns how many rounds it took.
    fn settle(m: &mut ClusterMap, h: &Health) -> usize {
        for round in 0..20 {
            let h = Health {
                ready: ready(m),
                ..h.clone()
            };
            let changes = plan(m, &h, 4);
            if changes.is_empty() {
                return round;
            }
            commit(m, &changes);
        }
        panic!("no settling within 20 rounds: {:?}", m.tables["t"].shards);
    }

    /// A placement rule (`replicate([n1], [n2, n3])` in the Python package):
    /// the primary goes to the named primary; when that node dies a backup
    /// is promoted and the shard runs short rather than copy to n4, which
    /// the rule does not name; when it is back it gets its copies and
    /// then the primaries back.
    #[test]
    fn a_placement_rule_is_kept_through_a_death_and_a_return() {
        let mut m = map(4, &[]);
        let all = health(&["n1", "n2", "n3", "n4"], &[]);
        set_rule(&mut m, rule(&["n1"], &["n2", "n3"])).unwrap();
        assert_eq!(
            m.events.back().unwrap().what,
            "placement: primaries on n1; backups on n2,n3"
        );
        // Shard 1 is led by n2: handed over to n1, its backup.
        let changes = plan(&m, &all, 4);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!((changes[0].shard, changes[0].primary.as_str()), (1, "n1"));
        assert!(changes[0].why.starts_with("placement:"), "{changes:?}");
        settle(&mut m, &all);
        for s in 0..2 {
            assert_eq!(
                holders(&m, s),
                ("n1".into(), vec!["n2".into(), "n3".into()])
            );
        }

        // n1 dies: a backup leads (writes go on), and nothing goes to n4.
        let n1_down = health(&["n2", "n3", "n4"], &["n1"]);
        settle(&mut m, &n1_down);
        for s in 0..2 {
            let (p, b) = holders(&m, s);
            assert!(p == "n2" || p == "n3", "{p}");
            assert_eq!(b.len(), 1, "the shard runs short: {b:?}");
            assert!(!b.contains(&"n4".to_string()) && !b.contains(&"n1".to_string()));
        }
        // Without the rule, the same map would copy to n4 at once.
        let mut free = m.clone();
        set_rule(&mut free, None).unwrap();
        let changes = plan(&free, &n1_down, 4);
        assert!(changes.iter().all(|c| c.learners == vec!["n4".to_string()]));
        assert_eq!(changes.len(), 2);

        // n1 is back: it gets its copies back, then the primaries.
        settle(&mut m, &all);
        for s in 0..2 {
            assert_eq!(
                holders(&m, s),
                ("n1".into(), vec!["n2".into(), "n3".into()])
            );
        }
        // An operator cannot move a copy outside the rule either.
        let err = manual(
            &m,
            "t",
            0,
            &ManualOp::Move {
                from: "n2".into(),
                to: "n4".into(),
            },
            &all,
        )
        .unwrap_err();
        assert!(err.contains("outside the placement rule"), "{err}");
    }

    /// A rule set on a table placed elsewhere moves its copies there, as a
    /// drain does: the new copy first, then the primary handed over, then
    /// the old copy dropped.
    #[test]
    fn a_new_rule_moves_copies_onto_the_named_nodes() {
        let mut m = map(4, &[]);
        let all = health(&["n1", "n2", "n3", "n4"], &[]);
        set_rule(&mut m, rule(&["n2", "n3", "n4"], &["n2", "n3", "n4"])).unwrap();
        let rounds = settle(&mut m, &all);
        assert!(rounds >= 3, "{rounds}");
        for s in 0..2 {
            let (p, b) = holders(&m, s);
            let mut all_copies = b.clone();
            all_copies.push(p);
            all_copies.sort();
            assert_eq!(all_copies, vec!["n2", "n3", "n4"]);
        }
        m.check_invariants();
    }

    /// Every copy is on a node the rule allows, but none on a named
    /// primary: one moves there (replacing a backup), then leads.
    #[test]
    fn a_named_primary_without_a_copy_gets_one_then_leads() {
        let mut m = map(4, &[]);
        let all = health(&["n1", "n2", "n3", "n4"], &[]);
        set_rule(&mut m, rule(&["n4"], &["n1", "n2", "n3"])).unwrap();
        let changes = plan(&m, &all, 4);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes.iter().all(|c| c.learners == vec!["n4".to_string()]));
        assert!(changes
            .iter()
            .all(|c| c.moves.len() == 1 && c.moves[0].0 == "n4"));
        settle(&mut m, &all);
        for s in 0..2 {
            let (p, b) = holders(&m, s);
            assert_eq!(p, "n4");
            assert_eq!(b.len(), 2, "{b:?}");
        }
        m.check_invariants();
    }

    #[test]
    fn a_rule_must_name_enough_known_nodes() {
        let mut m = map(4, &[]);
        let e = set_rule(&mut m, rule(&["n1"], &["n2"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid placement: the table keeps 3 copies of each shard but the rule names 2 nodes: name at least 3"
        );
        let e = set_rule(&mut m, rule(&["n1"], &["n2", "n9"])).unwrap_err();
        assert_eq!(e, MapError::UnknownNode("n9".into()));
        let e = set_rule(&mut m, rule(&[], &["n1", "n2", "n3"])).unwrap_err();
        assert!(matches!(e, MapError::InvalidPlacement(_)));
        assert_eq!(m.tables["t"].placement, None);
    }

    #[test]
    fn nothing_to_do_when_all_is_well() {
        let m = map(3, &[]);
        assert!(plan(&m, &health(&["n1", "n2", "n3"], &[]), 4).is_empty());
    }

    #[test]
    fn a_dead_primary_is_replaced_by_a_live_backup_and_the_dead_copy_dropped() {
        let mut m = map(3, &[]);
        let changes = plan(&m, &health(&["n2", "n3"], &["n1"]), 4);
        assert_eq!(changes.len(), 2);
        let c0 = &changes[0];
        assert_eq!(c0.expect_epoch, 1);
        assert_eq!(c0.why, "primary n1 is down");
        // n2 already leads shard 1: n3 (fewer primaries) takes shard 0.
        assert_eq!(
            (c0.primary.as_str(), c0.backups.clone()),
            ("n3", vec!["n2".to_string()])
        );
        assert_eq!(changes[1].what, "dropped n1");
        commit(&mut m, &changes);
        assert_eq!(m.tables["t"].shards[0].replicas.epoch, 2);
        assert_eq!(m.events.len(), 2);
        assert_eq!(m.events[0].what, "promoted n3 to primary (dropped n1)");
        // With two live nodes and RF 3 there is nowhere to re-replicate.
        assert!(plan(&m, &health(&["n2", "n3"], &["n1"]), 4).is_empty());
    }

    #[test]
    fn a_shard_with_every_member_down_waits() {
        let m = map(3, &[]);
        assert!(plan(&m, &health(&[], &["n1", "n2", "n3"]), 4).is_empty());
    }

    #[test]
    fn a_joining_backup_is_not_promoted() {
        // n2 is not down but not live yet either (restarting).
        let m = map(3, &[]);
        let changes = plan(&m, &health(&["n3"], &["n1"]), 4);
        assert_eq!(changes[0].primary, "n3");
    }

    #[test]
    fn lost_copies_are_rebuilt_through_a_learner_paced_by_the_budget() {
        let mut m = map(4, &["a", "a", "b", "b"]);
        let h = health(&["n1", "n2", "n4"], &["n3"]);
        let c = plan(&m, &h, 1);
        commit(&mut m, &c);
        // n3 dropped from both shards.
        let changes = plan(&m, &h, 1);
        assert_eq!(changes.len(), 1, "one new copy per round");
        assert_eq!(changes[0].what, "added learner n4");
        assert_eq!(changes[0].why, "under-replicated: 2 of 3 copies");
        commit(&mut m, &changes);
        let mut h = h;
        h.ready.insert(("t".into(), 0, "n4".into(), 3));
        let changes = plan(&m, &h, 1);
        assert_eq!(changes[0].what, "n4 is now a backup");
        assert!(
            changes
                .iter()
                .any(|c| c.shard == 1 && c.learners == vec!["n4".to_string()]),
            "{changes:?}"
        );
        commit(&mut m, &changes);
        let s0 = &m.tables["t"].shards[0].replicas;
        assert_eq!(s0.backups, vec!["n2".to_string(), "n4".to_string()]);
        assert!(s0.learners.is_empty());
    }

    #[test]
    fn a_ready_learner_of_an_older_epoch_waits() {
        let mut m = map(4, &[]);
        let h = health(&["n1", "n2", "n4"], &["n3"]);
        let c = plan(&m, &h, 4);
        commit(&mut m, &c);
        let c = plan(&m, &h, 4);
        commit(&mut m, &c);
        let mut h = h;
        h.ready.insert(("t".into(), 0, "n4".into(), 1));
        assert!(plan(&m, &h, 4).is_empty());
    }

    #[test]
    fn operator_moves_and_switchovers() {
        let mut m = map(4, &[]);
        let h = health(&["n1", "n2", "n3", "n4"], &[]);
        let err = manual(
            &m,
            "t",
            0,
            &ManualOp::Move {
                from: "n1".into(),
                to: "n4".into(),
            },
            &h,
        )
        .unwrap_err();
        assert!(
            err.starts_with("n1 is the primary of t/0: promote another copy first"),
            "{err}"
        );
        let c = manual(
            &m,
            "t",
            0,
            &ManualOp::Move {
                from: "n2".into(),
                to: "n4".into(),
            },
            &h,
        )
        .unwrap();
        commit(&mut m, &[c]);
        let mut h2 = h.clone();
        h2.ready.insert(("t".into(), 0, "n4".into(), 2));
        let c = plan(&m, &h2, 4);
        assert_eq!(c[0].what, "moved a copy from n2 to n4");
        commit(&mut m, &c);
        let r = &m.tables["t"].shards[0].replicas;
        assert_eq!(
            (r.backups.clone(), r.moves.len()),
            (vec!["n3".to_string(), "n4".to_string()], 0)
        );

        let c = manual(&m, "t", 0, &ManualOp::Promote { node: "n4".into() }, &h).unwrap();
        commit(&mut m, &[c]);
        let r = &m.tables["t"].shards[0].replicas;
        assert_eq!(r.primary, "n4");
        assert_eq!(r.backups, vec!["n3".to_string(), "n1".to_string()]);
        assert!(manual(&m, "t", 0, &ManualOp::Promote { node: "n2".into() }, &h).is_err());
    }

    #[test]
    fn a_draining_node_is_emptied_replacement_first() {
        let mut m = map(4, &[]);
        m.apply(&MapCommand::SetNodeState {
            node_id: "n1".into(),
            state: NodeState::Draining,
        })
        .unwrap();
        let mut h = health(&["n1", "n2", "n3", "n4"], &[]);
        let changes = plan(&m, &h, 1);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].what, "added learner n4");
        commit(&mut m, &changes);
        h.ready.insert(("t".into(), 0, "n4".into(), 2));
        let c = plan(&m, &h, 1);
        commit(&mut m, &c);
        // Shard 0: n4 is a backup; n1 hands the primary over, then leaves.
        let c = plan(&m, &h, 0);
        let c0 = c.iter().find(|c| c.shard == 0).unwrap();
        assert_eq!(c0.what, "handed primary over from n1 to n3");
        commit(&mut m, &c);
        let c = plan(&m, &h, 0);
        let c0 = c.iter().find(|c| c.shard == 0).unwrap();
        assert_eq!(c0.what, "dropped n1");
        commit(&mut m, &c);
        let s0 = &m.tables["t"].shards[0].replicas;
        assert!(!s0.holders().any(|n| n == "n1"));
        assert_eq!(s0.holders().count(), 3);
    }
}

/// An operator's change to one shard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ManualOp {
    /// Switch the primary to this backup (a clean handover: the old primary
    /// becomes a backup and hands its lease over by answering the new one).
    Promote { node: NodeId },
    /// Move a backup's copy to another node (built as a learner first).
    Move { from: NodeId, to: NodeId },
    /// Drop a backup or learner now (it is re-created elsewhere if the
    /// table's replication factor needs it).
    RemoveReplica { node: NodeId },
}

/// The configuration change an operator's request makes, or why not.
pub fn manual(
    map: &ClusterMap,
    table: &str,
    shard: u32,
    op: &ManualOp,
    health: &Health,
) -> Result<Change, String> {
    let t = map
        .tables
        .get(table)
        .ok_or_else(|| format!("table {table:?} does not exist"))?;
    let s = t
        .shards
        .get(shard as usize)
        .ok_or_else(|| format!("table {table:?} has shards 0..{}", t.shards.len()))?;
    let r = &s.replicas;
    let name = format!("{table}/{shard}");
    let change = |primary: NodeId, backups, learners, moves, what, why: &str| Change {
        table: table.to_owned(),
        shard,
        expect_epoch: r.epoch,
        primary,
        backups,
        learners,
        moves,
        what,
        why: why.to_owned(),
        away: r.away.clone(),
    };
    match op {
        ManualOp::Promote { node } => {
            if *node == r.primary {
                return Err(format!("{node} already leads {name}"));
            }
            if !r.backups.contains(node) {
                return Err(format!(
                    "{node} is not a backup of {name} (backups: {})",
                    r.backups.join(", ")
                ));
            }
            if !health.live.contains(node) {
                return Err(format!("{node} is not live"));
            }
            let mut backups: Vec<NodeId> =
                r.backups.iter().filter(|b| *b != node).cloned().collect();
            backups.push(r.primary.clone());
            Ok(change(
                node.clone(),
                backups,
                r.learners.clone(),
                r.moves.clone(),
                format!("handed primary over from {} to {node}", r.primary),
                "operator: promote",
            ))
        }
        ManualOp::Move { from, to } => {
            if *from == r.primary {
                return Err(format!(
                    "{from} is the primary of {name}: promote another copy first (`promote {name} --node <backup>`)"
                ));
            }
            if !r.backups.contains(from) {
                return Err(format!("{from} holds no backup of {name}"));
            }
            if r.holders().any(|h| h == to) {
                return Err(format!("{to} already holds a copy of {name}"));
            }
            if let Some(rule) = t.placement.as_ref().filter(|p| !p.allows(to)) {
                return Err(format!(
                    "{to} is outside the placement rule of table {table:?} ({rule}): change the rule first"
                ));
            }
            match map.nodes.get(to) {
                Some(e) if e.state == NodeState::Active => {}
                Some(e) => return Err(format!("{to} is {}", e.state)),
                None => return Err(format!("node {to:?} is not in the cluster")),
            }
            if !health.live.contains(to) {
                return Err(format!("{to} is not live"));
            }
            let mut learners = r.learners.clone();
            learners.push(to.clone());
            let mut moves = r.moves.clone();
            moves.push((to.clone(), from.clone()));
            Ok(change(
                r.primary.clone(),
                r.backups.clone(),
                learners,
                moves,
                format!("added learner {to} to replace {from}"),
                "operator: move-shard",
            ))
        }
        ManualOp::RemoveReplica { node } => {
            if *node == r.primary {
                return Err(format!(
                    "{node} is the primary of {name}: promote another copy first"
                ));
            }
            if !r.backups.contains(node) && !r.learners.contains(node) {
                return Err(format!("{node} holds no copy of {name}"));
            }
            Ok(change(
                r.primary.clone(),
                r.backups.iter().filter(|b| *b != node).cloned().collect(),
                r.learners.iter().filter(|b| *b != node).cloned().collect(),
                r.moves
                    .iter()
                    .filter(|(l, m)| l != node && m != node)
                    .cloned()
                    .collect(),
                format!("dropped {node}"),
                "operator: remove-replica",
            ))
        }
    }
}
