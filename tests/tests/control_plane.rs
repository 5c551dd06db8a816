//! The control plane with real `tstore` processes: bootstrap by gossip, one
//! Raft leader, DDL from any node seen by every node, leader loss, a minority
//! that cannot change the map, and a full cluster restart.

use std::time::Duration;

use nix::sys::signal::Signal;
use tstore_client::cluster_map::{RowKey, Sharding, Table, TableSpec};
use tstore_client::copy_gossip::{node_copies, CopyGroup, LocalRole};
use tstore_client::wire::{AdminError, AdminErrorKind, ClusterStatus, ControlError};
use tstore_client::ClientError;
use tstore_membership::view::NodeView;
use tstore_tests::Cluster;

const LIMIT: Duration = Duration::from_secs(30);
const ALL: [&str; 3] = ["n1", "n2", "n3"];

fn start_three(c: &mut Cluster) {
    c.start_with("n1", &["n2", "n3"], &["--bootstrap-expect", "3"]);
    c.start_with("n2", &["n1", "n3"], &["--bootstrap-expect", "3"]);
    c.start_with("n3", &["n1", "n2"], &["--bootstrap-expect", "3"]);
}

/// Waits until every node in `nodes` agrees on one leader among three voters;
/// returns the leader's id.
async fn agreed_leader(c: &Cluster, nodes: &[&str]) -> String {
    let (leader, took) = c
        .poll("one agreed Raft leader", LIMIT, || async {
            let mut statuses: Vec<ClusterStatus> = Vec::new();
            for n in nodes {
                statuses.push(c.status(n).await?);
            }
            let leader = statuses[0].leader.clone();
            let agreed = leader.is_some()
                && statuses
                    .iter()
                    .all(|s| s.leader == leader && s.voters.len() == 3);
            let leaders = statuses.iter().filter(|s| s.role == "leader").count();
            Ok((agreed && leaders == 1).then(|| leader.unwrap()))
        })
        .await
        .unwrap();
    println!("leader {leader} agreed by {nodes:?} after {took:?}");
    leader
}

fn user_spec() -> TableSpec {
    TableSpec {
        name: "user".into(),
        key: "id".into(),
        sharding: Sharding::Hash { shards: 8 },
        replicas: 3,
        min_copies: 0,
    }
}

fn events_spec() -> TableSpec {
    TableSpec {
        name: "events".into(),
        key: "ts".into(),
        sharding: Sharding::Range {
            splits: ["1000", "2000", "3000"].map(RowKey::parse).to_vec(),
        },
        replicas: 2,
        min_copies: 0,
    }
}

/// The parts of a table that only DDL changes (replica sets move with
/// failover and re-replication).
fn ddl(t: &Table) -> (TableSpec, Vec<String>) {
    (
        t.spec.clone(),
        t.shards.iter().map(|s| s.range.to_string()).collect(),
    )
}

/// Waits until `via` describes `name` as `expected` (its definition and
/// shards; who holds them may have changed since).
async fn sees_table(c: &Cluster, via: &str, expected: &Table) {
    c.poll(
        &format!("{via} describing {}", expected.spec.name),
        LIMIT,
        || async {
            let client = c.client(via).await?;
            let res = client.describe(&expected.spec.name).await;
            client.close().await;
            Ok(res.ok().filter(|(_, t)| ddl(t) == ddl(expected)))
        },
    )
    .await
    .unwrap();
}

/// Creates a table through `via`. A control plane that has just formed may
/// not have registered every node in the map yet ("only N nodes can take
/// them"): that one refusal is retried, for a bounded time; any other
/// answer is returned as it is.
async fn create(c: &Cluster, via: &str, spec: TableSpec) -> Result<Table, AdminError> {
    let started = std::time::Instant::now();
    loop {
        let client = c.client(via).await.expect("connect");
        let res = client.create_table(spec.clone()).await.map(|(_, t)| t);
        client.close().await;
        match res {
            Err(ClientError::Admin(AdminError {
                control: Some(ControlError::NotEnoughNodes { .. }),
                ..
            })) if started.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(t) => return Ok(t),
            Err(ClientError::Admin(e)) => return Err(e),
            Err(e) => panic!("create table through {via}: {e}"),
        }
    }
}

#[tokio::test]
async fn bootstrap_elects_one_leader_and_ddl_from_any_node_is_seen_everywhere() {
    let mut c = Cluster::new();
    start_three(&mut c);
    let leader = agreed_leader(&c, &ALL).await;
    let follower = ALL.iter().find(|n| **n != leader).unwrap();

    // The brief's example: a `user` table keyed by `id`, hash-sharded, sent to a follower.
    let user = create(&c, follower, user_spec()).await.unwrap();
    assert_eq!(user.shards.len(), 8);
    for s in &user.shards {
        let mut members: Vec<&String> = s.replicas.members().collect();
        members.sort();
        assert_eq!(
            members,
            vec!["n1", "n2", "n3"],
            "shard {} placement",
            s.index
        );
        assert_eq!(s.replicas.epoch, 1);
    }
    let events = create(&c, "n3", events_spec()).await.unwrap();
    let bounds: Vec<String> = events.shards.iter().map(|s| s.range.to_string()).collect();
    assert_eq!(
        bounds,
        [
            "(-inf, 1000)",
            "[1000, 2000)",
            "[2000, 3000)",
            "[3000, +inf)"
        ]
    );
    for via in ALL {
        sees_table(&c, via, &user).await;
        sees_table(&c, via, &events).await;
    }
    // Every node holds the copies the map gives it and reports them in gossip.
    let (_, took) = c
        .poll("shard copies reported in gossip", LIMIT, || async {
            Ok(copies_in_gossip(&c, "n1", &user).await?.then_some(()))
        })
        .await
        .unwrap();
    println!("every copy of user reported in gossip after {took:?}");

    // Clear refusals, and the node keeps serving.
    let err = create(&c, "n2", user_spec()).await.unwrap_err();
    assert_eq!(err.control, Some(ControlError::TableExists("user".into())));
    assert_eq!(
        (err.kind, err.to_string().as_str()),
        (AdminErrorKind::Conflict, "table \"user\" already exists")
    );
    let mut five = user_spec();
    five.name = "five".into();
    five.replicas = 5;
    let err = create(&c, "n1", five).await.unwrap_err();
    assert!(
        matches!(
            err.control,
            Some(ControlError::NotEnoughNodes {
                need: 5,
                have: 3,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("only 3 nodes can take them"),
        "{err}"
    );
    let client = c.client("n2").await.unwrap();
    let err = client.describe("nope").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "table \"nope\" does not exist (tables: events, user)"
    );
    assert!(
        matches!(
            err,
            ClientError::Admin(AdminError {
                kind: AdminErrorKind::NotFound,
                control: Some(ControlError::NoSuchTable { .. }),
                ..
            })
        ),
        "{err:?}"
    );
    let v = client.drop_table("events").await.unwrap();
    let (tables_version, tables) = client.tables().await.unwrap();
    assert!(tables_version >= v);
    assert_eq!(tables.len(), 1);
    // Dropping the table stops its copies: their gossip keys are withdrawn.
    c.poll("events copies withdrawn", LIMIT, || async {
        let client = c.client("n1").await?;
        let snapshot = client.gossip().await.map_err(|e| e.to_string())?;
        client.close().await;
        let events_copies = snapshot
            .nodes
            .iter()
            .flat_map(copies_of)
            .filter(|g| g.table == "events")
            .count();
        Ok((events_copies == 0).then_some(()))
    })
    .await
    .unwrap();
}

/// The copies a node's gossip keys show.
fn copies_of(node: &NodeView) -> Vec<CopyGroup> {
    let keys = node.keys.iter().filter(|(_, v)| !v.deleted);
    node_copies(keys.map(|(k, v)| (k.as_str(), v.value.as_str())))
}

/// True when `via`'s gossip state shows every copy of `table` on the node
/// the map puts it on, with its role and epoch.
async fn copies_in_gossip(c: &Cluster, via: &str, table: &Table) -> Result<bool, String> {
    let client = c.client(via).await?;
    let snapshot = client.gossip().await.map_err(|e| e.to_string())?;
    client.close().await;
    let shown = |node: &str, index: u32| -> Option<(LocalRole, u64)> {
        let n = snapshot
            .nodes
            .iter()
            .filter(|n| n.node_id == node)
            .max_by_key(|n| n.generation)?;
        copies_of(n)
            .into_iter()
            .find(|g| g.table == table.spec.name && g.shards.contains(&index))
            .map(|g| (g.state.role, g.state.epoch))
    };
    Ok(table.shards.iter().all(|s| {
        let epoch = s.replicas.epoch;
        shown(&s.replicas.primary, s.index) == Some((LocalRole::Primary, epoch))
            && s.replicas
                .backups
                .iter()
                .all(|b| shown(b, s.index) == Some((LocalRole::Backup, epoch)))
    }))
}

#[tokio::test]
async fn killing_the_leader_elects_another_and_the_old_one_follows_after_restart() {
    let mut c = Cluster::new();
    start_three(&mut c);
    let old = agreed_leader(&c, &ALL).await;
    let survivor = *ALL.iter().find(|n| **n != old).unwrap();
    let user = create(&c, survivor, user_spec()).await.unwrap();

    c.kill9(&old);
    let survivors: Vec<&str> = ALL.iter().copied().filter(|n| *n != old).collect();
    let (new, took) = c
        .poll("a new leader among the survivors", LIMIT, || async {
            let s = c.status(survivors[0]).await?;
            Ok(s.leader.filter(|l| *l != old && s.role != "candidate"))
        })
        .await
        .unwrap();
    println!("leader {old} killed: {new} leads after {took:?}");
    for via in &survivors {
        sees_table(&c, via, &user).await;
    }
    // DDL works again (retrying while the new leader settles).
    let (events, _) = c
        .poll("DDL after the failover", LIMIT, || async {
            Ok(create(&c, survivors[1], events_spec()).await.ok())
        })
        .await
        .unwrap();

    let seeds: Vec<&str> = survivors.clone();
    c.start_with(&old, &seeds, &["--bootstrap-expect", "3"]);
    c.poll(&format!("{old} following again"), LIMIT, || async {
        let s = c.status(&old).await?;
        Ok((s.role == "follower" && s.leader.as_deref() == Some(new.as_str())).then_some(()))
    })
    .await
    .unwrap();
    sees_table(&c, &old, &events).await;
    sees_table(&c, &old, &user).await;
}

#[tokio::test]
async fn a_minority_cannot_change_the_map_and_says_why() {
    let mut c = Cluster::new();
    start_three(&mut c);
    agreed_leader(&c, &ALL).await;
    let user = create(&c, "n2", user_spec()).await.unwrap();

    // Pause two of the three voters: n1 alone is a minority.
    c.signal("n2", Signal::SIGSTOP);
    c.signal("n3", Signal::SIGSTOP);
    c.wait_for("n1", "n2 and n3 down", LIMIT, |m| {
        ["n2", "n3"]
            .iter()
            .all(|id| tstore_tests::status_of(m, id) == Some(tstore_membership::NodeStatus::Down))
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = create(&c, "n1", events_spec()).await.unwrap_err();
    println!("minority refused after {:?}: {err}", started.elapsed());
    assert_eq!(err.kind, AdminErrorKind::Unavailable, "{err:?}");
    assert!(
        matches!(
            err.control,
            Some(ControlError::NoQuorum(_) | ControlError::NoLeader(_))
        ),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("voters"), "the error names the voters: {err}");
    assert!(
        err.contains("n2") && err.contains("n3"),
        "the error names the down voters: {err}"
    );
    let client = c.client("n1").await.unwrap();
    assert!(
        client.describe("events").await.is_err(),
        "the minority changed the map"
    );
    sees_table(&c, "n1", &user).await; // reads of the committed map still work

    c.signal("n2", Signal::SIGCONT);
    c.signal("n3", Signal::SIGCONT);
    let (events, _) = c
        .poll("DDL once the majority is back", LIMIT, || async {
            Ok(create(&c, "n1", events_spec()).await.ok())
        })
        .await
        .unwrap();
    for via in ALL {
        sees_table(&c, via, &events).await;
    }
}

#[tokio::test]
async fn the_map_survives_a_full_cluster_restart() {
    let mut c = Cluster::new();
    start_three(&mut c);
    agreed_leader(&c, &ALL).await;
    let user = create(&c, "n1", user_spec()).await.unwrap();
    let events = create(&c, "n2", events_spec()).await.unwrap();
    let before = c.status("n3").await.unwrap();

    for id in ALL {
        c.signal(id, Signal::SIGTERM);
    }
    for id in ALL {
        let status = c.wait_exit(id, Duration::from_secs(15)).unwrap();
        assert!(status.success(), "{id} exited with {status}");
    }
    start_three(&mut c);
    agreed_leader(&c, &ALL).await;
    for via in ALL {
        sees_table(&c, via, &user).await;
        sees_table(&c, via, &events).await;
        let s = c.status(via).await.unwrap();
        assert!(
            s.map_version >= before.map_version,
            "{via}: {s:?} vs {before:?}"
        );
    }
}

#[tokio::test]
async fn a_later_node_joins_as_learner_and_replaces_a_voter_that_stays_down() {
    let mut c = Cluster::new();
    let fast = ["--bootstrap-expect", "3", "--voter-replace-after-secs", "2"];
    c.start_with("n1", &["n2", "n3"], &fast);
    c.start_with("n2", &["n1", "n3"], &fast);
    c.start_with("n3", &["n1", "n2"], &fast);
    let leader = agreed_leader(&c, &ALL).await;
    c.start_with("n4", &["n1"], &["--voter-replace-after-secs", "2"]);
    c.poll("n4 added as a learner", LIMIT, || async {
        let s = c.status(&leader).await?;
        Ok(s.learners.iter().any(|(n, _)| n == "n4").then_some(()))
    })
    .await
    .unwrap();

    // Kill a voter that is not the leader; after the replacement delay, n4 takes its place.
    let victim = *ALL.iter().find(|n| **n != leader).unwrap();
    c.kill9(victim);
    let (voters, took) = c
        .poll("n4 promoted in place of the dead voter", LIMIT, || async {
            let s = c.status(&leader).await?;
            let voters: Vec<String> = s.voters.iter().map(|(n, _)| n.clone()).collect();
            Ok((voters.len() == 3
                && voters.iter().any(|v| v == "n4")
                && !voters.iter().any(|v| v == victim))
            .then_some(voters))
        })
        .await
        .unwrap();
    println!("voter {victim} killed; voters {voters:?} after {took:?}");
    // The new group commits map changes.
    let t = create(&c, "n4", user_spec()).await.unwrap();
    sees_table(&c, "n4", &t).await;
}

/// The map's Raft log is compacted: with a snapshot every 20 entries, 60
/// map changes leave every node's log purged up to a recent snapshot (so
/// the log does not grow with every change), and the map still reads the
/// same everywhere, also on a node restarted from its compacted log.
#[tokio::test]
async fn the_control_plane_log_is_compacted_and_the_map_survives_it() {
    let mut c = Cluster::new();
    let flags = ["--bootstrap-expect", "3", "--raft-snapshot-entries", "20"];
    c.start_with("n1", &["n2", "n3"], &flags);
    c.start_with("n2", &["n1", "n3"], &flags);
    c.start_with("n3", &["n1", "n2"], &flags);
    agreed_leader(&c, &ALL).await;
    let client = c.client("n1").await.unwrap();
    for i in 0..30 {
        let mut spec = user_spec();
        spec.name = format!("t{i}");
        spec.sharding = Sharding::Hash { shards: 1 };
        spec.replicas = 1;
        create(&c, "n1", spec).await.unwrap();
        if i % 2 == 0 {
            client.drop_table(&format!("t{i}")).await.unwrap();
        }
    }
    let (want_version, want) = client.tables().await.unwrap();
    client.close().await;
    assert_eq!(want.len(), 15);
    for n in ALL {
        let (s, took) = c
            .poll(&format!("{n}'s log compacted"), LIMIT, || async {
                let s = c.status(n).await?;
                Ok((s.purged_index > 0 && s.map_version >= want_version).then_some(s))
            })
            .await
            .unwrap();
        println!(
            "{n}: snapshot at {}, purged to {}, last entry {} (after {took:?})",
            s.snapshot_index, s.purged_index, s.last_log_index
        );
        assert!(s.snapshot_index >= s.purged_index, "{s:?}");
        assert!(
            s.last_log_index - s.purged_index <= 20 + 20 + 10,
            "the log kept more than two snapshot intervals: {s:?}"
        );
    }
    // A node restarted from its compacted log reads the same map.
    c.kill9("n3");
    c.start_with("n3", &["n1", "n2"], &flags);
    let (_, took) = c
        .poll("n3 back with the same tables", LIMIT, || async {
            let client = c.client("n3").await?;
            let res = client.tables().await;
            client.close().await;
            Ok(match res {
                Ok((_, t)) if t.len() == want.len() => Some(t),
                _ => None,
            })
        })
        .await
        .unwrap();
    println!("n3 restarted from its compacted log in {took:?}");
}
