//! Routing client reads and writes to the shard copy that must serve them.
//!
//! The contacted node finds the key's shard in its copy of the map, then
//! calls the primary (writes, strong reads) or the nearest copy (replica
//! reads: its own if it holds one), locally or over the peer protocol. A
//! scan asks every shard that can hold keys in the range and merges the rows
//! in key order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix::Addr;
use tstore_transport::{Endpoint, TransportError};

use crate::cluster_map::{ClusterMap, KeyRange, Sharding, SplitKey, Table};
use crate::control::ControlPlane;
use crate::data::ops::{check_row, Op};
use crate::shard::actor::{CopyActor, GetStatus, Read, ReadMode, ScanShard, Write};
use crate::shard::ShardKey;
use crate::wire::{
    CopyReport, DataError, DataReply, DataRequest, ErrorKind, PeerMessage, PeerReply, ShardRequest,
};

/// Most rows one scan returns.
pub const MAX_SCAN: usize = 10_000;

/// How long the router keeps resending a request the shard refused without
/// applying it (no primary yet, a promoted primary waiting out the old
/// lease): a failover is ridden out inside one client request.
pub const RETRY_FOR: Duration = Duration::from_secs(8);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What routing one request needs.
pub struct Router {
    pub me: String,
    /// The committed map, read afresh at every attempt.
    pub control: ControlPlane,
    pub local: BTreeMap<ShardKey, Addr<CopyActor>>,
    pub endpoint: Endpoint,
}

fn err(e: DataError) -> DataReply {
    DataReply::Error(e)
}

fn table_in<'a>(map: &'a ClusterMap, name: &str) -> Result<&'a Table, DataError> {
    map.tables.get(name).ok_or_else(|| {
        DataError::invalid(if map.tables.is_empty() {
            format!("table {name:?} does not exist (there are no tables)")
        } else {
            let names: Vec<&str> = map.tables.keys().map(String::as_str).collect();
            format!(
                "table {name:?} does not exist (tables: {})",
                names.join(", ")
            )
        })
    })
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
                self.write(&table, key.clone(), Op::Put { key, row }).await
            }
            DataRequest::Insert { table, row } => {
                let t = table_in(&map, &table)?;
                let (key, _) = check_row(&row, &t.spec.key).map_err(DataError::from)?;
                self.write(&table, key.clone(), Op::Insert { key, row })
                    .await
            }
            DataRequest::Update {
                table,
                key,
                patch,
                if_version,
            } => {
                table_in(&map, &table)?;
                let op = Op::Update {
                    key: key.clone(),
                    patch,
                    if_version,
                };
                self.write(&table, key, op).await
            }
            DataRequest::Delete {
                table,
                key,
                if_version,
            } => {
                table_in(&map, &table)?;
                let op = Op::Delete {
                    key: key.clone(),
                    if_version,
                };
                self.write(&table, key, op).await
            }
            DataRequest::Get { table, key, mode } => {
                let shard = table_in(&map, &table)?.shard_of(&key);
                let t2 = table.clone();
                self.read(&table, shard, mode, move |shard| ShardRequest::Get {
                    table: t2.clone(),
                    shard,
                    key: key.clone(),
                    mode,
                })
                .await
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

    /// The node that serves reads of a shard in `mode`, from `map`.
    fn reader(&self, map: &ClusterMap, table: &str, shard: u32, mode: ReadMode) -> Option<String> {
        let set = &map.tables.get(table)?.shards.get(shard as usize)?.replicas;
        Some(match mode {
            ReadMode::Strong => set.primary.clone(),
            ReadMode::Replica if set.members().any(|m| *m == self.me) => self.me.clone(),
            ReadMode::Replica => set.primary.clone(),
        })
    }

    /// Reads from the copy that serves `mode`, riding out a failover: a
    /// refusal is retried for up to [`RETRY_FOR`], and a read waiting on a
    /// primary that the map replaces is resent to the new one.
    async fn read(
        &self,
        table: &str,
        shard: u32,
        mode: ReadMode,
        build: impl Fn(u32) -> ShardRequest,
    ) -> Result<DataReply, DataError> {
        let started = Instant::now();
        loop {
            let map = self.control.map();
            let node = self.reader(&map, table, shard, mode).ok_or_else(|| {
                DataError::invalid(format!("table {table:?} changed while being read"))
            })?;
            let reply = tokio::select! {
                r = self.call(&node, build(shard), false) => r,
                _ = self.moved(table, shard, &node), if mode == ReadMode::Strong => continue,
            };
            match reply {
                DataReply::Error(e)
                    if e.kind == ErrorKind::Unavailable && started.elapsed() < RETRY_FOR =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                other => return Ok(other),
            }
        }
    }

    /// Sends a write to the shard's primary. A refusal (nothing applied) is
    /// retried for up to [`RETRY_FOR`] against the primary the map names
    /// then. If the map replaces the primary while the write is in flight,
    /// an idempotent write (put, unconditional delete) is resent to the new
    /// one; any other gets an `Unknown` answer, since it may have committed.
    async fn write(&self, table: &str, key: SplitKey, op: Op) -> Result<DataReply, DataError> {
        let idempotent = op.is_idempotent();
        let started = Instant::now();
        loop {
            let map = self.control.map();
            let t = table_in(&map, table)?;
            let shard = t.shard_of(&key);
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

/// Whether a shard can hold keys in `[from, to)`.
fn may_hold(
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
    let (table, shard) = match &req {
        ShardRequest::Write { table, shard, .. }
        | ShardRequest::Get { table, shard, .. }
        | ShardRequest::Scan { table, shard, .. }
        | ShardRequest::Status { table, shard, .. } => (table.clone(), *shard),
    };
    let key = ShardKey {
        table,
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
