//! Gossip membership for tstore.
//!
//! A thin layer over chitchat: who is in the cluster, at which address, in
//! which zone, with which roles, and whether the failure detector thinks each
//! node is live. It delivers liveness changes as [`MembershipEvent`]s and
//! exposes the raw gossip state for operators ([`view::GossipSnapshot`]).
//!
//! Gossip does not travel on its own UDP socket: the caller supplies a
//! [`GossipLink`] (in tstore, the node's authenticated QUIC endpoint) and feeds
//! received payloads into the [`GossipInbox`]. So there is one port, and only
//! holders of a cluster certificate can gossip.
//!
//! This crate knows nothing of tables, shards or the transport; it depends on
//! chitchat only.

mod config;
mod error;
mod identity;
mod link;
mod membership;
/// Gossip state as plain data; defined in `tstore-core` so clients can read it
/// without linking chitchat.
pub use tstore_core::view;

pub use config::{MembershipConfig, NodeProfile};
pub use error::MembershipError;
pub use identity::NodeIdentity;
pub use link::{GossipInbox, GossipLink, GossipTraffic};
pub use membership::{Membership, MembershipEvent};
pub use view::{GossipChange, GossipSnapshot, Member, NodeStatus};
