//! Chitchat's transport, carried by whatever link the caller supplies.
//!
//! Chitchat awaits `Socket::send` inside its gossip loop, so a send must never
//! wait on the network: [`GossipLink::send`] only hands the payload over (the
//! QUIC link queues it and delivers in the background, dropping it if the peer
//! is unreachable, as UDP would). Received payloads come back through a
//! bounded [`GossipInbox`]; when it is full, gossip is dropped, never queued
//! without bound.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How many received gossip payloads may wait for the gossip loop.
pub const INBOX_CAPACITY: usize = 1024;

/// Sends gossip payloads to peers; implemented by the node over QUIC.
pub trait GossipLink: Send + Sync + 'static {
    /// Hands `payload` over for delivery to the node at `to`, without waiting.
    fn send(&self, to: SocketAddr, payload: Vec<u8>) -> Result<(), String>;
}

/// A received gossip payload and the address of the node that sent it.
pub(crate) type Inbound = (SocketAddr, Vec<u8>);

/// Where the node delivers gossip payloads received from peers.
#[derive(Clone)]
pub struct GossipInbox {
    tx: mpsc::Sender<Inbound>,
}

impl GossipInbox {
    /// Delivers a payload from the node at `from`; drops it if the gossip loop
    /// is this far behind (gossip tolerates loss; an unbounded queue would not
    /// be tolerable).
    pub fn deliver(&self, from: SocketAddr, payload: Vec<u8>) {
        if let Err(e) = self.tx.try_send((from, payload)) {
            debug!(peer = %from, error = %e, "gossip inbox full or closed; payload dropped");
        }
    }
}

pub(crate) fn channel() -> (GossipInbox, mpsc::Receiver<Inbound>) {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    (GossipInbox { tx }, rx)
}

/// The chitchat `Transport` over a [`GossipLink`]. It can be opened once.
pub(crate) struct LinkTransport {
    pub(crate) link: Arc<dyn GossipLink>,
    pub(crate) local: SocketAddr,
    pub(crate) inbox: Mutex<Option<mpsc::Receiver<Inbound>>>,
}

#[async_trait]
impl Transport for LinkTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inbox = self
            .inbox
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| anyhow::anyhow!("gossip link already opened"))?;
        Ok(Box::new(LinkSocket {
            link: self.link.clone(),
            local: self.local,
            inbox,
        }))
    }
}

struct LinkSocket {
    link: Arc<dyn GossipLink>,
    local: SocketAddr,
    inbox: mpsc::Receiver<Inbound>,
}

#[async_trait]
impl Socket for LinkSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let payload = envelope.serialize_to_vec();
        let num_bytes_sent = payload.len();
        if let Err(e) = self.link.send(to, payload) {
            // Not fatal: chitchat treats an error here as a broken transport.
            debug!(peer = %to, error = %e, "gossip not sent");
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (from_addr, payload) = self
                .inbox
                .recv()
                .await
                .ok_or_else(|| anyhow::anyhow!("gossip inbox closed"))?;
            match ChitchatEnvelope::deserialize(&mut payload.as_slice()) {
                Ok(envelope) => {
                    return Ok(RecvOutcome {
                        from_addr,
                        envelope,
                        num_bytes_received: payload.len(),
                    })
                }
                Err(e) => {
                    warn!(peer = %from_addr, error = %e, "undecodable gossip payload dropped")
                }
            }
        }
    }
}
