//! The bridge from the transport to the actors: decoded inbound messages
//! become actor messages; actor replies become reply streams.

use actix::Addr;
use futures::stream::{self, BoxStream, StreamExt};
use tracing::debug;
use tstore_transport::{Remote, Service};

use crate::admin::{AdminActor, AdminCall};
use crate::node::{InboundPeer, NodeActor, PeerCall};
use crate::wire::{AdminReply, AdminRequest, PeerMessage, PeerReply};

pub(crate) struct NodeService {
    pub(crate) node: Addr<NodeActor>,
    pub(crate) admin: Addr<AdminActor>,
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
        let admin = self.admin.clone();
        stream::once(async move { admin.send(AdminCall(req)).await })
            .flat_map(|res| match res {
                Ok(replies) => replies,
                Err(e) => stream::once(async move {
                    AdminReply::Error(format!("admin service unavailable: {e}"))
                })
                .boxed(),
            })
            .boxed()
    }
}
