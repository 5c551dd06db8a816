//! tstore's node-to-node and client transport.
//!
//! One QUIC endpoint per node, on one UDP port, carries everything: peer traffic
//! between nodes (gossip, later replication and Raft) and client/admin sessions.
//! ALPN tells the two apart. Every connection is mutually authenticated against
//! the cluster CA made by `tstore cert`; the role written in a certificate
//! (node or client) decides which protocol its holder may speak.
//!
//! Messages are serde types, encoded with postcard inside length-prefixed,
//! versioned frames with a hard size limit ([`frame`]) and a bound on how
//! deeply a decoded value may nest ([`decode`]). A request opens a
//! bidirectional stream and reads back one or more reply frames; one-way
//! messages to a peer are frames one after another on one long-lived
//! unidirectional stream, the peer's lane.
//!
//! This crate knows nothing of tables, shards or membership: it moves typed
//! messages between authenticated endpoints. It must not depend on any other
//! tstore crate.

pub mod certs;
pub mod decode;
mod endpoint;
mod error;
pub mod frame;
mod tls;

pub use endpoint::{
    ClientSession, Endpoint, Limits, Refusals, Remote, ReplyStream, Service, SessionKind,
    ALPN_CLIENT, ALPN_PEER,
};
pub use error::TransportError;
pub use tls::{Role, TlsIdentity};
