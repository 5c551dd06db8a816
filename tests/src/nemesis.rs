//! Nemesis rounds: faults injected into a real 3-node cluster on a
//! schedule made from a seed, while clients record a history
//! ([`crate::history`]) that is then checked for linearizability
//! ([`crate::linearizability`]).
//!
//! The faults ([`FaultKind`]): kill -9 and restart; SIGSTOP past the lease
//! then SIGCONT; a full partition of a shard's primary, of the Raft leader,
//! of one node (a minority), or of every node from every other (no
//! majority anywhere); one-way partitions (a node that sends but does not
//! hear, and one that hears but cannot send); random packet loss between
//! the nodes; the Raft leader and a shard primary killed together; a
//! rolling restart. Each lasts a few seconds and then heals.
//!
//! A round: create a table (4 shards × 3 copies), pick a few hot keys (two
//! per shard, so that two-key batches stay within a shard), run the
//! clients while the schedule runs, heal everything, wait until every
//! shard is back at full strength, then check:
//! - every key's history is linearizable, no value is seen at two
//!   versions, no refused write is visible (the checker);
//! - the copies of every shard are identical (the `describe --verify`
//!   check: checksums of copies at one log position, polled until no copy
//!   is catching up);
//! - a last strong read of every key, part of the history, so an
//!   acknowledged write that is lost shows as a violation.
//!
//! The schedule is a function of the round's seed and fault list alone
//! ([`schedule`]): targets are chosen by a number drawn from the seed
//! (the primary of shard `pick % shards`, the node `pick % 3`...), so a
//! replay injects the same faults at the same times, into a cluster that
//! may place its primaries differently. A round that fails keeps its
//! history (JSON lines), a report and the node logs of the round, and
//! prints the seed and the command that replays it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tstore_client::cluster_map::{RowKey, Sharding, Table, TableSpec};
use tstore_membership::NodeStatus;

use crate::history::{self, Clock, Counts, Op, Rng, Workload};
use crate::linearizability::{self, Check, Limits};
use crate::partition::Partition;
use crate::Cluster;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// kill -9 of a node (a primary or any), restarted after the hold.
    Kill,
    /// SIGSTOP of a node (a primary or any) past its lease, then SIGCONT.
    Pause,
    /// The primary of a shard cut off from the other nodes.
    PartitionPrimary,
    /// The Raft leader cut off from the other nodes.
    PartitionLeader,
    /// One node cut off from the two others.
    PartitionMinority,
    /// Every node cut off from every other: no majority anywhere.
    PartitionMajority,
    /// A node that can send but hears nothing.
    Deaf,
    /// A node that hears everything but whose packets are all lost.
    Mute,
    /// 10–30% of the packets between any two nodes lost.
    Loss,
    /// The Raft leader and the primary of a shard on another node, killed
    /// together (two of three nodes) and restarted.
    KillLeaderAndPrimary,
    /// Every node stopped (SIGTERM) and started again in turn.
    RollingRestart,
    /// A shard of the table split in two (`split-shard`), while the clients
    /// run: not a failure, but a change every client must follow, alone or
    /// together with the failures above.
    Split,
    /// The table's newest shard merged into its neighbour (`merge-shards`;
    /// a one-shard table is split first), while the clients run: both
    /// shards' writes wait while sealed, and every client must follow the
    /// keys to the merged shard.
    Merge,
}

impl FaultKind {
    pub const ALL: [FaultKind; 13] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::PartitionPrimary,
        FaultKind::PartitionLeader,
        FaultKind::PartitionMinority,
        FaultKind::PartitionMajority,
        FaultKind::Deaf,
        FaultKind::Mute,
        FaultKind::Loss,
        FaultKind::KillLeaderAndPrimary,
        FaultKind::RollingRestart,
        FaultKind::Split,
        FaultKind::Merge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::PartitionPrimary => "partition-primary",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionMinority => "partition-minority",
            FaultKind::PartitionMajority => "partition-majority",
            FaultKind::Deaf => "deaf",
            FaultKind::Mute => "mute",
            FaultKind::Loss => "loss",
            FaultKind::KillLeaderAndPrimary => "kill-leader-and-primary",
            FaultKind::RollingRestart => "rolling-restart",
            FaultKind::Split => "split",
            FaultKind::Merge => "merge",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown fault {s:?}; known: all, {}",
                    Self::ALL.map(FaultKind::name).join(", ")
                )
            })
    }

    /// `all`, or names separated by commas.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        if s.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let list: Vec<Self> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Self::parse)
            .collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Err("no fault named".into());
        }
        Ok(list)
    }

    pub fn list_name(kinds: &[FaultKind]) -> String {
        if kinds == Self::ALL {
            "all".into()
        } else {
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// When it starts, from the start of the round (not before).
    pub at: Duration,
    pub kind: FaultKind,
    /// How long it lasts before it heals.
    pub hold: Duration,
    /// Chooses the target (a shard, a node).
    pub pick: u64,
    /// The share of packets lost ([`FaultKind::Loss`]).
    pub loss: f64,
}

/// How long a rolling restart is counted for in a schedule.
const ROLLING_RESTART_SPAN: Duration = Duration::from_secs(15);

/// The faults of a round of `duration`, from `seed`: one kind for the whole
/// round ("alone", half of the seeds when several kinds are allowed, and
/// always with one) or a kind drawn per fault ("combined"); each fault
/// held 2.5–5 s (a pause 3–4.5 s, past the lease and its grace), 1–3 s
/// apart. At least one fault, even if it runs past `duration`.
pub fn schedule(seed: u64, kinds: &[FaultKind], duration: Duration) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let alone = kinds.len() == 1 || rng.chance(50);
    let only = kinds[rng.below(kinds.len() as u64) as usize];
    let mut at = Duration::from_millis(rng.between(1000, 2500));
    let mut steps = Vec::new();
    for _ in 0..100 {
        let kind = if alone {
            only
        } else {
            kinds[rng.below(kinds.len() as u64) as usize]
        };
        let hold = Duration::from_millis(match kind {
            FaultKind::Pause => rng.between(3000, 4500),
            FaultKind::RollingRestart => 0,
            _ => rng.between(2500, 5000),
        });
        let pick = rng.next_u64();
        let loss = rng.between(10, 30) as f64 / 100.0;
        let span = if kind == FaultKind::RollingRestart {
            ROLLING_RESTART_SPAN
        } else {
            hold
        };
        if !steps.is_empty() && at + span + Duration::from_secs(1) > duration {
            break;
        }
        steps.push(Step {
            at,
            kind,
            hold,
            pick,
            loss,
        });
        at += span + Duration::from_millis(rng.between(1000, 3000));
    }
    steps
}

/// Settings of a run of rounds.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// How long the clients run in each round (the schedule fits in it).
    pub duration: Duration,
    pub clients: usize,
    /// Hot keys: two per shard.
    pub shards: u32,
    pub replicas: u32,
    /// Where failed rounds are kept.
    pub keep_dir: PathBuf,
    pub limits: Limits,
    /// How long the cluster may take to heal after a round.
    pub heal_limit: Duration,
    /// Extra `tstore start` flags for every node, at every (re)start (e.g.
    /// `--quiet-after-ms 50`, so shards go quiet between operations).
    pub node_flags: Vec<String>,
}

impl RunConfig {
    pub fn new(duration: Duration, keep_dir: PathBuf) -> Self {
        RunConfig {
            duration,
            clients: 5,
            shards: 4,
            replicas: 3,
            keep_dir,
            limits: Limits::default(),
            heal_limit: Duration::from_secs(90),
            node_flags: Vec::new(),
        }
    }
}

/// A round to run: its seed and the faults it may use.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub faults: Vec<FaultKind>,
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RoundVerdict {
    /// Linearizable, identical copies, healed.
    Pass,
    /// The checker could not decide every key within its bound.
    Undecided,
    /// The cluster did not heal (or a key could not be read) in time.
    NotHealed,
    /// A fault could not be injected (no iptables, not root...).
    NotInjected,
    /// A violation: not linearizable, a value at two versions, copies
    /// that differ...
    Violation,
}

impl std::fmt::Display for RoundVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoundVerdict::Pass => "pass",
            RoundVerdict::Undecided => "undecided",
            RoundVerdict::NotHealed => "not healed",
            RoundVerdict::NotInjected => "fault not injected",
            RoundVerdict::Violation => "VIOLATION",
        })
    }
}

/// What a round did and found.
#[derive(Debug)]
pub struct RoundReport {
    pub round: usize,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    pub duration: Duration,
    /// What was done when, from the round's start.
    pub timeline: Vec<String>,
    pub injected: BTreeMap<FaultKind, usize>,
    pub counts: Counts,
    pub check: Check,
    /// Copies that differ at one log position.
    pub copies_differ: Option<String>,
    /// Why the cluster did not heal, if it did not.
    pub not_healed: Option<String>,
    /// Faults that could not be injected, and why.
    pub not_injected: Vec<String>,
    /// Where the round was kept, if it failed.
    pub kept: Option<PathBuf>,
}

impl RoundReport {
    pub fn verdict(&self) -> RoundVerdict {
        if self.check.violating().next().is_some() || self.copies_differ.is_some() {
            RoundVerdict::Violation
        } else if self.not_healed.is_some() {
            RoundVerdict::NotHealed
        } else if !self.not_injected.is_empty() {
            RoundVerdict::NotInjected
        } else if self.check.undecided().next().is_some() {
            RoundVerdict::Undecided
        } else {
            RoundVerdict::Pass
        }
    }

    /// The command that runs this round again.
    pub fn replay(&self) -> String {
        format!(
            "bench/nemesis.sh --rounds 1 --seed {} --duration {} --faults {}",
            self.seed,
            self.duration.as_secs(),
            FaultKind::list_name(&self.faults)
        )
    }

    /// One line: round, seed, verdict, what was injected and checked.
    pub fn line(&self) -> String {
        let injected: Vec<String> = self
            .injected
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect();
        let mut line = format!(
            "round {} seed {}: {} ({}; {}; faults: {})",
            self.round,
            self.seed,
            self.verdict(),
            self.counts,
            if self.check.keys.is_empty() {
                "nothing checked".to_owned()
            } else {
                format!("{} keys checked", self.check.keys.len())
            },
            if injected.is_empty() {
                "none".to_owned()
            } else {
                injected.join(" ")
            }
        );
        for (kind, n) in self.check.by_kind() {
            let _ = write!(line, "; {n}× {kind}");
        }
        let undecided: Vec<String> = self
            .check
            .undecided()
            .map(|k| format!("key {} ({} steps)", k.key, k.steps))
            .collect();
        if !undecided.is_empty() {
            let _ = write!(line, "; could not decide {}", undecided.join(", "));
        }
        if let Some(d) = &self.copies_differ {
            let _ = write!(line, "; copies differ: {d}");
        }
        if let Some(h) = &self.not_healed {
            let _ = write!(line, "; not healed: {}", h.lines().next().unwrap_or(""));
        }
        for e in &self.not_injected {
            let _ = write!(line, "; not injected: {e}");
        }
        if self.verdict() != RoundVerdict::Pass {
            let _ = write!(line, "\n  replay: {}", self.replay());
            if let Some(k) = &self.kept {
                let _ = write!(line, "\n  kept in {}", k.display());
            }
        }
        line
    }

    /// The full report: the line, the timeline, the checker's findings.
    pub fn full(&self) -> String {
        let mut out = self.line();
        out.push_str("\ntimeline:\n");
        for t in &self.timeline {
            let _ = writeln!(out, "  {t}");
        }
        out.push_str("check:\n");
        out.push_str(&self.check.report());
        if let Some(h) = &self.not_healed {
            let _ = writeln!(out, "not healed: {h}");
        }
        out
    }
}

/// Totals of a run, printed at its end.
pub fn summary(reports: &[RoundReport]) -> String {
    let mut out = String::from("== nemesis summary\n");
    let ops: usize = reports.iter().map(|r| r.check.ops()).sum();
    let _ = writeln!(out, "rounds: {}, operations checked: {ops}", reports.len());
    let mut injected: BTreeMap<FaultKind, usize> = BTreeMap::new();
    let mut verdicts: BTreeMap<RoundVerdict, usize> = BTreeMap::new();
    let mut problems: BTreeMap<String, usize> = BTreeMap::new();
    for r in reports {
        for (k, n) in &r.injected {
            *injected.entry(*k).or_default() += n;
        }
        *verdicts.entry(r.verdict()).or_default() += 1;
        for (k, n) in r.check.by_kind() {
            *problems.entry(k.to_string()).or_default() += n;
        }
        if r.copies_differ.is_some() {
            *problems.entry("copies differ".into()).or_default() += 1;
        }
    }
    let list = |m: Vec<String>| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "faults injected: {}",
        list(injected.iter().map(|(k, n)| format!("{k} {n}")).collect())
    );
    let _ = writeln!(
        out,
        "verdicts: {}",
        list(verdicts.iter().map(|(k, n)| format!("{k} {n}")).collect())
    );
    let _ = writeln!(
        out,
        "problems: {}",
        list(problems.iter().map(|(k, n)| format!("{k} {n}")).collect())
    );
    for r in reports {
        let _ = writeln!(out, "{}", r.line());
    }
    out.push_str("== end of summary");
    out
}

/// Faults in force, to heal.
#[derive(Default)]
struct Active {
    partitions: Vec<Partition>,
    paused: Vec<String>,
    killed: Vec<String>,
}

/// Who leads what, as far as a node that answers knows.
#[derive(Debug, Default)]
struct View {
    leader: Option<String>,
    primaries: Vec<String>,
}

/// A cluster that runs rounds one after another.
pub struct Nemesis {
    cluster: Cluster,
    ids: Vec<&'static str>,
    config: RunConfig,
}

/// The extra node flags of `config`, as `start_with` takes them.
fn flags(config: &RunConfig) -> Vec<&str> {
    config.node_flags.iter().map(String::as_str).collect()
}

const OP_TIMEOUT: Duration = Duration::from_secs(15);
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

impl Nemesis {
    /// Starts a formed 3-node cluster.
    pub async fn start(config: RunConfig) -> Self {
        let mut cluster = Cluster::new();
        let ids = vec!["n1", "n2", "n3"];
        crate::partition::sweep(cluster.addr(ids[0]).ip());
        cluster.start_formed_with(&ids, &flags(&config)).await;
        Nemesis {
            cluster,
            ids,
            config,
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Replaces the cluster by a fresh one (after a round it did not heal from).
    pub async fn restart_cluster(&mut self) {
        let mut fresh = Cluster::new();
        crate::partition::sweep(fresh.addr(self.ids[0]).ip());
        fresh
            .start_formed_with(&self.ids, &flags(&self.config))
            .await;
        self.cluster = fresh;
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.ids.iter().map(|id| self.cluster.addr(id)).collect()
    }

    fn others(&self, id: &str) -> Vec<&'static str> {
        self.ids.iter().copied().filter(|n| *n != id).collect()
    }

    fn other_addrs(&self, id: &str) -> Vec<SocketAddr> {
        self.others(id)
            .iter()
            .map(|n| self.cluster.addr(n))
            .collect()
    }

    /// Nodes that run and are not paused.
    fn answering(&self, active: &Active) -> Vec<&'static str> {
        self.ids
            .iter()
            .copied()
            .filter(|id| self.cluster.is_running(id) && !active.paused.iter().any(|p| p == id))
            .collect()
    }

    /// The node to ask for an operator's change (a split, a merge): one of
    /// the first two that answer, by `pick`.
    fn asker(&self, active: &Active, pick: u64) -> Result<&'static str, String> {
        self.answering(active)
            .get((pick % 2) as usize)
            .copied()
            .ok_or_else(|| "no node to ask".to_string())
    }

    /// The leader and the primaries of `table`, from the first node that
    /// answers (a partitioned node may answer with an old view).
    async fn view(&self, table: &str, active: &Active) -> View {
        for id in self.answering(active) {
            let ask = async {
                let status = self.cluster.status(id).await?;
                let client = self.cluster.client(id).await?;
                let t = client.describe(table).await.map_err(|e| e.to_string());
                client.close().await;
                let (_, t) = t?;
                Ok::<_, String>(View {
                    leader: status.leader,
                    primaries: t
                        .shards
                        .iter()
                        .map(|s| s.replicas.primary.clone())
                        .collect(),
                })
            };
            if let Ok(Ok(v)) = tokio::time::timeout(ASK_TIMEOUT, ask).await {
                return v;
            }
        }
        View::default()
    }

    /// Node `pick % 3`.
    fn node(&self, pick: u64) -> &'static str {
        self.ids[(pick % self.ids.len() as u64) as usize]
    }

    /// The primary of shard `pick % shards` if known, else node `pick % 3`;
    /// with a description.
    fn primary(&self, view: &View, table: &str, pick: u64) -> (&'static str, String) {
        let shard = (pick % u64::from(self.config.shards)) as usize;
        match view.primaries.get(shard) {
            Some(p) => match self.ids.iter().find(|id| **id == p.as_str()) {
                Some(id) => (id, format!("{id} (primary of {table}/{shard})")),
                None => (
                    self.node(pick),
                    format!("{} (primary unknown)", self.node(pick)),
                ),
            },
            None => (
                self.node(pick),
                format!("{} (primary unknown)", self.node(pick)),
            ),
        }
    }

    fn leader(&self, view: &View, pick: u64) -> (&'static str, String) {
        match view
            .leader
            .as_deref()
            .and_then(|l| self.ids.iter().find(|id| **id == l))
        {
            Some(id) => (id, format!("{id} (Raft leader)")),
            None => (
                self.node(pick),
                format!("{} (leader unknown)", self.node(pick)),
            ),
        }
    }

    fn kill(&mut self, id: &'static str, active: &mut Active) {
        if self.cluster.is_running(id) {
            self.cluster.kill9(id);
            active.killed.push(id.to_owned());
        }
    }

    /// Injects `step`; returns what was done. A rolling restart is done
    /// whole here.
    async fn inject(
        &mut self,
        step: &Step,
        table: &str,
        active: &mut Active,
    ) -> Result<String, String> {
        let view = self.view(table, active).await;
        let pick = step.pick;
        match step.kind {
            FaultKind::Kill | FaultKind::Pause => {
                let (id, what) = if pick % 2 == 0 {
                    self.primary(&view, table, pick / 2)
                } else {
                    let id = self.node(pick / 2);
                    (id, id.to_owned())
                };
                if !self.cluster.is_running(id) {
                    return Err(format!("{id} is not running"));
                }
                if step.kind == FaultKind::Kill {
                    self.kill(id, active);
                    Ok(format!("kill -9 {what}"))
                } else {
                    self.cluster.signal(id, Signal::SIGSTOP);
                    active.paused.push(id.to_owned());
                    Ok(format!("SIGSTOP {what}"))
                }
            }
            FaultKind::PartitionPrimary
            | FaultKind::PartitionLeader
            | FaultKind::PartitionMinority => {
                let (id, what) = match step.kind {
                    FaultKind::PartitionPrimary => self.primary(&view, table, pick),
                    FaultKind::PartitionLeader => self.leader(&view, pick),
                    _ => {
                        let id = self.node(pick);
                        (id, id.to_owned())
                    }
                };
                let p = Partition::isolate(self.cluster.addr(id), &self.other_addrs(id))?;
                active.partitions.push(p);
                Ok(format!("isolate {what} from the others"))
            }
            FaultKind::PartitionMajority => {
                let groups: Vec<Vec<SocketAddr>> =
                    self.addrs().into_iter().map(|a| vec![a]).collect();
                active.partitions.push(Partition::split(&groups)?);
                Ok("cut every node off from every other".into())
            }
            FaultKind::Deaf => {
                let (id, what) = self.primary(&view, table, pick);
                for o in self.other_addrs(id) {
                    active
                        .partitions
                        .push(Partition::one_way(o, &[self.cluster.addr(id)])?);
                }
                Ok(format!("{what} hears nothing (it can still send)"))
            }
            FaultKind::Mute => {
                let (id, what) = self.primary(&view, table, pick);
                active.partitions.push(Partition::one_way(
                    self.cluster.addr(id),
                    &self.other_addrs(id),
                )?);
                Ok(format!("{what} cannot send (it still hears)"))
            }
            FaultKind::Loss => {
                active
                    .partitions
                    .push(Partition::lossy(&self.addrs(), step.loss)?);
                Ok(format!(
                    "{:.0}% of the packets between nodes lost",
                    step.loss * 100.0
                ))
            }
            FaultKind::KillLeaderAndPrimary => {
                let (leader, lwhat) = self.leader(&view, pick);
                // A primary on another node: shard pick % shards, or the
                // next shard led elsewhere.
                let shards = self.config.shards as u64;
                let other = (0..shards)
                    .map(|i| (pick + i) % shards)
                    .find_map(|s| {
                        let p = view.primaries.get(s as usize)?;
                        let id = self
                            .ids
                            .iter()
                            .find(|id| **id == p.as_str() && **id != leader)?;
                        Some((*id, format!("{id} (primary of {table}/{s})")))
                    })
                    .unwrap_or_else(|| {
                        let id = self.others(leader)[(pick % 2) as usize];
                        (id, id.to_owned())
                    });
                self.kill(leader, active);
                self.kill(other.0, active);
                Ok(format!("kill -9 {lwhat} and {}", other.1))
            }
            FaultKind::Split => {
                let via = self.asker(active, pick)?;
                let client = self.cluster.client(via).await?;
                let split = async {
                    let (_, t) = client.describe(table).await.map_err(|e| e.to_string())?;
                    let shard = (pick % t.shards.len() as u64) as u32;
                    let (_, child) = client
                        .split_shard(table, shard, None)
                        .await
                        .map_err(|e| format!("split of {table}/{shard}: {e}"))?;
                    Ok::<_, String>(format!("split {table}/{shard} into it and {table}/{child}"))
                };
                let r = tokio::time::timeout(Duration::from_secs(10), split)
                    .await
                    .unwrap_or_else(|_| Err("split not answered within 10 s".into()));
                client.close().await;
                r
            }
            FaultKind::Merge => {
                let via = self.asker(active, pick)?;
                let client = self.cluster.client(via).await?;
                let merge = async {
                    let (_, mut t) = client.describe(table).await.map_err(|e| e.to_string())?;
                    let mut did = String::new();
                    if t.shards.len() == 1 {
                        let (_, child) = client
                            .split_shard(table, 0, None)
                            .await
                            .map_err(|e| format!("split of {table}/0: {e}"))?;
                        did = format!("split {table}/0 into it and {table}/{child}, then ");
                        t = client.describe(table).await.map_err(|e| e.to_string())?.1;
                    }
                    let newest = t.shards.last().ok_or("no shards")?;
                    let keep = t
                        .shards
                        .iter()
                        .find(|s| {
                            s.index != newest.index
                                && tstore_client::cluster_map::merged(&s.range, &newest.range)
                                    .is_some()
                        })
                        .ok_or_else(|| format!("{table}/{} has no neighbour", newest.index))?;
                    client
                        .merge_shards(table, keep.index, newest.index, Duration::from_secs(25))
                        .await
                        .map_err(|e| format!("merge of {table}/{}: {e}", newest.index))?;
                    Ok::<_, String>(format!(
                        "{did}merged {table}/{} into {table}/{}",
                        newest.index, keep.index
                    ))
                };
                let r = tokio::time::timeout(Duration::from_secs(40), merge)
                    .await
                    .unwrap_or_else(|_| Err("merge not done within 40 s".into()));
                client.close().await;
                r
            }
            FaultKind::RollingRestart => {
                let mut done = Vec::new();
                let start = (pick % 3) as usize;
                for i in 0..self.ids.len() {
                    let id = self.ids[(start + i) % self.ids.len()];
                    self.restart(id, table).await;
                    done.push(id);
                }
                Ok(format!("rolling restart of {}", done.join(", ")))
            }
        }
    }

    /// SIGTERM, start again, and wait (bounded) until the node is live and
    /// every shard of `table` has its copies again.
    async fn restart(&mut self, id: &'static str, table: &str) {
        if self.cluster.is_running(id) {
            self.cluster.signal(id, Signal::SIGTERM);
            let _ = self.cluster.wait_exit(id, Duration::from_secs(20));
        }
        let others = self.others(id);
        self.cluster.start_with(id, &others, &flags(&self.config));
        let via = others[0];
        let replicas = self.config.replicas as usize;
        let _ = self
            .cluster
            .poll(&format!("{id} back"), Duration::from_secs(45), || async {
                let m = self.cluster.members(via).await?;
                if crate::status_of(&m, id) != Some(NodeStatus::Live) {
                    return Ok(None);
                }
                let client = self.cluster.client(via).await?;
                let t = client.describe(table).await.map_err(|e| e.to_string());
                client.close().await;
                let (_, t) = t?;
                Ok(t.shards
                    .iter()
                    .all(|s| {
                        s.replicas.members().count() == replicas && s.replicas.learners.is_empty()
                    })
                    .then_some(()))
            })
            .await;
    }

    /// Ends every fault in force: partitions removed, paused nodes
    /// continued, killed nodes started again.
    fn heal(&mut self, active: &mut Active) -> Vec<String> {
        let mut done = Vec::new();
        if !active.partitions.is_empty() {
            active.partitions.clear();
            done.push("partitions removed".to_owned());
        }
        for id in active.paused.drain(..) {
            if self.cluster.is_running(&id) {
                self.cluster.signal(&id, Signal::SIGCONT);
                done.push(format!("SIGCONT {id}"));
            }
        }
        for id in std::mem::take(&mut active.killed) {
            if !self.cluster.is_running(&id) {
                let others = self.others(&id);
                let flags = flags(&self.config);
                self.cluster.start_with(&id, &others, &flags);
                done.push(format!("restarted {id}"));
            }
        }
        done
    }

    /// Creates `name`, retrying while the cluster settles, and waits until
    /// every copy serves.
    async fn create_table(&self, name: &str) -> Result<Table, String> {
        let spec = TableSpec {
            name: name.into(),
            key: "id".into(),
            sharding: Sharding::Hash {
                shards: self.config.shards,
            },
            replicas: self.config.replicas,
            min_copies: 0,
        };
        let via = self.ids[0];
        let (t, _) = self
            .cluster
            .poll(
                &format!("create table {name}"),
                Duration::from_secs(60),
                || {
                    let spec = spec.clone();
                    async move {
                        let client = self.cluster.client(via).await?;
                        let r =
                            tokio::time::timeout(ASK_TIMEOUT * 3, client.create_table(spec)).await;
                        client.close().await;
                        match r {
                            Ok(Ok((_, t))) => Ok(Some(t)),
                            // It may exist from an attempt that timed out.
                            _ => {
                                let client = self.cluster.client(via).await?;
                                let d = client.describe(name).await;
                                client.close().await;
                                Ok(d.ok().map(|(_, t)| t))
                            }
                        }
                    }
                },
            )
            .await?;
        match self.settle(name, Duration::from_secs(60)).await {
            Ok(_) => Ok(t),
            Err(Settle::Differ(d)) | Err(Settle::NotHealed(d)) => Err(d),
        }
    }

    /// Waits until every shard of `table` is at full strength with every
    /// copy serving at one log position, and compares their checksums (the
    /// `describe --verify` check). Copies at one position with different
    /// checksums, seen twice in a row, are a violation.
    async fn settle(&self, table: &str, limit: Duration) -> Result<Duration, Settle> {
        let started = Instant::now();
        let replicas = self.config.replicas as usize;
        let mut last = String::from("no answer");
        let mut differ_seen: Option<String> = None;
        for _ in 0..10_000 {
            if started.elapsed() > limit {
                break;
            }
            let ask = async {
                let via = self.ids[0];
                let client = self.cluster.client(via).await?;
                let res = async {
                    let (_, t) = client.describe(table).await.map_err(|e| e.to_string())?;
                    let copies = client
                        .copies(table, true)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((t, copies))
                }
                .await;
                client.close().await;
                res
            };
            let (t, copies) = match tokio::time::timeout(ASK_TIMEOUT * 3, ask).await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(_) => {
                    last = "no answer in 9 s".into();
                    continue;
                }
            };
            let mut waiting = None;
            let mut differ = None;
            for s in &t.shards {
                let r = &s.replicas;
                if r.members().count() != replicas || !r.learners.is_empty() {
                    waiting = Some(format!("{table}/{}: {r:?}", s.index));
                    break;
                }
                let mut sums = Vec::new();
                for m in r.members() {
                    match copies
                        .iter()
                        .find(|c| c.shard == s.index && c.node == *m)
                        .map(|c| c.status.as_ref())
                    {
                        Some(Ok(st)) if st.state == "serving" && st.checksum.is_some() => {
                            sums.push((m.clone(), st.applied, st.checksum))
                        }
                        Some(Ok(st)) => {
                            waiting = Some(format!("{table}/{} on {m}: {}", s.index, st.state))
                        }
                        Some(Err(e)) => waiting = Some(format!("{table}/{} on {m}: {e}", s.index)),
                        None => waiting = Some(format!("{table}/{} on {m}: no report", s.index)),
                    }
                }
                if waiting.is_some() {
                    break;
                }
                if sums.iter().any(|x| x.1 != sums[0].1) {
                    waiting = Some(format!("{table}/{}: catching up {sums:?}", s.index));
                    break;
                }
                if sums.iter().any(|x| x.2 != sums[0].2) {
                    differ = Some(format!("{table}/{}: {sums:?}", s.index));
                }
            }
            if let Some(w) = waiting {
                last = w;
                differ_seen = None;
            } else if let Some(d) = differ {
                if differ_seen.is_some() {
                    return Err(Settle::Differ(d));
                }
                differ_seen = Some(d);
            } else {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Settle::NotHealed(format!(
            "{table} not at full strength with copies at one position within {limit:?}; last: {last}\n{}",
            self.cluster.logs()
        )))
    }

    /// The sizes of the node logs now, to keep a round's part of them.
    fn log_offsets(&self) -> BTreeMap<&'static str, u64> {
        self.ids
            .iter()
            .map(|id| {
                let len = std::fs::metadata(self.cluster.log_path(id)).map_or(0, |m| m.len());
                (*id, len)
            })
            .collect()
    }

    /// Runs one round.
    pub async fn round(&mut self, round: usize, plan: &Plan) -> RoundReport {
        let seed = plan.seed;
        let table = format!("nem{round}");
        let offsets = self.log_offsets();
        let mut report = RoundReport {
            round,
            seed,
            faults: plan.faults.clone(),
            duration: self.config.duration,
            timeline: Vec::new(),
            injected: BTreeMap::new(),
            counts: Counts::default(),
            check: Check::default(),
            copies_differ: None,
            not_healed: None,
            not_injected: Vec::new(),
            kept: None,
        };
        // Nodes a previous round left stopped.
        let mut active = Active::default();
        for id in self.ids.clone() {
            if !self.cluster.is_running(id) {
                active.killed.push(id.to_owned());
            }
        }
        self.heal(&mut active);
        let t = match self.create_table(&table).await {
            Ok(t) => t,
            Err(e) => {
                report.not_healed = Some(format!("could not create {table}: {e}"));
                report.kept = self.keep(&report, &[], &offsets);
                return report;
            }
        };
        let (keys, pairs) = hot_keys(&t, 2);
        let steps = schedule(seed, &plan.faults, self.config.duration);
        let clock = Clock::start();
        let began = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let workload = Workload {
            table: table.clone(),
            keys: keys.clone(),
            pairs,
            clients: self.config.clients,
            // Bounded; the clients are stopped when the schedule is done.
            duration: self.config.duration + Duration::from_secs(120),
            max_ops: 200_000,
            op_timeout: OP_TIMEOUT,
            think: Duration::from_millis(4),
            seed,
        };
        let clients = tokio::spawn(history::run_clients(
            self.addrs(),
            self.cluster.certs().path().to_path_buf(),
            workload,
            clock,
            stop.clone(),
        ));
        let stamp = |began: Instant| format!("+{:.1}s", began.elapsed().as_secs_f64());
        for step in &steps {
            if let Some(wait) = step.at.checked_sub(began.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            match self.inject(step, &table, &mut active).await {
                Ok(what) => {
                    *report.injected.entry(step.kind).or_default() += 1;
                    let line = format!("{} {}: {what}", stamp(began), step.kind);
                    eprintln!("[round {round} seed {seed}] {line}");
                    report.timeline.push(line);
                }
                Err(e) => {
                    let line = format!("{} {}: not injected: {e}", stamp(began), step.kind);
                    eprintln!("[round {round} seed {seed}] {line}");
                    report.timeline.push(line);
                    report.not_injected.push(format!("{}: {e}", step.kind));
                }
            }
            tokio::time::sleep(step.hold).await;
            let healed = self.heal(&mut active);
            if !healed.is_empty() {
                let line = format!("{} healed: {}", stamp(began), healed.join(", "));
                eprintln!("[round {round} seed {seed}] {line}");
                report.timeline.push(line);
            }
        }
        // Load on the healed cluster until the round's time is up, and at
        // least two seconds.
        let rest = self
            .config
            .duration
            .saturating_sub(began.elapsed())
            .max(Duration::from_secs(2));
        tokio::time::sleep(rest).await;
        stop.store(true, Ordering::SeqCst);
        let mut ops = clients.await.unwrap_or_default();
        report
            .timeline
            .push(format!("{} clients stopped", stamp(began)));
        match self.settle(&table, self.config.heal_limit).await {
            Ok(took) => report.timeline.push(format!(
                "{} healthy and identical after {took:?}",
                stamp(began)
            )),
            Err(Settle::Differ(d)) => report.copies_differ = Some(d),
            Err(Settle::NotHealed(e)) => report.not_healed = Some(e),
        }
        let (finals, missing) = history::final_reads(
            &self.addrs(),
            self.cluster.certs().path(),
            &table,
            &keys,
            clock,
            self.config.clients,
            Duration::from_secs(30),
        )
        .await;
        if !missing.is_empty() && report.not_healed.is_none() {
            report.not_healed = Some(format!("keys {missing:?} could not be read at the end"));
        }
        ops.extend(finals);
        let history = history::assemble(vec![ops]);
        report.counts = Counts::of(&history);
        let limits = self.config.limits;
        report.check = tokio::task::spawn_blocking({
            let history = history.clone();
            move || linearizability::check(&history, limits)
        })
        .await
        .unwrap_or_default();
        if report.verdict() != RoundVerdict::Pass {
            report.kept = self.keep(&report, &history, &offsets);
        }
        // Keep the cluster light for the next round.
        if let Ok(client) = self.cluster.client(self.ids[0]).await {
            let _ = tokio::time::timeout(ASK_TIMEOUT * 3, client.drop_table(&table)).await;
            client.close().await;
        }
        report
    }

    /// Keeps a failed round: its history, report and node logs.
    fn keep(
        &self,
        report: &RoundReport,
        history: &[Op],
        offsets: &BTreeMap<&'static str, u64>,
    ) -> Option<PathBuf> {
        let dir = self
            .config
            .keep_dir
            .join(format!("round-{}-seed-{}", report.round, report.seed));
        let res = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            history::write_jsonl(&dir.join("history.jsonl"), history)?;
            let recheck = format!(
                "replay: {}\nrecheck: TSTORE_NEMESIS_HISTORY={} cargo test -p tstore-tests --test nemesis nemesis_recheck -- --ignored --nocapture\n",
                report.replay(),
                dir.join("history.jsonl").display()
            );
            std::fs::write(dir.join("report.txt"), report.full() + &recheck)?;
            for (id, from) in offsets {
                let mut f = match std::fs::File::open(self.cluster.log_path(id)) {
                    Ok(f) => f,
                    Err(_) => continue,
                };
                f.seek(std::io::SeekFrom::Start(*from))?;
                let mut text = Vec::new();
                f.read_to_end(&mut text)?;
                std::fs::write(dir.join(format!("{id}.log")), text)?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => Some(dir),
            Err(e) => {
                eprintln!(
                    "could not keep round {} in {}: {e}",
                    report.round,
                    dir.display()
                );
                None
            }
        }
    }
}

/// Why a cluster did not settle.
enum Settle {
    Differ(String),
    NotHealed(String),
}

/// `per_shard` keys of every shard of `t` (the smallest positive integers
/// that land there), and pairs of keys that share a shard.
pub fn hot_keys(t: &Table, per_shard: usize) -> (Vec<i64>, Vec<(i64, i64)>) {
    let mut by_shard: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    let shards = t.shards.len();
    for k in 1..100_000i64 {
        let s = t.shard_of(&RowKey::Int(k));
        let e = by_shard.entry(s).or_default();
        if e.len() < per_shard {
            e.push(k);
        }
        if by_shard.len() == shards && by_shard.values().all(|v| v.len() == per_shard) {
            break;
        }
    }
    let keys = by_shard.values().flatten().copied().collect();
    let pairs = by_shard
        .values()
        .filter(|v| v.len() >= 2)
        .map(|v| (v[0], v[1]))
        .collect();
    (keys, pairs)
}

/// Runs `plans` one after another on one cluster (a fresh one after a
/// round it did not heal from), printing each round as it ends.
pub async fn run(config: RunConfig, plans: &[Plan]) -> Vec<RoundReport> {
    let mut nemesis = Nemesis::start(config).await;
    let mut reports = Vec::new();
    for (round, plan) in plans.iter().enumerate() {
        let report = nemesis.round(round, plan).await;
        eprintln!("{}", report.line());
        if report.verdict() == RoundVerdict::NotHealed {
            nemesis.restart_cluster().await;
        }
        reports.push(report);
    }
    reports
}

/// Where failed rounds are kept: `TSTORE_NEMESIS_KEEP`, else `default`.
pub fn keep_dir(default: &Path) -> PathBuf {
    std::env::var_os("TSTORE_NEMESIS_KEEP").map_or_else(|| default.to_path_buf(), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_a_function_of_its_seed() {
        let d = Duration::from_secs(60);
        let a = schedule(42, &FaultKind::ALL, d);
        assert_eq!(a, schedule(42, &FaultKind::ALL, d));
        assert_ne!(a, schedule(43, &FaultKind::ALL, d));
        for s in &a {
            assert!(s.at < d, "{s:?}");
            assert!((0.1..=0.3).contains(&s.loss));
        }
        // Pauses outlast the lease and its grace.
        let p = schedule(1, &[FaultKind::Pause], d);
        assert!(p.len() >= 3 && p.iter().all(|s| s.hold >= Duration::from_secs(3)));
        // A short round still gets one fault.
        assert_eq!(
            schedule(5, &[FaultKind::RollingRestart], Duration::from_secs(5)).len(),
            1
        );
    }

    #[test]
    fn seeds_give_alone_and_combined_schedules() {
        let d = Duration::from_secs(120);
        let mixed = (0..40)
            .filter(|&seed| {
                let kinds: std::collections::BTreeSet<FaultKind> =
                    schedule(seed, &FaultKind::ALL, d)
                        .iter()
                        .map(|s| s.kind)
                        .collect();
                kinds.len() > 1
            })
            .count();
        assert!((5..35).contains(&mixed), "{mixed} of 40 combined");
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(
            FaultKind::parse_list("all").unwrap(),
            FaultKind::ALL.to_vec()
        );
        assert_eq!(
            FaultKind::parse_list("kill, loss").unwrap(),
            vec![FaultKind::Kill, FaultKind::Loss]
        );
        assert!(FaultKind::parse_list("kill,nope").is_err());
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()), Ok(k));
        }
        assert_eq!(FaultKind::list_name(&FaultKind::ALL), "all");
    }
}
