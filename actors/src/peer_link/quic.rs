//! The production [`PeerLink`]: the node's QUIC endpoint, with node ids
//! resolved to addresses through the committed map at each send.

use std::net::SocketAddr;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tstore_transport::{Endpoint, TransportError};

use super::{LinkError, PeerLink, Replies};
use crate::control::MapView;
use crate::peer::{PeerMessage, PeerReply};

/// [`PeerLink`] over QUIC.
pub struct QuicPeerLink {
    endpoint: Endpoint,
    map: MapView,
}

impl QuicPeerLink {
    pub fn new(endpoint: Endpoint, map: MapView) -> Self {
        Self { endpoint, map }
    }

    fn addr_of(&self, node: &str) -> Result<SocketAddr, LinkError> {
        self.map
            .map()
            .nodes
            .get(node)
            .and_then(|n| n.addr.parse().ok())
            .ok_or_else(|| LinkError::NoAddress {
                node: node.to_owned(),
            })
    }
}

/// A request that failed: not sent at all if no connection could be made,
/// otherwise of unknown fate.
fn request_error(node: String, e: TransportError) -> LinkError {
    match e {
        TransportError::Connect { .. } | TransportError::Backoff { .. } => LinkError::Unreachable {
            node,
            cause: e.to_string(),
        },
        e => LinkError::NoAnswer {
            node,
            cause: e.to_string(),
        },
    }
}

impl PeerLink for QuicPeerLink {
    fn send_oneway(&self, to: &str, msg: PeerMessage) -> Result<(), LinkError> {
        let addr = self.addr_of(to)?;
        self.endpoint
            .send_oneway(addr, &msg)
            .map_err(|e| LinkError::NotSent {
                node: to.to_owned(),
                cause: e.to_string(),
            })
    }

    fn request(
        &self,
        to: &str,
        msg: PeerMessage,
    ) -> BoxFuture<'static, Result<PeerReply, LinkError>> {
        let (addr, endpoint, node) = (self.addr_of(to), self.endpoint.clone(), to.to_owned());
        async move {
            endpoint
                .request(addr?, &msg)
                .await
                .map_err(|e| request_error(node, e))
        }
        .boxed()
    }

    fn request_stream(
        &self,
        to: &str,
        msg: PeerMessage,
    ) -> BoxFuture<'static, Result<Replies, LinkError>> {
        let (addr, endpoint, node) = (self.addr_of(to), self.endpoint.clone(), to.to_owned());
        async move {
            let stream = endpoint
                .request_stream::<_, PeerReply>(addr?, &msg)
                .await
                .map_err(|e| request_error(node.clone(), e))?;
            // Ends after the last frame or the first error.
            let replies = futures::stream::unfold(Some(stream), move |state| {
                let node = node.clone();
                async move {
                    let mut stream = state?;
                    match stream.next().await {
                        Ok(Some(reply)) => Some((Ok(reply), Some(stream))),
                        Ok(None) => None,
                        Err(e) => Some((
                            Err(LinkError::NoAnswer {
                                node,
                                cause: e.to_string(),
                            }),
                            None,
                        )),
                    }
                }
            });
            Ok(replies.boxed())
        }
        .boxed()
    }
}
