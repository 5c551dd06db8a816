//! The bridge from the QUIC transport to the actors: peer messages go to the
//! node's [`PeerDispatch`]; client requests are routed straight to the shard
//! copies (rows) or to the admin actor (everything else).

use std::sync::Arc;

use actix::Addr;
use futures::stream::{self, BoxStream, StreamExt};
use tstore_transport::{Remote, Service};

use crate::admin::{AdminActor, AdminCall};
use crate::control::MapView;
use crate::dispatch::PeerDispatch;
use crate::peer::{PeerMessage, PeerReply};
use crate::peer_link::PeerLink;
use crate::router::Router;
use crate::shard::local::LocalCopies;
use tstore_core::wire::{AdminReply, AdminRequest};

pub(crate) struct NodeService {
    pub(crate) peers: Arc<PeerDispatch>,
    pub(crate) admin: Addr<AdminActor>,
    pub(crate) routing: Routing,
}

/// What reads and writes need to be routed straight from the transport's
/// tasks: they go to the shard copy actors without a stop at the admin or
/// node actor, whose single thread they would otherwise queue on.
pub(crate) struct Routing {
    pub(crate) me: String,
    pub(crate) map: MapView,
    pub(crate) local: LocalCopies,
    pub(crate) link: Arc<dyn PeerLink>,
}

impl Routing {
    fn router(&self) -> Router {
        Router {
            me: self.me.clone(),
            map: self.map.clone(),
            local: self.local.current(),
            link: self.link.clone(),
        }
    }
}

impl Service for NodeService {
    type PeerMsg = PeerMessage;
    type PeerReply = PeerReply;
    type ClientReq = AdminRequest;
    type ClientReply = AdminReply;

    fn on_peer_oneway(&self, from: Remote, msg: PeerMessage) {
        self.peers.on_oneway(&from, msg)
    }

    fn on_peer_request(&self, from: Remote, msg: PeerMessage) -> BoxStream<'static, PeerReply> {
        self.peers.on_request(&from, msg)
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
