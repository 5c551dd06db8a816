//! Corruption on disk with real processes: a byte flipped in a stopped
//! node's LMDB file (inside a row's value and the log entry that wrote it)
//! is caught by the stored checksums when the node is back. The damaged row
//! is never served, the node reports it, its copy is rebuilt from a
//! snapshot of the primary, and afterwards every copy is identical and
//! every row written reads back as written.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tstore_client::cluster_map::{RowKey, Sharding, TableSpec};
use tstore_client::data::ReadMode;
use tstore_tests::Cluster;

const LIMIT: Duration = Duration::from_secs(60);
const TABLE: &str = "c";
const ROWS: i64 = 30;
/// The row whose value holds the marker.
const MARKED: i64 = 7;
const MARKER: &str = "corruption-marker-qzxv-7";

fn row(i: i64) -> String {
    let v = if i == MARKED {
        MARKER.to_string()
    } else {
        format!("value-{i}")
    };
    serde_json::json!({"id": i, "v": v}).to_string()
}

/// The marker as it reads after the flip (first letter upper case: still
/// valid UTF-8 and JSON, so only a checksum can tell).
fn flipped() -> String {
    let mut m = MARKER.as_bytes().to_vec();
    m[0] ^= 0x20;
    String::from_utf8(m).unwrap()
}

/// Flips the marker's first byte wherever it is in the file (the row, the
/// log entry that wrote it, and stale pages); returns how many it flipped.
fn flip_marker(path: &std::path::Path) -> usize {
    let mut data = std::fs::read(path).unwrap();
    let m = MARKER.as_bytes();
    let at: Vec<usize> = data
        .windows(m.len())
        .enumerate()
        .filter(|(_, w)| *w == m)
        .map(|(i, _)| i)
        .collect();
    for &i in &at {
        data[i] ^= 0x20;
    }
    std::fs::write(path, data).unwrap();
    at.len()
}

#[tokio::test]
async fn a_flipped_byte_in_a_stopped_nodes_data_is_detected_and_repaired_not_served() {
    let ids = ["n1", "n2", "n3"];
    let mut c = Cluster::new();
    c.start_formed(&ids).await;
    c.create_table(
        "n1",
        TableSpec {
            name: TABLE.into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 1 },
            replicas: 3,
            min_copies: 0,
        },
    )
    .await;
    let client = c.client("n1").await.unwrap();
    for i in 1..=ROWS {
        client.put(TABLE, &row(i)).await.unwrap();
    }
    c.wait_healthy("n1", TABLE, LIMIT).await.unwrap();
    let (_, t) = client.describe(TABLE).await.unwrap();
    client.close().await;
    let victim = t.shards[0].replicas.backups[0].clone();
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();

    // Stop the backup cleanly and damage its data.
    c.signal(&victim, Signal::SIGTERM);
    c.wait_exit(&victim, Duration::from_secs(20)).unwrap();
    let mdb = c.dir().join(&victim).join("lmdb").join("data.mdb");
    let flips = flip_marker(&mdb);
    assert!(flips >= 1, "the marker is in {}", mdb.display());
    c.start(&victim, &others);

    // Reads of the damaged row never see the flipped bytes; the node finds
    // the damage (at a read, or at the checksums of a status scan) and
    // rebuilds its copy from a snapshot.
    let bad = flipped();
    let started = Instant::now();
    let mut reads = 0;
    let mut rebuilt = false;
    while started.elapsed() < LIMIT && !rebuilt {
        for via in ids {
            let Ok(client) = c.client(via).await else {
                continue;
            };
            if let Ok(Some(r)) = client
                .get(TABLE, RowKey::Int(MARKED), ReadMode::Replica)
                .await
            {
                reads += 1;
                assert!(
                    !r.json.contains(&bad),
                    "{via} served the damaged row: {}",
                    r.json
                );
                assert!(r.json.contains(MARKER), "{via}: {}", r.json);
            }
            client.close().await;
        }
        // Left to reads alone at first; then status checksums look too.
        if started.elapsed() > Duration::from_secs(10) {
            if let Ok(client) = c.client(&victim).await {
                let _ = client.copies(TABLE, true).await;
                client.close().await;
            }
        }
        if let Ok(client) = c.client(&victim).await {
            if let Ok(stats) = client.node_stats().await {
                rebuilt = stats.recovery.snapshots_installed >= 1;
            }
            client.close().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rebuilt, "{victim} rebuilt its copy\n{}", c.logs());
    assert!(reads > 0, "some replica read succeeded");
    let log = std::fs::read_to_string(c.log_path(&victim)).unwrap();
    for line in log.lines().filter(|l| l.contains("corrupt")) {
        eprintln!("{victim}: {line}");
    }
    eprintln!("{flips} copies of the marker flipped, {reads} replica reads");
    assert!(
        log.contains("corrupt data in this shard copy"),
        "{victim} reported the corruption\n{}",
        c.logs()
    );

    // Every copy identical, every row as written, from every node.
    c.wait_healthy("n1", TABLE, LIMIT).await.unwrap();
    for via in ids {
        let client = c.client(via).await.unwrap();
        for i in 1..=ROWS {
            let r = client
                .get(TABLE, RowKey::Int(i), ReadMode::Replica)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("row {i} via {via}"));
            let got: serde_json::Value = serde_json::from_str(&r.json).unwrap();
            let want: serde_json::Value = serde_json::from_str(&row(i)).unwrap();
            assert_eq!(got, want, "row {i} via {via}");
        }
        client.close().await;
    }
    let client = c.client(&victim).await.unwrap();
    let copies = client.copies(TABLE, true).await.unwrap();
    client.close().await;
    let mine = copies.iter().find(|r| r.node == victim).unwrap();
    let st = mine.status.as_ref().unwrap();
    assert_eq!(st.state, "serving");
    assert_eq!(st.rows, Some(ROWS as u64));
}
