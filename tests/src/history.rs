//! Histories of operations for the linearizability checker
//! ([`crate::linearizability`]): concurrent clients of the routing client
//! (`tstore_client::routing::Client`, the one the CLI uses) read and
//! write a few hot keys of one table, and record every operation's
//! invocation time, completion time and outcome.
//!
//! Rows are `{"id": KEY, "v": VALUE}` where every write writes a value no
//! other write of the history uses (`"<client>.<n>"`), so a value read
//! names the one write that produced it. The operations: strong reads,
//! puts, inserts, updates (unconditional, or a compare-and-set with
//! `if_version` = a version the client saw before), deletes (unconditional
//! or conditional) and batches within one shard (two keys of one shard, or
//! one key written twice: a put then an update, whose first value must
//! never be visible). A batch is recorded as one write on each key it
//! touches, sharing a batch number.
//!
//! Outcomes, as the brief of the suite fixes them:
//! - ok, with the value and version read, or the version written;
//! - failed (definitely not applied): `Conflict`, `Unavailable`, `Stale`,
//!   `Invalid`, `TooLarge`, `BadKey`, `NoTable`. A `Conflict` of a
//!   single-key write says its condition did not hold on that key (it
//!   constrains the key's state); a refused batch does not say which key;
//! - unknown (maybe applied): an `Unknown` error, a transport error, any
//!   other error, or no answer within the client's own timeout.
//!
//! A read that fails is not recorded: it constrains nothing. Every client
//! loop is bounded in operations and time.

use std::collections::HashMap;
use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tstore_client::admin::ClientError;
use tstore_client::cluster_map::RowKey;
use tstore_client::data::{BatchOp, ErrorKind, OpResult};
use tstore_client::routing::{Client, Consistency};

/// A small seeded PRNG (SplitMix64): client choices and nemesis schedules
/// are functions of a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What an operation asked for, on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "f")]
pub enum Call {
    /// A strong read.
    Read,
    /// Create or replace the row with `value`.
    Put { value: String },
    /// Create the row with `value`; refused if it exists.
    Insert { value: String },
    /// Set the row's value; refused if the row is missing or, with
    /// `if_version`, not at that version.
    Update {
        value: String,
        if_version: Option<u64>,
    },
    /// Delete the row; refused if it is missing or, with `if_version`, not
    /// at that version.
    Delete { if_version: Option<u64> },
}

impl Call {
    /// The value the call writes, if it writes one.
    pub fn value(&self) -> Option<&str> {
        match self {
            Call::Put { value } | Call::Insert { value } | Call::Update { value, .. } => {
                Some(value)
            }
            Call::Read | Call::Delete { .. } => None,
        }
    }

    pub fn is_read(&self) -> bool {
        matches!(self, Call::Read)
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// A read: the row's value and version (both `None` when absent). A
    /// write: the version it wrote (`None` for a delete).
    Ok {
        value: Option<String>,
        version: Option<u64>,
    },
    /// Refused: not applied. `conflict`: refused because its condition on
    /// this key did not hold (a single-key write answered `Conflict`).
    Failed {
        kind: String,
        conflict: bool,
        error: String,
    },
    /// Maybe applied, maybe not.
    Unknown { error: String },
}

/// One operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Its place in the history (ordered by invocation).
    pub id: usize,
    /// The client that ran it; operations of one client never overlap.
    pub client: usize,
    pub key: i64,
    pub call: Call,
    /// Nanoseconds since the history's start.
    pub invoke_ns: u64,
    /// When the client got its answer or gave up.
    pub complete_ns: u64,
    pub outcome: Outcome,
    /// The batch it belonged to (the same number on every key of a batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// Values a batch wrote to this key and replaced within itself: never
    /// visible to anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<String>,
}

impl Op {
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self.outcome, Outcome::Unknown { .. })
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let call = match &self.call {
            Call::Read => "read".to_owned(),
            Call::Put { value } => format!("put {value}"),
            Call::Insert { value } => format!("insert {value}"),
            Call::Update {
                value,
                if_version: None,
            } => format!("update {value}"),
            Call::Update {
                value,
                if_version: Some(v),
            } => format!("update {value} if version {v}"),
            Call::Delete { if_version: None } => "delete".to_owned(),
            Call::Delete {
                if_version: Some(v),
            } => format!("delete if version {v}"),
        };
        let outcome = match &self.outcome {
            Outcome::Ok { value, version } => match (self.call.is_read(), value, version) {
                (true, Some(v), Some(ver)) => format!("ok {v}@{ver}"),
                (true, _, _) => "ok absent".to_owned(),
                (false, _, Some(ver)) => format!("ok @{ver}"),
                (false, _, None) => "ok".to_owned(),
            },
            Outcome::Failed { kind, error, .. } => format!("failed {kind}: {error}"),
            Outcome::Unknown { error } => format!("unknown: {error}"),
        };
        let batch = self
            .batch
            .map(|b| format!(" (batch {b:x})"))
            .unwrap_or_default();
        write!(
            f,
            "#{} c{} key {} [{:.3}s..{:.3}s] {call}{batch} -> {outcome}",
            self.id,
            self.client,
            self.key,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9,
        )
    }
}

/// The clock of one history: nanoseconds since it started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// The outcome of a write that returned `e`.
pub fn classify_write_error(e: &ClientError, single_key: bool) -> Outcome {
    let error = e.to_string();
    match e {
        ClientError::Data(d) => {
            let kind = match d.kind {
                ErrorKind::Conflict => "conflict",
                ErrorKind::Unavailable => "unavailable",
                ErrorKind::Stale => "stale",
                ErrorKind::Invalid => "invalid",
                ErrorKind::TooLarge => "too-large",
                ErrorKind::BadKey => "bad-key",
                ErrorKind::NoTable => "no-table",
                // `Unknown`, and any kind added later: maybe applied.
                _ => return Outcome::Unknown { error },
            };
            Outcome::Failed {
                kind: kind.to_owned(),
                conflict: single_key && d.kind == ErrorKind::Conflict,
                error,
            }
        }
        // A transport failure after sending, a server error, an
        // unexpected answer: maybe applied.
        _ => Outcome::Unknown { error },
    }
}

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    pub table: String,
    /// The hot keys.
    pub keys: Vec<i64>,
    /// Pairs of hot keys in one shard, for two-key batches.
    pub pairs: Vec<(i64, i64)>,
    pub clients: usize,
    /// Clients start no operation after this long.
    pub duration: Duration,
    /// Most operations per client.
    pub max_ops: usize,
    /// An operation not answered within this long is given up (a write
    /// then counts as unknown, a read is dropped).
    pub op_timeout: Duration,
    /// Most pause between two operations of a client (a random share of it).
    pub think: Duration,
    /// Seeds the clients' choices.
    pub seed: u64,
}

fn row(key: i64, value: &str) -> String {
    serde_json::json!({ "id": key, "v": value }).to_string()
}

fn patch(value: &str) -> String {
    serde_json::json!({ "v": value }).to_string()
}

/// The value a row read back holds: its `v` column, or the whole row
/// marked as foreign if it has none (no write of a history writes that).
pub fn value_of(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("v").and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("!row {json}"))
}

/// Connects a routing client, retrying for up to `limit`.
pub async fn connect(seeds: &[SocketAddr], certs: &Path, limit: Duration) -> Option<Client> {
    let began = Instant::now();
    for _ in 0..1000 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            Client::connect(seeds, certs, "admin"),
        )
        .await
        {
            Ok(Ok(c)) => return Some(c),
            _ if began.elapsed() > limit => return None,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    None
}

/// One client's recorder.
struct Recorder {
    client: usize,
    clock: Clock,
    timeout: Duration,
    ops: Vec<Op>,
    batches: u64,
}

/// A write in flight: when it was invoked.
struct Started(u64);

impl Recorder {
    fn start(&self) -> Started {
        Started(self.clock.now_ns())
    }

    fn push(&mut self, started: Started, key: i64, call: Call, outcome: Outcome) {
        self.push_full(started.0, key, call, outcome, None, Vec::new());
    }

    fn push_full(
        &mut self,
        invoke_ns: u64,
        key: i64,
        call: Call,
        outcome: Outcome,
        batch: Option<u64>,
        shadowed: Vec<String>,
    ) {
        self.ops.push(Op {
            id: 0,
            client: self.client,
            key,
            call,
            invoke_ns,
            complete_ns: self.clock.now_ns(),
            outcome,
            batch,
            shadowed,
        });
    }

    /// Runs a write, bounded by the client's timeout.
    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Outcome> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify_write_error(&e, true)),
            Err(_) => Err(Outcome::Unknown {
                error: format!("no answer within {:?}", self.timeout),
            }),
        }
    }
}

/// A strong read of `key`, recorded if it succeeds; returns the version
/// read (`Some(None)` for an absent row).
async fn read(rec: &mut Recorder, client: &Client, table: &str, key: i64) -> Option<Option<u64>> {
    let started = rec.start();
    let r = tokio::time::timeout(
        rec.timeout,
        client.get(table, RowKey::Int(key), Consistency::Strong),
    )
    .await;
    match r {
        Ok(Ok(row)) => {
            let version = row.as_ref().map(|r| r.version);
            let value = row.as_ref().map(|r| value_of(&r.json));
            rec.push(started, key, Call::Read, Outcome::Ok { value, version });
            Some(version)
        }
        // A failed read constrains nothing.
        _ => None,
    }
}

/// The version a write result carries.
fn result_version(r: &OpResult) -> Option<u64> {
    match r {
        OpResult::Written { version } => Some(*version),
        OpResult::Deleted { .. } | OpResult::Batch(_) => None,
    }
}

async fn client_loop(
    id: usize,
    seeds: Vec<SocketAddr>,
    certs: PathBuf,
    w: Arc<Workload>,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> Vec<Op> {
    let mut rec = Recorder {
        client: id,
        clock,
        timeout: w.op_timeout,
        ops: Vec::new(),
        batches: 0,
    };
    let began = Instant::now();
    let Some(client) = connect(&seeds, &certs, Duration::from_secs(30)).await else {
        return rec.ops;
    };
    let mut rng = Rng::new(w.seed ^ ((id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)));
    // The version this client last saw per key, for compare-and-set.
    let mut seen: HashMap<i64, u64> = HashMap::new();
    let mut n = 0u64;
    let table = w.table.as_str();
    let mut fresh = |n: &mut u64| {
        *n += 1;
        format!("{id}.{n}")
    };
    for _ in 0..w.max_ops {
        if began.elapsed() >= w.duration || stop.load(Ordering::SeqCst) {
            break;
        }
        let key = w.keys[rng.below(w.keys.len() as u64) as usize];
        let dice = rng.below(100);
        match dice {
            // Strong read.
            0..=34 => {
                if let Some(v) = read(&mut rec, &client, table, key).await {
                    match v {
                        Some(v) => seen.insert(key, v),
                        None => seen.remove(&key),
                    };
                }
            }
            // Put.
            35..=54 => {
                let value = fresh(&mut n);
                let s = rec.start();
                let r = rec.timed(client.put(table, &row(key, &value))).await;
                let outcome = match r {
                    Ok(v) => {
                        seen.insert(key, v);
                        Outcome::Ok {
                            value: None,
                            version: Some(v),
                        }
                    }
                    Err(o) => o,
                };
                rec.push(s, key, Call::Put { value }, outcome);
            }
            // Compare-and-set on the version seen last, else a read first.
            55..=69 => {
                let Some(&expected) = seen.get(&key) else {
                    if let Some(Some(v)) = read(&mut rec, &client, table, key).await {
                        seen.insert(key, v);
                    }
                    continue;
                };
                let value = fresh(&mut n);
                let s = rec.start();
                let r = rec
                    .timed(client.update(table, RowKey::Int(key), &patch(&value), Some(expected)))
                    .await;
                let outcome = match r {
                    Ok(v) => {
                        seen.insert(key, v);
                        Outcome::Ok {
                            value: None,
                            version: Some(v),
                        }
                    }
                    Err(o) => {
                        seen.remove(&key);
                        o
                    }
                };
                let call = Call::Update {
                    value,
                    if_version: Some(expected),
                };
                rec.push(s, key, call, outcome);
            }
            // Unconditional update.
            70..=74 => {
                let value = fresh(&mut n);
                let s = rec.start();
                let r = rec
                    .timed(client.update(table, RowKey::Int(key), &patch(&value), None))
                    .await;
                let outcome = match r {
                    Ok(v) => Outcome::Ok {
                        value: None,
                        version: Some(v),
                    },
                    Err(o) => o,
                };
                let call = Call::Update {
                    value,
                    if_version: None,
                };
                rec.push(s, key, call, outcome);
            }
            // Insert.
            75..=79 => {
                let value = fresh(&mut n);
                let s = rec.start();
                let r = rec.timed(client.insert(table, &row(key, &value))).await;
                let outcome = match r {
                    Ok(v) => Outcome::Ok {
                        value: None,
                        version: Some(v),
                    },
                    Err(o) => o,
                };
                rec.push(s, key, Call::Insert { value }, outcome);
            }
            // Delete, conditional on the version seen last in some cases.
            80..=89 => {
                let if_version = if dice >= 87 {
                    seen.get(&key).copied()
                } else {
                    None
                };
                let s = rec.start();
                let r = rec
                    .timed(client.delete(table, RowKey::Int(key), if_version))
                    .await;
                let outcome = match r {
                    Ok(()) => Outcome::Ok {
                        value: None,
                        version: None,
                    },
                    Err(o) => o,
                };
                seen.remove(&key);
                rec.push(s, key, Call::Delete { if_version }, outcome);
            }
            // A batch within one shard.
            _ => {
                batch(
                    &mut rec, &client, &w, &mut rng, &mut seen, key, &mut fresh, &mut n,
                )
                .await;
            }
        }
        if !w.think.is_zero() {
            let ms = rng.below(w.think.as_millis() as u64 + 1);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    client.close().await;
    rec.ops
}

/// One batch: two keys of one shard (put + put, put + compare-and-set, or
/// put + delete), or one key written twice (put, then update).
#[allow(clippy::too_many_arguments)]
async fn batch(
    rec: &mut Recorder,
    client: &Client,
    w: &Workload,
    rng: &mut Rng,
    seen: &mut HashMap<i64, u64>,
    key: i64,
    fresh: &mut impl FnMut(&mut u64) -> String,
    n: &mut u64,
) {
    rec.batches += 1;
    let number = ((rec.client as u64) << 32) | rec.batches;
    let table = w.table.as_str();
    if w.pairs.is_empty() || rng.chance(40) {
        // One key: a put whose value is at once replaced by an update.
        let (first, second) = (fresh(n), fresh(n));
        let ops = vec![
            BatchOp::Put {
                row: row(key, &first),
            },
            BatchOp::Update {
                key: RowKey::Int(key),
                patch: patch(&second),
                if_version: None,
            },
        ];
        let s = rec.start();
        let r = rec.timed(client.batch(table, ops)).await;
        let outcome = match r {
            Ok(results) => {
                let version = results.get(1).and_then(result_version);
                if let Some(v) = version {
                    seen.insert(key, v);
                }
                Outcome::Ok {
                    value: None,
                    version,
                }
            }
            Err(o) => o,
        };
        let call = Call::Put { value: second };
        rec.push_full(s.0, key, call, outcome, Some(number), vec![first]);
        return;
    }
    let (a, b) = w.pairs[rng.below(w.pairs.len() as u64) as usize];
    let (a, b) = if rng.chance(50) { (a, b) } else { (b, a) };
    let va = fresh(n);
    let mut ops = vec![BatchOp::Put { row: row(a, &va) }];
    let mut calls = vec![(a, Call::Put { value: va })];
    match (rng.below(3), seen.get(&b).copied()) {
        (0, Some(expected)) => {
            let vb = fresh(n);
            ops.push(BatchOp::Update {
                key: RowKey::Int(b),
                patch: patch(&vb),
                if_version: Some(expected),
            });
            calls.push((
                b,
                Call::Update {
                    value: vb,
                    if_version: Some(expected),
                },
            ));
        }
        (1, _) => {
            ops.push(BatchOp::Delete {
                key: RowKey::Int(b),
                if_version: None,
            });
            calls.push((b, Call::Delete { if_version: None }));
        }
        _ => {
            let vb = fresh(n);
            ops.push(BatchOp::Put { row: row(b, &vb) });
            calls.push((b, Call::Put { value: vb }));
        }
    }
    let s = rec.start();
    let r = match tokio::time::timeout(rec.timeout, client.batch(table, ops)).await {
        Ok(Ok(results)) => Ok(results),
        // A refused batch does not say which key's condition failed.
        Ok(Err(e)) => Err(classify_write_error(&e, false)),
        Err(_) => Err(Outcome::Unknown {
            error: format!("no answer within {:?}", rec.timeout),
        }),
    };
    for (i, (k, call)) in calls.into_iter().enumerate() {
        let outcome = match &r {
            Ok(results) => {
                let version = results.get(i).and_then(result_version);
                match version {
                    Some(v) => seen.insert(k, v),
                    None => seen.remove(&k),
                };
                Outcome::Ok {
                    value: None,
                    version,
                }
            }
            Err(o) => {
                seen.remove(&k);
                o.clone()
            }
        };
        rec.push_full(s.0, k, call, outcome, Some(number), Vec::new());
    }
}

/// Runs the workload's clients against the nodes at `seeds` until its
/// duration is over (or `stop` is set) and returns what they did, in
/// invocation order, numbered.
pub async fn run_clients(
    seeds: Vec<SocketAddr>,
    certs: PathBuf,
    w: Workload,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> Vec<Op> {
    let w = Arc::new(w);
    let tasks: Vec<_> = (0..w.clients)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                seeds.clone(),
                certs.clone(),
                w.clone(),
                clock,
                stop.clone(),
            ))
        })
        .collect();
    let mut parts = Vec::new();
    for t in tasks {
        if let Ok(ops) = t.await {
            parts.push(ops);
        }
    }
    assemble(parts)
}

/// A last strong read of every key (by client `client`), retried for up to
/// `limit` each: the reads that make a lost write visible. Returns the
/// reads and the keys that could not be read.
pub async fn final_reads(
    seeds: &[SocketAddr],
    certs: &Path,
    table: &str,
    keys: &[i64],
    clock: Clock,
    client: usize,
    limit: Duration,
) -> (Vec<Op>, Vec<i64>) {
    let mut rec = Recorder {
        client,
        clock,
        timeout: Duration::from_secs(15),
        ops: Vec::new(),
        batches: 0,
    };
    let Some(c) = connect(seeds, certs, limit).await else {
        return (Vec::new(), keys.to_vec());
    };
    let mut missing = Vec::new();
    for &key in keys {
        let began = Instant::now();
        let mut done = false;
        for _ in 0..100 {
            if read(&mut rec, &c, table, key).await.is_some() {
                done = true;
                break;
            }
            if began.elapsed() > limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if !done {
            missing.push(key);
        }
    }
    c.close().await;
    (rec.ops, missing)
}

/// Merges per-client records into one history ordered by invocation, with
/// ids that are places in it.
pub fn assemble(parts: Vec<Vec<Op>>) -> Vec<Op> {
    let mut all: Vec<Op> = parts.into_iter().flatten().collect();
    all.sort_by_key(|o| (o.invoke_ns, o.client, o.key));
    for (i, o) in all.iter_mut().enumerate() {
        o.id = i;
    }
    all
}

/// Counts of a history's operations.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub reads: usize,
    pub writes_ok: usize,
    /// Refused writes (of which `conflicts` for a condition on their key).
    pub writes_failed: usize,
    pub conflicts: usize,
    pub writes_unknown: usize,
}

impl Counts {
    pub fn of(ops: &[Op]) -> Self {
        let mut c = Counts::default();
        for o in ops {
            match (&o.call, &o.outcome) {
                (Call::Read, _) => c.reads += 1,
                (_, Outcome::Ok { .. }) => c.writes_ok += 1,
                (_, Outcome::Failed { conflict, .. }) => {
                    c.writes_failed += 1;
                    c.conflicts += usize::from(*conflict);
                }
                (_, Outcome::Unknown { .. }) => c.writes_unknown += 1,
            }
        }
        c
    }

    pub fn total(&self) -> usize {
        self.reads + self.writes_ok + self.writes_failed + self.writes_unknown
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} reads, {} writes ok, {} refused ({} on a condition), {} unknown",
            self.reads, self.writes_ok, self.writes_failed, self.conflicts, self.writes_unknown
        )
    }
}

/// Writes a history as JSON lines, one operation a line.
pub fn write_jsonl(path: &Path, ops: &[Op]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for o in ops {
        serde_json::to_writer(&mut f, o)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

/// Reads a history written by [`write_jsonl`].
pub fn read_jsonl(path: &Path) -> Result<Vec<Op>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ops = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?,
        );
    }
    Ok(ops)
}

/// Hand-made histories, for testing the checker: times in milliseconds,
/// every operation on the key set last by [`Sketch::key`] (1 at first).
#[derive(Debug)]
pub struct Sketch {
    ops: Vec<Op>,
    key: i64,
}

impl Default for Sketch {
    fn default() -> Self {
        Self::new()
    }
}

impl Sketch {
    pub fn new() -> Self {
        Sketch {
            ops: Vec::new(),
            key: 1,
        }
    }

    /// Operations added from now on are on `key`.
    pub fn key(mut self, key: i64) -> Self {
        self.key = key;
        self
    }

    /// An operation of `client` from `from_ms` to `to_ms`.
    pub fn op(
        mut self,
        client: usize,
        from_ms: u64,
        to_ms: u64,
        call: Call,
        outcome: Outcome,
    ) -> Self {
        self.ops.push(Op {
            id: 0,
            client,
            key: self.key,
            call,
            invoke_ns: from_ms * 1_000_000,
            complete_ns: to_ms * 1_000_000,
            outcome,
            batch: None,
            shadowed: Vec::new(),
        });
        self
    }

    /// A strong read that saw `seen` (value, version), or no row.
    pub fn read(self, client: usize, from_ms: u64, to_ms: u64, seen: Option<(&str, u64)>) -> Self {
        let outcome = Outcome::Ok {
            value: seen.map(|(v, _)| v.to_owned()),
            version: seen.map(|(_, ver)| ver),
        };
        self.op(client, from_ms, to_ms, Call::Read, outcome)
    }

    /// The history, numbered in invocation order.
    pub fn build(self) -> Vec<Op> {
        assemble(vec![self.ops])
    }
}

/// [`Call::Put`].
pub fn put(value: &str) -> Call {
    Call::Put {
        value: value.to_owned(),
    }
}

/// [`Call::Insert`].
pub fn insert(value: &str) -> Call {
    Call::Insert {
        value: value.to_owned(),
    }
}

/// An unconditional [`Call::Update`].
pub fn update(value: &str) -> Call {
    Call::Update {
        value: value.to_owned(),
        if_version: None,
    }
}

/// A compare-and-set: [`Call::Update`] at `if_version`.
pub fn cas(value: &str, if_version: u64) -> Call {
    Call::Update {
        value: value.to_owned(),
        if_version: Some(if_version),
    }
}

/// [`Call::Delete`], conditional when `if_version` is given.
pub fn delete(if_version: Option<u64>) -> Call {
    Call::Delete { if_version }
}

/// A write acknowledged at `version`.
pub fn ok(version: u64) -> Outcome {
    Outcome::Ok {
        value: None,
        version: Some(version),
    }
}

/// A delete acknowledged.
pub fn deleted() -> Outcome {
    Outcome::Ok {
        value: None,
        version: None,
    }
}

/// A single-key write refused because its condition did not hold.
pub fn conflict() -> Outcome {
    Outcome::Failed {
        kind: "conflict".into(),
        conflict: true,
        error: "condition failed".into(),
    }
}

/// A write refused for another reason (not applied, no condition checked).
pub fn refused() -> Outcome {
    Outcome::Failed {
        kind: "unavailable".into(),
        conflict: false,
        error: "unavailable".into(),
    }
}

/// A write whose outcome is unknown.
pub fn unknown() -> Outcome {
    Outcome::Unknown {
        error: "no answer".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_spread() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.below(1000)).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.below(1000)).collect()
        };
        assert_eq!(a, b);
        let mut r = Rng::new(8);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[r.below(4) as usize] += 1;
        }
        assert!(hits.iter().all(|h| (800..1200).contains(h)), "{hits:?}");
    }

    #[test]
    fn values_are_read_from_the_v_column() {
        assert_eq!(value_of(r#"{"id":1,"v":"3.4"}"#), "3.4");
        assert!(value_of(r#"{"id":1}"#).starts_with("!row"));
    }

    #[test]
    fn histories_round_trip_through_json_lines() {
        let ops = assemble(vec![vec![Op {
            id: 0,
            client: 1,
            key: 3,
            call: Call::Update {
                value: "1.2".into(),
                if_version: Some(9),
            },
            invoke_ns: 5,
            complete_ns: 9,
            outcome: Outcome::Unknown {
                error: "gone".into(),
            },
            batch: Some(4),
            shadowed: vec!["1.1".into()],
        }]]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        write_jsonl(&path, &ops).unwrap();
        assert_eq!(read_jsonl(&path).unwrap(), ops);
    }
}
