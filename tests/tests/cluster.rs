//! Cluster foundation with real `tstore` processes on loopback: self-join by
//! seeds, kill -9 and restart, polite leave on SIGTERM, the gossip watch, and
//! refusal of strangers and garbage.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tstore_client::admin::{AdminClient, WatchItem};
use tstore_client::wire::AdminRequest;
use tstore_membership::{GossipChange, NodeStatus};
use tstore_tests::{all_live, generation_of, status_of, Cluster};
use tstore_transport::certs::CertDir;
use tstore_transport::{Role, ALPN_CLIENT};

/// Generous bound for anything gossip must achieve; the tests print the real time.
const LIMIT: Duration = Duration::from_secs(20);
const ALL: [&str; 3] = ["n1", "n2", "n3"];

async fn three_nodes() -> Cluster {
    let mut c = Cluster::new();
    c.start("n1", &[]);
    c.start("n2", &["n1"]);
    c.start("n3", &["n1", "n2"]);
    for via in ALL {
        c.wait_for(via, "all three live", LIMIT, |m| all_live(m, &ALL))
            .await
            .unwrap();
    }
    c
}

#[tokio::test]
async fn three_processes_self_join_through_seeds() {
    let c = three_nodes().await;
    for via in ALL {
        let members = c.members(via).await.unwrap();
        assert!(all_live(&members, &ALL), "{via}: {members:?}");
        for m in &members {
            assert_eq!(m.addr, c.addr(&m.node_id).to_string());
            assert_eq!(m.roles, vec!["data"]);
            assert_eq!(m.version, env!("CARGO_PKG_VERSION"));
        }
    }
}

#[tokio::test]
async fn kill9_is_marked_down_by_survivors_and_a_restart_rejoins_with_a_higher_generation() {
    let mut c = three_nodes().await;
    let before = generation_of(&c.members("n1").await.unwrap(), "n3").unwrap();

    c.kill9("n3");
    let (t1, t2) = tokio::join!(
        c.wait_for("n1", "n3 down", LIMIT, |m| status_of(m, "n3")
            == Some(NodeStatus::Down)),
        c.wait_for("n2", "n3 down", LIMIT, |m| status_of(m, "n3")
            == Some(NodeStatus::Down)),
    );
    let (t1, t2) = (t1.unwrap(), t2.unwrap());
    println!("kill -9 n3: marked down by n1 after {t1:?}, by n2 after {t2:?}");
    for via in ["n1", "n2"] {
        let m = c.members(via).await.unwrap();
        assert_eq!(status_of(&m, "n1"), Some(NodeStatus::Live), "{via}: {m:?}");
        assert_eq!(status_of(&m, "n2"), Some(NodeStatus::Live), "{via}: {m:?}");
    }

    c.start("n3", &["n1"]);
    for via in ALL {
        c.wait_for(via, "n3 live again with a newer generation", LIMIT, |m| {
            all_live(m, &ALL) && generation_of(m, "n3").is_some_and(|g| g > before)
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn sigterm_makes_peers_see_the_node_leave_and_exits_0() {
    let mut c = three_nodes().await;
    c.signal("n3", Signal::SIGTERM);
    let status = c.wait_exit("n3", Duration::from_secs(15)).unwrap();
    assert!(status.success(), "n3 exited with {status}\n{}", c.logs());
    for via in ["n1", "n2"] {
        c.wait_for(via, "n3 left", LIMIT, |m| {
            status_of(m, "n3") == Some(NodeStatus::Left)
        })
        .await
        .unwrap();
    }
    // It stays "left" (announced), never turns into "down" (timed out).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for via in ["n1", "n2"] {
        let m = c.members(via).await.unwrap();
        assert_eq!(status_of(&m, "n3"), Some(NodeStatus::Left), "{via}: {m:?}");
    }
}

#[tokio::test]
async fn gossip_watch_streams_a_node_going_down() {
    let mut c = three_nodes().await;
    let client = c.client("n1").await.unwrap();
    let mut watch = client.watch_gossip().await.unwrap();
    match watch.next().await.unwrap() {
        Some(WatchItem::Snapshot(s)) => {
            assert_eq!(s.observer, "n1");
            assert!(s
                .nodes
                .iter()
                .any(|n| n.node_id == "n2" && n.status == NodeStatus::Live));
        }
        other => panic!("a watch starts with the full state, got {other:?}"),
    }
    c.kill9("n2");
    let seen = tokio::time::timeout(LIMIT, async {
        loop {
            match watch.next().await.unwrap() {
                Some(WatchItem::Changes { changes, .. }) => {
                    let down = changes.iter().any(|ch| {
                        matches!(ch, GossipChange::StatusChanged { node_id, to: NodeStatus::Down, .. } if node_id == "n2")
                    });
                    if down {
                        return;
                    }
                }
                Some(WatchItem::Snapshot(_)) => panic!("only one snapshot per watch"),
                None => panic!("the watch ended"),
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the watch never showed n2 down\n{}", c.logs());
}

/// A QUIC client that trusts the cluster CA but presents no certificate;
/// returns whether a request got any reply.
async fn request_without_certificate(certs: &CertDir, addr: std::net::SocketAddr) -> bool {
    let pem = std::fs::read(certs.ca_cert()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_CLIENT.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let attempt = async {
        let conn = ep.connect(addr, "node.tstore").ok()?.await.ok()?;
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        let frame = tstore_transport::frame::encode(&AdminRequest::Members, 1 << 20).ok()?;
        send.write_all(&frame).await.ok()?;
        let _ = send.finish();
        let bytes = recv.read_to_end(1 << 20).await.ok()?;
        (!bytes.is_empty()).then_some(())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

#[tokio::test]
async fn strangers_and_garbage_are_refused_while_the_node_keeps_serving() {
    let c = three_nodes().await;
    let target = c.addr("n1");

    // A client whose certificate comes from another CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other = CertDir::new(other_dir.path());
    other.create_ca(false).unwrap();
    other.create_leaf(Role::Client, "admin", false).unwrap();
    let refused = match AdminClient::connect(target, other.path(), "admin").await {
        Err(_) => true,
        Ok(client) => client.members().await.is_err(),
    };
    assert!(refused, "a client of another CA was served");

    // A client with no certificate at all.
    assert!(
        !request_without_certificate(c.certs(), target).await,
        "a client without a certificate was served"
    );

    // Raw UDP garbage at the node's port.
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    for i in 0..200u8 {
        sock.send_to(&[i; 1200], target).await.unwrap();
    }

    // An authenticated client sending an oversized frame, then an undecodable one.
    for bytes in [
        u32::MAX.to_be_bytes().to_vec(),
        vec![
            0,
            0,
            0,
            3,
            tstore_transport::frame::WIRE_VERSION,
            0xff,
            0xff,
        ],
    ] {
        let id = c.certs().identity(Role::Client, "admin").unwrap();
        let session = tstore_transport::ClientSession::connect(target, &id, Default::default())
            .await
            .unwrap();
        let conn = session.raw_connection();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let _ = send.write_all(&bytes).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await;
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("the node closes the offending connection");
        println!("offending connection closed: {reason}");
    }

    // The node logged why, and still serves clients and its peers.
    let log = std::fs::read_to_string(c.log_path("n1")).unwrap();
    assert!(
        log.contains("exceeds the limit"),
        "no log of the oversized frame"
    );
    assert!(
        log.contains("undecodable message"),
        "no log of the undecodable frame"
    );
    assert!(
        log.contains("refused connection"),
        "no log of the refused handshakes"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for via in ALL {
        let m = c.members(via).await.unwrap();
        assert!(
            all_live(&m, &ALL),
            "{via} after the abuse: {m:?}\n{}",
            c.logs()
        );
    }
}
