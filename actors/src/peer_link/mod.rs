//! How the shard copies and the router reach other nodes: by node id, with
//! one-way messages, requests with one reply, and requests answered by a
//! stream of replies.
//!
//! The copies send replication one-way ([`PeerLink::send_oneway`]), a
//! learner fetches its snapshot as a stream ([`PeerLink::request_stream`]),
//! and the router forwards a client's request to the node holding the copy
//! ([`PeerLink::request`]). Two implementations: [`QuicPeerLink`], the
//! node's QUIC endpoint (production), and [`mem::MemNet`], an in-memory
//! network of in-process nodes with partitions, loss and delay (tests).
//!
//! The trait is object-safe and used as `Arc<dyn PeerLink>`: every copy on a
//! node shares one link through [`crate::shard::actor::CopyEnv`], and a type
//! parameter would spread to `CopyActor`, `CopyEnv`, the router, the
//! registry of local copies and the NodeActor, for an indirect call that
//! costs nothing next to a network send. Futures are boxed for the same
//! reason.
//!
//! Which errors mean what matters to the router's at-most-once promise: a
//! request that is known not to have left ([`LinkError::NoAddress`],
//! [`LinkError::Unreachable`]) may be reported `Unavailable`; one that may
//! have been delivered ([`LinkError::NoAnswer`]) is a write of unknown
//! outcome.

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::peer::{PeerMessage, PeerReply};

pub mod mem;
mod quic;

pub use quic::QuicPeerLink;

/// Why a message did not get through, as far as the sender can tell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The map gives no address for the node: nothing was sent.
    #[error("node {node} has no known address")]
    NoAddress { node: String },
    /// No connection to the node could be made: nothing was sent.
    #[error("node {node} is unreachable: {cause}")]
    Unreachable { node: String, cause: String },
    /// Refused here before sending (too many in flight, unencodable).
    #[error("message to node {node} not sent: {cause}")]
    NotSent { node: String, cause: String },
    /// Sent, but no (complete) answer came back: the request may have been
    /// carried out.
    #[error("node {node} did not answer: {cause}")]
    NoAnswer { node: String, cause: String },
}

/// A stream of reply frames; it ends after the last one.
pub type Replies = BoxStream<'static, Result<PeerReply, LinkError>>;

/// Peer messaging as the copies and the router need it.
pub trait PeerLink: Send + Sync + 'static {
    /// Hands a one-way message over for delivery to `to` without waiting;
    /// it may be lost, like a datagram.
    fn send_oneway(&self, to: &str, msg: PeerMessage) -> Result<(), LinkError>;

    /// Sends a request and waits (bounded) for its reply.
    fn request(
        &self,
        to: &str,
        msg: PeerMessage,
    ) -> BoxFuture<'static, Result<PeerReply, LinkError>>;

    /// Sends a request answered by a stream of replies. There is no timeout
    /// per frame: the reader sets its own.
    fn request_stream(
        &self,
        to: &str,
        msg: PeerMessage,
    ) -> BoxFuture<'static, Result<Replies, LinkError>>;
}
