//! Carrying out a merge (elastic tables), step by step: what the
//! coordinator does next for the merge under way in a table, from the map,
//! liveness and what each copy of the two shards reports. Pure; the
//! coordinator (`tstore_actors` coordinator, `merge`) asks the copies and
//! commits the step, every round while a merge is under way.
//!
//! The steps (`cluster_map::Merging`):
//! 1. **co-locate**: the absorbed shard's copies go where the kept shard's
//!    are, one change at a time (a move, as `move-shard` does; a primary
//!    not on the kept shard's nodes hands over to a backup first). The
//!    rebalancer leaves both shards alone meanwhile.
//! 2. **seal**, once both have the same members and no copy being moved:
//!    both take an epoch in which their primaries take no writes.
//! 3. **finish**, once every member of both reports itself settled at one
//!    position (`CopyStatus::sealed_at`: logged and applied there, nothing
//!    in flight), the same on every copy of a shard: the map hands the
//!    absorbed shard's keys over with those positions.
//!
//! A merge that cannot finish is given up ([`MergeStep::Cancel`]): sealed
//! for longer than `sealed_ms` (writes to both shards wait meanwhile, so
//! this bounds the pause), its copies changed while sealed (a node died:
//! healing goes first), or not done within `total_ms` of its start.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster_map::{ClusterMap, NodeId};
use crate::coordinator::failover::{manual, Change, Health, ManualOp};
use crate::replication::Millis;

/// What a copy of one of the two shards reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySeal {
    pub epoch: u64,
    /// `CopyStatus::sealed_at`.
    pub sealed_at: Option<u64>,
}

/// How long a merge may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeLimits {
    /// From `BeginMerge` to done.
    pub total_ms: Millis,
    /// Sealed (writes refused) at most this long.
    pub sealed_ms: Millis,
}

impl Default for MergeLimits {
    fn default() -> Self {
        Self {
            total_ms: 300_000,
            sealed_ms: 10_000,
        }
    }
}

/// The next step of a table's merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeStep {
    /// Nothing to do now, and why.
    Wait(String),
    /// Move one copy of the absorbed shard towards the kept one's nodes.
    Colocate(Change),
    Seal {
        expect_epochs: (u64, u64),
    },
    Finish {
        expect_epochs: (u64, u64),
        seqs: (u64, u64),
    },
    Cancel(String),
}

/// The merge under way in `table`, its next step; `None` when there is
/// none. `now`: the coordinator's wall clock (the merge's start in the map
/// is one too); `sealed_for`: how long this coordinator has seen it sealed;
/// `reports`: by `(shard, node)`, what each member copy of the two shards
/// answered (missing: no answer).
pub fn step(
    map: &ClusterMap,
    table: &str,
    health: &Health,
    reports: &BTreeMap<(u32, NodeId), CopySeal>,
    now: Millis,
    sealed_for: Millis,
    limits: &MergeLimits,
) -> Option<MergeStep> {
    let t = map.tables.get(table)?;
    let (absorb, keep, sealed) = t.merge_under_way()?;
    let (k, a) = (&t.shards[keep as usize], &t.shards[absorb as usize]);
    let since = a.merging.as_ref().map_or(now, |m| m.since_unix_ms);
    let name = |i: u32| format!("{table}/{i}");
    if now.saturating_sub(since) > limits.total_ms {
        return Some(MergeStep::Cancel(format!(
            "merge: not done within {} s",
            limits.total_ms / 1000
        )));
    }
    let members = |s: &crate::cluster_map::Shard| -> BTreeSet<NodeId> {
        s.replicas.members().cloned().collect()
    };
    let (mk, ma) = (members(k), members(a));
    let moving = !k.replicas.learners.is_empty() || !a.replicas.learners.is_empty();
    let why = format!(
        "merge: {}'s copies go where {}'s are",
        name(absorb),
        name(keep)
    );
    // The two primaries on one node: once merged, the kept shard's primary
    // takes writes at once, and no other node may still hold a lease on
    // the absorbed keys.
    let lead_together = |why: String| {
        let op = ManualOp::Promote {
            node: k.replicas.primary.clone(),
        };
        Some(match manual(map, table, absorb, &op, health) {
            Ok(mut change) => {
                change.why = why;
                MergeStep::Colocate(change)
            }
            Err(e) => MergeStep::Wait(format!(
                "cannot hand {}'s primary over yet: {e}",
                name(absorb)
            )),
        })
    };
    if sealed {
        if mk != ma || moving {
            let learners = |s: &crate::cluster_map::Shard| s.replicas.learners.clone();
            return Some(MergeStep::Cancel(format!(
                "merge: the copies of {} and {} changed while sealed ({} on {mk:?}, learners {:?}; {} on {ma:?}, learners {:?}); healing goes first",
                name(keep),
                name(absorb),
                name(keep),
                learners(k),
                name(absorb),
                learners(a)
            )));
        }
        if sealed_for > limits.sealed_ms {
            return Some(MergeStep::Cancel(format!(
                "merge: the copies did not settle within {} s of sealing",
                limits.sealed_ms / 1000
            )));
        }
        if k.replicas.primary != a.replicas.primary {
            return lead_together(why); // a failover moved one while sealed
        }
        let settled = |i: u32, epoch: u64, nodes: &BTreeSet<NodeId>| -> Result<u64, String> {
            let mut at = None;
            for n in nodes {
                match reports.get(&(i, n.clone())) {
                    Some(CopySeal {
                        epoch: e,
                        sealed_at: Some(s),
                    }) if *e == epoch => {
                        if at.is_some_and(|a| a != *s) {
                            return Err(format!("the copies of {} differ", name(i)));
                        }
                        at = Some(*s);
                    }
                    _ => return Err(format!("{n}'s copy of {} has not settled", name(i))),
                }
            }
            at.ok_or_else(|| format!("{} has no members", name(i)))
        };
        let (ek, ea) = (k.replicas.epoch, a.replicas.epoch);
        return Some(match (settled(keep, ek, &mk), settled(absorb, ea, &ma)) {
            (Ok(sk), Ok(sa)) => MergeStep::Finish {
                expect_epochs: (ek, ea),
                seqs: (sk, sa),
            },
            (Err(why), _) | (_, Err(why)) => MergeStep::Wait(why),
        });
    }
    if let Some(n) = mk.iter().chain(&ma).find(|n| !health.live.contains(*n)) {
        return Some(MergeStep::Wait(format!("{n} is not live")));
    }
    if moving {
        return Some(MergeStep::Wait("a copy is being added or moved".into()));
    }
    if mk == ma && k.replicas.primary != a.replicas.primary {
        return lead_together(why);
    }
    if mk == ma {
        return Some(MergeStep::Seal {
            expect_epochs: (k.replicas.epoch, a.replicas.epoch),
        });
    }
    if mk.len() != ma.len() {
        return Some(MergeStep::Wait(format!(
            "{} has {} copies, {} {}: healing goes first",
            name(keep),
            mk.len(),
            name(absorb),
            ma.len()
        )));
    }
    // One copy of the absorbed shard moves where a copy of the kept one is.
    let to = mk.difference(&ma).next().expect("the sets differ").clone();
    let r = &a.replicas;
    if r.backups.is_empty() {
        return Some(MergeStep::Cancel(format!(
            "merge: {} has a single copy, on {}, and {}'s is on {}: a lone primary cannot move (merge single-copy shards on one node)",
            name(absorb),
            r.primary,
            name(keep),
            k.replicas.primary
        )));
    }
    let from = r
        .backups
        .iter()
        .find(|b| !mk.contains(*b))
        .cloned()
        .map(|from| ManualOp::Move { from, to })
        .unwrap_or_else(|| {
            // Only the primary is out of place: it hands over first, to a
            // backup that stays.
            ManualOp::Promote {
                node: r.backups.first().cloned().unwrap_or_default(),
            }
        });
    Some(match manual(map, table, absorb, &from, health) {
        Ok(mut change) => {
            change.why = why;
            MergeStep::Colocate(change)
        }
        Err(e) => MergeStep::Wait(format!("cannot move {}'s copies yet: {e}", name(absorb))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::MapCommand;
    use crate::coordinator::test_maps;

    fn health(map: &ClusterMap) -> Health {
        Health {
            live: map.nodes.keys().cloned().collect(),
            ..Default::default()
        }
    }

    fn begin(m: &mut ClusterMap, at: u64) {
        m.apply(&MapCommand::BeginMerge {
            table: "t".into(),
            keep: 0,
            absorb: 1,
            why: "test".into(),
            at_unix_ms: at,
        })
        .unwrap();
    }

    /// The first step with the copies on the same nodes: shard 1's primary
    /// (n2) hands over to n1, where shard 0's is.
    fn lead_together(m: &mut ClusterMap) {
        let MergeStep::Colocate(c) = step_now(m, &BTreeMap::new()) else {
            panic!("a handover expected")
        };
        assert_eq!((c.shard, c.primary.as_str()), (1, "n1"));
        assert!(c.why.starts_with("merge:"));
        m.apply(&c.into_command(1_000)).unwrap();
    }

    /// The step at time `now`, every node live, with default limits.
    fn step_at(
        m: &ClusterMap,
        reports: &BTreeMap<(u32, NodeId), CopySeal>,
        now: u64,
    ) -> Option<MergeStep> {
        step(m, "t", &health(m), reports, now, 0, &MergeLimits::default())
    }

    fn step_now(m: &ClusterMap, reports: &BTreeMap<(u32, NodeId), CopySeal>) -> MergeStep {
        step_at(m, reports, 1_000).unwrap()
    }

    fn settled(m: &ClusterMap, at: (u64, u64)) -> BTreeMap<(u32, NodeId), CopySeal> {
        let t = &m.tables["t"];
        let mut r = BTreeMap::new();
        for (i, seq) in [(0u32, at.0), (1, at.1)] {
            let s = &t.shards[i as usize];
            for n in s.replicas.members() {
                r.insert(
                    (i, n.clone()),
                    CopySeal {
                        epoch: s.replicas.epoch,
                        sealed_at: Some(seq),
                    },
                );
            }
        }
        r
    }

    #[test]
    fn co_located_shards_seal_then_finish_once_every_copy_settled_at_one_position() {
        let mut m = test_maps::map(3, &[]);
        assert_eq!(step_at(&m, &BTreeMap::new(), 0), None);
        begin(&mut m, 1_000);
        lead_together(&mut m);
        let MergeStep::Seal { expect_epochs } = step_now(&m, &BTreeMap::new()) else {
            panic!("seal expected")
        };
        m.apply(&MapCommand::SealMerge {
            table: "t".into(),
            absorb: 1,
            expect_epochs,
            at_unix_ms: 1_000,
        })
        .unwrap();
        assert!(m.tables["t"].sealed(0) && m.tables["t"].sealed(1));
        // One backup of shard 1 is still behind: wait.
        let mut reports = settled(&m, (40, 70));
        reports.insert(
            (1, "n3".into()),
            CopySeal {
                epoch: m.tables["t"].shards[1].replicas.epoch,
                sealed_at: Some(69),
            },
        );
        assert!(matches!(step_now(&m, &reports), MergeStep::Wait(w) if w.contains("differ")));
        reports.remove(&(1, "n3".into()));
        assert!(matches!(step_now(&m, &reports), MergeStep::Wait(w) if w.contains("n3")));
        // A report from an older epoch does not count.
        let mut old = settled(&m, (40, 70));
        old.get_mut(&(0, "n2".into())).unwrap().epoch -= 1;
        assert!(matches!(step_now(&m, &old), MergeStep::Wait(_)));
        let MergeStep::Finish {
            expect_epochs,
            seqs,
        } = step_now(&m, &settled(&m, (40, 70)))
        else {
            panic!("finish expected")
        };
        assert_eq!(seqs, (40, 70));
        m.apply(&MapCommand::FinishMerge {
            table: "t".into(),
            absorb: 1,
            expect_epochs,
            seqs,
            at_unix_ms: 2_000,
        })
        .unwrap();
        let t = &m.tables["t"];
        assert_eq!(t.shards.len(), 1);
        assert_eq!(
            t.shards[0].range,
            crate::cluster_map::KeyRange::HashSlot { slot: 0, of: 1 }
        );
        let merged = t.shards[0].merged.clone().unwrap();
        assert_eq!(
            (merged.absorbed, merged.seqs, merged.log_from()),
            (1, (40, 70), 71)
        );
        assert!(!t.sealed(0) && t.merge_under_way().is_none());
        // The index freed is split off again: its epochs go on above the
        // absorbed shard's last.
        let last = expect_epochs.1;
        assert_eq!(t.retired.get(&1), Some(&last));
        let e0 = t.shards[0].replicas.epoch;
        m.apply(&MapCommand::SplitShard {
            table: "t".into(),
            shard: 0,
            expect_epoch: e0,
            at: None,
            why: String::new(),
            at_unix_ms: 3_000,
        })
        .unwrap();
        let t = &m.tables["t"];
        assert!(
            t.shards[1].replicas.epoch > last,
            "{:?}",
            t.shards[1].replicas
        );
        assert_eq!(t.shards[1].origin.as_ref().unwrap().epoch, e0 + 1);
        assert_eq!(step_at(&m, &BTreeMap::new(), 0), None);
    }

    #[test]
    fn the_absorbed_shards_copies_move_to_the_kept_ones_nodes_first() {
        let mut m = test_maps::map(4, &[]);
        // Shard 1 on n2 (primary), n3, n4; shard 0 on n1, n2, n3.
        let s1 = &mut m.tables.get_mut("t").unwrap().shards[1];
        s1.replicas.backups = vec!["n3".into(), "n4".into()];
        begin(&mut m, 1_000);
        let MergeStep::Colocate(c) = step_now(&m, &BTreeMap::new()) else {
            panic!("colocate expected")
        };
        assert_eq!(
            (c.shard, c.learners.clone(), c.moves.clone()),
            (
                1,
                vec!["n1".to_string()],
                vec![("n1".to_string(), "n4".to_string())]
            )
        );
        assert!(c.why.starts_with("merge:"));
        // While the copy is being built: wait; a split of the table is refused.
        m.apply(&c.into_command(1_000)).unwrap();
        assert!(matches!(step_now(&m, &BTreeMap::new()), MergeStep::Wait(_)));
        let e = m.tables["t"].shards[0].replicas.epoch;
        let split = m.apply(&MapCommand::SplitShard {
            table: "t".into(),
            shard: 0,
            expect_epoch: e,
            at: None,
            why: String::new(),
            at_unix_ms: 0,
        });
        assert!(split.unwrap_err().to_string().contains("being merged"));
    }

    #[test]
    fn a_merge_is_given_up_when_sealed_too_long_when_its_copies_change_or_when_too_slow() {
        let mut m = test_maps::map(3, &[]);
        begin(&mut m, 1_000);
        lead_together(&mut m);
        let limits = MergeLimits::default();
        let h = health(&m);
        let late = 1_000 + limits.total_ms + 1;
        assert!(matches!(
            step(&m, "t", &h, &BTreeMap::new(), late, 0, &limits),
            Some(MergeStep::Cancel(_))
        ));
        let e = (
            m.tables["t"].shards[0].replicas.epoch,
            m.tables["t"].shards[1].replicas.epoch,
        );
        m.apply(&MapCommand::SealMerge {
            table: "t".into(),
            absorb: 1,
            expect_epochs: e,
            at_unix_ms: 1_000,
        })
        .unwrap();
        let long = limits.sealed_ms + 1;
        assert!(
            matches!(step(&m, "t", &h, &BTreeMap::new(), 1_000, long, &limits), Some(MergeStep::Cancel(w)) if w.contains("settle"))
        );
        // A node dies: the failover planner drops it from shard 0 only.
        let r = m.tables["t"].shards[0].replicas.clone();
        m.apply(&MapCommand::SetReplicas {
            table: "t".into(),
            shard: 0,
            expect_epoch: r.epoch,
            primary: "n1".into(),
            backups: vec!["n2".into()],
            learners: vec![],
            moves: vec![],
            what: String::new(),
            why: String::new(),
            at_unix_ms: 0,
            away: vec![],
        })
        .unwrap();
        let Some(MergeStep::Cancel(why)) = step(&m, "t", &h, &BTreeMap::new(), 1_000, 0, &limits)
        else {
            panic!("cancel expected")
        };
        m.apply(&MapCommand::CancelMerge {
            table: "t".into(),
            absorb: 1,
            why,
            at_unix_ms: 1_000,
        })
        .unwrap();
        let t = &m.tables["t"];
        assert!(t.merge_under_way().is_none() && !t.sealed(0) && !t.sealed(1));
        assert_eq!(t.shards.len(), 2);
        assert!(m.events.back().unwrap().what.contains("given up"));
    }

    #[test]
    fn only_the_newest_shard_merges_and_only_into_a_neighbour() {
        let mut m = test_maps::map(3, &[]);
        let e = m.tables["t"].shards[0].replicas.epoch;
        m.apply(&MapCommand::SplitShard {
            table: "t".into(),
            shard: 0,
            expect_epoch: e,
            at: None,
            why: String::new(),
            at_unix_ms: 0,
        })
        .unwrap();
        // Shards: 0 = %4=0, 1 = %2=1, 2 = %4=2.
        let begin = |m: &mut ClusterMap, keep, absorb| {
            m.apply(&MapCommand::BeginMerge {
                table: "t".into(),
                keep,
                absorb,
                why: String::new(),
                at_unix_ms: 0,
            })
        };
        let itself = begin(&mut m, 2, 2).unwrap_err().to_string();
        assert!(itself.contains("with itself"), "{itself}");
        let missing = begin(&mut m, 0, 7).unwrap_err().to_string();
        assert!(missing.contains("t/7 does not exist"), "{missing}");
        let not_newest = begin(&mut m, 0, 1).unwrap_err().to_string();
        assert!(not_newest.contains("newest"), "{not_newest}");
        let not_siblings = begin(&mut m, 1, 2).unwrap_err().to_string();
        assert!(not_siblings.contains("not neighbours"), "{not_siblings}");
        begin(&mut m, 0, 2).unwrap();
        let twice = begin(&mut m, 0, 2).unwrap_err().to_string();
        assert!(twice.contains("one merge at a time"), "{twice}");
    }
}
