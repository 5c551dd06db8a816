//! The Rust client of a node's admin service.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tstore_client::admin::ClientError> {
//! use tstore_client::admin::AdminClient;
//! let client = AdminClient::connect("127.0.0.1:7401".parse().unwrap(), "certs".as_ref(), "admin").await?;
//! for m in client.members().await?.1 {
//!     println!("{} {}", m.node_id, m.status);
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::Path;

use tstore_core::cluster_map::{KeyRange, RowKey};
use tstore_core::cluster_map::{MapEvent, NodeState, PlacementRule, Table, TableSpec};
use tstore_core::coordinator::failover::ManualOp;
use tstore_core::data::ops::RowRecord;
use tstore_core::shard::ShardKey;
use tstore_core::view::{GossipChange, GossipSnapshot, Member};
use tstore_core::wire::ReadMode;
use tstore_core::wire::{
    AdminReply, AdminRequest, ClusterStatus, CopyReport, DataError, DataReply, DataRequest,
    NodeStats, ShardRequest,
};
use tstore_transport::{ClientSession, Limits, ReplyStream, TlsIdentity};

pub use crate::error::ClientError;
use crate::routing::{client_identity, Client, ClientOptions};

/// One item of a gossip watch.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// The full state, first.
    Snapshot(GossipSnapshot),
    /// What changed since the previous item.
    Changes {
        at_unix_ms: u64,
        changes: Vec<GossipChange>,
    },
}

/// A session with one node's admin service.
pub struct AdminClient {
    session: ClientSession,
    addr: SocketAddr,
    identity: TlsIdentity,
    rows: tokio::sync::OnceCell<Client>,
}

fn reply_kind(r: &AdminReply) -> &'static str {
    match r {
        AdminReply::Members { .. } => "a member list",
        AdminReply::Gossip(_) => "a gossip state",
        AdminReply::GossipChanges { .. } => "gossip changes",
        AdminReply::Cluster(_) => "a cluster status",
        AdminReply::Table { .. } => "a table",
        AdminReply::Tables { .. } => "a table list",
        AdminReply::Done { .. } => "a confirmation",
        AdminReply::Data(_) => "a data reply",
        AdminReply::Events { .. } => "an event list",
        AdminReply::Error(_) => "an error",
        AdminReply::Route { .. } => "a route",
        AdminReply::NodeStats(_) => "node stats",
        AdminReply::DataAt { .. } => "a data reply",
    }
}

impl AdminClient {
    /// Connects with the client certificate `client-<name>` from a `tstore cert` directory.
    pub async fn connect(addr: SocketAddr, certs: &Path, name: &str) -> Result<Self, ClientError> {
        let identity = client_identity(certs, name)?;
        Self::connect_with(addr, &identity).await
    }

    /// Connects with an already loaded identity.
    pub async fn connect_with(
        addr: SocketAddr,
        identity: &TlsIdentity,
    ) -> Result<Self, ClientError> {
        // Map changes may wait for a Raft commit (bounded by the node at 5 s)
        // or a forward to the leader; give the node time to say why it failed.
        let limits = Limits {
            request_timeout: std::time::Duration::from_secs(20),
            ..Limits::default()
        };
        Ok(Self {
            session: ClientSession::connect(addr, identity, limits).await?,
            addr,
            identity: identity.clone(),
            rows: tokio::sync::OnceCell::new(),
        })
    }

    /// The contacted node's id and its member list.
    pub async fn members(&self) -> Result<(String, Vec<Member>), ClientError> {
        match self.session.request(&AdminRequest::Members).await? {
            AdminReply::Members { observer, members } => Ok((observer, members)),
            AdminReply::Error(e) => Err(ClientError::Admin(e)),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    /// The raw gossip state as the contacted node sees it.
    pub async fn gossip(&self) -> Result<GossipSnapshot, ClientError> {
        match self.session.request(&AdminRequest::Gossip).await? {
            AdminReply::Gossip(s) => Ok(s),
            AdminReply::Error(e) => Err(ClientError::Admin(e)),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    async fn call(&self, req: &AdminRequest) -> Result<AdminReply, ClientError> {
        match self.session.request(req).await? {
            AdminReply::Error(e) => Err(ClientError::Admin(e)),
            reply => Ok(reply),
        }
    }

    /// The control plane as the contacted node sees it.
    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        match self.call(&AdminRequest::Cluster).await? {
            AdminReply::Cluster(s) => Ok(s),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    /// The contacted node's storage: data dir size, LMDB map size and use,
    /// copies held, bytes written per logged entry.
    pub async fn node_stats(&self) -> Result<NodeStats, ClientError> {
        match self.call(&AdminRequest::NodeStats).await? {
            AdminReply::NodeStats(s) => Ok(s),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    /// Creates a table; returns it as committed, with its placement.
    pub async fn create_table(&self, spec: TableSpec) -> Result<(u64, Table), ClientError> {
        match self.call(&AdminRequest::CreateTable(spec)).await? {
            AdminReply::Table { map_version, table } => Ok((map_version, table)),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    /// Drops a table; returns the map version that no longer has it.
    pub async fn drop_table(&self, name: &str) -> Result<u64, ClientError> {
        match self
            .call(&AdminRequest::DropTable {
                name: name.to_owned(),
            })
            .await?
        {
            AdminReply::Done { map_version } => Ok(map_version),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    /// Every table in the contacted node's copy of the map.
    pub async fn tables(&self) -> Result<(u64, Vec<Table>), ClientError> {
        match self.call(&AdminRequest::Tables).await? {
            AdminReply::Tables {
                map_version,
                tables,
            } => Ok((map_version, tables)),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    /// One table with its shards, from the contacted node's copy of the map.
    pub async fn describe(&self, name: &str) -> Result<(u64, Table), ClientError> {
        match self
            .call(&AdminRequest::Describe {
                name: name.to_owned(),
            })
            .await?
        {
            AdminReply::Table { map_version, table } => Ok((map_version, table)),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    async fn data(&self, req: DataRequest) -> Result<DataReply, ClientError> {
        match self.call(&AdminRequest::Data(req)).await? {
            AdminReply::Data(DataReply::Error(e)) => Err(ClientError::Data(e)),
            AdminReply::Data(reply) => Ok(reply),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    /// The routing client for this client's row methods, connected on
    /// first use through the same node.
    async fn rows(&self) -> Result<&Client, ClientError> {
        self.rows
            .get_or_try_init(|| async {
                Client::connect_with(
                    &[self.addr],
                    self.identity.clone(),
                    ClientOptions::default(),
                )
                .await
            })
            .await
    }

    /// Creates or replaces a row (a JSON object); returns its new version.
    /// Row methods go through the routing client ([`Client`]), which owns
    /// retries and gives every write its request identity.
    pub async fn put(&self, table: &str, row: &str) -> Result<u64, ClientError> {
        self.rows().await?.put(table, row).await
    }

    /// Creates a row; fails if its key exists. Returns its version.
    pub async fn insert(&self, table: &str, row: &str) -> Result<u64, ClientError> {
        self.rows().await?.insert(table, row).await
    }

    /// Merges columns into a row, only at `if_version` when given; returns the new version.
    pub async fn update(
        &self,
        table: &str,
        key: RowKey,
        patch: &str,
        if_version: Option<u64>,
    ) -> Result<u64, ClientError> {
        self.rows()
            .await?
            .update(table, key, patch, if_version)
            .await
    }

    /// Deletes a row, only at `if_version` when given.
    pub async fn delete(
        &self,
        table: &str,
        key: RowKey,
        if_version: Option<u64>,
    ) -> Result<(), ClientError> {
        self.rows().await?.delete(table, key, if_version).await
    }

    /// Reads a row.
    pub async fn get(
        &self,
        table: &str,
        key: RowKey,
        mode: ReadMode,
    ) -> Result<Option<RowRecord>, ClientError> {
        self.rows().await?.get_mode(table, key, mode).await
    }

    /// Rows with `from <= key < to` in key order, at most `limit`.
    pub async fn scan(
        &self,
        table: &str,
        from: Option<RowKey>,
        to: Option<RowKey>,
        limit: usize,
        mode: ReadMode,
    ) -> Result<Vec<(RowKey, RowRecord)>, ClientError> {
        self.rows()
            .await?
            .scan_mode(table, from, to, limit, mode)
            .await
    }

    /// Every copy of every shard of `table` with its replication state
    /// (epoch, logged, applied) and, with `checksums`, a checksum of its rows.
    pub async fn copies(
        &self,
        table: &str,
        checksums: bool,
    ) -> Result<Vec<CopyReport>, ClientError> {
        match self
            .data(DataRequest::Copies {
                table: table.into(),
                checksums,
            })
            .await?
        {
            DataReply::Copies(c) => Ok(c),
            _ => Err(ClientError::Unexpected("not copy reports")),
        }
    }

    /// The coordinator's recent decisions (what, why, when, epoch), oldest first.
    pub async fn events(&self) -> Result<(u64, Vec<MapEvent>), ClientError> {
        match self.call(&AdminRequest::Events).await? {
            AdminReply::Events {
                map_version,
                events,
            } => Ok((map_version, events)),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    /// Marks a node draining (the coordinator moves its copies away) or
    /// active again; returns the map version holding the change.
    pub async fn set_node_state(
        &self,
        node_id: &str,
        state: NodeState,
    ) -> Result<u64, ClientError> {
        self.done(&AdminRequest::SetNodeState {
            node_id: node_id.into(),
            state,
        })
        .await
    }

    /// Sets (or with `None` clears) a table's placement rule; returns the
    /// map version holding it. The coordinator then moves the table's
    /// copies where the rule says (see [`PlacementRule`]).
    pub async fn set_placement(
        &self,
        table: &str,
        rule: Option<PlacementRule>,
    ) -> Result<u64, ClientError> {
        self.done(&AdminRequest::SetPlacement {
            table: table.into(),
            rule,
        })
        .await
    }

    /// Splits `table/shard` in two (elastic tables): a range shard at `at`,
    /// or at the median key of its rows when `at` is `None`; a hash shard
    /// into its two hash halves (`at` must be `None`). The halves keep the
    /// shard's copies (each node splits its own copy) until the rebalancer
    /// moves one away. Returns the map version that made the split and the
    /// new shard's index.
    pub async fn split_shard(
        &self,
        table: &str,
        shard: u32,
        at: Option<RowKey>,
    ) -> Result<(u64, u32), ClientError> {
        let (_, t) = self.describe(table).await?;
        let s = t.shards.get(shard as usize).ok_or_else(|| {
            ClientError::Data(DataError::invalid(format!(
                "table {table:?} has shards 0..{}",
                t.shards.len()
            )))
        })?;
        let at = match (&s.range, at) {
            (KeyRange::Range { .. }, None) => {
                let reply = self
                    .data(DataRequest::Routed {
                        epoch: s.replicas.epoch,
                        request: ShardRequest::Middle {
                            shard: ShardKey::new(table, shard),
                        },
                    })
                    .await?;
                match reply {
                    DataReply::Rows(rows) => match rows.into_iter().next() {
                        Some((k, _)) => Some(k),
                        None => {
                            return Err(ClientError::Data(DataError::invalid(format!(
                                "{table}/{shard} has no rows: give the key to split it at (--at)"
                            ))))
                        }
                    },
                    _ => return Err(ClientError::Unexpected("not rows")),
                }
            }
            (KeyRange::HashSlot { .. }, Some(k)) => {
                return Err(ClientError::Data(DataError::invalid(format!(
                    "{table}/{shard} is a hash shard: it splits into its two hash halves, not at a key ({k})"
                ))))
            }
            (_, at) => at,
        };
        let v = self
            .done(&AdminRequest::SplitShard {
                table: table.into(),
                shard,
                at,
            })
            .await?;
        Ok((v, t.shards.len() as u32))
    }

    /// Merges shards `a` and `b` of `table`, neighbours (range shards where
    /// one ends where the other starts, or hash siblings) of which the
    /// newer must be the table's newest shard: the coordinator moves its
    /// copies next to the other's, seals both (their writes wait about a
    /// second), and hands its keys over. Waits up to `wait` for the merge
    /// to be done and returns the map version that completed it; a merge
    /// given up comes back as an error with the coordinator's reason.
    pub async fn merge_shards(
        &self,
        table: &str,
        a: u32,
        b: u32,
        wait: std::time::Duration,
    ) -> Result<u64, ClientError> {
        let (keep, absorb) = (a.min(b), a.max(b));
        let begun = self
            .done(&AdminRequest::MergeShards {
                table: table.into(),
                a,
                b,
            })
            .await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (version, t) = self.describe(table).await?;
            let finished = t
                .shards
                .get(keep as usize)
                .and_then(|s| s.merged.as_ref())
                .is_some_and(|m| m.absorbed == absorb)
                && t.shards.len() as u32 == absorb;
            if finished {
                return Ok(version);
            }
            if t.merge_under_way().is_none() && version > begun {
                let (_, events) = self.events().await?;
                let why = events
                    .iter()
                    .rev()
                    .find(|e| e.version > begun && e.subject == format!("{table}/{absorb}"))
                    .map(|e| format!("{}: {}", e.what, e.why))
                    .unwrap_or_else(|| "given up".into());
                return Err(ClientError::Data(DataError::new(
                    tstore_core::wire::ErrorKind::Unavailable,
                    format!("merging {table}/{absorb} into {table}/{keep}: {why}"),
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Data(DataError::new(
                    tstore_core::wire::ErrorKind::Unavailable,
                    format!(
                        "merging {table}/{absorb} into {table}/{keep} is still under way after {} s (see `admin events`)",
                        wait.as_secs()
                    ),
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Turns the coordinator's automatic merges of `table` on or off.
    pub async fn set_auto_merge(&self, table: &str, on: bool) -> Result<u64, ClientError> {
        self.done(&AdminRequest::SetAutoMerge {
            table: table.into(),
            on,
        })
        .await
    }

    /// Turns the coordinator's automatic splits of `table` on or off.
    pub async fn set_auto_split(&self, table: &str, on: bool) -> Result<u64, ClientError> {
        self.done(&AdminRequest::SetAutoSplit {
            table: table.into(),
            on,
        })
        .await
    }

    /// An operator's change to one shard: promote a backup, move a copy,
    /// remove a copy.
    pub async fn shard_op(
        &self,
        table: &str,
        shard: u32,
        op: ManualOp,
    ) -> Result<u64, ClientError> {
        self.done(&AdminRequest::Shard {
            table: table.into(),
            shard,
            op,
        })
        .await
    }

    async fn done(&self, req: &AdminRequest) -> Result<u64, ClientError> {
        match self.call(req).await? {
            AdminReply::Done { map_version } => Ok(map_version),
            other => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }

    /// Streams the gossip state and then its changes.
    pub async fn watch_gossip(&self) -> Result<GossipWatch, ClientError> {
        Ok(GossipWatch {
            replies: self
                .session
                .request_stream(&AdminRequest::WatchGossip)
                .await?,
        })
    }

    pub async fn close(self) {
        if let Some(rows) = self.rows.into_inner() {
            rows.close().await;
        }
        self.session.close().await
    }
}

/// A running gossip watch.
pub struct GossipWatch {
    replies: ReplyStream<AdminReply>,
}

impl GossipWatch {
    /// The next item; `Ok(None)` when the node ended the watch (it shut down).
    pub async fn next(&mut self) -> Result<Option<WatchItem>, ClientError> {
        match self.replies.next().await? {
            None => Ok(None),
            Some(AdminReply::Gossip(s)) => Ok(Some(WatchItem::Snapshot(s))),
            Some(AdminReply::GossipChanges {
                at_unix_ms,
                changes,
            }) => Ok(Some(WatchItem::Changes {
                at_unix_ms,
                changes,
            })),
            Some(AdminReply::Error(e)) => Err(ClientError::Admin(e)),
            Some(other) => Err(ClientError::Unexpected(reply_kind(&other))),
        }
    }
}
