//! The replicated data path with real processes: the brief's `user` table
//! end to end, reads from every node, range scans in key order, conditional
//! writes, and bad input refused without harm.

use std::process::Command;
use std::time::Duration;

use tstore_client::admin::AdminClient;
use tstore_client::cluster_map::{RowKey, Sharding, TableSpec};
use tstore_client::data::ReadMode;
use tstore_tests::{tstore_binary, Cluster};

const LIMIT: Duration = Duration::from_secs(30);
const ALL: [&str; 3] = ["n1", "n2", "n3"];

async fn formed_cluster() -> Cluster {
    let mut c = Cluster::new();
    for (id, seeds) in [
        ("n1", ["n2", "n3"]),
        ("n2", ["n1", "n3"]),
        ("n3", ["n1", "n2"]),
    ] {
        c.start_with(id, &seeds, &["--bootstrap-expect", "3"]);
    }
    c.poll("a formed control plane", LIMIT, || async {
        let s = c.status("n1").await?;
        Ok((s.leader.is_some() && s.voters.len() == 3).then_some(()))
    })
    .await
    .unwrap();
    c
}

async fn create(c: &Cluster, spec: TableSpec) {
    let name = spec.name.clone();
    c.poll(&format!("create table {name}"), LIMIT, || {
        let spec = spec.clone();
        async move {
            let client = c.client("n1").await?;
            let r = client.create_table(spec).await;
            client.close().await;
            Ok(r.ok())
        }
    })
    .await
    .unwrap();
    // Every node holds its copies before the first write.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn row(v: &serde_json::Value) -> String {
    v.to_string()
}

/// Waits until a replica read of `key` on `via` returns `expected`.
async fn converged(c: &Cluster, via: &str, table: &str, key: i64, expected: Option<&str>) {
    c.poll(
        &format!("{via} replica read of {table}/{key}"),
        LIMIT,
        || async {
            let client = c.client(via).await?;
            let r = client
                .get(table, RowKey::Int(key), ReadMode::Replica)
                .await
                .map_err(|e| e.to_string())?;
            client.close().await;
            Ok((r.as_ref().map(|r| r.json.as_str()) == expected).then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_briefs_user_table_end_to_end() {
    let c = formed_cluster().await;
    create(
        &c,
        TableSpec {
            name: "user".into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 8 },
            replicas: 3,
            min_copies: 0,
        },
    )
    .await;
    let people = [
        serde_json::json!({"id": 1, "name": "Alice", "age": 25}),
        serde_json::json!({"id": 2, "name": "Bob", "age": 30}),
        serde_json::json!({"id": 3, "name": "Carol", "age": 41}),
    ];
    for (p, via) in people.iter().zip(ALL) {
        let client = c.client(via).await.unwrap();
        client.insert("user", &row(p)).await.unwrap();
        client.close().await;
    }
    // Strong reads from every node, and replica reads that converge everywhere.
    for via in ALL {
        let client = c.client(via).await.unwrap();
        for p in &people {
            let id = p["id"].as_i64().unwrap();
            let got = client
                .get("user", RowKey::Int(id), ReadMode::Strong)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&got.json).unwrap(),
                *p
            );
        }
        client.close().await;
        for p in &people {
            converged(&c, via, "user", p["id"].as_i64().unwrap(), Some(&row(p))).await;
        }
    }

    let client = c.client("n2").await.unwrap();
    // Insert of an existing key, and a conditional update at the wrong version, are refused by name.
    let err = client
        .insert("user", &row(&people[1]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("row 2 already exists (version"), "{err}");
    let v = client
        .get("user", RowKey::Int(1), ReadMode::Strong)
        .await
        .unwrap()
        .unwrap()
        .version;
    let err = client
        .update("user", RowKey::Int(1), r#"{"age":26}"#, Some(v + 100))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "condition failed on row 1: expected version {}, current version is {v}",
            v + 100
        )
    );
    let v2 = client
        .update("user", RowKey::Int(1), r#"{"age":26}"#, Some(v))
        .await
        .unwrap();
    assert!(v2 > v);
    client.delete("user", RowKey::Int(2), None).await.unwrap();
    let rows = client
        .scan("user", None, None, 100, ReadMode::Strong)
        .await
        .unwrap();
    let keys: Vec<RowKey> = rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys,
        vec![RowKey::Int(1), RowKey::Int(3)],
        "scan merges shards in key order"
    );
    client.close().await;
    for via in ALL {
        converged(&c, via, "user", 2, None).await;
        converged(
            &c,
            via,
            "user",
            1,
            Some(r#"{"age":26,"id":1,"name":"Alice"}"#),
        )
        .await;
    }
}

#[tokio::test]
async fn a_range_table_scans_in_key_order_across_shards() {
    let c = formed_cluster().await;
    create(
        &c,
        TableSpec {
            name: "events".into(),
            key: "ts".into(),
            sharding: Sharding::Range {
                splits: ["1000", "2000", "3000"].map(RowKey::parse).to_vec(),
            },
            replicas: 2,
            min_copies: 0,
        },
    )
    .await;
    let client = c.client("n3").await.unwrap();
    for ts in [3500, 20, 2500, 999, 1000, 1500, 4000] {
        client
            .put(
                "events",
                &row(&serde_json::json!({"ts": ts, "kind": "tick"})),
            )
            .await
            .unwrap();
    }
    let all: Vec<i64> = client
        .scan("events", None, None, 100, ReadMode::Strong)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| match k {
            RowKey::Int(i) => i,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(all, vec![20, 999, 1000, 1500, 2500, 3500, 4000]);
    let some = client
        .scan(
            "events",
            Some(RowKey::Int(999)),
            Some(RowKey::Int(2500)),
            100,
            ReadMode::Strong,
        )
        .await
        .unwrap();
    assert_eq!(some.len(), 3, "[999, 2500) holds 999, 1000, 1500: {some:?}");
    let limited = client
        .scan("events", None, None, 2, ReadMode::Strong)
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    client.close().await;
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_the_node_keeps_serving() {
    let c = formed_cluster().await;
    create(
        &c,
        TableSpec {
            name: "user".into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 4 },
            replicas: 3,
            min_copies: 0,
        },
    )
    .await;
    let client: AdminClient = c.client("n1").await.unwrap();
    let cases = [
        ("user", "{not json".to_string(), "invalid row: not JSON"),
        (
            "user",
            r#"{"name":"no id"}"#.to_string(),
            "key column \"id\" is missing",
        ),
        (
            "user",
            r#"{"id":1.5}"#.to_string(),
            "must be an integer or a string",
        ),
        ("user", "[1,2]".to_string(), "a row must be a JSON object"),
        (
            "user",
            row(&serde_json::json!({"id": 9, "blob": "x".repeat(70_000)})),
            "exceeds the limit of 65536 bytes",
        ),
        (
            "nope",
            r#"{"id":1}"#.to_string(),
            "table \"nope\" does not exist (tables: user)",
        ),
    ];
    for (table, r, expected) in cases {
        let err = client.put(table, &r).await.unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "put {table} {}: {err}",
            &r[..r.len().min(40)]
        );
    }
    let err = client
        .get("user", RowKey::Int(42), ReadMode::Strong)
        .await
        .unwrap();
    assert!(err.is_none());
    client.put("user", r#"{"id":7,"ok":true}"#).await.unwrap();
    let got = client
        .get("user", RowKey::Int(7), ReadMode::Strong)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.json, r#"{"id":7,"ok":true}"#);
    client.close().await;
    for via in ALL {
        let s = c.status(via).await.unwrap();
        assert!(s.leader.is_some(), "{via} still serves: {s:?}");
    }
}

/// The operator's figures: after N writes to a one-shard table, every copy
/// reports N rows (counted with `--verify`), a log holding every entry
/// (nothing truncated yet: N is below the truncation batch), and each node
/// a nonempty data dir with an LMDB map larger than its use.
#[tokio::test]
async fn describe_and_node_stats_report_what_each_copy_and_node_holds() {
    const N: u64 = 40;
    // The default retention (10,000 entries below the safe point) plus one
    // truncation batch (256).
    const RETENTION_BOUND: u64 = 10_000 + 256;
    let c = formed_cluster().await;
    create(
        &c,
        TableSpec {
            name: "ops".into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 1 },
            replicas: 3,
            min_copies: 0,
        },
    )
    .await;
    let client = c.client("n1").await.unwrap();
    for id in 0..N {
        client
            .put("ops", &format!(r#"{{"id":{id},"v":"{}"}}"#, "x".repeat(20)))
            .await
            .unwrap();
    }
    // Backups apply the last entries at the next heartbeat.
    let copies = c
        .poll("every copy applied every write", LIMIT, || async {
            let client = c.client("n2").await?;
            let r = client.copies("ops", true).await.map_err(|e| e.to_string());
            client.close().await;
            let r = r?;
            Ok((r.len() == 3
                && r.iter()
                    .all(|c| c.status.as_ref().is_ok_and(|s| s.rows == Some(N))))
            .then_some(r))
        })
        .await
        .unwrap()
        .0;
    for r in &copies {
        let s = r.status.as_ref().unwrap();
        assert!(s.logged >= N, "{r:?}");
        assert_eq!(s.log_start, 1, "nothing truncated yet: {r:?}");
        assert_eq!(s.log_entries, s.logged, "{r:?}");
        assert!(s.log_entries <= RETENTION_BOUND, "{r:?}");
        assert!(s.log_bytes > 0, "{r:?}");
        // Each row holds at least its 20-byte value.
        assert!(s.row_bytes.unwrap() > 20 * N, "{r:?}");
    }
    // Without --verify the rows are not counted.
    let plain = client.copies("ops", false).await.unwrap();
    assert!(plain
        .iter()
        .all(|r| r.status.as_ref().is_ok_and(|s| s.rows.is_none())));
    for via in ALL {
        let stats = c.client(via).await.unwrap().node_stats().await.unwrap();
        assert_eq!(stats.node_id, via);
        assert_eq!(stats.copies, 1, "{stats:?}");
        assert!(stats.data_dir_bytes > 0, "{stats:?}");
        assert!(stats.lmdb_used_bytes > 0, "{stats:?}");
        assert!(stats.lmdb_map_size >= stats.lmdb_used_bytes, "{stats:?}");
        assert!(stats.entries_logged >= N, "{stats:?}");
    }
    client.close().await;

    // The same through the command line, as JSON and as text.
    let cli = |args: &[&str]| {
        let out = Command::new(tstore_binary())
            .arg("admin")
            .arg("--node")
            .arg(c.addr("n3").to_string())
            .arg("--certs")
            .arg(c.certs().path())
            .args(args)
            .output()
            .expect("run tstore");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = cli(&["--output", "json", "describe", "ops", "--verify"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let copies = v["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 3, "{v}");
    for r in copies {
        assert_eq!(r["status"]["Ok"]["rows"], N, "{r}");
        assert_eq!(r["status"]["Ok"]["log_start"], 1, "{r}");
    }
    let out = cli(&["describe", "ops", "--verify"]);
    assert!(out.contains("LOG ENTRIES"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ops/0 ")).count(),
        4,
        "{out}"
    );
    let out = cli(&["--output", "json", "node-stats"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node_id"], "n3", "{v}");
    assert!(v["data_dir_bytes"].as_u64().unwrap() > 0, "{v}");
    let out = cli(&["node-stats"]);
    assert!(out.contains("lmdb map size:"), "{out}");
}
