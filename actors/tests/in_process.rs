//! In-process tests of the shard copies and the router under network faults
//! (tier 2: between core's pure simulation and the multi-process suite).
//!
//! Three nodes each hold a copy of one shard (primary `a`, backups `b` and
//! `c`) on real LMDB in a temporary directory; a fourth, `d`, holds nothing
//! until a test makes it a learner. Their peer messages go
//! through an in-memory network (`peer_link::mem::MemNet`) the tests cut,
//! partition, make lossy or slow. No gossip between nodes, no QUIC, no
//! Raft: the cluster map is fixed (`control::FixedMap`) and each node's
//! copies are the ones `tstore_core::shard::wanted` gives it, as the
//! NodeActor would start them. Every wait is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use tstore_actors::control::{FixedMap, MapView};
use tstore_actors::data::committer::Committer;
use tstore_actors::data::store::{ShardPrefix, ShardStore};
use tstore_actors::dispatch::PeerDispatch;
use tstore_actors::hearing::Hearing;
use tstore_actors::peer_link::mem::{Filter, Kind, MemNet};
use tstore_actors::recovery::Recovery;
use tstore_actors::router::Router;
use tstore_actors::shard::actor::{CopyActor, CopyEnv};
use tstore_actors::shard::local::LocalCopies;
use tstore_actors::shard::messages::{GetStatus, Reconfigure, StopCopy};
use tstore_actors::shard::publish::CopyPublisher;
use tstore_actors::shard::snapshot::SnapshotServer;
use tstore_core::cluster_map::{ClusterMap, MapCommand, RowKey, Sharding, TableSpec};
use tstore_core::copy_gossip::node_copies;
use tstore_core::data::ops::{Op, OpResult, RowRecord};
use tstore_core::data::sessions::{ClientId, RequestId};
use tstore_core::replication::{LeaseConfig, LogRetention, DEFAULT_TRUNCATE_BATCH};
use tstore_core::shard::ShardKey;
use tstore_core::wire::{DataReply, DataRequest, ErrorKind, ReadMode, ShardRequest};
use tstore_membership::{GossipLink, Membership, MembershipConfig, NodeIdentity};

const TABLE: &str = "t";
const NODES: [&str; 4] = ["a", "b", "c", "d"];
/// Short enough that a lost backup stops writes within a test's patience.
const LEASE: LeaseConfig = LeaseConfig {
    lease: 300,
    grace: 450,
    heartbeat: 30,
    window: 1024,
    // Short, so that shards go quiet and wake up within the tests.
    quiet_after: 300,
};
/// A forwarded request waits this long for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(400);
/// The longest any single wait in these tests may take.
const PATIENCE: Duration = Duration::from_secs(5);

/// Gossip goes nowhere: each node only publishes to itself.
struct NoGossip;

impl GossipLink for NoGossip {
    fn send(&self, _: SocketAddr, _: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

struct Node {
    name: &'static str,
    store: ShardStore,
    membership: Arc<Membership>,
    local: LocalCopies,
    env: CopyEnv,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Brings the node's copies in line with `map`, as the NodeActor does.
    fn apply(&self, map: &ClusterMap) {
        let mut held: BTreeMap<ShardKey, Addr<CopyActor>> = (*self.local.current()).clone();
        let wanted = tstore_core::shard::wanted(map, self.name);
        held.retain(|key, actor| {
            let keep = wanted.contains_key(key);
            if !keep {
                // Moved away: the data stays, as on a real node.
                actor.do_send(StopCopy { drop_data: false });
            }
            keep
        });
        for (key, copy) in wanted {
            match held.get(&key) {
                Some(actor) => actor.do_send(Reconfigure(copy)),
                None => {
                    let actor = CopyActor::new(key.clone(), copy, self.env.clone()).start();
                    held.insert(key, actor);
                }
            }
        }
        self.local.replace(held);
    }
}

struct Cluster {
    net: MemNet,
    map: MapView,
    fixed: FixedMap,
    nodes: Vec<Node>,
    shard: ShardPrefix,
    client: ClientId,
}

fn cluster_map() -> ClusterMap {
    let mut map = ClusterMap::default();
    for (i, n) in NODES.iter().enumerate() {
        map.apply(&MapCommand::RegisterNode {
            node_id: (*n).into(),
            addr: format!("127.0.0.1:{}", 7000 + i),
            zone: String::new(),
        })
        .unwrap();
    }
    map.apply(&MapCommand::CreateTable {
        spec: TableSpec {
            name: TABLE.into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 1 },
            replicas: 3,
            min_copies: 0,
        },
        placement: vec![("a".into(), vec!["b".into(), "c".into()])],
    })
    .unwrap();
    map
}

impl Cluster {
    async fn start(seed: u64) -> Self {
        Self::start_with(seed, LogRetention::default()).await
    }

    /// The cluster with every copy keeping its log as `retention` says.
    async fn start_with(seed: u64, retention: LogRetention) -> Self {
        let map = cluster_map();
        let table_id = map.tables[TABLE].id;
        let fixed = FixedMap::new(map.clone());
        let net = MemNet::new(seed).with_request_timeout(REQUEST_TIMEOUT);
        let mut nodes = Vec::new();
        for (i, name) in NODES.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let env = tstore_actors::storage::open_env(dir.path()).unwrap();
            let store = ShardStore::open(&env).unwrap();
            let committer =
                Committer::start(store.clone(), Default::default(), Duration::ZERO).unwrap();
            let identity = NodeIdentity {
                node_id: name.into(),
                generation: 1,
            };
            let gossip_addr = SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16));
            let (membership, inbox) = Membership::start(
                &identity,
                gossip_addr,
                MembershipConfig::default(),
                Arc::new(NoGossip),
            )
            .await
            .unwrap();
            let membership = Arc::new(membership);
            let local = LocalCopies::default();
            let recovery = Recovery::default();
            let snapshots = SnapshotServer {
                me: name.into(),
                store: store.clone(),
                map: fixed.view(),
                rate: 0,
                recovery: recovery.clone(),
            };
            let hearing = Hearing::default();
            let dispatch = PeerDispatch::new(
                identity,
                inbox,
                local.clone(),
                snapshots,
                None,
                hearing.clone(),
            );
            net.add_node(name, Arc::new(dispatch));
            let env = CopyEnv {
                membership: membership.clone(),
                store: store.clone(),
                committer,
                link: net.link(name),
                lease: LEASE,
                retention,
                recovery: recovery.clone(),
                gossip: CopyPublisher::start(membership.clone()),
                hearing,
            };
            let node = Node {
                name,
                store,
                membership,
                local,
                env,
                _dir: dir,
            };
            node.apply(&map);
            nodes.push(node);
        }
        Cluster {
            net,
            map: fixed.view(),
            fixed,
            nodes,
            shard: ShardPrefix {
                table: table_id,
                shard: 0,
            },
            client: ClientId::new(tstore_actors::clock::wall_ms(), seed),
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// Commits a new map: every node's copies follow it.
    fn set_map(&self, map: ClusterMap) {
        self.fixed.set(map.clone());
        for n in &self.nodes {
            n.apply(&map);
        }
    }

    /// The router of node `at`, as the QUIC service builds it per request.
    fn router(&self, at: &str) -> Router {
        Router {
            me: at.into(),
            map: self.map.clone(),
            local: self.node(at).local.current(),
            link: self.net.link(at),
        }
    }

    /// The shard's configuration epoch in the map, which a client routes by.
    fn epoch(&self) -> u64 {
        self.map.map().tables[TABLE].shards[0].replicas.epoch
    }

    fn insert_request(&self, seq: u64, key: i64) -> DataRequest {
        DataRequest::Routed {
            epoch: self.epoch(),
            request: ShardRequest::Write {
                shard: ShardKey::new(TABLE, 0),
                id: RequestId {
                    client: self.client,
                    seq,
                    first_incomplete: 1,
                },
                op: Op::Insert {
                    key: RowKey::Int(key),
                    row: row(key),
                },
            },
        }
    }

    /// Inserts row `key` as request `seq` of this test's client, through
    /// the router of node `at`.
    async fn insert(&self, at: &str, seq: u64, key: i64) -> DataReply {
        self.route(at, self.insert_request(seq, key)).await
    }

    /// Routes `req` through node `at`'s router; the answer must come within
    /// `PATIENCE` (a write served locally has no timeout of its own).
    async fn route(&self, at: &str, req: DataRequest) -> DataReply {
        tokio::time::timeout(PATIENCE, self.router(at).route(req))
            .await
            .unwrap_or_else(|_| panic!("no answer from {at}'s router within {PATIENCE:?}"))
    }

    fn rows(&self, name: &str) -> Vec<(RowKey, RowRecord)> {
        self.node(name)
            .store
            .scan(self.shard, None, None, usize::MAX)
            .unwrap()
    }

    /// Waits until every copy has applied the same rows and sessions.
    async fn converged(&self) -> Vec<(RowKey, RowRecord)> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let holders: Vec<&Node> = self
                .nodes
                .iter()
                .filter(|n| !n.local.current().is_empty())
                .collect();
            let sums: Vec<u64> = holders
                .iter()
                .map(|n| n.store.checksum(self.shard).unwrap())
                .collect();
            let applied: Vec<u64> = holders
                .iter()
                .map(|n| n.store.meta(self.shard).unwrap().applied)
                .collect();
            if sums.iter().all(|s| *s == sums[0]) && applied.iter().all(|a| *a == applied[0]) {
                let rows = self.rows("a");
                for n in holders {
                    assert_eq!(
                        self.rows(n.name),
                        rows,
                        "copy on {} differs from a's",
                        n.name
                    );
                }
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "copies did not converge within {PATIENCE:?}: applied {applied:?}, checksums {sums:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The backups node `name`'s primary publishes as silent.
    async fn silent(&self, name: &str) -> Vec<String> {
        let snapshot = self.node(name).membership.snapshot().await;
        let me = snapshot.nodes.iter().find(|n| n.node_id == name).unwrap();
        let keys = me.keys.iter().filter(|(_, v)| !v.deleted);
        node_copies(keys.map(|(k, v)| (k.as_str(), v.value.as_str())))
            .into_iter()
            .find(|g| g.table == TABLE && g.shards.contains(&0))
            .map(|g| g.state.silent)
            .unwrap_or_default()
    }
}

fn row(key: i64) -> String {
    format!(r#"{{"id":{key},"v":"row {key}"}}"#)
}

fn written(reply: &DataReply) -> Option<u64> {
    match reply {
        DataReply::Written(OpResult::Written { version }) => Some(*version),
        _ => None,
    }
}

fn error_kind(reply: &DataReply) -> Option<ErrorKind> {
    match reply {
        DataReply::Error(e) => Some(e.kind),
        _ => None,
    }
}

/// Retries `f` every 20 ms until it returns `Some`, for at most `PATIENCE`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every acknowledged write is on every copy, once, at the version its
/// acknowledgement gave; nothing else is there but writes that were tried.
fn check_history(rows: &[(RowKey, RowRecord)], acked: &BTreeMap<i64, u64>, tried: &[i64]) {
    let by_key: BTreeMap<&RowKey, &RowRecord> = rows.iter().map(|(k, r)| (k, r)).collect();
    assert_eq!(by_key.len(), rows.len(), "a key appears twice");
    for (key, version) in acked {
        let r = by_key
            .get(&RowKey::Int(*key))
            .unwrap_or_else(|| panic!("acknowledged write {key} lost"));
        assert_eq!(
            r.version, *version,
            "row {key} is not at its acknowledged version"
        );
        let json: serde_json::Value = serde_json::from_str(&r.json).unwrap();
        let want: serde_json::Value = serde_json::from_str(&row(*key)).unwrap();
        assert_eq!(json, want, "row {key} differs from what was written");
    }
    for (k, _) in rows {
        let RowKey::Int(k) = k else {
            panic!("unexpected key {k}")
        };
        assert!(tried.contains(k), "row {k} was never written");
    }
}

#[actix_rt::test]
async fn routed_writes_reach_every_copy() {
    let c = Cluster::start(1).await;
    let mut acked = BTreeMap::new();
    // Through the primary's router (served here) and a backup's
    // (forwarded to the primary once).
    for key in 0..40i64 {
        let at = if key % 2 == 0 { "a" } else { "b" };
        let reply = c.insert(at, key as u64 + 1, key).await;
        let version = written(&reply).unwrap_or_else(|| panic!("write {key}: {reply:?}"));
        acked.insert(key, version);
    }
    // Versions are the entries' sequence numbers: all distinct.
    let mut versions: Vec<u64> = acked.values().copied().collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 40);
    let rows = c.converged().await;
    assert_eq!(rows.len(), 40);
    check_history(&rows, &acked, &(0..40).collect::<Vec<_>>());
    // The backup's forwards went to the primary, once each.
    assert_eq!(c.net.count("b", "a", Kind::Data).sent, 20);
}

#[actix_rt::test]
async fn cut_off_backup_stops_writes_until_healed() {
    let c = Cluster::start(2).await;
    let mut acked = BTreeMap::new();
    let mut tried = Vec::new();
    let mut seq = 0;
    let mut next = |key: i64, tried: &mut Vec<i64>| {
        tried.push(key);
        seq += 1;
        seq
    };
    for key in 0..5 {
        let s = next(key, &mut tried);
        let reply = c.insert("a", s, key).await;
        acked.insert(key, written(&reply).expect("write before the cut"));
    }
    c.net.partition("a", "c");
    // Writes go through b's router: its forward to the primary has a
    // timeout, where a write served locally would wait for its commit.
    let cut_at = Instant::now();
    // No write is acknowledged without c; once the lease runs out the
    // primary refuses them outright.
    let mut key = 100;
    let refused_at = loop {
        let s = next(key, &mut tried);
        let reply = c.insert("b", s, key).await;
        assert_eq!(written(&reply), None, "write {key} acknowledged without c");
        if error_kind(&reply) == Some(ErrorKind::Unavailable) {
            break Instant::now();
        }
        assert_eq!(error_kind(&reply), Some(ErrorKind::Unknown), "{reply:?}");
        assert!(cut_at.elapsed() < PATIENCE, "writes still accepted");
        key += 1;
    };
    assert!(refused_at - cut_at >= Duration::from_millis(LEASE.lease) / 2);
    // And it keeps refusing while the partition lasts.
    for _ in 0..5 {
        key += 1;
        let s = next(key, &mut tried);
        let reply = c.insert("b", s, key).await;
        assert_eq!(
            error_kind(&reply),
            Some(ErrorKind::Unavailable),
            "{reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.net.heal();
    let key = 1000;
    let s = next(key, &mut tried);
    let (c, req) = (&c, &c.insert_request(s, key));
    let version = eventually("a write after the partition healed", move || async move {
        written(&c.route("b", req.clone()).await)
    })
    .await;
    acked.insert(key, version);
    let rows = c.converged().await;
    check_history(&rows, &acked, &tried);
}

#[actix_rt::test]
async fn one_way_cut_shows_in_the_silent_set() {
    let c = Cluster::start(3).await;
    let reply = c.insert("a", 1, 1).await;
    assert!(written(&reply).is_some(), "{reply:?}");
    // a no longer hears c; c still hears a.
    c.net.cut("c", "a");
    let cl = &c;
    let silent = eventually("c reported silent", move || async move {
        Some(cl.silent("a").await).filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(silent, vec!["c".to_owned()]);
    // The primary no longer hears c's acknowledgements: it takes no write.
    let reply = c.insert("b", 2, 2).await;
    assert_eq!(written(&reply), None, "{reply:?}");
    let lost = c.net.count("c", "a", Kind::Repl);
    assert!(lost.sent > lost.delivered, "c's messages were not cut");
    c.net.heal();
    eventually("the silent set cleared", move || async move {
        cl.silent("a").await.is_empty().then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn lossy_slow_replication_keeps_every_acked_write_once() {
    let c = Cluster::start(4).await;
    c.net.add_filter(Filter::drop(0.2).kind(Kind::Repl));
    c.net
        .add_filter(Filter::drop_next(5).from("b").kind(Kind::Repl));
    c.net
        .add_filter(Filter::delay(Duration::ZERO, Duration::from_millis(15)).kind(Kind::Repl));
    let mut acked = BTreeMap::new();
    let mut history = Vec::new();
    let tried: Vec<i64> = (0..30).collect();
    // Like a client: a write whose outcome is unavailable or unknown is
    // resent with the same identity, a bounded number of times.
    for key in tried.iter().copied() {
        let req = c.insert_request(key as u64 + 1, key);
        for attempt in 0..8 {
            let reply = c.route("b", req.clone()).await;
            history.push((key, attempt, format!("{reply:?}")));
            match (written(&reply), error_kind(&reply)) {
                (Some(v), _) => {
                    acked.insert(key, v);
                    break;
                }
                (None, Some(ErrorKind::Unavailable | ErrorKind::Unknown)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => panic!("write {key}: {reply:?} (history {history:?})"),
            }
        }
    }
    let dropped: u64 = ["b", "c"]
        .iter()
        .map(|n| {
            let to = c.net.count("a", n, Kind::Repl);
            let from = c.net.count(n, "a", Kind::Repl);
            (to.sent - to.delivered) + (from.sent - from.delivered)
        })
        .sum();
    assert!(dropped > 0, "no replication message was lost");
    assert!(
        acked.len() >= 25,
        "too few writes acknowledged: {history:?}"
    );
    c.net.clear_filters();
    let rows = c.converged().await;
    check_history(&rows, &acked, &tried);
}

#[actix_rt::test]
async fn forward_to_a_partitioned_primary_is_sent_once() {
    let c = Cluster::start(5).await;
    let reply = c.insert("b", 1, 1).await;
    assert!(written(&reply).is_some(), "{reply:?}");
    assert_eq!(c.net.count("b", "a", Kind::Data).sent, 1);
    c.net.partition("b", "a");
    // A write that may have reached the primary: unknown, not resent.
    let started = Instant::now();
    let reply = c.insert("b", 2, 2).await;
    assert_eq!(error_kind(&reply), Some(ErrorKind::Unknown), "{reply:?}");
    assert!(started.elapsed() >= REQUEST_TIMEOUT);
    assert!(started.elapsed() < REQUEST_TIMEOUT * 3);
    let data = c.net.count("b", "a", Kind::Data);
    assert_eq!((data.sent, data.delivered), (2, 1), "the write was resent");
    // A strong read goes to the primary too: unavailable, not resent.
    let get = DataRequest::Routed {
        epoch: 1,
        request: ShardRequest::Get {
            shard: ShardKey::new(TABLE, 0),
            key: RowKey::Int(1),
            mode: ReadMode::Strong,
        },
    };
    let reply = c.route("b", get).await;
    assert_eq!(
        error_kind(&reply),
        Some(ErrorKind::Unavailable),
        "{reply:?}"
    );
    assert_eq!(c.net.count("b", "a", Kind::Data).sent, 3);
    // The primary's node gone from the network: unavailable at once.
    c.net.remove_node("a");
    let started = Instant::now();
    let reply = c.insert("b", 3, 3).await;
    assert_eq!(
        error_kind(&reply),
        Some(ErrorKind::Unavailable),
        "{reply:?}"
    );
    assert!(started.elapsed() < REQUEST_TIMEOUT);
    assert_eq!(c.net.count("b", "a", Kind::Data).sent, 4);
    // Row 2 never reached the primary.
    assert!(c.rows("a").iter().all(|(k, _)| *k != RowKey::Int(2)));
}

#[actix_rt::test]
async fn learner_copies_a_snapshot_then_follows_the_log() {
    let c = Cluster::start(6).await;
    let mut acked = BTreeMap::new();
    for key in 0..20i64 {
        let reply = c.insert("a", key as u64 + 1, key).await;
        acked.insert(key, written(&reply).expect("write before the learner"));
    }
    // The coordinator's step, by hand: d joins the shard as a learner.
    c.configure(&["b", "c"], &["d"]);
    let cl = &c;
    eventually("d installed the snapshot", move || async move {
        (cl.rows("d").len() == 20).then_some(())
    })
    .await;
    let snapshot = c.net.count("d", "a", Kind::Snapshot);
    assert_eq!((snapshot.sent, snapshot.delivered), (1, 1));
    // Writes after the snapshot reach d through the log.
    for key in 20..30i64 {
        let reply = c.insert("b", key as u64 + 1, key).await;
        acked.insert(key, written(&reply).unwrap_or_else(|| panic!("{reply:?}")));
    }
    let rows = c.converged().await;
    assert_eq!(rows.len(), 30);
    assert_eq!(c.rows("d"), rows);
    check_history(&rows, &acked, &(0..30).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn resent_write_whose_answer_was_lost_applies_once() {
    let c = Cluster::start(7).await;
    // d holds no copy: its router forwards, and cutting a → d loses only
    // the primary's answers to d.
    c.net.cut("a", "d");
    let req = c.insert_request(1, 1);
    let reply = c.route("d", req.clone()).await;
    assert_eq!(error_kind(&reply), Some(ErrorKind::Unknown), "{reply:?}");
    let cl = &c;
    let version = eventually("the write committed on the primary", move || async move {
        cl.rows("a").first().map(|(_, r)| r.version)
    })
    .await;
    c.net.heal();
    // The client resends with the same identity: the shard answers with
    // the first outcome instead of inserting again (which would conflict).
    let reply = c.route("d", req).await;
    assert_eq!(written(&reply), Some(version), "{reply:?}");
    let data = c.net.count("d", "a", Kind::Data);
    assert_eq!((data.sent, data.delivered), (2, 2));
    let rows = c.converged().await;
    check_history(&rows, &BTreeMap::from([(1, version)]), &[1]);
}

/// Entries each copy keeps below what every copy has, in the retention
/// test: small, so a few thousand writes truncate many times.
const RETAIN: u64 = 200;

/// The default retention, but keeping `entries` entries.
fn retaining(entries: u64) -> LogRetention {
    LogRetention {
        entries,
        ..LogRetention::default()
    }
}
/// Writes sent at once in the retention test.
const CONCURRENT: u64 = 50;

impl Cluster {
    /// Puts `key` (overwriting it) as request `seq` of this test's client,
    /// which has every earlier request answered.
    fn put_request(&self, seq: u64, key: i64) -> DataRequest {
        DataRequest::Routed {
            epoch: self.epoch(),
            request: ShardRequest::Write {
                shard: ShardKey::new(TABLE, 0),
                id: RequestId {
                    client: self.client,
                    seq,
                    first_incomplete: seq,
                },
                op: Op::Put {
                    key: RowKey::Int(key),
                    row: format!(r#"{{"id":{key},"v":"write {seq}"}}"#),
                },
            },
        }
    }

    /// Writes requests `seqs` at once through `a`'s router, each a put of
    /// key `seq % 20`; panics unless every one is acknowledged.
    async fn put_all(&self, seqs: std::ops::Range<u64>) {
        let replies = futures::future::join_all(
            seqs.clone()
                .map(|s| self.route("a", self.put_request(s, (s % 20) as i64))),
        )
        .await;
        for (s, reply) in seqs.zip(replies) {
            assert!(written(&reply).is_some(), "write {s}: {reply:?}");
        }
    }

    /// Checks that copy `name`'s log is contiguous from its first retained
    /// entry and within the retention window (plus one truncation batch
    /// and the entries above the point every copy has); returns its first
    /// retained entry.
    fn check_log_bounded(&self, name: &str) -> u64 {
        let store = &self.node(name).store;
        let meta = store.meta(self.shard).unwrap();
        let (entries, bytes) = store.log_size(self.shard).unwrap();
        assert_eq!(
            entries,
            meta.logged + 1 - meta.log_start,
            "{name}'s log is not contiguous from {} to {}",
            meta.log_start,
            meta.logged
        );
        assert_eq!(bytes, meta.log_bytes, "{name}'s log size is off");
        // Above the point every copy has: up to `CONCURRENT` writes in
        // flight, and on a backup as many committed ones it has not yet
        // heard are committed (the commit point comes with the next message).
        let bound = RETAIN + DEFAULT_TRUNCATE_BATCH + 2 * CONCURRENT;
        assert!(
            entries <= bound,
            "{name} keeps {entries} log entries (from {} to {}), over {bound}",
            meta.log_start,
            meta.logged
        );
        meta.log_start
    }
}

#[actix_rt::test]
async fn replication_logs_stay_within_their_retention_and_lagging_copies_catch_up_from_them() {
    let retention = retaining(RETAIN);
    let c = Cluster::start_with(8, retention).await;
    // Thousands of overwrites of 20 keys, `CONCURRENT` at a time.
    let mut seq = 1;
    for _ in 0..40 {
        c.put_all(seq..seq + CONCURRENT).await;
        seq += CONCURRENT;
        for n in ["a", "b", "c"] {
            c.check_log_bounded(n);
        }
    }
    let rows = c.converged().await;
    assert_eq!(rows.len(), 20);
    for n in ["a", "b", "c"] {
        let start = c.check_log_bounded(n);
        assert!(start > 1000, "{n} truncated its log only below {start}");
    }

    // A backup cut off while the primary takes 100 writes (fewer than the
    // window): none commits without it; once healed it gets them from the
    // primary's log tail, with no snapshot.
    let logged_before = c.node("a").store.meta(c.shard).unwrap().logged;
    c.net.partition("a", "c");
    let cl = &c;
    let writes = c.put_all(seq..seq + 100);
    let heal = async move {
        eventually("a logged the writes c misses", move || async move {
            let logged = cl.node("a").store.meta(cl.shard).unwrap().logged;
            (logged == logged_before + 100).then_some(())
        })
        .await;
        assert_eq!(
            cl.node("c").store.meta(cl.shard).unwrap().logged,
            logged_before,
            "c was not cut off"
        );
        cl.net.heal();
    };
    futures::join!(writes, heal);
    seq += 100;
    c.converged().await;

    // A learner copies a snapshot, and its first answer to the primary is
    // slow (300 ms): the primary commits 500 more writes meanwhile, more
    // than the retention window, without it. The learner, still silent,
    // holds truncation back; once it answers, it is fed those entries from
    // the primary's durable log (they have left its memory), not sent a
    // second snapshot.
    c.net.add_filter(
        Filter::delay(Duration::from_millis(300), Duration::from_millis(300))
            .from("d")
            .kind(Kind::Repl),
    );
    c.configure(&["b", "c"], &["d"]);
    let installed_at = eventually("d installed the snapshot", move || async move {
        let applied = cl.node("d").store.meta(cl.shard).unwrap().applied;
        (cl.rows("d").len() == 20 && applied > 0).then_some(applied)
    })
    .await;
    let started = Instant::now();
    for _ in 0..10 {
        c.put_all(seq..seq + CONCURRENT).await;
        seq += CONCURRENT;
    }
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the writes took longer than d's answer: {:?}",
        started.elapsed()
    );
    c.net.clear_filters();
    let rows = c.converged().await;
    assert_eq!(rows.len(), 20);
    assert_eq!(c.rows("d"), rows);
    for n in ["a", "b", "c", "d"] {
        c.check_log_bounded(n);
    }
    let snapshots: u64 = ["a", "b", "c"]
        .iter()
        .map(|to| c.net.count("d", to, Kind::Snapshot).sent)
        .sum();
    assert_eq!(snapshots, 1, "d copied more than one snapshot");
    let d = c.node("d").store.meta(c.shard).unwrap();
    assert!(
        d.applied >= installed_at + 10 * CONCURRENT,
        "d applied {} after a snapshot at {installed_at}",
        d.applied
    );
    for n in ["a", "b"] {
        assert_eq!(c.net.count("c", n, Kind::Snapshot).sent, 0);
    }
    // Every write's outcome is in the rows: the last put of each key.
    assert_last_puts(&rows, seq);
}

impl Cluster {
    /// Commits the shard's next configuration: primary `a`, these backups
    /// and learners.
    fn configure(&self, backups: &[&str], learners: &[&str]) {
        let mut map = (*self.map.map()).clone();
        let names = |ns: &[&str]| ns.iter().map(|n| n.to_string()).collect();
        map.apply(&MapCommand::SetReplicas {
            table: TABLE.into(),
            shard: 0,
            expect_epoch: self.epoch(),
            primary: "a".into(),
            backups: names(backups),
            learners: names(learners),
            moves: vec![],
            what: "test".into(),
            why: "test".into(),
            at_unix_ms: 0,
            away: vec![],
        })
        .unwrap();
        self.set_map(map);
    }

    /// Waits until `name`'s rows have caught up with the primary's.
    async fn caught_up(&self, name: &str) {
        let c = self;
        eventually(&format!("{name} caught up with a"), move || async move {
            let a = c.node("a").store.meta(c.shard).unwrap().applied;
            let mine = c.node(name).store.meta(c.shard).unwrap().applied;
            (mine == a && c.rows(name) == c.rows("a")).then_some(())
        })
        .await;
    }
}

/// A backup dropped from the configuration (as when its node goes down)
/// and re-added as a learner keeps its rows and catches up from the
/// primary's retained log, with no snapshot; dropped for longer than the
/// primary keeps its log, it copies one snapshot.
#[actix_rt::test]
async fn a_returning_copy_catches_up_from_the_log_within_the_window_and_from_a_snapshot_past_it() {
    let retention = retaining(RETAIN);
    let c = Cluster::start_with(9, retention).await;
    let mut seq = 1;
    for _ in 0..2 {
        c.put_all(seq..seq + CONCURRENT).await;
        seq += CONCURRENT;
    }
    c.converged().await;
    // c leaves; 50 writes go on without it (within the retained log).
    c.configure(&["b"], &[]);
    let left_at = c.node("c").store.meta(c.shard).unwrap().applied;
    c.put_all(seq..seq + CONCURRENT).await;
    seq += CONCURRENT;
    assert_eq!(c.node("c").store.meta(c.shard).unwrap().applied, left_at);
    c.configure(&["b"], &["c"]);
    c.caught_up("c").await;
    let snapshots = || c.net.count("c", "a", Kind::Snapshot).sent;
    assert_eq!(snapshots(), 0, "c copied a snapshot though a kept its log");
    assert_eq!(c.node("c").env.recovery.stats().rejoined_from_own_data, 1);
    assert!(
        c.node("a").env.recovery.stats().log_entries_sent >= CONCURRENT,
        "{:?}",
        c.node("a").env.recovery.stats()
    );
    c.configure(&["b", "c"], &[]);
    c.put_all(seq..seq + CONCURRENT).await;
    seq += CONCURRENT;
    c.converged().await;

    // c leaves again, for 1,000 writes: far more than a keeps.
    c.configure(&["b"], &[]);
    let left_at = c.node("c").store.meta(c.shard).unwrap().applied;
    for _ in 0..20 {
        c.put_all(seq..seq + CONCURRENT).await;
        seq += CONCURRENT;
    }
    let a_start = c.node("a").store.meta(c.shard).unwrap().log_start;
    assert!(a_start > left_at + 1, "a still holds {left_at}");
    c.configure(&["b"], &["c"]);
    c.caught_up("c").await;
    assert_eq!(snapshots(), 1, "c did not copy exactly one snapshot");
    c.configure(&["b", "c"], &[]);
    c.put_all(seq..seq + CONCURRENT).await;
    seq += CONCURRENT;
    let rows = c.converged().await;
    assert_last_puts(&rows, seq);
}

impl Cluster {
    /// Flips a bit in the stored value of row `key` on node `name`, as a
    /// failing disk might (the store's own key layout: table id, shard,
    /// encoded key).
    fn corrupt_row(&self, name: &str, key: i64) {
        use heed::types::Bytes;
        let env = self.node(name).store.env();
        let db = env
            .create_databases_and_commit(env.write_txn().unwrap(), |opener, wtxn| {
                let db = opener.create_database::<Bytes, Bytes>(wtxn, Some("shard-rows"))?;
                Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit(db))
            })
            .unwrap()
            .unwrap_commit();
        let mut wtxn = env.write_txn().unwrap();
        let mut k = self.shard.table.to_be_bytes().to_vec();
        k.extend(self.shard.shard.to_be_bytes());
        k.extend(RowKey::Int(key).encode());
        let mut v = db.get(&wtxn, &k).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last - 2] ^= 0x01;
        db.put(&mut wtxn, &k, &v).unwrap();
        wtxn.commit().unwrap();
    }

    fn get(&self, key: i64, mode: ReadMode) -> ShardRequest {
        ShardRequest::Get {
            shard: ShardKey::new(TABLE, 0),
            key: RowKey::Int(key),
            mode,
        }
    }

    /// Node `name` serving `req` from its own copy (no forwarding).
    async fn local(&self, name: &str, req: ShardRequest) -> DataReply {
        let local = self.node(name).local.current();
        tokio::time::timeout(PATIENCE, tstore_actors::router::serve_local(&local, req))
            .await
            .unwrap()
    }
}

fn refused_as_corrupt(reply: &DataReply) -> bool {
    matches!(reply, DataReply::Error(e) if e.kind == ErrorKind::Unavailable && e.message.contains("corrupt"))
}

#[actix_rt::test]
async fn a_corrupt_backup_is_rebuilt_and_a_corrupt_primary_stops_serving() {
    let c = Cluster::start(12).await;
    let mut acked = BTreeMap::new();
    for key in 0..10i64 {
        let reply = c.insert("a", key as u64 + 1, key).await;
        acked.insert(key, written(&reply).expect("write"));
    }
    c.converged().await;

    // A backup's damaged row is refused, never served, and the copy is
    // rebuilt from the primary.
    c.corrupt_row("b", 3);
    let reply = c.local("b", c.get(3, ReadMode::Replica)).await;
    assert!(refused_as_corrupt(&reply), "{reply:?}");
    // Through the router, the read goes on to the primary.
    let routed = DataRequest::Routed {
        epoch: c.epoch(),
        request: c.get(3, ReadMode::Replica),
    };
    match c.route("b", routed).await {
        DataReply::Row(Some(r)) => assert_eq!(r.json, row(3)),
        DataReply::Error(e) => assert_eq!(e.kind, ErrorKind::Unavailable),
        other => panic!("{other:?}"),
    }
    let cl = &c;
    eventually("b rebuilt from a snapshot", move || async move {
        let stats = cl.node("b").env.recovery.stats();
        let row = cl.node("b").store.get(cl.shard, &RowKey::Int(3));
        (stats.snapshots_installed >= 1 && matches!(row, Ok(Some(_)))).then_some(())
    })
    .await;
    let reply = c.insert("a", 11, 10).await;
    acked.insert(10, written(&reply).unwrap_or_else(|| panic!("{reply:?}")));
    let rows = c.converged().await;
    check_history(&rows, &acked, &(0..11).collect::<Vec<_>>());
    let reply = c.local("b", c.get(3, ReadMode::Replica)).await;
    assert!(
        matches!(&reply, DataReply::Row(Some(r)) if r.json == row(3)),
        "{reply:?}"
    );

    // The primary's damaged row: the read is refused, and so is everything
    // after it, writes included.
    c.corrupt_row("a", 5);
    let reply = c.local("a", c.get(5, ReadMode::Strong)).await;
    assert!(refused_as_corrupt(&reply), "{reply:?}");
    let reply = c.local("a", c.get(1, ReadMode::Strong)).await;
    assert!(refused_as_corrupt(&reply), "{reply:?}");
    let reply = c.insert("a", 12, 11).await;
    assert!(refused_as_corrupt(&reply), "{reply:?}");

    // A learner asking the corrupt primary for a snapshot gets none, and
    // asks again.
    c.configure(&["b", "c"], &["d"]);
    let cl = &c;
    eventually("d asked twice", move || async move {
        (cl.net.count("d", "a", Kind::Snapshot).sent >= 2).then_some(())
    })
    .await;
    assert!(
        c.rows("d").is_empty(),
        "no row of a corrupt snapshot installed"
    );
    assert_eq!(c.node("d").env.recovery.stats().snapshots_installed, 0);
}

/// Every key's row holds its last put among requests `1..seq` (request
/// `s` puts key `s % 20`, see `Cluster::put_request`).
fn assert_last_puts(rows: &[(RowKey, RowRecord)], seq: u64) {
    for (key, r) in rows {
        let RowKey::Int(k) = key else { panic!() };
        let last = (1..seq).rev().find(|s| (s % 20) as i64 == *k).unwrap();
        assert!(
            r.json.contains(&format!("write {last}\"")),
            "{key}: {}",
            r.json
        );
    }
}

impl Cluster {
    /// Whether node `name`'s copy says it is quiet.
    async fn quiet(&self, name: &str) -> bool {
        let copy = self
            .node(name)
            .local
            .get(&ShardKey::new(TABLE, 0))
            .expect("a copy");
        copy.send(GetStatus { checksum: false })
            .await
            .expect("copy running")
            .quiet
    }
}

/// Longer than a shard takes to go quiet, and its lease to lapse after.
const QUIET: Duration = Duration::from_millis(LEASE.quiet_after + LEASE.lease + 300);

#[actix_rt::test]
async fn a_quiet_primary_wakes_for_a_strong_read_and_never_serves_one_without_every_backup() {
    let c = Cluster::start(21).await;
    let mut acked = BTreeMap::new();
    for key in 0..3i64 {
        let reply = c.insert("a", key as u64 + 1, key).await;
        acked.insert(key, written(&reply).expect("write"));
    }
    c.converged().await;
    tokio::time::sleep(QUIET).await;
    for n in ["a", "b", "c"] {
        assert!(c.quiet(n).await, "{n} is not quiet after {QUIET:?} idle");
    }
    // Its lease lapsed while quiet: the read wakes it and is served once
    // both backups answered.
    let reply = c.local("a", c.get(1, ReadMode::Strong)).await;
    assert!(
        matches!(&reply, DataReply::Row(Some(r)) if r.json == row(1)),
        "{reply:?}"
    );
    assert!(!c.quiet("a").await);

    // Quiet again, then cut off from one backup: a strong read wakes it
    // and is refused, every time, since c never answers.
    tokio::time::sleep(QUIET).await;
    assert!(c.quiet("a").await);
    c.net.partition("a", "c");
    for _ in 0..3 {
        let reply = c.local("a", c.get(1, ReadMode::Strong)).await;
        assert_eq!(
            error_kind(&reply),
            Some(ErrorKind::Unavailable),
            "{reply:?}"
        );
    }
    c.net.heal();
    let cl = &c;
    eventually("a strong read after the cut healed", move || async move {
        match cl.local("a", cl.get(2, ReadMode::Strong)).await {
            DataReply::Row(Some(r)) if r.json == row(2) => Some(()),
            _ => None,
        }
    })
    .await;
    let rows = c.converged().await;
    check_history(&rows, &acked, &(0..3).collect::<Vec<_>>());
}
