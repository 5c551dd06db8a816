//! A write load for failure tests: several writers, each putting its own
//! numbered keys one after another, remembering exactly which writes were
//! acknowledged (with which row and which version), so a test can check
//! afterwards that every acknowledged write survived with its content and
//! that the acknowledgements fit one history per shard.
//!
//! Every row carries the load's nonce, so two loads writing the same keys
//! never write byte-identical rows: a write of a later load that is lost
//! shows up as the earlier load's row.
//!
//! Writers use the routing client the CLI uses, with a retry budget of
//! [`RETRY_LIMIT`]: it resends a write with its request identity (applied
//! once however often it arrives) and routes around a dead node. A write it
//! gives up on is recorded as unknown (it may or may not have been applied),
//! not counted as acknowledged, and never resent as a new request. Every writer stops after `max_writes` or when told to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tstore_client::admin::AdminClient;
use tstore_client::cluster_map::{RowKey, Table};
use tstore_client::data::{ReadMode, RowRecord};
use tstore_client::routing::{Client, ClientOptions};
use tstore_transport::certs::CertDir;
use tstore_transport::Role;

/// How long the client retries one write before it counts as unknown.
pub const RETRY_LIMIT: Duration = Duration::from_secs(20);

/// Rows per page of [`scan_all`]: below the router's cap on one scan
/// (`MAX_SCAN`, 10,000), so a short page means the end of the table.
pub const SCAN_PAGE: usize = 2_000;

/// Most pages [`scan_all`] reads (2,000,000 rows).
const MAX_PAGES: usize = 1_000;

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The row as sent.
    pub row: String,
    /// The version the write was acknowledged with (its log sequence number
    /// in the shard).
    pub version: u64,
    /// When the successful attempt was sent.
    pub tried: Instant,
    /// When it was acknowledged.
    pub at: Instant,
}

/// What one writer saw.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Acknowledged writes, by key.
    pub acked: Vec<(i64, Acked)>,
    /// Keys whose write never got an answer either way.
    pub unknown: Vec<i64>,
    /// Failed attempts: when, and the error.
    pub errors: Vec<(Instant, String)>,
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<WriterLog>>,
    nonce: u64,
}

/// Everything the writers saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Key → its acknowledged write.
    pub acked: BTreeMap<i64, Acked>,
    pub unknown: Vec<i64>,
    pub errors: Vec<(Instant, String)>,
    /// The nonce every row of this load carries (column `load`).
    pub nonce: u64,
}

impl LoadReport {
    /// How many writes were sent at or after `since` and acknowledged.
    pub fn acked_since(&self, since: Instant) -> usize {
        self.acked.values().filter(|a| a.tried >= since).count()
    }
}

/// A value no other load of this test binary uses.
pub fn nonce() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // The low bits count loads of this process; the rest vary by run. Kept
    // below 2^53 so that any JSON reader takes it exactly.
    let n = ((nanos << 16) ^ (u64::from(std::process::id()) << 32))
        | (NEXT.fetch_add(1, Ordering::SeqCst) & 0xffff);
    n & ((1 << 53) - 1)
}

impl Load {
    /// Starts `writers` writers on `table`; writer `w` talks to
    /// `nodes[w % len]` first and writes keys `w * 1_000_000 + i`, each row
    /// tagged with this load's nonce.
    pub fn start(
        nodes: Vec<SocketAddr>,
        certs: PathBuf,
        table: &str,
        writers: usize,
        max_writes: usize,
    ) -> Self {
        Self::start_writers(nodes, certs, table, 0..writers, max_writes)
    }

    /// [`Load::start`] with clients that send every request through
    /// `nodes` (`ClientOptions::pinned`), which forward it: a load that
    /// reaches the cluster only through those nodes.
    pub fn start_pinned(
        nodes: Vec<SocketAddr>,
        certs: PathBuf,
        table: &str,
        writers: usize,
        max_writes: usize,
    ) -> Self {
        Self::spawn(nodes, certs, table, 0..writers, max_writes, true)
    }

    /// [`Load::start`] with the writers numbered `ids`, so that loads
    /// running side by side write disjoint keys.
    pub fn start_writers(
        nodes: Vec<SocketAddr>,
        certs: PathBuf,
        table: &str,
        ids: std::ops::Range<usize>,
        max_writes: usize,
    ) -> Self {
        Self::spawn(nodes, certs, table, ids, max_writes, false)
    }

    fn spawn(
        nodes: Vec<SocketAddr>,
        certs: PathBuf,
        table: &str,
        ids: std::ops::Range<usize>,
        max_writes: usize,
        pinned: bool,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let nonce = nonce();
        let writers = ids
            .map(|w| {
                let (nodes, certs, table, stop) =
                    (nodes.clone(), certs.clone(), table.to_owned(), stop.clone());
                tokio::spawn(async move {
                    let client = connect(&nodes, &certs, w, pinned).await;
                    writer(client, table, w, max_writes, nonce, stop).await
                })
            })
            .collect();
        Self {
            stop,
            writers,
            nonce,
        }
    }

    /// Stops the writers and collects what they saw.
    pub async fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        self.collect().await
    }

    /// Lets every writer finish its `max_writes` (each write is bounded by
    /// the client's retry limit), then collects what they saw.
    pub async fn run_to_end(mut self) -> LoadReport {
        self.collect().await
    }

    async fn collect(&mut self) -> LoadReport {
        let mut report = LoadReport {
            nonce: self.nonce,
            ..LoadReport::default()
        };
        for w in std::mem::take(&mut self.writers) {
            let log = w.await.expect("writer task");
            for (k, a) in log.acked {
                let dup = report.acked.insert(k, a);
                assert!(dup.is_none(), "key {k} written twice by one load");
            }
            report.unknown.extend(log.unknown);
            report.errors.extend(log.errors);
        }
        report
    }
}

/// A routing client that knows every node, `nodes[start % len]` first;
/// tries for at most 30 s.
async fn connect(
    nodes: &[SocketAddr],
    certs: &std::path::Path,
    start: usize,
    pinned: bool,
) -> Client {
    let mut seeds = nodes.to_vec();
    seeds.rotate_left(start % nodes.len());
    let identity = CertDir::new(certs)
        .identity(Role::Client, "admin")
        .expect("the test cluster's client certificate");
    let options = ClientOptions {
        retry_for: RETRY_LIMIT,
        pinned,
        ..ClientOptions::default()
    };
    let began = Instant::now();
    loop {
        match Client::connect_with(&seeds, identity.clone(), options.clone()).await {
            Ok(c) => return c,
            Err(e) if began.elapsed() > Duration::from_secs(30) => {
                panic!("no node of {nodes:?} accepted a connection in 30 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Puts keys one after another. The routing client owns the retries (with
/// the write's identity, so a resend is applied once); a write it gives up
/// on is recorded as unknown, never sent again as a new request.
async fn writer(
    client: Client,
    table: String,
    w: usize,
    max_writes: usize,
    nonce: u64,
    stop: Arc<AtomicBool>,
) -> WriterLog {
    let mut log = WriterLog::default();
    for i in 0..max_writes {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let key = (w * 1_000_000 + i) as i64;
        let row = serde_json::json!({ "id": key, "w": w, "i": i, "load": nonce }).to_string();
        let tried = Instant::now();
        match client.put(&table, &row).await {
            Ok(version) => log.acked.push((
                key,
                Acked {
                    row,
                    version,
                    tried,
                    at: Instant::now(),
                },
            )),
            Err(e) => {
                log.errors.push((Instant::now(), e.to_string()));
                log.unknown.push(key);
            }
        }
    }
    client.close().await;
    log
}

/// The smallest key above `k`.
fn next_key(k: &RowKey) -> RowKey {
    match k {
        RowKey::Int(i) => RowKey::Int(i.checked_add(1).expect("key below i64::MAX")),
        RowKey::Str(s) => RowKey::Str(format!("{s}\0")),
    }
}

/// Every row of `table` in key order, read in pages of [`SCAN_PAGE`] (each
/// continuing after the previous page's last key), so the router's cap on
/// one scan never truncates it. A page that fails (a shard changing
/// configuration) is retried; the whole read is bounded by `limit`.
pub async fn scan_all(
    client: &AdminClient,
    table: &str,
    mode: ReadMode,
    limit: Duration,
) -> Result<Vec<(RowKey, RowRecord)>, String> {
    let started = Instant::now();
    let mut rows: Vec<(RowKey, RowRecord)> = Vec::new();
    for _ in 0..MAX_PAGES {
        let from = rows.last().map(|(k, _)| next_key(k));
        let page = loop {
            match client
                .scan(table, from.clone(), None, SCAN_PAGE, mode)
                .await
            {
                Ok(page) => break page,
                Err(e) if started.elapsed() > limit => {
                    return Err(format!("scan of {table} after {} rows: {e}", rows.len()))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        if page.len() > SCAN_PAGE {
            return Err(format!(
                "a page of {} rows, asked for {SCAN_PAGE}",
                page.len()
            ));
        }
        let full = page.len() == SCAN_PAGE;
        for (k, r) in page {
            if let Some((last, _)) = rows.last() {
                if k <= *last {
                    return Err(format!("scan of {table}: key {k} after {last}"));
                }
            }
            rows.push((k, r));
        }
        if !full {
            return Ok(rows);
        }
    }
    Err(format!(
        "{table} has more than {} rows",
        MAX_PAGES * SCAN_PAGE
    ))
}

/// What [`lost_writes`] found.
#[derive(Debug)]
pub struct Check {
    /// Acknowledged writes that are missing, hold another row, or an older
    /// version than acknowledged.
    pub lost: Vec<String>,
    /// Rows read back (the whole table).
    pub examined: usize,
}

/// Reads the whole table back with strong reads through `client` (paged,
/// retrying for a while: a shard may be changing configuration) and returns
/// the acknowledged writes that are missing, hold another row, or hold the
/// row at a version older than the acknowledged one (a later version of the
/// same row is a retried attempt that was applied again).
pub async fn lost_writes(
    client: &AdminClient,
    table: &str,
    acked: &BTreeMap<i64, Acked>,
) -> Result<Check, String> {
    let rows = scan_all(client, table, ReadMode::Strong, Duration::from_secs(60)).await?;
    let examined = rows.len();
    let found: BTreeMap<RowKey, RowRecord> = rows.into_iter().collect();
    let lost = acked
        .iter()
        .filter_map(|(k, a)| match found.get(&RowKey::Int(*k)) {
            Some(r) if r.json == a.row && r.version >= a.version => None,
            Some(r) if r.json == a.row => Some(format!(
                "key {k}: acknowledged {} at version {}, found it at older version {}",
                a.row, a.version, r.version
            )),
            Some(r) => Some(format!(
                "key {k}: acknowledged {} at version {}, found {} at version {}",
                a.row, a.version, r.json, r.version
            )),
            None => Some(format!("key {k}: acknowledged {}, missing", a.row)),
        })
        .collect();
    Ok(Check { lost, examined })
}

/// Acknowledgements that cannot come from one history per shard. A version
/// is the sequence number of the shard's log entry, so within a shard: no
/// two acknowledged writes share a version, and a write sent after another
/// was acknowledged has a higher version. Two primaries taking writes at
/// once break one or the other.
pub fn history_violations<'a>(
    t: &Table,
    acked: impl IntoIterator<Item = (&'a i64, &'a Acked)>,
) -> Vec<String> {
    history_violations_by(|k, version| history_of(t, k, version), acked)
}

/// The history a write acknowledged at `version` belongs to: its key's
/// shard in `t`, but a write made before the merge that gave that shard the
/// key belongs to the shard merged away (numbered down from `u32::MAX`),
/// whose log numbered its versions on its own. (Only a shard's newest merge
/// is in the map: a test merges a shard once.)
fn history_of(t: &Table, k: i64, version: u64) -> u32 {
    let key = RowKey::Int(k);
    let s = t.shard_of(&key);
    match &t.shards[s as usize].merged {
        Some(m) if version < m.log_from() && m.range.contains(&key) => u32::MAX - m.absorbed,
        _ => s,
    }
}

/// [`history_violations`] with writes placed by `shard_of(key, version)`.
fn history_violations_by<'a>(
    shard_of: impl Fn(i64, u64) -> u32,
    acked: impl IntoIterator<Item = (&'a i64, &'a Acked)>,
) -> Vec<String> {
    let mut by_shard: BTreeMap<u32, Vec<(i64, &Acked)>> = BTreeMap::new();
    for (k, a) in acked {
        by_shard
            .entry(shard_of(*k, a.version))
            .or_default()
            .push((*k, a));
    }
    let mut out = Vec::new();
    for (shard, mut acks) in by_shard {
        let mut seen: BTreeMap<u64, i64> = BTreeMap::new();
        for (k, a) in &acks {
            if let Some(other) = seen.insert(a.version, *k) {
                out.push(format!(
                    "shard {shard}: keys {other} and {k} both acknowledged at version {}",
                    a.version
                ));
            }
        }
        // Sweep in order of sending, folding in every write acknowledged
        // before the current one was sent.
        let mut by_ack: Vec<(i64, &Acked)> = acks.clone();
        by_ack.sort_by_key(|(_, a)| a.at);
        acks.sort_by_key(|(_, a)| a.tried);
        let mut done = 0;
        let mut highest: Option<(u64, i64)> = None;
        for (k, a) in &acks {
            while done < by_ack.len() && by_ack[done].1.at < a.tried {
                let (dk, d) = by_ack[done];
                if highest.is_none_or(|(v, _)| d.version > v) {
                    highest = Some((d.version, dk));
                }
                done += 1;
            }
            if let Some((v, hk)) = highest {
                if v >= a.version {
                    out.push(format!(
                        "shard {shard}: key {k} sent after key {hk} was acknowledged at version {v}, yet acknowledged at version {}",
                        a.version
                    ));
                }
            }
        }
    }
    out
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
    for (k, a) in &report.acked {
        if a.tried < since {
            continue;
        }
        let shard = t.shard_of(&RowKey::Int(*k));
        let d = a.at.duration_since(since);
        out.entry(shard)
            .and_modify(|x: &mut Duration| *x = (*x).min(d))
            .or_insert(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(version: u64, base: Instant, tried_ms: u64, at_ms: u64) -> Acked {
        Acked {
            row: String::new(),
            version,
            tried: base + Duration::from_millis(tried_ms),
            at: base + Duration::from_millis(at_ms),
        }
    }

    fn check(acks: &[(i64, Acked)]) -> Vec<String> {
        let map: BTreeMap<i64, Acked> = acks.iter().cloned().collect();
        history_violations_by(|k, _| (k % 2) as u32, &map)
    }

    #[test]
    fn one_history_per_shard_passes() {
        let t = Instant::now();
        // Overlapping writes may commit in either order; shards are separate.
        let ok = check(&[
            (0, ack(5, t, 0, 10)),
            (2, ack(4, t, 1, 12)),
            (4, ack(6, t, 11, 20)),
            (1, ack(5, t, 30, 40)),
        ]);
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn two_primaries_are_caught() {
        let t = Instant::now();
        // The same version handed out twice in one shard.
        let dup = check(&[(0, ack(7, t, 0, 10)), (2, ack(7, t, 0, 10))]);
        assert_eq!(dup.len(), 1, "{dup:?}");
        // A write sent after another was acknowledged, at a lower version.
        let stale = check(&[(0, ack(9, t, 0, 10)), (2, ack(8, t, 20, 30))]);
        assert_eq!(stale.len(), 1, "{stale:?}");
    }
}
