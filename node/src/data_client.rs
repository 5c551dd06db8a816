//! The routing client: reads and writes go straight to the node that serves
//! them.
//!
//! [`Client`] keeps a cache of each table's shard map (primary, backups,
//! epoch) and the nodes' addresses, fetched from any node it can reach. A
//! write or strong read goes to the shard's primary, a replica or session
//! read to any member of the shard, each tagged with the epoch the client
//! routed by. A node whose map has moved past that epoch answers `Stale`
//! without doing anything; the client then refreshes its map and resends.
//!
//! Retries are safe by construction: a request refused before it was applied
//! (`Unavailable`, `Stale`, a connection that could not be made) is resent
//! for up to [`ClientOptions::retry_for`]; a write whose outcome is unknown
//! (its node went away after it was sent) is resent only if applying it
//! twice changes nothing (a put, an unconditional delete), and otherwise
//! reported as `Unknown`.
//!
//! Read-your-writes: the client keeps a session token, the highest log entry
//! it has written or read per shard. A [`Consistency::Session`] read is
//! served by any in-sync copy that has applied that entry, else by the
//! primary. The token can be saved and carried to another client
//! ([`Client::session`], [`Client::resume_session`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), tstore_node::client::ClientError> {
//! use tstore_node::data_client::{Client, Consistency};
//! use tstore_node::cluster_map::SplitKey;
//! let seeds = ["127.0.0.1:7401".parse().unwrap()];
//! let client = Client::connect(&seeds, "certs".as_ref(), "admin").await?;
//! client.put("user", r#"{"id":1,"name":"Alice","age":25}"#).await?;
//! let row = client.get("user", SplitKey::Int(1), Consistency::Session).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::debug;
use tstore_actors::cluster_map::{SplitKey, Table};
use tstore_actors::data::ops::{check_row, Op, OpResult, RowRecord};
use tstore_actors::router::{may_hold, MAX_SCAN};
use tstore_actors::shard::actor::ReadMode;
use tstore_actors::wire::{
    AdminReply, AdminRequest, BatchOp, DataError, DataReply, DataRequest, ErrorKind, ShardRequest,
};
use tstore_transport::certs::CertDir;
use tstore_transport::{ClientSession, Limits, Role, TlsIdentity, TransportError};

use crate::client::ClientError;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// By the shard's primary under its lease: linearizable.
    Strong,
    /// By any in-sync copy: may lag the primary by its commit lag.
    Replica,
    /// By any in-sync copy that has every write and read of this client's
    /// session, else by the primary.
    Session,
}

/// Tuning of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long a request is resent while its shard cannot take it (a
    /// failover rides inside this).
    pub retry_for: Duration,
    /// How long one attempt waits for its answer before the client looks
    /// for a new route.
    pub attempt_timeout: Duration,
    /// How long a QUIC handshake with a node may take. Short: a node that
    /// does not answer quickly is routed around (another node forwards).
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            retry_for: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_millis(750),
        }
    }
}

/// A session token: per `table/shard`, the highest log entry this client
/// wrote or read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionToken(pub BTreeMap<String, u64>);

/// A table's routing, as cached.
struct Route {
    table: Table,
    nodes: HashMap<String, SocketAddr>,
}

const RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The routing client. Cheap to share behind an `Arc`; every method takes
/// `&self` and may run concurrently.
pub struct Client {
    identity: TlsIdentity,
    seeds: Vec<SocketAddr>,
    options: ClientOptions,
    sessions: Mutex<HashMap<SocketAddr, Arc<ClientSession>>>,
    routes: Mutex<HashMap<String, Arc<Route>>>,
    token: Mutex<SessionToken>,
}

impl Client {
    /// Connects with the client certificate `client-<name>` from a `tstore
    /// cert` directory; `seeds` are nodes to learn the map from (one is
    /// enough, more ride out its loss).
    pub async fn connect(
        seeds: &[SocketAddr],
        certs: &Path,
        name: &str,
    ) -> Result<Self, ClientError> {
        let dir = CertDir::new(certs);
        let (cert, _) = dir.leaf(Role::Client, name);
        if !cert.exists() {
            return Err(ClientError::NoCertificate {
                path: cert.display().to_string(),
                dir: certs.display().to_string(),
                name: name.to_owned(),
            });
        }
        let identity = dir.identity(Role::Client, name)?;
        Self::connect_with(seeds, identity, ClientOptions::default()).await
    }

    /// Connects with an already loaded identity; fails unless a seed answers.
    pub async fn connect_with(
        seeds: &[SocketAddr],
        identity: TlsIdentity,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let client = Self {
            identity,
            seeds: seeds.to_vec(),
            options,
            sessions: Mutex::default(),
            routes: Mutex::default(),
            token: Mutex::default(),
        };
        let mut last = None;
        for &seed in seeds {
            match client.session_to(seed).await {
                Ok(_) => return Ok(client),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::Server("no seed address given".into())))
    }

    /// The session token: what a [`Consistency::Session`] read must see.
    pub fn session(&self) -> SessionToken {
        self.token.lock().expect("token lock").clone()
    }

    /// Continues a session saved from this or another client.
    pub fn resume_session(&self, token: SessionToken) {
        let mut mine = self.token.lock().expect("token lock");
        for (shard, seq) in token.0 {
            let e = mine.0.entry(shard).or_default();
            *e = (*e).max(seq);
        }
    }

    fn observe(&self, table: &str, shard: u32, seq: u64) {
        if seq == 0 {
            return;
        }
        let mut t = self.token.lock().expect("token lock");
        let e = t.0.entry(format!("{table}/{shard}")).or_default();
        *e = (*e).max(seq);
    }

    fn token_of(&self, table: &str, shard: u32) -> u64 {
        let t = self.token.lock().expect("token lock");
        t.0.get(&format!("{table}/{shard}")).copied().unwrap_or(0)
    }

    async fn session_to(&self, addr: SocketAddr) -> Result<Arc<ClientSession>, ClientError> {
        if let Some(s) = self.sessions.lock().expect("sessions lock").get(&addr) {
            return Ok(s.clone());
        }
        let limits = Limits {
            request_timeout: self.options.attempt_timeout,
            connect_timeout: self.options.connect_timeout,
            ..Limits::default()
        };
        let s = Arc::new(ClientSession::connect(addr, &self.identity, limits).await?);
        let mut sessions = self.sessions.lock().expect("sessions lock");
        Ok(sessions.entry(addr).or_insert(s).clone())
    }

    fn drop_session(&self, addr: SocketAddr) {
        self.sessions.lock().expect("sessions lock").remove(&addr);
    }

    fn forget(&self, table: &str) {
        self.routes.lock().expect("routes lock").remove(table);
    }

    /// The cached route of `table`, or a fresh one from any node that answers.
    async fn route(&self, table: &str) -> Result<Arc<Route>, ClientError> {
        if let Some(r) = self.routes.lock().expect("routes lock").get(table) {
            return Ok(r.clone());
        }
        // Ask the nodes already connected first, then the seeds.
        let mut candidates: Vec<SocketAddr> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .keys()
            .copied()
            .collect();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(*seed);
            }
        }
        let mut last = ClientError::Server("no node to ask for the map".into());
        for addr in candidates {
            let reply = match self.session_to(addr).await {
                Ok(s) => s
                    .request::<_, AdminReply>(&AdminRequest::Route {
                        table: table.to_owned(),
                    })
                    .await
                    .map_err(ClientError::from),
                Err(e) => Err(e),
            };
            match reply {
                Ok(AdminReply::Route {
                    table: t, nodes, ..
                }) => {
                    let nodes = nodes
                        .into_iter()
                        .filter_map(|(id, a)| Some((id, a.parse().ok()?)))
                        .collect();
                    let route = Arc::new(Route { table: t, nodes });
                    self.routes
                        .lock()
                        .expect("routes lock")
                        .insert(table.to_owned(), route.clone());
                    return Ok(route);
                }
                Ok(AdminReply::Data(DataReply::Error(e))) => return Err(ClientError::Data(e)),
                Ok(AdminReply::Error(e)) => return Err(ClientError::Server(e)),
                Ok(_) => last = ClientError::Unexpected("not a route"),
                Err(e) => {
                    self.drop_session(addr);
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Sends one shard request to the node that serves it, refreshing the
    /// route and resending while that is safe. `write`: whether it changes
    /// rows; `idempotent`: whether a resend of a write that may have been
    /// applied is harmless.
    async fn send(
        &self,
        table: &str,
        shard: u32,
        request: ShardRequest,
        read: Option<ReadMode>,
        idempotent: bool,
    ) -> Result<DataReply, ClientError> {
        let write = read.is_none();
        let started = Instant::now();
        let mut pause = RETRY_PAUSE;
        let mut attempt = 0u32;
        // A node that just failed us: the next attempt goes through another
        // node, which forwards the request (and rides out a failover).
        let mut avoid: Option<SocketAddr> = None;
        loop {
            attempt += 1;
            let route = self.route(table).await?;
            let Some(s) = route.table.shards.get(shard as usize) else {
                return Err(ClientError::Data(DataError::invalid(format!(
                    "table {table:?} has no shard {shard}"
                ))));
            };
            let node = match read {
                None | Some(ReadMode::Strong) => s.replicas.primary.clone(),
                // Spread replica reads over the members, moving on after a miss.
                Some(_) => {
                    let members: Vec<&String> = s.replicas.members().collect();
                    let pick = (shard as usize + attempt as usize + std::process::id() as usize)
                        % members.len().max(1);
                    members
                        .get(pick)
                        .map(|m| (*m).clone())
                        .unwrap_or_else(|| s.replicas.primary.clone())
                }
            };
            let Some(&target) = route.nodes.get(&node) else {
                self.forget(table);
                return Err(ClientError::Data(DataError::unavailable(format!(
                    "node {node} of {table}/{shard} has no known address"
                ))));
            };
            let addr = match avoid {
                Some(a) if a == target => self.detour(&route, a).unwrap_or(target),
                _ => target,
            };
            let req = AdminRequest::Data(DataRequest::Routed {
                epoch: s.replicas.epoch,
                request: request.clone(),
            });
            let outcome: Result<(), ClientError> = match self.session_to(addr).await {
                Ok(session) => match session.request::<_, AdminReply>(&req).await {
                    Ok(AdminReply::Data(DataReply::Error(e))) => Err(ClientError::Data(e)),
                    Ok(AdminReply::Data(reply)) => return Ok(reply),
                    Ok(AdminReply::Error(e)) => return Err(ClientError::Server(e)),
                    Ok(_) => return Err(ClientError::Unexpected("not a data reply")),
                    Err(e) => {
                        self.drop_session(addr);
                        avoid = Some(addr);
                        Err(sent_error(e, write))
                    }
                },
                Err(e) => {
                    self.drop_session(addr);
                    avoid = Some(addr);
                    Err(e)
                }
            };
            let err = outcome.expect_err("replies returned above");
            let retry = match &err {
                ClientError::Data(e) => match e.kind {
                    ErrorKind::Stale | ErrorKind::Unavailable => true,
                    ErrorKind::Unknown => idempotent,
                    _ => false,
                },
                ClientError::Transport(_) => true,
                _ => false,
            };
            if !retry || started.elapsed() >= self.options.retry_for {
                return Err(err);
            }
            debug!(%table, shard, %node, error = %err, "resending");
            self.forget(table);
            if !matches!(&err, ClientError::Data(e) if e.kind == ErrorKind::Stale) {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    }

    /// Another node to send through than `avoid`: one already connected if
    /// possible.
    fn detour(&self, route: &Route, avoid: SocketAddr) -> Option<SocketAddr> {
        let sessions = self.sessions.lock().expect("sessions lock");
        let others = || route.nodes.values().copied().filter(move |a| *a != avoid);
        others()
            .find(|a| sessions.contains_key(a))
            .or_else(|| others().next())
    }

    async fn write(&self, table: &str, op: Op) -> Result<OpResult, ClientError> {
        let route = self.route(table).await?;
        let key = op.key().or_else(|| match &op {
            Op::Batch(ops) => ops.first().and_then(Op::key),
            _ => None,
        });
        let Some(key) = key else {
            return Err(ClientError::Data(DataError::invalid(
                "a batch needs at least one operation",
            )));
        };
        let shard = route.table.shard_of(key);
        let idempotent = op.is_idempotent();
        let request = ShardRequest::Write {
            table: table.to_owned(),
            shard,
            op,
        };
        match self.send(table, shard, request, None, idempotent).await? {
            DataReply::Written(r) => {
                self.observe(table, shard, seq_of(&r));
                Ok(r)
            }
            _ => Err(ClientError::Unexpected("a read reply to a write")),
        }
    }

    async fn key_column(&self, table: &str) -> Result<String, ClientError> {
        Ok(self.route(table).await?.table.spec.key.clone())
    }

    fn row_op(
        &self,
        key_column: &str,
        row: &str,
        make: impl FnOnce(SplitKey, String) -> Op,
    ) -> Result<Op, ClientError> {
        let (key, _) = check_row(row, key_column).map_err(DataError::from)?;
        Ok(make(key, row.to_owned()))
    }

    /// Creates or replaces a row (a JSON object); returns its new version.
    pub async fn put(&self, table: &str, row: &str) -> Result<u64, ClientError> {
        let col = self.key_column(table).await?;
        let op = self.row_op(&col, row, |key, row| Op::Put { key, row })?;
        version_of(self.write(table, op).await?)
    }

    /// Creates a row; fails with a `Conflict` if its key exists.
    pub async fn insert(&self, table: &str, row: &str) -> Result<u64, ClientError> {
        let col = self.key_column(table).await?;
        let op = self.row_op(&col, row, |key, row| Op::Insert { key, row })?;
        version_of(self.write(table, op).await?)
    }

    /// Merges columns into a row, only at `if_version` when given.
    pub async fn update(
        &self,
        table: &str,
        key: SplitKey,
        patch: &str,
        if_version: Option<u64>,
    ) -> Result<u64, ClientError> {
        let op = Op::Update {
            key,
            patch: patch.to_owned(),
            if_version,
        };
        version_of(self.write(table, op).await?)
    }

    /// Deletes a row, only at `if_version` when given.
    pub async fn delete(
        &self,
        table: &str,
        key: SplitKey,
        if_version: Option<u64>,
    ) -> Result<(), ClientError> {
        self.write(table, Op::Delete { key, if_version })
            .await
            .map(|_| ())
    }

    /// Applies writes all or nothing; every key must be in one shard. The
    /// results come in the order of `ops`.
    pub async fn batch(
        &self,
        table: &str,
        ops: Vec<BatchOp>,
    ) -> Result<Vec<OpResult>, ClientError> {
        let col = self.key_column(table).await?;
        let mut out = Vec::with_capacity(ops.len());
        for (i, b) in ops.into_iter().enumerate() {
            let op = match b {
                BatchOp::Put { row } => self.row_op(&col, &row, |key, row| Op::Put { key, row }),
                BatchOp::Insert { row } => {
                    self.row_op(&col, &row, |key, row| Op::Insert { key, row })
                }
                BatchOp::Update {
                    key,
                    patch,
                    if_version,
                } => Ok(Op::Update {
                    key,
                    patch,
                    if_version,
                }),
                BatchOp::Delete { key, if_version } => Ok(Op::Delete { key, if_version }),
            };
            out.push(op.map_err(|e| match e {
                ClientError::Data(d) => {
                    ClientError::Data(DataError::new(d.kind, format!("batch operation {i}: {d}")))
                }
                other => other,
            })?);
        }
        let route = self.route(table).await?;
        let mut keys = out.iter().filter_map(Op::key);
        if let Some(first) = keys.next() {
            let shard = route.table.shard_of(first);
            if let Some(other) = keys.find(|k| route.table.shard_of(k) != shard) {
                return Err(ClientError::Data(DataError::invalid(format!(
                    "a batch is atomic within one shard: key {first} is in {table}/{shard}, key {other} in {table}/{}",
                    route.table.shard_of(other)
                ))));
            }
        }
        match self.write(table, Op::Batch(out)).await? {
            OpResult::Batch(results) => Ok(results),
            _ => Err(ClientError::Unexpected(
                "a batch answered without its results",
            )),
        }
    }

    fn read_mode(&self, table: &str, shard: u32, c: Consistency) -> ReadMode {
        match c {
            Consistency::Strong => ReadMode::Strong,
            Consistency::Replica => ReadMode::Replica,
            Consistency::Session => ReadMode::AtLeast(self.token_of(table, shard)),
        }
    }

    /// Reads a row.
    pub async fn get(
        &self,
        table: &str,
        key: SplitKey,
        consistency: Consistency,
    ) -> Result<Option<RowRecord>, ClientError> {
        let shard = self.route(table).await?.table.shard_of(&key);
        let mode = self.read_mode(table, shard, consistency);
        let request = ShardRequest::Get {
            table: table.to_owned(),
            shard,
            key,
            mode,
        };
        match self.send(table, shard, request, Some(mode), true).await? {
            DataReply::Row(r) => {
                if let Some(r) = &r {
                    self.observe(table, shard, r.version);
                }
                Ok(r)
            }
            _ => Err(ClientError::Unexpected("not a row")),
        }
    }

    /// Rows with `from <= key < to` in key order, at most `limit` (capped at
    /// 10,000): every shard that can hold such keys is asked at once.
    pub async fn scan(
        &self,
        table: &str,
        from: Option<SplitKey>,
        to: Option<SplitKey>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<(SplitKey, RowRecord)>, ClientError> {
        let route = self.route(table).await?;
        let limit = limit.min(MAX_SCAN);
        let shards: Vec<u32> = route
            .table
            .shards
            .iter()
            .filter(|s| {
                may_hold(
                    &route.table.spec.sharding,
                    &s.range,
                    from.as_ref(),
                    to.as_ref(),
                )
            })
            .map(|s| s.index)
            .collect();
        let calls = shards.into_iter().map(|shard| {
            let mode = self.read_mode(table, shard, consistency);
            let request = ShardRequest::Scan {
                table: table.to_owned(),
                shard,
                from: from.clone(),
                to: to.clone(),
                limit,
                mode,
            };
            async move {
                match self.send(table, shard, request, Some(mode), true).await? {
                    DataReply::Rows(r) => {
                        if let Some(v) = r.iter().map(|(_, r)| r.version).max() {
                            self.observe(table, shard, v);
                        }
                        Ok(r)
                    }
                    _ => Err(ClientError::Unexpected("not rows")),
                }
            }
        });
        let mut rows = Vec::new();
        for r in futures::future::join_all(calls).await {
            rows.extend(r?);
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.truncate(limit);
        Ok(rows)
    }

    /// Closes every session.
    pub async fn close(self) {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in sessions {
            if let Ok(s) = Arc::try_unwrap(s) {
                s.close().await;
            }
        }
    }
}

/// A transport failure of a request that was sent: for a write, its
/// outcome is unknown unless the connection could not even be made.
fn sent_error(e: TransportError, write: bool) -> ClientError {
    match e {
        TransportError::Connect { .. } | TransportError::Backoff { .. } => e.into(),
        e if write => ClientError::Data(DataError::unknown(format!(
            "the write was sent but not answered ({e}); its outcome is unknown (read the row before retrying)"
        ))),
        e => e.into(),
    }
}

/// The log entry that wrote a result (0 for none).
fn seq_of(r: &OpResult) -> u64 {
    match r {
        OpResult::Written { version } => *version,
        OpResult::Deleted { seq } => *seq,
        OpResult::Batch(rs) => rs.iter().map(seq_of).max().unwrap_or(0),
    }
}

fn version_of(r: OpResult) -> Result<u64, ClientError> {
    match r {
        OpResult::Written { version } => Ok(version),
        _ => Err(ClientError::Unexpected("a result without a version")),
    }
}
