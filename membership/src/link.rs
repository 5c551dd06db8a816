//! Chitchat's transport, carried by whatever link the caller supplies.
//!
//! Chitchat awaits `Socket::send` inside its gossip loop, so a send must never
//! wait on the network: [`GossipLink::send`] only hands the payload over (the
//! QUIC link queues it and delivers in the background, dropping it if the peer
//! is unreachable, as UDP would). Received payloads come back through a
//! bounded [`GossipInbox`]; when it is full, gossip is dropped, never queued
//! without bound.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Gossip messages and bytes this node sent and received since it started
/// (one message per gossip exchange step: syn, syn-ack, ack).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipTraffic {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
}

/// The counters behind [`GossipTraffic`], shared by the socket and the
/// membership handle.
#[derive(Debug, Default)]
pub(crate) struct TrafficCounters {
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
}

impl TrafficCounters {
    pub(crate) fn now(&self) -> GossipTraffic {
        GossipTraffic {
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
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
    pub(crate) traffic: Arc<TrafficCounters>,
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
            traffic: self.traffic.clone(),
        }))
    }
}

struct LinkSocket {
    link: Arc<dyn GossipLink>,
    local: SocketAddr,
    inbox: mpsc::Receiver<Inbound>,
    traffic: Arc<TrafficCounters>,
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
        } else {
            self.traffic.messages_sent.fetch_add(1, Ordering::Relaxed);
            self.traffic
                .bytes_sent
                .fetch_add(num_bytes_sent as u64, Ordering::Relaxed);
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
            self.traffic
                .messages_received
                .fetch_add(1, Ordering::Relaxed);
            self.traffic
                .bytes_received
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
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
