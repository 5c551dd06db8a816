//! The one place peer messages are dispatched, whichever link brought them:
//! the QUIC service (`service.rs`) and the in-memory network
//! ([`crate::peer_link::mem`]) both feed [`PeerDispatch`].
//!
//! Gossip goes to the membership's inbox; replication and forwarded
//! requests go to the shard copies through the registry of local copies
//! ([`LocalCopies`]); snapshots are streamed by the [`SnapshotServer`];
//! Raft and map changes go to the control plane. Nothing waits on the
//! NodeActor, whose single thread would otherwise queue them. Every queue
//! on the way is bounded: a one-way message finding one full is dropped
//! (the sender retransmits what matters), never queued without bound.

use futures::stream::{self, BoxStream, StreamExt};
use tracing::debug;
use tstore_membership::{GossipInbox, NodeIdentity};
use tstore_transport::Remote;

use crate::control::ControlPlane;
use crate::hearing::Hearing;
use crate::peer::{PeerMessage, PeerReply};
use crate::router::serve_local;
use crate::shard::local::LocalCopies;
use crate::shard::messages::{LoadReport, Replicate};
use crate::shard::snapshot::SnapshotServer;

/// Serves the messages other nodes send this one.
pub struct PeerDispatch {
    identity: NodeIdentity,
    gossip: GossipInbox,
    local: LocalCopies,
    snapshots: SnapshotServer,
    /// `None` where no control plane runs (in-process tests): Raft and map
    /// changes are refused.
    control: Option<ControlPlane>,
    /// When each peer's replication traffic or node heartbeat last arrived.
    hearing: Hearing,
}

impl PeerDispatch {
    pub fn new(
        identity: NodeIdentity,
        gossip: GossipInbox,
        local: LocalCopies,
        snapshots: SnapshotServer,
        control: Option<ControlPlane>,
        hearing: Hearing,
    ) -> Self {
        Self {
            identity,
            gossip,
            local,
            snapshots,
            control,
            hearing,
        }
    }

    /// A one-way message from another node.
    pub fn on_oneway(&self, from: &Remote, msg: PeerMessage) {
        match msg {
            PeerMessage::Gossip(payload) => self.gossip.deliver(from.addr, payload),
            PeerMessage::Repl { shard: key, msg } => {
                self.hearing.heard(&from.name);
                let Some(copy) = self.local.get(&key) else {
                    debug!(shard = %key, "replication message for a copy not held here");
                    return;
                };
                let from = from.name.clone();
                if copy.try_send(Replicate { from, msg }).is_err() {
                    debug!(shard = %key, "copy mailbox full; replication message dropped");
                }
            }
            PeerMessage::Heartbeat => self.hearing.heard(&from.name),
            PeerMessage::Suspect { node, silent_ms } => {
                if let Some(control) = self.control.clone() {
                    let reporter = from.name.clone();
                    tokio::spawn(async move {
                        control.on_suspect(&reporter, node, silent_ms).await;
                    });
                }
            }
            other => {
                debug!(peer = %from.name, ?other, "one-way message that needs a reply; ignored")
            }
        }
    }

    /// A request from another node; its answer is a stream of replies (one
    /// but for snapshots).
    pub fn on_request(&self, from: &Remote, msg: PeerMessage) -> BoxStream<'static, PeerReply> {
        let one = |reply: PeerReply| stream::once(async move { reply }).boxed();
        let control = self.control.clone();
        let not_ready = || PeerReply::Refused("the control plane is still starting".into());
        match msg {
            PeerMessage::Ping => one(PeerReply::Pong {
                node_id: self.identity.node_id.clone(),
                generation: self.identity.generation,
            }),
            PeerMessage::Gossip(payload) => {
                self.gossip.deliver(from.addr, payload);
                one(PeerReply::Refused(
                    "gossip is one-way; delivered anyway".into(),
                ))
            }
            PeerMessage::Repl { .. } => one(PeerReply::Refused("replication is one-way".into())),
            PeerMessage::Suspect { .. } => one(PeerReply::Refused("suspicion is one-way".into())),
            PeerMessage::Heartbeat => {
                self.hearing.heard(&from.name);
                one(PeerReply::Refused("a node heartbeat is one-way".into()))
            }
            PeerMessage::Snapshot { shard } => self.snapshots.serve(shard),
            PeerMessage::Loads {
                split_size_bytes,
                split_load_ops,
                tables,
            } => {
                let local = self.local.current();
                stream::once(async move {
                    let wanted = |t: &String| tables.binary_search(t).is_ok();
                    let asks = local.iter().filter(|(key, _)| wanted(&key.table)).map(
                        |(key, copy)| async move {
                            let r = copy
                                .send(LoadReport {
                                    split_size_bytes,
                                    split_load_ops,
                                })
                                .await;
                            r.ok().flatten().map(|s| (key.clone(), s))
                        },
                    );
                    let loads = futures::future::join_all(asks).await;
                    PeerReply::Loads(loads.into_iter().flatten().collect())
                })
                .boxed()
            }
            PeerMessage::Data(req) => {
                let local = self.local.current();
                stream::once(async move { PeerReply::Data(serve_local(&local, req).await) }).boxed()
            }
            PeerMessage::Raft(rpc) => stream::once(async move {
                match control {
                    Some(c) => PeerReply::Raft(c.handle_rpc(rpc).await),
                    None => not_ready(),
                }
            })
            .boxed(),
            PeerMessage::Control(req) => stream::once(async move {
                match control {
                    Some(c) => c.handle_forwarded(req).await,
                    None => not_ready(),
                }
            })
            .boxed(),
        }
    }
}
