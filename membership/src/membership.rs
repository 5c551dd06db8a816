//! The running membership: chitchat plus a small liveness tracker that turns
//! the failure detector's verdicts into [`NodeStatus`] and [`MembershipEvent`]s.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::link::{self, GossipInbox, GossipLink, GossipTraffic, LinkTransport, TrafficCounters};
use crate::view::{
    self, GossipSnapshot, KeyView, Member, NodeStatus, NodeView, KEY_ADDR, KEY_ROLES, KEY_STATUS,
    KEY_VERSION, KEY_ZONE, STATUS_ACTIVE, STATUS_LEAVING,
};
use crate::{MembershipConfig, MembershipError, NodeIdentity};

/// A liveness change, as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node (or a new incarnation of one) is live.
    Up(Member),
    /// A node stopped sending heartbeats.
    Down { node_id: String, generation: u64 },
    /// A node announced it was leaving.
    Left { node_id: String, generation: u64 },
}

/// Capacity of the event broadcast; a subscriber that lags further loses the
/// oldest events and is told so by the broadcast channel.
const EVENT_CAPACITY: usize = 256;

type Statuses = Arc<Mutex<HashMap<ChitchatId, NodeStatus>>>;

/// This node's membership in the cluster.
pub struct Membership {
    handle: ChitchatHandle,
    identity: NodeIdentity,
    config: MembershipConfig,
    statuses: Statuses,
    events: broadcast::Sender<MembershipEvent>,
    tracker: JoinHandle<()>,
    traffic: Arc<TrafficCounters>,
}

fn is_leaving(state: &chitchat::NodeState) -> bool {
    state.get(KEY_STATUS) == Some(STATUS_LEAVING)
}

impl Membership {
    /// Starts gossiping as `identity`, reachable at `advertise`. Gossip goes out
    /// through `link`; the caller feeds what it receives into the returned inbox.
    pub async fn start(
        identity: &NodeIdentity,
        advertise: SocketAddr,
        config: MembershipConfig,
        link: Arc<dyn GossipLink>,
    ) -> Result<(Self, GossipInbox), MembershipError> {
        let chitchat_id = ChitchatId::new(identity.node_id.clone(), identity.generation, advertise);
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            sampling_window_size: 100,
            max_interval: (config.gossip_interval * 10).max(Duration::from_secs(2)),
            initial_interval: config.gossip_interval,
            dead_node_grace_period: config.dead_node_grace_period,
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id: chitchat_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: advertise,
            seed_nodes: config.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: config.dead_node_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|state| !is_leaving(state))),
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let p = &config.profile;
        let initial = vec![
            (KEY_ADDR.to_owned(), advertise.to_string()),
            (KEY_ZONE.to_owned(), p.zone.clone().unwrap_or_default()),
            (KEY_ROLES.to_owned(), p.roles.join(",")),
            (KEY_VERSION.to_owned(), p.version.clone()),
            (KEY_STATUS.to_owned(), STATUS_ACTIVE.to_owned()),
        ];
        let (inbox, inbox_rx) = link::channel();
        let traffic = Arc::<TrafficCounters>::default();
        let transport = LinkTransport {
            link,
            local: advertise,
            inbox: Mutex::new(Some(inbox_rx)),
            traffic: traffic.clone(),
        };
        let handle = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(|e| MembershipError::Start(e.to_string()))?;
        let statuses: Statuses = Arc::default();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let tracker = tokio::spawn(track_liveness(
            handle.chitchat(),
            chitchat_id,
            config.clone(),
            statuses.clone(),
            events.clone(),
        ));
        info!(node_id = %identity.node_id, generation = identity.generation, %advertise, seeds = ?config.seeds, "gossip started");
        Ok((
            Self {
                handle,
                identity: identity.clone(),
                config,
                statuses,
                events,
                tracker,
                traffic,
            },
            inbox,
        ))
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Liveness changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// The whole gossip state with each node's status.
    pub async fn snapshot(&self) -> GossipSnapshot {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let statuses = self.statuses.lock().unwrap().clone();
        let self_id = chitchat.self_chitchat_id().clone();
        let mut nodes: Vec<NodeView> = chitchat
            .node_states()
            .iter()
            .map(|(id, state)| {
                let status = if *id == self_id {
                    if is_leaving(state) {
                        NodeStatus::Left
                    } else {
                        NodeStatus::Live
                    }
                } else {
                    statuses.get(id).copied().unwrap_or(NodeStatus::Joining)
                };
                node_view(id, state, status)
            })
            .collect();
        nodes.sort_by(|a, b| (&a.node_id, a.generation).cmp(&(&b.node_id, b.generation)));
        let mut seeds: Vec<SocketAddr> = chitchat.seed_nodes().into_iter().collect();
        seeds.sort();
        GossipSnapshot {
            observer: self.identity.node_id.clone(),
            cluster_id: chitchat.cluster_id().to_owned(),
            seeds,
            nodes,
        }
    }

    /// Gossip messages and bytes sent and received since start.
    pub fn traffic(&self) -> GossipTraffic {
        self.traffic.now()
    }

    /// The phi-accrual suspicion of each peer gossip has heard from at
    /// least twice, by node id (newest incarnation): it climbs while a peer
    /// is silent, and the peer is marked down past `phi_threshold`.
    pub async fn phis(&self) -> Vec<(String, f64)> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let mut newest: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for id in chitchat.node_states().keys() {
            if let Some(phi) = chitchat.phi(id) {
                let slot = newest
                    .entry(id.node_id.to_string())
                    .or_insert((id.generation_id, phi));
                if id.generation_id >= slot.0 {
                    *slot = (id.generation_id, phi);
                }
            }
        }
        newest.into_iter().map(|(n, (_, phi))| (n, phi)).collect()
    }

    /// Each known node's status (newest incarnation), this node included,
    /// without waiting on the gossip state's lock.
    pub fn statuses_now(&self) -> Vec<(String, NodeStatus)> {
        let statuses = self.statuses.lock().unwrap();
        let mut newest: BTreeMap<String, (u64, NodeStatus)> = BTreeMap::new();
        for (id, status) in statuses.iter() {
            let e = newest
                .entry(id.node_id.to_string())
                .or_insert((id.generation_id, *status));
            if id.generation_id >= e.0 {
                *e = (id.generation_id, *status);
            }
        }
        newest.insert(
            self.identity.node_id.clone(),
            (self.identity.generation, NodeStatus::Live),
        );
        newest.into_iter().map(|(n, (_, s))| (n, s)).collect()
    }

    /// The member list (newest incarnation of each node).
    pub async fn members(&self) -> Vec<Member> {
        view::members(&self.snapshot().await)
    }

    /// Publishes a key about this node.
    pub async fn set(&self, key: &str, value: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(key, value))
            .await;
    }

    /// Withdraws a key this node published.
    pub async fn delete(&self, key: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().delete(key))
            .await;
    }

    /// Leaves the cluster politely: announces `leaving`, pushes it to every
    /// live peer for a few gossip rounds, then stops gossiping. Peers then see
    /// the node as left, not as crashed. Calling it twice is harmless.
    pub async fn leave(&self) {
        let peers: Vec<SocketAddr> = self
            .handle
            .with_chitchat(|c| {
                c.self_node_state().set(KEY_STATUS, STATUS_LEAVING);
                let me = c.self_chitchat_id().clone();
                c.live_nodes()
                    .filter(|id| **id != me)
                    .map(|id| id.gossip_advertise_addr)
                    .collect()
            })
            .await;
        info!(peers = peers.len(), "leaving the cluster");
        for _ in 0..LEAVE_ROUNDS {
            for addr in &peers {
                let _ = self.handle.gossip(*addr);
            }
            tokio::time::sleep(self.config.gossip_interval).await;
        }
        self.tracker.abort();
        let _ = self.handle.initiate_shutdown();
        let stopped = self.handle.termination_watcher();
        match tokio::time::timeout(Duration::from_secs(2), stopped).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "gossip did not stop cleanly"),
            Err(_) => warn!("gossip did not stop within 2s"),
        }
    }
}

/// Gossip rounds a leaving node pushes its `leaving` status for.
const LEAVE_ROUNDS: usize = 3;

fn node_view(id: &ChitchatId, state: &chitchat::NodeState, status: NodeStatus) -> NodeView {
    NodeView {
        node_id: id.node_id.to_string(),
        generation: id.generation_id,
        gossip_addr: id.gossip_advertise_addr,
        status,
        heartbeat: state.heartbeat().into(),
        max_version: state.max_version(),
        keys: state
            .key_values_including_deleted()
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    KeyView {
                        value: v.value.clone(),
                        version: v.version,
                        deleted: v.is_deleted(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A peer's next status from its previous one and what gossip says now.
/// `judged` is true once the peer has been known long enough that silence
/// means it is down rather than still joining.
fn classify(old: NodeStatus, leaving: bool, live: bool, judged: bool) -> NodeStatus {
    if leaving {
        NodeStatus::Left
    } else if live {
        NodeStatus::Live
    } else if old == NodeStatus::Joining && !judged {
        NodeStatus::Joining
    } else {
        NodeStatus::Down
    }
}

/// Every gossip interval, classifies each known peer and emits the changes.
///
/// - `Left` once its status key says `leaving`;
/// - `Live` while chitchat's phi-accrual detector counts it live;
/// - `Down` once it was live and is not any more, or when it was never heard
///   from long enough to be judged within `2 × expected detection time`;
/// - `Joining` before that.
async fn track_liveness(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    self_id: ChitchatId,
    config: MembershipConfig,
    statuses: Statuses,
    events: broadcast::Sender<MembershipEvent>,
) {
    let judge_after = config.expected_detection_time() * 2;
    let mut first_seen: HashMap<ChitchatId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(config.gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let chitchat = chitchat.lock().await;
        let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let mut statuses = statuses.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        for (id, state) in chitchat.node_states() {
            if *id == self_id {
                continue;
            }
            seen.insert(id.clone());
            let first = *first_seen.entry(id.clone()).or_insert_with(Instant::now);
            let old = statuses.get(id).copied().unwrap_or(NodeStatus::Joining);
            let new = classify(
                old,
                is_leaving(state),
                live.contains(id),
                first.elapsed() >= judge_after,
            );
            if new == old && statuses.contains_key(id) {
                continue;
            }
            statuses.insert(id.clone(), new);
            let (node_id, generation) = (id.node_id.to_string(), id.generation_id);
            let event = match new {
                NodeStatus::Live => {
                    let member = view::members(&GossipSnapshot {
                        observer: String::new(),
                        cluster_id: String::new(),
                        seeds: vec![],
                        nodes: vec![node_view(id, state, new)],
                    })
                    .remove(0);
                    info!(%node_id, generation, "node up");
                    Some(MembershipEvent::Up(member))
                }
                NodeStatus::Down => {
                    warn!(%node_id, generation, "node down");
                    Some(MembershipEvent::Down {
                        node_id,
                        generation,
                    })
                }
                NodeStatus::Left => {
                    info!(%node_id, generation, "node left");
                    Some(MembershipEvent::Left {
                        node_id,
                        generation,
                    })
                }
                NodeStatus::Joining => None,
            };
            if let Some(event) = event {
                let _ = events.send(event);
            }
        }
        statuses.retain(|id, _| seen.contains(id));
        first_seen.retain(|id, _| seen.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::classify;
    use crate::NodeStatus::*;

    #[test]
    fn liveness_classification() {
        // A new node stays joining until heard from or judged.
        assert_eq!(classify(Joining, false, false, false), Joining);
        assert_eq!(classify(Joining, false, true, false), Live);
        assert_eq!(classify(Joining, false, false, true), Down);
        // Once live, silence is down at once; heartbeats bring it back.
        assert_eq!(classify(Live, false, false, false), Down);
        assert_eq!(classify(Down, false, true, true), Live);
        // An announced departure wins over everything, even live heartbeats.
        assert_eq!(classify(Live, true, true, true), Left);
        assert_eq!(classify(Down, true, false, true), Left);
    }
}
