//! Rebalancing with real processes: a node that joins a healthy cluster gets
//! its share of copies and primaries, a bounded number of moves at a time,
//! and no row is lost on the way, written before or during the moves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tstore_client::cluster_map::{RowKey, Sharding, Table, TableSpec};
use tstore_client::data::ReadMode;
use tstore_tests::load::{lost_writes, Load};
use tstore_tests::Cluster;

const REBALANCE_LIMIT: Duration = Duration::from_secs(90);

/// Copies and primaries per node (every node of `ids` listed).
fn loads(t: &Table, ids: &[&str]) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut copies: BTreeMap<String, usize> = ids.iter().map(|n| (n.to_string(), 0)).collect();
    let mut primaries = copies.clone();
    for s in &t.shards {
        *primaries.entry(s.replicas.primary.clone()).or_default() += 1;
        for h in s.replicas.holders() {
            *copies.entry(h.clone()).or_default() += 1;
        }
    }
    (copies, primaries)
}

fn spread(c: &BTreeMap<String, usize>) -> usize {
    c.values().max().unwrap() - c.values().min().unwrap()
}

/// Three nodes, a table of 8 shards with 3 copies each (so every node holds
/// every shard), rows written; then n4 joins under a write load. The
/// coordinator moves copies onto n4 until copies are balanced within one,
/// hands it primaries, and every copy ends identical, with every row written
/// before and every write acknowledged during the moves readable.
#[tokio::test]
async fn a_joining_node_gets_its_share_of_copies_and_primaries() {
    let mut c = Cluster::new();
    c.start_formed(&["n1", "n2", "n3"]).await;
    c.create_table(
        "n1",
        TableSpec {
            name: "rb".into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 8 },
            replicas: 3,
            min_copies: 0,
        },
    )
    .await;
    let client = c.client("n1").await.unwrap();
    let mut rows = BTreeMap::new();
    // Keys apart from the load's (writer w writes w * 1_000_000 + i).
    for k in 50_000_000..50_000_200i64 {
        let row = serde_json::json!({ "id": k, "v": format!("row {k}") }).to_string();
        client.put("rb", &row).await.unwrap();
        rows.insert(k, row);
    }
    let events_before = client.events().await.unwrap().1.len();

    let load = Load::start(
        ["n1", "n2", "n3"].iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "rb",
        2,
        100_000,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let joined = Instant::now();
    c.start("n4", &["n1", "n2", "n3"]);
    let all = ["n1", "n2", "n3", "n4"];
    let (t, took) = c
        .poll("n4 given its share", REBALANCE_LIMIT, || async {
            let (_, t) = client.describe("rb").await.map_err(|e| e.to_string())?;
            let (copies, primaries) = loads(&t, &all);
            let settled = t
                .shards
                .iter()
                .all(|s| s.replicas.learners.is_empty() && s.replicas.members().count() == 3);
            Ok(
                (settled && copies["n4"] > 0 && spread(&copies) <= 1 && primaries["n4"] >= 1)
                    .then_some(t),
            )
        })
        .await
        .unwrap();
    let (copies, primaries) = loads(&t, &all);
    eprintln!("n4 balanced {took:?} after it started: copies {copies:?}, primaries {primaries:?}");
    let report = load.finish().await;
    let check = lost_writes(&client, "rb", &report.acked).await.unwrap();
    assert!(check.examined >= report.acked.len());
    let lost = check.lost;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}\n{}",
        lost.len(),
        report.acked.len(),
        &lost[..lost.len().min(10)],
        c.logs()
    );
    eprintln!(
        "during the moves: {} writes acknowledged, {} unknown, {} failed attempts; none lost",
        report.acked.len(),
        report.unknown.len(),
        report.errors.len()
    );
    assert!(report.acked.len() > 20, "the load barely ran");
    let (healthy, _) = c
        .wait_healthy("n1", "rb", Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!("identical copies {:?} after n4 started", joined.elapsed());
    let (copies, primaries) = loads(&healthy, &all);
    assert!(spread(&copies) <= 1, "{copies:?}");
    assert!(primaries["n4"] >= 1, "{primaries:?}");

    // Every row written before is there, read from each primary.
    for (k, row) in &rows {
        let got = client
            .get("rb", RowKey::Int(*k), ReadMode::Strong)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("row {k} missing\n{}", c.logs()));
        let want: serde_json::Value = serde_json::from_str(row).unwrap();
        let have: serde_json::Value = serde_json::from_str(&got.json).unwrap();
        assert_eq!(have, want, "row {k}");
    }
    // The decisions are in the event log, marked as rebalancing.
    let events = client.events().await.unwrap().1;
    let rebalanced: Vec<_> = events[events_before.min(events.len())..]
        .iter()
        .filter(|e| e.why.starts_with("rebalance: "))
        .collect();
    assert!(
        rebalanced
            .iter()
            .any(|e| e.what.starts_with("added learner n4")),
        "{events:?}"
    );
    assert!(
        rebalanced
            .iter()
            .any(|e| e.what.starts_with("handed primary over")),
        "{events:?}"
    );
    client.close().await;
}
