//! The transport over real QUIC on loopback: requests, one-way messages,
//! reply streams, mutual TLS refusals, and misbehaving peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tstore_transport::certs::CertDir;
use tstore_transport::{
    ClientSession, Endpoint, Limits, Remote, Role, Service, TlsIdentity, TransportError,
    ALPN_CLIENT,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Echo(String),
    Count(u32),
}

struct TestService {
    oneway: mpsc::UnboundedSender<(String, Msg)>,
}

impl Service for TestService {
    type PeerMsg = Msg;
    type PeerReply = Msg;
    type ClientReq = Msg;
    type ClientReply = Msg;

    fn on_peer_oneway(&self, from: Remote, msg: Msg) {
        let _ = self.oneway.send((from.name, msg));
    }

    fn on_peer_request(&self, from: Remote, msg: Msg) -> BoxStream<'static, Msg> {
        let reply = match msg {
            Msg::Echo(s) => Msg::Echo(format!("{}:{s}", from.name)),
            other => other,
        };
        stream::once(async move { reply }).boxed()
    }

    fn on_client_request(&self, _from: Remote, req: Msg) -> BoxStream<'static, Msg> {
        match req {
            Msg::Count(n) => stream::iter((0..n).map(|i| Msg::Echo(i.to_string()))).boxed(),
            other => stream::once(async move { other }).boxed(),
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    certs: CertDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertDir::new(dir.path().join("certs"));
    certs.create_ca(false).unwrap();
    for n in ["n1", "n2"] {
        certs.create_leaf(Role::Node, n, false).unwrap();
    }
    certs.create_leaf(Role::Client, "ops", false).unwrap();
    Fixture { _dir: dir, certs }
}

fn limits() -> Limits {
    Limits {
        max_frame: 64 * 1024,
        request_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

fn node(certs: &CertDir, name: &str) -> (Endpoint, mpsc::UnboundedReceiver<(String, Msg)>) {
    let identity = certs.identity(Role::Node, name).unwrap();
    let ep = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &identity, limits()).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    ep.serve(Arc::new(TestService { oneway: tx }));
    (ep, rx)
}

async fn client(identity: &TlsIdentity, addr: SocketAddr) -> ClientSession {
    ClientSession::connect(addr, identity, limits())
        .await
        .unwrap()
}

#[tokio::test]
async fn nodes_exchange_requests_and_oneway_messages_both_ways() {
    let f = fixture();
    let (a, mut a_rx) = node(&f.certs, "n1");
    let (b, mut b_rx) = node(&f.certs, "n2");
    let reply: Msg = a
        .request(b.local_addr(), &Msg::Echo("hi".into()))
        .await
        .unwrap();
    assert_eq!(reply, Msg::Echo("n1:hi".into()));
    // The connection a dialed is reused by b to reach a, and served on a's side.
    a.send_oneway(b.local_addr(), &Msg::Count(1)).unwrap();
    b.send_oneway(a.local_addr(), &Msg::Count(2)).unwrap();
    let got_b = tokio::time::timeout(Duration::from_secs(5), b_rx.recv())
        .await
        .unwrap();
    let got_a = tokio::time::timeout(Duration::from_secs(5), a_rx.recv())
        .await
        .unwrap();
    assert_eq!(got_b, Some(("n1".into(), Msg::Count(1))));
    assert_eq!(got_a, Some(("n2".into(), Msg::Count(2))));
}

#[tokio::test]
async fn a_client_request_can_stream_many_replies() {
    let f = fixture();
    let (a, _rx) = node(&f.certs, "n1");
    let ops = f.certs.identity(Role::Client, "ops").unwrap();
    let c = client(&ops, a.local_addr()).await;
    let mut replies = c.request_stream::<_, Msg>(&Msg::Count(50)).await.unwrap();
    let mut n = 0;
    while let Some(m) = replies.next().await.unwrap() {
        assert_eq!(m, Msg::Echo(n.to_string()));
        n += 1;
    }
    assert_eq!(n, 50);
}

#[tokio::test]
async fn certificates_of_another_ca_and_no_certificate_are_refused() {
    let f = fixture();
    let (a, _rx) = node(&f.certs, "n1");
    let other_dir = tempfile::tempdir().unwrap();
    let other = CertDir::new(other_dir.path());
    other.create_ca(false).unwrap();
    other.create_leaf(Role::Client, "ops", false).unwrap();
    other.create_leaf(Role::Node, "n1", false).unwrap();

    // A client of another CA: the handshake or the first request fails.
    let foreign = other.identity(Role::Client, "ops").unwrap();
    let refused = match ClientSession::connect(a.local_addr(), &foreign, limits()).await {
        Err(_) => true,
        Ok(s) => s.request::<_, Msg>(&Msg::Echo("x".into())).await.is_err(),
    };
    assert!(refused, "a client of another CA was served");

    // A node of another CA cannot reach the node either.
    let (rogue, _) = node(&other, "n1");
    let res = rogue
        .request::<_, Msg>(a.local_addr(), &Msg::Echo("x".into()))
        .await;
    assert!(res.is_err(), "a node of another CA was served: {res:?}");

    // No client certificate at all.
    assert!(no_certificate_request(&f.certs, a.local_addr())
        .await
        .is_err());

    // The node keeps serving its own clients.
    let ops = f.certs.identity(Role::Client, "ops").unwrap();
    let c = client(&ops, a.local_addr()).await;
    let r: Msg = c.request(&Msg::Echo("still here".into())).await.unwrap();
    assert_eq!(r, Msg::Echo("still here".into()));
}

/// A QUIC client that trusts the CA but presents no certificate.
async fn no_certificate_request(certs: &CertDir, addr: SocketAddr) -> Result<(), String> {
    let pem = std::fs::read(certs.ca_cert()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_CLIENT.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect(addr, "node.tstore").unwrap(),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    // TLS 1.3: the server may refuse the (missing) client certificate after
    // the client considers the handshake done; the first exchange shows it.
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let frame = tstore_transport::frame::encode(&Msg::Echo("x".into()), 1024).unwrap();
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    match tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await {
        Ok(Ok(bytes)) if !bytes.is_empty() => Ok(()),
        Ok(Ok(_)) => Err("no reply".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no reply in time".into()),
    }
}

#[tokio::test]
async fn a_client_certificate_may_not_speak_the_peer_protocol() {
    let f = fixture();
    let (a, _rx) = node(&f.certs, "n1");
    let ops = f.certs.identity(Role::Client, "ops").unwrap();
    // An endpoint with a client certificate dials with the peer ALPN.
    let impostor = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &ops, limits()).unwrap();
    let err = impostor
        .request::<_, Msg>(a.local_addr(), &Msg::Echo("x".into()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("only node certificates"),
        "unexpected error: {err}"
    );
}

/// Writes raw bytes on a new request stream and returns how the server ended
/// the connection.
async fn send_raw(session: &ClientSession, bytes: &[u8]) -> String {
    let conn = session.raw_connection();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the server closes a connection that broke the framing");
    reason.to_string()
}

#[tokio::test]
async fn bad_frames_close_only_the_offending_connection() {
    let f = fixture();
    let (a, _rx) = node(&f.certs, "n1");
    let (b, _rx_b) = node(&f.certs, "n2");
    let ops = f.certs.identity(Role::Client, "ops").unwrap();
    let bystander = client(&ops, a.local_addr()).await;

    // Oversized: a length prefix far above the limit.
    let offender = client(&ops, a.local_addr()).await;
    let reason = send_raw(&offender, &u32::MAX.to_be_bytes()).await;
    assert!(
        reason.contains("exceeds the limit of 65536 bytes"),
        "{reason}"
    );

    // Undecodable: a well-sized frame of garbage.
    let offender = client(&ops, a.local_addr()).await;
    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.extend([
        tstore_transport::frame::WIRE_VERSION,
        0xff,
        0xff,
        0xff,
        0xff,
    ]);
    let reason = send_raw(&offender, &garbage).await;
    assert!(reason.contains("undecodable message"), "{reason}");

    // Wrong version.
    let offender = client(&ops, a.local_addr()).await;
    let reason = send_raw(&offender, &[0, 0, 0, 2, 42, 0]).await;
    assert!(reason.contains("wire version 42"), "{reason}");

    // Raw UDP garbage at the node's port: QUIC drops it.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..100u8 {
        sock.send_to(&[i; 1200], a.local_addr()).await.unwrap();
    }

    // Everyone else is still served.
    let r: Msg = bystander.request(&Msg::Echo("ok".into())).await.unwrap();
    assert_eq!(r, Msg::Echo("ok".into()));
    let r: Msg = b
        .request(a.local_addr(), &Msg::Echo("ok".into()))
        .await
        .unwrap();
    assert_eq!(r, Msg::Echo("n2:ok".into()));
}

#[tokio::test]
async fn an_unreachable_peer_fails_fast_and_is_retried_after_the_backoff() {
    let f = fixture();
    let (a, _rx) = node(&f.certs, "n1");
    // A bound UDP socket that never answers QUIC.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let err = a.request::<_, Msg>(addr, &Msg::Count(1)).await.unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
    let err = a.request::<_, Msg>(addr, &Msg::Count(1)).await.unwrap_err();
    assert!(matches!(err, TransportError::Backoff { .. }), "{err}");
}

/// Gossip starts before a node serves, so connections it dials early must be
/// served (in both directions) once it does.
#[tokio::test]
async fn a_connection_dialed_before_serving_is_served_once_serving_starts() {
    let f = fixture();
    let (b, mut b_rx) = node(&f.certs, "n2");
    let identity = f.certs.identity(Role::Node, "n1").unwrap();
    let a = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &identity, limits()).unwrap();
    a.send_oneway(b.local_addr(), &Msg::Count(1)).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), b_rx.recv())
        .await
        .unwrap();
    assert_eq!(got, Some(("n1".into(), Msg::Count(1))));
    // b answers on the connection a dialed; a does not serve yet.
    b.send_oneway(a.local_addr(), &Msg::Count(2)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (tx, mut a_rx) = mpsc::unbounded_channel();
    a.serve(Arc::new(TestService { oneway: tx }));
    let got = tokio::time::timeout(Duration::from_secs(5), a_rx.recv())
        .await
        .expect("the early connection is served once serving starts");
    assert_eq!(got, Some(("n2".into(), Msg::Count(2))));
    let reply: Msg = b
        .request(a.local_addr(), &Msg::Echo("x".into()))
        .await
        .unwrap();
    assert_eq!(reply, Msg::Echo("n2:x".into()));
}

/// One-way messages to a peer travel on one long-lived stream (its lane):
/// thousands sent at once all arrive, in the order sent; a full lane
/// refuses by name; and when the peer comes back on a new endpoint at the
/// same address, the lane reconnects and delivers again.
#[tokio::test]
async fn one_way_messages_arrive_in_order_on_a_lane_that_survives_a_peer_restart() {
    let f = fixture();
    let (a, _a_rx) = node(&f.certs, "n1");
    let (b, mut b_rx) = node(&f.certs, "n2");
    let to = b.local_addr();
    const N: u32 = 3000;
    for i in 0..N {
        a.send_oneway(to, &Msg::Count(i)).unwrap();
    }
    for i in 0..N {
        let got = tokio::time::timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {N} did not arrive"));
        assert_eq!(got, Some(("n1".into(), Msg::Count(i))));
    }

    // A lane holds at most `max_oneway_in_flight` messages not yet written.
    let identity = f.certs.identity(Role::Node, "n1").unwrap();
    let tight = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        Limits {
            max_oneway_in_flight: 4,
            ..limits()
        },
    )
    .unwrap();
    let refused = (0..1000)
        .map(|i| tight.send_oneway(to, &Msg::Count(i)))
        .find_map(Result::err)
        .expect("a lane of 4 refuses sends once full");
    assert!(
        matches!(refused, TransportError::Saturated { limit: 4 }),
        "{refused}"
    );

    // b restarts at the same address: the lane's next messages reach it.
    b.shutdown().await;
    drop(b);
    drop(b_rx);
    let identity = f.certs.identity(Role::Node, "n2").unwrap();
    // The old socket closes once the endpoint's tasks have wound down.
    let mut tries = 0;
    let b = loop {
        match Endpoint::bind(to, &identity, limits()) {
            Ok(b) => break b,
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(error = %e, "address not free yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind the restarted peer: {e}"),
        }
    };
    let (tx, mut b_rx) = mpsc::unbounded_channel();
    b.serve(Arc::new(TestService { oneway: tx }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut sent = 0u32;
    loop {
        // Messages sent before the lane noticed the old connection's end
        // may be lost (like datagrams); keep sending until one arrives.
        let _ = a.send_oneway(to, &Msg::Count(N + sent));
        sent += 1;
        if let Ok(Some((from, Msg::Count(_)))) =
            tokio::time::timeout(Duration::from_millis(200), b_rx.recv()).await
        {
            assert_eq!(from, "n1");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message reached the restarted peer after {sent} sends"
        );
    }
}
