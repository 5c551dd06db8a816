//! The control plane: the cluster map, committed through Raft (openraft)
//! among a few voter nodes and stored on LMDB. Every node follows the log
//! (voters and learners alike) and so holds the committed map.
//!
//! Gossip stays the source of liveness; Raft is the source of truth for who
//! owns what. A map change is never made from one node's gossip view alone:
//! it must be committed by a majority of voters, so two sides of a partition
//! cannot both change the map.
//!
//! [`ControlPlane`] is the handle the actors use: read the map, ask for DDL
//! (routed to the leader, where the coordinator places it), serve Raft RPCs,
//! and run one coordinator round ([`ControlPlane::tick`]): bootstrap when
//! enough nodes are up, and on the leader keep the map's node list and the
//! voter set in line with gossip. The decisions themselves are the pure
//! functions of `coordinator::voters` and `coordinator::placement`.

pub mod network;
pub mod store;
pub mod types;
mod view;

pub use view::{FixedMap, MapView};

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use heed::Env;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ServerState, StorageError};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use tstore_membership::{GossipSnapshot, Membership, NodeStatus};
use tstore_transport::Endpoint;

use crate::peer::{PeerMessage, PeerReply, RaftRpc, RaftRpcReply};
use store::{LogStore, MapState, StateMachine};
use tstore_core::cluster_map::{
    ClusterMap, MapCommand, NodeState, PlacementRule, RowKey, Table, TableSpec,
};
use tstore_core::coordinator::failover::{self, Health, ManualOp};
use tstore_core::coordinator::health::{self, live_peers, HealthMemory, KEY_BOOTSTRAP_EXPECT};
use tstore_core::coordinator::placement::{self, Candidate, Load};
use tstore_core::coordinator::replan::Replan;
use tstore_core::coordinator::silence::cut_off_nodes;
use tstore_core::coordinator::suspicion::{Suspicions, Verdict};
use tstore_core::replication::Millis;
use tstore_core::wire::{ClusterStatus, ControlError, ControlRequest};
use types::{raft_id, Raft};

/// How long the coordinator waits for a node reported silent to answer a
/// ping before it counts the node down (`coordinator::suspicion`).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// A leader a majority of voters answered this recently hears: the silence
/// rules never count its own node cut off (`health`).
const QUORUM_FRESH_MS: u64 = 1000;

/// Control-plane settings.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Initialize Raft once this many nodes started with the same value see
    /// each other; 0 = never (join an existing cluster).
    pub bootstrap_expect: usize,
    /// Wanted number of Raft voters (odd: 1, 3, 5).
    pub voters: usize,
    /// A voter down this long is replaced by a live learner.
    pub voter_replace_after: Duration,
    /// How long a map change may wait to be committed.
    pub write_timeout: Duration,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Rebalancing changes in flight at once, cluster-wide; 0 disables
    /// rebalancing (`coordinator::rebalance`).
    pub rebalance_max_moves: usize,
    /// Raft entries between snapshots of the map; after a snapshot the log
    /// is purged but for the last `min(1000, this)` entries (kept for
    /// followers a little behind).
    pub raft_snapshot_entries: u64,
    /// How long a shard whose copy left with its node (down) waits for that
    /// node to come back before copying the shard elsewhere; zero does not
    /// wait (`failover::Health::rereplicate_after_ms`).
    pub rereplicate_after: Duration,
    /// When the coordinator splits shards by itself (elastic tables);
    /// `split_size_bytes` and `split_load_ops` both 0: never.
    pub elastic: tstore_core::coordinator::elastic::ElasticConfig,
    /// How often the coordinator asks the nodes for their shards' sizes
    /// and loads.
    pub elastic_every: Duration,
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            bootstrap_expect: 0,
            voters: 3,
            voter_replace_after: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            // openraft 0.9 has a follower wait `election_timeout_max` (its
            // leader lease) plus a random timeout in [min, max) after the
            // last heartbeat, checked every 1.5 heartbeats: 400 to 575 ms
            // here before a new leader is elected (docs/engineering-notes.md).
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(250),
            rebalance_max_moves: 2,
            raft_snapshot_entries: 5000,
            rereplicate_after: Duration::ZERO,
            elastic: tstore_core::coordinator::elastic::ElasticConfig {
                // Three looks (`elastic_every`) before a new half may split
                // again.
                settle_ms: 30_000,
                ..Default::default()
            },
            elastic_every: Duration::from_secs(10),
        }
    }
}

/// Why the control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlStartError {
    #[error("cannot open the control plane's storage: {0}")]
    Storage(String),
    #[error("invalid Raft settings: {0}")]
    Config(String),
    #[error("Raft did not start: {0}")]
    Start(String),
}

impl From<StorageError<u64>> for ControlStartError {
    fn from(e: StorageError<u64>) -> Self {
        ControlStartError::Storage(e.to_string())
    }
}

/// What the coordinator remembers between rounds (`coordinator::round`).
#[derive(Default)]
pub(crate) struct Upkeep {
    /// The bootstrapping nodes last seen, and since when unchanged.
    pub(crate) bootstrap_view: Option<(Vec<String>, Instant)>,
    /// When each voter was first seen down.
    pub(crate) down_since: HashMap<String, Instant>,
    /// Health derivation's memory: nodes not live since when, and the
    /// primaries' silence reports.
    pub(crate) health: HealthMemory,
    /// This leader stopped its heartbeats: no majority answered it.
    pub(crate) heartbeats_off: bool,
    /// Nodes reported silent by the backups of their shards, probed, and
    /// those held down (`coordinator::suspicion`).
    pub(crate) suspicions: Suspicions,
    /// The nodes the last health derivation had down (a report about one
    /// of them needs no probe).
    pub(crate) last_down: BTreeSet<String>,
    /// Whether the shard planners must run this round.
    pub(crate) replan: Replan,
    /// The elastic planner's memory, and when it last ran
    /// (`coordinator::elastic`).
    pub(crate) elastic: tstore_core::coordinator::elastic::ElasticMemory,
    pub(crate) elastic_at: Option<Instant>,
    /// Since when this leader has seen each sealed merge (table, absorbed
    /// shard) sealed (`coordinator::merge`).
    pub(crate) sealed_since: HashMap<(String, u32), Instant>,
}

/// The control plane of one node.
#[derive(Clone)]
pub struct ControlPlane {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) node_id: String,
    raft_id: u64,
    pub(crate) raft: Raft,
    state: Arc<RwLock<MapState>>,
    version: watch::Receiver<u64>,
    pub(crate) endpoint: Endpoint,
    pub(crate) membership: Arc<Membership>,
    pub(crate) settings: ControlSettings,
    pub(crate) upkeep: tokio::sync::Mutex<Upkeep>,
    /// Runs a coordinator round now rather than at the next [`ROUND`](crate::coordinator::actor::ROUND).
    pub(crate) wake: tokio::sync::Notify,
}

enum Leader {
    Me,
    Other { node_id: String, addr: SocketAddr },
}

impl ControlPlane {
    /// Opens the Raft storage in `env` and starts this node's Raft member.
    pub async fn start(
        env: &Env,
        node_id: &str,
        endpoint: Endpoint,
        membership: Arc<Membership>,
        settings: ControlSettings,
    ) -> Result<Self, ControlStartError> {
        let log = LogStore::open(env).map_err(|e| ControlStartError::Storage(e.to_string()))?;
        let sm = StateMachine::open(env)?;
        let (state, version) = (sm.shared(), sm.watch_version());
        let ms = |d: Duration| d.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "tstore".into(),
            heartbeat_interval: ms(settings.heartbeat),
            election_timeout_min: ms(settings.election_timeout_min),
            election_timeout_max: ms(settings.election_timeout_max),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                settings.raft_snapshot_entries,
            ),
            max_in_snapshot_log_to_keep: settings.raft_snapshot_entries.min(1000),
            purge_batch_size: (settings.raft_snapshot_entries / 4).clamp(1, 256),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControlStartError::Config(e.to_string()))?;
        let id = raft_id(node_id);
        let network = network::Network {
            endpoint: endpoint.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ControlStartError::Start(e.to_string()))?;
        membership
            .set(KEY_BOOTSTRAP_EXPECT, &settings.bootstrap_expect.to_string())
            .await;
        info!(node_id, raft_id = id, "control plane started");
        Ok(Self {
            inner: Arc::new(Inner {
                node_id: node_id.to_owned(),
                raft_id: id,
                raft,
                state,
                version,
                endpoint,
                membership,
                settings,
                upkeep: Default::default(),
                wake: tokio::sync::Notify::new(),
            }),
        })
    }

    /// This node's copy of the committed map (shared, not copied).
    pub fn map(&self) -> Arc<ClusterMap> {
        self.inner.state.read().unwrap().map.clone()
    }

    /// Fires with the map version after every change applied here.
    pub fn watch_version(&self) -> watch::Receiver<u64> {
        self.inner.version.clone()
    }

    /// A read-only view of the committed map, for those that only read it.
    pub fn view(&self) -> MapView {
        let control = self.clone();
        MapView::new(move || control.map(), self.watch_version())
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Stops Raft (on node shutdown).
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(error = %e, "Raft did not stop cleanly");
        }
    }

    /// Serves a Raft RPC from a peer.
    pub async fn handle_rpc(&self, rpc: RaftRpc) -> RaftRpcReply {
        let raft = &self.inner.raft;
        match rpc {
            RaftRpc::AppendEntries(r) => RaftRpcReply::AppendEntries(raft.append_entries(r).await),
            RaftRpc::Vote(r) => RaftRpcReply::Vote(raft.vote(r).await),
            RaftRpc::InstallSnapshot(r) => {
                RaftRpcReply::InstallSnapshot(raft.install_snapshot(r).await)
            }
        }
    }

    /// Serves a map change forwarded by another node to us as the leader.
    pub async fn handle_forwarded(&self, req: ControlRequest) -> PeerReply {
        let res = match self.leader() {
            Ok(Leader::Me) => self.leader_request(req).await,
            Ok(Leader::Other { node_id, .. }) => Err(ControlError::LeaderMoved {
                leader: Some(node_id),
            }),
            Err(e) => Err(e),
        };
        PeerReply::Control(res)
    }

    /// Creates a table: placed and committed by the coordinator on the leader.
    pub async fn create_table(&self, spec: TableSpec) -> Result<(u64, Table), ControlError> {
        spec.validate()?;
        if self.map().tables.contains_key(&spec.name) {
            return Err(ControlError::TableExists(spec.name));
        }
        match self.leader()? {
            Leader::Me => self.leader_create_table(spec).await,
            Leader::Other { node_id, addr } => {
                match self
                    .forward(node_id, addr, ControlRequest::CreateTable(spec))
                    .await?
                {
                    (v, Some(t)) => {
                        self.wait_for_version(v).await;
                        Ok((v, t))
                    }
                    (_, None) => Err(ControlError::Internal(
                        "the leader answered without the table it created".into(),
                    )),
                }
            }
        }
    }

    /// Drops a table.
    pub async fn drop_table(&self, name: String) -> Result<u64, ControlError> {
        let map = self.map();
        if !map.tables.contains_key(&name) {
            return Err(ControlError::no_such_table(&name, &map));
        }
        match self.leader()? {
            Leader::Me => self.write(MapCommand::DropTable { name }).await,
            Leader::Other { node_id, addr } => {
                let (v, _) = self
                    .forward(node_id, addr, ControlRequest::DropTable(name))
                    .await?;
                self.wait_for_version(v).await;
                Ok(v)
            }
        }
    }

    /// Waits (bounded) until this node has applied map version `v`, so a
    /// client that changed the map through us reads its change back here.
    async fn wait_for_version(&self, v: u64) {
        let mut rx = self.inner.version.clone();
        let _ =
            tokio::time::timeout(self.inner.settings.write_timeout, rx.wait_for(|x| *x >= v)).await;
    }

    async fn forward(
        &self,
        node_id: String,
        addr: SocketAddr,
        req: ControlRequest,
    ) -> Result<(u64, Option<Table>), ControlError> {
        match self
            .inner
            .endpoint
            .request(addr, &PeerMessage::Control(req))
            .await
        {
            Ok(PeerReply::Control(res)) => res,
            Ok(other) => Err(ControlError::Internal(format!(
                "the leader {node_id} answered {other:?}"
            ))),
            Err(e) => Err(ControlError::NoLeader(format!(
                "the Raft leader {node_id} is unreachable ({e}); {}",
                self.voters_down_summary()
            ))),
        }
    }

    /// Confirms, through a round of heartbeats, that this leader still has a
    /// majority, so a cut-off leader says so rather than deciding from a
    /// gossip view that only its side shares.
    pub(crate) async fn confirm_leadership(&self) -> Result<(), ControlError> {
        let check = self.inner.raft.ensure_linearizable();
        match tokio::time::timeout(self.inner.settings.write_timeout, check).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                debug!(error = %e, "leadership not confirmed");
                Err(ControlError::NoQuorum(format!(
                    "cannot change the map: {} leads but no majority of voters answers; {}",
                    self.inner.node_id,
                    self.voters_down_summary()
                )))
            }
            Err(_) => Err(ControlError::NoQuorum(format!(
                "cannot change the map: no quorum answered within {:?}; {}",
                self.inner.settings.write_timeout,
                self.voters_down_summary()
            ))),
        }
    }

    async fn leader_create_table(&self, spec: TableSpec) -> Result<(u64, Table), ControlError> {
        self.confirm_leadership().await?;
        let map = self.map();
        if map.tables.contains_key(&spec.name) {
            return Err(ControlError::TableExists(spec.name));
        }
        let snapshot = self.inner.membership.snapshot().await;
        let candidates: Vec<Candidate> = live_peers(&snapshot)
            .into_iter()
            .filter(|p| {
                map.nodes
                    .get(&p.node_id)
                    .is_some_and(|n| n.state == NodeState::Active)
            })
            .map(|p| Candidate {
                node_id: p.node_id,
                zone: p.zone,
            })
            .collect();
        let mut load = Load::of_map(&map);
        let placement = placement::place(
            &candidates,
            &mut load,
            spec.sharding.shard_count(),
            spec.replicas as usize,
        )?;
        let name = spec.name.clone();
        let version = self
            .write(MapCommand::CreateTable { spec, placement })
            .await?;
        let table = self.map().tables.get(&name).cloned().ok_or_else(|| {
            ControlError::Internal(format!(
                "table {name:?} vanished right after it was created"
            ))
        })?;
        Ok((version, table))
    }

    /// Proposes a command on this node (which must be the leader) and waits
    /// for it to be committed and applied.
    pub(crate) async fn write(&self, cmd: MapCommand) -> Result<u64, ControlError> {
        let write = self.inner.raft.client_write(cmd);
        match tokio::time::timeout(self.inner.settings.write_timeout, write).await {
            Err(_) => Err(ControlError::NoQuorum(format!(
                "the change was not committed within {:?}: no quorum; {}",
                self.inner.settings.write_timeout,
                self.voters_down_summary()
            ))),
            Ok(Ok(resp)) => Ok(resp.data?),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ControlError::LeaderMoved {
                    leader: f.leader_node.map(|n| n.node_id),
                })
            }
            Ok(Err(e)) => Err(ControlError::Internal(e.to_string())),
        }
    }

    fn leader(&self) -> Result<Leader, ControlError> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(id) if id == self.inner.raft_id && metrics.state == ServerState::Leader => {
                Ok(Leader::Me)
            }
            Some(id) => {
                let node = metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .cloned()
                    .ok_or_else(|| {
                        ControlError::Internal(format!(
                            "the Raft leader (id {id}) is not in the membership"
                        ))
                    })?;
                let addr = node.addr.parse().map_err(|e| {
                    ControlError::Internal(format!(
                        "leader {} has a bad address: {e}",
                        node.node_id
                    ))
                })?;
                Ok(Leader::Other {
                    node_id: node.node_id,
                    addr,
                })
            }
            None if metrics.membership_config.membership().voter_ids().count() == 0 => {
                Err(ControlError::NotFormed {
                    need: self.inner.settings.bootstrap_expect.max(1),
                    have: self.inner.settings.bootstrap_expect,
                })
            }
            None => Err(ControlError::NoLeader(format!(
                "no Raft leader reachable; {}",
                self.voters_down_summary()
            ))),
        }
    }

    /// "voters n2, n3 are down (1 of 3 live; a majority of 2 is needed)".
    fn voters_down_summary(&self) -> String {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let live: BTreeSet<String> = self
            .inner
            .membership
            .statuses_now()
            .into_iter()
            .filter(|(_, s)| *s == NodeStatus::Live)
            .map(|(n, _)| n)
            .collect();
        let mut voters: Vec<String> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.node_id.clone()))
            .collect();
        voters.sort();
        let down: Vec<&String> = voters.iter().filter(|v| !live.contains(*v)).collect();
        let live_count = voters.len() - down.len();
        let need = voters.len() / 2 + 1;
        if down.is_empty() {
            format!(
                "all {} voters are live in gossip but none leads yet",
                voters.len()
            )
        } else {
            format!(
                "voters {} {} down ({live_count} of {} live; a majority of {need} is needed)",
                down.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if down.len() == 1 { "is" } else { "are" },
                voters.len()
            )
        }
    }

    /// The control plane as this node sees it.
    pub async fn status(&self) -> ClusterStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let live: BTreeSet<String> = self
            .inner
            .membership
            .statuses_now()
            .into_iter()
            .filter(|(_, s)| *s == NodeStatus::Live)
            .map(|(n, _)| n)
            .collect();
        let named = |ids: Vec<u64>| -> Vec<(String, bool)> {
            let mut named: Vec<(String, bool)> = ids
                .into_iter()
                .filter_map(|id| membership.get_node(&id).map(|n| n.node_id.clone()))
                .map(|n| {
                    let l = live.contains(&n);
                    (n, l)
                })
                .collect();
            named.sort();
            named
        };
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shut down",
        };
        ClusterStatus {
            node_id: self.inner.node_id.clone(),
            role: role.into(),
            leader: metrics
                .current_leader
                .and_then(|id| membership.get_node(&id).map(|n| n.node_id.clone())),
            term: metrics.current_term,
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            voters: named(membership.voter_ids().collect()),
            learners: named(membership.learner_ids().collect()),
            map_version: self.map().version,
        }
    }

    /// Commits one shard configuration change (on the leader).
    pub(crate) async fn commit_change(&self, c: failover::Change) -> Result<u64, ControlError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.write(c.into_command(now)).await
    }

    /// What gossip says about the nodes of the map and their copies
    /// (`tstore_core::coordinator::health`), with what this node remembers
    /// between rounds.
    pub(crate) async fn health(&self, snapshot: &GossipSnapshot, map: &ClusterMap) -> Health {
        let now = crate::clock::now_ms();
        let mut upkeep = self.inner.upkeep.lock().await;
        let mut health =
            health::derive(&self.inner.node_id, snapshot, map, &mut upkeep.health, now);
        upkeep
            .suspicions
            .apply(&self.inner.node_id, &mut health, now);
        upkeep.last_down = health.down.clone();
        health.now_unix_ms = crate::clock::wall_ms();
        health.rereplicate_after_ms = self.inner.settings.rereplicate_after.as_millis() as u64;
        // A node the silence rules accuse of being cut off is counted so
        // only once shown deaf (`Suspicions::screen`); the others are
        // probed as a primary the backups report silent is.
        let quorum_fresh = self
            .inner
            .raft
            .metrics()
            .borrow()
            .millis_since_quorum_ack
            .is_some_and(|ms| ms <= QUORUM_FRESH_MS);
        let accused = cut_off_nodes(map, &health.silent, &health.namings);
        let screened = upkeep.suspicions.screen(
            &self.inner.node_id,
            accused,
            &health.down,
            quorum_fresh,
            now,
        );
        drop(upkeep);
        health.hears = screened.hears;
        for node in screened.probe {
            let control = self.clone();
            let me = self.inner.node_id.clone();
            tokio::spawn(async move { control.on_suspect(&me, node, 0).await });
        }
        health
    }

    /// This node's backups have heard nothing from `node` for `silent_ms`:
    /// tells the Raft leader (this node's own coordinator if it leads).
    pub async fn report_silent(&self, me: &str, node: String, silent_ms: Millis) {
        match self.leader() {
            Ok(Leader::Me) => self.on_suspect(me, node, silent_ms).await,
            Ok(Leader::Other { addr, .. }) => {
                let msg = PeerMessage::Suspect { node, silent_ms };
                if let Err(e) = self.inner.endpoint.send_oneway(addr, &msg) {
                    debug!(error = %e, "could not report a silent primary to the leader");
                }
            }
            Err(_) => {}
        }
    }

    /// A report that `node` has been silent for `silent_ms` to `reporter`'s
    /// backups. On the leader: probes the node, and if it does not answer
    /// within [`PROBE_TIMEOUT`] counts it down and runs a coordinator round
    /// at once (see `coordinator::suspicion`).
    pub async fn on_suspect(&self, reporter: &str, node: String, silent_ms: Millis) {
        if !self.is_leader() {
            return;
        }
        let map = self.map();
        let verdict = {
            let mut upkeep = self.inner.upkeep.lock().await;
            let Upkeep {
                suspicions,
                last_down,
                ..
            } = &mut *upkeep;
            suspicions.report(&node, &map, last_down, crate::clock::now_ms())
        };
        match verdict {
            Verdict::Ignore => {}
            Verdict::Confirmed => {
                warn!(%node, %reporter, silent_ms, "the node this one replaced as Raft leader is silent to a backup: counting it down");
                self.inner.wake.notify_one();
            }
            Verdict::Probe => {
                let Some(addr) = map
                    .nodes
                    .get(&node)
                    .and_then(|n| n.addr.parse::<SocketAddr>().ok())
                else {
                    let mut upkeep = self.inner.upkeep.lock().await;
                    upkeep
                        .suspicions
                        .probed(&node, true, crate::clock::now_ms());
                    return;
                };
                let ping = self
                    .inner
                    .endpoint
                    .request::<_, PeerReply>(addr, &PeerMessage::Ping);
                let answered = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, ping).await,
                    Ok(Ok(PeerReply::Pong { node_id, .. })) if node_id == node
                );
                let down = {
                    let mut upkeep = self.inner.upkeep.lock().await;
                    upkeep
                        .suspicions
                        .probed(&node, answered, crate::clock::now_ms())
                };
                if down {
                    warn!(%node, %reporter, silent_ms, probe_ms = PROBE_TIMEOUT.as_millis() as u64, "a primary's node is silent to a backup and did not answer a probe: counting it down");
                    self.inner.wake.notify_one();
                } else {
                    info!(%node, %reporter, silent_ms, "a node reported silent answered the probe: not counting it down (the reporter may be the one cut off)");
                }
            }
        }
    }

    /// This node became the Raft leader, replacing `previous` (see
    /// `Suspicions::leading_since`).
    pub(crate) async fn leading_since(&self, previous: Option<String>) {
        let mut upkeep = self.inner.upkeep.lock().await;
        upkeep
            .suspicions
            .leading_since(previous, crate::clock::now_ms());
    }

    /// Resolves when a coordinator round should run at once.
    pub(crate) async fn woken(&self) {
        self.inner.wake.notified().await
    }

    /// This node's Raft id.
    pub(crate) fn raft_id(&self) -> u64 {
        self.inner.raft_id
    }

    fn is_leader(&self) -> bool {
        matches!(self.leader(), Ok(Leader::Me))
    }

    /// An operator's change to one shard (promote, move, remove a copy).
    pub async fn manual(
        &self,
        table: String,
        shard: u32,
        op: ManualOp,
    ) -> Result<u64, ControlError> {
        self.on_leader(ControlRequest::Manual { table, shard, op })
            .await
    }

    /// Splits a shard in two (`MapCommand::SplitShard`): its copies then
    /// split their data locally (the shard actor, "Splits").
    pub async fn split(
        &self,
        table: String,
        shard: u32,
        at: Option<RowKey>,
    ) -> Result<u64, ControlError> {
        self.on_leader(ControlRequest::Split { table, shard, at })
            .await
    }

    /// Begins merging shards `a` and `b` of a table: the newer goes into
    /// the other (`MapCommand::BeginMerge`); the coordinator carries it
    /// out round by round (`coordinator::merge`).
    pub async fn merge(&self, table: String, a: u32, b: u32) -> Result<u64, ControlError> {
        let map = self.map();
        if !map.tables.contains_key(&table) {
            return Err(ControlError::no_such_table(&table, &map));
        }
        let (keep, absorb) = (a.min(b), a.max(b));
        self.on_leader(ControlRequest::Merge {
            table,
            keep,
            absorb,
        })
        .await
    }

    /// Turns a table's automatic merges on or off.
    pub async fn set_auto_merge(&self, table: String, on: bool) -> Result<u64, ControlError> {
        let map = self.map();
        if !map.tables.contains_key(&table) {
            return Err(ControlError::no_such_table(&table, &map));
        }
        self.on_leader(ControlRequest::SetAutoMerge { table, on })
            .await
    }

    /// Turns a table's automatic splits on or off.
    pub async fn set_auto_split(&self, table: String, on: bool) -> Result<u64, ControlError> {
        let map = self.map();
        if !map.tables.contains_key(&table) {
            return Err(ControlError::no_such_table(&table, &map));
        }
        self.on_leader(ControlRequest::SetAutoSplit { table, on })
            .await
    }

    /// Marks a node draining (its copies move away) or active again.
    pub async fn set_node_state(
        &self,
        node_id: String,
        state: NodeState,
    ) -> Result<u64, ControlError> {
        let map = self.map();
        if !map.nodes.contains_key(&node_id) {
            return Err(ControlError::NoSuchNode(node_id));
        }
        if state == NodeState::Draining {
            if let Some(why) = failover::drain_blocker(&map, &node_id) {
                return Err(ControlError::Refused(why));
            }
        }
        self.on_leader(ControlRequest::SetNodeState { node_id, state })
            .await
    }

    /// Sets (or clears) a table's placement rule; the coordinator then
    /// moves the table's copies where it says.
    pub async fn set_placement(
        &self,
        table: String,
        rule: Option<PlacementRule>,
    ) -> Result<u64, ControlError> {
        let map = self.map();
        let Some(t) = map.tables.get(&table) else {
            return Err(ControlError::no_such_table(&table, &map));
        };
        if let Some(rule) = &rule {
            rule.validate(t.spec.replicas)?;
            if let Some(n) = rule
                .nodes()
                .into_iter()
                .find(|n| !map.nodes.contains_key(*n))
            {
                return Err(ControlError::NoSuchNode(n.clone()));
            }
        }
        self.on_leader(ControlRequest::SetPlacement { table, rule })
            .await
    }

    /// Runs a request on the leader (here, or forwarded) and waits until this
    /// node has applied its result.
    async fn on_leader(&self, req: ControlRequest) -> Result<u64, ControlError> {
        match self.leader()? {
            Leader::Me => self.leader_request(req).await.map(|(v, _)| v),
            Leader::Other { node_id, addr } => {
                let (v, _) = self.forward(node_id, addr, req).await?;
                self.wait_for_version(v).await;
                Ok(v)
            }
        }
    }

    /// Serves a control request as the leader.
    async fn leader_request(
        &self,
        req: ControlRequest,
    ) -> Result<(u64, Option<Table>), ControlError> {
        match req {
            ControlRequest::CreateTable(spec) => self
                .leader_create_table(spec)
                .await
                .map(|(v, t)| (v, Some(t))),
            ControlRequest::DropTable(name) => self
                .write(MapCommand::DropTable { name })
                .await
                .map(|v| (v, None)),
            ControlRequest::SetNodeState { node_id, state } => {
                self.confirm_leadership().await?;
                self.write(MapCommand::SetNodeState { node_id, state })
                    .await
                    .map(|v| (v, None))
            }
            ControlRequest::SetPlacement { table, rule } => {
                self.confirm_leadership().await?;
                self.write(MapCommand::SetPlacement {
                    table,
                    rule,
                    at_unix_ms: crate::clock::wall_ms(),
                })
                .await
                .map(|v| (v, None))
            }
            ControlRequest::SetAutoSplit { table, on } => {
                self.confirm_leadership().await?;
                self.write(MapCommand::SetAutoSplit {
                    table,
                    on,
                    at_unix_ms: crate::clock::wall_ms(),
                })
                .await
                .map(|v| (v, None))
            }
            ControlRequest::SetAutoMerge { table, on } => {
                self.confirm_leadership().await?;
                self.write(MapCommand::SetAutoMerge {
                    table,
                    on,
                    at_unix_ms: crate::clock::wall_ms(),
                })
                .await
                .map(|v| (v, None))
            }
            ControlRequest::Merge {
                table,
                keep,
                absorb,
            } => {
                self.confirm_leadership().await?;
                info!(shard = %format!("{table}/{absorb}"), into = keep, "operator merge");
                self.write(MapCommand::BeginMerge {
                    table,
                    keep,
                    absorb,
                    why: "operator: merge-shards".into(),
                    at_unix_ms: crate::clock::wall_ms(),
                })
                .await
                .map(|v| (v, None))
            }
            ControlRequest::Split { table, shard, at } => {
                self.confirm_leadership().await?;
                let map = self.map();
                let t = map
                    .tables
                    .get(&table)
                    .ok_or_else(|| ControlError::no_such_table(&table, &map))?;
                let s = t.shards.get(shard as usize).ok_or_else(|| {
                    ControlError::Refused(format!(
                        "table {table:?} has shards 0..{}",
                        t.shards.len()
                    ))
                })?;
                // The split is carried out by the parent's copies: every
                // member must be there to build its half.
                let snapshot = self.inner.membership.snapshot().await;
                let health = self.health(&snapshot, &map).await;
                if let Some(n) = s.replicas.members().find(|n| !health.live.contains(*n)) {
                    return Err(ControlError::Refused(format!(
                        "{n}, a member of {table}/{shard}, is not live: split once the shard has all its copies"
                    )));
                }
                let cmd = MapCommand::SplitShard {
                    table: table.clone(),
                    shard,
                    expect_epoch: s.replicas.epoch,
                    at,
                    why: "operator: split-shard".into(),
                    at_unix_ms: crate::clock::wall_ms(),
                };
                info!(shard = %format!("{table}/{shard}"), "operator split");
                self.write(cmd).await.map(|v| (v, None))
            }
            ControlRequest::Manual { table, shard, op } => {
                self.confirm_leadership().await?;
                let map = self.map();
                let snapshot = self.inner.membership.snapshot().await;
                let health = self.health(&snapshot, &map).await;
                let change = failover::manual(&map, &table, shard, &op, &health)
                    .map_err(ControlError::Refused)?;
                info!(shard = %format!("{table}/{shard}"), what = %change.what, "operator change");
                self.commit_change(change).await.map(|v| (v, None))
            }
        }
    }
}
