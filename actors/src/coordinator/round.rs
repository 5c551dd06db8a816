//! One coordinator round, run by the [`CoordinatorActor`](super::actor)
//! every [`ROUND`](super::actor::ROUND) on every node; it does real work only
//! where it matters:
//! - before the control plane is formed: bootstrap Raft once the nodes
//!   started with the same `--bootstrap-expect` have seen each other for
//!   [`BOOTSTRAP_STABLE`] (`tstore_core::coordinator::voters::bootstrap`);
//! - on a leader no majority has answered: stop heartbeats
//!   ([`ControlPlane::step_aside_if_unheard`]);
//! - on the leader: register live nodes in the map, keep the voter set
//!   (`voters::plan_voters`), and heal shards: failover and re-replication
//!   (`failover::plan`), else rebalancing (`rebalance::plan`), each change
//!   committed through Raft only after the leader confirmed its majority.
//!
//! The decisions are the pure planners of `tstore_core::coordinator`; this
//! file gathers their inputs (gossip, the map, Raft's metrics) and commits
//! what they return.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use openraft::error::{InitializeError, RaftError};
use openraft::ServerState;
use tracing::{debug, info, warn};
use tstore_core::cluster_map::MapCommand;
use tstore_core::coordinator::failover;
use tstore_core::coordinator::health::{live_peers, LivePeer};
use tstore_core::coordinator::rebalance;
use tstore_core::coordinator::voters::{self, Bootstrap, GroupView, VoterChange};
use tstore_membership::GossipSnapshot;

use crate::control::types::{raft_id, RaftNode};
use crate::control::ControlPlane;

/// How long the set of bootstrapping nodes must stay the same before the
/// smallest of them initializes Raft.
const BOOTSTRAP_STABLE: Duration = Duration::from_secs(1);
/// New copies started per coordinator round, cluster-wide.
const NEW_COPIES_PER_ROUND: usize = 4;
/// Shard changes of one round proposed to Raft and not yet committed, at
/// most.
const COMMITS_IN_FLIGHT: usize = 256;
/// A leader no majority has answered for this long stops its heartbeats
/// (see [`ControlPlane::step_aside_if_unheard`]).
const QUORUM_LOST: Duration = Duration::from_millis(1000);

impl ControlPlane {
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
            self.elastic(&snapshot).await;
            self.merges(&snapshot).await;
        }
    }

    /// Failover and re-replication: commits what the failover planner says;
    /// when it has nothing to do, what the rebalancer says.
    async fn heal(&self, snapshot: &GossipSnapshot) {
        let map = self.map();
        if map.tables.is_empty() {
            return;
        }
        let health = self.health(snapshot, &map).await;
        // Nothing the planners read changed since they last found nothing
        // to do: skip them (`tstore_core::coordinator::replan`).
        let now = crate::clock::now_ms();
        if !self
            .inner
            .upkeep
            .lock()
            .await
            .replan
            .due(map.version, &health, now)
        {
            return;
        }
        let mut changes = failover::plan(&map, &health, NEW_COPIES_PER_ROUND);
        if changes.is_empty() {
            changes = rebalance::plan(&map, &health, self.inner.settings.rebalance_max_moves);
        }
        let planned_nothing = changes.is_empty();
        let mut upkeep = self.inner.upkeep.lock().await;
        upkeep
            .replan
            .ran(map.version, &health, now, planned_nothing);
        drop(upkeep);
        if planned_nothing {
            return;
        }
        // Decide only with a majority behind us: a cut-off leader must not
        // promote from its partial view (its writes would fail anyway).
        if let Err(e) = self.confirm_leadership().await {
            warn!(error = %e, "not healing shards");
            return;
        }
        // Proposed in the planner's order, and pipelined: committing one
        // change after the other cost a Raft round and an apply each, about
        // 30 ms, so a dead node holding 3,000 copies took 90 s to fail over.
        let commits = stream::iter(changes)
            .map(|c| async move {
                let (shard, what, why) = (
                    format!("{}/{}", c.table, c.shard),
                    c.what.clone(),
                    c.why.clone(),
                );
                (shard, what, why, self.commit_change(c).await)
            })
            .buffered(COMMITS_IN_FLIGHT);
        for (shard, what, why, res) in commits.collect::<Vec<_>>().await {
            match res {
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

    async fn bootstrap(&self, peers: &[LivePeer]) {
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

    async fn register_nodes(&self, peers: &[LivePeer]) {
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

    async fn keep_voters(
        &self,
        peers: &[LivePeer],
        metrics: &openraft::RaftMetrics<u64, RaftNode>,
    ) {
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
