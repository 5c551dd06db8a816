//! Elastic tables with real processes: shards split online under a write
//! load, a scan running across a split, and a kill -9 in the middle of one.
//! Every check is on what the clients saw (each acknowledged write, with
//! its row and version) and on every copy's checksum, not only on the final
//! contents.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tstore_client::cluster_map::{KeyRange, NodeId, RowKey, Sharding, Table, TableSpec};
use tstore_client::data::ReadMode;
use tstore_tests::checks::assert_nothing_lost;
use tstore_tests::load::{first_ack_per_shard, Load};
use tstore_tests::Cluster;

const HEAL_LIMIT: Duration = Duration::from_secs(90);

fn spec(name: &str, sharding: Sharding, replicas: u32) -> TableSpec {
    TableSpec {
        name: name.into(),
        key: "id".into(),
        sharding,
        replicas,
        min_copies: 0,
    }
}

fn holders(t: &Table, shard: u32) -> BTreeSet<NodeId> {
    t.shards[shard as usize]
        .replicas
        .holders()
        .cloned()
        .collect()
}

/// Splits `table/shard` through `via`, retrying while the shard is busy
/// (a copy being moved by the rebalancer); returns the new shard's index.
async fn split(c: &Cluster, via: &str, table: &str, shard: u32, at: Option<RowKey>) -> u32 {
    let (child, _) = c
        .poll(
            &format!("split {table}/{shard}"),
            Duration::from_secs(30),
            || {
                let at = at.clone();
                async move {
                    let client = c.client(via).await?;
                    let r = client.split_shard(table, shard, at).await;
                    client.close().await;
                    match r {
                        Ok((_, child)) => Ok(Some(child)),
                        Err(e) => {
                            eprintln!("split {table}/{shard}: {e}; retrying");
                            Ok(None)
                        }
                    }
                }
            },
        )
        .await
        .unwrap();
    child
}

/// Four nodes, two copies per shard: a hash table of one shard and a range
/// table of two, each written by four writers. Both split while the writers
/// run (the hash shard into its hash halves, the range shard at a key
/// between two writers' keys). Afterwards: every acknowledged write is there
/// once, with its acknowledged row, in one history per shard; every copy of
/// every shard holds the same rows; the halves end up apart (rebalancing);
/// and every writer kept getting writes acknowledged across the split.
#[tokio::test]
async fn a_hash_and_a_range_shard_split_under_a_write_load_lose_and_repeat_nothing() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3", "n4"];
    c.start_formed(&ids).await;
    c.create_table("n1", spec("h", Sharding::Hash { shards: 1 }, 2))
        .await;
    c.create_table(
        "n1",
        spec(
            "r",
            Sharding::Range {
                splits: vec![RowKey::Int(2_000_000)],
            },
            2,
        ),
    )
    .await;
    let addrs: Vec<_> = ids.iter().map(|n| c.addr(n)).collect();
    let certs = c.certs().path().to_path_buf();
    let hash_load = Load::start(addrs.clone(), certs.clone(), "h", 4, 1_000_000);
    let range_load = Load::start(addrs, certs, "r", 4, 1_000_000);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let split_at = Instant::now();
    let h_child = split(&c, "n2", "h", 0, None).await;
    // Writers 0 and 1 write below 2,000,000: the split gives writer 1's
    // keys to the new shard.
    let r_child = split(&c, "n3", "r", 0, Some(RowKey::Int(1_000_000))).await;
    eprintln!(
        "split h/0 (into h/{h_child}) and r/0 (into r/{r_child}) in {:?}",
        split_at.elapsed()
    );
    let client = c.client("n1").await.unwrap();
    let (_, h) = client.describe("h").await.unwrap();
    assert_eq!(h.shards[1].range, KeyRange::HashSlot { slot: 1, of: 2 });
    let (_, r) = client.describe("r").await.unwrap();
    assert_eq!(
        r.shards[r_child as usize].range,
        KeyRange::Range {
            start: Some(RowKey::Int(1_000_000)),
            end: Some(RowKey::Int(2_000_000)),
        }
    );

    // The rebalancer moves one half away from the other.
    let ((h, r), took) = c
        .poll("the halves apart", HEAL_LIMIT, || async {
            let client = c.client("n1").await?;
            let (_, h) = client.describe("h").await.map_err(|e| e.to_string())?;
            let (_, r) = client.describe("r").await.map_err(|e| e.to_string())?;
            client.close().await;
            let apart = holders(&h, 0) != holders(&h, h_child)
                && holders(&r, 0) != holders(&r, r_child)
                && h.shards
                    .iter()
                    .chain(&r.shards)
                    .all(|s| s.replicas.learners.is_empty());
            Ok(apart.then_some((h, r)))
        })
        .await
        .unwrap();
    eprintln!(
        "halves apart {took:?} later: h/0 on {:?}, h/{h_child} on {:?}; r/0 on {:?}, r/{r_child} on {:?}",
        holders(&h, 0),
        holders(&h, h_child),
        holders(&r, 0),
        holders(&r, r_child)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let after = Instant::now();
    let hash_report = assert_nothing_lost(&c, "n1", "h", hash_load).await;
    let range_report = assert_nothing_lost(&c, "n1", "r", range_load).await;
    // Every writer was acknowledged after the split, on both halves.
    for (report, t, child) in [(&hash_report, &h, h_child), (&range_report, &r, r_child)] {
        let shards_after: BTreeSet<u32> = report
            .acked
            .iter()
            .filter(|(_, a)| a.tried > split_at)
            .map(|(k, _)| t.shard_of(&RowKey::Int(*k)))
            .collect();
        assert!(
            shards_after.contains(&0) && shards_after.contains(&child),
            "{}: writes acknowledged after the split reached only {shards_after:?}",
            t.spec.name
        );
        let slowest = report
            .acked
            .values()
            .filter(|a| a.tried >= split_at && a.tried < split_at + Duration::from_secs(2))
            .map(|a| a.at.duration_since(a.tried))
            .max();
        eprintln!(
            "{}: first write sent after the split and acknowledged, per shard: {:?}; slowest write sent in the 2 s after it: {slowest:?}",
            t.spec.name,
            first_ack_per_shard(t, report, split_at)
        );
    }
    for table in ["h", "r"] {
        c.wait_healthy("n1", table, HEAL_LIMIT).await.unwrap();
    }
    eprintln!(
        "every copy identical {:?} after the loads stopped",
        after.elapsed()
    );
    // The events name the splits.
    let (_, events) = client.events().await.unwrap();
    for name in ["h/0", "r/0"] {
        assert!(
            events
                .iter()
                .any(|e| e.subject == name && e.what.starts_with("split: ")),
            "no split event for {name}: {events:?}"
        );
    }
    client.close().await;
}

/// Rows written first; then scans of the whole table (strong, and from any
/// in-sync copy) run one after another while its shards split (twice) and
/// merge back (twice). Each scan returns every row once, in key order: a
/// scan planned before a split that reaches the parent after it is refused
/// as stale, one that reaches a shard merged away finds it gone, and either
/// is planned again.
#[tokio::test]
async fn a_scan_running_across_splits_and_merges_returns_every_row_once_in_order() {
    let mut c = Cluster::new();
    c.start_formed(&["n1", "n2", "n3"]).await;
    c.create_table(
        "n1",
        spec(
            "s",
            Sharding::Range {
                splits: vec![RowKey::Int(3_000)],
            },
            3,
        ),
    )
    .await;
    let client = c.client("n1").await.unwrap();
    let keys: Vec<i64> = (0..6_000).step_by(3).collect();
    for chunk in keys.chunks(100) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|k| format!(r#"{{"id":{k},"v":"row {k}"}}"#))
            .collect();
        for row in rows {
            client.put("s", &row).await.unwrap();
        }
    }
    let want: Vec<RowKey> = keys.iter().map(|k| RowKey::Int(*k)).collect();
    // Every copy has applied every write: a replica scan misses none for
    // lag (the commit point reaches backups with the next message).
    c.wait_healthy("n1", "s", HEAL_LIMIT).await.unwrap();
    let scanner = {
        let client = c.client("n2").await.unwrap();
        let want = want.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(14);
            let mut scans = 0;
            while Instant::now() < deadline {
                for mode in [ReadMode::Strong, ReadMode::Replica] {
                    let rows = client.scan("s", None, None, 10_000, mode).await;
                    let rows = match rows {
                        Ok(r) => r,
                        // Refused (a copy being built): not a wrong answer.
                        Err(e) => {
                            eprintln!("scan refused: {e}");
                            continue;
                        }
                    };
                    let got: Vec<RowKey> = rows.into_iter().map(|(k, _)| k).collect();
                    let missing: Vec<&RowKey> =
                        want.iter().filter(|k| !got.contains(k)).take(5).collect();
                    assert_eq!(
                        got.len(),
                        want.len(),
                        "scan {scans} ({mode:?}) returned {} rows, not {}; missing: {missing:?}",
                        got.len(),
                        want.len()
                    );
                    assert!(
                        got == want,
                        "scan {scans} ({mode:?}): rows out of order or wrong"
                    );
                    scans += 1;
                }
            }
            client.close().await;
            scans
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = split(&c, "n1", "s", 0, None).await; // at the median key
    tokio::time::sleep(Duration::from_millis(700)).await;
    let b = split(&c, "n3", "s", 1, Some(RowKey::Int(4_500))).await;
    let (_, t) = client.describe("s").await.unwrap();
    let layout = t
        .shards
        .iter()
        .map(|s| s.range.to_string())
        .collect::<Vec<_>>();
    tokio::time::sleep(Duration::from_millis(700)).await;
    merge(&c, "n2", "s", 1, b).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    merge(&c, "n1", "s", a, 0).await;
    let scans = scanner.await.unwrap();
    let (_, t) = client.describe("s").await.unwrap();
    eprintln!(
        "{scans} full scans, each of every row once in order, while s/0 split into s/{a} and s/1 into s/{b} ({layout:?}), then both merged back: {:?}",
        t.shards.iter().map(|s| s.range.to_string()).collect::<Vec<_>>()
    );
    assert!(scans >= 4, "only {scans} scans ran");
    assert_eq!(t.shards.len(), 2);
    c.wait_healthy("n1", "s", HEAL_LIMIT).await.unwrap();
    client.close().await;
}

/// A split, then at once kill -9 of the parent's primary, under a write
/// load. The split completes on the surviving copies (the new primary of
/// the parent logs the split marker in its epoch), the child gets a primary,
/// nothing acknowledged is lost, and once the node is back every copy of
/// every shard is identical.
#[tokio::test]
async fn kill_9_of_the_primary_in_the_middle_of_a_split_loses_nothing() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3", "n4"];
    c.start_formed(&ids).await;
    let t = c
        .create_table("n1", spec("k", Sharding::Hash { shards: 2 }, 3))
        .await;
    let victim = t.shards[0].replicas.primary.clone();
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
    let load = Load::start(
        others.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "k",
        4,
        1_000_000,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let child = split(&c, others[0], "k", 0, None).await;
    c.kill9(&victim);
    let killed = Instant::now();
    eprintln!("split k/0 into k/{child}, then killed its primary {victim}");
    // Both halves get a primary on a live node and take writes.
    let (t, took) = c
        .poll("both halves led by live nodes", HEAL_LIMIT, || async {
            let client = c.client(others[0]).await?;
            let (_, t) = client.describe("k").await.map_err(|e| e.to_string())?;
            let copies = client.copies("k", false).await.map_err(|e| e.to_string())?;
            client.close().await;
            let serving = |shard: u32| {
                let s = &t.shards[shard as usize];
                s.replicas.primary != victim
                    && copies.iter().any(|r| {
                        r.shard == shard
                            && r.node == s.replicas.primary
                            && r.status.as_ref().is_ok_and(|st| st.state == "serving")
                    })
            };
            Ok((serving(0) && serving(child)).then_some(t))
        })
        .await
        .unwrap();
    eprintln!(
        "k/0 led by {} and k/{child} by {} {took:?} after polling began ({:?} after the kill)",
        t.shards[0].replicas.primary,
        t.shards[child as usize].replicas.primary,
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.start(&victim, &others);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = assert_nothing_lost(&c, others[0], "k", load).await;
    let (_, t) = c
        .client(others[0])
        .await
        .unwrap()
        .describe("k")
        .await
        .unwrap();
    let after: BTreeSet<u32> = report
        .acked
        .iter()
        .filter(|(_, a)| a.tried > killed)
        .map(|(k, _)| t.shard_of(&RowKey::Int(*k)))
        .collect();
    assert!(
        after.contains(&0) && after.contains(&child),
        "writes acknowledged after the kill reached only {after:?}"
    );
    eprintln!(
        "first write sent after the kill and acknowledged, per shard: {:?}",
        first_ack_per_shard(&t, &report, killed)
    );
    c.wait_healthy(others[0], "k", HEAL_LIMIT).await.unwrap();
    if std::env::var_os("TSTORE_TEST_LOGS").is_some() {
        eprintln!("{}", c.logs());
    }
}

/// A merge under a write load, and kill -9 of the node leading both shards
/// as soon as they are sealed. The merge either completes or is given up
/// (never half done): the table ends as one shard with the merge in its
/// lineage, or as two with none under way; nothing acknowledged is lost,
/// every write fits one history per shard, and once the node is back
/// every copy is identical.
#[tokio::test]
async fn kill_9_of_the_primary_while_a_merge_is_sealed_loses_nothing() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed(&ids).await;
    let t = c
        .create_table("n1", spec("q", Sharding::Hash { shards: 1 }, 3))
        .await;
    let victim = t.shards[0].replicas.primary.clone();
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
    let load = Load::start(
        others.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "q",
        4,
        1_000_000,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let child = split(&c, others[0], "q", 0, None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let merging = {
        let client = c.client(others[1]).await.unwrap();
        tokio::spawn(async move {
            let r = client
                .merge_shards("q", 0, child, Duration::from_secs(60))
                .await;
            client.close().await;
            r
        })
    };
    // Killed as soon as the merge is seen sealed (or done, if it was
    // quicker than the look).
    let (when, _) = c
        .poll("the merge sealed", Duration::from_secs(30), || async {
            let client = c.client(others[0]).await?;
            let (_, t) = client.describe("q").await.map_err(|e| e.to_string())?;
            client.close().await;
            let state = match t.merge_under_way() {
                Some((_, _, true)) => Some("sealed"),
                None if t.shards.len() == 1 => Some("already done"),
                _ => None,
            };
            if state.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(state)
        })
        .await
        .unwrap();
    c.kill9(&victim);
    let killed = Instant::now();
    let outcome = merging.await.unwrap();
    eprintln!(
        "killed {victim} with the merge {when}; the merge: {}",
        match &outcome {
            Ok(v) => format!("done at map version {v}"),
            Err(e) => format!("not done: {e}"),
        }
    );
    // Led by live nodes, and taking writes again.
    let (t, _) = c
        .poll("every shard led by a live node", HEAL_LIMIT, || async {
            let client = c.client(others[0]).await?;
            let (_, t) = client.describe("q").await.map_err(|e| e.to_string())?;
            let copies = client.copies("q", false).await.map_err(|e| e.to_string())?;
            client.close().await;
            let serving = t.merge_under_way().is_none()
                && t.shards.iter().all(|s| {
                    s.replicas.primary != victim
                        && copies.iter().any(|r| {
                            r.shard == s.index
                                && r.node == s.replicas.primary
                                && r.status.as_ref().is_ok_and(|st| st.state == "serving")
                        })
                });
            Ok(serving.then_some(t))
        })
        .await
        .unwrap();
    eprintln!(
        "{} shard(s) led by live nodes {:?} after the kill",
        t.shards.len(),
        killed.elapsed()
    );
    match t.shards.len() {
        1 => assert_eq!(t.shards[0].merged.as_ref().map(|m| m.absorbed), Some(child)),
        2 => assert!(outcome.is_err(), "two shards, yet the merge said done"),
        n => panic!("{n} shards"),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.start(&victim, &others);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = assert_nothing_lost(&c, others[0], "q", load).await;
    assert!(
        report.acked.values().any(|a| a.tried > killed),
        "no write acknowledged after the kill"
    );
    c.wait_healthy(others[0], "q", HEAL_LIMIT).await.unwrap();
}

/// Automatic splits by size: nodes told to split a shard over 64 KiB, and
/// to look every 300 ms. A one-shard table written past that splits by
/// itself, more than once (each event gives its reason), while a writer's
/// every acknowledged write survives; a table whose automatic splits were
/// turned off keeps its one shard however big it grows.
#[tokio::test]
async fn a_table_growing_past_the_split_size_splits_by_itself() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed_with(
        &ids,
        &[
            "--split-size-bytes",
            "65536",
            "--min-split-bytes",
            "16384",
            "--split-load-ops",
            "0",
            "--elastic-check-ms",
            "300",
        ],
    )
    .await;
    c.create_table("n1", spec("grow", Sharding::Hash { shards: 1 }, 3))
        .await;
    c.create_table("n1", spec("fixed", Sharding::Hash { shards: 1 }, 3))
        .await;
    let client = c.client("n1").await.unwrap();
    client.set_auto_split("fixed", false).await.unwrap();
    let started = Instant::now();
    let load = Load::start(
        ids.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "grow",
        2,
        1_000_000,
    );
    // ~230 bytes a row: 1,500 rows are ~340 KiB, past four split sizes,
    // in both tables (keys apart from the writers').
    let pad = "x".repeat(200);
    for k in 10_000_000..10_001_500 {
        for table in ["grow", "fixed"] {
            client
                .put(table, &format!(r#"{{"id":{k},"pad":"{pad}"}}"#))
                .await
                .unwrap();
        }
    }
    let (shards, _) = c
        .poll("grow split into 4 shards or more", HEAL_LIMIT, || async {
            let client = c.client("n1").await?;
            let (_, t) = client.describe("grow").await.map_err(|e| e.to_string())?;
            client.close().await;
            Ok((t.shards.len() >= 4).then_some(t.shards.len()))
        })
        .await
        .unwrap();
    eprintln!(
        "grow: {shards} shards {:?} after the writers started",
        started.elapsed()
    );
    let report = assert_nothing_lost(&c, "n1", "grow", load).await;
    assert!(report.acked.len() > 100);
    let (_, events) = client.events().await.unwrap();
    let splits: Vec<_> = events
        .iter()
        .filter(|e| e.subject.starts_with("grow/") && e.what.starts_with("split: "))
        .collect();
    assert!(splits.len() >= 3, "{events:?}");
    for e in &splits {
        assert!(
            e.why.starts_with("split: ") && e.why.contains(" > 64 KiB"),
            "the event gives the size that made the split: {e:?}"
        );
    }
    eprintln!(
        "first automatic split: {} ({})",
        splits[0].what, splits[0].why
    );
    let (_, fixed) = client.describe("fixed").await.unwrap();
    assert_eq!(fixed.shards.len(), 1, "automatic splits of `fixed` are off");
    c.wait_healthy("n1", "grow", HEAL_LIMIT).await.unwrap();
    client.close().await;
}

/// Automatic splits by load: nodes told to split a shard serving more than
/// 100 requests per second for 2 s. A one-shard table under a steady write
/// load splits by itself, the event saying why, and nothing acknowledged
/// is lost.
#[tokio::test]
async fn a_shard_busy_for_long_enough_splits_by_itself() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed_with(
        &ids,
        &[
            "--split-size-bytes",
            "0",
            "--split-load-ops",
            "100",
            "--split-load-secs",
            "2",
            "--min-split-bytes",
            "1",
            "--elastic-check-ms",
            "500",
        ],
    )
    .await;
    c.create_table("n1", spec("busy", Sharding::Hash { shards: 1 }, 3))
        .await;
    let load = Load::start(
        ids.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "busy",
        4,
        1_000_000,
    );
    let (events, took) = c
        .poll("busy split by load", HEAL_LIMIT, || async {
            let client = c.client("n1").await?;
            let (_, events) = client.events().await.map_err(|e| e.to_string())?;
            client.close().await;
            let split: Vec<_> = events
                .into_iter()
                .filter(|e| e.subject.starts_with("busy/") && e.what.starts_with("split: "))
                .collect();
            Ok((!split.is_empty()).then_some(split))
        })
        .await
        .unwrap();
    eprintln!(
        "busy split {took:?} after the load started: {} ({})",
        events[0].what, events[0].why
    );
    assert!(
        events[0].why.contains(" ops/s > 100 ops/s for "),
        "the event gives the load that made the split: {:?}",
        events[0]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_nothing_lost(&c, "n1", "busy", load).await;
    c.wait_healthy("n1", "busy", HEAL_LIMIT).await.unwrap();
}

/// Merges `table/a` and `table/b` through `via` (waiting for it to be
/// done), retrying while it is refused (a copy being moved, a merge given
/// up); returns how long the last attempt took.
async fn merge(c: &Cluster, via: &str, table: &str, a: u32, b: u32) -> Duration {
    let (took, _) = c
        .poll(
            &format!("merge {table}/{a} and {table}/{b}"),
            Duration::from_secs(120),
            || async move {
                let client = c.client(via).await?;
                let began = Instant::now();
                let r = client
                    .merge_shards(table, a, b, Duration::from_secs(60))
                    .await;
                client.close().await;
                match r {
                    Ok(_) => Ok(Some(began.elapsed())),
                    Err(e) => {
                        eprintln!("merge {table}/{a} and {table}/{b}: {e}; retrying");
                        Ok(None)
                    }
                }
            },
        )
        .await
        .unwrap();
    took
}

/// Four nodes, two copies per shard, four writers on a one-shard hash
/// table. The shard splits, the rebalancer moves the halves apart, and then
/// an operator merges them back while the writers run: the merge moves the
/// newer half's copies next to the other's, seals both, and hands its keys
/// over. Afterwards: every acknowledged write is there once, with its
/// acknowledged row, in one history per shard; every copy holds the same
/// rows; the table is one shard over every key again; and writes were
/// acknowledged after the merge.
#[tokio::test]
async fn a_split_shard_merges_back_under_a_write_load_losing_and_repeating_nothing() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3", "n4"];
    c.start_formed(&ids).await;
    c.create_table("n1", spec("m", Sharding::Hash { shards: 1 }, 2))
        .await;
    let load = Load::start(
        ids.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "m",
        4,
        1_000_000,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let child = split(&c, "n2", "m", 0, None).await;
    c.poll("the halves apart", HEAL_LIMIT, || async {
        let client = c.client("n1").await?;
        let (_, t) = client.describe("m").await.map_err(|e| e.to_string())?;
        client.close().await;
        let apart = holders(&t, 0) != holders(&t, child)
            && t.shards.iter().all(|s| s.replicas.learners.is_empty());
        Ok(apart.then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let merge_at = Instant::now();
    let took = merge(&c, "n3", "m", child, 0).await;
    eprintln!("merged m/{child} into m/0 in {took:?}");
    let client = c.client("n1").await.unwrap();
    let (_, t) = client.describe("m").await.unwrap();
    assert_eq!(t.shards.len(), 1);
    assert_eq!(t.shards[0].range, KeyRange::HashSlot { slot: 0, of: 1 });
    let merged = t.shards[0].merged.clone().expect("lineage kept");
    assert_eq!(merged.absorbed, child);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let report = assert_nothing_lost(&c, "n1", "m", load).await;
    let after: Vec<_> = report
        .acked
        .values()
        .filter(|a| a.tried > merge_at + took)
        .collect();
    assert!(!after.is_empty(), "no write acknowledged after the merge");
    // The longest a write sent during the merge waited for its answer.
    let slowest = report
        .acked
        .values()
        .filter(|a| a.tried >= merge_at && a.tried < merge_at + took)
        .map(|a| a.at.duration_since(a.tried))
        .max();
    eprintln!(
        "{} writes acknowledged, {} after the merge; slowest write sent during it: {slowest:?}",
        report.acked.len(),
        after.len()
    );
    c.wait_healthy("n1", "m", HEAL_LIMIT).await.unwrap();
    let (_, events) = client.events().await.unwrap();
    for what in ["merge begun", "merge sealed", "merge: took in"] {
        assert!(
            events.iter().any(|e| e.what.starts_with(what)),
            "no {what:?} event: {events:?}"
        );
    }
    client.close().await;
}

/// Nodes told to merge shards cold and small for 2 s. A range table of two
/// shards gets rows in both, which are then deleted: the emptied
/// neighbours merge by themselves (the event saying why), and the merged
/// shard serves every key, old rows and new. A table like it whose
/// automatic merges are off keeps its two shards.
#[tokio::test]
async fn two_emptied_neighbours_merge_by_themselves() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed_with(
        &ids,
        &[
            "--split-size-bytes",
            "1048576",
            "--split-load-ops",
            "1000",
            "--merge-after-secs",
            "2",
            "--elastic-check-ms",
            "300",
        ],
    )
    .await;
    c.create_table(
        "n1",
        spec(
            "e",
            Sharding::Range {
                splits: vec![RowKey::Int(1_000)],
            },
            3,
        ),
    )
    .await;
    c.create_table(
        "n1",
        spec(
            "apart",
            Sharding::Range {
                splits: vec![RowKey::Int(1_000)],
            },
            3,
        ),
    )
    .await;
    let client = c.client("n1").await.unwrap();
    client.set_auto_merge("apart", false).await.unwrap();
    // Kept: a row that must survive the merge, and one deleted below.
    for k in (0..2_000).step_by(20) {
        client
            .put("e", &format!(r#"{{"id":{k},"v":"row {k}"}}"#))
            .await
            .unwrap();
    }
    for k in (0..2_000).step_by(20).filter(|k| *k != 1_500) {
        client.delete("e", RowKey::Int(k), None).await.unwrap();
    }
    let began = Instant::now();
    let (t, _) = c
        .poll("the two shards merged", HEAL_LIMIT, || async {
            let client = c.client("n1").await?;
            let (_, t) = client.describe("e").await.map_err(|e| e.to_string())?;
            client.close().await;
            Ok((t.shards.len() == 1).then_some(t))
        })
        .await
        .unwrap();
    eprintln!(
        "merged by itself {:?} after the rows were deleted",
        began.elapsed()
    );
    assert_eq!(
        t.shards[0].range,
        KeyRange::Range {
            start: None,
            end: None
        }
    );
    let (_, apart) = client.describe("apart").await.unwrap();
    assert_eq!(apart.shards.len(), 2, "automatic merges of `apart` are off");
    let (_, events) = client.events().await.unwrap();
    let begun = events
        .iter()
        .find(|e| e.subject == "e/1" && e.what.starts_with("merge begun"))
        .unwrap_or_else(|| panic!("no merge event: {events:?}"));
    assert!(
        begun.why.starts_with("merge: ") && begun.why.contains("cold for 2 s"),
        "the event says why: {begun:?}"
    );
    let row = client
        .get("e", RowKey::Int(1_500), ReadMode::Strong)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()))
        .expect("the kept row survived the merge");
    assert!(format!("{row:?}").contains("row 1500"), "{row:?}");
    for k in [5, 1_005] {
        let v = client
            .put("e", &format!(r#"{{"id":{k},"v":"after"}}"#))
            .await
            .unwrap();
        // Versions go on above both shards' logs.
        assert!(
            v > row.version,
            "version {v} after the merge, {} before",
            row.version
        );
        let got = client
            .get("e", RowKey::Int(k), ReadMode::Strong)
            .await
            .unwrap();
        assert!(got.is_some());
    }
    c.wait_healthy("n1", "e", HEAL_LIMIT).await.unwrap();
    client.close().await;
}
