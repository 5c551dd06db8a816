//! The NodeActor and node start-up.
//!
//! Start-up order: identity (already bumped by the caller) → certificate check
//! → QUIC endpoint → gossip over that endpoint → control plane → actors →
//! serving. Shutdown is the reverse, politely: announce `leaving` in gossip,
//! let it spread, close the endpoint.
//!
//! The NodeActor keeps gossip events and the lifecycle of the shard copies
//! (it brings them in line with each new map). Peer messages do not pass
//! through it: `dispatch::PeerDispatch` serves them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tracing::{debug, info, warn};
use tstore_membership::{
    GossipLink, Membership, MembershipConfig, MembershipError, MembershipEvent, NodeIdentity,
};
use tstore_transport::{Endpoint, Limits, Role, TlsIdentity, TransportError};

use crate::admin::AdminActor;
use crate::control::{ControlPlane, ControlSettings};
use crate::coordinator::actor::CoordinatorActor;
use crate::data::committer::Committer;
use crate::data::store::{ShardPrefix, ShardStore};
use crate::dispatch::PeerDispatch;
use crate::hearing::Hearing;
use crate::node_stats::StatsSource;
use crate::peer::PeerMessage;
use crate::peer_link::{PeerLink, QuicPeerLink};
use crate::recovery::Recovery;
use crate::service::{NodeService, Routing};
use crate::shard::actor::{Copies, CopyActor, CopyEnv};
use crate::shard::local::LocalCopies;
use crate::shard::messages::{Reconfigure, StopCopy};
use crate::shard::publish::CopyPublisher;
use crate::shard::snapshot::SnapshotServer;
use crate::storage::StorageHealth;
use tstore_core::replication::{LeaseConfig, LogRetention};
use tstore_core::shard::{self, LocalChange, LocalCopy, LocalRole, ShardKey};
use tstore_core::view::{storage_failed_value, KEY_STORAGE, STORAGE_OK};

/// Messages may queue this deep in the node's mailbox.
const MAILBOX_CAPACITY: usize = 4096;

/// Everything a node needs to start.
pub struct NodeSettings {
    /// This incarnation (see `NodeIdentity::start`).
    pub identity: NodeIdentity,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node; defaults to `listen`.
    pub advertise: Option<SocketAddr>,
    pub tls: TlsIdentity,
    pub limits: Limits,
    pub membership: MembershipConfig,
    /// How often a gossip watch looks for changes.
    pub watch_interval: Duration,
    /// Where the node keeps its LMDB environment.
    pub data_dir: std::path::PathBuf,
    pub control: ControlSettings,
    /// Replication timing (lease, grace, heartbeat, window); default if `None`.
    pub lease: Option<LeaseConfig>,
    /// How much replication log each shard copy keeps.
    pub retention: LogRetention,
    /// Bytes per second a snapshot is sent to one new copy; 0 is unthrottled.
    pub recovery_rate: u64,
    /// The most bytes the shard store may take (its LMDB map size).
    pub lmdb_map_size: usize,
    /// How long the group commit waits for more work under load
    /// (`Committer::start`).
    pub commit_linger: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("the node certificate is for {found}, but this node is {expected:?}: use the certificate made by `tstore cert create-node --name {expected}`")]
    WrongCertificate { expected: String, found: String },
    #[error(transparent)]
    Env(#[from] crate::storage::StorageError),
    #[error("cannot open shard storage: {0}")]
    Storage(String),
    #[error(transparent)]
    Control(#[from] crate::control::ControlStartError),
    #[error("listening on {listen} (an unspecified address) needs --advertise with the address peers should use")]
    NoAdvertise { listen: SocketAddr },
}

/// A running node, as seen by whoever started it.
#[derive(Clone)]
pub struct NodeHandle {
    pub node: Addr<NodeActor>,
    pub identity: NodeIdentity,
    /// The advertised address (peer and client traffic).
    pub addr: SocketAddr,
    /// The node's figures, for its metrics endpoint and console.
    pub observe: crate::observe::Observe,
}

impl NodeHandle {
    /// Leaves the cluster politely and closes the endpoint.
    pub async fn shutdown(&self) {
        if let Err(e) = self.node.send(Shutdown).await {
            warn!(error = %e, "node actor already gone");
        }
    }
}

/// Gossip carried by the node's QUIC endpoint as one-way peer messages.
struct QuicGossipLink(Endpoint);

impl GossipLink for QuicGossipLink {
    fn send(&self, to: SocketAddr, payload: Vec<u8>) -> Result<(), String> {
        self.0
            .send_oneway(to, &PeerMessage::Gossip(payload))
            .map_err(|e| e.to_string())
    }
}

/// Starts a node inside the current actix system.
pub async fn start_node(settings: NodeSettings) -> Result<NodeHandle, StartError> {
    let NodeSettings {
        identity,
        listen,
        advertise,
        tls,
        limits,
        membership,
        watch_interval,
        data_dir,
        control,
        lease,
        retention,
        recovery_rate,
        lmdb_map_size,
        commit_linger,
    } = settings;
    let lease = lease.unwrap_or_default();
    // The replication clock starts with the process (see `now_ms`).
    crate::clock::now_ms();
    match tls.own_identity() {
        Some((Role::Node, name)) if name == identity.node_id => {}
        other => {
            return Err(StartError::WrongCertificate {
                expected: identity.node_id.clone(),
                found: match other {
                    Some((role, name)) => format!("{} {name:?}", role.as_str()),
                    None => "no tstore node".into(),
                },
            })
        }
    }
    if advertise.is_none() && listen.ip().is_unspecified() {
        return Err(StartError::NoAdvertise { listen });
    }
    let env = crate::storage::open_data_env(&data_dir, lmdb_map_size)?;
    let control_env = crate::storage::open_control_env(&data_dir)?;
    let endpoint = Endpoint::bind(listen, &tls, limits)?;
    let addr = match advertise {
        Some(a) => a,
        None => endpoint.local_addr(),
    };
    let link = Arc::new(QuicGossipLink(endpoint.clone()));
    let (membership, inbox) = Membership::start(&identity, addr, membership, link).await?;
    let membership = Arc::new(membership);
    // Gossip must flow before Raft starts: Raft RPCs and gossip share the endpoint.
    let control = ControlPlane::start(
        &control_env,
        &identity.node_id,
        endpoint.clone(),
        membership.clone(),
        control,
    )
    .await?;
    let map = control.view();
    let store = ShardStore::open(&env).map_err(|e| StartError::Storage(e.to_string()))?;
    let storage = StorageHealth::default();
    let committer = Committer::start(store.clone(), storage.clone(), commit_linger)
        .map_err(|e| StartError::Storage(e.to_string()))?;
    actix::spawn(watch_storage(
        store.clone(),
        storage.clone(),
        membership.clone(),
    ));
    let link: Arc<dyn PeerLink> = Arc::new(QuicPeerLink::new(endpoint.clone(), map.clone()));
    let local = LocalCopies::default();
    let recovery = Recovery::default();
    let hearing = Hearing::default();
    let peers = Arc::new(PeerDispatch::new(
        identity.clone(),
        inbox,
        local.clone(),
        SnapshotServer {
            me: identity.node_id.clone(),
            store: store.clone(),
            map: map.clone(),
            rate: recovery_rate,
            recovery: recovery.clone(),
        },
        Some(control.clone()),
        hearing.clone(),
    ));
    let node = NodeActor {
        identity: identity.clone(),
        endpoint: endpoint.clone(),
        membership: membership.clone(),
        control: control.clone(),
        copies: BTreeMap::new(),
        local: local.clone(),
        copy_env: CopyEnv {
            membership: membership.clone(),
            store: store.clone(),
            committer,
            link: link.clone(),
            lease,
            retention,
            recovery: recovery.clone(),
            gossip: CopyPublisher::start(membership.clone()),
            hearing: hearing.clone(),
        },
        left: false,
    }
    .start();
    let stats = StatsSource {
        node_id: identity.node_id.clone(),
        data_dir: data_dir.clone(),
        store: store.clone(),
        local: local.clone(),
        recovery,
        storage,
    };
    let requests = crate::metrics::RequestMetrics::default();
    let recovery = stats.recovery.clone();
    let admin = AdminActor::new(membership.clone(), control.clone(), watch_interval, stats).start();
    let observe = crate::observe::Observe {
        node_id: identity.node_id.clone(),
        membership,
        control: control.clone(),
        local: local.clone(),
        store: store.clone(),
        recovery,
        requests: requests.clone(),
        endpoint: endpoint.clone(),
        admin: admin.clone(),
        decisions: Default::default(),
    };
    CoordinatorActor::new(control.clone()).start();
    actix::spawn(crate::hearing::watch_primaries(
        identity.node_id.clone(),
        hearing,
        control.clone(),
        lease.heartbeat,
    ));
    actix::spawn(crate::hearing::send_heartbeats(
        identity.node_id.clone(),
        link.clone(),
        control.clone(),
        lease.heartbeat,
    ));
    endpoint.serve(Arc::new(NodeService {
        peers,
        admin,
        routing: Routing {
            me: identity.node_id.clone(),
            map,
            local,
            link,
            requests,
        },
    }));
    info!(node_id = %identity.node_id, generation = identity.generation, %addr, "node serving");
    Ok(NodeHandle {
        node,
        identity,
        addr,
        observe,
    })
}

/// How often the node publishes whether its store can write, and probes it
/// while it cannot.
const STORAGE_CHECK: Duration = Duration::from_secs(1);

/// Publishes the shard store's health in gossip (`storage` = `ok` or
/// `failed: <why>`), and while it has failed, probes it every
/// [`STORAGE_CHECK`] ([`ShardStore::probe`]): once a probe writes, the store
/// is healthy again, the node says `ok`, and the coordinator brings its
/// copies back (they catch up from their rows and the primaries' logs).
async fn watch_storage(store: ShardStore, health: StorageHealth, membership: Arc<Membership>) {
    let mut published: Option<String> = None;
    loop {
        if health.failure().is_some() {
            let st = store.clone();
            match tokio::task::spawn_blocking(move || st.probe()).await {
                Ok(Ok(())) => health.recovered(),
                Ok(Err(e)) => debug!(error = %e, "the shard store still cannot write"),
                Err(e) => warn!(error = %e, "storage probe did not finish"),
            }
        }
        let value = match health.failure() {
            Some(why) => storage_failed_value(&why),
            None => STORAGE_OK.to_owned(),
        };
        if published.as_deref() != Some(value.as_str()) {
            membership.set(KEY_STORAGE, &value).await;
            published = Some(value);
        }
        tokio::time::sleep(STORAGE_CHECK).await;
    }
}

/// One per process: owns the endpoint, membership and the shard copies.
pub struct NodeActor {
    identity: NodeIdentity,
    endpoint: Endpoint,
    membership: Arc<Membership>,
    control: ControlPlane,
    /// The shard copies this node holds, as the committed map gives them.
    copies: Copies,
    /// The copies' addresses, shared with the peer dispatcher and every
    /// request being routed; republished when the copies change.
    local: LocalCopies,
    /// What the copies share.
    copy_env: CopyEnv,
    left: bool,
}

/// A new map version was applied here: bring the local shard copies in line.
impl StreamHandler<u64> for NodeActor {
    fn handle(&mut self, version: u64, _: &mut Context<Self>) {
        let began = Instant::now();
        let env = &self.copy_env;
        let map = self.control.map();
        let running: BTreeMap<ShardKey, LocalCopy> = self
            .copies
            .iter()
            .map(|(k, (c, _))| (k.clone(), c.clone()))
            .collect();
        let changes = shard::plan(&running, &map, &self.identity.node_id);
        if changes.is_empty() {
            return;
        }
        // Every copy that leads from now on records its epoch before it
        // serves: all of them in one transaction here, instead of one
        // transaction (and fsync) each as the copies take their roles (a
        // third of a 1,000-shard table's start-up went there).
        let leading: Vec<(ShardPrefix, u64)> = changes
            .iter()
            .filter_map(|c| match c {
                LocalChange::Start(k, c) | LocalChange::Reconfigure(k, c)
                    if c.role == LocalRole::Primary =>
                {
                    Some((
                        ShardPrefix {
                            table: c.table_id,
                            shard: k.index,
                        },
                        c.replicas.epoch,
                    ))
                }
                _ => None,
            })
            .collect();
        if let Err(e) = env.store.record_epochs(&leading) {
            // Each copy tries again on its own (and fails if it cannot).
            warn!(error = %e, copies = leading.len(), "could not record the epochs of the copies leading here");
        }
        let (mut started, mut reconfigured, mut stopped) = (0usize, 0usize, 0usize);
        for change in changes {
            match change {
                LocalChange::Start(key, copy) => {
                    let actor = CopyActor::new(key.clone(), copy.clone(), env.clone()).start();
                    self.copies.insert(key, (copy, actor));
                    started += 1;
                }
                LocalChange::Reconfigure(key, copy) => {
                    if let Some((have, actor)) = self.copies.get_mut(&key) {
                        actor.do_send(Reconfigure(copy.clone()));
                        *have = copy;
                        reconfigured += 1;
                    }
                }
                LocalChange::Stop(key) => {
                    stopped += 1;
                    if let Some((copy, actor)) = self.copies.remove(&key) {
                        // A dropped table's data goes; a copy that only moved
                        // away keeps it until the table is dropped. (A shard
                        // merged into another: the kept shard's copy here
                        // takes its data when it merges, never this stop,
                        // which may come first.)
                        let dropped = !map.tables.values().any(|t| t.id == copy.table_id);
                        actor.do_send(StopCopy { drop_data: dropped });
                    }
                }
            }
        }
        self.local.replace(
            self.copies
                .iter()
                .map(|(k, (_, a))| (k.clone(), a.clone()))
                .collect(),
        );
        info!(
            map_version = version,
            started,
            reconfigured,
            stopped,
            copies = self.copies.len(),
            ms = began.elapsed().as_millis() as u64,
            "local shard copies brought in line with the map"
        );
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Actor for NodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.add_stream(BroadcastStream::new(self.membership.subscribe()));
        ctx.add_stream(WatchStream::new(self.control.watch_version()));
    }
}

/// Leave the cluster politely and stop serving.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for NodeActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let first = !self.left;
        self.left = true;
        let (membership, endpoint) = (self.membership.clone(), self.endpoint.clone());
        let control = self.control.clone();
        Box::pin(async move {
            if first {
                membership.leave().await;
                control.shutdown().await;
            }
            endpoint.shutdown().await;
        })
    }
}

impl StreamHandler<Result<MembershipEvent, BroadcastStreamRecvError>> for NodeActor {
    fn handle(
        &mut self,
        event: Result<MembershipEvent, BroadcastStreamRecvError>,
        _: &mut Context<Self>,
    ) {
        match event {
            Ok(event) => debug!(?event, "membership event"),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "membership events missed; node actor fell behind"
                )
            }
        }
    }
}
