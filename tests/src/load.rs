//! A write load for failure tests: several writers, each putting its own
//! numbered keys one after another, remembering exactly which writes were
//! acknowledged (and with which row), so a test can check afterwards that
//! every acknowledged write survived.
//!
//! A writer retries a failed write (same key, same row: a put is idempotent
//! in content) for up to [`RETRY_LIMIT`], reconnecting through the next node
//! of its list when the transport fails. A write that never succeeds is
//! recorded as unknown (it may or may not have been applied) and not counted
//! as acknowledged. Every writer stops after `max_writes` or when told to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tstore_node::client::{AdminClient, ClientError};
use tstore_node::cluster_map::{SplitKey, Table};
use tstore_node::data::ReadMode;

/// How long one write is retried before it counts as unknown.
pub const RETRY_LIMIT: Duration = Duration::from_secs(20);

/// What one writer saw.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Acknowledged writes: key, row, when the successful attempt started,
    /// when it was acknowledged.
    pub acked: Vec<(i64, String, Instant, Instant)>,
    /// Keys whose write never got an answer either way.
    pub unknown: Vec<i64>,
    /// Failed attempts: when, and the error.
    pub errors: Vec<(Instant, String)>,
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<WriterLog>>,
}

/// Everything the writers saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Key → (row, when it was acknowledged).
    pub acked: BTreeMap<i64, (String, Instant)>,
    /// Key → when its successful attempt started.
    pub attempted: BTreeMap<i64, Instant>,
    pub unknown: Vec<i64>,
    pub errors: Vec<(Instant, String)>,
}

impl Load {
    /// Starts `writers` writers on `table`; writer `w` talks to
    /// `nodes[w % len]` first and writes keys `w * 1_000_000 + i`.
    pub fn start(
        nodes: Vec<SocketAddr>,
        certs: PathBuf,
        table: &str,
        writers: usize,
        max_writes: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| {
                let (nodes, certs, table, stop) =
                    (nodes.clone(), certs.clone(), table.to_owned(), stop.clone());
                tokio::spawn(writer(nodes, certs, table, w, max_writes, stop))
            })
            .collect();
        Self { stop, writers }
    }

    /// Stops the writers and collects what they saw.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport::default();
        for w in self.writers {
            let log = w.await.expect("writer task");
            for (k, row, tried, at) in log.acked {
                report.acked.insert(k, (row, at));
                report.attempted.insert(k, tried);
            }
            report.unknown.extend(log.unknown);
            report.errors.extend(log.errors);
        }
        report
    }
}

async fn connect(
    nodes: &[SocketAddr],
    certs: &std::path::Path,
    start: usize,
) -> (AdminClient, usize) {
    let mut i = start;
    loop {
        match AdminClient::connect(nodes[i % nodes.len()], certs, "admin").await {
            Ok(c) => return (c, i),
            Err(_) => {
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn writer(
    nodes: Vec<SocketAddr>,
    certs: PathBuf,
    table: String,
    w: usize,
    max_writes: usize,
    stop: Arc<AtomicBool>,
) -> WriterLog {
    let mut log = WriterLog::default();
    let (mut client, mut at) = connect(&nodes, &certs, w).await;
    for i in 0..max_writes {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let key = (w * 1_000_000 + i) as i64;
        let row = serde_json::json!({ "id": key, "w": w, "i": i }).to_string();
        let started = Instant::now();
        let mut done = false;
        while started.elapsed() < RETRY_LIMIT {
            let tried = Instant::now();
            let attempt = tokio::time::timeout(Duration::from_secs(10), client.put(&table, &row));
            match attempt.await {
                Ok(Ok(_)) => {
                    log.acked.push((key, row.clone(), tried, Instant::now()));
                    done = true;
                    break;
                }
                Ok(Err(e)) => {
                    log.errors.push((Instant::now(), e.to_string()));
                    if matches!(e, ClientError::Transport(_)) {
                        (client, at) = connect(&nodes, &certs, at + 1).await;
                    }
                }
                Err(_) => {
                    log.errors
                        .push((Instant::now(), "no answer in 10 s".into()));
                    (client, at) = connect(&nodes, &certs, at + 1).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !done {
            log.unknown.push(key);
        }
    }
    client.close().await;
    log
}

/// Reads every acknowledged key back with a strong read through `client`
/// (retrying for a while: a shard may be changing configuration); returns
/// the keys that are missing or hold another row.
pub async fn lost_writes(
    client: &AdminClient,
    table: &str,
    acked: &BTreeMap<i64, (String, Instant)>,
) -> Result<Vec<String>, String> {
    let started = Instant::now();
    let rows = loop {
        match client
            .scan(table, None, None, 10_000, ReadMode::Strong)
            .await
        {
            Ok(rows) => break rows,
            Err(e) if started.elapsed() > Duration::from_secs(20) => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let found: BTreeMap<SplitKey, String> = rows.into_iter().map(|(k, r)| (k, r.json)).collect();
    Ok(acked
        .iter()
        .filter_map(|(k, (row, _))| match found.get(&SplitKey::Int(*k)) {
            Some(r) if r == row => None,
            Some(r) => Some(format!("key {k}: acknowledged {row}, found {r}")),
            None => Some(format!("key {k}: acknowledged {row}, missing")),
        })
        .collect())
}

/// For each shard: how long after `since` the first write to it that was
/// sent after `since` was acknowledged (writes in flight at `since` do not
/// count: they may have committed just before).
pub fn first_ack_per_shard(
    t: &Table,
    report: &LoadReport,
    since: Instant,
) -> BTreeMap<u32, Duration> {
    let mut out = BTreeMap::new();
    for (k, (_, at)) in &report.acked {
        if report.attempted.get(k).is_none_or(|tried| *tried < since) {
            continue;
        }
        let shard = t.shard_of(&SplitKey::Int(*k));
        let d = at.duration_since(since);
        out.entry(shard)
            .and_modify(|x: &mut Duration| *x = (*x).min(d))
            .or_insert(d);
    }
    out
}
