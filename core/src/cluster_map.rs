//! The cluster map: which tables exist, how each is split into shards, and
//! which nodes hold each shard (primary + backups + configuration epoch).
//!
//! The map is changed only by applying [`MapCommand`]s committed through Raft,
//! in log order, on every node. `apply` is therefore a pure, deterministic
//! function of (map, command): it re-validates everything and, when a command
//! no longer fits (a table created twice by two racing admins), leaves the map
//! untouched and returns the error as the command's result.
//!
//! Invariants kept here (and checked by `check_invariants` in tests):
//! - every shard's replicas are on distinct nodes, and the primary is one of them;
//! - a shard's epoch only grows;
//! - `version` grows by one for every command that changed the map.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node id, as in gossip and certificates.
pub type NodeId = String;

/// Limits on table definitions.
pub const MAX_SHARDS: u32 = 1024;
pub const MAX_REPLICAS: u32 = 7;
pub const MAX_NAME_LEN: usize = 64;

/// A row's key: the value of its table's key column, an integer or a
/// string (integers sort before strings). Split points of range-sharded
/// tables are row keys too.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RowKey {
    Int(i64),
    Str(String),
}

impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowKey::Int(i) => write!(f, "{i}"),
            RowKey::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl RowKey {
    /// Parses one split point: an integer if it is one, otherwise a string.
    pub fn parse(s: &str) -> RowKey {
        s.trim()
            .parse::<i64>()
            .map(RowKey::Int)
            .unwrap_or_else(|_| RowKey::Str(s.trim().to_owned()))
    }
}

/// How a table is split into shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sharding {
    /// `shards` shards; a key belongs to shard `hash(key) % shards`.
    Hash { shards: u32 },
    /// Shards between consecutive split points: `(-inf, s0), [s0, s1), ..., [sn, +inf)`.
    Range { splits: Vec<RowKey> },
}

impl Sharding {
    pub fn shard_count(&self) -> u32 {
        match self {
            Sharding::Hash { shards } => *shards,
            Sharding::Range { splits } => splits.len() as u32 + 1,
        }
    }
}

/// What an operator asks for when creating a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    pub name: String,
    /// The primary-key (partition-key) column.
    pub key: String,
    pub sharding: Sharding,
    /// Copies of each shard (primary included).
    pub replicas: u32,
    /// Members a shard's configuration must have for its primary to take a
    /// write (Kafka's `min.insync.replicas`): a write is acknowledged only
    /// once at least this many copies hold it. 0 means the default,
    /// `min(2, replicas)`; see [`TableSpec::min_copies`].
    pub min_copies: u32,
}

/// The part of the key space a shard owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KeyRange {
    /// Keys with `hash(key) % of == slot`.
    HashSlot { slot: u32, of: u32 },
    /// Keys in `[start, end)`; `None` is unbounded.
    Range {
        start: Option<RowKey>,
        end: Option<RowKey>,
    },
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRange::HashSlot { slot, of } => write!(f, "hash % {of} = {slot}"),
            KeyRange::Range { start, end } => {
                match start {
                    Some(s) => write!(f, "[{s}")?,
                    None => write!(f, "(-inf")?,
                }
                match end {
                    Some(e) => write!(f, ", {e})"),
                    None => write!(f, ", +inf)"),
                }
            }
        }
    }
}

/// The key space of `a` and `b` merged, if they are neighbours: range
/// shards where one ends where the other starts, hash shards that are
/// siblings (`slot` and `slot + of/2` of the same even `of`).
pub fn merged(a: &KeyRange, b: &KeyRange) -> Option<KeyRange> {
    match (a, b) {
        (KeyRange::Range { start, end }, KeyRange::Range { start: s2, end: e2 }) => {
            if end.is_some() && end == s2 {
                Some(KeyRange::Range {
                    start: start.clone(),
                    end: e2.clone(),
                })
            } else if e2.is_some() && e2 == start {
                Some(KeyRange::Range {
                    start: s2.clone(),
                    end: end.clone(),
                })
            } else {
                None
            }
        }
        (KeyRange::HashSlot { .. }, KeyRange::HashSlot { .. }) => hash_siblings(a, b),
        _ => None,
    }
}

/// The parent of two hash siblings.
pub fn hash_siblings(a: &KeyRange, b: &KeyRange) -> Option<KeyRange> {
    let (KeyRange::HashSlot { slot: s1, of: o1 }, KeyRange::HashSlot { slot: s2, of: o2 }) = (a, b)
    else {
        return None;
    };
    if o1 != o2 || o1 % 2 != 0 || s1.abs_diff(*s2) != o1 / 2 {
        return None;
    }
    Some(KeyRange::HashSlot {
        slot: (*s1).min(*s2),
        of: o1 / 2,
    })
}

/// The halves of a shard's key space: at `at` for a range shard (`None`:
/// no key strictly inside it was given), the two hash siblings for a hash
/// shard.
pub fn halves(range: &KeyRange, at: Option<&RowKey>) -> Option<(KeyRange, KeyRange)> {
    match range {
        KeyRange::HashSlot { slot, of } => {
            let of2 = of.checked_mul(2)?;
            Some((
                KeyRange::HashSlot {
                    slot: *slot,
                    of: of2,
                },
                KeyRange::HashSlot {
                    slot: slot + of,
                    of: of2,
                },
            ))
        }
        KeyRange::Range { start, end } => {
            let at = at?;
            let inside =
                start.as_ref().is_none_or(|s| at > s) && end.as_ref().is_none_or(|e| at < e);
            inside.then(|| {
                (
                    KeyRange::Range {
                        start: start.clone(),
                        end: Some(at.clone()),
                    },
                    KeyRange::Range {
                        start: Some(at.clone()),
                        end: end.clone(),
                    },
                )
            })
        }
    }
}

/// Who holds a shard: the PacificA configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSet {
    pub primary: NodeId,
    pub backups: Vec<NodeId>,
    /// Copies being built (snapshot, then the log); they count for nothing
    /// until a later epoch makes them backups.
    pub learners: Vec<NodeId>,
    /// Copies being moved: `(learner, member it replaces)`. When the learner
    /// has caught up it becomes a backup and the other copy is dropped.
    pub moves: Vec<(NodeId, NodeId)>,
    /// Grows at every change of the configuration; messages carry it.
    pub epoch: u64,
    /// Nodes dropped from this shard because they were down, whose copies
    /// may come back: the coordinator re-adds such a node first when it is
    /// live again (it catches up from the log), and waits for it up to
    /// `rereplicate_after_secs` before copying the shard elsewhere.
    #[serde(default)]
    pub away: Vec<Away>,
}

/// A node a shard's copy left because it was down, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Away {
    pub node: NodeId,
    pub since_unix_ms: u64,
}

impl ReplicaSet {
    /// Every member, primary first.
    pub fn members(&self) -> impl Iterator<Item = &NodeId> {
        std::iter::once(&self.primary).chain(&self.backups)
    }

    /// Every node holding a copy: members and learners.
    pub fn holders(&self) -> impl Iterator<Item = &NodeId> {
        self.members().chain(&self.learners)
    }
}

/// A decision the coordinator committed, kept in the map for `admin events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEvent {
    /// The map version the change produced.
    pub version: u64,
    /// The leader's clock when it decided.
    pub at_unix_ms: u64,
    /// `table/shard`, or a node id.
    pub subject: String,
    pub what: String,
    pub why: String,
    /// The shard's new epoch, when a shard changed.
    pub epoch: Option<u64>,
}

/// How many events the map keeps.
pub const MAX_EVENTS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub range: KeyRange,
    pub replicas: ReplicaSet,
    /// The shard a split made this one from; `None` for a shard the table
    /// was created with.
    pub origin: Option<Origin>,
    /// A merge of this shard into a neighbour, under way (this shard is
    /// always its table's newest: see [`MapCommand::BeginMerge`]).
    pub merging: Option<Merging>,
    /// The newest merge this shard took a neighbour in by.
    pub merged: Option<Merged>,
}

/// A merge under way, kept on the shard being absorbed.
///
/// A merge runs in three map changes: [`MapCommand::BeginMerge`] names the
/// two shards (the coordinator then moves this shard's copies to where the
/// other's are, and the rebalancer leaves both alone);
/// [`MapCommand::SealMerge`] seals both (a new epoch in which their
/// primaries take no writes); once every copy of both has applied the same
/// last entry, [`MapCommand::FinishMerge`] hands this shard's keys to `into`
/// and every member node merges its two copies locally (`tstore_actors`
/// store, `merge`). [`MapCommand::CancelMerge`] undoes the first two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merging {
    /// The shard that keeps the keys (a neighbour, or the hash sibling).
    pub into: u32,
    pub since_unix_ms: u64,
    pub why: String,
    /// Both shards take no writes (from the epochs `SealMerge` gave them).
    pub sealed: bool,
}

/// A merge this shard took in: `absorbed` (then the table's newest shard)
/// gave it its keys when this shard took `epoch`. Both logs had stopped at
/// `seqs` (this shard's, the absorbed one's); the merged log goes on from
/// the larger plus one ([`Merged::log_from`]), so row versions (log
/// positions) keep growing across the merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merged {
    pub absorbed: u32,
    pub epoch: u64,
    pub at_unix_ms: u64,
    pub seqs: (u64, u64),
    /// The keys the absorbed shard had.
    pub range: KeyRange,
    /// The absorbed shard's `Origin::birth` (`None`: the table was created
    /// with it): a member merges only the copy built for that shard.
    pub absorbed_born: Option<(u64, u64)>,
}

impl Merged {
    /// The position every copy of the merged shard starts from (the entry
    /// after it is the first the merged log holds).
    pub fn log_from(&self) -> u64 {
        self.seqs.0.max(self.seqs.1) + 1
    }
}

/// A shard's lineage: split from `parent` when the parent took `epoch`.
/// Every copy of the child is built from its node's copy of the parent
/// (`tstore_actors` "Splits"); no row crosses the network to split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub parent: u32,
    /// The parent's epoch the split started (the child starts at it too).
    pub epoch: u64,
    pub at_unix_ms: u64,
    /// The keys the parent gave the child (the child's range at birth; it
    /// narrows if the child is split in turn).
    pub range: KeyRange,
}

impl Origin {
    /// What names this shard among every shard ever at its index (an index
    /// freed by a merge is reused by the next split): the parent's epoch at
    /// the split and the leader's clock then. Every copy built for the
    /// shard is marked with it (`tstore_actors` store, `Birth`).
    pub fn birth(&self) -> (u64, u64) {
        (self.epoch, self.at_unix_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub id: u64,
    pub spec: TableSpec,
    pub shards: Vec<Shard>,
    /// Where the table's copies may be, when an operator said so
    /// ([`MapCommand::SetPlacement`]); `None`: anywhere.
    pub placement: Option<PlacementRule>,
    /// Whether the coordinator splits the table's shards by size and load
    /// by itself (elastic tables; on at creation, [`MapCommand::SetAutoSplit`]).
    pub auto_split: bool,
    /// Whether the coordinator merges the table's cold, small neighbours by
    /// itself (on at creation, [`MapCommand::SetAutoMerge`]).
    pub auto_merge: bool,
    /// The last epoch of each shard index a merge freed: the next shard
    /// split off to that index starts above it, so that a message, a
    /// report or a request of the shard merged away never passes for one
    /// of the new shard.
    pub retired: BTreeMap<u32, u64>,
}

/// An operator's rule for where a table's copies go (`tstore admin
/// placement`, the Python package's `replicate` and `shard_key`).
///
/// Every copy of every shard is kept on [`PlacementRule::nodes`]: the
/// coordinator adds copies only there, moves copies that are elsewhere
/// there (as a drain does), and the rebalancer leaves the table alone. A
/// shard's primary is on one of `primaries` whenever one of them holds an
/// in-sync copy. When a named node dies, its shards run short (fewer copies)
/// rather than copy to a node outside the rule; when the primary's node
/// dies, any backup is promoted (the shard stays writable) and the primary
/// is handed back to a named primary once one is a backup again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRule {
    /// Nodes a shard's primary goes to; at least one.
    pub primaries: Vec<NodeId>,
    /// Nodes its backups go to first; then the other `primaries`.
    pub backups: Vec<NodeId>,
}

impl PlacementRule {
    /// Whether a copy may be on `node`.
    pub fn allows(&self, node: &str) -> bool {
        self.primaries
            .iter()
            .chain(&self.backups)
            .any(|n| n == node)
    }

    /// Every node named, once.
    pub fn nodes(&self) -> std::collections::BTreeSet<&NodeId> {
        self.primaries.iter().chain(&self.backups).collect()
    }

    /// Checks the rule against a table of `replicas` copies per shard.
    pub fn validate(&self, replicas: u32) -> Result<(), MapError> {
        if self.primaries.is_empty() {
            return Err(MapError::InvalidPlacement(
                "a placement rule names at least one node for primaries".into(),
            ));
        }
        let nodes = self.nodes().len();
        if nodes < replicas as usize {
            return Err(MapError::InvalidPlacement(format!(
                "the table keeps {replicas} copies of each shard but the rule names {nodes} node{}: name at least {replicas}",
                if nodes == 1 { "" } else { "s" }
            )));
        }
        Ok(())
    }
}

impl fmt::Display for PlacementRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "primaries on {}; backups on {}",
            self.primaries.join(","),
            if self.backups.is_empty() {
                "-".to_owned()
            } else {
                self.backups.join(",")
            }
        )
    }
}

impl Table {
    /// Whether a copy of this table may be on `node` (its placement rule).
    pub fn allows(&self, node: &str) -> bool {
        self.placement.as_ref().is_none_or(|r| r.allows(node))
    }

    /// The merge under way in this table, as `(absorbed shard, kept shard,
    /// sealed)` (one at a time: see [`MapCommand::BeginMerge`]).
    /// The absorbed shard is the newest (`BeginMerge` asks it, and no split
    /// appends another while the merge is under way): one look, not a pass
    /// over the shards, for what every map application asks per shard.
    pub fn merge_under_way(&self) -> Option<(u32, u32, bool)> {
        let s = self.shards.last()?;
        s.merging.as_ref().map(|m| (s.index, m.into, m.sealed))
    }

    /// Whether shard `index` takes part in the merge under way (its copies
    /// are then placed for the merge, not by the rebalancer).
    pub fn merging(&self, index: u32) -> bool {
        self.merge_under_way()
            .is_some_and(|(absorb, keep, _)| index == absorb || index == keep)
    }

    /// Whether shard `index` is sealed for a merge: its primary takes no
    /// writes.
    pub fn sealed(&self, index: u32) -> bool {
        self.merge_under_way()
            .is_some_and(|(absorb, keep, sealed)| sealed && (index == absorb || index == keep))
    }
}

/// Whether shard `absorb` of `t` may merge into `keep` now
/// ([`MapCommand::BeginMerge`]); the merged keys if so.
fn mergeable(t: &Table, keep: u32, absorb: u32) -> Result<KeyRange, MapError> {
    let name = |i: u32| format!("{}/{i}", t.spec.name);
    let newest = t.shards.len() as u32 - 1;
    if keep == absorb {
        return Err(MapError::InvalidMerge(format!(
            "{} cannot merge with itself: name two neighbouring shards",
            name(absorb)
        )));
    }
    if let Some(missing) = [keep, absorb].into_iter().find(|i| *i > newest) {
        return Err(MapError::InvalidMerge(format!(
            "{} does not exist: the table has shards 0..={newest}",
            name(missing)
        )));
    }
    if absorb != newest {
        return Err(MapError::InvalidMerge(format!(
            "{} is not the table's newest shard ({}): only the newest shard can be merged into another (indices name storage; absorbing another would leave a hole)",
            name(absorb),
            name(newest)
        )));
    }
    if let Some((a, k, _)) = t.merge_under_way() {
        return Err(MapError::InvalidMerge(format!(
            "{} is already being merged into {}: one merge at a time per table",
            name(a),
            name(k)
        )));
    }
    let (k, a) = (&t.shards[keep as usize], &t.shards[absorb as usize]);
    merged(&k.range, &a.range).ok_or_else(|| {
        MapError::InvalidMerge(format!(
            "{} ({}) and {} ({}) are not neighbours: range shards merge when one ends where the other starts, hash shards with their sibling (the other half of the shard they split from)",
            name(keep),
            k.range,
            name(absorb),
            a.range
        ))
    })
}

/// The shard kept by the merge of `absorb` under way in `t`, which must be
/// `sealed` (or not) already.
fn merge_keep(t: &Table, absorb: u32, sealed: bool) -> Result<u32, MapError> {
    let name = format!("{}/{absorb}", t.spec.name);
    match t
        .shards
        .get(absorb as usize)
        .and_then(|s| s.merging.as_ref())
    {
        None => Err(MapError::InvalidMerge(format!(
            "no merge of {name} is under way"
        ))),
        Some(m) if m.sealed != sealed => Err(MapError::InvalidMerge(format!(
            "the merge of {name} is {}sealed",
            if m.sealed { "already " } else { "not " }
        ))),
        Some(m) => Ok(m.into),
    }
}

/// Both shards of a merge are still at `expect` (keep's, absorb's epochs),
/// with the same members and no copy being added or moved.
fn check_merge_copies(
    t: &Table,
    keep: u32,
    absorb: u32,
    expect: (u64, u64),
) -> Result<(), MapError> {
    for (i, e) in [(keep, expect.0), (absorb, expect.1)] {
        let s = &t.shards[i as usize];
        let shard = format!("{}/{i}", t.spec.name);
        if s.replicas.epoch != e {
            return Err(MapError::StaleEpoch {
                shard,
                expected: e,
                now: s.replicas.epoch,
            });
        }
        if !s.replicas.learners.is_empty() {
            return Err(MapError::UnsafeChange {
                shard,
                why: "a copy is being added or moved: merge once it is done".into(),
            });
        }
    }
    let members = |i: u32| {
        let mut m: Vec<&NodeId> = t.shards[i as usize].replicas.members().collect();
        m.sort();
        m
    };
    let (pk, pa) = (
        &t.shards[keep as usize].replicas.primary,
        &t.shards[absorb as usize].replicas.primary,
    );
    if pk != pa {
        return Err(MapError::UnsafeChange {
            shard: format!("{}/{absorb}", t.spec.name),
            why: format!(
                "its primary is {pa}, that of {}/{keep} {pk}: a merge needs them on one node",
                t.spec.name
            ),
        });
    }
    if members(keep) != members(absorb) {
        return Err(MapError::UnsafeChange {
            shard: format!("{}/{absorb}", t.spec.name),
            why: format!(
                "its copies are on {:?}, those of {}/{keep} on {:?}: a merge needs them on the same nodes",
                members(absorb),
                t.spec.name,
                members(keep)
            ),
        });
    }
    Ok(())
}

/// A node's place in the cluster, as committed in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Registered; may receive replicas.
    Active,
    /// Being emptied; receives no new replicas.
    Draining,
    /// Gone for good.
    Removed,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub addr: String,
    pub zone: String,
    pub state: NodeState,
}

/// A change to the map, proposed by the coordinator and committed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapCommand {
    /// A node joined (or came back with a new address/zone).
    RegisterNode {
        node_id: NodeId,
        addr: String,
        zone: String,
    },
    SetNodeState {
        node_id: NodeId,
        state: NodeState,
    },
    /// Creates a table with the placement the coordinator chose: one
    /// `(primary, backups)` per shard, in shard order.
    CreateTable {
        spec: TableSpec,
        placement: Vec<(NodeId, Vec<NodeId>)>,
    },
    DropTable {
        name: String,
    },
    /// Replaces a shard's configuration (failover, re-replication, moves),
    /// if it is still at `expect_epoch`; the new one gets `expect_epoch + 1`.
    SetReplicas {
        table: String,
        shard: u32,
        expect_epoch: u64,
        primary: NodeId,
        backups: Vec<NodeId>,
        learners: Vec<NodeId>,
        moves: Vec<(NodeId, NodeId)>,
        what: String,
        why: String,
        at_unix_ms: u64,
        /// The shard's copies away (see [`ReplicaSet::away`]) after the
        /// change; a node holding a copy is never away.
        #[serde(default)]
        away: Vec<Away>,
    },
    /// Splits a shard in two (elastic tables): the shard keeps the lower
    /// half of its keys (a range shard, below `at`) or the slot `hash % 2of
    /// = slot` (a hash shard: `at` is `None`), a new shard, appended with
    /// the next index, takes the rest. Both have the shard's members, at
    /// `expect_epoch + 1`; the parent must have no copy being added or
    /// moved.
    SplitShard {
        table: String,
        shard: u32,
        expect_epoch: u64,
        at: Option<RowKey>,
        why: String,
        at_unix_ms: u64,
    },
    /// Starts merging shard `absorb` of `table` into its neighbour `keep`
    /// (see [`Merging`]). `absorb` must be the table's newest shard (shard
    /// indices name storage: absorbing any other would leave a hole), the
    /// two must be neighbours (range shards where one ends where the other
    /// starts, or hash siblings), and no other merge may be under way in
    /// the table.
    BeginMerge {
        table: String,
        keep: u32,
        absorb: u32,
        why: String,
        at_unix_ms: u64,
    },
    /// Seals both shards of the table's merge (each takes a new epoch in
    /// which its primary takes no writes), if they are still at
    /// `expect_epochs` (keep's, absorb's) and have the same members and no
    /// copy being added or moved.
    SealMerge {
        table: String,
        absorb: u32,
        expect_epochs: (u64, u64),
        at_unix_ms: u64,
    },
    /// Completes the table's sealed merge: every copy of both shards has
    /// applied the entries up to `seqs` (keep's, absorb's) at
    /// `expect_epochs`. The absorbed shard leaves the table; the kept one
    /// takes its keys in a new epoch, and every member node merges its two
    /// copies (see [`Merged`]).
    FinishMerge {
        table: String,
        absorb: u32,
        expect_epochs: (u64, u64),
        seqs: (u64, u64),
        at_unix_ms: u64,
    },
    /// Gives up the table's merge (unsealing both shards if sealed).
    CancelMerge {
        table: String,
        absorb: u32,
        why: String,
        at_unix_ms: u64,
    },
    /// Turns automatic splitting of a table's shards on or off.
    SetAutoSplit {
        table: String,
        on: bool,
        at_unix_ms: u64,
    },
    /// Turns automatic merging of a table's shards on or off.
    SetAutoMerge {
        table: String,
        on: bool,
        at_unix_ms: u64,
    },
    /// Sets (or with `None` clears) a table's placement rule; the
    /// coordinator then moves its copies where the rule says.
    SetPlacement {
        table: String,
        rule: Option<PlacementRule>,
        at_unix_ms: u64,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MapError {
    #[error("table {0:?} already exists")]
    TableExists(String),
    #[error("table {0:?} does not exist")]
    NoSuchTable(String),
    #[error("invalid table: {0}")]
    InvalidTable(String),
    #[error("invalid split points: {0}")]
    InvalidSplits(String),
    #[error("node {0:?} is not registered in the cluster map")]
    UnknownNode(String),
    #[error("invalid placement: {0}")]
    InvalidPlacement(String),
    #[error(
        "shard {shard} is at epoch {now}, not {expected}: the change was planned on an older map"
    )]
    StaleEpoch {
        shard: String,
        expected: u64,
        now: u64,
    },
    #[error("invalid merge: {0}")]
    InvalidMerge(String),
    #[error("unsafe configuration change for {shard}: {why}")]
    UnsafeChange { shard: String, why: String },
}

/// The cluster map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Grows by one with every change.
    pub version: u64,
    pub tables: BTreeMap<String, Table>,
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    next_table_id: u64,
    /// The newest coordinator decisions, oldest first (at most `MAX_EVENTS`).
    pub events: std::collections::VecDeque<MapEvent>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl TableSpec {
    /// Copies that must hold a write before it is acknowledged: the
    /// table's `min_copies`, or `min(2, replicas)` when it is 0. With the
    /// default and 3 copies, a shard takes writes while 2 of its 3 copies
    /// are members, and refuses them (reads go on) once only 1 is, rather
    /// than acknowledge writes whose one copy's loss would lose them.
    pub fn min_copies(&self) -> usize {
        if self.min_copies == 0 {
            self.replicas.min(2) as usize
        } else {
            self.min_copies as usize
        }
    }

    /// Checks the definition on its own (not against the map).
    pub fn validate(&self) -> Result<(), MapError> {
        if !valid_name(&self.name) {
            return Err(MapError::InvalidTable(format!(
                "name {:?}: use 1-{MAX_NAME_LEN} letters, digits, '_' or '-'",
                self.name
            )));
        }
        if self.key.is_empty() || self.key.len() > MAX_NAME_LEN {
            return Err(MapError::InvalidTable(format!(
                "key column {:?}: 1-{MAX_NAME_LEN} characters",
                self.key
            )));
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(MapError::InvalidTable(format!(
                "replicas = {}: must be 1..={MAX_REPLICAS}",
                self.replicas
            )));
        }
        if self.min_copies > self.replicas {
            return Err(MapError::InvalidTable(format!(
                "min_copies = {}: must be at most replicas ({}); 0 picks min(2, replicas)",
                self.min_copies, self.replicas
            )));
        }
        match &self.sharding {
            Sharding::Hash { shards } if !(1..=MAX_SHARDS).contains(shards) => Err(
                MapError::InvalidTable(format!("shards = {shards}: must be 1..={MAX_SHARDS}")),
            ),
            Sharding::Range { splits } => {
                if splits.is_empty() || splits.len() >= MAX_SHARDS as usize {
                    return Err(MapError::InvalidSplits(format!(
                        "give 1..{} split points, got {}",
                        MAX_SHARDS,
                        splits.len()
                    )));
                }
                if let Some(w) = splits.windows(2).find(|w| w[0] >= w[1]) {
                    return Err(MapError::InvalidSplits(format!(
                        "must be strictly increasing, but {} comes before {}",
                        w[0], w[1]
                    )));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn ranges(&self) -> Vec<KeyRange> {
        match &self.sharding {
            Sharding::Hash { shards } => (0..*shards)
                .map(|slot| KeyRange::HashSlot { slot, of: *shards })
                .collect(),
            Sharding::Range { splits } => {
                let bounds: Vec<Option<RowKey>> = std::iter::once(None)
                    .chain(splits.iter().cloned().map(Some))
                    .chain(std::iter::once(None))
                    .collect();
                bounds
                    .windows(2)
                    .map(|w| KeyRange::Range {
                        start: w[0].clone(),
                        end: w[1].clone(),
                    })
                    .collect()
            }
        }
    }
}

/// The safety rules of a configuration change (PacificA):
/// - the new primary was the primary or a backup: it holds every committed
///   entry (a learner may not hold them yet);
/// - every new backup was a member or a learner: no copy starts counting for
///   commits without having been fed the log first;
/// - nobody holds two copies, and there is a primary.
pub fn check_transition(old: &ReplicaSet, next: &ReplicaSet) -> Result<(), String> {
    if !old.members().any(|m| *m == next.primary) {
        return Err(format!(
            "new primary {} was not a member of epoch {} ({})",
            next.primary,
            old.epoch,
            old.members().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(b) = next
        .backups
        .iter()
        .find(|b| !old.holders().any(|h| h == *b))
    {
        return Err(format!(
            "new backup {b} did not hold a copy in epoch {}: add it as a learner first",
            old.epoch
        ));
    }
    let mut all: Vec<&NodeId> = next.holders().collect();
    let n = all.len();
    all.sort();
    all.dedup();
    if all.len() != n {
        return Err("a node would hold two copies".into());
    }
    Ok(())
}

impl ClusterMap {
    /// Applies one committed command. On error the map is unchanged.
    pub fn apply(&mut self, cmd: &MapCommand) -> Result<(), MapError> {
        match cmd {
            MapCommand::RegisterNode {
                node_id,
                addr,
                zone,
            } => {
                let entry = NodeEntry {
                    addr: addr.clone(),
                    zone: zone.clone(),
                    state: self
                        .nodes
                        .get(node_id)
                        .map(|n| n.state)
                        .unwrap_or(NodeState::Active),
                };
                if self.nodes.get(node_id) == Some(&entry) {
                    return Ok(()); // nothing new: no version bump
                }
                self.nodes.insert(node_id.clone(), entry);
            }
            MapCommand::SetNodeState { node_id, state } => {
                let n = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| MapError::UnknownNode(node_id.clone()))?;
                if n.state == *state {
                    return Ok(());
                }
                n.state = *state;
            }
            MapCommand::CreateTable { spec, placement } => {
                spec.validate()?;
                if self.tables.contains_key(&spec.name) {
                    return Err(MapError::TableExists(spec.name.clone()));
                }
                let ranges = spec.ranges();
                if placement.len() != ranges.len() {
                    return Err(MapError::InvalidPlacement(format!(
                        "{} shards but {} replica sets",
                        ranges.len(),
                        placement.len()
                    )));
                }
                let mut shards = Vec::with_capacity(ranges.len());
                for (index, (range, (primary, backups))) in
                    ranges.into_iter().zip(placement).enumerate()
                {
                    let set = ReplicaSet {
                        primary: primary.clone(),
                        backups: backups.clone(),
                        learners: vec![],
                        moves: vec![],
                        epoch: 1,
                        away: vec![],
                    };
                    self.check_replica_set(&set, spec.replicas)?;
                    shards.push(Shard {
                        index: index as u32,
                        range,
                        replicas: set,
                        origin: None,
                        merging: None,
                        merged: None,
                    });
                }
                self.next_table_id += 1;
                self.tables.insert(
                    spec.name.clone(),
                    Table {
                        id: self.next_table_id,
                        spec: spec.clone(),
                        shards,
                        placement: None,
                        auto_split: true,
                        auto_merge: true,
                        retired: BTreeMap::new(),
                    },
                );
            }
            MapCommand::DropTable { name } => {
                self.tables
                    .remove(name)
                    .ok_or_else(|| MapError::NoSuchTable(name.clone()))?;
            }
            MapCommand::SetReplicas {
                table,
                shard,
                expect_epoch,
                primary,
                backups,
                learners,
                moves,
                what,
                why,
                at_unix_ms,
                away,
            } => {
                let name = format!("{table}/{shard}");
                let t = self
                    .tables
                    .get(table)
                    .ok_or_else(|| MapError::NoSuchTable(table.clone()))?;
                let s = t.shards.get(*shard as usize).ok_or_else(|| {
                    MapError::InvalidPlacement(format!("table {table:?} has no shard {shard}"))
                })?;
                let old = &s.replicas;
                if old.epoch != *expect_epoch {
                    return Err(MapError::StaleEpoch {
                        shard: name,
                        expected: *expect_epoch,
                        now: old.epoch,
                    });
                }
                let holders: Vec<&NodeId> = std::iter::once(primary)
                    .chain(backups)
                    .chain(learners)
                    .collect();
                let next = ReplicaSet {
                    primary: primary.clone(),
                    backups: backups.clone(),
                    learners: learners.clone(),
                    moves: moves
                        .iter()
                        .filter(|(l, _)| learners.contains(l))
                        .cloned()
                        .collect(),
                    epoch: old.epoch + 1,
                    away: away
                        .iter()
                        .filter(|a| !holders.contains(&&a.node))
                        .cloned()
                        .collect(),
                };
                check_transition(old, &next).map_err(|why| MapError::UnsafeChange {
                    shard: name.clone(),
                    why,
                })?;
                for n in next.holders() {
                    match self.nodes.get(n) {
                        Some(e) if e.state != NodeState::Removed => {}
                        Some(_) => {
                            return Err(MapError::InvalidPlacement(format!(
                                "node {n:?} is removed"
                            )))
                        }
                        None => return Err(MapError::UnknownNode(n.clone())),
                    }
                }
                let epoch = next.epoch;
                let t = self.tables.get_mut(table).expect("checked above");
                t.shards[*shard as usize].replicas = next;
                self.push_event(MapEvent {
                    version: self.version + 1,
                    at_unix_ms: *at_unix_ms,
                    subject: name,
                    what: what.clone(),
                    why: why.clone(),
                    epoch: Some(epoch),
                });
            }
            MapCommand::SplitShard {
                table,
                shard,
                expect_epoch,
                at,
                why,
                at_unix_ms,
            } => {
                let name = format!("{table}/{shard}");
                let t = self
                    .tables
                    .get_mut(table)
                    .ok_or_else(|| MapError::NoSuchTable(table.clone()))?;
                let child = t.shards.len() as u32;
                if child >= MAX_SHARDS {
                    return Err(MapError::InvalidSplits(format!(
                        "table {table:?} has {child} shards, the most a table may have"
                    )));
                }
                let s = t.shards.get_mut(*shard as usize).ok_or_else(|| {
                    MapError::InvalidPlacement(format!("table {table:?} has no shard {shard}"))
                })?;
                if s.replicas.epoch != *expect_epoch {
                    return Err(MapError::StaleEpoch {
                        shard: name,
                        expected: *expect_epoch,
                        now: s.replicas.epoch,
                    });
                }
                if !s.replicas.learners.is_empty() {
                    return Err(MapError::UnsafeChange {
                        shard: name,
                        why: "a copy is being added or moved: split once it is done".into(),
                    });
                }
                if let Some(m) = t.shards.iter().find(|s| s.merging.is_some()) {
                    return Err(MapError::UnsafeChange {
                        shard: name,
                        why: format!(
                            "{table}/{} is being merged into {table}/{}: split once that is done",
                            m.index,
                            m.merging.as_ref().map_or(0, |g| g.into)
                        ),
                    });
                }
                let s = &mut t.shards[*shard as usize];
                let (keep, give) = halves(&s.range, at.as_ref()).ok_or_else(|| {
                    MapError::InvalidSplits(match at {
                        Some(k) => format!("{k} is not strictly inside {name}'s keys {}", s.range),
                        None if matches!(s.range, KeyRange::Range { .. }) => {
                            format!("{name} is a range shard: give the key to split at")
                        }
                        None => format!("{name} cannot be split further"),
                    })
                })?;
                s.range = keep.clone();
                s.replicas.epoch += 1;
                let epoch = s.replicas.epoch;
                // The parent's copies away hold nothing of the child, and
                // its epochs go on above those of any shard once at its
                // index.
                let replicas = ReplicaSet {
                    away: vec![],
                    epoch: epoch.max(t.retired.get(&child).map_or(0, |e| e + 1)),
                    ..s.replicas.clone()
                };
                t.shards.push(Shard {
                    index: child,
                    range: give.clone(),
                    replicas,
                    origin: Some(Origin {
                        parent: *shard,
                        epoch,
                        at_unix_ms: *at_unix_ms,
                        range: give.clone(),
                    }),
                    merging: None,
                    merged: None,
                });
                self.push_event(MapEvent {
                    version: self.version + 1,
                    at_unix_ms: *at_unix_ms,
                    subject: name,
                    what: format!("split: keeps {keep}, {table}/{child} takes {give}"),
                    why: why.clone(),
                    epoch: Some(epoch),
                });
            }
            MapCommand::BeginMerge {
                table,
                keep,
                absorb,
                why,
                at_unix_ms,
            } => {
                let t = self
                    .tables
                    .get_mut(table)
                    .ok_or_else(|| MapError::NoSuchTable(table.clone()))?;
                let into = mergeable(t, *keep, *absorb)?;
                let a = &mut t.shards[*absorb as usize];
                a.merging = Some(Merging {
                    into: *keep,
                    since_unix_ms: *at_unix_ms,
                    why: why.clone(),
                    sealed: false,
                });
                self.push_event(MapEvent {
                    version: self.version + 1,
                    at_unix_ms: *at_unix_ms,
                    subject: format!("{table}/{absorb}"),
                    what: format!("merge begun: into {table}/{keep}, which will hold {into}"),
                    why: why.clone(),
                    epoch: None,
                });
            }
            MapCommand::SealMerge {
                table,
                absorb,
                expect_epochs,
                at_unix_ms,
            } => {
                let t = self
                    .tables
                    .get_mut(table)
                    .ok_or_else(|| MapError::NoSuchTable(table.clone()))?;
                let keep = merge_keep(t, *absorb, false)?;
                check_merge_copies(t, keep, *absorb, *expect_epochs)?;
                let why = t.shards[*absorb as usize]
                    .merging
                    .as_ref()
                    .map(|m| m.why.clone())
                    .unwrap_or_default();
                for i in [keep, *absorb] {
                    t.shards[i as usize].replicas.epoch += 1;
                }
                if let Some(m) = t.shards[*absorb as usize].merging.as_mut() {
                    m.sealed = true;
                }
                let epoch = t.shards[keep as usize].replicas.epoch;
                self.push_event(MapEvent {
                    version: self.version + 1,
                    at_unix_ms: *at_unix_ms,
                    subject: format!("{table}/{absorb}"),
                    what: format!("merge sealed: {table}/{absorb} and {table}/{keep} take no writes until it is done"),
                    why,
                    epoch: Some(epoch),
                });
            }
            MapCommand::FinishMerge {
                table,
                absorb,
                expect_epochs,
                seqs,
                at_unix_ms,
            } => {
                let t = self
                    .tables
                    .get_mut(table)
                    .ok_or_else(|| MapError::NoSuchTable(table.clone()))?;
                let keep = merge_keep(t, *absorb, true)?;
                check_merge_copies(t, keep, *absorb, *expect_epochs)?;
                let gone = t.shards.pop().expect("the absorbed shard is the newest");
                t.retired.insert(gone.index, gone.replicas.epoch);
                let why = gone.merging.map(|m| m.why).unwrap_or_default();
                let k = &mut t.shards[keep as usize];
                let into = merged(&k.range, &gone.range).expect("checked when the merge began");
                k.range = into.clone();
                k.replicas.epoch += 1;
                // Copies away hold neither shard as merged: they come back
                // by snapshot, as new copies.
                k.replicas.away.clear();
                let epoch = k.replicas.epoch;
                k.merged = Some(Merged {
                    absorbed: *absorb,
                    epoch,
                    at_unix_ms: *at_unix_ms,
                    seqs: *seqs,
                    range: gone.range,
                    absorbed_born: gone.origin.as_ref().map(|o| o.birth()),
                });
                self.push_event(MapEvent {
                    version: self.version + 1,
                    at_unix_ms: *at_unix_ms,
                    subject: format!("{table}/{keep}"),
                    what: format!("merge: took in {table}/{absorb}, now holds {into}"),
                    why,
                    epoch: Some(epoch),
                });
            }
            MapCommand::CancelMerge {
                table,
                absorb,
                why,
                at_unix_ms,
            } => {
                let t = self
                    .tables
                    .get_mut(table)
                    .ok_or_else(|| MapError::NoSuchTable(table.clone()))?;
                let Some(m) = t
                    .shards
                    .get_mut(*absorb as usize)
                    .and_then(|s| s.merging.take())
                else {
                    return Ok(()); // nothing to undo (a cancel committed twice)
                };
                let mut epoch = None;
                if m.sealed {
                    for i in [m.into, *absorb] {
                        if let Some(s) = t.shards.get_mut(i as usize) {
                            s.replicas.epoch += 1;
                            epoch = Some(s.replicas.epoch);
                        }
                    }
                }
                self.push_event(MapEvent {
                    version: self.version + 1,
                    at_unix_ms: *at_unix_ms,
                    subject: format!("{table}/{absorb}"),
                    what: format!("merge into {table}/{} given up", m.into),
                    why: why.clone(),
                    epoch,
                });
            }
            MapCommand::SetAutoSplit {
                table,
                on,
                at_unix_ms,
            }
            | MapCommand::SetAutoMerge {
                table,
                on,
                at_unix_ms,
            } => {
                let merges = matches!(cmd, MapCommand::SetAutoMerge { .. });
                let t = self.table_mut(table)?;
                let switch = if merges {
                    &mut t.auto_merge
                } else {
                    &mut t.auto_split
                };
                if *switch == *on {
                    return Ok(());
                }
                *switch = *on;
                let what = if merges { "merges" } else { "splits" };
                self.push_switch(table, what, *on, *at_unix_ms);
            }
            MapCommand::SetPlacement {
                table,
                rule,
                at_unix_ms,
            } => {
                let t = self
                    .tables
                    .get(table)
                    .ok_or_else(|| MapError::NoSuchTable(table.clone()))?;
                if let Some(rule) = rule {
                    rule.validate(t.spec.replicas)?;
                    if let Some(n) = rule.nodes().into_iter().find(|n| {
                        self.nodes
                            .get(*n)
                            .is_none_or(|e| e.state == NodeState::Removed)
                    }) {
                        return Err(MapError::UnknownNode(n.clone()));
                    }
                }
                if t.placement == *rule {
                    return Ok(());
                }
                self.tables.get_mut(table).expect("checked above").placement = rule.clone();
                self.push_event(MapEvent {
                    version: self.version + 1,
                    at_unix_ms: *at_unix_ms,
                    subject: table.clone(),
                    what: match rule {
                        Some(r) => format!("placement: {r}"),
                        None => "placement rule cleared".into(),
                    },
                    why: "operator: placement".into(),
                    epoch: None,
                });
            }
        }
        self.version += 1;
        Ok(())
    }

    fn table_mut(&mut self, table: &str) -> Result<&mut Table, MapError> {
        self.tables
            .get_mut(table)
            .ok_or_else(|| MapError::NoSuchTable(table.to_owned()))
    }

    /// The event of an operator turning a table's automatic `what`
    /// (splits, merges) on or off.
    fn push_switch(&mut self, table: &str, what: &str, on: bool, at_unix_ms: u64) {
        self.push_event(MapEvent {
            version: self.version + 1,
            at_unix_ms,
            subject: table.to_owned(),
            what: format!("automatic {what} {}", if on { "on" } else { "off" }),
            why: format!("operator: auto-{}", what.trim_end_matches('s')),
            epoch: None,
        });
    }

    /// Keeps `event`, dropping the oldest beyond [`MAX_EVENTS`].
    fn push_event(&mut self, event: MapEvent) {
        self.events.push_back(event);
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// The shards (table, index, replica set) a node holds a copy of,
    /// learners included.
    pub fn copies_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = (&'a Table, &'a Shard)> {
        self.tables.values().flat_map(move |t| {
            t.shards
                .iter()
                .filter(move |s| s.replicas.holders().any(|m| m == node))
                .map(move |s| (t, s))
        })
    }

    fn check_replica_set(&self, set: &ReplicaSet, replicas: u32) -> Result<(), MapError> {
        let members: Vec<&NodeId> = set.members().collect();
        if members.len() != replicas as usize {
            return Err(MapError::InvalidPlacement(format!(
                "{} copies placed, table wants {replicas}",
                members.len()
            )));
        }
        let mut unique = members.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != members.len() {
            return Err(MapError::InvalidPlacement(
                "two copies of one shard on the same node".into(),
            ));
        }
        for m in members {
            match self.nodes.get(m) {
                Some(n) if n.state == NodeState::Active => {}
                Some(n) => {
                    return Err(MapError::InvalidPlacement(format!(
                        "node {m:?} is {}",
                        n.state
                    )))
                }
                None => return Err(MapError::UnknownNode(m.clone())),
            }
        }
        Ok(())
    }

    /// The shards (table, index, replica set) a node is a member of.
    pub fn shards_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = (&'a Table, &'a Shard)> {
        self.tables.values().flat_map(move |t| {
            t.shards
                .iter()
                .filter(move |s| s.replicas.members().any(|m| m == node))
                .map(move |s| (t, s))
        })
    }

    /// Panics if an invariant is broken (tests and debug assertions).
    pub fn check_invariants(&self) {
        for t in self.tables.values() {
            assert!(t.shards.len() as u32 >= t.spec.sharding.shard_count());
            for (i, s) in t.shards.iter().enumerate() {
                assert_eq!(
                    s.index as usize, i,
                    "{}: shard {i} is named {}",
                    t.spec.name, s.index
                );
                let mut m: Vec<&NodeId> = s.replicas.members().collect();
                let n = m.len();
                m.sort();
                m.dedup();
                assert_eq!(
                    m.len(),
                    n,
                    "{}/{}: replicas on one node twice",
                    t.spec.name,
                    s.index
                );
                assert!(s.replicas.epoch >= 1);
            }
        }
    }
}

/// Whether a shard can hold keys in `[from, to)`.
pub fn may_hold(
    sharding: &Sharding,
    range: &KeyRange,
    from: Option<&RowKey>,
    to: Option<&RowKey>,
) -> bool {
    match (sharding, range) {
        (Sharding::Range { .. }, KeyRange::Range { start, end }) => {
            let below_end = match (from, end) {
                (Some(f), Some(e)) => f < e,
                _ => true,
            };
            let above_start = match (to, start) {
                (Some(t), Some(s)) => t > s,
                _ => true,
            };
            below_end && above_start
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_with_nodes(n: usize) -> ClusterMap {
        let mut m = ClusterMap::default();
        for i in 1..=n {
            m.apply(&MapCommand::RegisterNode {
                node_id: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7400 + i),
                zone: String::new(),
            })
            .unwrap();
        }
        m
    }

    fn user_spec() -> TableSpec {
        TableSpec {
            name: "user".into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 2 },
            replicas: 2,
            min_copies: 0,
        }
    }

    fn placement() -> Vec<(NodeId, Vec<NodeId>)> {
        vec![
            ("n1".into(), vec!["n2".into()]),
            ("n2".into(), vec!["n1".into()]),
        ]
    }

    #[test]
    fn create_and_drop_bump_the_version_once_each() {
        let mut m = map_with_nodes(2);
        assert_eq!(m.version, 2);
        m.apply(&MapCommand::CreateTable {
            spec: user_spec(),
            placement: placement(),
        })
        .unwrap();
        assert_eq!(m.version, 3);
        let t = &m.tables["user"];
        assert_eq!(t.shards[1].range, KeyRange::HashSlot { slot: 1, of: 2 });
        assert_eq!(m.shards_of("n1").count(), 2);
        m.check_invariants();
        // Registering the same node again changes nothing.
        m.apply(&MapCommand::RegisterNode {
            node_id: "n1".into(),
            addr: "127.0.0.1:7401".into(),
            zone: String::new(),
        })
        .unwrap();
        assert_eq!(m.version, 3);
        m.apply(&MapCommand::DropTable {
            name: "user".into(),
        })
        .unwrap();
        assert_eq!(m.version, 4);
        assert!(m.tables.is_empty());
    }

    #[test]
    fn refused_commands_leave_the_map_untouched() {
        let mut m = map_with_nodes(2);
        let create = MapCommand::CreateTable {
            spec: user_spec(),
            placement: placement(),
        };
        m.apply(&create).unwrap();
        let before = m.clone();
        assert_eq!(m.apply(&create), Err(MapError::TableExists("user".into())));
        assert_eq!(
            m.apply(&MapCommand::DropTable {
                name: "nope".into()
            }),
            Err(MapError::NoSuchTable("nope".into()))
        );
        let mut twice = user_spec();
        twice.name = "t2".into();
        let err = m
            .apply(&MapCommand::CreateTable {
                spec: twice,
                placement: vec![
                    ("n1".into(), vec!["n1".into()]),
                    ("n2".into(), vec!["n1".into()]),
                ],
            })
            .unwrap_err();
        assert!(err.to_string().contains("same node"), "{err}");
        assert_eq!(m, before);
    }

    #[test]
    fn range_tables_split_at_their_points() {
        let mut m = map_with_nodes(1);
        let spec = TableSpec {
            name: "events".into(),
            key: "ts".into(),
            sharding: Sharding::Range {
                splits: ["1000", "2000", "3000"].map(RowKey::parse).to_vec(),
            },
            replicas: 1,
            min_copies: 0,
        };
        m.apply(&MapCommand::CreateTable {
            spec,
            placement: vec![("n1".into(), vec![]); 4],
        })
        .unwrap();
        let shards = &m.tables["events"].shards;
        assert_eq!(shards.len(), 4);
        assert_eq!(shards[0].range.to_string(), "(-inf, 1000)");
        assert_eq!(shards[3].range.to_string(), "[3000, +inf)");
    }

    #[test]
    fn split_points_must_increase() {
        let spec = TableSpec {
            name: "e".into(),
            key: "ts".into(),
            sharding: Sharding::Range {
                splits: ["10", "5"].map(RowKey::parse).to_vec(),
            },
            replicas: 1,
            min_copies: 0,
        };
        let err = spec.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid split points: must be strictly increasing, but 10 comes before 5"
        );
    }

    fn split(
        m: &mut ClusterMap,
        table: &str,
        shard: u32,
        at: Option<&str>,
    ) -> Result<(), MapError> {
        let epoch = m.tables[table].shards[shard as usize].replicas.epoch;
        m.apply(&MapCommand::SplitShard {
            table: table.into(),
            shard,
            expect_epoch: epoch,
            at: at.map(RowKey::parse),
            why: "operator: split-shard".into(),
            at_unix_ms: 7,
        })
    }

    #[test]
    fn a_split_appends_a_child_with_the_parents_members_and_lineage() {
        let mut m = map_with_nodes(2);
        m.apply(&MapCommand::CreateTable {
            spec: user_spec(),
            placement: placement(),
        })
        .unwrap();
        split(&mut m, "user", 1, None).unwrap();
        m.check_invariants();
        let t = &m.tables["user"];
        assert_eq!(t.shards.len(), 3);
        let (parent, child) = (&t.shards[1], &t.shards[2]);
        assert_eq!(parent.range, KeyRange::HashSlot { slot: 1, of: 4 });
        assert_eq!(child.range, KeyRange::HashSlot { slot: 3, of: 4 });
        assert_eq!(parent.replicas.epoch, 2);
        assert_eq!(child.replicas, parent.replicas);
        assert_eq!(
            child.origin,
            Some(Origin {
                parent: 1,
                epoch: 2,
                at_unix_ms: 7,
                range: KeyRange::HashSlot { slot: 3, of: 4 },
            })
        );
        let e = m.events.back().unwrap();
        assert_eq!(e.subject, "user/1");
        assert_eq!(
            e.what,
            "split: keeps hash % 4 = 1, user/2 takes hash % 4 = 3"
        );
        // Every key still has exactly one owner, the one `shard_of` names.
        for k in 0..500 {
            let k = RowKey::Int(k);
            let owners: Vec<u32> = t
                .shards
                .iter()
                .filter(|s| s.range.contains(&k))
                .map(|s| s.index)
                .collect();
            assert_eq!(owners, vec![t.shard_of(&k)]);
        }
        // A stale plan is refused, and so is a split at a key outside.
        let err = m
            .apply(&MapCommand::SplitShard {
                table: "user".into(),
                shard: 1,
                expect_epoch: 1,
                at: None,
                why: String::new(),
                at_unix_ms: 0,
            })
            .unwrap_err();
        assert!(matches!(err, MapError::StaleEpoch { .. }), "{err}");
    }

    #[test]
    fn a_range_split_needs_a_key_strictly_inside_the_shard() {
        let mut m = map_with_nodes(1);
        let spec = TableSpec {
            name: "e".into(),
            key: "ts".into(),
            sharding: Sharding::Range {
                splits: vec![RowKey::Int(100)],
            },
            replicas: 1,
            min_copies: 0,
        };
        m.apply(&MapCommand::CreateTable {
            spec,
            placement: vec![("n1".into(), vec![]); 2],
        })
        .unwrap();
        assert_eq!(
            split(&mut m, "e", 0, None).unwrap_err().to_string(),
            "invalid split points: e/0 is a range shard: give the key to split at"
        );
        assert_eq!(
            split(&mut m, "e", 0, Some("100")).unwrap_err().to_string(),
            "invalid split points: 100 is not strictly inside e/0's keys (-inf, 100)"
        );
        split(&mut m, "e", 0, Some("50")).unwrap();
        split(&mut m, "e", 2, Some("70")).unwrap();
        m.check_invariants();
        let t = &m.tables["e"];
        let ranges: Vec<String> = t.shards.iter().map(|s| s.range.to_string()).collect();
        assert_eq!(
            ranges,
            ["(-inf, 50)", "[100, +inf)", "[50, 70)", "[70, 100)"]
        );
        for (k, owner) in [(-5, 0), (50, 2), (69, 2), (70, 3), (99, 3), (100, 1)] {
            assert_eq!(t.shard_of(&RowKey::Int(k)), owner, "key {k}");
        }
    }
}
