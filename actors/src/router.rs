//! Routing client reads and writes to the shard copy that must serve them.
//!
//! The contacted node finds the key's shard in its copy of the map, then
//! calls the primary (writes, strong reads) or the nearest copy (replica
//! reads: its own if it holds one), locally or over the peer protocol. A
//! scan asks every shard that can hold keys in the range and merges the rows
//! in key order.

use std::collections::BTreeMap;

use actix::Addr;
use tstore_transport::Endpoint;

use crate::cluster_map::{ClusterMap, KeyRange, Sharding, SplitKey, Table};
use crate::data::ops::{check_row, Op};
use crate::shard::actor::{CopyActor, GetStatus, Read, ReadMode, ScanShard, Write};
use crate::shard::ShardKey;
use crate::wire::{CopyReport, DataReply, DataRequest, PeerMessage, PeerReply, ShardRequest};

/// Most rows one scan returns.
pub const MAX_SCAN: usize = 10_000;

/// What routing one request needs.
pub struct Router {
    pub me: String,
    pub map: ClusterMap,
    pub local: BTreeMap<ShardKey, Addr<CopyActor>>,
    pub endpoint: Endpoint,
}

fn err(e: impl ToString) -> DataReply {
    DataReply::Error(e.to_string())
}

impl Router {
    fn table(&self, name: &str) -> Result<&Table, String> {
        self.map.tables.get(name).ok_or_else(|| {
            if self.map.tables.is_empty() {
                format!("table {name:?} does not exist (there are no tables)")
            } else {
                let names: Vec<&str> = self.map.tables.keys().map(String::as_str).collect();
                format!(
                    "table {name:?} does not exist (tables: {})",
                    names.join(", ")
                )
            }
        })
    }

    /// Serves a client request.
    pub async fn route(&self, req: DataRequest) -> DataReply {
        match self.route_inner(req).await {
            Ok(reply) => reply,
            Err(e) => DataReply::Error(e),
        }
    }

    async fn route_inner(&self, req: DataRequest) -> Result<DataReply, String> {
        match req {
            DataRequest::Put { table, row } => {
                let t = self.table(&table)?;
                let (key, _) = check_row(&row, &t.spec.key).map_err(|e| e.to_string())?;
                self.write(t, key.clone(), Op::Put { key, row }).await
            }
            DataRequest::Insert { table, row } => {
                let t = self.table(&table)?;
                let (key, _) = check_row(&row, &t.spec.key).map_err(|e| e.to_string())?;
                self.write(t, key.clone(), Op::Insert { key, row }).await
            }
            DataRequest::Update {
                table,
                key,
                patch,
                if_version,
            } => {
                let t = self.table(&table)?;
                self.write(
                    t,
                    key.clone(),
                    Op::Update {
                        key,
                        patch,
                        if_version,
                    },
                )
                .await
            }
            DataRequest::Delete {
                table,
                key,
                if_version,
            } => {
                let t = self.table(&table)?;
                self.write(t, key.clone(), Op::Delete { key, if_version })
                    .await
            }
            DataRequest::Get { table, key, mode } => {
                let t = self.table(&table)?;
                let shard = t.shard_of(&key);
                let node = self.reader(t, shard, mode);
                Ok(self
                    .call(
                        &node,
                        ShardRequest::Get {
                            table,
                            shard,
                            key,
                            mode,
                        },
                    )
                    .await)
            }
            DataRequest::Scan {
                table,
                from,
                to,
                limit,
                mode,
            } => {
                let t = self.table(&table)?;
                let limit = limit.min(MAX_SCAN);
                let mut rows = Vec::new();
                for s in &t.shards {
                    if !may_hold(&t.spec.sharding, &s.range, from.as_ref(), to.as_ref()) {
                        continue;
                    }
                    let node = self.reader(t, s.index, mode);
                    let req = ShardRequest::Scan {
                        table: table.clone(),
                        shard: s.index,
                        from: from.clone(),
                        to: to.clone(),
                        limit,
                        mode,
                    };
                    match self.call(&node, req).await {
                        DataReply::Rows(r) => rows.extend(r),
                        DataReply::Error(e) => return Err(e),
                        other => return Err(format!("unexpected scan reply {other:?}")),
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
                let t = self.table(&table)?;
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
                        let status = match self.call(&node, req).await {
                            DataReply::Status(s) => Ok(s),
                            DataReply::Error(e) => Err(e),
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

    /// The node that serves reads of a shard in `mode`.
    fn reader(&self, t: &Table, shard: u32, mode: ReadMode) -> String {
        let set = &t.shards[shard as usize].replicas;
        match mode {
            ReadMode::Strong => set.primary.clone(),
            ReadMode::Replica if set.members().any(|m| *m == self.me) => self.me.clone(),
            ReadMode::Replica => set.primary.clone(),
        }
    }

    async fn write(&self, t: &Table, key: SplitKey, op: Op) -> Result<DataReply, String> {
        let shard = t.shard_of(&key);
        let primary = t.shards[shard as usize].replicas.primary.clone();
        Ok(self
            .call(
                &primary,
                ShardRequest::Write {
                    table: t.spec.name.clone(),
                    shard,
                    op,
                },
            )
            .await)
    }

    /// Calls the copy on `node`, here or over the network.
    pub async fn call(&self, node: &str, req: ShardRequest) -> DataReply {
        if node == self.me {
            return serve_local(&self.local, req).await;
        }
        let Some(addr) = self.map.nodes.get(node).and_then(|n| n.addr.parse().ok()) else {
            return err(format!("node {node} has no known address"));
        };
        match self.endpoint.request(addr, &PeerMessage::Data(req)).await {
            Ok(PeerReply::Data(reply)) => reply,
            Ok(other) => err(format!("node {node} answered {other:?}")),
            Err(e) => err(format!("node {node} is unreachable: {e}")),
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
        return err(format!(
            "shard {key} has no copy on this node (the map may have just changed); retry"
        ));
    };
    let gone = |e: actix::MailboxError| err(format!("shard {key} is stopping: {e}"));
    match req {
        ShardRequest::Write { op, .. } => match copy.send(Write(op)).await {
            Ok(Ok(r)) => DataReply::Written(r),
            Ok(Err(e)) => err(e),
            Err(e) => gone(e),
        },
        ShardRequest::Get { key: k, mode, .. } => match copy.send(Read { key: k, mode }).await {
            Ok(Ok(r)) => DataReply::Row(r),
            Ok(Err(e)) => err(e),
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
            Ok(Err(e)) => err(e),
            Err(e) => gone(e),
        },
        ShardRequest::Status { checksum, .. } => match copy.send(GetStatus { checksum }).await {
            Ok(s) => DataReply::Status(s),
            Err(e) => gone(e),
        },
    }
}
