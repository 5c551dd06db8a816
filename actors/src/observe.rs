//! What a node shows its operators beyond the admin commands: the figures of
//! its Prometheus endpoint (and web console), gathered when a scrape asks.
//!
//! Counters the hot paths keep are atomics (see [`crate::metrics`]); the
//! rest is read from its owner at scrape time: the gossip state, the Raft
//! status, the committed map, and this node's shard copies (each asked for
//! its status as `describe` asks it). Nothing here runs per request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tstore_core::cluster_map::ClusterMap;
use tstore_core::shard::ShardKey;
use tstore_core::view::{Member, NodeStatus};
use tstore_core::wire::{ClusterStatus, CopyStatus, DataReply, RecoveryStats, ShardRequest};
use tstore_membership::{view, Membership};
use tstore_transport::{Endpoint, Refusals};

use actix::Addr;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::watch;
use tstore_core::wire::{AdminReply, AdminRequest};

use crate::admin::{AdminActor, AdminCall};
use crate::control::ControlPlane;
use crate::data::store::ShardStore;
use crate::metrics::{CommitMetrics, RequestMetrics};
use crate::recovery::Recovery;
use crate::shard::local::LocalCopies;

/// Where a node's figures come from (cloning shares them).
#[derive(Clone)]
pub struct Observe {
    pub(crate) node_id: String,
    pub(crate) membership: Arc<Membership>,
    pub(crate) control: ControlPlane,
    pub(crate) local: LocalCopies,
    pub(crate) store: ShardStore,
    pub(crate) recovery: Recovery,
    pub(crate) requests: RequestMetrics,
    pub(crate) endpoint: Endpoint,
    pub(crate) admin: Addr<AdminActor>,
    pub(crate) decisions: Arc<Mutex<Decisions>>,
}

/// The coordinator decisions this node has seen committed in the map, by
/// kind (the first word of the event, e.g. `promoted`).
#[derive(Default)]
pub(crate) struct Decisions {
    /// The map version of the newest event counted.
    last_version: u64,
    by_kind: BTreeMap<String, u64>,
}

/// A shard's health as this node's map and gossip see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardHealth {
    Healthy,
    /// A copy is being built (learners), with every member live.
    Recovering,
    /// Fewer members than the table's factor, or a member gossip calls not live.
    UnderReplicated,
    /// The primary is not live.
    Unavailable,
}

impl ShardHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            ShardHealth::Healthy => "healthy",
            ShardHealth::Recovering => "recovering",
            ShardHealth::UnderReplicated => "under-replicated",
            ShardHealth::Unavailable => "unavailable",
        }
    }
}

/// Everything a scrape shows, at one moment.
#[derive(Debug, Clone)]
pub struct Observation {
    pub node_id: String,
    pub members: Vec<Member>,
    /// Each peer's phi-accrual suspicion, as this node's gossip computes it.
    pub phis: Vec<(String, f64)>,
    /// Gossip messages and bytes this node sent and received.
    pub gossip: tstore_membership::GossipTraffic,
    pub cluster: ClusterStatus,
    pub map: Arc<ClusterMap>,
    /// Each shard of each table with its health, from the map and gossip.
    pub shards: Vec<(ShardKey, ShardHealth)>,
    /// This node's copies and their status (`None`: the copy did not answer).
    pub copies: Vec<(ShardKey, Option<CopyStatus>)>,
    pub requests: RequestMetrics,
    pub commits: CommitMetrics,
    pub group_commits: u64,
    pub entries_logged: u64,
    pub recovery: RecoveryStats,
    pub refusals: Refusals,
    /// Coordinator decisions seen committed since this node started, by kind.
    pub decisions: Vec<(String, u64)>,
}

impl Observe {
    /// The figures now: asks gossip, Raft and every local copy.
    pub async fn gather(&self) -> Observation {
        let snapshot = self.membership.snapshot().await;
        let members = view::members(&snapshot);
        let phis = self.membership.phis().await;
        let gossip = self.membership.traffic();
        let cluster = self.control.status().await;
        let map = self.control.map();
        let live: BTreeMap<&str, bool> = members
            .iter()
            .map(|m| (m.node_id.as_str(), m.status == NodeStatus::Live))
            .collect();
        let is_live = |n: &str| live.get(n).copied().unwrap_or(false);
        let shards = map
            .tables
            .values()
            .flat_map(|t| {
                t.shards.iter().map(|s| {
                    let r = &s.replicas;
                    let health = if !is_live(&r.primary) {
                        ShardHealth::Unavailable
                    } else if r.members().count() < t.spec.replicas as usize
                        || r.members().any(|n| !is_live(n))
                    {
                        ShardHealth::UnderReplicated
                    } else if !r.learners.is_empty() {
                        ShardHealth::Recovering
                    } else {
                        ShardHealth::Healthy
                    };
                    (ShardKey::new(&t.spec.name, s.index), health)
                })
            })
            .collect();
        let local = self.local.current();
        let asks = local.keys().map(|key| {
            let local = local.clone();
            let key = key.clone();
            async move {
                let req = ShardRequest::Status {
                    shard: key.clone(),
                    checksum: false,
                };
                let status = match crate::router::serve_local(&local, req).await {
                    DataReply::Status(s) => Some(s),
                    _ => None,
                };
                (key, status)
            }
        });
        let copies = futures::future::join_all(asks).await;
        Observation {
            node_id: self.node_id.clone(),
            members,
            phis,
            gossip,
            cluster,
            decisions: self.count_decisions(&map),
            map,
            shards,
            copies,
            requests: self.requests.clone(),
            commits: self.store.commit_metrics(),
            group_commits: self.store.commits(),
            entries_logged: self.store.entries_logged(),
            recovery: self.recovery.stats(),
            refusals: self.endpoint.refusals(),
        }
    }

    /// The gossip watch `tstore admin gossip --watch` reads: the state, then
    /// each change (empty if the admin actor is gone or refused the watch).
    pub fn watch_gossip(&self) -> BoxStream<'static, AdminReply> {
        let admin = self.admin.clone();
        futures::stream::once(async move { admin.send(AdminCall(AdminRequest::WatchGossip)).await })
            .flat_map(|res| match res {
                Ok(replies) => replies
                    .take_while(|r| futures::future::ready(!matches!(r, AdminReply::Error(_))))
                    .boxed(),
                Err(_) => futures::stream::empty().boxed(),
            })
            .boxed()
    }

    /// The committed map's version, to wait for its changes.
    pub fn watch_version(&self) -> watch::Receiver<u64> {
        self.control.watch_version()
    }

    /// Counts the events of `map` not counted yet (the map keeps the newest
    /// few hundred; a scrape at least that often misses none).
    fn count_decisions(&self, map: &ClusterMap) -> Vec<(String, u64)> {
        let mut d = self.decisions.lock().expect("decisions lock");
        let last = d.last_version;
        for e in map.events.iter().filter(|e| e.version > last) {
            let kind = e.what.split_whitespace().next().unwrap_or("other");
            *d.by_kind.entry(kind.to_owned()).or_default() += 1;
            d.last_version = d.last_version.max(e.version);
        }
        d.by_kind.iter().map(|(k, n)| (k.clone(), *n)).collect()
    }
}
