//! Failover and self-healing with real processes, caused for real: kill -9
//! of a primary and of a backup under a write load, a primary paused with
//! SIGSTOP past its lease, a rolling restart, and a drain. After each, every
//! acknowledged write must be there with its acknowledged content, and every
//! shard back at its replication factor with identical copies.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tstore_node::cluster_map::{NodeState, Sharding, SplitKey, TableSpec};
use tstore_node::data::ReadMode;
use tstore_tests::load::{first_ack_per_shard, lost_writes, Load};
use tstore_tests::Cluster;

const HEAL_LIMIT: Duration = Duration::from_secs(60);

fn spec(name: &str, shards: u32) -> TableSpec {
    TableSpec {
        name: name.into(),
        key: "id".into(),
        sharding: Sharding::Hash { shards },
        replicas: 3,
    }
}

async fn assert_nothing_lost(c: &Cluster, via: &str, table: &str, load: Load) -> usize {
    let report = load.finish().await;
    let client = c.client(via).await.unwrap();
    let lost = lost_writes(&client, table, &report.acked).await.unwrap();
    client.close().await;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost or changed: {:?}\n{}",
        lost.len(),
        report.acked.len(),
        &lost[..lost.len().min(10)],
        c.logs()
    );
    eprintln!(
        "{} writes acknowledged, {} unknown, {} failed attempts; none lost",
        report.acked.len(),
        report.unknown.len(),
        report.errors.len()
    );
    report.acked.len()
}

/// Kill -9 the primary of a busy shard mid-load, twice (a second round after
/// the first victim came back): no acknowledged write is lost, writes to the
/// victim's shards resume, and every shard is re-replicated onto the
/// survivors with identical copies.
#[tokio::test]
async fn no_acknowledged_write_is_lost_when_a_primary_is_killed() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3", "n4"];
    c.start_formed(&ids).await;
    c.create_table("n1", spec("seq", 8)).await;
    for round in 0..2 {
        let (_, t) = c.client("n1").await.unwrap().describe("seq").await.unwrap();
        // A primary that is not the Raft leader's node in round 0, any in round 1.
        let leader = c.status("n1").await.unwrap().leader.unwrap();
        let victim = t
            .shards
            .iter()
            .map(|s| s.replicas.primary.clone())
            .find(|p| round == 1 || *p != leader)
            .unwrap();
        let led: Vec<u32> = t
            .shards
            .iter()
            .filter(|s| s.replicas.primary == victim)
            .map(|s| s.index)
            .collect();
        let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
        let load = Load::start(
            others.iter().map(|n| c.addr(n)).collect(),
            c.certs().path().to_path_buf(),
            "seq",
            6,
            400,
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed = Instant::now();
        c.kill9(&victim);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let via = others[0];
        let acked = assert_nothing_lost(&c, via, "seq", load).await;
        assert!(acked > 100, "the load barely ran: {acked} writes");
        // Re-replication onto the survivors, identical copies.
        c.wait_healthy(via, "seq", HEAL_LIMIT).await.unwrap();
        let (_, healed) = c.client(via).await.unwrap().describe("seq").await.unwrap();
        for s in &healed.shards {
            assert!(!s.replicas.holders().any(|h| *h == victim));
        }
        eprintln!(
            "round {round}: killed {victim} (primary of {led:?}); fully replicated and identical {:?} after the kill",
            killed.elapsed()
        );
        // The victim comes back (same data dir, new generation): its stale
        // copies are not in any configuration; it holds nothing until the
        // coordinator gives it new copies.
        c.start(&victim, &others);
        c.poll("the victim live again", Duration::from_secs(30), || async {
            let m = c.members(via).await?;
            Ok(
                (tstore_tests::status_of(&m, &victim) == Some(tstore_membership::NodeStatus::Live))
                    .then_some(()),
            )
        })
        .await
        .unwrap();
    }
}

/// Writes to the shards of a killed primary resume, with the time it took
/// printed (the benchmark script measures it properly).
#[tokio::test]
async fn writes_resume_after_a_primary_is_killed() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed(&ids).await;
    let t = c.create_table("n1", spec("r", 4)).await;
    let leader = c.status("n1").await.unwrap().leader.unwrap();
    let victim_shard = t
        .shards
        .iter()
        .find(|s| s.replicas.primary != leader)
        .unwrap();
    let victim = victim_shard.replicas.primary.clone();
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
    let load = Load::start(
        others.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "r",
        4,
        300,
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed = Instant::now();
    c.kill9(&victim);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = load.finish().await;
    let firsts = first_ack_per_shard(&t, &report, killed);
    let resumed = firsts
        .get(&victim_shard.index)
        .copied()
        .unwrap_or_else(|| panic!("no write to {victim}'s shard after the kill\n{}", c.logs()));
    eprintln!(
        "writes to r/{} resumed {resumed:?} after kill -9 of its primary",
        victim_shard.index
    );
    let client = c.client(others[0]).await.unwrap();
    let lost = lost_writes(&client, "r", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "lost: {lost:?}");
    // The new primary is one of the old backups, in a newer epoch.
    let (_, after) = client.describe("r").await.unwrap();
    let s = &after.shards[victim_shard.index as usize];
    assert!(victim_shard.replicas.backups.contains(&s.replicas.primary));
    assert!(s.replicas.epoch > victim_shard.replicas.epoch);
    let events = client.events().await.unwrap().1;
    assert!(
        events
            .iter()
            .any(|e| e.why == format!("primary {victim} is down")),
        "{events:?}"
    );
    client.close().await;
}

/// A backup killed with kill -9 under load: writes continue once it is
/// dropped; restarted, it gets its copies back and serves identical data.
#[tokio::test]
async fn a_killed_backup_is_dropped_then_rebuilt_when_it_returns() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed(&ids).await;
    c.create_table("n1", spec("b", 4)).await;
    let leader = c.status("n1").await.unwrap().leader.unwrap();
    let victim = ids
        .iter()
        .copied()
        .find(|n| *n != leader)
        .unwrap()
        .to_owned();
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
    let load = Load::start(
        others.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "b",
        4,
        2000,
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kill9(&victim);
    // Writes keep being acknowledged with the victim gone.
    let client = c.client(others[0]).await.unwrap();
    let (_, t) = client.describe("b").await.unwrap();
    c.poll(
        "every shard without the dead node",
        Duration::from_secs(20),
        || async {
            let (_, t) = client.describe("b").await.map_err(|e| e.to_string())?;
            Ok((!t
                .shards
                .iter()
                .any(|s| s.replicas.holders().any(|h| *h == victim)))
            .then_some(()))
        },
    )
    .await
    .unwrap();
    let dropped = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.start(&victim, &others);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report_acked = assert_nothing_lost(&c, others[0], "b", load).await;
    assert!(report_acked > 50);
    let (healed, took) = c.wait_healthy(others[0], "b", HEAL_LIMIT).await.unwrap();
    // It holds copies again (3 nodes, RF 3: every shard is on every node).
    for s in &healed.shards {
        assert!(s.replicas.holders().any(|h| *h == victim), "{s:?}");
    }
    eprintln!("backup {victim} rebuilt; healthy {took:?} after the check began");
    // And it serves the same rows as the primary, read from its own copy.
    let on_victim = c.client(&victim).await.unwrap();
    let mine = on_victim
        .scan("b", None, None, 10_000, ReadMode::Replica)
        .await
        .unwrap();
    let primary = client
        .scan("b", None, None, 10_000, ReadMode::Strong)
        .await
        .unwrap();
    assert_eq!(mine.len(), primary.len());
    let _ = (t, dropped);
    on_victim.close().await;
    client.close().await;
}

/// A primary paused with SIGSTOP past its lease: the majority promotes a
/// backup; when the old primary resumes it accepts no write, and no write it
/// acknowledged is missing.
#[tokio::test]
async fn a_paused_primary_is_replaced_and_refuses_writes_when_it_resumes() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed(&ids).await;
    let t = c.create_table("n1", spec("p", 2)).await;
    let leader = c.status("n1").await.unwrap().leader.unwrap();
    let s0 = t
        .shards
        .iter()
        .find(|s| s.replicas.primary != leader)
        .unwrap()
        .clone();
    let old = s0.replicas.primary.clone();
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != old).collect();
    // Keys of the paused primary's shard.
    let keys: Vec<i64> = (10_000_000..)
        .filter(|k| t.shard_of(&SplitKey::Int(*k)) == s0.index)
        .take(40)
        .collect();
    c.signal(&old, Signal::SIGSTOP);
    let client = c.client(others[0]).await.unwrap();
    c.poll(
        "a new primary for the paused one's shard",
        Duration::from_secs(20),
        || async {
            let (_, t) = client.describe("p").await.map_err(|e| e.to_string())?;
            let r = &t.shards[s0.index as usize].replicas;
            Ok((r.primary != old).then_some(()))
        },
    )
    .await
    .unwrap();
    // The old primary resumes and is sent writes directly, at once.
    c.signal(&old, Signal::SIGCONT);
    let direct = c.client(&old).await.unwrap();
    let mut acked = std::collections::BTreeMap::new();
    for k in &keys {
        let row = serde_json::json!({ "id": k, "via": old }).to_string();
        if direct.put("p", &row).await.is_ok() {
            acked.insert(*k, (row, Instant::now()));
        }
    }
    direct.close().await;
    // Whatever the old node acknowledged was routed to the new primary (its
    // map caught up) and is there; nothing it took alone survives.
    let lost = lost_writes(&client, "p", &acked).await.unwrap();
    assert!(
        lost.is_empty(),
        "acknowledged by the old primary but not kept: {lost:?}"
    );
    let copies = client.copies("p", false).await.unwrap();
    let old_copy = copies.iter().find(|r| r.shard == s0.index && r.node == old);
    assert!(
        old_copy.is_none_or(|r| r.status.as_ref().map_or(true, |s| s.role != "primary")),
        "the old node still calls itself primary: {old_copy:?}"
    );
    eprintln!(
        "{} of {} writes through the resumed node acknowledged, all kept",
        acked.len(),
        keys.len()
    );
    c.wait_healthy(others[0], "p", HEAL_LIMIT).await.unwrap();
    client.close().await;
}

/// Every node restarted in turn (SIGTERM, start again, wait for full health)
/// under a write load: no acknowledged write lost.
#[tokio::test]
async fn a_rolling_restart_loses_nothing() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed(&ids).await;
    c.create_table("n1", spec("roll", 4)).await;
    let load = Load::start(
        ids.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "roll",
        3,
        100_000,
    );
    for id in ids {
        let others: Vec<&str> = ids.iter().copied().filter(|n| *n != id).collect();
        c.signal(id, Signal::SIGTERM);
        c.wait_exit(id, Duration::from_secs(20)).unwrap();
        c.start(id, &others);
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.poll(&format!("{id} back with copies"), HEAL_LIMIT, || async {
            let client = c.client(others[0]).await?;
            let (_, t) = client.describe("roll").await.map_err(|e| e.to_string())?;
            client.close().await;
            Ok(t.shards
                .iter()
                .all(|s| s.replicas.members().count() == 3 && s.replicas.learners.is_empty())
                .then_some(()))
        })
        .await
        .unwrap();
    }
    assert_nothing_lost(&c, "n1", "roll", load).await;
    c.wait_healthy("n1", "roll", HEAL_LIMIT).await.unwrap();
}

/// After `drain`, the drained node holds nothing and stopping it causes no
/// failed write at all.
#[tokio::test]
async fn stopping_a_drained_node_is_invisible_to_writers() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3", "n4"];
    c.start_formed(&ids).await;
    c.create_table("n1", spec("d", 4)).await;
    let stay = ["n1", "n2", "n3"];
    let load = Load::start(
        stay.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "d",
        3,
        100_000,
    );
    let client = c.client("n1").await.unwrap();
    client
        .set_node_state("n4", NodeState::Draining)
        .await
        .unwrap();
    c.poll("n4 drained", HEAL_LIMIT, || async {
        let (_, t) = client.describe("d").await.map_err(|e| e.to_string())?;
        Ok((!t
            .shards
            .iter()
            .any(|s| s.replicas.holders().any(|h| h == "n4")))
        .then_some(()))
    })
    .await
    .unwrap();
    // Let writes that were in flight during the moves finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = Instant::now();
    c.signal("n4", Signal::SIGTERM);
    c.wait_exit("n4", Duration::from_secs(20)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.finish().await;
    let after: Vec<&(Instant, String)> = report
        .errors
        .iter()
        .filter(|(at, _)| *at >= stopped)
        .collect();
    assert!(
        after.is_empty(),
        "writes failed after the drained node stopped: {after:?}"
    );
    let lost = lost_writes(&client, "d", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "lost: {lost:?}");
    client.close().await;
}
