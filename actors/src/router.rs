//! Serving the reads and writes a client routed itself.
//!
//! The routing client (`tstore_node::data_client`) sends every row request
//! as a [`DataRequest::Routed`]: one shard, the configuration epoch the
//! client routed by, and for a write its request identity. The contacted
//! node checks the epoch against its own map, then serves the request with
//! its own copy or forwards it, **at most once**, to the copy that must
//! serve it (the primary for writes and strong reads; the primary again
//! when a copy here cannot serve a replica read). It never resends: a
//! refusal comes back as `Unavailable` or `Stale`, a write whose primary
//! went away mid-flight as `Unknown`, and the client alone owns the retry
//! budget and backoff (as TiKV's servers answer `NotLeader` and its client
//! retries). A resent write carries the same identity, so the shard applies
//! it once (`data::sessions`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::MapView;
use crate::peer::{PeerMessage, PeerReply};
use crate::peer_link::{LinkError, PeerLink};
use crate::shard::local::CopyAddrs;
use crate::shard::messages::{GetStatus, MiddleKey, Read, ScanShard, Write};
use tstore_core::cluster_map::{ClusterMap, Table};
use tstore_core::data::ops::Op;
use tstore_core::data::sessions::RequestId;
use tstore_core::data::validate::{check_key, check_op};
use tstore_core::shard::ShardKey;
use tstore_core::wire::{CopyReport, DataError, DataReply, DataRequest, ErrorKind, ShardRequest};
use tstore_core::wire::{ReadMode, MAX_SCAN};

/// How long a routed request waits for this node's map to reach the
/// client's epoch.
const MAP_CATCH_UP: Duration = Duration::from_secs(1);

/// What routing one request needs.
pub struct Router {
    pub me: String,
    /// The committed map.
    pub map: MapView,
    /// This node's copies (see `shard::local`).
    pub local: Arc<CopyAddrs>,
    /// How requests reach other nodes.
    pub link: Arc<dyn PeerLink>,
}

fn err(e: DataError) -> DataReply {
    DataReply::Error(e)
}

fn table_in<'a>(map: &'a ClusterMap, name: &str) -> Result<&'a Table, DataError> {
    map.tables.get(name).ok_or_else(|| {
        DataError::new(
            ErrorKind::NoTable,
            tstore_core::wire::ControlError::no_such_table(name, map).to_string(),
        )
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
        match req {
            DataRequest::Routed { epoch, request } => self.routed(epoch, request).await,
            DataRequest::Copies { table, checksums } => {
                let map = self.map.map();
                let t = table_in(&map, &table)?;
                let asks = t
                    .shards
                    .iter()
                    .flat_map(|s| s.replicas.holders().map(move |n| (s.index, n.clone())));
                let calls = asks.map(|(shard, node)| {
                    let req = ShardRequest::Status {
                        shard: ShardKey::new(&table, shard),
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

    /// Serves a read in `mode`: with this node's copy when it holds one and
    /// the mode allows, handing it to the primary if that copy cannot serve
    /// it (not in sync, behind the session); strong reads go to the primary.
    /// One forward at most; a refusal is the client's to retry.
    async fn read(
        &self,
        map: &ClusterMap,
        table: &str,
        shard: u32,
        mode: ReadMode,
        request: ShardRequest,
    ) -> Result<DataReply, DataError> {
        let set = &table_in(map, table)?.shards[shard as usize].replicas;
        let local_first = matches!(mode, ReadMode::Replica | ReadMode::AtLeast(_))
            && set.primary != self.me
            && set.members().any(|m| *m == self.me);
        if local_first {
            match self.call(&self.me, request.clone(), false).await {
                DataReply::Error(e) if e.kind == ErrorKind::Unavailable => {}
                other => return Ok(other),
            }
        }
        let primary = set.primary.clone();
        Ok(tokio::select! {
            r = self.call(&primary, request, false) => r,
            _ = self.moved(table, shard, &primary), if primary != self.me => err(DataError::unavailable(format!(
                "the primary of {table}/{shard} changed from {primary} while the read was in flight; retry"
            ))),
        })
    }

    /// Serves a request the client routed itself at `epoch`: refused as
    /// stale when this node's map has moved past that epoch (the client
    /// refreshes and resends), held briefly when this node's map is the one
    /// behind, then served or forwarded once.
    async fn routed(&self, epoch: u64, request: ShardRequest) -> Result<DataReply, DataError> {
        let ShardKey {
            table,
            index: shard,
        } = request.shard().clone();
        let deadline = Instant::now() + MAP_CATCH_UP;
        let mut versions = self.map.watch_version();
        let map = loop {
            let map = self.map.map();
            let t = table_in(&map, &table)?;
            let Some(s) = t.shards.get(shard as usize) else {
                // Merged away (the client's map is older: it refreshes and
                // finds the shard that took the keys), or made by a split
                // this node has not seen yet (wait for it, as below).
                let merged_away = t
                    .shards
                    .iter()
                    .any(|s| s.merged.as_ref().is_some_and(|m| m.absorbed == shard));
                let caught_up = !merged_away
                    && tokio::time::timeout_at(deadline.into(), versions.changed())
                        .await
                        .is_ok();
                if caught_up {
                    continue;
                }
                return Err(DataError::new(
                    ErrorKind::Stale,
                    format!(
                        "table {table:?} has no shard {shard} here (it has {}{}): refresh the map",
                        t.shards.len(),
                        if merged_away {
                            "; it was merged into another"
                        } else {
                            ""
                        }
                    ),
                ));
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
            ShardRequest::Write { id, op, .. } => {
                check_op(t, shard, &op)?;
                Ok(self.write(&map, shard, &table, id, op).await)
            }
            ShardRequest::Get { ref key, mode, .. } => {
                check_key(t, shard, key)?;
                self.read(&map, &table, shard, mode, request).await
            }
            ShardRequest::Scan {
                from,
                to,
                limit,
                mode,
                ..
            } => {
                // Planned by the map at `epoch`, checked above.
                let request = ShardRequest::Scan {
                    shard: ShardKey::new(&table, shard),
                    from,
                    to,
                    limit: limit.min(MAX_SCAN),
                    mode,
                    epoch,
                };
                self.read(&map, &table, shard, mode, request).await
            }
            status @ ShardRequest::Status { .. } => Ok(self.call(&self.me, status, false).await),
            middle @ ShardRequest::Middle { .. } => {
                self.read(&map, &table, shard, ReadMode::Strong, middle)
                    .await
            }
        }
    }

    /// Sends a write to the shard's primary, once. If the map replaces the
    /// primary while the write is in flight, the answer is `Unknown`: it may
    /// have committed; the client resends it with the same identity, which
    /// the shard recognises.
    async fn write(
        &self,
        map: &ClusterMap,
        shard: u32,
        table: &str,
        id: RequestId,
        op: Op,
    ) -> DataReply {
        let primary = match table_in(map, table) {
            Ok(t) => t.shards[shard as usize].replicas.primary.clone(),
            Err(e) => return err(e),
        };
        let req = ShardRequest::Write {
            shard: ShardKey::new(table, shard),
            id,
            op,
        };
        tokio::select! {
            r = self.call(&primary, req, true) => r,
            _ = self.moved(table, shard, &primary) => err(DataError::unknown(format!(
                "the primary of {table}/{shard} changed from {primary} while the write was in flight; its outcome is unknown"
            ))),
        }
    }

    /// Returns once the map no longer names `from` as the shard's primary.
    async fn moved(&self, table: &str, shard: u32, from: &str) {
        let mut versions = self.map.watch_version();
        loop {
            let map = self.map.map();
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
        match self.link.request(node, PeerMessage::Data(req)).await {
            Ok(PeerReply::Data(reply)) => reply,
            Ok(other) => err(DataError::unavailable(format!(
                "node {node} answered {other:?}"
            ))),
            // Known not sent: the client may send it again.
            Err(
                e @ (LinkError::NoAddress { .. }
                | LinkError::Unreachable { .. }
                | LinkError::NotSent { .. }),
            ) => err(DataError::unavailable(e.to_string())),
            Err(LinkError::NoAnswer { cause, .. }) if write => err(DataError::unknown(format!(
                "node {node} did not answer the write ({cause}); its outcome is unknown"
            ))),
            Err(e @ LinkError::NoAnswer { .. }) => err(DataError::unavailable(e.to_string())),
        }
    }
}

/// Serves a request with a copy held on this node.
pub async fn serve_local(local: &CopyAddrs, req: ShardRequest) -> DataReply {
    let key = req.shard().clone();
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
        ShardRequest::Write { id, op, .. } => match copy.send(Write { id, op }).await {
            Ok(Ok(r)) => DataReply::Written(r),
            Ok(Err(e)) => err(e),
            Err(e) => err(DataError::unknown(format!(
                "shard {key} stopped with the write queued ({e}); its outcome is unknown"
            ))),
        },
        ShardRequest::Get { key: k, mode, .. } => match copy
            .send(Read {
                key: k,
                mode,
                needs: None,
            })
            .await
        {
            Ok(Ok(r)) => DataReply::Row(r),
            Ok(Err(e)) => err(e),
            Err(e) => gone(e),
        },
        ShardRequest::Scan {
            from,
            to,
            limit,
            mode,
            epoch,
            ..
        } => match copy
            .send(ScanShard {
                from,
                to,
                limit,
                mode,
                needs: None,
                epoch,
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
        ShardRequest::Middle { .. } => match copy.send(MiddleKey).await {
            Ok(Ok(r)) => DataReply::Rows(r.into_iter().collect()),
            Ok(Err(e)) => err(e),
            Err(e) => gone(e),
        },
    }
}
