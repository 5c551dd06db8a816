//! The routing client (`tstore_client::routing::Client`) and the row
//! commands of the CLI, against three real processes: direct routing with a
//! cached map that goes stale, batches, read-your-writes sessions, and one
//! distinct error kind (and CLI exit code) per kind of bad input.

use std::process::Command;
use std::time::Duration;

use tstore_client::admin::ClientError;
use tstore_client::cluster_map::{RowKey, Sharding, TableSpec};
use tstore_client::data::{BatchOp, ErrorKind, OpResult};
use tstore_client::routing::{Client, Consistency};
use tstore_client::ManualOp;
use tstore_tests::{tstore_binary, Cluster};

const ALL: [&str; 3] = ["n1", "n2", "n3"];

fn user() -> TableSpec {
    TableSpec {
        name: "user".into(),
        key: "id".into(),
        sharding: Sharding::Hash { shards: 4 },
        replicas: 3,
        min_copies: 0,
    }
}

fn kind(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorKind {
    match r {
        Err(ClientError::Data(e)) => e.kind,
        other => panic!("expected a data error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_routing_client_follows_the_map_batches_and_reads_its_own_writes() {
    let mut c = Cluster::new();
    c.start_formed(&ALL).await;
    let table = c.create_table("n1", user()).await;
    let client = Client::connect(&[c.addr("n2")], c.certs().path(), "admin")
        .await
        .unwrap();

    // Writes and strong reads, routed by the client.
    let v1 = client
        .put("user", r#"{"id":1,"name":"Alice","age":25}"#)
        .await
        .unwrap();
    client
        .insert("user", r#"{"id":2,"name":"Bob","age":30}"#)
        .await
        .unwrap();
    assert_eq!(
        kind(client.insert("user", r#"{"id":2,"name":"Bobby"}"#).await),
        ErrorKind::Conflict
    );
    let v2 = client
        .update("user", RowKey::Int(1), r#"{"age":26}"#, Some(v1))
        .await
        .unwrap();
    assert!(v2 > v1);
    assert_eq!(
        kind(
            client
                .update("user", RowKey::Int(1), r#"{"age":27}"#, Some(v1))
                .await
        ),
        ErrorKind::Conflict,
        "a stale --if-version must fail"
    );
    let alice = client
        .get("user", RowKey::Int(1), Consistency::Strong)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.version, v2);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&alice.json).unwrap(),
        serde_json::json!({"id":1,"name":"Alice","age":26})
    );

    // The cached map goes stale: switch the primary of Alice's shard over.
    let shard = table.shard_of(&RowKey::Int(1));
    let (_, now) = c
        .client("n1")
        .await
        .unwrap()
        .describe("user")
        .await
        .unwrap();
    let backup = now.shards[shard as usize].replicas.backups[0].clone();
    c.client("n1")
        .await
        .unwrap()
        .shard_op("user", shard, ManualOp::Promote { node: backup })
        .await
        .unwrap();
    let v3 = client
        .update("user", RowKey::Int(1), r#"{"age":27}"#, Some(v2))
        .await
        .expect("a write routed by a stale map is refreshed and resent");
    assert!(v3 > v2);

    // A batch is atomic within one shard.
    let same: Vec<i64> = (10..1000)
        .filter(|k| table.shard_of(&RowKey::Int(*k)) == shard)
        .take(2)
        .collect();
    let results = client
        .batch(
            "user",
            vec![
                BatchOp::Put {
                    row: format!(r#"{{"id":{},"name":"x"}}"#, same[0]),
                },
                BatchOp::Insert {
                    row: format!(r#"{{"id":{},"name":"y"}}"#, same[1]),
                },
                BatchOp::Update {
                    key: RowKey::Int(1),
                    patch: r#"{"age":28}"#.into(),
                    if_version: Some(v3),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(matches!(results[2], OpResult::Written { version } if version > v3));
    // A failed condition inside a batch writes nothing of it.
    let before = client
        .get("user", RowKey::Int(same[0]), Consistency::Strong)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kind(
            client
                .batch(
                    "user",
                    vec![
                        BatchOp::Put {
                            row: format!(r#"{{"id":{},"name":"changed"}}"#, same[0]),
                        },
                        BatchOp::Insert {
                            row: format!(r#"{{"id":{},"name":"again"}}"#, same[1]),
                        },
                    ],
                )
                .await
        ),
        ErrorKind::Conflict
    );
    let after = client
        .get("user", RowKey::Int(same[0]), Consistency::Strong)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before, after, "a failed batch must write nothing");
    // Keys of two shards cannot share a batch.
    let other = (10..1000)
        .find(|k| table.shard_of(&RowKey::Int(*k)) != shard)
        .unwrap();
    assert_eq!(
        kind(
            client
                .batch(
                    "user",
                    vec![
                        BatchOp::Put {
                            row: format!(r#"{{"id":{},"name":"a"}}"#, same[0]),
                        },
                        BatchOp::Put {
                            row: format!(r#"{{"id":{other},"name":"b"}}"#),
                        },
                    ],
                )
                .await
        ),
        ErrorKind::Invalid
    );

    // Read-your-writes: every session read right after a write sees it,
    // whichever copy serves it.
    for i in 0..60i64 {
        let key = 5000 + i;
        let version = client
            .put("user", &format!(r#"{{"id":{key},"n":{i}}}"#))
            .await
            .unwrap();
        let got = client
            .get("user", RowKey::Int(key), Consistency::Session)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("session read of {key} missed the write"));
        assert_eq!(got.version, version, "session read of {key} is stale");
    }
    // A fresh client carrying the session token sees them too.
    let other_client = Client::connect(&[c.addr("n3")], c.certs().path(), "admin")
        .await
        .unwrap();
    other_client.resume_session(client.session());
    let last = other_client
        .get("user", RowKey::Int(5059), Consistency::Session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&last.json).unwrap()["n"],
        59
    );
    // Scans merge the shards in key order.
    let rows = other_client
        .scan(
            "user",
            Some(RowKey::Int(5000)),
            Some(RowKey::Int(5060)),
            100,
            Consistency::Session,
        )
        .await
        .unwrap();
    let keys: Vec<RowKey> = rows.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, (5000..5060).map(RowKey::Int).collect::<Vec<_>>());

    // Each kind of bad input has its own kind, and nothing is written.
    assert_eq!(
        kind(client.put("user", r#"{"id":7,"name":"#).await),
        ErrorKind::Invalid
    );
    assert_eq!(
        kind(client.put("user", r#"{"name":"nokey"}"#).await),
        ErrorKind::BadKey
    );
    assert_eq!(
        kind(client.put("user", r#"{"id":[1],"name":"x"}"#).await),
        ErrorKind::BadKey
    );
    let big = format!(r#"{{"id":8,"blob":"{}"}}"#, "x".repeat(70_000));
    assert_eq!(kind(client.put("user", &big).await), ErrorKind::TooLarge);
    assert_eq!(
        kind(client.put("nosuch", r#"{"id":1}"#).await),
        ErrorKind::NoTable
    );
    for key in [7, 8] {
        assert!(client
            .get("user", RowKey::Int(key), Consistency::Strong)
            .await
            .unwrap()
            .is_none());
    }
    client.close().await;
    other_client.close().await;
}

/// The row commands as a user types them: exit codes per kind of failure,
/// batches, and a session file giving read-your-writes across commands.
#[tokio::test]
async fn row_commands_exit_with_one_code_per_kind_of_failure() {
    let mut c = Cluster::new();
    c.start_formed(&ALL).await;
    c.create_table("n1", user()).await;
    let session = c.dir().join("session.json");
    let cli = |args: &[&str]| {
        let out = Command::new(tstore_binary())
            .arg("admin")
            .arg("--node")
            .arg(c.addr("n3").to_string())
            .arg("--certs")
            .arg(c.certs().path())
            .arg("--session")
            .arg(&session)
            .args(args)
            .output()
            .expect("run tstore");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |args: &[&str]| {
        let (code, out, err) = cli(args);
        assert_eq!(code, 0, "tstore admin {args:?}: {err}");
        out
    };
    ok(&["put", "user", r#"{"id":1,"name":"Alice","age":25}"#]);
    ok(&["insert", "user", r#"{"id":2,"name":"Bob","age":30}"#]);
    let out = ok(&["get", "user", "2", "--read", "session"]);
    assert!(out.contains(r#""name":"Bob""#), "{out}");
    let token: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&session).unwrap()).unwrap();
    assert!(
        token.as_object().is_some_and(|t| !t.is_empty()),
        "the session file holds the token: {token}"
    );
    let out = ok(&[
        "batch",
        "user",
        r#"[{"update":{"key":1,"patch":{"age":26}}},{"delete":{"key":1}}]"#,
    ]);
    assert!(out.contains("0: ok") && out.contains("1: deleted"), "{out}");

    for (args, code, says) in [
        (
            vec!["insert", "user", r#"{"id":2,"name":"Bob"}"#],
            4,
            "already exists",
        ),
        (vec!["put", "user", r#"{"id":3,"#], 3, "not JSON"),
        (vec!["put", "user", r#"{"name":"x"}"#], 8, "id"),
        (vec!["put", "nosuch", r#"{"id":3}"#], 9, "does not exist"),
        (
            vec![
                "update",
                "user",
                "2",
                r#"{"age":31}"#,
                "--if-version",
                "999",
            ],
            4,
            "expected version 999",
        ),
        (
            vec!["batch", "user", r#"[{"upsert":{}}]"#],
            3,
            "unknown operation",
        ),
        (
            // Eight keys over four shards: they span more than one.
            vec![
                "batch",
                "user",
                r#"[{"put":{"id":11}},{"put":{"id":12}},{"put":{"id":13}},{"put":{"id":14}},
                    {"put":{"id":15}},{"put":{"id":16}},{"put":{"id":17}},{"put":{"id":18}}]"#,
            ],
            3,
            "atomic within one shard",
        ),
        (vec!["get", "user", "99"], 1, "does not exist"),
        // Admin requests exit by their kind too.
        (
            vec!["create-table", "user", "--key", "id", "--shards", "4"],
            4,
            "already exists",
        ),
        (
            vec!["describe", "nosuch"],
            9,
            "does not exist (tables: user)",
        ),
        (vec!["drain", "n9"], 9, "not in the cluster map"),
    ] {
        let (got, _, err) = cli(&args);
        assert_eq!(got, code, "tstore admin {args:?} exited {got}: {err}");
        assert!(err.contains(says), "tstore admin {args:?}: {err}");
    }
    let big = format!(r#"{{"id":4,"blob":"{}"}}"#, "x".repeat(70_000));
    let (got, _, err) = cli(&["put", "user", &big]);
    assert_eq!(got, 7, "{err}");
    assert!(err.contains("row too large"), "{err}");
    // The node kept serving through all of it.
    let out = ok(&["scan", "user"]);
    assert!(out.contains("(1 rows)"), "{out}");

    // Bulk import: good lines load, a bad line is reported by its number,
    // and the command fails at the end.
    let file = c.dir().join("users.jsonl");
    let mut lines: Vec<String> = (100..300)
        .map(|i| format!(r#"{{"id":{i},"name":"user{i}"}}"#))
        .collect();
    lines.insert(57, r#"{"id":"#.into());
    lines.insert(120, r#"{"name":"no key"}"#.into());
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let (code, out, err) = cli(&["--output", "json", "import", "user", file.to_str().unwrap()]);
    assert_eq!(code, 1, "an import with bad lines fails: {err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["imported"], 200, "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{report}");
    assert_eq!(failed[0][0], 58, "lines are numbered from 1: {report}");
    assert_eq!(failed[1][0], 121, "{report}");
    assert!(err.contains("2 rows were not imported"), "{err}");
    let out = ok(&[
        "scan", "user", "--from", "100", "--to", "300", "--limit", "1000",
    ]);
    assert!(out.contains("(200 rows)"), "{out}");

    // The load generator: a short run, its JSON report.
    let out = Command::new(tstore_binary())
        .args(["bench", "--node"])
        .arg(c.addr("n1").to_string())
        .arg("--certs")
        .arg(c.certs().path())
        .args([
            "--ops",
            "400",
            "--concurrency",
            "8",
            "--keys",
            "50",
            "--json",
        ])
        .args(["--mix", "write:50,read:50", "--read", "session"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ops"], 400, "{report}");
    assert_eq!(report["write"]["errors"], 0, "{report}");
    assert_eq!(report["read"]["errors"], 0, "{report}");
    assert!(report["write"]["count"].as_u64().unwrap() > 0, "{report}");
    assert!(report["read"]["p99_us"].as_u64().unwrap() > 0, "{report}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Requests one client has in flight to a node at the same moment share a
/// stream (`DataMany`), and each still gets its own answer: its own row, its
/// own error, nothing crossed. A batch too large is refused by name.
#[tokio::test]
async fn requests_in_flight_together_share_a_stream_and_each_gets_its_own_answer() {
    use tstore_client::wire::{AdminReply, AdminRequest, DataRequest, MAX_COALESCED};
    use tstore_transport::Role;

    let mut c = Cluster::new();
    c.start_formed(&ALL).await;
    c.create_table("n1", user()).await;
    let client = Client::connect(&[c.addr("n1")], c.certs().path(), "admin")
        .await
        .unwrap();
    const N: i64 = 300;
    let rows: Vec<String> = (0..N)
        .map(|i| format!(r#"{{"id":{i},"name":"u{i}"}}"#))
        .collect();
    let again: Vec<String> = (0..N)
        .step_by(3)
        .map(|i| format!(r#"{{"id":{i},"name":"again"}}"#))
        .collect();
    let puts = futures::future::join_all(rows.iter().map(|r| client.put("user", r))).await;
    assert!(puts.iter().all(Result::is_ok), "{puts:?}");
    // Inserts of rows that exist fail, each alone, among reads that succeed.
    let (inserts, gets) = tokio::join!(
        futures::future::join_all(again.iter().map(|r| client.insert("user", r))),
        futures::future::join_all((0..N + 20).map(|i| client.get(
            "user",
            RowKey::Int(i),
            Consistency::Strong
        ))),
    );
    for r in inserts {
        assert_eq!(kind(r), ErrorKind::Conflict);
    }
    for (i, got) in gets.into_iter().enumerate() {
        let got = got.unwrap();
        if (i as i64) < N {
            let row: serde_json::Value = serde_json::from_str(&got.unwrap().json).unwrap();
            assert_eq!(row, serde_json::json!({"id": i, "name": format!("u{i}")}));
        } else {
            assert!(got.is_none(), "key {i} was never written");
        }
    }
    let traffic = client.traffic();
    assert!(
        traffic.streams < traffic.requests,
        "concurrent requests should have shared streams: {traffic:?}"
    );

    // A node refuses a batch over the limit, naming it.
    let id = c.certs().identity(Role::Client, "admin").unwrap();
    let session = tstore_transport::ClientSession::connect(c.addr("n1"), &id, Default::default())
        .await
        .unwrap();
    let get = DataRequest::Copies {
        table: "user".into(),
        checksums: false,
    };
    let reply: AdminReply = session
        .request(&AdminRequest::DataMany(vec![get; MAX_COALESCED + 1]))
        .await
        .unwrap();
    match reply {
        AdminReply::Error(e) => assert!(e.message.contains("at most 256"), "{e:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
