//! The bridge from the transport to the actors: decoded inbound messages
//! become actor messages; actor replies become reply streams.

use actix::Addr;
use futures::stream::{self, BoxStream, StreamExt};
use tracing::debug;
use tstore_transport::{Endpoint, Remote, Service};

use crate::admin::{AdminActor, AdminCall};
use crate::control::ControlPlane;
use crate::data::store::{ChunkKind, ShardId, ShardStore};
use crate::node::{InboundPeer, NodeActor, PeerCall};
use crate::peer::{PeerMessage, PeerReply, SnapshotPart};
use crate::router::{serve_local, LocalCopies, Router};
use tstore_core::wire::{AdminReply, AdminRequest};

/// Rows per snapshot frame, by size (well under the frame limit).
const SNAPSHOT_CHUNK: usize = 256 * 1024;

pub(crate) struct NodeService {
    pub(crate) node: Addr<NodeActor>,
    pub(crate) admin: Addr<AdminActor>,
    pub(crate) snapshots: SnapshotSource,
    pub(crate) routing: Routing,
}

/// What reads and writes need to be routed straight from the transport's
/// tasks: they go to the shard copy actors without a stop at the admin or
/// node actor, whose single thread they would otherwise queue on.
pub(crate) struct Routing {
    pub(crate) me: String,
    pub(crate) control: ControlPlane,
    pub(crate) local: LocalCopies,
    pub(crate) endpoint: Endpoint,
}

impl Routing {
    fn router(&self) -> Router {
        Router {
            me: self.me.clone(),
            control: self.control.clone(),
            local: self.local.read().expect("local copies lock").clone(),
            endpoint: self.endpoint.clone(),
        }
    }
}

/// Serves snapshots of the shards this node leads to learners.
#[derive(Clone)]
pub(crate) struct SnapshotSource {
    pub(crate) me: String,
    pub(crate) store: ShardStore,
    pub(crate) control: ControlPlane,
    /// Bytes per second sent to one learner; 0 is unthrottled.
    pub(crate) rate: u64,
}

impl SnapshotSource {
    /// Streams a shard's rows from one read transaction on a thread of its
    /// own, throttled to `rate`. Only the primary serves: its log holds
    /// every entry after the snapshot, which the learner needs next.
    fn serve(&self, table: String, shard: u32) -> BoxStream<'static, PeerReply> {
        let map = self.control.map();
        let Some(t) = map.tables.get(&table) else {
            let why = format!("table {table:?} does not exist here");
            return stream::once(async move { PeerReply::Refused(why) }).boxed();
        };
        match t.shards.get(shard as usize) {
            Some(s) if s.replicas.primary == self.me => {}
            _ => {
                let why = format!("{} is not the primary of {table}/{shard}", self.me);
                return stream::once(async move { PeerReply::Refused(why) }).boxed();
            }
        }
        let id = ShardId { table: t.id, shard };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (store, rate) = (self.store.clone(), self.rate);
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut sent = 0u64;
            let header = |m: crate::data::store::ShardMeta| {
                tx.blocking_send(PeerReply::Snapshot(SnapshotPart::Header {
                    applied: m.applied,
                    clock: m.clock,
                }))
                .is_ok()
            };
            let chunk = |kind: ChunkKind, rows: Vec<(Vec<u8>, Vec<u8>)>| {
                sent += rows
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>();
                if rate > 0 {
                    let due = std::time::Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let part = match kind {
                    ChunkKind::Rows => SnapshotPart::Rows(rows),
                    ChunkKind::Sessions => SnapshotPart::Sessions(rows),
                };
                tx.blocking_send(PeerReply::Snapshot(part)).is_ok()
            };
            let end = match store.snapshot(id, SNAPSHOT_CHUNK, header, chunk) {
                Ok(_) => PeerReply::Snapshot(SnapshotPart::End),
                Err(e) => PeerReply::Refused(format!("snapshot failed: {e}")),
            };
            let _ = tx.blocking_send(end);
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

impl Service for NodeService {
    type PeerMsg = PeerMessage;
    type PeerReply = PeerReply;
    type ClientReq = AdminRequest;
    type ClientReply = AdminReply;

    fn on_peer_oneway(&self, from: Remote, msg: PeerMessage) {
        // The node's mailbox is bounded; one-way messages (gossip) are dropped
        // when it is full, like datagrams, rather than queued without bound.
        if let Err(e) = self.node.try_send(InboundPeer { from, msg }) {
            debug!(error = %e, "node mailbox full; one-way message dropped");
        }
    }

    fn on_peer_request(&self, from: Remote, msg: PeerMessage) -> BoxStream<'static, PeerReply> {
        let msg = match msg {
            PeerMessage::Snapshot { table, shard } => return self.snapshots.serve(table, shard),
            PeerMessage::Data(req) => {
                let local = self
                    .routing
                    .local
                    .read()
                    .expect("local copies lock")
                    .clone();
                return stream::once(
                    async move { PeerReply::Data(serve_local(&local, req).await) },
                )
                .boxed();
            }
            other => other,
        };
        let node = self.node.clone();
        stream::once(async move {
            node.send(PeerCall { from, msg })
                .await
                .unwrap_or_else(|e| PeerReply::Refused(format!("node unavailable: {e}")))
        })
        .boxed()
    }

    fn on_client_request(
        &self,
        _from: Remote,
        req: AdminRequest,
    ) -> BoxStream<'static, AdminReply> {
        if let AdminRequest::Data(req) = req {
            let router = self.routing.router();
            return stream::once(async move { AdminReply::Data(router.route(req).await) }).boxed();
        }
        let admin = self.admin.clone();
        stream::once(async move { admin.send(AdminCall(req)).await })
            .flat_map(|res| match res {
                Ok(replies) => replies,
                Err(e) => stream::once(async move {
                    AdminReply::Error(tstore_core::wire::AdminError::new(
                        tstore_core::wire::AdminErrorKind::Internal,
                        format!("admin service unavailable: {e}"),
                    ))
                })
                .boxed(),
            })
            .boxed()
    }
}
