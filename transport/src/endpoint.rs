//! The QUIC endpoint: serving, the per-peer connection cache, requests and
//! one-way messages.
//!
//! Bounds (see [`Limits`]): frame size, request timeout, handshake timeout,
//! concurrent streams per connection, one-way messages queued per peer. A peer that
//! breaks the framing (oversized, undecodable or wrong-version frame) has its
//! connection closed with the reason; nothing else is affected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, VarInt};
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::frame::{self, FrameError};
use crate::tls::{identity_of, Role, TlsIdentity, CLUSTER_SERVER_NAME};
use crate::TransportError;

/// ALPN of node-to-node traffic (gossip, replication, control plane).
pub const ALPN_PEER: &[u8] = b"tstore-peer/1";
/// ALPN of client and operator sessions.
pub const ALPN_CLIENT: &[u8] = b"tstore-client/1";

/// Application close code: the remote broke the protocol.
const CLOSE_PROTOCOL: u32 = 1;
/// Application close code: the remote is not allowed to speak this protocol.
const CLOSE_FORBIDDEN: u32 = 2;
/// Application close code: orderly shutdown.
const CLOSE_SHUTDOWN: u32 = 0;

/// The bounds of one endpoint.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// How long a request may wait for its first reply frame, and how long a
    /// server waits for a request frame on a new stream.
    pub request_timeout: Duration,
    /// How long a QUIC handshake may take.
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive ping interval (must be below `idle_timeout`).
    pub keep_alive: Duration,
    /// After a failed connection attempt to a peer, sends to it fail fast for
    /// this long instead of dialing again.
    pub reconnect_backoff: Duration,
    /// Concurrent request streams per connection.
    pub max_bidi_streams: u32,
    /// Concurrent one-way streams per connection.
    pub max_uni_streams: u32,
    /// One-way messages queued for one peer and not yet written; beyond it
    /// a send to that peer is refused.
    pub max_oneway_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: frame::DEFAULT_MAX_FRAME,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(6),
            keep_alive: Duration::from_millis(1500),
            reconnect_backoff: Duration::from_millis(500),
            max_bidi_streams: 256,
            max_uni_streams: 1024,
            max_oneway_in_flight: 4096,
        }
    }
}

impl Limits {
    fn transport_config(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok())
            .keep_alive_interval(Some(self.keep_alive))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_uni_streams));
        Arc::new(t)
    }
}

/// Which protocol a connection speaks, from its ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Peer,
    Client,
}

/// The authenticated other side of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub addr: SocketAddr,
    pub role: Role,
    /// The node or client name from its certificate.
    pub name: String,
}

/// What a node serves. The transport decodes frames into these types and
/// writes the replies back; a request's reply is a stream of frames (one for a
/// plain answer, many for a watch).
pub trait Service: Send + Sync + 'static {
    type PeerMsg: DeserializeOwned + Send + 'static;
    type PeerReply: Serialize + Send + 'static;
    type ClientReq: DeserializeOwned + Send + 'static;
    type ClientReply: Serialize + Send + 'static;

    /// A one-way message from another node.
    fn on_peer_oneway(&self, from: Remote, msg: Self::PeerMsg);
    /// A request from another node.
    fn on_peer_request(
        &self,
        from: Remote,
        msg: Self::PeerMsg,
    ) -> BoxStream<'static, Self::PeerReply>;
    /// A request from a client or operator session.
    fn on_client_request(
        &self,
        from: Remote,
        req: Self::ClientReq,
    ) -> BoxStream<'static, Self::ClientReply>;
}

/// A node's QUIC endpoint: serves, and connects to peers as a node.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    quic: quinn::Endpoint,
    peer_client: quinn::ClientConfig,
    limits: Limits,
    peers: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<PeerSlot>>>>,
    /// The queue of one-way frames to each peer, drained by its lane task.
    lanes: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    /// Serves the streams a peer opens on a connection we dialed (connections
    /// are used both ways); set by [`Endpoint::serve`].
    serve_dialed: std::sync::OnceLock<ServeFn>,
    refused: RefusalCounters,
}

/// What the endpoint refused since it was bound (for the node's metrics).
#[derive(Default)]
struct RefusalCounters {
    handshakes: AtomicU64,
    forbidden: AtomicU64,
    frames: AtomicU64,
}

/// Connections and frames an endpoint refused since it was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Handshakes that failed (no certificate, one not from the cluster CA,
    /// bad TLS) or timed out.
    pub handshakes: u64,
    /// Connections closed after the handshake: a certificate naming no
    /// tstore node or client, or one that may not speak the protocol asked.
    pub forbidden: u64,
    /// Frames refused as oversized or undecodable (the connection is closed).
    pub frames: u64,
}

type ServeFn = Box<dyn Fn(Connection, Remote) + Send + Sync>;

#[derive(Default)]
struct PeerSlot {
    conn: Option<Connection>,
    /// The streams the peer opens on `conn` are being served. A connection
    /// dialed before [`Endpoint::serve`] was called is served from then on.
    served: bool,
    failed_at: Option<Instant>,
}

fn quic_client_config(
    identity: &TlsIdentity,
    alpn: &[u8],
    limits: &Limits,
) -> Result<quinn::ClientConfig, TransportError> {
    let tls = identity.client_config(alpn)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(limits.transport_config());
    Ok(cfg)
}

impl Endpoint {
    /// Binds the node's endpoint on `addr` (UDP). Must run inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        identity: &TlsIdentity,
        limits: Limits,
    ) -> Result<Self, TransportError> {
        let tls = identity.server_config(&[ALPN_PEER, ALPN_CLIENT])?;
        let quic =
            QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(limits.transport_config());
        let endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|cause| TransportError::Bind { addr, cause })?;
        let peer_client = quic_client_config(identity, ALPN_PEER, &limits)?;
        Ok(Self {
            inner: Arc::new(Inner {
                quic: endpoint,
                peer_client,
                lanes: Mutex::new(HashMap::new()),
                limits,
                peers: Mutex::new(HashMap::new()),
                serve_dialed: std::sync::OnceLock::new(),
                refused: RefusalCounters::default(),
            }),
        })
    }

    /// What the endpoint refused since it was bound.
    pub fn refusals(&self) -> Refusals {
        let r = &self.inner.refused;
        Refusals {
            handshakes: r.handshakes.load(Relaxed),
            forbidden: r.forbidden.load(Relaxed),
            frames: r.frames.load(Relaxed),
        }
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .quic
            .local_addr()
            .expect("a bound endpoint has a local address")
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Starts accepting connections and serving them with `service`.
    pub fn serve<S: Service>(&self, service: Arc<S>) -> JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let svc = service.clone();
        let _ = self
            .inner
            .serve_dialed
            .set(Box::new(move |conn: Connection, remote: Remote| {
                if let Some(inner) = weak.upgrade() {
                    let service = svc.clone();
                    tokio::spawn(serve_connection(
                        inner,
                        conn,
                        remote,
                        SessionKind::Peer,
                        service,
                    ));
                }
            }));
        // Connections dialed before now (gossip starts before serving) are
        // served from now on.
        let catch_up = self.inner.clone();
        tokio::spawn(async move {
            let slots: Vec<(SocketAddr, Arc<tokio::sync::Mutex<PeerSlot>>)> = catch_up
                .peers
                .lock()
                .unwrap()
                .iter()
                .map(|(a, s)| (*a, s.clone()))
                .collect();
            for (addr, slot) in slots {
                catch_up.serve_dialed_slot(addr, &mut *slot.lock().await);
            }
        });
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while let Some(incoming) = inner.quic.accept().await {
                let (inner, service) = (inner.clone(), service.clone());
                tokio::spawn(async move { accept(inner, incoming, service).await });
            }
            debug!("endpoint closed, accept loop ends");
        })
    }

    /// Closes every connection and waits (bounded) until the peers know.
    pub async fn shutdown(&self) {
        self.inner
            .quic
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.quic.wait_idle()).await;
    }

    /// A connection to the peer node at `addr`, reusing a live one.
    pub async fn connection(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        self.inner.connection(addr).await
    }

    /// Sends a one-way message to a peer without waiting: the frame is encoded
    /// now and delivered in the background, on the peer's lane (see
    /// [`run_lane`]); it may be lost (like a datagram). Fails at once if the
    /// message cannot be encoded or the lane's queue is full.
    pub fn send_oneway<M: Serialize>(&self, to: SocketAddr, msg: &M) -> Result<(), TransportError> {
        let buf = frame::encode(msg, self.inner.limits.max_frame)
            .map_err(|cause| TransportError::Frame { addr: to, cause })?;
        let mut lanes = self.inner.lanes.lock().unwrap();
        let lane = lanes.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.inner.limits.max_oneway_in_flight.max(1));
            tokio::spawn(run_lane(Arc::downgrade(&self.inner), to, rx));
            tx
        });
        lane.try_send(buf).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TransportError::Saturated {
                limit: self.inner.limits.max_oneway_in_flight,
            },
            // The lane task ended (only with its endpoint): nothing to send on.
            mpsc::error::TrySendError::Closed(_) => TransportError::NoReply { addr: to },
        })
    }

    /// Sends a request to a peer node and waits for its reply.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        to: SocketAddr,
        req: &Q,
    ) -> Result<R, TransportError> {
        let conn = self.inner.connection(to).await?;
        match call(&conn, req, &self.inner.limits).await {
            Err(TransportError::Connection { .. }) => {
                // The cached connection was dead (the peer restarted): retry once on a fresh one.
                self.inner.forget(to, &conn);
                let conn = self.inner.connection(to).await?;
                call(&conn, req, &self.inner.limits).await
            }
            other => other,
        }
    }
}

impl Endpoint {
    /// Sends a request to a peer node whose reply is a stream of frames
    /// (read each with its own timeout: there is none per frame here).
    pub async fn request_stream<Q: Serialize, R: DeserializeOwned>(
        &self,
        to: SocketAddr,
        req: &Q,
    ) -> Result<ReplyStream<R>, TransportError> {
        let conn = self.inner.connection(to).await?;
        let recv = match open_call(&conn, req, &self.inner.limits).await {
            Err(TransportError::Connection { .. }) => {
                self.inner.forget(to, &conn);
                let conn = self.inner.connection(to).await?;
                open_call(&conn, req, &self.inner.limits).await?
            }
            other => other?,
        };
        Ok(ReplyStream {
            addr: to,
            recv,
            limits: self.inner.limits.clone(),
            _reply: std::marker::PhantomData,
        })
    }
}

impl Inner {
    async fn connection(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let slot = self.peers.lock().unwrap().entry(addr).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(conn) = &slot.conn {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            slot.conn = None;
        }
        if let Some(at) = slot.failed_at {
            let since = at.elapsed();
            if since < self.limits.reconnect_backoff {
                return Err(TransportError::Backoff { addr, since });
            }
        }
        match self.dial(addr).await {
            Ok(conn) => {
                slot.failed_at = None;
                slot.conn = Some(conn.clone());
                slot.served = false;
                self.serve_dialed_slot(addr, &mut slot);
                Ok(conn)
            }
            Err(e) => {
                slot.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let connecting = self
            .quic
            .connect_with(self.peer_client.clone(), addr, CLUSTER_SERVER_NAME)
            .map_err(|e| TransportError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        match tokio::time::timeout(self.limits.connect_timeout, connecting).await {
            Ok(Ok(conn)) => {
                debug!(peer = %addr, "connected");
                Ok(conn)
            }
            Ok(Err(e)) => Err(TransportError::Connect {
                addr,
                reason: e.to_string(),
            }),
            Err(_) => Err(TransportError::Connect {
                addr,
                reason: format!("no handshake within {:?}", self.limits.connect_timeout),
            }),
        }
    }

    /// Starts serving the peer's streams on a dialed connection, once the
    /// endpoint serves at all (connections are used both ways).
    fn serve_dialed_slot(&self, addr: SocketAddr, slot: &mut PeerSlot) {
        let (Some(serve), Some(conn)) = (self.serve_dialed.get(), &slot.conn) else {
            return;
        };
        if slot.served || conn.close_reason().is_some() {
            return;
        }
        let name = peer_certificate_identity(conn)
            .map(|(_, name)| name)
            .unwrap_or_default();
        serve(
            conn.clone(),
            Remote {
                addr,
                role: Role::Node,
                name,
            },
        );
        slot.served = true;
    }

    /// Drops `conn` from the cache if it is still the cached one.
    fn forget(&self, addr: SocketAddr, conn: &Connection) {
        if let Some(slot) = self.peers.lock().unwrap().get(&addr) {
            if let Ok(mut slot) = slot.try_lock() {
                if slot.conn.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
                    slot.conn = None;
                }
            }
        }
    }

    /// Remembers an accepted peer connection so replies can reuse it.
    fn adopt(&self, addr: SocketAddr, conn: &Connection) {
        let slot = self.peers.lock().unwrap().entry(addr).or_default().clone();
        let guard = slot.try_lock();
        if let Ok(mut slot) = guard {
            let live = slot
                .conn
                .as_ref()
                .is_some_and(|c| c.close_reason().is_none());
            if !live {
                slot.conn = Some(conn.clone());
                slot.served = true; // the accept path serves it
                slot.failed_at = None;
            }
        }
    }
}

/// Bytes of queued one-way frames a lane writes in one go at most.
const LANE_BATCH_BYTES: usize = 1 << 20;

/// Carries the one-way messages to one peer: one long-lived unidirectional
/// stream, on which the frames queued meanwhile are written together.
///
/// A stream per message, as it was, cost a task, a stream opening and a
/// stream accept on each side for every replication message and gossip
/// round; on one stream, messages queued together leave in one write. The
/// messages to a peer now arrive in the order they were sent (what a
/// datagram never promised, so no reader relies on either). What cannot be
/// written (no connection, a write that fails or outlasts the request
/// timeout) is dropped, like a lost datagram, and the next message opens a
/// new stream, reconnecting if need be. The task ends with its endpoint.
async fn run_lane(inner: Weak<Inner>, to: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut stream: Option<(Connection, quinn::SendStream)> = None;
    let mut carried: Option<Vec<u8>> = None;
    loop {
        let mut buf = match carried.take() {
            Some(buf) => buf,
            None => match rx.recv().await {
                Some(buf) => buf,
                None => return,
            },
        };
        while buf.len() < LANE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) if buf.len() + more.len() > LANE_BATCH_BYTES => {
                    carried = Some(more);
                    break;
                }
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let timeout = inner.limits.request_timeout;
        let write = async {
            let (conn, send) = match &mut stream {
                Some((conn, send)) if conn.close_reason().is_none() => (conn.clone(), send),
                _ => {
                    let conn = inner.connection(to).await?;
                    let send = conn
                        .open_uni()
                        .await
                        .map_err(|cause| TransportError::Connection { addr: to, cause })?;
                    let (_, send) = stream.insert((conn.clone(), send));
                    (conn, send)
                }
            };
            send.write_all(&buf).await.map_err(|e| {
                if let quinn::WriteError::ConnectionLost(_) = e {
                    inner.forget(to, &conn);
                }
                TransportError::Frame {
                    addr: to,
                    cause: FrameError::Write(e),
                }
            })
        };
        let res = tokio::time::timeout(timeout, write)
            .await
            .unwrap_or(Err(TransportError::Timeout { addr: to, timeout }));
        if let Err(e) = res {
            debug!(peer = %to, error = %e, bytes = buf.len(), "one-way messages not delivered");
            if let Some((_, mut send)) = stream.take() {
                let _ = send.reset(VarInt::from_u32(0));
            }
        }
    }
}

/// Opens a request stream, sends `req` and returns the stream to read replies from.
async fn open_call<Q: Serialize>(
    conn: &Connection,
    req: &Q,
    limits: &Limits,
) -> Result<quinn::RecvStream, TransportError> {
    let addr = conn.remote_address();
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|cause| TransportError::Connection { addr, cause })?;
    frame::write(&mut send, req, limits.max_frame)
        .await
        .map_err(|cause| match cause {
            FrameError::Write(quinn::WriteError::ConnectionLost(cause)) => {
                TransportError::Connection { addr, cause }
            }
            cause => TransportError::Frame { addr, cause },
        })?;
    let _ = send.finish();
    Ok(recv)
}

async fn read_reply<R: DeserializeOwned>(
    addr: SocketAddr,
    recv: &mut quinn::RecvStream,
    limits: &Limits,
    timeout: Option<Duration>,
) -> Result<Option<R>, TransportError> {
    let read = frame::read::<R>(recv, limits.max_frame);
    let res = match timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| TransportError::Timeout { addr, timeout: t })?,
        None => read.await,
    };
    res.map_err(|cause| match cause {
        FrameError::Read(quinn::ReadError::ConnectionLost(cause)) => {
            TransportError::Connection { addr, cause }
        }
        cause => TransportError::Frame { addr, cause },
    })
}

async fn call<Q: Serialize, R: DeserializeOwned>(
    conn: &Connection,
    req: &Q,
    limits: &Limits,
) -> Result<R, TransportError> {
    let addr = conn.remote_address();
    let mut recv = open_call(conn, req, limits).await?;
    read_reply(addr, &mut recv, limits, Some(limits.request_timeout))
        .await?
        .ok_or(TransportError::NoReply { addr })
}

/// A stream of reply frames to one request (e.g. a watch).
pub struct ReplyStream<R> {
    addr: SocketAddr,
    recv: quinn::RecvStream,
    limits: Limits,
    _reply: std::marker::PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> ReplyStream<R> {
    /// The next reply; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<R>, TransportError> {
        read_reply(self.addr, &mut self.recv, &self.limits, None).await
    }
}

/// The longest [`ClientSession::close`] waits for its CONNECTION_CLOSE frame to be sent.
const CLOSE_FLUSH_BOUND: Duration = Duration::from_millis(50);

/// A client or operator session with one node.
pub struct ClientSession {
    endpoint: quinn::Endpoint,
    conn: Connection,
    limits: Limits,
}

impl ClientSession {
    /// Connects to the node at `addr` with a client (or node) certificate.
    pub async fn connect(
        addr: SocketAddr,
        identity: &TlsIdentity,
        limits: Limits,
    ) -> Result<Self, TransportError> {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|cause| TransportError::Bind { addr: bind, cause })?;
        endpoint.set_default_client_config(quic_client_config(identity, ALPN_CLIENT, &limits)?);
        let connecting =
            endpoint
                .connect(addr, CLUSTER_SERVER_NAME)
                .map_err(|e| TransportError::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
        let conn = match tokio::time::timeout(limits.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(TransportError::Connect {
                    addr,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(TransportError::Connect {
                    addr,
                    reason: format!("no handshake within {:?}", limits.connect_timeout),
                })
            }
        };
        Ok(Self {
            endpoint,
            conn,
            limits,
        })
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Sends a request and waits for its one reply.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        req: &Q,
    ) -> Result<R, TransportError> {
        call(&self.conn, req, &self.limits).await
    }

    /// Sends a request whose reply is a stream of frames.
    pub async fn request_stream<Q: Serialize, R: DeserializeOwned>(
        &self,
        req: &Q,
    ) -> Result<ReplyStream<R>, TransportError> {
        let recv = open_call(&self.conn, req, &self.limits).await?;
        Ok(ReplyStream {
            addr: self.conn.remote_address(),
            recv,
            limits: self.limits.clone(),
            _reply: std::marker::PhantomData,
        })
    }

    /// The raw connection, for tests that need to misbehave on purpose.
    pub fn raw_connection(&self) -> &Connection {
        &self.conn
    }

    /// Closes the session politely, without waiting for the connection to drain.
    ///
    /// Every request made through the session has had its reply read by the time the caller
    /// closes it, so the only thing left to send is the packet carrying CONNECTION_CLOSE, which
    /// lets the node drop its side at once. This waits until that packet has left (the
    /// connection's count of sent datagrams moves past what it was before the close), at most
    /// [`CLOSE_FLUSH_BOUND`], and not for the draining period (three probe timeouts, about
    /// 80 ms on loopback) that `Endpoint::wait_idle` would: that period only absorbs late
    /// packets of a connection nobody reads any more, and waiting for it made every CLI command
    /// 80 ms slower per node it spoke to. (quinn counts no CONNECTION_CLOSE among the frames it
    /// sent, hence the datagram count.)
    pub async fn close(self) {
        let sent = self.conn.stats().udp_tx.datagrams;
        self.conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"bye");
        let deadline = tokio::time::Instant::now() + CLOSE_FLUSH_BOUND;
        loop {
            tokio::task::yield_now().await;
            if self.conn.stats().udp_tx.datagrams > sent || tokio::time::Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"bye");
    }
}

fn protocol_violation(conn: &Connection, remote: &Remote, err: &FrameError) {
    warn!(peer = %remote.addr, name = %remote.name, error = %err, "closing connection: protocol violation");
    conn.close(VarInt::from_u32(CLOSE_PROTOCOL), err.to_string().as_bytes());
}

async fn accept<S: Service>(inner: Arc<Inner>, incoming: quinn::Incoming, service: Arc<S>) {
    let addr = incoming.remote_address();
    let conn = match tokio::time::timeout(inner.limits.connect_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            inner.refused.handshakes.fetch_add(1, Relaxed);
            info!(peer = %addr, error = %e, "refused connection: handshake failed");
            return;
        }
        Err(_) => {
            inner.refused.handshakes.fetch_add(1, Relaxed);
            info!(peer = %addr, "refused connection: handshake timed out");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let identity = peer_certificate_identity(&conn);
    let Some((role, name)) = identity else {
        inner.refused.forbidden.fetch_add(1, Relaxed);
        warn!(peer = %addr, "refused connection: certificate names no tstore node or client");
        conn.close(
            VarInt::from_u32(CLOSE_FORBIDDEN),
            b"certificate names no tstore node or client",
        );
        return;
    };
    let remote = Remote { addr, role, name };
    let kind = match alpn.as_deref() {
        Some(ALPN_PEER) if role == Role::Node => SessionKind::Peer,
        Some(ALPN_PEER) => {
            inner.refused.forbidden.fetch_add(1, Relaxed);
            warn!(peer = %addr, name = %remote.name, "refused connection: a client certificate may not speak the peer protocol");
            conn.close(
                VarInt::from_u32(CLOSE_FORBIDDEN),
                b"only node certificates may speak the peer protocol",
            );
            return;
        }
        Some(ALPN_CLIENT) => SessionKind::Client,
        _ => {
            inner.refused.forbidden.fetch_add(1, Relaxed);
            conn.close(VarInt::from_u32(CLOSE_FORBIDDEN), b"unknown protocol");
            return;
        }
    };
    debug!(peer = %addr, name = %remote.name, ?kind, "connection accepted");
    if kind == SessionKind::Peer {
        inner.adopt(addr, &conn);
    }
    serve_connection(inner, conn, remote, kind, service).await
}

/// The role and name in the certificate the other side presented.
fn peer_certificate_identity(conn: &Connection) -> Option<(Role, String)> {
    conn.peer_identity()
        .and_then(|c| c.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(identity_of))
}

/// Serves the streams the other side opens on `conn` until it closes.
async fn serve_connection<S: Service>(
    inner: Arc<Inner>,
    conn: Connection,
    remote: Remote,
    kind: SessionKind,
    service: Arc<S>,
) {
    let addr = remote.addr;
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let (inner, service, conn, remote) = (inner.clone(), service.clone(), conn.clone(), remote.clone());
                    tokio::spawn(async move { serve_oneway(&inner, recv, &conn, remote, kind, &*service).await });
                }
                Err(e) => { debug!(peer = %addr, error = %e, "connection ended"); break; }
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let (inner, service, conn, remote) = (inner.clone(), service.clone(), conn.clone(), remote.clone());
                    tokio::spawn(async move { serve_request(&inner, send, recv, &conn, remote, kind, service).await });
                }
                Err(e) => { debug!(peer = %addr, error = %e, "connection ended"); break; }
            },
        }
    }
}

/// Reads the one frame a new stream must carry, within the request timeout.
/// Returns `None` (after closing the connection if the peer misbehaved).
async fn read_first<M: DeserializeOwned>(
    inner: &Inner,
    recv: &mut quinn::RecvStream,
    conn: &Connection,
    remote: &Remote,
) -> Option<M> {
    match tokio::time::timeout(
        inner.limits.request_timeout,
        frame::read::<M>(recv, inner.limits.max_frame),
    )
    .await
    {
        Ok(Ok(Some(msg))) => Some(msg),
        Ok(Ok(None)) => None,
        Ok(Err(e)) if e.is_protocol_violation() => {
            inner.refused.frames.fetch_add(1, Relaxed);
            protocol_violation(conn, remote, &e);
            None
        }
        Ok(Err(e)) => {
            debug!(peer = %remote.addr, error = %e, "stream failed");
            None
        }
        Err(_) => {
            debug!(peer = %remote.addr, "stream sent no frame in time; dropped");
            None
        }
    }
}

async fn serve_oneway<S: Service>(
    inner: &Inner,
    mut recv: quinn::RecvStream,
    conn: &Connection,
    remote: Remote,
    kind: SessionKind,
    service: &S,
) {
    if kind != SessionKind::Peer {
        warn!(peer = %remote.addr, "closing client connection: clients may not send one-way messages");
        conn.close(
            VarInt::from_u32(CLOSE_FORBIDDEN),
            b"clients may not send one-way messages",
        );
        return;
    }
    // A lane (`run_lane`) sends frame after frame on one stream; the first
    // must come within the request timeout, the next whenever there is one.
    let Some(msg) = read_first::<S::PeerMsg>(inner, &mut recv, conn, &remote).await else {
        return;
    };
    service.on_peer_oneway(remote.clone(), msg);
    loop {
        match frame::read::<S::PeerMsg>(&mut recv, inner.limits.max_frame).await {
            Ok(Some(msg)) => service.on_peer_oneway(remote.clone(), msg),
            Ok(None) => return,
            Err(e) if e.is_protocol_violation() => {
                inner.refused.frames.fetch_add(1, Relaxed);
                protocol_violation(conn, &remote, &e);
                return;
            }
            Err(e) => {
                debug!(peer = %remote.addr, error = %e, "one-way stream ended");
                return;
            }
        }
    }
}

async fn serve_request<S: Service>(
    inner: &Inner,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    conn: &Connection,
    remote: Remote,
    kind: SessionKind,
    service: Arc<S>,
) {
    let max = inner.limits.max_frame;
    match kind {
        SessionKind::Peer => {
            if let Some(msg) = read_first::<S::PeerMsg>(inner, &mut recv, conn, &remote).await {
                let replies = service.on_peer_request(remote.clone(), msg);
                write_replies(&mut send, replies, max, &remote).await;
            }
        }
        SessionKind::Client => {
            if let Some(req) = read_first::<S::ClientReq>(inner, &mut recv, conn, &remote).await {
                let replies = service.on_client_request(remote.clone(), req);
                write_replies(&mut send, replies, max, &remote).await;
            }
        }
    }
}

async fn write_replies<R: Serialize>(
    send: &mut quinn::SendStream,
    mut replies: BoxStream<'static, R>,
    max: usize,
    remote: &Remote,
) {
    while let Some(reply) = replies.next().await {
        let buf = match frame::encode(&reply, max) {
            Ok(buf) => buf,
            Err(e) => {
                warn!(peer = %remote.addr, error = %e, "reply cannot be sent; stream reset");
                let _ = send.reset(VarInt::from_u32(CLOSE_PROTOCOL));
                return;
            }
        };
        if let Err(e) = send.write_all(&buf).await {
            debug!(peer = %remote.addr, error = %e, "reply not delivered; stream closed");
            return;
        }
    }
    let _ = send.finish();
}
