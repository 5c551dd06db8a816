//! A real network partition (iptables DROP between node ports on loopback,
//! see `tstore_tests::partition`): the primary of some shards is cut off
//! from the other two nodes while clients keep writing through it and
//! through the majority side.
//!
//! What must hold: the majority promotes new primaries and keeps taking
//! writes; the cut-off primary acknowledges nothing once it is cut off (it
//! cannot reach its backups, and its lease runs out before anyone replaces
//! it); after the partition heals it follows the new epoch and is rebuilt;
//! no acknowledged write is lost and every acknowledgement fits one history
//! per shard.
//!
//! And one-way cuts: a node that can send but not hear (a primary, and the
//! Raft leader) is replaced although gossip still sees it live, and writes
//! go on on every shard while the cut lasts; a backup that cannot hear its
//! primary does not get it replaced while the coordinator hears it.

use std::time::{Duration, Instant};

use tstore_client::cluster_map::{RowKey, Sharding, Table, TableSpec};
use tstore_tests::load::{first_ack_per_shard, history_violations, lost_writes, Load};
use tstore_tests::partition::Partition;
use tstore_tests::Cluster;

#[tokio::test]
async fn a_cut_off_primary_acknowledges_nothing_and_the_majority_takes_over() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed(&ids).await;
    c.create_table(
        "n1",
        TableSpec {
            name: "part".into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 6 },
            replicas: 3,
            min_copies: 0,
        },
    )
    .await;
    let leader = c.leader("n1").await;
    let (_, t) = c
        .client("n1")
        .await
        .unwrap()
        .describe("part")
        .await
        .unwrap();
    // Cut off a primary that is not the Raft leader, so the majority side
    // keeps its leader and decides at once.
    let (victim, led) = primary_to_cut(&t, &leader, false);
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
    let through_victim = Load::start_pinned(
        vec![c.addr(&victim)],
        c.certs().path().to_path_buf(),
        "part",
        3,
        100_000,
    );
    let through_majority = Load::start_writers(
        others.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        "part",
        3..6,
        100_000,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let cut = Partition::isolate(
        c.addr(&victim),
        &others.iter().map(|n| c.addr(n)).collect::<Vec<_>>(),
    )
    .expect("iptables rules for the partition");
    let cut_at = Instant::now();
    // The majority replaces the victim in every configuration.
    let via = others[0];
    let client = c.client(via).await.unwrap();
    c.wait_without(via, "part", &victim, Duration::from_secs(30))
        .await
        .unwrap();
    let replaced_at = Instant::now();
    eprintln!(
        "{victim} (primary of {led:?}) cut off; out of every configuration {:?} later",
        replaced_at - cut_at
    );
    // Keep the partition a while: writes through the victim pile up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healed_at = Instant::now();
    cut.heal();

    // Writes go on a little after the heal (through the victim too, once
    // it follows the new map), then stop so the copies can be compared.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim_report = through_victim.finish().await;
    let majority_report = through_majority.finish().await;
    // The victim learns the new map and is rebuilt as a member: every shard
    // back at 3 copies with identical rows.
    let (_, took) = c
        .wait_healthy(via, "part", Duration::from_secs(60))
        .await
        .unwrap();
    let (_, healed) = client.describe("part").await.unwrap();
    assert!(
        healed
            .shards
            .iter()
            .all(|s| s.replicas.members().any(|m| *m == victim)),
        "{victim} is not back in every shard: {healed:?}"
    );
    eprintln!("healed; every shard back at 3 identical copies {took:?} after the writers stopped");
    // How the victim came back: a copy it still ran is discarded and copied
    // afresh ("rejoining"), one it had stopped starts over as a learner.
    let log = std::fs::read_to_string(c.log_path(&victim)).unwrap_or_default();
    eprintln!(
        "{victim}: {} copies rejoined in place and were re-copied, {} snapshots installed",
        log.matches("rejoining as a learner").count(),
        log.matches("snapshot installed").count()
    );

    // Nothing the cut-off primary acknowledged during the partition: a write
    // sent to it once the cut was in place (a margin for writes already on
    // their way to its backups) and answered before the heal.
    let margin = Duration::from_millis(300);
    let during: Vec<(&i64, _)> = victim_report
        .acked
        .iter()
        .filter(|(_, a)| a.tried >= cut_at + margin && a.at < healed_at)
        .collect();
    assert!(
        during.is_empty(),
        "{} writes acknowledged through the cut-off node during the partition, e.g. {:?}\n{}",
        during.len(),
        &during[..during.len().min(3)],
        c.logs()
    );
    // ... and it was asked: writes sent through it were held across the
    // takeover (the pinned client keeps resending a refused write through
    // it, with the same request identity) and either
    // failed or were acknowledged only after the heal, by the new primary.
    let held = victim_report
        .acked
        .values()
        .filter(|a| a.tried < replaced_at && a.at > healed_at)
        .count();
    let refused = victim_report
        .errors
        .iter()
        .filter(|(at, _)| *at > cut_at)
        .count()
        + victim_report.unknown.len();
    assert!(
        held + refused > 0,
        "no write through the cut-off node was pending during the partition"
    );
    // The majority side kept writing, to the victim's former shards too.
    let firsts = first_ack_per_shard(&healed, &majority_report, replaced_at);
    for s in &led {
        assert!(
            firsts.contains_key(s),
            "no write to part/{s} (led by {victim} before the cut) was acknowledged after the takeover: {firsts:?}"
        );
    }
    eprintln!(
        "first acknowledged write per shard after the takeover: {firsts:?}; through the cut-off node: {held} writes held across the partition and acknowledged after the heal, {refused} attempts refused"
    );
    // No acknowledged write lost, one history per shard.
    let mut all = victim_report.acked.clone();
    let before = all.len();
    all.extend(majority_report.acked.clone());
    assert_eq!(all.len(), before + majority_report.acked.len());
    let check = lost_writes(&client, "part", &all).await.unwrap();
    assert!(
        check.lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}\n{}",
        check.lost.len(),
        all.len(),
        &check.lost[..check.lost.len().min(5)],
        c.logs()
    );
    assert!(check.examined >= all.len());
    let violations = history_violations(&healed, all.iter());
    assert!(violations.is_empty(), "{violations:?}");
    // Writes through the old primary work again once it follows.
    let back = c.client(&victim).await.unwrap();
    back.put("part", r#"{"id":-1,"after":"heal"}"#)
        .await
        .expect("a write through the healed node");
    let row = back
        .get(
            "part",
            RowKey::Int(-1),
            tstore_client::data::ReadMode::Strong,
        )
        .await
        .unwrap();
    assert!(row.is_some());
    eprintln!(
        "{} writes acknowledged in all ({} through {victim}), none lost",
        all.len(),
        victim_report.acked.len()
    );
}

/// A node leading some shards of `t` that is (or is not) the Raft
/// `leader`, and the shards it leads.
fn primary_to_cut(t: &Table, leader: &str, leads_raft: bool) -> (String, Vec<u32>) {
    let victim = t
        .shards
        .iter()
        .map(|s| s.replicas.primary.clone())
        .find(|p| (p == leader) == leads_raft)
        .expect("a primary that is (or is not) the Raft leader");
    let led = t
        .shards
        .iter()
        .filter(|s| s.replicas.primary == victim)
        .map(|s| s.index)
        .collect();
    (victim, led)
}

/// Nodes n1, n2 and n3, formed, holding `table`: 6 hash shards x 3 copies.
async fn three_nodes_with(table: &str) -> Cluster {
    let mut c = Cluster::new();
    c.start_formed(&["n1", "n2", "n3"]).await;
    c.create_table(
        "n1",
        TableSpec {
            name: table.into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 6 },
            replicas: 3,
            min_copies: 0,
        },
    )
    .await;
    c
}

/// Cuts `victim` off one way: it keeps sending (its gossip, heartbeats and
/// prepares arrive), but hears nothing from the other nodes. Gossip keeps
/// seeing it live, so only the primaries' reports of silent backups (and,
/// when it leads Raft, its stopping of heartbeats) get it out of the way.
async fn a_node_that_cannot_hear(victim_leads_raft: bool) {
    let ids = ["n1", "n2", "n3"];
    let table = "deaf";
    let c = three_nodes_with(table).await;
    let leader = c.leader("n1").await;
    let (_, t) = c.client("n1").await.unwrap().describe(table).await.unwrap();
    let (victim, led) = primary_to_cut(&t, &leader, victim_leads_raft);
    let others: Vec<&str> = ids.iter().copied().filter(|n| *n != victim).collect();
    let load = Load::start(
        ids.iter().map(|n| c.addr(n)).collect(),
        c.certs().path().to_path_buf(),
        table,
        6,
        100_000,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut cut = Vec::new();
    for o in &others {
        cut.push(Partition::one_way(c.addr(o), &[c.addr(&victim)]).expect("iptables rules"));
    }
    let cut_at = Instant::now();
    // The others take the victim's primaries (and drop its copies).
    let via = others[0];
    let client = c.client(via).await.unwrap();
    let mut moved = None;
    for _ in 0..300 {
        if let Ok((_, t)) = client.describe(table).await {
            if t.shards.iter().all(|s| s.replicas.primary != victim) {
                moved = Some(cut_at.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved = moved.unwrap_or_else(|| {
        panic!(
            "{victim} (cannot hear) still leads a shard 30 s after the cut\n{}",
            c.logs()
        )
    });
    // Keep the cut a while longer (the promoted backups wait out the old
    // lease, 1.5 s): writes go on meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let healed_at = Instant::now();
    drop(cut);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;
    let (healed, _) = c
        .wait_healthy(via, table, Duration::from_secs(60))
        .await
        .unwrap();
    // Writes were acknowledged on every shard while the cut lasted,
    // the victim's former shards included.
    let firsts = first_ack_per_shard(&healed, &report, cut_at);
    for s in 0..healed.shards.len() as u32 {
        let first = firsts.get(&s).copied();
        assert!(
            first.is_some_and(|d| cut_at + d < healed_at),
            "no write to {table}/{s} was acknowledged during the one-way cut: {firsts:?}\n{}",
            c.logs()
        );
    }
    let worst = led.iter().filter_map(|s| firsts.get(s)).max().copied();
    eprintln!(
        "{victim} (Raft leader: {victim_leads_raft}) cannot hear: it led {led:?}; no shard led by it {moved:?} after the cut; first write acknowledged after the cut per shard: {firsts:?} (the victim's shards: worst {worst:?})"
    );
    let check = lost_writes(&client, table, &report.acked).await.unwrap();
    assert!(
        check.lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}\n{}",
        check.lost.len(),
        report.acked.len(),
        &check.lost[..check.lost.len().min(5)],
        c.logs()
    );
    let violations = history_violations(&healed, report.acked.iter());
    assert!(violations.is_empty(), "{violations:?}");
}

#[tokio::test]
async fn a_primary_that_cannot_hear_is_replaced_and_writes_go_on() {
    a_node_that_cannot_hear(false).await;
}

#[tokio::test]
async fn a_raft_leader_that_cannot_hear_steps_aside_and_its_shards_move() {
    a_node_that_cannot_hear(true).await;
}

/// A backup that stops hearing its primary reports it silent to the
/// coordinator (`coordinator::suspicion`), but a report alone never moves
/// a shard: the coordinator pings the primary itself, it answers, and it
/// stays primary. Here the link from a primary to one backup is cut one
/// way while the Raft leader (the third node) still hears it.
#[tokio::test]
async fn a_backup_that_cannot_hear_its_primary_does_not_get_it_replaced() {
    let ids = ["n1", "n2", "n3"];
    let table = "hush";
    let c = three_nodes_with(table).await;
    let leader = c.leader("n1").await;
    let client = c.client(&leader).await.unwrap();
    let (_, t) = client.describe(table).await.unwrap();
    let (primary, led) = primary_to_cut(&t, &leader, false);
    let backup = ids
        .iter()
        .copied()
        .find(|n| *n != leader && *n != primary)
        .expect("a third node");
    // The backup hears nothing from the primary; everything else flows.
    let cut =
        Partition::one_way(c.addr(&primary), &[c.addr(backup)]).expect("iptables rule for the cut");
    // Bounded: the backup reports within 0.3 s of the cut, and a
    // confirmed report would fail the shard over within about a second.
    let leader_log = c.log_path(&leader);
    let mut probed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = std::fs::read_to_string(&leader_log).unwrap_or_default();
        probed |= log.contains("a node reported silent answered the probe");
        if probed {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, now) = client.describe(table).await.unwrap();
    cut.heal();
    for index in &led {
        let s = &now.shards[*index as usize];
        assert_eq!(
            s.replicas.primary, primary,
            "{table}/{index} was taken from {primary}, whom the leader {leader} still heard: {s:?}"
        );
    }
    assert!(
        probed,
        "{backup} never reported {primary} silent (or the leader {leader} never probed it)"
    );
    let log = std::fs::read_to_string(&leader_log).unwrap_or_default();
    assert!(
        !log.contains(&format!("counting it down node={primary}")),
        "the leader counted {primary} down on {backup}'s report alone"
    );
    eprintln!(
        "{backup} could not hear {primary}; the leader probed it and {primary} still leads {led:?}"
    );
}
