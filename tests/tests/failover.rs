//! Failover and self-healing with real processes, caused for real: kill -9
//! of a primary and of a backup under a write load, a primary paused with
//! SIGSTOP past its lease, a rolling restart, and a drain. After each, every
//! acknowledged write must be there with its acknowledged content, and every
//! shard back at its replication factor with identical copies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tstore_client::admin::{AdminClient, ClientError};
use tstore_client::cluster_map::RowKey;
use tstore_client::data::ReadMode;
use tstore_tests::checks::{assert_acked_kept, assert_nothing_lost};
use tstore_tests::load::{first_ack_per_shard, nonce, scan_all, Acked, Load};
use tstore_tests::{hash_table, tstore_binary, Cluster};

const HEAL_LIMIT: Duration = Duration::from_secs(60);

/// Kill -9 the primary of a busy shard mid-load, twice (a second round after
/// the first victim came back): no acknowledged write is lost, writes to the
/// victim's shards resume, and every shard is re-replicated onto the
/// survivors with identical copies.
#[tokio::test]
async fn no_acknowledged_write_is_lost_when_a_primary_is_killed() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3", "n4"];
    c.start_formed(&ids).await;
    c.create_table("n1", hash_table("seq", 8)).await;
    for round in 0..2 {
        let (_, t) = c.client("n1").await.unwrap().describe("seq").await.unwrap();
        // A primary that is not the Raft leader's node in round 0, any in round 1.
        let leader = c.leader("n1").await;
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
            20_000,
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed = Instant::now();
        c.kill9(&victim);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let via = others[0];
        let report = assert_nothing_lost(&c, via, "seq", load).await;
        let acked = report.acked.len();
        assert!(acked > 100, "the load barely ran: {acked} writes");
        // Writes sent after the kill were acknowledged, to every shard the
        // victim led too: they failed over and took writes again.
        let after = report.acked_since(killed);
        assert!(
            after > 0,
            "round {round}: no write sent after the kill was acknowledged\n{}",
            c.logs()
        );
        let firsts = first_ack_per_shard(&t, &report, killed);
        for s in &led {
            assert!(
                firsts.contains_key(s),
                "round {round}: no write to seq/{s} ({victim} was its primary) acknowledged after the kill: {firsts:?}\n{}",
                c.logs()
            );
        }
        eprintln!(
            "round {round}: {after} writes sent after the kill acknowledged; first ack per shard after the kill: {firsts:?}"
        );
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
    let t = c.create_table("n1", hash_table("r", 4)).await;
    let leader = c.leader("n1").await;
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
    assert_acked_kept(&c, others[0], "r", &report.acked).await;
    let client = c.client(others[0]).await.unwrap();
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
    c.create_table("n1", hash_table("b", 4)).await;
    let leader = c.leader("n1").await;
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
        20_000,
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed = Instant::now();
    c.kill9(&victim);
    // Writes keep being acknowledged with the victim gone.
    let client = c.client(others[0]).await.unwrap();
    let (_, t) = client.describe("b").await.unwrap();
    let took = c
        .wait_without(others[0], "b", &victim, Duration::from_secs(20))
        .await
        .unwrap();
    let dropped = Instant::now();
    eprintln!(
        "{victim} out of every configuration {:?} after the kill (seen after {took:?} of polling)",
        dropped.duration_since(killed)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    c.start(&victim, &others);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = assert_nothing_lost(&c, others[0], "b", load).await;
    assert!(report.acked.len() > 50);
    // Writes sent once the victim was out of the configuration were
    // acknowledged, on every shard, before it came back.
    let while_out: BTreeMap<i64, &Acked> = report
        .acked
        .iter()
        .filter(|(_, a)| a.tried >= dropped && a.at < restarted)
        .map(|(k, a)| (*k, a))
        .collect();
    let shards_written: std::collections::BTreeSet<u32> = while_out
        .keys()
        .map(|k| t.shard_of(&RowKey::Int(*k)))
        .collect();
    assert_eq!(
        shards_written.len(),
        t.shards.len(),
        "writes sent after {victim} was dropped and acknowledged before it returned reached only shards {shards_written:?}\n{}",
        c.logs()
    );
    eprintln!(
        "{} writes sent after {victim} was dropped were acknowledged before it returned; first ack per shard after the drop: {:?}",
        while_out.len(),
        first_ack_per_shard(&t, &report, dropped)
    );
    // Rebuilt: every member of every shard serving, with the same applied
    // position and checksum of rows (wait_healthy compares them).
    let (healed, took) = c.wait_healthy(others[0], "b", HEAL_LIMIT).await.unwrap();
    // It holds copies again (3 nodes, RF 3: every shard is on every node).
    for s in &healed.shards {
        assert!(s.replicas.holders().any(|h| *h == victim), "{s:?}");
    }
    eprintln!("backup {victim} rebuilt; healthy {took:?} after the check began");
    // Its checksums, as it reports them itself, match the primary's.
    let on_victim = c.client(&victim).await.unwrap();
    let copies = on_victim.copies("b", true).await.unwrap();
    for s in &healed.shards {
        let sum = |node: &str| {
            copies
                .iter()
                .find(|r| r.shard == s.index && r.node == node)
                .and_then(|r| r.status.as_ref().ok())
                .map(|st| (st.applied, st.checksum))
        };
        let (mine, primary) = (sum(&victim), sum(&s.replicas.primary));
        assert!(
            mine.is_some_and(|(_, sum)| sum.is_some()) && mine == primary,
            "b/{}: {victim} has {mine:?}, primary {} has {primary:?}",
            s.index,
            s.replicas.primary
        );
    }
    // And it serves the same rows (keys, versions, content) as the primary,
    // read from its own copy.
    let mine = scan_all(&on_victim, "b", ReadMode::Replica, HEAL_LIMIT)
        .await
        .unwrap();
    let primary = scan_all(&client, "b", ReadMode::Strong, HEAL_LIMIT)
        .await
        .unwrap();
    assert!(mine.len() >= report.acked.len());
    if let Some(i) = (0..mine.len().max(primary.len())).find(|i| mine.get(*i) != primary.get(*i)) {
        panic!(
            "{victim}'s copy differs from the primary's at row {i}: {:?} vs {:?} ({} vs {} rows)",
            mine.get(i),
            primary.get(i),
            mine.len(),
            primary.len()
        );
    }
    on_victim.close().await;
    client.close().await;
}

/// What [`session_writer`] saw.
#[derive(Default)]
struct SessionLog {
    acked: BTreeMap<i64, Acked>,
    /// Writes that failed (outcome unknown or refused): when sent, the error.
    failed: Vec<(Instant, String)>,
    sessions: usize,
}

/// Most writes a session writer has in flight at once.
const IN_FLIGHT: usize = 32;

/// Writes `keys` (each once, one new write every 20 ms, up to [`IN_FLIGHT`]
/// at once) through a session with the node at `addr` only: while the node
/// is stopped they queue in that session. A session that breaks is replaced
/// by a new one to the same node. Each write is sent once.
async fn session_writer(
    addr: SocketAddr,
    certs: PathBuf,
    table: &'static str,
    keys: Vec<i64>,
    nonce: u64,
    stop: Arc<AtomicBool>,
) -> SessionLog {
    let mut log = SessionLog::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let broken = Arc::new(AtomicBool::new(false));
    let mut client = Arc::new(
        AdminClient::connect(addr, &certs, "admin")
            .await
            .expect("session"),
    );
    log.sessions = 1;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, key) in keys.into_iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let slot = slots.clone().acquire_owned().await.expect("semaphore");
        if broken.swap(false, Ordering::SeqCst) {
            // Bounded: the node is stopped for seconds, not minutes.
            let mut fresh = None;
            for _ in 0..60 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match AdminClient::connect(addr, &certs, "admin").await {
                    Ok(c) => {
                        fresh = Some(c);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
            match fresh {
                Some(c) => {
                    client = Arc::new(c);
                    log.sessions += 1;
                }
                None => break,
            }
        }
        let row = serde_json::json!({ "id": key, "via": addr.to_string(), "i": i, "load": nonce })
            .to_string();
        let (client, broken) = (client.clone(), broken.clone());
        tasks.spawn(async move {
            let tried = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(30), client.put(table, &row)).await;
            drop(slot);
            let r = match r {
                Ok(Ok(version)) => Ok(version),
                Ok(Err(e)) => {
                    if matches!(e, ClientError::Transport(_)) {
                        broken.store(true, Ordering::SeqCst);
                    }
                    Err(e.to_string())
                }
                Err(_) => {
                    broken.store(true, Ordering::SeqCst);
                    Err("no answer in 30 s".into())
                }
            };
            (key, row, tried, r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Some(done) = tasks.join_next().await {
        let (key, row, tried, r, at) = done.expect("write task");
        match r {
            Ok(version) => {
                log.acked.insert(
                    key,
                    Acked {
                        row,
                        version,
                        tried,
                        at,
                    },
                );
            }
            Err(e) => log.failed.push((tried, e)),
        }
    }
    log
}

/// A primary paused with SIGSTOP past its lease while writes keep coming,
/// through its own client session (they queue while it is stopped) and
/// through the other nodes: the majority promotes a backup; when the old
/// primary resumes it stops calling itself primary within a bounded time,
/// every write acknowledged by anyone is there with its acknowledged
/// content, and all acknowledgements fit one history per shard (no two
/// primaries handed out versions at once).
#[tokio::test]
async fn a_paused_primary_is_replaced_and_refuses_writes_when_it_resumes() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed(&ids).await;
    let t = c.create_table("n1", hash_table("p", 2)).await;
    let leader = c.leader("n1").await;
    let s0 = t
        .shards
        .iter()
        .find(|s| s.replicas.primary != leader)
        .unwrap()
        .clone();
    let old = s0.replicas.primary.clone();
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != old).collect();
    // Keys of the paused primary's shard, written through it (the load's
    // keys are below 10,000,000).
    let keys: Vec<i64> = (50_000_000..)
        .filter(|k| t.shard_of(&RowKey::Int(*k)) == s0.index)
        .take(2_000)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let through_old = tokio::spawn(session_writer(
        c.addr(&old),
        c.certs().path().to_path_buf(),
        "p",
        keys,
        nonce(),
        stop.clone(),
    ));
    let load = Load::start(
        others.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "p",
        2,
        100_000,
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let paused = Instant::now();
    c.signal(&old, Signal::SIGSTOP);
    let client = c.client(others[0]).await.unwrap();
    let (new_set, _) = c
        .poll(
            "a new primary for the paused one's shard",
            Duration::from_secs(20),
            || async {
                let (_, t) = client.describe("p").await.map_err(|e| e.to_string())?;
                let r = &t.shards[s0.index as usize].replicas;
                Ok((r.primary != old).then(|| r.clone()))
            },
        )
        .await
        .unwrap();
    let promoted = Instant::now();
    assert!(new_set.epoch > s0.replicas.epoch, "{new_set:?}");
    // The old primary resumes, with writes queued in its session.
    c.signal(&old, Signal::SIGCONT);
    let resumed = Instant::now();
    eprintln!(
        "p/{}: {} promoted in epoch {} {:?} after SIGSTOP of {old}",
        s0.index,
        new_set.primary,
        new_set.epoch,
        promoted.duration_since(paused)
    );
    // Its copy stops calling itself primary, and takes the newer epoch.
    let (status, demoted) = c
        .poll(
            &format!("{old}'s copy of p/{} no longer primary", s0.index),
            Duration::from_secs(30),
            || async {
                let copies = client.copies("p", false).await.map_err(|e| e.to_string())?;
                Ok(copies
                    .into_iter()
                    .find(|r| r.shard == s0.index && r.node == old)
                    .and_then(|r| r.status.ok())
                    .filter(|st| st.role != "primary" && st.epoch >= new_set.epoch))
            },
        )
        .await
        .unwrap();
    eprintln!(
        "{old}'s copy is {} in epoch {} {demoted:?} after SIGCONT",
        status.role, status.epoch
    );
    // Writes keep coming through every node for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let report = load.finish().await;
    let via_old = through_old.await.expect("session writer");
    // Writes resumed on the shard through the other nodes after the
    // promotion, and through the old node after it resumed.
    let firsts = first_ack_per_shard(&t, &report, promoted);
    assert!(
        firsts.contains_key(&s0.index),
        "no write to p/{} sent after the promotion was acknowledged: {firsts:?}\n{}",
        s0.index,
        c.logs()
    );
    let old_after = via_old
        .acked
        .values()
        .filter(|a| a.tried >= resumed)
        .count();
    let old_queued = via_old
        .acked
        .values()
        .filter(|a| a.tried >= paused && a.tried < resumed)
        .count();
    assert!(
        old_after > 0,
        "no write sent through {old} after it resumed was acknowledged; failures: {:?}\n{}",
        &via_old.failed[..via_old.failed.len().min(10)],
        c.logs()
    );
    eprintln!(
        "through {old} ({} sessions): {} acknowledged ({old_queued} sent while it was stopped, {old_after} after it resumed), {} failed; through the others: {} acknowledged, {} failed attempts; first ack per shard after the promotion: {firsts:?}",
        via_old.sessions,
        via_old.acked.len(),
        via_old.failed.len(),
        report.acked.len(),
        report.errors.len()
    );
    // Every acknowledged write, by anyone, is there with its content, and
    // the versions handed out fit one history per shard.
    let mut all = report.acked.clone();
    for (k, a) in &via_old.acked {
        assert!(all.insert(*k, a.clone()).is_none(), "key {k} written twice");
    }
    assert_acked_kept(&c, others[0], "p", &all).await;
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
    c.create_table("n1", hash_table("roll", 4)).await;
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

/// `tstore admin drain` (the CLI itself, as an operator runs it) hands
/// every copy of a node over under a write load without one failed write,
/// and stopping the drained node afterwards causes no failed write either.
#[tokio::test]
async fn stopping_a_drained_node_is_invisible_to_writers() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3", "n4"];
    c.start_formed(&ids).await;
    let t = c.create_table("n1", hash_table("d", 4)).await;
    let held_before = t
        .shards
        .iter()
        .filter(|s| s.replicas.holders().any(|h| h == "n4"))
        .count();
    let led_before = t
        .shards
        .iter()
        .filter(|s| s.replicas.primary == "n4")
        .count();
    // n4 (not a Raft voter) holds copies and leads a shard: the drain
    // moves copies and hands a primary over.
    assert!(
        held_before > 0 && led_before > 0,
        "n4 holds {held_before} copies and leads {led_before} shards of {t:?}"
    );
    let stay = ["n1", "n2", "n3"];
    let load = Load::start(
        stay.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "d",
        3,
        100_000,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The CLI's drain: marks the node draining, then waits until no table
    // holds a copy on it.
    let drain_started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(tstore_binary())
            .arg("admin")
            .args(["--node", &c.addr("n1").to_string()])
            .arg("--certs")
            .arg(c.certs().path())
            .args(["drain", "n4", "--timeout-secs", "60"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("tstore admin drain within 90 s")
    .expect("run tstore admin drain");
    let drained = Instant::now();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("n4 holds no copies"),
        "tstore admin drain n4: {}\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    eprintln!(
        "drain of n4 (held {held_before} copies, led {led_before}) done in {:?}",
        drained.duration_since(drain_started)
    );
    let client = c.client("n1").await.unwrap();
    let (_, after) = client.describe("d").await.unwrap();
    assert!(
        !after
            .shards
            .iter()
            .any(|s| s.replicas.holders().any(|h| h == "n4")),
        "{after:?}"
    );
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
    // Nor did any write fail while the drain handed the copies over: the
    // routers ride out handovers, so the client never sees a failure.
    let during: Vec<(Duration, &String)> = report
        .errors
        .iter()
        .filter(|(at, _)| *at < stopped)
        .map(|(at, e)| (at.saturating_duration_since(drain_started), e))
        .collect();
    assert!(
        during.is_empty() && report.unknown.is_empty(),
        "{} failed attempts during the drain (time since it began, error): {:?}; {} writes unknown",
        during.len(),
        &during[..during.len().min(10)],
        report.unknown.len()
    );
    // Writes were acknowledged during the drain and after the stop, on
    // every shard.
    let during_drain = report
        .acked
        .values()
        .filter(|a| a.tried >= drain_started && a.at <= drained)
        .count();
    assert!(during_drain > 0, "no write acknowledged during the drain");
    let firsts = first_ack_per_shard(&t, &report, stopped);
    assert_eq!(
        firsts.len(),
        t.shards.len(),
        "shards written after n4 stopped: {firsts:?}"
    );
    eprintln!(
        "{} writes acknowledged, {during_drain} during the drain, {} sent after n4 stopped; no failed attempt",
        report.acked.len(),
        report.acked_since(stopped)
    );
    client.close().await;
    assert_acked_kept(&c, "n1", "d", &report.acked).await;
}
