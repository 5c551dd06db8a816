//! An in-memory network of in-process nodes, for tests: each node's
//! [`PeerLink`] delivers messages by node id straight to the receiving
//! node's [`PeerDispatch`], through faults the test sets, as tikv's
//! `transport_simulate.rs` filters and chitchat's `ChannelTransport` links
//! do: one-way cuts and two-way partitions ([`MemNet::cut`],
//! [`MemNet::partition`], [`MemNet::heal`]), and [`Filter`]s that drop
//! messages (with a probability, or the next `n`) or delay them.
//!
//! What a fault looks like to the sender mirrors QUIC: a one-way message
//! that is lost is lost silently; a request that is lost, or whose reply
//! is, gets no answer ([`LinkError::NoAnswer`] once the request timeout has
//! passed); a node that is not on the network is unreachable at once
//! ([`LinkError::Unreachable`]). Cuts apply to requests and to each reply
//! frame (a cut stream stalls, as a QUIC stream would); filters apply to
//! the messages a node sends, not to replies. A delayed message crosses a
//! cut made while it was in flight only if the cut is gone when it lands.
//!
//! Randomness comes from one seeded generator: for a seed, the same
//! sequence of draws, so the same faults wherever messages go out in the
//! same order (timers can change that order). Every message is counted per
//! `(from, to, kind)`: sent, and delivered to the receiver's dispatcher.
//! Messages pass as values, not encoded: the wire format is not exercised.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use futures::FutureExt;
use tstore_transport::{Remote, Role};

use super::{LinkError, PeerLink, Replies};
use crate::dispatch::PeerDispatch;
use crate::peer::{PeerMessage, PeerReply};

/// How long a request waits for its reply unless set otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// The kind of a peer message, which a [`Filter`] may select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Gossip,
    Ping,
    Raft,
    Control,
    Repl,
    Data,
    Snapshot,
    Suspect,
    Heartbeat,
    Loads,
}

impl Kind {
    pub fn of(msg: &PeerMessage) -> Self {
        match msg {
            PeerMessage::Gossip(_) => Kind::Gossip,
            PeerMessage::Ping => Kind::Ping,
            PeerMessage::Raft(_) => Kind::Raft,
            PeerMessage::Control(_) => Kind::Control,
            PeerMessage::Repl { .. } => Kind::Repl,
            PeerMessage::Data(_) => Kind::Data,
            PeerMessage::Snapshot { .. } => Kind::Snapshot,
            PeerMessage::Suspect { .. } => Kind::Suspect,
            PeerMessage::Heartbeat => Kind::Heartbeat,
            PeerMessage::Loads { .. } => Kind::Loads,
        }
    }
}

#[derive(Debug, Clone)]
enum Fault {
    Drop { probability: f64 },
    DropNext { left: u32 },
    Delay { min: Duration, max: Duration },
}

/// A fault applied to the messages it selects (by sender, receiver, kind;
/// all of them unless narrowed).
#[derive(Debug, Clone)]
pub struct Filter {
    from: Option<String>,
    to: Option<String>,
    kind: Option<Kind>,
    fault: Fault,
}

impl Filter {
    fn new(fault: Fault) -> Self {
        Self {
            from: None,
            to: None,
            kind: None,
            fault,
        }
    }

    /// Drops each selected message with this probability.
    pub fn drop(probability: f64) -> Self {
        Self::new(Fault::Drop { probability })
    }

    /// Drops the next `count` selected messages.
    pub fn drop_next(count: u32) -> Self {
        Self::new(Fault::DropNext { left: count })
    }

    /// Delays each selected message by a uniform time in `min..=max`
    /// (different delays reorder messages).
    pub fn delay(min: Duration, max: Duration) -> Self {
        Self::new(Fault::Delay { min, max })
    }

    /// Only messages sent by `node`.
    pub fn from(mut self, node: &str) -> Self {
        self.from = Some(node.to_owned());
        self
    }

    /// Only messages sent to `node`.
    pub fn to(mut self, node: &str) -> Self {
        self.to = Some(node.to_owned());
        self
    }

    /// Only messages of this kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = Some(kind);
        self
    }

    fn selects(&self, from: &str, to: &str, kind: Kind) -> bool {
        self.from.as_deref().is_none_or(|f| f == from)
            && self.to.as_deref().is_none_or(|t| t == to)
            && self.kind.is_none_or(|k| k == kind)
    }
}

/// Messages from one node to another, of one kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Handed to the network by the sender.
    pub sent: u64,
    /// Handed to the receiver's dispatcher.
    pub delivered: u64,
}

enum Verdict {
    Deliver(Duration),
    Lost,
    NoNode,
}

struct Node {
    addr: SocketAddr,
    dispatch: Arc<PeerDispatch>,
}

struct Net {
    nodes: HashMap<String, Node>,
    /// `(from, to)`: messages from `from` to `to` are lost.
    cuts: HashSet<(String, String)>,
    filters: Vec<Filter>,
    rng: u64,
    counts: HashMap<(String, String, Kind), Count>,
    next_port: u16,
}

/// xorshift64*: a uniform draw in `[0, 1)`.
fn draw(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

impl Net {
    fn judge(&mut self, from: &str, to: &str, kind: Kind) -> Verdict {
        self.counts
            .entry((from.to_owned(), to.to_owned(), kind))
            .or_default()
            .sent += 1;
        if !self.nodes.contains_key(to) {
            return Verdict::NoNode;
        }
        if self.cuts.contains(&(from.to_owned(), to.to_owned())) {
            return Verdict::Lost;
        }
        let mut delay = Duration::ZERO;
        let mut rng = self.rng;
        let mut lost = false;
        for f in self
            .filters
            .iter_mut()
            .filter(|f| f.selects(from, to, kind))
        {
            match &mut f.fault {
                Fault::Drop { probability } => lost |= draw(&mut rng) < *probability,
                Fault::DropNext { left } if *left > 0 && !lost => {
                    *left -= 1;
                    lost = true;
                }
                Fault::DropNext { .. } => {}
                Fault::Delay { min, max } => {
                    delay += *min + max.saturating_sub(*min).mul_f64(draw(&mut rng))
                }
            }
        }
        self.rng = rng;
        if lost {
            Verdict::Lost
        } else {
            Verdict::Deliver(delay)
        }
    }

    /// The receiver's dispatcher and who the message is from, if it still
    /// gets through; counts it delivered.
    fn land(&mut self, from: &str, to: &str, kind: Kind) -> Option<(Remote, Arc<PeerDispatch>)> {
        if self.cuts.contains(&(from.to_owned(), to.to_owned())) {
            return None;
        }
        let dispatch = self.nodes.get(to)?.dispatch.clone();
        let addr = self
            .nodes
            .get(from)
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |n| n.addr);
        self.counts
            .entry((from.to_owned(), to.to_owned(), kind))
            .or_default()
            .delivered += 1;
        let remote = Remote {
            addr,
            role: Role::Node,
            name: from.to_owned(),
        };
        Some((remote, dispatch))
    }
}

/// The network; cloning shares it.
#[derive(Clone)]
pub struct MemNet {
    net: Arc<Mutex<Net>>,
    request_timeout: Duration,
}

impl MemNet {
    /// An empty network whose random faults draw from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            net: Arc::new(Mutex::new(Net {
                nodes: HashMap::new(),
                cuts: HashSet::new(),
                filters: Vec::new(),
                rng: seed | 1,
                counts: HashMap::new(),
                next_port: 1,
            })),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// How long a request waits for its reply (QUIC's `request_timeout`).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Net> {
        self.net.lock().expect("in-memory network lock")
    }

    /// Puts a node on the network, served by `dispatch`; returns the
    /// made-up address its messages come from.
    pub fn add_node(&self, name: &str, dispatch: Arc<PeerDispatch>) -> SocketAddr {
        let mut net = self.lock();
        let addr = SocketAddr::from(([127, 0, 0, 1], net.next_port));
        net.next_port += 1;
        net.nodes.insert(name.to_owned(), Node { addr, dispatch });
        addr
    }

    /// Takes a node off the network (a stopped process): it is unreachable.
    pub fn remove_node(&self, name: &str) {
        self.lock().nodes.remove(name);
    }

    /// The link node `me` sends through.
    pub fn link(&self, me: &str) -> Arc<dyn PeerLink> {
        Arc::new(MemLink {
            net: self.clone(),
            me: me.to_owned(),
        })
    }

    /// One-way cut: what `from` sends to `to` is lost.
    pub fn cut(&self, from: &str, to: &str) {
        self.lock().cuts.insert((from.to_owned(), to.to_owned()));
    }

    /// Two-way partition between `a` and `b`.
    pub fn partition(&self, a: &str, b: &str) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Removes every cut and partition.
    pub fn heal(&self) {
        self.lock().cuts.clear();
    }

    pub fn add_filter(&self, filter: Filter) {
        self.lock().filters.push(filter);
    }

    pub fn clear_filters(&self) {
        self.lock().filters.clear();
    }

    /// Messages of `kind` from `from` to `to` so far.
    pub fn count(&self, from: &str, to: &str, kind: Kind) -> Count {
        self.lock()
            .counts
            .get(&(from.to_owned(), to.to_owned(), kind))
            .copied()
            .unwrap_or_default()
    }

    fn unreachable(to: &str) -> LinkError {
        LinkError::Unreachable {
            node: to.to_owned(),
            cause: "not on the in-memory network".into(),
        }
    }

    /// Sends a request and returns its replies, each subject to the cuts
    /// from `to` back to `from` when it is sent (a cut one stalls the rest).
    async fn open(self, from: String, to: String, msg: PeerMessage) -> Result<Replies, LinkError> {
        let kind = Kind::of(&msg);
        let verdict = self.lock().judge(&from, &to, kind);
        match verdict {
            Verdict::NoNode => return Err(Self::unreachable(&to)),
            Verdict::Lost => return Ok(stream::pending().boxed()),
            Verdict::Deliver(delay) if !delay.is_zero() => tokio::time::sleep(delay).await,
            Verdict::Deliver(_) => {}
        }
        let landed = self.lock().land(&from, &to, kind);
        let Some((remote, dispatch)) = landed else {
            return Ok(stream::pending().boxed());
        };
        let replies = dispatch.on_request(&remote, msg);
        let back = (self, to, from);
        let replies = stream::unfold(Some(replies), move |state| {
            let (net, to, from) = back.clone();
            async move {
                let mut replies = state?;
                let reply: PeerReply = replies.next().await?;
                if net.lock().cuts.contains(&(to, from)) {
                    std::future::pending::<()>().await;
                }
                Some((Ok(reply), Some(replies)))
            }
        });
        Ok(replies.boxed())
    }
}

/// One node's side of a [`MemNet`].
struct MemLink {
    net: MemNet,
    me: String,
}

impl PeerLink for MemLink {
    fn send_oneway(&self, to: &str, msg: PeerMessage) -> Result<(), LinkError> {
        let kind = Kind::of(&msg);
        let verdict = self.net.lock().judge(&self.me, to, kind);
        let delay = match verdict {
            // Like QUIC, which delivers in the background: the loss is silent.
            Verdict::NoNode | Verdict::Lost => return Ok(()),
            Verdict::Deliver(delay) => delay,
        };
        let (net, from, to) = (self.net.clone(), self.me.clone(), to.to_owned());
        let deliver = move || {
            let landed = net.lock().land(&from, &to, kind);
            if let Some((remote, dispatch)) = landed {
                dispatch.on_oneway(&remote, msg);
            }
        };
        if delay.is_zero() {
            deliver();
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                deliver();
            });
        }
        Ok(())
    }

    fn request(
        &self,
        to: &str,
        msg: PeerMessage,
    ) -> BoxFuture<'static, Result<PeerReply, LinkError>> {
        let (net, from, to) = (self.net.clone(), self.me.clone(), to.to_owned());
        let timeout = net.request_timeout;
        async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let no_answer = |cause: String| LinkError::NoAnswer {
                node: to.clone(),
                cause,
            };
            let open = net.open(from, to.clone(), msg);
            let mut replies = match tokio::time::timeout_at(deadline, open).await {
                Ok(opened) => opened?,
                Err(_) => return Err(no_answer(format!("no answer within {timeout:?}"))),
            };
            match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => Err(no_answer("the stream closed without an answer".into())),
                Err(_) => Err(no_answer(format!("no answer within {timeout:?}"))),
            }
        }
        .boxed()
    }

    fn request_stream(
        &self,
        to: &str,
        msg: PeerMessage,
    ) -> BoxFuture<'static, Result<Replies, LinkError>> {
        self.net
            .clone()
            .open(self.me.clone(), to.to_owned(), msg)
            .boxed()
    }
}
