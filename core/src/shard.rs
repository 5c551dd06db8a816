//! Shard copies on a node: which the map gives it.
//!
//! [`plan`] is the pure decision: given the copies running here and the
//! committed map, which to start, which to stop, which to reconfigure (a new
//! epoch or a role change). The NodeActor carries it out every time the map
//! version changes. How the copies show in gossip is
//! [`crate::copy_gossip`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster_map::{ClusterMap, KeyRange, ReplicaSet, Table};

/// One shard of one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardKey {
    pub table: String,
    pub index: u32,
}

impl ShardKey {
    pub fn new(table: &str, index: u32) -> Self {
        Self {
            table: table.to_owned(),
            index,
        }
    }
}

impl fmt::Display for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.table, self.index)
    }
}

/// What this node is for a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LocalRole {
    Primary,
    Backup,
    /// Being built: copies a snapshot from the primary, then follows its
    /// log without counting for commits.
    Learner,
}

impl fmt::Display for LocalRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocalRole::Primary => "primary",
            LocalRole::Backup => "backup",
            LocalRole::Learner => "learner",
        })
    }
}

/// A copy as configured by the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCopy {
    pub role: LocalRole,
    pub replicas: ReplicaSet,
    /// The table's id in the map (its storage prefix) and key column.
    pub table_id: u64,
    pub key_column: String,
    /// Members the configuration needs for the primary to take writes.
    pub min_copies: usize,
    /// The keys the shard owns: the copy refuses a request for another key
    /// (a client routing by a map from before a split) as stale.
    pub range: KeyRange,
    /// The shards split off this one. The primary logs a split marker for
    /// each one its copy has not applied yet (`tstore_actors` shard actor,
    /// "Splits").
    pub children: Vec<SplitChild>,
    /// The shard this one was split from: a member copy not yet built by
    /// its node's copy of the parent waits for it.
    pub split_from: Option<u32>,
    /// What names this shard among every shard ever at its index
    /// (`Origin::birth`; `None` for a shard the table was created with): a
    /// copy this node holds that was built for another is not this one's.
    pub born: Option<(u64, u64)>,
    /// This node holds a copy of that parent (member or learner): without
    /// one, a copy waiting to be built never will be.
    pub parent_here: bool,
    /// Sealed for a merge: the primary takes no writes
    /// (`cluster_map::Merging`).
    pub sealed: bool,
    /// The newest merge the shard took a neighbour in by: a member copy
    /// not merged yet merges its node's two copies before it serves
    /// (`tstore_actors` shard actor, "Merges").
    pub merged: Option<crate::cluster_map::Merged>,
}

impl LocalCopy {
    /// The epoch at which `range` last narrowed (the newest split of the
    /// shard; 0 for none): a scan planned by an older map is refused as
    /// stale, since it does not know where the rest of its keys went.
    pub fn range_epoch(&self) -> u64 {
        self.children.iter().map(|c| c.epoch).max().unwrap_or(0)
    }
}

/// A shard split off a copy's shard (`LocalCopy::children`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitChild {
    pub index: u32,
    /// The keys it was given.
    pub range: KeyRange,
    /// The parent's epoch the split started.
    pub epoch: u64,
    /// `Origin::birth`, carried by the split marker.
    pub born: (u64, u64),
}

/// One change to the copies running on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalChange {
    Start(ShardKey, LocalCopy),
    /// Same shard, new configuration (epoch or role changed).
    Reconfigure(ShardKey, LocalCopy),
    Stop(ShardKey),
}

/// The copies the map gives node `me`.
pub fn wanted(map: &ClusterMap, me: &str) -> BTreeMap<ShardKey, LocalCopy> {
    map.copies_of(me)
        .map(|(t, s)| {
            let role = if s.replicas.primary == me {
                LocalRole::Primary
            } else if s.replicas.backups.iter().any(|b| b == me) {
                LocalRole::Backup
            } else {
                LocalRole::Learner
            };
            (
                ShardKey {
                    table: t.spec.name.clone(),
                    index: s.index,
                },
                LocalCopy {
                    role,
                    replicas: s.replicas.clone(),
                    table_id: t.id,
                    key_column: t.spec.key.clone(),
                    min_copies: t.spec.min_copies(),
                    range: s.range.clone(),
                    children: children(t, s.index).collect(),
                    split_from: s.origin.as_ref().map(|o| o.parent),
                    born: s.origin.as_ref().map(|o| o.birth()),
                    parent_here: s.origin.as_ref().is_some_and(|o| {
                        t.shards
                            .get(o.parent as usize)
                            .is_some_and(|p| p.replicas.holders().any(|h| h == me))
                    }),
                    sealed: t.sealed(s.index),
                    merged: s.merged.clone(),
                },
            )
        })
        .collect()
}

/// The shards split off shard `index` of `t`.
fn children(t: &Table, index: u32) -> impl Iterator<Item = SplitChild> + '_ {
    t.shards.iter().filter_map(move |c| {
        c.origin
            .as_ref()
            .filter(|o| o.parent == index)
            .map(|o| SplitChild {
                index: c.index,
                range: o.range.clone(),
                epoch: o.epoch,
                born: o.birth(),
            })
    })
}

/// The changes that bring `running` to what `map` gives node `me`.
pub fn plan(
    running: &BTreeMap<ShardKey, LocalCopy>,
    map: &ClusterMap,
    me: &str,
) -> Vec<LocalChange> {
    let want = wanted(map, me);
    let mut out = Vec::new();
    for key in running.keys() {
        if !want.contains_key(key) {
            out.push(LocalChange::Stop(key.clone()));
        }
    }
    for (key, copy) in want {
        match running.get(&key) {
            None => out.push(LocalChange::Start(key, copy)),
            // Another shard at the same name: the table was dropped and
            // made again, or the index was freed by a merge and taken by a
            // split, between two maps this node saw. Its copy starts anew.
            Some(have) if have.table_id != copy.table_id || have.born != copy.born => {
                out.push(LocalChange::Stop(key.clone()));
                out.push(LocalChange::Start(key, copy));
            }
            Some(have) if *have != copy => out.push(LocalChange::Reconfigure(key, copy)),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::{MapCommand, Sharding, TableSpec};

    fn map() -> ClusterMap {
        let mut m = ClusterMap::default();
        for n in ["n1", "n2"] {
            m.apply(&MapCommand::RegisterNode {
                node_id: n.into(),
                addr: String::new(),
                zone: String::new(),
            })
            .unwrap();
        }
        m.apply(&MapCommand::CreateTable {
            spec: TableSpec {
                name: "t".into(),
                key: "id".into(),
                sharding: Sharding::Hash { shards: 2 },
                replicas: 2,
                min_copies: 0,
            },
            placement: vec![
                ("n1".into(), vec!["n2".into()]),
                ("n2".into(), vec!["n1".into()]),
            ],
        })
        .unwrap();
        m
    }

    fn key(i: u32) -> ShardKey {
        ShardKey {
            table: "t".into(),
            index: i,
        }
    }

    #[test]
    fn starts_what_the_map_gives_and_stops_what_it_takes() {
        let m = map();
        let changes = plan(&BTreeMap::new(), &m, "n1");
        assert_eq!(changes.len(), 2);
        assert!(
            matches!(&changes[0], LocalChange::Start(k, c) if *k == key(0) && c.role == LocalRole::Primary)
        );
        assert!(
            matches!(&changes[1], LocalChange::Start(k, c) if *k == key(1) && c.role == LocalRole::Backup)
        );

        let running = wanted(&m, "n1");
        assert!(
            plan(&running, &m, "n1").is_empty(),
            "nothing to do when in line"
        );

        let mut dropped = m.clone();
        dropped
            .apply(&MapCommand::DropTable { name: "t".into() })
            .unwrap();
        assert_eq!(
            plan(&running, &dropped, "n1"),
            vec![LocalChange::Stop(key(0)), LocalChange::Stop(key(1))]
        );
    }

    #[test]
    fn a_new_epoch_reconfigures() {
        let m = map();
        let running = wanted(&m, "n2");
        let mut next = m.clone();
        let s = &mut next.tables.get_mut("t").unwrap().shards[0];
        s.replicas.epoch += 1;
        s.replicas.backups.clear();
        let changes = plan(&running, &next, "n2");
        assert_eq!(
            changes,
            vec![LocalChange::Stop(key(0))],
            "n2 left shard 0's configuration"
        );
        let changes = plan(&wanted(&m, "n1"), &next, "n1");
        assert!(
            matches!(&changes[0], LocalChange::Reconfigure(k, c) if *k == key(0) && c.replicas.epoch == 2)
        );
    }

    #[test]
    fn another_shard_at_the_same_index_starts_a_new_copy() {
        let m = map();
        let running = wanted(&m, "n1");
        // Shard 1 merged away and split off again, between two maps seen.
        let mut next = m.clone();
        let s = &mut next.tables.get_mut("t").unwrap().shards[1];
        s.origin = Some(crate::cluster_map::Origin {
            parent: 0,
            epoch: 4,
            at_unix_ms: 1_000,
            range: s.range.clone(),
        });
        let changes = plan(&running, &next, "n1");
        // (Shard 0 gained a child: reconfigured.)
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(matches!(&changes[0], LocalChange::Reconfigure(k, _) if *k == key(0)));
        assert_eq!(changes[1], LocalChange::Stop(key(1)));
        assert!(
            matches!(&changes[2], LocalChange::Start(k, c) if *k == key(1) && c.born == Some((4, 1_000)))
        );
    }
}
