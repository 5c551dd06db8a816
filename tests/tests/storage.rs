//! The storage lifecycle with real processes: a node killed with kill -9
//! and started again with its data dir rejoins its shards from its own rows
//! and the primaries' retained logs (no snapshot) when it was away for less
//! than the retention window, and from snapshots when it was away longer;
//! with `rereplicate_after_secs`, a node back within the wait gets its own
//! copies back and nothing is copied to another node, and past the wait its
//! shards are copied elsewhere. Replication logs stay within their bounds
//! under a long write load. A node whose store fills up fails over and
//! comes back once given space. Every acknowledged write is checked
//! afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use tstore_client::admin::AdminClient;
use tstore_client::cluster_map::RowKey;
use tstore_client::data::ReadMode;
use tstore_client::wire::RecoveryStats;
use tstore_tests::checks::assert_nothing_lost;
use tstore_tests::load::{scan_all, Load};
use tstore_tests::{hash_table, Cluster};

const HEAL_LIMIT: Duration = Duration::from_secs(60);

/// How node `id` rebuilt its copies, and served others, since it started.
async fn recovery(c: &Cluster, id: &str) -> RecoveryStats {
    let client = c.client(id).await.unwrap();
    let stats = client.node_stats().await.unwrap();
    client.close().await;
    stats.recovery
}

/// A node of `ids` that does not lead the control plane.
async fn not_the_leader(c: &Cluster, ids: &[&str]) -> String {
    let leader = c.leader(ids[0]).await;
    ids.iter().find(|n| **n != leader).unwrap().to_string()
}

/// Which nodes hold a copy of each shard of `table`.
async fn holders(client: &AdminClient, table: &str) -> BTreeMap<u32, Vec<String>> {
    let (_, t) = client.describe(table).await.unwrap();
    t.shards
        .iter()
        .map(|s| {
            let mut h: Vec<String> = s.replicas.holders().cloned().collect();
            h.sort();
            (s.index, h)
        })
        .collect()
}

/// Waits until every shard of `table` has `replicas` members and no
/// learner; returns who holds what then.
async fn wait_full(
    c: &Cluster,
    via: &str,
    table: &str,
    replicas: usize,
) -> BTreeMap<u32, Vec<String>> {
    c.poll(&format!("{table} fully replicated"), HEAL_LIMIT, || async {
        let client = c.client(via).await?;
        let (_, t) = client.describe(table).await.map_err(|e| e.to_string())?;
        let full = t
            .shards
            .iter()
            .all(|s| s.replicas.members().count() == replicas && s.replicas.learners.is_empty());
        let h = holders(&client, table).await;
        client.close().await;
        Ok(full.then_some(h))
    })
    .await
    .unwrap()
    .0
}

/// Kill -9 a node under a write load and restart it a second after it was
/// dropped: each of its copies rejoins from its own rows, catching up from
/// the primaries' logs; no snapshot is sent, the copies end identical, and
/// no acknowledged write is lost.
#[tokio::test]
async fn a_node_back_within_the_retention_window_catches_up_from_the_log() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed(&ids).await;
    c.create_table("n1", hash_table("r", 4)).await;
    let victim = not_the_leader(&c, &ids).await;
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
    let load = c.load(&others, "r", 4, 1_000_000);
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kill9(&victim);
    c.wait_without(others[0], "r", &victim, Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.start(&victim, &others);
    wait_full(&c, others[0], "r", 3).await;
    let report = assert_nothing_lost(&c, others[0], "r", load).await;
    assert!(report.acked.len() > 100, "{} writes", report.acked.len());
    c.wait_healthy(others[0], "r", HEAL_LIMIT).await.unwrap();
    let back = recovery(&c, &victim).await;
    assert_eq!(back.snapshots_installed, 0, "{victim}: {back:?}");
    assert_eq!(back.rejoined_from_own_data, 4, "{victim}: {back:?}");
    let mut sent = 0;
    for o in &others {
        let r = recovery(&c, o).await;
        assert_eq!(r.snapshots_served, 0, "{o}: {r:?}");
        sent += r.log_entries_sent;
    }
    assert!(sent > 0, "no log entry was sent to {victim}");
    let client = c.client(others[0]).await.unwrap();
    let (_, events) = client.events().await.unwrap();
    let returns = events
        .iter()
        .filter(|e| e.what == format!("added learner {victim} (its copy is back)"))
        .count();
    assert_eq!(returns, 4, "{events:#?}");
    client.close().await;
    eprintln!("{victim} rejoined 4 shards from its own rows; {sent} log entries sent to it");
}

/// The same, with small logs and more writes while the node is away than
/// the primaries keep: each copy is rebuilt from a snapshot, and still no
/// acknowledged write is lost.
#[tokio::test]
async fn a_node_back_past_the_retention_window_is_rebuilt_from_snapshots() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed_with(&ids, &["--log-retain-entries", "50"])
        .await;
    c.create_table("n1", hash_table("r", 4)).await;
    let victim = not_the_leader(&c, &ids).await;
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
    let addrs: Vec<_> = others.iter().map(|n| c.addr(n)).collect();
    let certs = c.certs().path().to_path_buf();
    let load = Load::start(addrs.clone(), certs.clone(), "r", 2, 1_000_000);
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kill9(&victim);
    c.wait_without(others[0], "r", &victim, Duration::from_secs(20))
        .await
        .unwrap();
    // 3,200 more writes, about 800 a shard: past 50 kept plus a batch of
    // 256 deleted at once.
    let burst = Load::start_writers(addrs, certs, "r", 10..18, 400)
        .run_to_end()
        .await;
    assert!(
        burst.acked.len() >= 3_000,
        "{} of the burst acknowledged",
        burst.acked.len()
    );
    c.start_with(&victim, &others, &["--log-retain-entries", "50"]);
    wait_full(&c, others[0], "r", 3).await;
    assert_nothing_lost(&c, others[0], "r", load).await;
    tstore_tests::checks::assert_acked_kept(&c, others[0], "r", &burst.acked).await;
    c.wait_healthy(others[0], "r", HEAL_LIMIT).await.unwrap();
    let back = recovery(&c, &victim).await;
    assert_eq!(back.snapshots_installed, 4, "{victim}: {back:?}");
    eprintln!("{victim} rebuilt from snapshots: {back:?}");
}

/// With `rereplicate_after_secs`, a fourth node present and a node killed
/// and restarted within the wait: its copies come back to it and nothing is
/// copied to the fourth node. Killed again and left down past the wait: its
/// shards are copied to the other nodes.
#[tokio::test]
async fn a_node_back_within_the_rereplication_wait_gets_its_own_copies_back() {
    const WAIT: &str = "8";
    let flags = ["--rereplicate-after-secs", WAIT];
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3", "n4"];
    c.start_formed_with(&ids, &flags).await;
    c.create_table("n1", hash_table("w", 4)).await;
    let client = c.client("n1").await.unwrap();
    let before = holders(&client, "w").await;
    client.close().await;
    let leader = c.leader("n1").await;
    // A node other than the leader that holds copies (with 4 nodes and 12
    // copies, all do).
    let victim = ids
        .iter()
        .copied()
        .find(|n| *n != leader && before.values().any(|h| h.iter().any(|x| x == n)))
        .unwrap()
        .to_owned();
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
    let load = c.load(&others, "w", 4, 1_000_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill9(&victim);
    c.wait_without(others[0], "w", &victim, Duration::from_secs(20))
        .await
        .unwrap();
    c.start_with(&victim, &others, &flags);
    let after = wait_full(&c, others[0], "w", 3).await;
    assert_eq!(
        after, before,
        "{victim}'s copies did not come back to it alone"
    );
    let back = recovery(&c, &victim).await;
    assert_eq!(back.snapshots_installed, 0, "{victim}: {back:?}");
    for o in &others {
        let r = recovery(&c, o).await;
        assert_eq!(r.snapshots_installed, 0, "{o} was copied to: {r:?}");
    }

    // Down for good: past the wait, its shards are copied elsewhere.
    c.kill9(&victim);
    c.wait_without(others[0], "w", &victim, Duration::from_secs(20))
        .await
        .unwrap();
    let healed = wait_full(&c, others[0], "w", 3).await;
    for (shard, h) in &healed {
        assert!(!h.contains(&victim), "w/{shard}: {h:?}");
    }
    let client = c.client(others[0]).await.unwrap();
    let (_, events) = client.events().await.unwrap();
    client.close().await;
    let given_up = format!("{victim} did not come back within {WAIT} s");
    let copied = events
        .iter()
        .filter(|e| e.what.starts_with("added learner") && e.why.contains(&given_up))
        .count();
    let lost = before.values().filter(|h| h.contains(&victim)).count();
    assert_eq!(copied, lost, "{events:#?}");
    assert_nothing_lost(&c, others[0], "w", load).await;
    c.wait_healthy(others[0], "w", HEAL_LIMIT).await.unwrap();
}

/// A soak, CI-sized: writes until every copy has logged several times its
/// bound (at most 120 s) with logs that keep 300 entries below what every
/// copy has: every copy's log stays within that (plus one deletion batch
/// and the entries in flight) while the shards take many times more
/// writes, and no copy ever needs a snapshot. The length is counted in
/// writes, not seconds: a loaded machine writes slower, and runs longer.
#[tokio::test]
async fn replication_logs_stay_within_their_retention_under_a_long_write_load() {
    const RETAIN: u64 = 300;
    // Retained entries + one deletion batch + what may be in flight above
    // the point every copy has (the replication window, twice).
    const BOUND: u64 = RETAIN + 256 + 2 * 1024;
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed_with(&ids, &["--log-retain-entries", "300"])
        .await;
    c.create_table("n1", hash_table("soak", 2)).await;
    let load = c.load(&ids, "soak", 8, 1_000_000);
    let client = c.client("n1").await.unwrap();
    let mut most = 0;
    let mut least = 0;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut logged = Vec::new();
        for r in client.copies("soak", false).await.unwrap() {
            let Ok(st) = &r.status else { continue };
            assert!(
                st.log_entries <= BOUND,
                "soak/{} on {}: {} log entries (from {}), bound {BOUND}",
                r.shard,
                r.node,
                st.log_entries,
                st.log_start
            );
            most = most.max(st.log_entries);
            logged.push(st.logged);
        }
        least = logged.iter().min().copied().unwrap_or(0);
        if logged.len() == 6 && least > 2 * BOUND {
            break;
        }
    }
    let report = assert_nothing_lost(&c, "n1", "soak", load).await;
    c.wait_healthy("n1", "soak", HEAL_LIMIT).await.unwrap();
    client.close().await;
    assert!(
        least > 2 * BOUND,
        "too few writes per shard ({least}) in 120 s to show the bound"
    );
    for id in ids {
        let r = recovery(&c, id).await;
        assert_eq!(r.snapshots_installed, 0, "{id}: {r:?}");
    }
    eprintln!(
        "{} writes; at most {most} log entries per copy (bound {BOUND}) over {least}+ entries per shard",
        report.acked.len()
    );
}

/// One node's shard store fills up (a 2 MiB LMDB map) under a write load:
/// it says why (node-stats, members), the coordinator drops its copies like
/// a dead node's within a failover's time, the other two keep the table
/// writable and readable (reads through the full node too); once space is
/// given (restarted with a larger map) its copies return, and no
/// acknowledged write is lost.
#[tokio::test]
async fn a_node_whose_disk_fills_fails_over_and_comes_back_when_space_is_freed() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    let full = "n3";
    c.start_formed_by(&ids, |id| {
        if id == full {
            vec!["--lmdb-map-size", "2097152"]
        } else {
            vec![]
        }
    })
    .await;
    c.create_table("n1", hash_table("full", 4)).await;
    let others = ["n1", "n2"];
    let addrs: Vec<_> = others.iter().map(|n| c.addr(n)).collect();
    let certs = c.certs().path().to_path_buf();
    let load = Load::start(addrs.clone(), certs.clone(), "full", 4, 1_000_000);
    // The full node says so, clearly.
    let (why, took) = c
        .poll(
            &format!("{full}'s store full"),
            Duration::from_secs(90),
            || async {
                let client = c.client(full).await?;
                let stats = client.node_stats().await.map_err(|e| e.to_string());
                client.close().await;
                Ok(stats?.storage_error)
            },
        )
        .await
        .unwrap();
    assert!(
        why.contains("the shard store is full: its LMDB map of 2097152 bytes is used up"),
        "{why}"
    );
    eprintln!("{full} full after {took:?}: {why}");
    let client = c.client("n1").await.unwrap();
    let shown = c
        .poll(
            "the failure in members",
            Duration::from_secs(10),
            || async {
                let (_, members) = client.members().await.map_err(|e| e.to_string())?;
                Ok(members
                    .into_iter()
                    .find(|m| m.node_id == full)
                    .and_then(|m| m.storage_error))
            },
        )
        .await
        .unwrap()
        .0;
    assert_eq!(shown, why);
    // Its copies leave every configuration, like a dead node's.
    let dropped = c
        .wait_without("n1", "full", full, Duration::from_secs(20))
        .await
        .unwrap();
    eprintln!("{full}'s copies dropped {dropped:?} after the failure was seen");
    // The table takes writes on the other two...
    let after = Load::start_writers(addrs, certs, "full", 10..12, 200)
        .run_to_end()
        .await;
    assert_eq!(
        after.acked.len(),
        400,
        "writes after the drop: {:?}",
        after.errors
    );
    // ...and serves reads, through the full node as well.
    let via_full = c.client(full).await.unwrap();
    let read = scan_all(&via_full, "full", ReadMode::Strong, HEAL_LIMIT)
        .await
        .unwrap();
    via_full.close().await;
    for (k, a) in &after.acked {
        let got = read.iter().find(|(key, _)| *key == RowKey::Int(*k));
        assert_eq!(
            got.map(|(_, r)| &r.json),
            Some(&a.row),
            "key {k} read through {full}"
        );
    }
    // Space is given: restarted with a larger map, its copies come back.
    c.signal(full, Signal::SIGTERM);
    c.wait_exit(full, Duration::from_secs(20)).unwrap();
    c.start_with(full, &others, &["--lmdb-map-size", "1073741824"]);
    let back = wait_full(&c, "n1", "full", 3).await;
    assert!(
        back.values().all(|h| h.iter().any(|n| n == full)),
        "{back:?}"
    );
    let report = assert_nothing_lost(&c, "n1", "full", load).await;
    tstore_tests::checks::assert_acked_kept(&c, "n1", "full", &after.acked).await;
    c.wait_healthy("n1", "full", HEAL_LIMIT).await.unwrap();
    client.close().await;
    let r = recovery(&c, full).await;
    eprintln!(
        "{full} back in every shard; {} writes acknowledged; its recovery: {r:?}",
        report.acked.len()
    );
}
