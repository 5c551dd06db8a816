//! The bridge from the QUIC transport to the actors: peer messages go to the
//! node's [`PeerDispatch`]; client requests are routed straight to the shard
//! copies (rows) or to the admin actor (everything else).

use std::sync::Arc;

use actix::Addr;
use futures::stream::{self, BoxStream, FuturesUnordered, StreamExt};
use tstore_transport::{Remote, Service};

use crate::admin::{AdminActor, AdminCall};
use crate::control::MapView;
use crate::dispatch::PeerDispatch;
use crate::metrics::{OpKind, RequestMetrics};
use crate::peer::{PeerMessage, PeerReply};
use crate::peer_link::PeerLink;
use crate::router::Router;
use crate::shard::local::LocalCopies;
use tstore_core::wire::{AdminError, AdminErrorKind, MAX_COALESCED};
use tstore_core::wire::{AdminReply, AdminRequest, DataRequest};

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
    /// Counts every row request served, by operation and outcome.
    pub(crate) requests: RequestMetrics,
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

impl NodeService {
    /// Serves a client's coalesced requests on this one stream, all at
    /// once, answering each as it finishes (`client::coalesce`).
    fn serve_many(&self, reqs: Vec<DataRequest>) -> BoxStream<'static, AdminReply> {
        if reqs.len() > MAX_COALESCED {
            let refusal = AdminReply::Error(AdminError::new(
                AdminErrorKind::Invalid,
                format!(
                    "{} requests in one batch; at most {MAX_COALESCED} travel together",
                    reqs.len()
                ),
            ));
            return stream::once(async move { refusal }).boxed();
        }
        let router = Arc::new(self.routing.router());
        let requests = self.routing.requests.clone();
        reqs.into_iter()
            .enumerate()
            .map(|(index, req)| {
                let (router, requests) = (router.clone(), requests.clone());
                async move {
                    let (op, started) = (OpKind::of(&req), std::time::Instant::now());
                    let reply = router.route(req).await;
                    requests.served(op, &reply, started.elapsed());
                    AdminReply::DataAt {
                        index: index as u32,
                        reply,
                    }
                }
            })
            .collect::<FuturesUnordered<_>>()
            .boxed()
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
        match req {
            AdminRequest::Data(req) => {
                let router = self.routing.router();
                let requests = self.routing.requests.clone();
                return stream::once(async move {
                    let (op, started) = (OpKind::of(&req), std::time::Instant::now());
                    let reply = router.route(req).await;
                    requests.served(op, &reply, started.elapsed());
                    AdminReply::Data(reply)
                })
                .boxed();
            }
            AdminRequest::DataMany(reqs) => return self.serve_many(reqs),
            _ => {}
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
