//! Thousands of shard copies per node, with real processes (issue 17):
//! three nodes holding `TABLES.len()` x 1,000 copies each (tables of 1,000
//! shards x 3 replicas) and no client traffic. The nodes must stay live; a
//! shard left idle for longer than its primary's lease must take a write and
//! then a strong read of it; and kill -9 of a node must still fail its
//! shards over: every shard it led gets a new primary and takes writes.
//! Every wait is bounded, and nothing asserts on speed (`bench/idle.sh`
//! measures that).
//!
//! The nodes run with the default timings (100 ms heartbeat, 500 ms
//! lease): idle shards go quiet after a second and cost nothing, so 3,000
//! copies per node leave Raft's 50 ms heartbeats on time. (Before they
//! did, every primary heartbeated each backup on its own and this test
//! needed a 500 ms heartbeat.) The shard read after idling was never
//! written since the tables were filled: its primary is quiet, lets its
//! lease go, and the strong read wakes it.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tstore_client::cluster_map::{RowKey, Table};
use tstore_client::routing::Client;
use tstore_client::Consistency;
use tstore_tests::{all_live, hash_table, Cluster};

const TABLES: [&str; 3] = ["idle0", "idle1", "idle2"];
const SHARDS: u32 = 1000;
/// The bound of every wait.
const LIMIT: Duration = Duration::from_secs(60);
/// Longer than the primaries' lease and their quiet time.
const IDLE: Duration = Duration::from_millis(3000);

/// One integer key for each shard of a hash table of `SHARDS` shards.
fn key_per_shard() -> Vec<i64> {
    let mut keys = vec![None; SHARDS as usize];
    let mut found = 0;
    for i in 0..1_000_000i64 {
        let slot = RowKey::Int(i).hash_slot(SHARDS) as usize;
        if keys[slot].is_none() {
            keys[slot] = Some(i);
            found += 1;
            if found == SHARDS {
                break;
            }
        }
    }
    keys.into_iter()
        .map(|k| k.expect("a key for every shard"))
        .collect()
}

/// Writes `v` under every key in `keys` of `table`, 200 at a time, trying
/// the keys that failed again until `LIMIT`; returns the failures left.
async fn write_all(client: &Client, table: &str, keys: &[i64], v: &str) -> Vec<String> {
    let deadline = Instant::now() + LIMIT;
    let mut todo: Vec<i64> = keys.to_vec();
    let mut failures = Vec::new();
    while !todo.is_empty() && Instant::now() < deadline {
        let results: Vec<(i64, Result<u64, String>)> = stream::iter(todo.iter().copied())
            .map(|k| async move {
                let row = format!(r#"{{"id":{k},"v":"{v}"}}"#);
                (k, client.put(table, &row).await.map_err(|e| e.to_string()))
            })
            .buffer_unordered(200)
            .collect()
            .await;
        failures = results
            .iter()
            .filter_map(|(k, r)| r.as_ref().err().map(|e| format!("{table} key {k}: {e}")))
            .collect();
        todo = results
            .into_iter()
            .filter(|(_, r)| r.is_err())
            .map(|(k, _)| k)
            .collect();
    }
    failures
}

async fn describe(c: &Cluster, via: &str, table: &str) -> Result<Table, String> {
    let client = c.client(via).await?;
    let res = client.describe(table).await.map_err(|e| e.to_string());
    client.close().await;
    res.map(|(_, t)| t)
}

#[tokio::test]
async fn thousands_of_idle_copies_per_node_stay_live_serve_after_the_lease_and_fail_over() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed(&ids).await;
    for name in TABLES {
        c.poll(&format!("create table {name}"), LIMIT, || async {
            let client = c.client("n1").await?;
            let r = client.create_table(hash_table(name, SHARDS)).await;
            client.close().await;
            match r {
                Ok(_) => Ok(Some(())),
                // A retry after a create that timed out but went through.
                Err(e) if e.to_string().contains("exists") => Ok(Some(())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .unwrap();
    }
    let seeds: Vec<_> = ids.iter().map(|id| c.addr(id)).collect();
    let client = Client::connect(&seeds, c.certs().path(), "admin")
        .await
        .unwrap();
    let keys = key_per_shard();
    for name in TABLES {
        let failed = write_all(&client, name, &keys, "first").await;
        assert!(
            failed.is_empty(),
            "shards of {name} not writable: {:?}\n{}",
            &failed[..failed.len().min(5)],
            c.logs()
        );
    }

    // Idle past the lease: nothing is written for a while, yet the nodes
    // stay live, a quiet shard serves a strong read (waking up for it),
    // and another takes a write and a strong read.
    tokio::time::sleep(IDLE).await;
    for id in ids {
        let members = c.members(id).await.unwrap();
        assert!(all_live(&members, &ids), "{id} sees {members:?}");
    }
    let quiet = client
        .get(TABLES[1], RowKey::Int(keys[8]), Consistency::Strong)
        .await
        .unwrap()
        .expect("the row written before idling");
    assert!(quiet.json.contains("first"), "{quiet:?}");
    let key = keys[7];
    let row = format!(r#"{{"id":{key},"v":"after idling"}}"#);
    let version = client.put(TABLES[0], &row).await.unwrap();
    let read = client
        .get(TABLES[0], RowKey::Int(key), Consistency::Strong)
        .await
        .unwrap()
        .expect("the row just written");
    assert_eq!(read.version, version);
    assert!(read.json.contains("after idling"), "{read:?}");

    // kill -9 of the node, other than the Raft leader's, that leads the
    // most shards: every shard it led gets a new primary and takes writes.
    let leader = c.leader("n1").await;
    let mut tables = Vec::new();
    for name in TABLES {
        tables.push(describe(&c, "n1", name).await.unwrap());
    }
    let led_by = |node: &str| -> Vec<Vec<u32>> {
        tables
            .iter()
            .map(|t| {
                t.shards
                    .iter()
                    .filter(|s| s.replicas.primary == node)
                    .map(|s| s.index)
                    .collect()
            })
            .collect()
    };
    let victim = *ids
        .iter()
        .filter(|id| **id != leader)
        .max_by_key(|id| led_by(id).iter().map(Vec::len).sum::<usize>())
        .unwrap();
    let survivors: Vec<&str> = ids.iter().copied().filter(|id| *id != victim).collect();
    let led = led_by(victim);
    assert!(led.iter().any(|l| !l.is_empty()), "{victim} leads nothing");
    c.kill9(victim);
    let killed = Instant::now();
    c.poll(&format!("no shard led by {victim}"), LIMIT, || async {
        for name in TABLES {
            let t = describe(&c, survivors[0], name).await?;
            if t.shards.iter().any(|s| s.replicas.primary == victim) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .unwrap();
    let moved = killed.elapsed();
    for (name, led) in TABLES.iter().zip(&led) {
        let keys: Vec<i64> = led.iter().map(|s| keys[*s as usize]).collect();
        let failed = write_all(&client, name, &keys, "after the kill").await;
        assert!(
            failed.is_empty(),
            "{name}: shards {victim} led not writable after failover: {:?}\n{}",
            &failed[..failed.len().min(5)],
            c.logs()
        );
    }
    println!(
        "kill -9 {victim}: its {} shards had new primaries after {moved:?} and took writes after {:?}",
        led.iter().map(Vec::len).sum::<usize>(),
        killed.elapsed()
    );
    for id in &survivors {
        let members = c.members(id).await.unwrap();
        assert!(
            survivors
                .iter()
                .all(|s| tstore_tests::status_of(&members, s)
                    == Some(tstore_membership::NodeStatus::Live)),
            "{id} sees {members:?}"
        );
    }
    client.close().await;
}
