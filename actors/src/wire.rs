//! The messages nodes and clients exchange, one enum per protocol. Framed and
//! versioned by `tstore_transport::frame` (bump `WIRE_VERSION` on an
//! incompatible change).

use serde::{Deserialize, Serialize};
use tstore_membership::{GossipChange, GossipSnapshot, Member};

/// Node-to-node messages (ALPN `tstore-peer/1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A chitchat envelope, one-way.
    Gossip(Vec<u8>),
    /// Liveness probe; answered with [`PeerReply::Pong`].
    Ping,
}

/// Replies to node-to-node requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerReply {
    Pong {
        node_id: String,
        generation: u64,
    },
    /// The request is not one this node answers.
    Refused(String),
}

/// Client and operator requests (ALPN `tstore-client/1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The member list: newest incarnation of each node, with status.
    Members,
    /// The raw gossip state as the contacted node sees it.
    Gossip,
    /// The gossip state, then every change to it, until the client goes away.
    WatchGossip,
}

/// Replies to [`AdminRequest`]s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminReply {
    Members {
        observer: String,
        members: Vec<Member>,
    },
    Gossip(GossipSnapshot),
    /// Changes seen by a watch since its previous reply; `at_unix_ms` is the
    /// observer's clock when they were seen.
    GossipChanges {
        at_unix_ms: u64,
        changes: Vec<GossipChange>,
    },
    Error(String),
}
