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
//! The client alone owns retries; nodes forward a request at most once and
//! otherwise answer `Stale`, `Unavailable` or `Unknown`. Every write carries
//! a request identity (this client's id, a sequence number, and the lowest
//! sequence number it still waits for on that shard; see
//! `tstore_core::data::sessions`),
//! the same on every resend, and the shard applies a request once and
//! answers a resend with the first outcome. So any write may be resent:
//! one refused (`Unavailable`, `Stale`, a connection that could not be
//! made) or whose outcome is unknown (its node went away after it was sent)
//! is resent for up to [`ClientOptions::retry_for`] with backoff. A write
//! reported `Unknown` is one for which no attempt got an answer within that
//! budget after one may have been applied.
//!
//! Read-your-writes: the client keeps a session token, the highest log entry
//! it has written or read per shard. A [`Consistency::Session`] read is
//! served by any in-sync copy that has applied that entry, else by the
//! primary. The token can be saved and carried to another client
//! ([`Client::session`], [`Client::resume_session`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), tstore_client::admin::ClientError> {
//! use tstore_client::routing::{Client, Consistency};
//! use tstore_client::cluster_map::RowKey;
//! let seeds = ["127.0.0.1:7401".parse().unwrap()];
//! let client = Client::connect(&seeds, "certs".as_ref(), "admin").await?;
//! client.put("user", r#"{"id":1,"name":"Alice","age":25}"#).await?;
//! let row = client.get("user", RowKey::Int(1), Consistency::Session).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::debug;
use tstore_core::cluster_map::{may_hold, KeyRange};
use tstore_core::cluster_map::{RowKey, Table};
use tstore_core::data::ops::{Op, OpResult, RowRecord};
use tstore_core::data::sessions::{ClientId, RequestId};
use tstore_core::data::validate::{batch_op, row_op, shard_of_write};
use tstore_core::shard::ShardKey;
use tstore_core::wire::ReadMode;
use tstore_core::wire::MAX_SCAN;
use tstore_core::wire::{
    AdminReply, AdminRequest, BatchOp, DataError, DataReply, DataRequest, ErrorKind, ShardRequest,
};
use tstore_transport::certs::CertDir;
use tstore_transport::{ClientSession, Limits, Role, TlsIdentity, TransportError};

use crate::coalesce::{Coalescer, TrafficCounters};
use crate::error::ClientError;

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

impl Consistency {
    /// Every consistency, by the name [`FromStr`](std::str::FromStr) reads.
    pub const NAMES: [&'static str; 3] = ["strong", "replica", "session"];
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Consistency::Strong => "strong",
            Consistency::Replica => "replica",
            Consistency::Session => "session",
        })
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strong" => Ok(Consistency::Strong),
            "replica" => Ok(Consistency::Replica),
            "session" => Ok(Consistency::Session),
            other => Err(format!(
                "unknown read consistency {other:?} (use {})",
                Consistency::NAMES.join(", ")
            )),
        }
    }
}

/// Tuning of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long a request is resent while its shard cannot take it (a
    /// failover rides inside this).
    pub retry_for: Duration,
    /// How long one attempt waits for its answer before the client looks
    /// for a new route. Short: a resent write is recognised by its identity,
    /// so giving up on an attempt early costs a resend, not a double write.
    pub attempt_timeout: Duration,
    /// How long a QUIC handshake with a node may take. Short: a node that
    /// does not answer quickly is routed around (another node forwards).
    pub connect_timeout: Duration,
    /// Send every request to the seed nodes only (the first one that has
    /// not just failed), which forward it: for a client that can reach only
    /// those nodes. Off by default: requests go straight to the node that
    /// serves them.
    pub pinned: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            retry_for: Duration::from_secs(10),
            attempt_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_millis(750),
            pinned: false,
        }
    }
}

/// A session token: per shard (keyed by the shard's name, `table/index`,
/// as [`ShardKey`] displays it, so the token reads well as JSON), the
/// highest log entry this client wrote or read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionToken(pub BTreeMap<String, u64>);

/// Row requests a [`Client`] sent (each attempt counts) and the QUIC
/// streams they took: requests in flight to one node at the same moment
/// share one stream (see the `coalesce` module).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub requests: u64,
    pub streams: u64,
}

/// A table's routing, as cached.
struct Route {
    table: Table,
    nodes: HashMap<String, SocketAddr>,
}

const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Plans a scan makes at most when shards split under it.
const MAX_SCAN_PLANS: u32 = 8;
/// While an attempt waits longer than this (and every time as long again),
/// the client asks another node whether the shard has moved on to a new
/// epoch: its primary died (or handed over) and a new one serves. It then
/// resends at once to the new primary rather than wait out
/// `attempt_timeout` on a node that may be dead. A write carries its
/// identity, so the resend is recognised if the first attempt was applied.
const MOVED_CHECK: Duration = Duration::from_millis(200);
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The identities of this client's write requests.
#[derive(Default)]
struct Ids {
    /// The id new requests take; renewed before it is half the shards'
    /// client time-to-live old.
    current: Option<ClientId>,
    next_seq: u64,
    /// Requests sent and not yet finished: (id, table, shard, sequence
    /// number). A request's "first incomplete" mark counts only the
    /// requests to its shard, so a request stuck on another shard (a
    /// failover) does not keep this shard remembering every outcome
    /// meanwhile; but in a table that was ever split it counts every
    /// request to the table: a split can move a request's key to the shard
    /// split off, which recognises the request by the outcomes it got from
    /// the parent, and must not have forgotten them because of a mark that
    /// left the request out.
    in_flight: BTreeSet<(ClientId, String, u32, u64)>,
}

/// Removes a request from the in-flight set when it finishes, however it
/// finishes (also when its future is dropped).
struct InFlight<'a> {
    ids: &'a Mutex<Ids>,
    table: String,
    shard: u32,
    id: RequestId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut ids = self.ids.lock().expect("ids lock");
        let table = std::mem::take(&mut self.table);
        ids.in_flight
            .remove(&(self.id.client, table, self.shard, self.id.seq));
    }
}

/// The client certificate `client-<name>` of a `tstore cert` directory, or
/// an error that says how to create it.
pub(crate) fn client_identity(certs: &Path, name: &str) -> Result<TlsIdentity, ClientError> {
    let dir = CertDir::new(certs);
    let (cert, _) = dir.leaf(Role::Client, name);
    if !cert.exists() {
        return Err(ClientError::NoCertificate {
            path: cert.display().to_string(),
            dir: certs.display().to_string(),
            name: name.to_owned(),
        });
    }
    Ok(dir.identity(Role::Client, name)?)
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The routing client. Cheap to share behind an `Arc`; every method takes
/// `&self` and may run concurrently.
pub struct Client {
    identity: TlsIdentity,
    seeds: Vec<SocketAddr>,
    options: ClientOptions,
    /// One session per node, with the queue that coalesces its row requests.
    sessions: Mutex<HashMap<SocketAddr, Arc<Coalescer>>>,
    traffic: Arc<TrafficCounters>,
    routes: Mutex<HashMap<String, Arc<Route>>>,
    token: Mutex<SessionToken>,
    ids: Mutex<Ids>,
    /// The cluster's wall clock minus ours, from the last route fetched.
    clock_offset_ms: AtomicI64,
    /// Nodes that just failed an attempt, until when: requests for them go
    /// through another node meanwhile (which answers `Stale` once the map
    /// has moved on, or forwards).
    suspects: Mutex<HashMap<SocketAddr, Instant>>,
    /// When each table's route was last fetched to see whether a shard
    /// moved on (`moved_on`): at most one fetch per table per half
    /// [`MOVED_CHECK`], however many requests wait.
    route_checked: Mutex<HashMap<String, Instant>>,
}

/// How long a node that failed an attempt is routed around.
const SUSPECT_FOR: Duration = Duration::from_secs(2);

impl Client {
    /// Connects with the client certificate `client-<name>` from a `tstore
    /// cert` directory; `seeds` are nodes to learn the map from (one is
    /// enough, more ride out its loss).
    pub async fn connect(
        seeds: &[SocketAddr],
        certs: &Path,
        name: &str,
    ) -> Result<Self, ClientError> {
        let identity = client_identity(certs, name)?;
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
            traffic: Arc::default(),
            routes: Mutex::default(),
            token: Mutex::default(),
            ids: Mutex::default(),
            clock_offset_ms: AtomicI64::new(0),
            suspects: Mutex::default(),
            route_checked: Mutex::default(),
        };
        let mut last = None;
        for &seed in seeds {
            match client.session_to(seed).await {
                Ok(_) => return Ok(client),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::NoNode("no seed address given".into())))
    }

    /// The row requests this client sent so far and the streams they took.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            requests: self.traffic.requests.load(Ordering::Relaxed),
            streams: self.traffic.streams.load(Ordering::Relaxed),
        }
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
        let e =
            t.0.entry(ShardKey::new(table, shard).to_string())
                .or_default();
        *e = (*e).max(seq);
    }

    fn token_of(&self, table: &str, shard: u32) -> u64 {
        let t = self.token.lock().expect("token lock");
        t.0.get(&ShardKey::new(table, shard).to_string())
            .copied()
            .unwrap_or(0)
    }

    async fn session_to(&self, addr: SocketAddr) -> Result<Arc<Coalescer>, ClientError> {
        if let Some(s) = self.sessions.lock().expect("sessions lock").get(&addr) {
            return Ok(s.clone());
        }
        let limits = Limits {
            request_timeout: self.options.attempt_timeout,
            connect_timeout: self.options.connect_timeout,
            ..Limits::default()
        };
        let s = Arc::new(ClientSession::connect(addr, &self.identity, limits).await?);
        let s = Arc::new(Coalescer::new(
            s,
            self.options.attempt_timeout,
            self.traffic.clone(),
        ));
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
            .filter(|a| !self.is_suspect(*a))
            .collect();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(*seed);
            }
        }
        let mut last = ClientError::NoNode("no node to ask for the map".into());
        for addr in candidates {
            let reply = match self.session_to(addr).await {
                Ok(s) => s
                    .session()
                    .request::<_, AdminReply>(&AdminRequest::Route {
                        table: table.to_owned(),
                    })
                    .await
                    .map_err(ClientError::from),
                Err(e) => Err(e),
            };
            match reply {
                Ok(AdminReply::Route {
                    table: t,
                    nodes,
                    now_unix_ms,
                    ..
                }) => {
                    self.clock_offset_ms
                        .store(now_unix_ms as i64 - wall_ms(), Ordering::Relaxed);
                    return Ok(self.cache_route(table, t, nodes));
                }
                Ok(AdminReply::Data(DataReply::Error(e))) => return Err(ClientError::Data(e)),
                Ok(AdminReply::Error(e)) => return Err(ClientError::Admin(e)),
                Ok(_) => last = ClientError::Unexpected("not a route"),
                Err(e) => {
                    self.drop_session(addr);
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// A new write request's identity for shard `shard` of `t`, registered
    /// as in flight until the returned guard is dropped.
    fn begin_request(&self, t: &Table, shard: u32) -> InFlight<'_> {
        let mut ids = self.ids.lock().expect("ids lock");
        let now = (wall_ms() + self.clock_offset_ms.load(Ordering::Relaxed)).max(0) as u64;
        let client = match ids.current {
            Some(c) if c.is_fresh(now) => c,
            _ => {
                let nonce = std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish();
                let c = ClientId::new(now, nonce);
                ids.current = Some(c);
                ids.next_seq = 1;
                c
            }
        };
        let seq = ids.next_seq;
        ids.next_seq += 1;
        let table = t.spec.name.clone();
        ids.in_flight.insert((client, table.clone(), shard, seq));
        // Counted over the whole table, not the shard: a request resent to
        // another shard after a split, or to the shard that took its keys
        // in a merge (which keeps the higher of the two shards' marks), must
        // not find that shard's mark raised over it by another request.
        let first_incomplete = ids
            .in_flight
            .range((client, table.clone(), 0, 0)..)
            .take_while(|(c, tb, _, _)| *c == client && *tb == table)
            .map(|(_, _, _, q)| *q)
            .min()
            .unwrap_or(seq);
        InFlight {
            ids: &self.ids,
            table,
            shard,
            id: RequestId {
                client,
                seq,
                first_incomplete,
            },
        }
    }

    /// Sends one shard request to the node that serves it, refreshing the
    /// route and resending within the retry budget. `read`: the read mode,
    /// `None` for a write (which carries its identity, so resends are safe).
    /// Returns the reply and the shard that gave it: the key's shard in the
    /// newest map, which a split may have changed since `shard`.
    async fn send(
        &self,
        table: &str,
        shard: u32,
        request: ShardRequest,
        read: Option<ReadMode>,
    ) -> Result<(DataReply, u32), ClientError> {
        let write = read.is_none();
        let started = Instant::now();
        // Some attempt of this write may have been applied: a final failure
        // is then `Unknown`, never "not applied".
        let mut maybe_applied = false;
        let mut pause = RETRY_PAUSE;
        let mut attempt = 0u32;
        let mut stale_before = false;
        loop {
            attempt += 1;
            let route = self.route(table).await?;
            // A split since the last attempt may have moved the key.
            let shard = request.shard_in(&route.table).unwrap_or(shard);
            let Some(s) = route.table.shards.get(shard as usize) else {
                // A request of no one key (a scan) planned before a merge
                // took the shard away: its caller plans it again.
                return Err(ClientError::Data(DataError::new(
                    ErrorKind::Stale,
                    format!("table {table:?} has no shard {shard} now (merged into another)"),
                )));
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
            // A node that just failed us is reached through another node.
            let addr = if self.options.pinned {
                self.seeds
                    .iter()
                    .copied()
                    .find(|a| !self.is_suspect(*a))
                    .unwrap_or(self.seeds[0])
            } else if self.is_suspect(target) {
                self.detour(&route, target).unwrap_or(target)
            } else {
                target
            };
            let req = DataRequest::Routed {
                epoch: s.replicas.epoch,
                request: request.to(shard, s.replicas.epoch),
            };
            let outcome: Result<(), ClientError> = match self.session_to(addr).await {
                Ok(session) => match self
                    .call_watching(&session, req, &route, table, shard, addr)
                    .await
                {
                    Some(r) => match r {
                        Ok(AdminReply::Data(DataReply::Error(e))) => Err(ClientError::Data(e)),
                        Ok(AdminReply::Data(reply)) => return Ok((reply, shard)),
                        Ok(AdminReply::Error(e)) => return Err(ClientError::Admin(e)),
                        Ok(_) => return Err(ClientError::Unexpected("not a data reply")),
                        Err(e) => {
                            self.drop_session(addr);
                            self.suspect(addr);
                            Err(sent_error(e, write))
                        }
                    },
                    None => {
                        // The new route is cached: resend now. The node we
                        // waited on is likely dead: route around it.
                        debug!(%table, shard, %node, "the shard moved on while an attempt waited; resending to its new primary");
                        self.suspect(addr);
                        maybe_applied |= write;
                        continue;
                    }
                },
                Err(e) => {
                    self.drop_session(addr);
                    self.suspect(addr);
                    Err(e)
                }
            };
            let err = outcome.expect_err("replies returned above");
            let retry = match &err {
                ClientError::Data(e) => matches!(
                    e.kind,
                    ErrorKind::Stale | ErrorKind::Unavailable | ErrorKind::Unknown
                ),
                ClientError::Transport(_) => true,
                _ => false,
            };
            maybe_applied |= matches!(&err, ClientError::Data(e) if e.kind == ErrorKind::Unknown);
            if !retry || started.elapsed() >= self.options.retry_for {
                return Err(match err {
                    // `Invalid` too: a batch whose keys a split has since
                    // put in two shards cannot be resent, which says
                    // nothing of the attempt that may have been applied.
                    ClientError::Data(e)
                        if maybe_applied
                            && matches!(
                                e.kind,
                                ErrorKind::Stale | ErrorKind::Unavailable | ErrorKind::Invalid
                            ) =>
                    {
                        ClientError::Data(DataError::unknown(format!(
                            "an attempt of this write may have been applied, and no later attempt got an answer within {:?}: its outcome is unknown (read the row before retrying); last: {e}",
                            self.options.retry_for
                        )))
                    }
                    ClientError::Transport(e) if maybe_applied => {
                        ClientError::Data(DataError::unknown(format!(
                            "an attempt of this write may have been applied, and no later attempt got an answer within {:?}: its outcome is unknown (read the row before retrying); last: {e}",
                            self.options.retry_for
                        )))
                    }
                    other => other,
                });
            }
            debug!(%table, shard, %node, error = %err, "resending");
            self.forget(table);
            // A first `Stale` is resent at once with the fresh map; more
            // (the node's map is the one behind, or the two disagree) wait
            // like any other refusal.
            let stale = matches!(&err, ClientError::Data(e) if e.kind == ErrorKind::Stale);
            if !stale || std::mem::replace(&mut stale_before, true) {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    }

    /// One attempt on `session`; while it waits, checks every
    /// [`MOVED_CHECK`] with another node whether the shard has moved on.
    /// `None`: it has (a newer epoch, whose route is now cached).
    async fn call_watching(
        &self,
        session: &Coalescer,
        req: DataRequest,
        route: &Route,
        table: &str,
        shard: u32,
        addr: SocketAddr,
    ) -> Option<Result<AdminReply, TransportError>> {
        let epoch = route
            .table
            .shards
            .get(shard as usize)
            .map(|s| s.replicas.epoch);
        let call = session.call(req);
        tokio::pin!(call);
        let start = tokio::time::Instant::now() + MOVED_CHECK;
        let mut check = tokio::time::interval_at(start, MOVED_CHECK);
        loop {
            tokio::select! {
                r = &mut call => return Some(r),
                _ = check.tick() => {
                    if let Some(epoch) = epoch {
                        if self.moved_on(table, shard, epoch, route, addr).await {
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// Asks a node other than `avoid` for `table`'s route (within
    /// [`MOVED_CHECK`]); if `shard` is past `epoch` there, caches the new
    /// route and says so.
    async fn moved_on(
        &self,
        table: &str,
        shard: u32,
        epoch: u64,
        route: &Route,
        avoid: SocketAddr,
    ) -> bool {
        let past = |t: &Table| {
            t.shards
                .get(shard as usize)
                .is_some_and(|s| s.replicas.epoch > epoch)
        };
        // Another waiting request may have fetched the news already.
        let cached = self.routes.lock().expect("routes lock").get(table).cloned();
        if cached.is_some_and(|r| past(&r.table)) {
            return true;
        }
        {
            let mut checked = self.route_checked.lock().expect("route_checked lock");
            let now = Instant::now();
            if checked
                .get(table)
                .is_some_and(|at| now.duration_since(*at) < MOVED_CHECK / 2)
            {
                return false;
            }
            checked.insert(table.to_owned(), now);
        }
        let Some(other) = self.detour(route, avoid) else {
            return false;
        };
        let ask = async {
            let session = self.session_to(other).await.ok()?;
            let reply = session
                .session()
                .request::<_, AdminReply>(&AdminRequest::Route {
                    table: table.to_owned(),
                })
                .await
                .ok()?;
            match reply {
                AdminReply::Route {
                    table: t, nodes, ..
                } => Some((t, nodes)),
                _ => None,
            }
        };
        let Ok(Some((t, nodes))) = tokio::time::timeout(MOVED_CHECK, ask).await else {
            return false;
        };
        let moved = past(&t);
        if moved {
            self.cache_route(table, t, nodes);
        }
        moved
    }

    /// Caches a table's route as a node answered it (`nodes`: id and
    /// address of every node of the map).
    fn cache_route(
        &self,
        name: &str,
        table: Table,
        nodes: impl IntoIterator<Item = (String, String)>,
    ) -> Arc<Route> {
        let nodes = nodes
            .into_iter()
            .filter_map(|(id, a)| Some((id, a.parse().ok()?)))
            .collect();
        let route = Arc::new(Route { table, nodes });
        self.routes
            .lock()
            .expect("routes lock")
            .insert(name.to_owned(), route.clone());
        route
    }

    fn suspect(&self, addr: SocketAddr) {
        let mut s = self.suspects.lock().expect("suspects lock");
        s.insert(addr, Instant::now() + SUSPECT_FOR);
    }

    fn is_suspect(&self, addr: SocketAddr) -> bool {
        let mut s = self.suspects.lock().expect("suspects lock");
        s.retain(|_, until| *until > Instant::now());
        s.contains_key(&addr)
    }

    /// Another node to send through than `avoid`, not itself suspect: one
    /// already connected if possible.
    fn detour(&self, route: &Route, avoid: SocketAddr) -> Option<SocketAddr> {
        let sessions = self.sessions.lock().expect("sessions lock");
        let others = || {
            route
                .nodes
                .values()
                .copied()
                .filter(move |a| *a != avoid && !self.is_suspect(*a))
        };
        others()
            .find(|a| sessions.contains_key(a))
            .or_else(|| others().next())
    }

    async fn write(&self, table: &str, op: Op) -> Result<OpResult, ClientError> {
        let route = self.route(table).await?;
        let shard = shard_of_write(&route.table, &op)?;
        let request = self.begin_request(&route.table, shard);
        let req = ShardRequest::Write {
            shard: ShardKey::new(table, shard),
            id: request.id,
            op,
        };
        let reply = self.send(table, shard, req, None).await;
        drop(request);
        // The shard that took it (a split may have moved the key).
        match reply? {
            (DataReply::Written(r), shard) => {
                self.observe(table, shard, seq_of(&r));
                Ok(r)
            }
            _ => Err(ClientError::Unexpected("a read reply to a write")),
        }
    }

    async fn table(&self, table: &str) -> Result<Table, ClientError> {
        Ok(self.route(table).await?.table.clone())
    }

    /// Creates or replaces a row (a JSON object); returns its new version.
    pub async fn put(&self, table: &str, row: &str) -> Result<u64, ClientError> {
        let op = row_op(&self.table(table).await?, row, |key, row| Op::Put {
            key,
            row,
        })?;
        version_of(self.write(table, op).await?)
    }

    /// Creates a row; fails with a `Conflict` if its key exists.
    pub async fn insert(&self, table: &str, row: &str) -> Result<u64, ClientError> {
        let op = row_op(&self.table(table).await?, row, |key, row| Op::Insert {
            key,
            row,
        })?;
        version_of(self.write(table, op).await?)
    }

    /// Merges columns into a row, only at `if_version` when given.
    pub async fn update(
        &self,
        table: &str,
        key: RowKey,
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
        key: RowKey,
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
        let op = batch_op(&self.table(table).await?, ops)?;
        match self.write(table, op).await? {
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
        key: RowKey,
        consistency: Consistency,
    ) -> Result<Option<RowRecord>, ClientError> {
        self.get_with(table, key, &|shard| {
            self.read_mode(table, shard, consistency)
        })
        .await
    }

    /// Reads a row in an explicit read mode (for a session position of
    /// your own: `ReadMode::AtLeast(n)`).
    pub async fn get_mode(
        &self,
        table: &str,
        key: RowKey,
        mode: ReadMode,
    ) -> Result<Option<RowRecord>, ClientError> {
        self.get_with(table, key, &|_| mode).await
    }

    async fn get_with(
        &self,
        table: &str,
        key: RowKey,
        mode_of: &(dyn Fn(u32) -> ReadMode + Sync),
    ) -> Result<Option<RowRecord>, ClientError> {
        let shard = self.route(table).await?.table.shard_of(&key);
        let mode = mode_of(shard);
        let request = ShardRequest::Get {
            shard: ShardKey::new(table, shard),
            key,
            mode,
        };
        match self.send(table, shard, request, Some(mode)).await? {
            (DataReply::Row(r), shard) => {
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
        from: Option<RowKey>,
        to: Option<RowKey>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<(RowKey, RowRecord)>, ClientError> {
        self.scan_with(table, from, to, limit, &|shard| {
            self.read_mode(table, shard, consistency)
        })
        .await
    }

    /// [`Client::scan`] in an explicit read mode.
    pub async fn scan_mode(
        &self,
        table: &str,
        from: Option<RowKey>,
        to: Option<RowKey>,
        limit: usize,
        mode: ReadMode,
    ) -> Result<Vec<(RowKey, RowRecord)>, ClientError> {
        self.scan_with(table, from, to, limit, &|_| mode).await
    }

    async fn scan_with(
        &self,
        table: &str,
        from: Option<RowKey>,
        to: Option<RowKey>,
        limit: usize,
        mode_of: &(dyn Fn(u32) -> ReadMode + Sync),
    ) -> Result<Vec<(RowKey, RowRecord)>, ClientError> {
        // A shard split while the scan ran answers `Stale` (its keys
        // narrowed), one merged away is gone from the map; `send` then
        // caches the new map, and the whole scan is planned again over the
        // new shards, so each row comes once.
        let layout =
            |t: &Table| -> Vec<KeyRange> { t.shards.iter().map(|s| s.range.clone()).collect() };
        let mut plans = 0;
        loop {
            plans += 1;
            let planned = layout(&self.route(table).await?.table);
            let rows = self
                .scan_once(table, from.clone(), to.clone(), limit, mode_of)
                .await;
            let now = layout(&self.route(table).await?.table);
            if now == planned {
                return rows;
            }
            if plans >= MAX_SCAN_PLANS {
                return Err(ClientError::Data(DataError::unavailable(format!(
                    "table {table:?} was split or merged {MAX_SCAN_PLANS} times while a scan ran; retry"
                ))));
            }
            debug!(%table, failed = rows.is_err(), "a shard was split or merged while the scan ran; planning it again");
        }
    }

    /// One scan over the shards of the map cached now.
    async fn scan_once(
        &self,
        table: &str,
        from: Option<RowKey>,
        to: Option<RowKey>,
        limit: usize,
        mode_of: &(dyn Fn(u32) -> ReadMode + Sync),
    ) -> Result<Vec<(RowKey, RowRecord)>, ClientError> {
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
            let mode = mode_of(shard);
            let request = ShardRequest::Scan {
                shard: ShardKey::new(table, shard),
                from: from.clone(),
                to: to.clone(),
                limit,
                mode,
                epoch: 0, // set by `send`, from the route it sends by
            };
            async move {
                match self.send(table, shard, request, Some(mode)).await? {
                    (DataReply::Rows(r), shard) => {
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
