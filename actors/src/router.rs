//! Routing client reads and writes to the shard copy that must serve them.
//!
//! The contacted node finds the key's shard in its copy of the map, then
//! calls the primary (writes, strong reads) or the nearest copy (replica
//! reads: its own if it holds one), locally or over the peer protocol. A
//! scan asks every shard that can hold keys in the range and merges the rows
//! in key order.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::Addr;
use tstore_transport::{Endpoint, TransportError};

use crate::cluster_map::{ClusterMap, KeyRange, Sharding, SplitKey, Table};
use crate::control::ControlPlane;
use crate::data::ops::{check_row, Op, MAX_BATCH};
use crate::shard::actor::{CopyActor, GetStatus, Read, ReadMode, ScanShard, Write};
use crate::shard::ShardKey;
use crate::wire::{
    BatchOp, CopyReport, DataError, DataReply, DataRequest, ErrorKind, PeerMessage, PeerReply,
    ShardRequest,
};

/// Most rows one scan returns.
pub const MAX_SCAN: usize = 10_000;

/// How long the router keeps resending a request the shard refused without
/// applying it (no primary yet, a promoted primary waiting out the old
/// lease): a failover is ridden out inside one client request.
pub const RETRY_FOR: Duration = Duration::from_secs(8);
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a routed request waits for this node's map to reach the
/// client's epoch.
const MAP_CATCH_UP: Duration = Duration::from_secs(1);

/// The addresses of this node's shard copies, published by the NodeActor
/// whenever they change and read by every request being routed (from the
/// transport's tasks, not through the actor).
pub type LocalCopies = Arc<RwLock<Arc<BTreeMap<ShardKey, Addr<CopyActor>>>>>;

/// What routing one request needs.
pub struct Router {
    pub me: String,
    /// The committed map, read afresh at every attempt.
    pub control: ControlPlane,
    pub local: Arc<BTreeMap<ShardKey, Addr<CopyActor>>>,
    pub endpoint: Endpoint,
}

fn err(e: DataError) -> DataReply {
    DataReply::Error(e)
}

fn table_in<'a>(map: &'a ClusterMap, name: &str) -> Result<&'a Table, DataError> {
    map.tables
        .get(name)
        .ok_or_else(|| DataError::new(ErrorKind::NoTable, crate::admin::no_such_table(name, map)))
}

impl Router {
    /// Serves a client request.
    pub async fn route(&self, req: DataRequest) -> DataReply {
        match self.route_inner(req).await {
            Ok(reply) => reply,
            Err(e) => DataReply::Error(e),
        }
    }

    async fn route_inner(&self, req: DataRequest) -> Result<DataReply, DataError> {
        let map = self.control.map();
        match req {
            DataRequest::Put { table, row } => {
                let t = table_in(&map, &table)?;
                let (key, _) = check_row(&row, &t.spec.key).map_err(DataError::from)?;
                self.write(t.shard_of(&key), &table, Op::Put { key, row })
                    .await
            }
            DataRequest::Insert { table, row } => {
                let t = table_in(&map, &table)?;
                let (key, _) = check_row(&row, &t.spec.key).map_err(DataError::from)?;
                self.write(t.shard_of(&key), &table, Op::Insert { key, row })
                    .await
            }
            DataRequest::Update {
                table,
                key,
                patch,
                if_version,
            } => {
                let t = table_in(&map, &table)?;
                check_patch(&patch)?;
                let op = Op::Update {
                    key: key.clone(),
                    patch,
                    if_version,
                };
                self.write(t.shard_of(&key), &table, op).await
            }
            DataRequest::Delete {
                table,
                key,
                if_version,
            } => {
                let t = table_in(&map, &table)?;
                let op = Op::Delete {
                    key: key.clone(),
                    if_version,
                };
                self.write(t.shard_of(&key), &table, op).await
            }
            DataRequest::Batch { table, ops } => {
                let t = table_in(&map, &table)?;
                let (shard, op) = batch_op(t, ops)?;
                self.write(shard, &table, op).await
            }
            DataRequest::Routed { epoch, request } => self.routed(epoch, request).await,
            DataRequest::Get { table, key, mode } => {
                let shard = table_in(&map, &table)?.shard_of(&key);
                self.get(table, shard, key, mode).await
            }
            DataRequest::Scan {
                table,
                from,
                to,
                limit,
                mode,
            } => {
                let t = table_in(&map, &table)?;
                let limit = limit.min(MAX_SCAN);
                let mut rows = Vec::new();
                for s in &t.shards {
                    if !may_hold(&t.spec.sharding, &s.range, from.as_ref(), to.as_ref()) {
                        continue;
                    }
                    let (t2, f2, to2) = (table.clone(), from.clone(), to.clone());
                    let build = move |shard| ShardRequest::Scan {
                        table: t2.clone(),
                        shard,
                        from: f2.clone(),
                        to: to2.clone(),
                        limit,
                        mode,
                    };
                    match self.read(&table, s.index, mode, build).await? {
                        DataReply::Rows(r) => rows.extend(r),
                        DataReply::Error(e) => return Err(e),
                        other => {
                            return Err(DataError::unavailable(format!(
                                "unexpected scan reply {other:?}"
                            )))
                        }
                    }
                    // Range shards come in key order: stop once enough.
                    if matches!(t.spec.sharding, Sharding::Range { .. }) && rows.len() >= limit {
                        break;
                    }
                }
                rows.sort_by(|a, b| a.0.cmp(&b.0));
                rows.truncate(limit);
                Ok(DataReply::Rows(rows))
            }
            DataRequest::Copies { table, checksums } => {
                let t = table_in(&map, &table)?;
                let asks = t
                    .shards
                    .iter()
                    .flat_map(|s| s.replicas.holders().map(move |n| (s.index, n.clone())));
                let calls = asks.map(|(shard, node)| {
                    let req = ShardRequest::Status {
                        table: table.clone(),
                        shard,
                        checksum: checksums,
                    };
                    async move {
                        let status = match self.call(&node, req, false).await {
                            DataReply::Status(s) => Ok(s),
                            DataReply::Error(e) => Err(e.message),
                            other => Err(format!("unexpected reply {other:?}")),
                        };
                        CopyReport {
                            shard,
                            node,
                            status,
                        }
                    }
                });
                Ok(DataReply::Copies(futures::future::join_all(calls).await))
            }
        }
    }

    /// The node that serves reads of a shard in `mode`, from `map`: the
    /// primary for strong reads (and for any read once a copy here could not
    /// serve it), else this node's own copy when it holds one.
    fn reader(
        &self,
        map: &ClusterMap,
        table: &str,
        shard: u32,
        mode: ReadMode,
        local_failed: bool,
    ) -> Option<String> {
        let set = &map.tables.get(table)?.shards.get(shard as usize)?.replicas;
        Some(match mode {
            ReadMode::Replica | ReadMode::AtLeast(_)
                if !local_failed && set.members().any(|m| *m == self.me) =>
            {
                self.me.clone()
            }
            _ => set.primary.clone(),
        })
    }

    /// Reads from the copy that serves `mode`, riding out a failover: a
    /// refusal is retried for up to [`RETRY_FOR`] (a copy here that is not
    /// in sync, or behind the session, hands the read to the primary), and
    /// a read waiting on a primary that the map replaces is resent to the
    /// new one.
    async fn read(
        &self,
        table: &str,
        shard: u32,
        mode: ReadMode,
        build: impl Fn(u32) -> ShardRequest,
    ) -> Result<DataReply, DataError> {
        let started = Instant::now();
        let mut local_failed = false;
        loop {
            let map = self.control.map();
            let node = self
                .reader(&map, table, shard, mode, local_failed)
                .ok_or_else(|| {
                    DataError::new(
                        ErrorKind::NoTable,
                        format!("table {table:?} was dropped while being read"),
                    )
                })?;
            let primary = node != self.me
                || map.tables[table].shards[shard as usize].replicas.primary == self.me;
            let reply = tokio::select! {
                r = self.call(&node, build(shard), false) => r,
                _ = self.moved(table, shard, &node), if primary => continue,
            };
            match reply {
                DataReply::Error(e) if e.kind == ErrorKind::Unavailable && !primary => {
                    local_failed = true;
                }
                DataReply::Error(e)
                    if e.kind == ErrorKind::Unavailable && started.elapsed() < RETRY_FOR =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                other => return Ok(other),
            }
        }
    }

    /// A point read of `key` in `table/shard`.
    async fn get(
        &self,
        table: String,
        shard: u32,
        key: SplitKey,
        mode: ReadMode,
    ) -> Result<DataReply, DataError> {
        let t = table.clone();
        self.read(&table, shard, mode, move |shard| ShardRequest::Get {
            table: t.clone(),
            shard,
            key: key.clone(),
            mode,
        })
        .await
    }

    /// Serves a request the client routed itself at `epoch`: refused as
    /// stale when this node's map has moved past that epoch (the client
    /// refreshes and resends), held briefly when this node's map is the one
    /// behind, then served like any other request of that shard.
    async fn routed(&self, epoch: u64, request: ShardRequest) -> Result<DataReply, DataError> {
        let (table, shard) = request.shard();
        let (table, shard) = (table.to_owned(), shard);
        let deadline = Instant::now() + MAP_CATCH_UP;
        let mut versions = self.control.watch_version();
        let map = loop {
            let map = self.control.map();
            let t = table_in(&map, &table)?;
            let Some(s) = t.shards.get(shard as usize) else {
                return Err(DataError::invalid(format!(
                    "table {table:?} has no shard {shard} (it has {})",
                    t.shards.len()
                )));
            };
            let here = s.replicas.epoch;
            if here > epoch {
                return Err(DataError::new(
                    ErrorKind::Stale,
                    format!(
                        "{table}/{shard} is at epoch {here} (primary {}), the request was routed at epoch {epoch}: refresh the map",
                        s.replicas.primary
                    ),
                ));
            }
            if here == epoch {
                break map;
            }
            // Our map is behind the client's: wait for it to catch up.
            if tokio::time::timeout_at(deadline.into(), versions.changed())
                .await
                .is_err()
            {
                return Err(DataError::unavailable(format!(
                    "node {} has not yet seen epoch {epoch} of {table}/{shard} (it is at {here}); retry",
                    self.me
                )));
            }
        };
        let t = table_in(&map, &table)?;
        match request {
            ShardRequest::Write { op, .. } => {
                check_op(t, shard, &op)?;
                self.write(shard, &table, op).await
            }
            ShardRequest::Get { key, mode, .. } => {
                if t.shard_of(&key) != shard {
                    return Err(not_in_shard(&table, shard, &key, t));
                }
                self.get(table, shard, key, mode).await
            }
            ShardRequest::Scan {
                from,
                to,
                limit,
                mode,
                ..
            } => {
                let limit = limit.min(MAX_SCAN);
                let t2 = table.clone();
                self.read(&table, shard, mode, move |shard| ShardRequest::Scan {
                    table: t2.clone(),
                    shard,
                    from: from.clone(),
                    to: to.clone(),
                    limit,
                    mode,
                })
                .await
            }
            status @ ShardRequest::Status { .. } => Ok(self.call(&self.me, status, false).await),
        }
    }

    /// Sends a write to the shard's primary. A refusal (nothing applied) is
    /// retried for up to [`RETRY_FOR`] against the primary the map names
    /// then. If the map replaces the primary while the write is in flight,
    /// an idempotent write (put, unconditional delete) is resent to the new
    /// one; any other gets an `Unknown` answer, since it may have committed.
    async fn write(&self, shard: u32, table: &str, op: Op) -> Result<DataReply, DataError> {
        let idempotent = op.is_idempotent();
        let started = Instant::now();
        loop {
            let map = self.control.map();
            let t = table_in(&map, table)?;
            let primary = t.shards[shard as usize].replicas.primary.clone();
            let req = ShardRequest::Write {
                table: table.to_owned(),
                shard,
                op: op.clone(),
            };
            let reply = tokio::select! {
                r = self.call(&primary, req, true) => r,
                _ = self.moved(table, shard, &primary) => {
                    if idempotent {
                        continue;
                    }
                    return Err(DataError::unknown(format!(
                        "the primary of {table}/{shard} changed from {primary} while the write was in flight; its outcome is unknown (read the row before retrying)"
                    )));
                }
            };
            let retry = match &reply {
                DataReply::Error(e) if started.elapsed() < RETRY_FOR => {
                    e.kind == ErrorKind::Unavailable || (e.kind == ErrorKind::Unknown && idempotent)
                }
                _ => false,
            };
            if !retry {
                return Ok(reply);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Returns once the map no longer names `from` as the shard's primary.
    async fn moved(&self, table: &str, shard: u32, from: &str) {
        let mut versions = self.control.watch_version();
        loop {
            let map = self.control.map();
            let still = map
                .tables
                .get(table)
                .and_then(|t| t.shards.get(shard as usize))
                .is_some_and(|s| s.replicas.primary == from);
            if !still {
                return;
            }
            if versions.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Calls the copy on `node`, here or over the network. A request that
    /// could not be sent is `Unavailable`; a write lost in flight is `Unknown`.
    pub async fn call(&self, node: &str, req: ShardRequest, write: bool) -> DataReply {
        if node == self.me {
            return serve_local(&self.local, req).await;
        }
        let map = self.control.map();
        let Some(addr) = map.nodes.get(node).and_then(|n| n.addr.parse().ok()) else {
            return err(DataError::unavailable(format!(
                "node {node} has no known address"
            )));
        };
        match self.endpoint.request(addr, &PeerMessage::Data(req)).await {
            Ok(PeerReply::Data(reply)) => reply,
            Ok(other) => err(DataError::unavailable(format!(
                "node {node} answered {other:?}"
            ))),
            Err(e @ (TransportError::Connect { .. } | TransportError::Backoff { .. })) => err(
                DataError::unavailable(format!("node {node} is unreachable: {e}")),
            ),
            Err(e) if write => err(DataError::unknown(format!(
                "node {node} did not answer the write ({e}); its outcome is unknown"
            ))),
            Err(e) => err(DataError::unavailable(format!(
                "node {node} did not answer: {e}"
            ))),
        }
    }
}

fn not_in_shard(table: &str, shard: u32, key: &SplitKey, t: &Table) -> DataError {
    DataError::invalid(format!(
        "key {key} belongs to {table}/{}, not {table}/{shard}",
        t.shard_of(key)
    ))
}

/// An update's patch must be a JSON object (checked again at apply time).
fn check_patch(patch: &str) -> Result<(), DataError> {
    match serde_json::from_str::<serde_json::Value>(patch) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(DataError::invalid("an update must be a JSON object")),
        Err(e) => Err(DataError::invalid(format!("update is not JSON: {e}"))),
    }
}

/// Checks a write before it is logged: rows parse and carry their key, and
/// every key is in `shard`.
fn check_op(t: &Table, shard: u32, op: &Op) -> Result<(), DataError> {
    let table = &t.spec.name;
    let key = match op {
        Op::Put { key, row } | Op::Insert { key, row } => {
            let (row_key, _) = check_row(row, &t.spec.key).map_err(DataError::from)?;
            if &row_key != key {
                return Err(DataError::invalid(format!(
                    "the row's key {row_key} does not match the key {key} it was sent with"
                )));
            }
            key
        }
        Op::Update { key, patch, .. } => {
            check_patch(patch)?;
            key
        }
        Op::Delete { key, .. } => key,
        Op::Batch(ops) => {
            if ops.len() > MAX_BATCH {
                return Err(DataError::invalid(format!(
                    "a batch of {} operations exceeds the limit of {MAX_BATCH}",
                    ops.len()
                )));
            }
            if ops.iter().any(|o| matches!(o, Op::Batch(_))) {
                return Err(DataError::invalid("a batch cannot hold a batch"));
            }
            return ops.iter().try_for_each(|o| check_op(t, shard, o));
        }
    };
    if t.shard_of(key) != shard {
        return Err(not_in_shard(table, shard, key, t));
    }
    Ok(())
}

/// Turns a client's batch into one logged operation on the one shard all
/// its keys belong to.
fn batch_op(t: &Table, ops: Vec<BatchOp>) -> Result<(u32, Op), DataError> {
    if ops.is_empty() {
        return Err(DataError::invalid("a batch needs at least one operation"));
    }
    let mut out = Vec::with_capacity(ops.len());
    for (i, b) in ops.into_iter().enumerate() {
        let at = |e: DataError| DataError::new(e.kind, format!("batch operation {i}: {e}"));
        out.push(match b {
            BatchOp::Put { row } => {
                let (key, _) = check_row(&row, &t.spec.key).map_err(|e| at(e.into()))?;
                Op::Put { key, row }
            }
            BatchOp::Insert { row } => {
                let (key, _) = check_row(&row, &t.spec.key).map_err(|e| at(e.into()))?;
                Op::Insert { key, row }
            }
            BatchOp::Update {
                key,
                patch,
                if_version,
            } => {
                check_patch(&patch).map_err(at)?;
                Op::Update {
                    key,
                    patch,
                    if_version,
                }
            }
            BatchOp::Delete { key, if_version } => Op::Delete { key, if_version },
        });
    }
    let shard = t.shard_of(out[0].key().expect("not a batch"));
    for op in &out {
        let key = op.key().expect("not a batch");
        if t.shard_of(key) != shard {
            return Err(DataError::invalid(format!(
                "a batch is atomic within one shard: key {} is in {}/{shard}, key {key} in {}/{}",
                out[0].key().expect("not a batch"),
                t.spec.name,
                t.spec.name,
                t.shard_of(key)
            )));
        }
    }
    let op = Op::Batch(out);
    check_op(t, shard, &op)?;
    Ok((shard, op))
}

/// Whether a shard can hold keys in `[from, to)`.
pub fn may_hold(
    sharding: &Sharding,
    range: &KeyRange,
    from: Option<&SplitKey>,
    to: Option<&SplitKey>,
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

/// Serves a request with a copy held on this node.
pub async fn serve_local(
    local: &BTreeMap<ShardKey, Addr<CopyActor>>,
    req: ShardRequest,
) -> DataReply {
    let (table, shard) = req.shard();
    let key = ShardKey {
        table: table.to_owned(),
        index: shard,
    };
    let Some(copy) = local.get(&key) else {
        return err(DataError::unavailable(format!(
            "shard {key} has no copy on this node (the map may have just changed); retry"
        )));
    };
    let gone = |e: actix::MailboxError| {
        err(DataError::unavailable(format!(
            "shard {key} is stopping: {e}"
        )))
    };
    match req {
        ShardRequest::Write { op, .. } => match copy.send(Write(op)).await {
            Ok(Ok(r)) => DataReply::Written(r),
            Ok(Err(e)) => err(e),
            Err(e) => err(DataError::unknown(format!(
                "shard {key} stopped with the write queued ({e}); its outcome is unknown"
            ))),
        },
        ShardRequest::Get { key: k, mode, .. } => match copy.send(Read { key: k, mode }).await {
            Ok(Ok(r)) => DataReply::Row(r),
            Ok(Err(e)) => err(DataError::unavailable(e)),
            Err(e) => gone(e),
        },
        ShardRequest::Scan {
            from,
            to,
            limit,
            mode,
            ..
        } => match copy
            .send(ScanShard {
                from,
                to,
                limit,
                mode,
            })
            .await
        {
            Ok(Ok(r)) => DataReply::Rows(r),
            Ok(Err(e)) => err(DataError::unavailable(e)),
            Err(e) => gone(e),
        },
        ShardRequest::Status { checksum, .. } => match copy.send(GetStatus { checksum }).await {
            Ok(s) => DataReply::Status(s),
            Err(e) => gone(e),
        },
    }
}
