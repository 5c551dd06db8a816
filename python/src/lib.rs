//! `tstore._native`: the Rust side of the Python package.
//!
//! One [`Native`] object holds a tokio runtime, the routing client
//! ([`tstore_client::Client`], rows) and an admin client
//! ([`tstore_client::AdminClient`], the operations). Every method releases
//! the GIL while it waits on the network (`Python::detach`), so several
//! Python threads can use one object at once; the clients are `Sync` and
//! made for concurrent callers.
//!
//! The boundary is deliberately narrow: rows cross it as JSON text (the
//! Python wrapper, `tstore/__init__.py`, does `json.dumps`/`json.loads`),
//! operations' answers as JSON documents, and a failure as
//! `NativeError(kind, message)` whose kind is the wire's error kind in
//! snake case; the wrapper turns it into the matching `TStoreError`
//! subclass. No protocol is implemented here: everything goes through the
//! `client` crate, which links no actors, Raft or LMDB.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use serde_json::{json, Value};
use tstore_client::admin::{AdminClient, GossipWatch, WatchItem};
use tstore_client::batch::parse_batch;
use tstore_client::cluster_map::{NodeState, PlacementRule, RowKey, Sharding, Table, TableSpec};
use tstore_client::data::{ErrorKind, OpResult};
use tstore_client::wire::AdminErrorKind;
use tstore_client::{Client, ClientError, Consistency, ManualOp};

create_exception!(
    _native,
    NativeError,
    PyException,
    "A failed call: args are (kind, message); tstore's Python wrapper raises the matching TStoreError instead."
);

/// Rows `put_many` runs at once at most, whatever the caller asks.
const MAX_CONCURRENCY: usize = 1024;
/// How long one wait of a gossip watch lasts at most.
const MAX_WATCH_WAIT: Duration = Duration::from_secs(600);

/// A failure, with the GIL released: the kind the wrapper maps to an
/// exception class, and the message.
struct Failure {
    kind: &'static str,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let kind = match &e {
            ClientError::Data(d) => match d.kind {
                ErrorKind::Invalid => "invalid",
                ErrorKind::Conflict => "conflict",
                ErrorKind::Unavailable | ErrorKind::Stale => "unavailable",
                ErrorKind::Unknown | ErrorKind::Expired => "unknown",
                ErrorKind::TooLarge => "too_large",
                ErrorKind::BadKey => "bad_key",
                ErrorKind::NoTable => "no_table",
            },
            ClientError::Admin(a) => match a.kind {
                AdminErrorKind::Invalid => "admin_invalid",
                AdminErrorKind::Conflict => "admin_conflict",
                AdminErrorKind::Unavailable => "unavailable",
                AdminErrorKind::NotFound => "not_found",
                AdminErrorKind::Internal => "internal",
            },
            ClientError::Transport(_) | ClientError::NoNode(_) => "connection",
            ClientError::NoCertificate { .. } => "certificate",
            ClientError::Unexpected(_) => "internal",
        };
        Failure {
            kind,
            message: e.to_string(),
        }
    }
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Failure {
            kind: "invalid",
            message: message.into(),
        }
    }

    fn into_py(self) -> PyErr {
        NativeError::new_err((self.kind, self.message))
    }
}

type Res<T> = Result<T, Failure>;

/// A row key as Python gives it: an int or a str.
#[derive(Clone)]
enum Key {
    Int(i64),
    Str(String),
}

impl<'py> FromPyObject<'_, 'py> for Key {
    type Error = PyErr;

    fn extract(ob: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(i) = ob.extract::<i64>() {
            return Ok(Key::Int(i));
        }
        if let Ok(s) = ob.extract::<String>() {
            return Ok(Key::Str(s));
        }
        Err(NativeError::new_err((
            "bad_key",
            "a key is an integer (64-bit) or a string",
        )))
    }
}

impl From<Key> for RowKey {
    fn from(k: Key) -> RowKey {
        match k {
            Key::Int(i) => RowKey::Int(i),
            Key::Str(s) => RowKey::Str(s),
        }
    }
}

fn key_to_py<'py>(py: Python<'py>, k: &RowKey) -> PyResult<Bound<'py, PyAny>> {
    Ok(match k {
        RowKey::Int(i) => i.into_pyobject(py)?.into_any(),
        RowKey::Str(s) => s.into_pyobject(py)?.into_any(),
    })
}

fn key_json(k: &RowKey) -> Value {
    match k {
        RowKey::Int(i) => json!(i),
        RowKey::Str(s) => json!(s),
    }
}

fn consistency(name: &str) -> Res<Consistency> {
    name.parse().map_err(Failure::invalid)
}

/// The admin session, reconnected through another seed when its node went away.
struct Admin {
    seeds: Vec<SocketAddr>,
    certs: PathBuf,
    name: String,
    current: tokio::sync::Mutex<Option<Arc<AdminClient>>>,
}

impl Admin {
    async fn client(&self) -> Res<Arc<AdminClient>> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            return Ok(c.clone());
        }
        let mut last = Failure {
            kind: "connection",
            message: "no seed address given".into(),
        };
        for &seed in &self.seeds {
            match AdminClient::connect(seed, &self.certs, &self.name).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    *current = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    /// Runs an admin call; once more through another node if the
    /// connection failed (the node may have died).
    async fn call<T, F, Fut>(&self, f: F) -> Res<T>
    where
        F: Fn(Arc<AdminClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let client = self.client().await?;
            match f(client.clone()).await {
                Err(ClientError::Transport(_)) if attempts <= self.seeds.len() => {
                    let mut current = self.current.lock().await;
                    if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                        *current = None;
                    }
                }
                other => return other.map_err(Failure::from),
            }
        }
    }
}

/// A connection to a tstore cluster: the routing client for rows and an
/// admin client for operations, with their own tokio runtime.
#[pyclass(module = "tstore._native")]
struct Native {
    runtime: tokio::runtime::Runtime,
    rows: Arc<Client>,
    admin: Arc<Admin>,
}

impl Native {
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl std::future::Future<Output = Res<T>> + Send,
    ) -> PyResult<T> {
        py.detach(|| self.runtime.block_on(f))
            .map_err(Failure::into_py)
    }
}

fn parse_seeds(seeds: &[String]) -> Res<Vec<SocketAddr>> {
    seeds
        .iter()
        .map(|s| {
            use std::net::ToSocketAddrs;
            s.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| Failure {
                    kind: "connection",
                    message: format!("{s:?} is not a host:port address"),
                })
        })
        .collect()
}

fn map_version_doc(map_version: u64, table: &Table) -> Value {
    json!({ "map_version": map_version, "table": table_doc(table) })
}

/// A table as the Python package shows it.
fn table_doc(t: &Table) -> Value {
    let (sharding, splits) = match &t.spec.sharding {
        Sharding::Hash { shards } => (json!({"kind": "hash", "shards": shards}), Value::Null),
        Sharding::Range { splits } => (
            json!({"kind": "range", "shards": splits.len() + 1}),
            Value::Array(splits.iter().map(key_json).collect()),
        ),
    };
    json!({
        "name": t.spec.name,
        "id": t.id,
        "key": t.spec.key,
        "sharding": sharding,
        "range_splits": splits,
        "replicas": t.spec.replicas,
        "min_copies": t.spec.min_copies(),
        "placement": t.placement.as_ref().map(|r| json!({
            "primaries": r.primaries,
            "backups": r.backups,
        })),
        "shards": t.shards.iter().map(|s| json!({
            "index": s.index,
            "name": format!("{}/{}", t.spec.name, s.index),
            "keys": s.range.to_string(),
            "primary": s.replicas.primary,
            "backups": s.replicas.backups,
            "learners": s.replicas.learners,
            "epoch": s.replicas.epoch,
            "away": s.replicas.away.iter().map(|a| a.node.clone()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Res<String> {
    serde_json::to_string(v).map_err(|e| Failure {
        kind: "internal",
        message: format!("encoding an answer as JSON: {e}"),
    })
}

#[pymethods]
impl Native {
    /// Connects to the cluster through `seeds` ("host:port"), with the
    /// client certificate `client-<client_name>` of the `certs` directory.
    #[new]
    fn new(
        py: Python<'_>,
        seeds: Vec<String>,
        certs: String,
        client_name: String,
    ) -> PyResult<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tstore-client")
            .enable_all()
            .build()
            .map_err(|e| {
                Failure {
                    kind: "internal",
                    message: format!("starting the client's runtime: {e}"),
                }
                .into_py()
            })?;
        let addrs = parse_seeds(&seeds).map_err(Failure::into_py)?;
        let certs = PathBuf::from(certs);
        let rows = py
            .detach(|| runtime.block_on(Client::connect(&addrs, &certs, &client_name)))
            .map_err(|e| Failure::from(e).into_py())?;
        Ok(Native {
            runtime,
            rows: Arc::new(rows),
            admin: Arc::new(Admin {
                seeds: addrs,
                certs,
                name: client_name,
                current: tokio::sync::Mutex::new(None),
            }),
        })
    }

    // ----- rows -----

    /// Creates or replaces a row given as JSON text; returns its version.
    fn put(&self, py: Python<'_>, table: String, row: String) -> PyResult<u64> {
        let rows = &self.rows;
        self.run(py, async move { Ok(rows.put(&table, &row).await?) })
    }

    /// Creates a row; a `conflict` if its key exists.
    fn insert(&self, py: Python<'_>, table: String, row: String) -> PyResult<u64> {
        let rows = &self.rows;
        self.run(py, async move { Ok(rows.insert(&table, &row).await?) })
    }

    /// Merges the columns of `patch` (JSON text) into a row, only at
    /// `if_version` when given; returns the new version.
    #[pyo3(signature = (table, key, patch, if_version=None))]
    fn update(
        &self,
        py: Python<'_>,
        table: String,
        key: Key,
        patch: String,
        if_version: Option<u64>,
    ) -> PyResult<u64> {
        let rows = &self.rows;
        self.run(py, async move {
            Ok(rows.update(&table, key.into(), &patch, if_version).await?)
        })
    }

    /// Deletes a row, only at `if_version` when given.
    #[pyo3(signature = (table, key, if_version=None))]
    fn delete(
        &self,
        py: Python<'_>,
        table: String,
        key: Key,
        if_version: Option<u64>,
    ) -> PyResult<()> {
        let rows = &self.rows;
        self.run(py, async move {
            Ok(rows.delete(&table, key.into(), if_version).await?)
        })
    }

    /// Reads a row: `(json, version)`, or None when it does not exist.
    fn get(
        &self,
        py: Python<'_>,
        table: String,
        key: Key,
        consistency: &str,
    ) -> PyResult<Option<(String, u64)>> {
        let rows = &self.rows;
        let c = consistency_of(consistency)?;
        self.run(py, async move {
            Ok(rows
                .get(&table, key.into(), c)
                .await?
                .map(|r| (r.json, r.version)))
        })
    }

    /// Rows with `start <= key < end` in key order, at most `limit`
    /// (at most 10,000): a list of `(key, json, version)`.
    #[pyo3(signature = (table, start, end, limit, consistency))]
    fn scan<'py>(
        &self,
        py: Python<'py>,
        table: String,
        start: Option<Key>,
        end: Option<Key>,
        limit: usize,
        consistency: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let rows = &self.rows;
        let c = consistency_of(consistency)?;
        let found = self.run(py, async move {
            Ok(rows
                .scan(&table, start.map(Into::into), end.map(Into::into), limit, c)
                .await?)
        })?;
        let list = PyList::empty(py);
        for (k, r) in found {
            let item = PyTuple::new(
                py,
                [
                    key_to_py(py, &k)?,
                    r.json.into_pyobject(py)?.into_any(),
                    r.version.into_pyobject(py)?.into_any(),
                ],
            )?;
            list.append(item)?;
        }
        Ok(list)
    }

    /// Several writes (the CLI's batch grammar, as JSON text), all or
    /// nothing, within one shard: each write's new version (None for a delete).
    fn batch(&self, py: Python<'_>, table: String, ops: String) -> PyResult<Vec<Option<u64>>> {
        let rows = &self.rows;
        self.run(py, async move {
            let ops = parse_batch(&ops).map_err(ClientError::Data)?;
            let results = rows.batch(&table, ops).await?;
            Ok(results
                .into_iter()
                .map(|r| match r {
                    OpResult::Written { version } => Some(version),
                    _ => None,
                })
                .collect())
        })
    }

    /// Writes many rows (JSON texts), `concurrency` at a time; `insert`
    /// refuses existing keys, else rows are put. Returns the failures:
    /// `(index, kind, message)`.
    fn write_many(
        &self,
        py: Python<'_>,
        table: String,
        rows_json: Vec<String>,
        concurrency: usize,
        insert: bool,
    ) -> PyResult<Vec<(usize, String, String)>> {
        let rows = self.rows.clone();
        let table: Arc<str> = table.into();
        let concurrency = concurrency.clamp(1, MAX_CONCURRENCY);
        self.run(py, async move {
            let failures = futures::stream::iter(rows_json.into_iter().enumerate())
                .map(|(i, row)| {
                    let (rows, table) = (rows.clone(), table.clone());
                    async move {
                        let r = if insert {
                            rows.insert(&table, &row).await
                        } else {
                            rows.put(&table, &row).await
                        };
                        r.err().map(|e| {
                            let f = Failure::from(e);
                            (i, f.kind.to_owned(), f.message)
                        })
                    }
                })
                .buffer_unordered(concurrency)
                .filter_map(|f| async move { f })
                .collect::<Vec<_>>()
                .await;
            Ok(failures)
        })
    }

    // ----- operations -----

    /// Creates a table; returns it as committed (a JSON document).
    #[pyo3(signature = (name, key, shards, range_splits, replicas, min_copies))]
    #[allow(clippy::too_many_arguments)] // one per argument of the Python method
    fn create_table(
        &self,
        py: Python<'_>,
        name: String,
        key: String,
        shards: Option<u32>,
        range_splits: Option<Vec<Key>>,
        replicas: u32,
        min_copies: u32,
    ) -> PyResult<String> {
        let sharding = match (shards, range_splits) {
            (Some(_), Some(_)) => {
                return Err(Failure {
                    kind: "admin_invalid",
                    message: "give shards or range_splits, not both".into(),
                }
                .into_py())
            }
            (_, Some(splits)) => Sharding::Range {
                splits: splits.into_iter().map(Into::into).collect(),
            },
            (shards, None) => Sharding::Hash {
                shards: shards.unwrap_or(8),
            },
        };
        let spec = TableSpec {
            name,
            key,
            sharding,
            replicas,
            min_copies,
        };
        let admin = &self.admin;
        self.run(py, async move {
            let (v, t) = admin
                .call(|c| {
                    let spec = spec.clone();
                    async move { c.create_table(spec).await }
                })
                .await?;
            to_json(&map_version_doc(v, &t))
        })
    }

    /// Drops a table; returns the map version without it.
    fn drop_table(&self, py: Python<'_>, name: String) -> PyResult<u64> {
        let admin = &self.admin;
        self.run(py, async move {
            admin
                .call(|c| {
                    let name = name.clone();
                    async move { c.drop_table(&name).await }
                })
                .await
        })
    }

    /// Sets a table's placement rule (node ids); empty `primaries` clears
    /// it. Returns the map version.
    fn set_placement(
        &self,
        py: Python<'_>,
        table: String,
        primaries: Vec<String>,
        backups: Vec<String>,
    ) -> PyResult<u64> {
        let rule = (!primaries.is_empty()).then_some(PlacementRule { primaries, backups });
        let admin = &self.admin;
        self.run(py, async move {
            admin
                .call(|c| {
                    let (table, rule) = (table.clone(), rule.clone());
                    async move { c.set_placement(&table, rule).await }
                })
                .await
        })
    }

    /// One table with its shards (a JSON document).
    fn describe(&self, py: Python<'_>, name: String) -> PyResult<String> {
        let admin = &self.admin;
        self.run(py, async move {
            let (v, t) = admin
                .call(|c| {
                    let name = name.clone();
                    async move { c.describe(&name).await }
                })
                .await?;
            to_json(&map_version_doc(v, &t))
        })
    }

    /// Every table (a JSON document).
    fn tables(&self, py: Python<'_>) -> PyResult<String> {
        let admin = &self.admin;
        self.run(py, async move {
            let (v, ts) = admin.call(|c| async move { c.tables().await }).await?;
            to_json(&json!({
                "map_version": v,
                "tables": ts.iter().map(table_doc).collect::<Vec<_>>(),
            }))
        })
    }

    /// The member list as the contacted node sees it (a JSON document).
    fn members(&self, py: Python<'_>) -> PyResult<String> {
        let admin = &self.admin;
        self.run(py, async move {
            let (observer, members) = admin.call(|c| async move { c.members().await }).await?;
            to_json(&json!({ "observer": observer, "members": members }))
        })
    }

    /// The raw gossip state (a JSON document).
    fn gossip(&self, py: Python<'_>) -> PyResult<String> {
        let admin = &self.admin;
        self.run(py, async move {
            let g = admin.call(|c| async move { c.gossip().await }).await?;
            to_json(&g)
        })
    }

    /// The control plane as the contacted node sees it (a JSON document).
    fn cluster(&self, py: Python<'_>) -> PyResult<String> {
        let admin = &self.admin;
        self.run(py, async move {
            let s = admin.call(|c| async move { c.cluster().await }).await?;
            to_json(&s)
        })
    }

    /// The coordinator's decisions, oldest first (a JSON document).
    fn events(&self, py: Python<'_>) -> PyResult<String> {
        let admin = &self.admin;
        self.run(py, async move {
            let (v, events) = admin.call(|c| async move { c.events().await }).await?;
            to_json(&json!({ "map_version": v, "events": events }))
        })
    }

    /// Every copy of every shard of a table with its replication state (a
    /// JSON document); with `checksums`, a checksum of each copy's rows.
    fn copies(&self, py: Python<'_>, table: String, checksums: bool) -> PyResult<String> {
        let admin = &self.admin;
        self.run(py, async move {
            let c = admin
                .call(|c| {
                    let table = table.clone();
                    async move { c.copies(&table, checksums).await }
                })
                .await?;
            to_json(&c)
        })
    }

    /// Marks a node `draining` or `active`; returns the map version.
    fn set_node_state(&self, py: Python<'_>, node: String, state: &str) -> PyResult<u64> {
        let state = match state {
            "draining" => NodeState::Draining,
            "active" => NodeState::Active,
            other => {
                return Err(Failure {
                    kind: "admin_invalid",
                    message: format!("node state {other:?}: use draining or active"),
                }
                .into_py())
            }
        };
        let admin = &self.admin;
        self.run(py, async move {
            admin
                .call(|c| {
                    let node = node.clone();
                    async move { c.set_node_state(&node, state).await }
                })
                .await
        })
    }

    /// An operator's change to one shard: `promote` (node), `move` (node
    /// to `to`), `remove` (node). Returns the map version.
    #[pyo3(signature = (table, shard, op, node, to=None))]
    fn shard_op(
        &self,
        py: Python<'_>,
        table: String,
        shard: u32,
        op: &str,
        node: String,
        to: Option<String>,
    ) -> PyResult<u64> {
        let op = match (op, to) {
            ("promote", None) => ManualOp::Promote { node },
            ("move", Some(to)) => ManualOp::Move { from: node, to },
            ("remove", None) => ManualOp::RemoveReplica { node },
            (other, _) => {
                return Err(Failure {
                    kind: "admin_invalid",
                    message: format!(
                        "shard operation {other:?}: use promote, move (with to) or remove"
                    ),
                }
                .into_py())
            }
        };
        let admin = &self.admin;
        self.run(py, async move {
            admin
                .call(|c| {
                    let (table, op) = (table.clone(), op.clone());
                    async move { c.shard_op(&table, shard, op).await }
                })
                .await
        })
    }

    /// Streams the gossip state, then its changes.
    fn watch_gossip(&self, py: Python<'_>) -> PyResult<Watch> {
        let admin = &self.admin;
        let watch = self.run(py, async move {
            let c = admin.client().await?;
            Ok(c.watch_gossip().await?)
        })?;
        Ok(Watch {
            handle: self.runtime.handle().clone(),
            watch: Arc::new(tokio::sync::Mutex::new(watch)),
        })
    }

    /// Closes every connection. The object is unusable afterwards.
    fn close(&self, py: Python<'_>) {
        let admin = &self.admin;
        py.detach(|| {
            self.runtime.block_on(async {
                if let Some(c) = admin.current.lock().await.take() {
                    if let Ok(c) = Arc::try_unwrap(c) {
                        c.close().await;
                    }
                }
            })
        })
    }
}

fn consistency_of(name: &str) -> PyResult<Consistency> {
    consistency(name).map_err(Failure::into_py)
}

/// A running gossip watch.
#[pyclass(module = "tstore._native")]
struct Watch {
    handle: tokio::runtime::Handle,
    watch: Arc<tokio::sync::Mutex<GossipWatch>>,
}

#[pymethods]
impl Watch {
    /// The next item as a JSON document (`{"snapshot": ...}` or
    /// `{"changes": [...], "at_unix_ms": ...}`); None when the node ended
    /// the watch or `timeout` seconds passed first.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<String>> {
        let wait = timeout
            .map(|t| Duration::from_secs_f64(t.max(0.0)))
            .unwrap_or(MAX_WATCH_WAIT)
            .min(MAX_WATCH_WAIT);
        let watch = self.watch.clone();
        py.detach(|| {
            self.handle.block_on(async move {
                let mut w = watch.lock().await;
                match tokio::time::timeout(wait, w.next()).await {
                    Err(_) => Ok(None),
                    Ok(Err(e)) => Err(Failure::from(e)),
                    Ok(Ok(None)) => Ok(None),
                    Ok(Ok(Some(WatchItem::Snapshot(s)))) => {
                        to_json(&json!({ "snapshot": s })).map(Some)
                    }
                    Ok(Ok(Some(WatchItem::Changes {
                        at_unix_ms,
                        changes,
                    }))) => {
                        to_json(&json!({ "at_unix_ms": at_unix_ms, "changes": changes })).map(Some)
                    }
                }
            })
        })
        .map_err(Failure::into_py)
    }
}

/// The module `tstore._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add_class::<Native>()?;
    m.add_class::<Watch>()?;
    Ok(())
}
