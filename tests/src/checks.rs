//! Checks shared by the failure tests: every acknowledged write of a load
//! is still there, with its content, in one history per shard.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::load::{history_violations, lost_writes, Acked, Load, LoadReport};
use crate::Cluster;

/// Every acknowledged write of `acked` is in `table` with its content (at
/// its acknowledged version or a later one), the whole table was read, and
/// the acknowledgements fit one history per shard.
pub async fn assert_acked_kept(c: &Cluster, via: &str, table: &str, acked: &BTreeMap<i64, Acked>) {
    let client = c.client(via).await.unwrap();
    let check = lost_writes(&client, table, acked).await.unwrap();
    let (_, t) = client.describe(table).await.unwrap();
    if check.examined < acked.len() || !check.lost.is_empty() {
        // Fails either way; a second read tells a stale read (the rows show
        // up later) from a lost write (they never do).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = lost_writes(&client, table, acked).await.unwrap();
        panic!(
            "read back {} rows of {table} for {} acknowledged keys, {} missing or changed: {:?}; \
             read again 2 s later: {} rows, {} missing or changed: {:?}\n{}",
            check.examined,
            acked.len(),
            check.lost.len(),
            &check.lost[..check.lost.len().min(5)],
            again.examined,
            again.lost.len(),
            &again.lost[..again.lost.len().min(5)],
            c.logs()
        );
    }
    client.close().await;
    let bad = history_violations(&t, acked);
    assert!(
        bad.is_empty(),
        "{} acknowledgements do not fit one history per shard: {:?}\n{}",
        bad.len(),
        &bad[..bad.len().min(10)],
        c.logs()
    );
    eprintln!(
        "{} acknowledged writes checked against {} rows read back: none lost, one history per shard",
        acked.len(),
        check.examined
    );
}

/// Stops `load` and checks that nothing it got acknowledged was lost.
pub async fn assert_nothing_lost(c: &Cluster, via: &str, table: &str, load: Load) -> LoadReport {
    let report = load.finish().await;
    assert_acked_kept(c, via, table, &report.acked).await;
    eprintln!(
        "load {}: {} writes acknowledged, {} unknown, {} failed attempts",
        report.nonce,
        report.acked.len(),
        report.unknown.len(),
        report.errors.len()
    );
    report
}
