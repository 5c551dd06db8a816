//! Silence: what gossip liveness cannot see.
//!
//! A node cut off one way (it can send but not hear, or the link between two
//! nodes is cut while both still gossip through a third) stays `live` in
//! gossip, yet the shards it is part of stop: a primary that hears no acks
//! loses its lease, and a backup that hears no prepares stalls every write
//! of its shard. Primaries therefore report, in their gossip key, the
//! backups that did not answer within the lease
//! (`Primary::silent_backups`). This module turns those reports into
//! decisions for the failover planner:
//! - a report counts once it has held for [`CONFIRM_MS`] of coordinator
//!   rounds in a row ([`SilenceTracker`]), so a lost packet or two under
//!   random loss changes nothing;
//! - a node is **cut off** ([`cut_off_nodes`]) when it hears none of the
//!   backups of a shard it leads while some of them is named silent by no
//!   other primary, or when at least two other primaries name it silent and
//!   none of them names another node (they hear everyone but it). Its
//!   shards fail over to a backup, once it is shown deaf: the coordinator
//!   pings it first, and one that answers is slow, not deaf (a node busy
//!   starting thousands of copies; `failover::Health::hears`), one that
//!   does not is held down. The second test matters because a node
//!   that cannot hear soon cannot send either over QUIC (nothing it sends
//!   is acknowledged), so its own reports may never arrive. Otherwise the
//!   silent backups are the problem and are dropped from that shard;
//! - nodes named in a confirmed report are suspect for [`SUSPECT_MS`]: no
//!   new copy is placed on them and none of them is promoted, so a flapping
//!   link does not make the coordinator add and drop copies in a loop.
//!
//! The planner never shrinks a configuration below the table's
//! `min_copies` for silence: a copy that may merely be slow is not worth a
//! shard whose one more failure would lose acknowledged writes.
//!
//! Pure: no I/O and no clock of its own (time comes in as `now`).

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster_map::{ClusterMap, NodeId};
use crate::replication::Millis;

/// How long a report must hold, continuously, before it counts.
pub const CONFIRM_MS: Millis = 500;
/// How long a node named silent stays suspect.
pub const SUSPECT_MS: Millis = 10_000;

/// `(table, shard)`.
pub type ShardRef = (String, u32);

/// A primary's report: its node, the shard's epoch, the silent backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    pub primary: NodeId,
    pub epoch: u64,
    pub silent: BTreeSet<NodeId>,
}

/// One round's raw reports from gossip.
pub type Reports = Vec<(ShardRef, Silence)>;

/// Confirms reports over time and remembers suspects.
#[derive(Debug, Default)]
pub struct SilenceTracker {
    first_seen: BTreeMap<(ShardRef, NodeId, u64, NodeId), Millis>,
    suspect_until: BTreeMap<NodeId, Millis>,
    /// (primary, node it named silent) → when it last did, confirmed.
    named_at: BTreeMap<(NodeId, NodeId), Millis>,
}

/// Which nodes each primary named silent recently (confirmed reports of
/// the last [`SUSPECT_MS`]): a primary that dropped the node it named no
/// longer reports it, but the naming still counts.
pub type Namings = BTreeMap<NodeId, BTreeSet<NodeId>>;

impl SilenceTracker {
    /// Feeds this round's reports at `now`; returns the confirmed ones (a
    /// silent backup is kept only once it has been reported for
    /// [`CONFIRM_MS`] without a gap), and marks the nodes they name suspect.
    pub fn observe(&mut self, now: Millis, reports: Reports) -> BTreeMap<ShardRef, Silence> {
        let mut seen = BTreeMap::new();
        let mut confirmed: BTreeMap<ShardRef, Silence> = BTreeMap::new();
        for (shard, report) in reports {
            for node in &report.silent {
                let key = (
                    shard.clone(),
                    report.primary.clone(),
                    report.epoch,
                    node.clone(),
                );
                let since = self.first_seen.get(&key).copied().unwrap_or(now);
                seen.insert(key, since);
                if now.saturating_sub(since) >= CONFIRM_MS {
                    confirmed
                        .entry(shard.clone())
                        .or_insert_with(|| Silence {
                            primary: report.primary.clone(),
                            epoch: report.epoch,
                            silent: BTreeSet::new(),
                        })
                        .silent
                        .insert(node.clone());
                    self.suspect_until.insert(node.clone(), now + SUSPECT_MS);
                    self.named_at
                        .insert((report.primary.clone(), node.clone()), now);
                }
            }
        }
        // A report that stopped starts over.
        self.first_seen = seen;
        confirmed
    }

    /// Marks `node` suspect from `now` (a deaf primary).
    pub fn suspect(&mut self, node: &str, now: Millis) {
        self.suspect_until.insert(node.to_owned(), now + SUSPECT_MS);
    }

    /// The namings of the last [`SUSPECT_MS`] at `now`.
    pub fn namings(&mut self, now: Millis) -> Namings {
        self.named_at
            .retain(|_, at| now.saturating_sub(*at) < SUSPECT_MS);
        let mut out = Namings::new();
        for (primary, node) in self.named_at.keys() {
            out.entry(primary.clone()).or_default().insert(node.clone());
        }
        out
    }

    /// The nodes suspect at `now`.
    pub fn suspects(&mut self, now: Millis) -> BTreeSet<NodeId> {
        self.suspect_until.retain(|_, until| *until > now);
        self.suspect_until.keys().cloned().collect()
    }
}

/// Nodes cut off from the others (see the module doc): their shards fail
/// over rather than lose their backups.
pub fn cut_off_nodes(
    map: &ClusterMap,
    silent: &BTreeMap<ShardRef, Silence>,
    namings: &Namings,
) -> BTreeSet<NodeId> {
    cut_off_reasons(map, silent, namings).into_keys().collect()
}

/// [`cut_off_nodes`], each with the evidence, in words (for the reason
/// the coordinator records with its decision).
pub fn cut_off_reasons(
    map: &ClusterMap,
    silent: &BTreeMap<ShardRef, Silence>,
    namings: &Namings,
) -> BTreeMap<NodeId, String> {
    let mut out = BTreeMap::new();
    // Reports of the current configurations only.
    let current: Vec<(&ShardRef, &Silence, &crate::cluster_map::ReplicaSet)> = silent
        .iter()
        .filter_map(|(shard, report)| {
            let r = map
                .tables
                .get(&shard.0)
                .and_then(|t| t.shards.get(shard.1 as usize))
                .map(|s| &s.replicas)?;
            (r.epoch == report.epoch && r.primary == report.primary).then_some((shard, report, r))
        })
        .collect();
    for (shard, report, r) in &current {
        if r.backups.is_empty() {
            continue;
        }
        let hears_none = r.backups.iter().all(|b| report.silent.contains(b));
        let heard_by_others = |b: &NodeId| {
            !current
                .iter()
                .any(|(_, o, _)| o.primary != report.primary && o.silent.contains(b))
        };
        if hears_none && r.backups.iter().any(heard_by_others) {
            out.entry(report.primary.clone()).or_insert_with(|| {
                format!(
                    "it hears none of the backups of {}/{} ({}), which others hear",
                    shard.0,
                    shard.1,
                    r.backups.join(", ")
                )
            });
        }
    }
    // Named silent (recently) by two or more primaries that name nobody
    // else: a primary that has already dropped the node it named counts too.
    let mut named: BTreeMap<&NodeId, BTreeSet<&NodeId>> = BTreeMap::new();
    for (primary, nodes) in namings {
        if let [node] = nodes.iter().collect::<Vec<_>>()[..] {
            named.entry(node).or_default().insert(primary);
        }
    }
    for (node, by) in named {
        if by.len() >= 2 {
            out.entry(node.clone()).or_insert_with(|| {
                let by: Vec<&str> = by.iter().map(|n| n.as_str()).collect();
                format!(
                    "the primaries on {} name it silent and nobody else",
                    by.join(", ")
                )
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::{KeyRange, ReplicaSet, Shard, Sharding, Table, TableSpec};

    /// The namings the reports make (as confirmed this round).
    fn namings(silent: &BTreeMap<ShardRef, Silence>) -> Namings {
        let mut out = Namings::new();
        for r in silent.values() {
            out.entry(r.primary.clone())
                .or_default()
                .extend(r.silent.iter().cloned());
        }
        out
    }

    fn report(primary: &str, epoch: u64, silent: &[&str]) -> Silence {
        Silence {
            primary: primary.into(),
            epoch,
            silent: silent.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Shards `(primary, backups)`, all at epoch 1.
    fn map(shards: &[(&str, &[&str])]) -> ClusterMap {
        let mut m = ClusterMap::default();
        let n = shards.len() as u32;
        m.tables.insert(
            "t".into(),
            Table {
                id: 1,
                placement: None,
                auto_split: true,
                auto_merge: true,
                retired: Default::default(),
                spec: TableSpec {
                    name: "t".into(),
                    key: "id".into(),
                    sharding: Sharding::Hash { shards: n },
                    replicas: 3,
                    min_copies: 0,
                },
                shards: shards
                    .iter()
                    .enumerate()
                    .map(|(i, (p, b))| Shard {
                        index: i as u32,
                        range: KeyRange::HashSlot {
                            slot: i as u32,
                            of: n,
                        },
                        replicas: ReplicaSet {
                            primary: p.to_string(),
                            backups: b.iter().map(|x| x.to_string()).collect(),
                            learners: vec![],
                            moves: vec![],
                            epoch: 1,
                            away: vec![],
                        },
                        origin: None,
                        merging: None,
                        merged: None,
                    })
                    .collect(),
            },
        );
        m
    }

    #[test]
    fn a_report_counts_only_once_it_has_held_without_a_gap() {
        let mut t = SilenceTracker::default();
        let r = || vec![(("t".to_string(), 0), report("n1", 1, &["n2"]))];
        assert!(t.observe(0, r()).is_empty());
        assert!(t.observe(250, r()).is_empty());
        // One round without the report: it starts over.
        assert!(t.observe(500, vec![]).is_empty());
        assert!(t.observe(750, r()).is_empty());
        assert!(t.observe(1000, r()).is_empty());
        let c = t.observe(1250, r());
        assert_eq!(c[&("t".to_string(), 0)], report("n1", 1, &["n2"]));
        assert!(t.suspects(1250).contains("n2"));
        // The naming outlives the report: n1 may have dropped n2 since.
        assert!(t.observe(1500, vec![]).is_empty());
        assert_eq!(t.namings(1500)["n1"], BTreeSet::from(["n2".to_string()]));
        assert!(t.namings(1250 + SUSPECT_MS).is_empty());
        assert!(
            t.suspects(1250 + SUSPECT_MS).is_empty(),
            "suspicion expires"
        );
    }

    #[test]
    fn a_node_that_cannot_hear_is_the_deaf_primary_not_its_backups() {
        // n1 can send but not hear: it hears none of its backups, and the
        // other primaries name n1 silent, not each other.
        let m = map(&[
            ("n1", &["n2", "n3"]),
            ("n2", &["n1", "n3"]),
            ("n3", &["n1", "n2"]),
        ]);
        let silent = BTreeMap::from([
            (("t".to_string(), 0), report("n1", 1, &["n2", "n3"])),
            (("t".to_string(), 1), report("n2", 1, &["n1"])),
            (("t".to_string(), 2), report("n3", 1, &["n1"])),
        ]);
        assert_eq!(
            cut_off_nodes(&m, &silent, &namings(&silent)),
            BTreeSet::from(["n1".to_string()])
        );
        assert_eq!(
            cut_off_reasons(&m, &silent, &namings(&silent))["n1"],
            "it hears none of the backups of t/0 (n2, n3), which others hear"
        );
    }

    #[test]
    fn a_node_named_silent_by_every_other_primary_is_cut_off_without_its_own_report() {
        // n1's own reports never arrive; n2 and n3 each hear everyone but n1.
        let m = map(&[
            ("n1", &["n2", "n3"]),
            ("n2", &["n1", "n3"]),
            ("n3", &["n1", "n2"]),
        ]);
        let silent = BTreeMap::from([
            (("t".to_string(), 1), report("n2", 1, &["n1"])),
            (("t".to_string(), 2), report("n3", 1, &["n1"])),
        ]);
        assert_eq!(
            cut_off_nodes(&m, &silent, &namings(&silent)),
            BTreeSet::from(["n1".to_string()])
        );
        assert_eq!(
            cut_off_reasons(&m, &silent, &namings(&silent))["n1"],
            "the primaries on n2, n3 name it silent and nobody else"
        );
        // One broken link (n2 does not hear n1, n3 does) cuts nobody off:
        // the silent backup is dropped from that shard instead.
        let one = BTreeMap::from([(("t".to_string(), 1), report("n2", 1, &["n1"]))]);
        assert!(cut_off_nodes(&m, &one, &namings(&one)).is_empty());
    }

    #[test]
    fn with_two_copies_the_deaf_backup_is_cut_off_not_the_primaries() {
        // n2 cannot hear: n1 (its shard has n2 as only backup) hears none
        // of its backups, but n2 is named by another primary too.
        let m = map(&[("n1", &["n2"]), ("n3", &["n2"])]);
        let silent = BTreeMap::from([
            (("t".to_string(), 0), report("n1", 1, &["n2"])),
            (("t".to_string(), 1), report("n3", 1, &["n2"])),
        ]);
        assert_eq!(
            cut_off_nodes(&m, &silent, &namings(&silent)),
            BTreeSet::from(["n2".to_string()])
        );
    }

    #[test]
    fn reports_of_an_old_epoch_or_an_old_primary_count_for_nothing() {
        let m = map(&[("n1", &["n2", "n3"])]);
        let old = BTreeMap::from([(("t".to_string(), 0), report("n1", 0, &["n2", "n3"]))]);
        assert!(cut_off_nodes(&m, &old, &Namings::new()).is_empty());
        let other = BTreeMap::from([(("t".to_string(), 0), report("n2", 1, &["n2", "n3"]))]);
        assert!(cut_off_nodes(&m, &other, &Namings::new()).is_empty());
    }
}
