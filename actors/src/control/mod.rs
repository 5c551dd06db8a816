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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use heed::Env;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ServerState, StorageError};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use tstore_membership::view::KEY_ADDR;
use tstore_membership::{GossipSnapshot, Membership, NodeStatus};
use tstore_transport::Endpoint;

use crate::peer::{PeerMessage, PeerReply, RaftRpc, RaftRpcReply};
use store::{LogStore, MapState, StateMachine};
use tstore_core::cluster_map::{ClusterMap, MapCommand, NodeState, Table, TableSpec};
use tstore_core::coordinator::failover::{self, Health, ManualOp};
use tstore_core::coordinator::placement::{self, Candidate, Load};
use tstore_core::coordinator::rebalance;
use tstore_core::coordinator::silence::{cut_off_nodes, Reports, Silence, SilenceTracker};
use tstore_core::coordinator::voters::{self, Bootstrap, GroupView, VoterChange};
use tstore_core::shard::parse_gossip_value;
use tstore_core::shard::LocalRole;
use tstore_core::wire::{ClusterStatus, ControlRequest};
use types::{raft_id, Raft, RaftNode};

/// Gossip key: the `--bootstrap-expect` a node was started with.
pub const KEY_BOOTSTRAP_EXPECT: &str = "bootstrap_expect";

/// How long the set of bootstrapping nodes must stay the same before the
/// smallest of them initializes Raft.
const BOOTSTRAP_STABLE: Duration = Duration::from_secs(1);

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
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            bootstrap_expect: 0,
            voters: 3,
            voter_replace_after: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(600),
            election_timeout_max: Duration::from_millis(1200),
            rebalance_max_moves: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot open the control plane's storage: {0}")]
    Storage(String),
    #[error("invalid Raft settings: {0}")]
    Config(String),
    #[error("Raft did not start: {0}")]
    Start(String),
}

impl From<StorageError<u64>> for ControlError {
    fn from(e: StorageError<u64>) -> Self {
        ControlError::Storage(e.to_string())
    }
}

/// What the coordinator remembers between rounds.
#[derive(Default)]
struct Upkeep {
    /// The bootstrapping nodes last seen, and since when unchanged.
    bootstrap_view: Option<(Vec<String>, Instant)>,
    /// When each voter was first seen down.
    down_since: HashMap<String, Instant>,
    /// When each node of the map was first seen not live (joining, or
    /// unknown to gossip), for the failover planner.
    not_live_since: HashMap<String, Instant>,
    /// Primaries' reports of silent backups, confirmed over rounds.
    silence: SilenceTracker,
    /// This leader stopped its heartbeats: no majority answered it.
    heartbeats_off: bool,
}

/// A node that is neither live nor known down (joining, or unknown to this
/// leader's gossip, e.g. it died before this leader started) counts as down
/// after this long.
const NOT_LIVE_LIMIT: Duration = Duration::from_secs(10);
/// New copies started per coordinator round, cluster-wide.
const NEW_COPIES_PER_ROUND: usize = 4;
/// A leader no majority has answered for this long stops its heartbeats
/// (see `ControlPlane::step_aside_if_unheard`).
const QUORUM_LOST: Duration = Duration::from_millis(1000);

/// A live node as gossip shows it.
#[derive(Debug, Clone)]
struct Peer {
    node_id: String,
    addr: String,
    zone: String,
    bootstrap_expect: Option<usize>,
}

/// The live nodes (newest incarnation of each id) in a gossip snapshot.
fn live_peers(snapshot: &GossipSnapshot) -> Vec<Peer> {
    let mut newest: BTreeMap<&str, &tstore_membership::view::NodeView> = BTreeMap::new();
    for n in &snapshot.nodes {
        let slot = newest.entry(&n.node_id).or_insert(n);
        if n.generation > slot.generation {
            *slot = n;
        }
    }
    newest
        .into_values()
        .filter(|n| n.status == NodeStatus::Live)
        .map(|n| {
            let key = |k: &str| {
                n.keys
                    .get(k)
                    .filter(|v| !v.deleted)
                    .map(|v| v.value.clone())
            };
            Peer {
                node_id: n.node_id.clone(),
                addr: key(KEY_ADDR).unwrap_or_else(|| n.gossip_addr.to_string()),
                zone: key("zone").unwrap_or_default(),
                bootstrap_expect: key(KEY_BOOTSTRAP_EXPECT).and_then(|v| v.parse().ok()),
            }
        })
        .collect()
}

/// The control plane of one node.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    raft_id: u64,
    raft: Raft,
    state: Arc<RwLock<MapState>>,
    version: watch::Receiver<u64>,
    endpoint: Endpoint,
    membership: Arc<Membership>,
    settings: ControlSettings,
    upkeep: tokio::sync::Mutex<Upkeep>,
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
    ) -> Result<Self, ControlError> {
        let log = LogStore::open(env).map_err(|e| ControlError::Storage(e.to_string()))?;
        let sm = StateMachine::open(env)?;
        let (state, version) = (sm.shared(), sm.watch_version());
        let ms = |d: Duration| d.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "tstore".into(),
            heartbeat_interval: ms(settings.heartbeat),
            election_timeout_min: ms(settings.election_timeout_min),
            election_timeout_max: ms(settings.election_timeout_max),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControlError::Config(e.to_string()))?;
        let id = raft_id(node_id);
        let network = network::Network {
            endpoint: endpoint.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ControlError::Start(e.to_string()))?;
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
            Ok(Leader::Other { node_id, .. }) => Err(format!(
                "{} is not the Raft leader any more ({node_id} is); retry",
                self.inner.node_id
            )),
            Err(e) => Err(e),
        };
        PeerReply::Control(res)
    }

    /// Creates a table: placed and committed by the coordinator on the leader.
    pub async fn create_table(&self, spec: TableSpec) -> Result<(u64, Table), String> {
        spec.validate().map_err(|e| e.to_string())?;
        if self.map().tables.contains_key(&spec.name) {
            return Err(format!("table {:?} already exists", spec.name));
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
                    (_, None) => Err("the leader created no table".into()),
                }
            }
        }
    }

    /// Drops a table.
    pub async fn drop_table(&self, name: String) -> Result<u64, String> {
        if !self.map().tables.contains_key(&name) {
            return Err(format!("table {name:?} does not exist"));
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
    ) -> Result<(u64, Option<Table>), String> {
        match self
            .inner
            .endpoint
            .request(addr, &PeerMessage::Control(req))
            .await
        {
            Ok(PeerReply::Control(res)) => res,
            Ok(other) => Err(format!("the leader {node_id} answered {other:?}")),
            Err(e) => Err(format!(
                "the Raft leader {node_id} is unreachable ({e}); {}",
                self.voters_down_summary()
            )),
        }
    }

    /// Confirms, through a round of heartbeats, that this leader still has a
    /// majority, so a cut-off leader says so rather than deciding from a
    /// gossip view that only its side shares.
    async fn confirm_leadership(&self) -> Result<(), String> {
        let check = self.inner.raft.ensure_linearizable();
        match tokio::time::timeout(self.inner.settings.write_timeout, check).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                debug!(error = %e, "leadership not confirmed");
                Err(format!(
                    "cannot change the map: {} leads but no majority of voters answers; {}",
                    self.inner.node_id,
                    self.voters_down_summary()
                ))
            }
            Err(_) => Err(format!(
                "cannot change the map: no quorum answered within {:?}; {}",
                self.inner.settings.write_timeout,
                self.voters_down_summary()
            )),
        }
    }

    async fn leader_create_table(&self, spec: TableSpec) -> Result<(u64, Table), String> {
        self.confirm_leadership().await?;
        let map = self.map();
        if map.tables.contains_key(&spec.name) {
            return Err(format!("table {:?} already exists", spec.name));
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
        )
        .map_err(|e| e.to_string())?;
        let name = spec.name.clone();
        let version = self
            .write(MapCommand::CreateTable { spec, placement })
            .await?;
        let table = self
            .map()
            .tables
            .get(&name)
            .cloned()
            .ok_or_else(|| format!("table {name:?} vanished right after it was created"))?;
        Ok((version, table))
    }

    /// Proposes a command on this node (which must be the leader) and waits
    /// for it to be committed and applied.
    async fn write(&self, cmd: MapCommand) -> Result<u64, String> {
        let write = self.inner.raft.client_write(cmd);
        match tokio::time::timeout(self.inner.settings.write_timeout, write).await {
            Err(_) => Err(format!(
                "the change was not committed within {:?}: no quorum; {}",
                self.inner.settings.write_timeout,
                self.voters_down_summary()
            )),
            Ok(Ok(resp)) => resp.data.map_err(|e| e.to_string()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(format!(
                "leadership moved (now {}); retry",
                f.leader_node
                    .map(|n| n.node_id)
                    .unwrap_or_else(|| "unknown".into())
            )),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }

    fn leader(&self) -> Result<Leader, String> {
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
                    .ok_or_else(|| format!("the Raft leader (id {id}) is not in the membership"))?;
                let addr = node
                    .addr
                    .parse()
                    .map_err(|e| format!("leader {} has a bad address: {e}", node.node_id))?;
                Ok(Leader::Other {
                    node_id: node.node_id,
                    addr,
                })
            }
            None if metrics.membership_config.membership().voter_ids().count() == 0 => Err(format!(
                "the control plane is not formed yet: start {} nodes with --bootstrap-expect {} (this node has {})",
                self.inner.settings.bootstrap_expect.max(1),
                self.inner.settings.bootstrap_expect.max(1),
                self.inner.settings.bootstrap_expect
            )),
            None => Err(format!("no Raft leader reachable; {}", self.voters_down_summary())),
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
            last_log_index: metrics.last_log_index.unwrap_or(0),
            voters: named(membership.voter_ids().collect()),
            learners: named(membership.learner_ids().collect()),
            map_version: self.map().version,
        }
    }

    /// One coordinator round: bootstrap if due; on the leader, register live
    /// nodes in the map and keep the voter set.
    pub async fn tick(&self) {
        let snapshot = self.inner.membership.snapshot().await;
        let peers = live_peers(&snapshot);
        let metrics = self.inner.raft.metrics().borrow().clone();
        let formed = metrics.membership_config.membership().voter_ids().count() > 0;
        if !formed {
            self.bootstrap(&peers).await;
            return;
        }
        if self.step_aside_if_unheard(&metrics).await {
            // Stepping aside: send nothing that would reset the followers'
            // election timers (a leadership check is an AppendEntries).
            return;
        }
        if metrics.state == ServerState::Leader {
            self.register_nodes(&peers).await;
            self.keep_voters(&peers, &metrics).await;
            self.heal(&snapshot).await;
        }
    }

    /// Commits one shard configuration change (on the leader).
    async fn commit_change(&self, c: failover::Change) -> Result<u64, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.write(c.into_command(now)).await
    }

    /// An operator's change to one shard (promote, move, remove a copy).
    pub async fn manual(&self, table: String, shard: u32, op: ManualOp) -> Result<u64, String> {
        self.on_leader(ControlRequest::Manual { table, shard, op })
            .await
    }

    /// Marks a node draining (its copies move away) or active again.
    pub async fn set_node_state(&self, node_id: String, state: NodeState) -> Result<u64, String> {
        let map = self.map();
        if !map.nodes.contains_key(&node_id) {
            return Err(format!("node {node_id:?} is not in the cluster map"));
        }
        if state == NodeState::Draining {
            if let Some(why) = failover::drain_blocker(&map, &node_id) {
                return Err(why);
            }
        }
        self.on_leader(ControlRequest::SetNodeState { node_id, state })
            .await
    }

    /// Runs a request on the leader (here, or forwarded) and waits until this
    /// node has applied its result.
    async fn on_leader(&self, req: ControlRequest) -> Result<u64, String> {
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
    async fn leader_request(&self, req: ControlRequest) -> Result<(u64, Option<Table>), String> {
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
            ControlRequest::Manual { table, shard, op } => {
                self.confirm_leadership().await?;
                let map = self.map();
                let snapshot = self.inner.membership.snapshot().await;
                let health = self.health(&snapshot, &map).await;
                let change = failover::manual(&map, &table, shard, &op, &health)?;
                info!(shard = %format!("{table}/{shard}"), what = %change.what, "operator change");
                self.commit_change(change).await.map(|v| (v, None))
            }
        }
    }

    /// What gossip says about the nodes of the map and their copies.
    async fn health(&self, snapshot: &GossipSnapshot, map: &ClusterMap) -> Health {
        let mut newest: BTreeMap<&str, &tstore_membership::view::NodeView> = BTreeMap::new();
        for n in &snapshot.nodes {
            let slot = newest.entry(&n.node_id).or_insert(n);
            if n.generation > slot.generation {
                *slot = n;
            }
        }
        let mut health = Health::default();
        let mut upkeep = self.inner.upkeep.lock().await;
        upkeep
            .not_live_since
            .retain(|n, _| map.nodes.contains_key(n));
        for (id, entry) in &map.nodes {
            if entry.state == NodeState::Removed {
                continue;
            }
            let status = if *id == self.inner.node_id {
                Some(NodeStatus::Live)
            } else {
                newest.get(id.as_str()).map(|n| n.status)
            };
            match status {
                Some(NodeStatus::Live) => {
                    upkeep.not_live_since.remove(id);
                    health.live.insert(id.clone());
                }
                Some(NodeStatus::Down | NodeStatus::Left) => {
                    health.down.insert(id.clone());
                }
                Some(NodeStatus::Joining) | None => {
                    let since = *upkeep
                        .not_live_since
                        .entry(id.clone())
                        .or_insert_with(Instant::now);
                    if since.elapsed() >= NOT_LIVE_LIMIT {
                        health.down.insert(id.clone());
                    }
                }
            }
        }
        let mut silent_now: Reports = Vec::new();
        for n in newest.values().filter(|n| n.status == NodeStatus::Live) {
            for (k, v) in &n.keys {
                let Some(shard) = k.strip_prefix("shard:") else {
                    continue;
                };
                let Some((table, index)) = shard.rsplit_once('/') else {
                    continue;
                };
                let (Ok(index), false) = (index.parse::<u32>(), v.deleted) else {
                    continue;
                };
                let Some(copy) = parse_gossip_value(&v.value) else {
                    continue;
                };
                match copy.role {
                    LocalRole::Learner if copy.ready => {
                        health.ready.insert((
                            table.to_owned(),
                            index,
                            n.node_id.clone(),
                            copy.epoch,
                        ));
                    }
                    LocalRole::Primary if !copy.silent.is_empty() => {
                        silent_now.push((
                            (table.to_owned(), index),
                            Silence {
                                primary: n.node_id.clone(),
                                epoch: copy.epoch,
                                silent: copy.silent.into_iter().collect(),
                            },
                        ));
                    }
                    _ => {}
                }
            }
        }
        let now = crate::shard::actor::now_ms();
        health.silent = upkeep.silence.observe(now, silent_now);
        health.namings = upkeep.silence.namings(now);
        for deaf in cut_off_nodes(map, &health.silent, &health.namings) {
            upkeep.silence.suspect(&deaf, now);
        }
        health.suspect = upkeep.silence.suspects(now);
        health
    }

    /// Failover and re-replication: commits what the failover planner says;
    /// when it has nothing to do, what the rebalancer says.
    async fn heal(&self, snapshot: &GossipSnapshot) {
        let map = self.map();
        if map.tables.is_empty() {
            return;
        }
        let health = self.health(snapshot, &map).await;
        let mut changes = failover::plan(&map, &health, NEW_COPIES_PER_ROUND);
        if changes.is_empty() {
            changes = rebalance::plan(&map, &health, self.inner.settings.rebalance_max_moves);
        }
        if changes.is_empty() {
            return;
        }
        // Decide only with a majority behind us: a cut-off leader must not
        // promote from its partial view (its writes would fail anyway).
        if let Err(e) = self.confirm_leadership().await {
            warn!(error = %e, "not healing shards");
            return;
        }
        for c in changes {
            let (shard, what, why) = (
                format!("{}/{}", c.table, c.shard),
                c.what.clone(),
                c.why.clone(),
            );
            match self.commit_change(c).await {
                Ok(v) => info!(%shard, %what, %why, map_version = v, "shard reconfigured"),
                Err(e) => warn!(%shard, %what, error = %e, "shard change not committed"),
            }
        }
    }

    /// A leader that no majority has answered for [`QUORUM_LOST`] stops
    /// sending heartbeats. A leader that can send but not hear (a one-way
    /// partition) would otherwise keep its followers from ever electing
    /// another: they hear its heartbeats, so their election timers never
    /// fire, while it can commit nothing, and no shard change would ever be
    /// committed again. Without its heartbeats they elect a leader among
    /// themselves; it sends heartbeats again once a majority answers or it
    /// has stepped down (on hearing the newer term). Safety does not depend
    /// on heartbeats. Returns whether this leader is stepping aside.
    async fn step_aside_if_unheard(&self, metrics: &openraft::RaftMetrics<u64, RaftNode>) -> bool {
        let leader = metrics.state == ServerState::Leader;
        let unheard = leader
            && metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| ms > QUORUM_LOST.as_millis() as u64);
        let mut upkeep = self.inner.upkeep.lock().await;
        if unheard && !upkeep.heartbeats_off {
            warn!(
                ms_since_quorum = metrics.millis_since_quorum_ack,
                "no majority of voters has answered this leader: stopping heartbeats so the others elect a leader"
            );
            self.inner.raft.runtime_config().heartbeat(false);
            upkeep.heartbeats_off = true;
        } else if !unheard && upkeep.heartbeats_off {
            info!(leader, "heartbeats on again");
            self.inner.raft.runtime_config().heartbeat(true);
            upkeep.heartbeats_off = false;
        }
        upkeep.heartbeats_off
    }

    async fn bootstrap(&self, peers: &[Peer]) {
        let expect = self.inner.settings.bootstrap_expect;
        if expect == 0 {
            return;
        }
        let same: Vec<String> = peers
            .iter()
            .filter(|p| p.bootstrap_expect == Some(expect))
            .map(|p| p.node_id.clone())
            .collect();
        let stable = {
            let mut upkeep = self.inner.upkeep.lock().await;
            match &upkeep.bootstrap_view {
                Some((view, since)) if *view == same => since.elapsed() >= BOOTSTRAP_STABLE,
                _ => {
                    upkeep.bootstrap_view = Some((same.clone(), Instant::now()));
                    false
                }
            }
        };
        match voters::bootstrap(&self.inner.node_id, expect, &same, stable) {
            Bootstrap::Initialize(ids) => {
                let nodes: BTreeMap<u64, RaftNode> = ids
                    .iter()
                    .filter_map(|id| peers.iter().find(|p| &p.node_id == id))
                    .map(|p| {
                        (
                            raft_id(&p.node_id),
                            RaftNode {
                                node_id: p.node_id.clone(),
                                addr: p.addr.clone(),
                            },
                        )
                    })
                    .collect();
                info!(voters = ?ids, "bootstrapping the control plane");
                match self.inner.raft.initialize(nodes).await {
                    Ok(()) => info!("control plane initialized"),
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                        debug!("control plane already initialized")
                    }
                    Err(e) => warn!(error = %e, "bootstrap failed; will retry"),
                }
            }
            other => debug!(?other, "bootstrap: waiting"),
        }
    }

    async fn register_nodes(&self, peers: &[Peer]) {
        let map = self.map();
        for p in peers {
            let known = map.nodes.get(&p.node_id);
            if known.is_some_and(|n| n.addr == p.addr && n.zone == p.zone) {
                continue;
            }
            let cmd = MapCommand::RegisterNode {
                node_id: p.node_id.clone(),
                addr: p.addr.clone(),
                zone: p.zone.clone(),
            };
            match self.write(cmd).await {
                Ok(v) => {
                    info!(node_id = %p.node_id, map_version = v, "node registered in the cluster map")
                }
                Err(e) => warn!(node_id = %p.node_id, error = %e, "could not register node"),
            }
        }
    }

    async fn keep_voters(&self, peers: &[Peer], metrics: &openraft::RaftMetrics<u64, RaftNode>) {
        let membership = metrics.membership_config.membership();
        let name = |id: u64| membership.get_node(&id).map(|n| n.node_id.clone());
        let live: BTreeSet<String> = peers.iter().map(|p| p.node_id.clone()).collect();
        let voters: BTreeSet<String> = membership.voter_ids().filter_map(name).collect();
        let learners: BTreeSet<String> = membership.learner_ids().filter_map(name).collect();
        let down_for = {
            let mut upkeep = self.inner.upkeep.lock().await;
            upkeep
                .down_since
                .retain(|n, _| voters.contains(n) && !live.contains(n));
            for v in voters.iter().filter(|v| !live.contains(*v)) {
                upkeep
                    .down_since
                    .entry(v.clone())
                    .or_insert_with(Instant::now);
            }
            upkeep
                .down_since
                .iter()
                .map(|(n, t)| (n.clone(), t.elapsed()))
                .collect()
        };
        let view = GroupView {
            voters,
            learners,
            live,
            down_for,
        };
        let s = &self.inner.settings;
        match voters::plan_voters(&view, s.voters, s.voter_replace_after) {
            None => {}
            Some(VoterChange::AddLearners(ids)) => {
                for id in ids {
                    let Some(p) = peers.iter().find(|p| p.node_id == id) else {
                        continue;
                    };
                    let node = RaftNode {
                        node_id: p.node_id.clone(),
                        addr: p.addr.clone(),
                    };
                    info!(node_id = %id, "adding node to the control plane as a learner");
                    if let Err(e) = self.inner.raft.add_learner(raft_id(&id), node, false).await {
                        warn!(node_id = %id, error = %e, "could not add learner");
                    }
                }
            }
            Some(VoterChange::SetVoters(set)) => {
                info!(voters = ?set, "changing the voter set");
                let ids: BTreeSet<u64> = set.iter().map(|n| raft_id(n)).collect();
                let change = self.inner.raft.change_membership(ids, false);
                match tokio::time::timeout(s.write_timeout, change).await {
                    Ok(Ok(_)) => info!(voters = ?set, "voter set changed"),
                    Ok(Err(e)) => warn!(error = %e, "voter change failed"),
                    Err(_) => warn!("voter change not committed in time"),
                }
            }
        }
    }
}
