//! Elastic tables, the decisions (issue 16, first step): which shard to
//! split and where, which two shards to merge, and when. Pure: the map, the
//! shards' sizes and loads, the time and what was decided before come in;
//! decisions go out. The coordinator carries out its splits
//! (`tstore_actors` coordinator, `elastic`), and its merges step by step
//! ([`crate::coordinator::merge`]).
//!
//! Key spaces:
//! - a range shard `[start, end)` splits at a key `k` strictly inside it
//!   (the median key of its rows unless an operator names one) into
//!   `[start, k)` and `[k, end)`; two range shards merge when one ends
//!   where the other starts;
//! - a hash shard `hash % of = slot` splits into `hash % 2·of = slot` and
//!   `hash % 2·of = slot + of` (extendible hashing): the two halves are
//!   exactly its keys, so routing stays a pure function of the map (a key
//!   belongs to the one shard whose `hash % of` is its `slot`), a shard
//!   splits without the others changing, and no fixed slot space caps how
//!   far it goes. Two hash shards merge only when they are such siblings
//!   ([`hash_siblings`]), back into `hash % of/2`.
//!
//! When:
//! - **split** a shard whose size on disk is over `split_size_bytes`, or
//!   whose load has stayed over `split_load_ops` for `load_for_ms` and
//!   which holds at least `min_split_bytes` (a tiny hot shard is a hot key,
//!   which a split cannot spread);
//! - **merge** two neighbours that have both stayed cold (under a quarter
//!   of `split_load_ops`) for `merge_after_ms` and whose sum stays under
//!   half of `split_size_bytes`, so the merged shard is far from splitting
//!   again (hysteresis);
//! - never **churn**: a shard born of a split or merge less than
//!   `settle_ms` ago takes part in neither;
//! - only a table's newest shard is merged away (shard indices name
//!   storage: absorbing another would leave a hole), into a neighbour, one
//!   merge per table at a time; moving its copies next to the neighbour's
//!   is the merge's first step ([`crate::coordinator::merge`]);
//! - at most `max_at_once` decisions per call, biggest first, and none on
//!   a shard already busy (a split, merge or move under way).

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster_map::{ClusterMap, KeyRange, RowKey};
use crate::replication::Millis;

/// `(table, shard index)`.
pub type ShardRef = (String, u32);

/// What the planner is told about one shard (its primary's report).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardStats {
    /// Bytes of its rows (keys and stored values; the retained log is
    /// bounded on its own and a split does not divide it).
    pub size_bytes: u64,
    /// Reads and writes per second, over the last reporting interval.
    pub ops_per_sec: u64,
    /// The median key of its rows (range shards), if known.
    pub median: Option<RowKey>,
}

/// The thresholds (cluster settings; a table may turn either off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticConfig {
    /// Split a shard bigger than this; 0: never by size.
    pub split_size_bytes: u64,
    /// Split a shard busier than this for `load_for_ms`; 0: never by load.
    pub split_load_ops: u64,
    pub load_for_ms: Millis,
    /// Never split a shard smaller than this.
    pub min_split_bytes: u64,
    /// Merge neighbours cold and small for this long; 0: never merge.
    pub merge_after_ms: Millis,
    /// A shard born of a split or merge takes part in neither for this
    /// long.
    pub settle_ms: Millis,
    /// Decisions per call, at most.
    pub max_at_once: usize,
}

impl Default for ElasticConfig {
    fn default() -> Self {
        Self {
            // A split copies half the shard's rows within its node, in one
            // transaction of the node's group commit: kept to about 32 MiB.
            split_size_bytes: 64 << 20,
            split_load_ops: 3_000,
            load_for_ms: 60_000,
            min_split_bytes: 16 << 20,
            merge_after_ms: 600_000,
            settle_ms: 600_000,
            max_at_once: 1,
        }
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elastic {
    /// Split `shard` of `table` into `left` and `right` (the parent's key
    /// space, halved).
    Split {
        table: String,
        shard: u32,
        left: KeyRange,
        right: KeyRange,
        why: String,
    },
    /// Merge `absorb` (the table's newest shard) into its neighbour `keep`,
    /// which then holds `into` (carried out step by step:
    /// [`crate::coordinator::merge`]).
    Merge {
        table: String,
        keep: u32,
        absorb: u32,
        into: KeyRange,
        why: String,
    },
}

/// What the planner remembers between calls.
#[derive(Debug, Default)]
pub struct ElasticMemory {
    /// Since when each shard has been over `split_load_ops`.
    hot_since: BTreeMap<ShardRef, Millis>,
    /// Since when each shard has been cold and small (merge candidate).
    cold_since: BTreeMap<ShardRef, Millis>,
    /// Key spaces born of a split or merge, and when.
    born: BTreeMap<(String, KeyRange), Millis>,
}

impl ElasticMemory {
    /// A split or merge producing `range` of `table` was carried out at
    /// `now`: it is left alone for `settle_ms`.
    pub fn born(&mut self, table: &str, range: KeyRange, now: Millis) {
        self.born.insert((table.to_owned(), range), now);
    }
}

pub use crate::cluster_map::{halves, hash_siblings, merged};

/// `612 MiB` (`16.4 MiB` below 100 of a unit, so that a size just over a
/// threshold does not print as equal to it), in KiB below a MiB, in bytes
/// below a KiB.
fn mib(bytes: u64) -> String {
    let (unit, name) = match bytes {
        b if b >= 1 << 20 => (1u64 << 20, "MiB"),
        b if b >= 1 << 10 => (1 << 10, "KiB"),
        b => return format!("{b} B"),
    };
    let v = bytes as f64 / unit as f64;
    if bytes % unit == 0 || v >= 100.0 {
        format!("{v:.0} {name}")
    } else {
        format!("{v:.1} {name}")
    }
}

/// The decisions to make at `now`, at most `cfg.max_at_once`; `busy`:
/// shards with a change under way (left alone).
pub fn plan(
    map: &ClusterMap,
    stats: &BTreeMap<ShardRef, ShardStats>,
    cfg: &ElasticConfig,
    memory: &mut ElasticMemory,
    busy: &BTreeSet<ShardRef>,
    now: Millis,
) -> Vec<Elastic> {
    let settled = |memory: &ElasticMemory, table: &str, range: &KeyRange| {
        memory
            .born
            .get(&(table.to_owned(), range.clone()))
            .is_none_or(|at| now.saturating_sub(*at) >= cfg.settle_ms)
    };
    // What each shard is now: remembered over calls.
    let cold_ops = cfg.split_load_ops / 4;
    let small = cfg.split_size_bytes / 2;
    let mut seen = BTreeSet::new();
    for (key, st) in stats {
        seen.insert(key.clone());
        if cfg.split_load_ops > 0 && st.ops_per_sec > cfg.split_load_ops {
            memory.hot_since.entry(key.clone()).or_insert(now);
        } else {
            memory.hot_since.remove(key);
        }
        if st.ops_per_sec <= cold_ops && st.size_bytes < small {
            memory.cold_since.entry(key.clone()).or_insert(now);
        } else {
            memory.cold_since.remove(key);
        }
    }
    memory.hot_since.retain(|k, _| seen.contains(k));
    memory.cold_since.retain(|k, _| seen.contains(k));
    memory
        .born
        .retain(|_, at| now.saturating_sub(*at) < cfg.settle_ms);

    // Splits, biggest first.
    let mut splits: Vec<(u64, Elastic)> = Vec::new();
    for t in map.tables.values().filter(|t| t.auto_split) {
        for s in &t.shards {
            let key = (t.spec.name.clone(), s.index);
            let Some(st) = stats.get(&key) else { continue };
            if busy.contains(&key) || !settled(memory, &t.spec.name, &s.range) {
                continue;
            }
            let by_size = cfg.split_size_bytes > 0 && st.size_bytes > cfg.split_size_bytes;
            let hot_for = memory
                .hot_since
                .get(&key)
                .map(|since| now.saturating_sub(*since));
            let by_load = hot_for.is_some_and(|ms| ms >= cfg.load_for_ms)
                && st.size_bytes >= cfg.min_split_bytes;
            if !(by_size || by_load) || st.size_bytes < cfg.min_split_bytes {
                continue;
            }
            let Some((left, right)) = halves(&s.range, st.median.as_ref()) else {
                continue;
            };
            let why = if by_size {
                format!(
                    "split: {} > {}",
                    mib(st.size_bytes),
                    mib(cfg.split_size_bytes)
                )
            } else {
                format!(
                    "split: {} ops/s > {} ops/s for {} s",
                    st.ops_per_sec,
                    cfg.split_load_ops,
                    hot_for.unwrap_or(0) / 1000
                )
            };
            splits.push((
                st.size_bytes,
                Elastic::Split {
                    table: t.spec.name.clone(),
                    shard: s.index,
                    left,
                    right,
                    why,
                },
            ));
        }
    }
    splits.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    let mut out: Vec<Elastic> = splits
        .into_iter()
        .map(|(_, e)| e)
        .take(cfg.max_at_once)
        .collect();

    // Merges of neighbours cold for long enough.
    if cfg.merge_after_ms == 0 {
        return out;
    }
    let cold = |key: &ShardRef| {
        memory
            .cold_since
            .get(key)
            .is_some_and(|since| now.saturating_sub(*since) >= cfg.merge_after_ms)
    };
    for t in map.tables.values().filter(|t| t.auto_merge) {
        if out.len() >= cfg.max_at_once {
            break;
        }
        // Only the newest shard is absorbed (shard indices name storage),
        // into a neighbour; one merge at a time per table.
        let Some(b) = t.shards.last().filter(|_| t.shards.len() > 1) else {
            continue;
        };
        if t.merge_under_way().is_some() {
            continue;
        }
        let kb = (t.spec.name.clone(), b.index);
        let partner = t.shards[..t.shards.len() - 1].iter().find_map(|a| {
            let ka = (t.spec.name.clone(), a.index);
            let into = merged(&a.range, &b.range)?;
            let ready = !busy.contains(&ka)
                && !busy.contains(&kb)
                && cold(&ka)
                && cold(&kb)
                && settled(memory, &t.spec.name, &a.range)
                && settled(memory, &t.spec.name, &b.range);
            let size = stats.get(&ka)?.size_bytes + stats.get(&kb)?.size_bytes;
            (ready && size < small).then_some((a.index, into, size))
        });
        let Some((keep, into, size)) = partner else {
            continue;
        };
        out.push(Elastic::Merge {
            table: t.spec.name.clone(),
            keep,
            absorb: b.index,
            into,
            why: format!(
                "merge: {} together < {}, cold for {} s",
                mib(size),
                mib(small),
                cfg.merge_after_ms / 1000
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::{MapCommand, Sharding, TableSpec};

    const MIB: u64 = 1 << 20;

    /// Nodes n1..n3 and table `t` sharded as `sharding`, every shard on
    /// the three nodes but shard 1's last backup on n4 when `spread`.
    fn map(sharding: Sharding, spread: bool) -> ClusterMap {
        let mut m = ClusterMap::default();
        for i in 1..=4 {
            m.apply(&MapCommand::RegisterNode {
                node_id: format!("n{i}"),
                addr: String::new(),
                zone: String::new(),
            })
            .unwrap();
        }
        let n = sharding.shard_count();
        let placement = (0..n)
            .map(|i| {
                let last = if spread && i == 1 { "n4" } else { "n3" };
                ("n1".to_string(), vec!["n2".to_string(), last.to_string()])
            })
            .collect();
        m.apply(&MapCommand::CreateTable {
            spec: TableSpec {
                name: "t".into(),
                key: "id".into(),
                sharding,
                replicas: 3,
                min_copies: 0,
            },
            placement,
        })
        .unwrap();
        m
    }

    fn cfg() -> ElasticConfig {
        ElasticConfig {
            split_size_bytes: 64 * MIB,
            split_load_ops: 1_000,
            load_for_ms: 10_000,
            min_split_bytes: 4 * MIB,
            merge_after_ms: 30_000,
            settle_ms: 60_000,
            max_at_once: 4,
        }
    }

    fn stats(of: &[(u32, u64, u64, Option<i64>)]) -> BTreeMap<ShardRef, ShardStats> {
        of.iter()
            .map(|(i, size, ops, median)| {
                (
                    ("t".to_string(), *i),
                    ShardStats {
                        size_bytes: *size,
                        ops_per_sec: *ops,
                        median: median.map(RowKey::Int),
                    },
                )
            })
            .collect()
    }

    fn range(start: Option<i64>, end: Option<i64>) -> KeyRange {
        KeyRange::Range {
            start: start.map(RowKey::Int),
            end: end.map(RowKey::Int),
        }
    }

    #[test]
    fn key_spaces_halve_and_merge_back_exactly() {
        let h = KeyRange::HashSlot { slot: 3, of: 8 };
        let (a, b) = halves(&h, None).unwrap();
        assert_eq!(a, KeyRange::HashSlot { slot: 3, of: 16 });
        assert_eq!(b, KeyRange::HashSlot { slot: 11, of: 16 });
        // Every hash in the parent is in exactly one half.
        for hash in 0..1_000u32 {
            let in_parent = hash % 8 == 3;
            let halves = [hash % 16 == 3, hash % 16 == 11];
            assert_eq!(in_parent, halves.iter().filter(|x| **x).count() == 1);
            assert!(halves.iter().filter(|x| **x).count() <= 1);
        }
        assert_eq!(merged(&a, &b), Some(h.clone()));
        assert_eq!(merged(&b, &a), Some(h));
        // Not siblings: a different split level, or slots not of/2 apart.
        assert_eq!(merged(&a, &KeyRange::HashSlot { slot: 5, of: 16 }), None);
        assert_eq!(merged(&a, &KeyRange::HashSlot { slot: 11, of: 32 }), None);

        let r = range(Some(10), None);
        assert_eq!(halves(&r, None), None, "a range needs a key");
        assert_eq!(halves(&r, Some(&RowKey::Int(10))), None, "not inside");
        assert_eq!(halves(&r, Some(&RowKey::Int(5))), None, "not inside");
        let (a, b) = halves(&r, Some(&RowKey::Int(50))).unwrap();
        assert_eq!(
            (a.clone(), b.clone()),
            (range(Some(10), Some(50)), range(Some(50), None))
        );
        assert_eq!(merged(&a, &b), Some(r.clone()));
        assert_eq!(merged(&b, &a), Some(r));
        assert_eq!(merged(&range(None, Some(10)), &range(Some(20), None)), None);
        assert_eq!(merged(&range(None, None), &range(None, None)), None);
    }

    #[test]
    fn a_shard_splits_by_size_at_once_and_by_load_only_once_it_lasted() {
        let m = map(
            Sharding::Range {
                splits: vec![RowKey::Int(100)],
            },
            false,
        );
        let mut mem = ElasticMemory::default();
        let none = BTreeSet::new();
        // Shard 0 is too big; shard 1 hot but not yet for long.
        let s = stats(&[(0, 70 * MIB, 10, Some(40)), (1, 8 * MIB, 5_000, Some(150))]);
        let out = plan(&m, &s, &cfg(), &mut mem, &none, 0);
        assert_eq!(
            out,
            vec![Elastic::Split {
                table: "t".into(),
                shard: 0,
                left: range(None, Some(40)),
                right: range(Some(40), Some(100)),
                why: "split: 70 MiB > 64 MiB".into(),
            }]
        );
        let out = plan(&m, &s, &cfg(), &mut mem, &none, 9_999);
        assert_eq!(out.len(), 1, "shard 1 not hot for long enough: {out:?}");
        let out = plan(&m, &s, &cfg(), &mut mem, &none, 10_000);
        assert!(out.contains(&Elastic::Split {
            table: "t".into(),
            shard: 1,
            left: range(Some(100), Some(150)),
            right: range(Some(150), None),
            why: "split: 5000 ops/s > 1000 ops/s for 10 s".into(),
        }));
        // Busy shards are left alone; a cool-down resets the clock.
        let busy: BTreeSet<ShardRef> = [("t".to_string(), 0), ("t".to_string(), 1)].into();
        assert!(plan(&m, &s, &cfg(), &mut mem, &busy, 10_001).is_empty());
        let cool = stats(&[(0, 1, 10, Some(40)), (1, 8 * MIB, 10, Some(150))]);
        plan(&m, &cool, &cfg(), &mut mem, &none, 10_002);
        let out = plan(&m, &s, &cfg(), &mut mem, &none, 10_003);
        assert!(out
            .iter()
            .all(|e| !matches!(e, Elastic::Split { shard: 1, .. })));
    }

    #[test]
    fn never_below_the_minimum_size_nor_without_a_split_key() {
        let m = map(
            Sharding::Range {
                splits: vec![RowKey::Int(1000)],
            },
            false,
        );
        let mut mem = ElasticMemory::default();
        let none = BTreeSet::new();
        // A hot key: busy for long, but tiny.
        let tiny = stats(&[(0, MIB, 50_000, Some(1))]);
        for now in [0, 60_000, 120_000] {
            assert!(plan(&m, &tiny, &cfg(), &mut mem, &none, now).is_empty());
        }
        // Big, but every row has one key (no median strictly inside).
        let one_key = stats(&[(0, 100 * MIB, 0, None)]);
        assert!(plan(&m, &one_key, &cfg(), &mut mem, &none, 0).is_empty());
    }

    #[test]
    fn cold_small_neighbours_merge_once_colocated_and_nothing_churns() {
        let m = map(Sharding::Hash { shards: 4 }, true);
        let mut mem = ElasticMemory::default();
        let none = BTreeSet::new();
        let cold = stats(&[
            (0, MIB, 1, None),
            (1, MIB, 1, None),
            (2, MIB, 1, None),
            (3, MIB, 1, None),
        ]);
        assert!(
            plan(&m, &cold, &cfg(), &mut mem, &none, 0).is_empty(),
            "not cold for long yet"
        );
        let out = plan(&m, &cold, &cfg(), &mut mem, &none, 30_000);
        // Siblings of `% 4`: slots 0 and 2, 1 and 3. Only the newest shard
        // (3) is merged away, into its sibling 1 (whose copies are on other
        // nodes: the merge moves them first).
        assert_eq!(
            out,
            vec![Elastic::Merge {
                table: "t".into(),
                keep: 1,
                absorb: 3,
                into: KeyRange::HashSlot { slot: 1, of: 2 },
                why: "merge: 2 MiB together < 32 MiB, cold for 30 s".into(),
            }]
        );
        // Not in a table whose automatic merges are off.
        let mut off = m.clone();
        off.tables.get_mut("t").unwrap().auto_merge = false;
        assert!(plan(&off, &cold, &cfg(), &mut mem, &none, 30_000).is_empty());
        // Not while a merge is under way in the table.
        let mut under_way = m.clone();
        under_way
            .apply(&MapCommand::BeginMerge {
                table: "t".into(),
                keep: 1,
                absorb: 3,
                why: String::new(),
                at_unix_ms: 0,
            })
            .unwrap();
        assert!(plan(&under_way, &cold, &cfg(), &mut mem, &none, 40_000).is_empty());
        // Born of a split (or merge) recently: neither merged nor split.
        let mut mem = ElasticMemory::default();
        mem.born("t", KeyRange::HashSlot { slot: 0, of: 4 }, 0);
        mem.born("t", KeyRange::HashSlot { slot: 1, of: 4 }, 0);
        plan(&m, &cold, &cfg(), &mut mem, &none, 0);
        let out = plan(&m, &cold, &cfg(), &mut mem, &none, 59_999);
        assert!(out.is_empty(), "{out:?}");
        let big = stats(&[
            (0, 100 * MIB, 1, None),
            (1, MIB, 1, None),
            (2, MIB, 1, None),
            (3, MIB, 1, None),
        ]);
        assert!(plan(&m, &big, &cfg(), &mut mem, &none, 59_999).is_empty());
        // After the settling time: shard 0 splits.
        let out = plan(&m, &big, &cfg(), &mut mem, &none, 60_000);
        assert!(matches!(out[0], Elastic::Split { shard: 0, .. }), "{out:?}");
        // Two cold shards whose sum is not small stay apart (hysteresis).
        let mut mem = ElasticMemory::default();
        let mid = stats(&[
            (0, 20 * MIB, 1, None),
            (2, 20 * MIB, 1, None),
            (1, 40 * MIB, 1, None),
            (3, MIB, 1, None),
        ]);
        plan(&m, &mid, &cfg(), &mut mem, &none, 0);
        assert!(plan(&m, &mid, &cfg(), &mut mem, &none, 30_000).is_empty());
    }
}
