//! `tstore bench`: a load generator against a running cluster.
//!
//! `--concurrency` workers share a few clients (QUIC connections carry many
//! concurrent requests) and run `--ops` operations in total, each a durable
//! replicated write (put) or a read (get, `--read strong|replica|session`)
//! of a random key, in the ratio `--mix`. The clients are routing clients
//! ([`Client`]: each key straight to its shard's primary or a replica), as
//! the CLI's. Latencies go into HDR histograms; the report gives
//! ops/s, p50/p99/p99.9 per operation and the error count, as text or JSON.
//! Every worker stops when the operations are done or `--max-seconds` passes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use tstore_core::cluster_map::{RowKey, Sharding, TableSpec};

use tstore_client::admin::AdminClient;
use tstore_client::routing::{Client, Consistency};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Any node of the cluster.
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub node: SocketAddr,
    #[arg(long, default_value = "certs")]
    pub certs: PathBuf,
    #[arg(long, default_value = "admin")]
    pub client_name: String,
    /// Table to use; created (hash-sharded) if it does not exist.
    #[arg(long, default_value = "bench")]
    pub table: String,
    /// Shards and replicas of the table when it is created.
    #[arg(long, default_value_t = 8)]
    pub shards: u32,
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Operations in total.
    #[arg(long, default_value_t = 100_000)]
    pub ops: u64,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Clients the workers share (each keeps one QUIC connection per node it
    /// uses). One, as an application shares one client among its tasks:
    /// what one client has in flight to a node travels together.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// How reads are served: strong, replica or session.
    #[arg(long, default_value_t = Consistency::Strong)]
    pub read: Consistency,
    /// Bytes of payload per row.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Operation mix, e.g. `write:50,read:50` or `write:100`.
    #[arg(long, default_value = "write:50,read:50")]
    pub mix: String,
    /// Fill every key once before measuring (so reads find rows).
    #[arg(long)]
    pub no_preload: bool,
    /// Stop after this long even if operations remain.
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also report every this many seconds: ops/s and the slowest write in
    /// the interval (how throughput moves while the cluster changes, e.g. as
    /// shards split); 0: only at the end.
    #[arg(long, default_value_t = 0)]
    pub interval_secs: u64,
}

/// One `--interval-secs` period.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// Seconds since the measured run started, at the end of the interval.
    pub at_secs: f64,
    pub ops_per_sec: f64,
    /// The slowest write that completed in the interval, in ms.
    pub write_max_ms: f64,
}

/// Parses `write:W,read:R` into the percentage of writes.
pub fn parse_mix(mix: &str) -> Result<u32, String> {
    let (mut w, mut r) = (0u32, 0u32);
    for part in mix.split(',') {
        let (kind, n) = part
            .split_once(':')
            .ok_or_else(|| format!("mix part {part:?} is not kind:weight"))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("mix weight {n:?} is not a whole number"))?;
        match kind.trim() {
            "write" => w += n,
            "read" => r += n,
            other => {
                return Err(format!(
                    "unknown operation {other:?} in mix (use write and read)"
                ))
            }
        }
    }
    if w + r == 0 {
        return Err("the mix has no weight".into());
    }
    Ok(w * 100 / (w + r))
}

#[derive(Debug, Serialize)]
pub struct OpStats {
    pub count: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub concurrency: usize,
    pub value_size: usize,
    pub write_percent: u32,
    pub read_mode: String,
    pub write: OpStats,
    pub read: OpStats,
    pub first_error: Option<String>,
    /// Row requests sent per QUIC stream during the run (requests in
    /// flight to one node at once share a stream).
    pub requests_per_stream: f64,
    /// With `--interval-secs`: one entry per interval.
    pub intervals: Vec<Interval>,
}

fn stats(h: &Histogram<u64>, errors: u64) -> OpStats {
    OpStats {
        count: h.len(),
        errors,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

/// A small deterministic generator per worker (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn row(key: u64, payload: &str) -> String {
    format!(r#"{{"id":{key},"v":"{payload}"}}"#)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let write_percent = parse_mix(&args.mix).map_err(anyhow::Error::msg)?;
    if args.concurrency == 0 || args.connections == 0 || args.keys == 0 {
        bail!("--concurrency, --connections and --keys must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(bench(args.clone(), write_percent))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} ops in {:.2}s: {:.0} ops/s (concurrency {}, {} B values, {}% writes, {} reads)",
            report.ops,
            report.seconds,
            report.ops_per_sec,
            report.concurrency,
            report.value_size,
            report.write_percent,
            report.read_mode,
        );
        for (name, s) in [("write", &report.write), ("read", &report.read)] {
            if s.count + s.errors > 0 {
                println!(
                    "  {name:5}  {:>8} ok  {:>6} errors  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
                    s.count,
                    s.errors,
                    s.p50_us as f64 / 1000.0,
                    s.p99_us as f64 / 1000.0,
                    s.p999_us as f64 / 1000.0,
                    s.max_us as f64 / 1000.0
                );
            }
        }
        println!(
            "  {:.1} requests per QUIC stream (what is in flight to a node at once travels together)",
            report.requests_per_stream
        );
        if let Some(e) = &report.first_error {
            println!("  first error: {e}");
        }
    }
    Ok(())
}

async fn bench(args: BenchArgs, write_percent: u32) -> anyhow::Result<Report> {
    let admin = AdminClient::connect(args.node, &args.certs, &args.client_name)
        .await
        .with_context(|| format!("connecting to {}", args.node))?;
    let (_, tables) = admin.tables().await?;
    if !tables.iter().any(|t| t.spec.name == args.table) {
        // A cluster that just formed may not have registered every node yet:
        // retry for a little while.
        let spec = TableSpec {
            name: args.table.clone(),
            key: "id".into(),
            sharding: Sharding::Hash {
                shards: args.shards,
            },
            replicas: args.replicas,
            min_copies: 0,
        };
        let mut attempt = 0;
        loop {
            match admin.create_table(spec.clone()).await {
                Ok(_) => break,
                Err(e) if attempt < 40 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "bench table not created yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).context("creating the bench table"),
            }
        }
        // Let every node start its copies.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        let conn = Client::connect(&[args.node], &args.certs, &args.client_name).await?;
        clients.push(Arc::new(conn));
    }
    let read = args.read;
    let payload: Arc<str> = "x".repeat(args.value_size).into();
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    if !args.no_preload {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..args.concurrency {
            let (client, next, payload) = (
                clients[w % clients.len()].clone(),
                next.clone(),
                payload.clone(),
            );
            let (table, keys) = (args.table.clone(), args.keys);
            tasks.push(tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= keys || Instant::now() > deadline {
                        return;
                    }
                    let _ = client.put(&table, &row(k, &payload)).await;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
    }

    let traffic = |clients: &[Arc<Client>]| {
        clients
            .iter()
            .map(|c| c.traffic())
            .fold((0, 0), |(r, s), t| (r + t.requests, s + t.streams))
    };
    let before = traffic(&clients);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // Completed operations, and the slowest write (µs), since the last
    // interval report.
    let done = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let reporter = (args.interval_secs > 0).then(|| {
        let (done, slowest, json) = (done.clone(), slowest.clone(), args.json);
        let every = Duration::from_secs(args.interval_secs);
        tokio::spawn(async move {
            let mut intervals = Vec::new();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut last = Instant::now();
            loop {
                tick.tick().await;
                let secs = last.elapsed().as_secs_f64();
                last = Instant::now();
                let i = Interval {
                    at_secs: started.elapsed().as_secs_f64(),
                    ops_per_sec: done.swap(0, Ordering::Relaxed) as f64 / secs,
                    write_max_ms: slowest.swap(0, Ordering::Relaxed) as f64 / 1000.0,
                };
                if !json {
                    println!(
                        "  at {:>6.1} s: {:>8.0} ops/s, slowest write {:>8.2} ms",
                        i.at_secs, i.ops_per_sec, i.write_max_ms
                    );
                }
                intervals.push(i);
                if Arc::strong_count(&done) == 1 {
                    return intervals; // the workers are done
                }
            }
        })
    });
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let (client, issued, payload) = (
            clients[w % clients.len()].clone(),
            issued.clone(),
            payload.clone(),
        );
        let (done, slowest) = (done.clone(), slowest.clone());
        let (table, keys, ops) = (args.table.clone(), args.keys, args.ops);
        tasks.push(tokio::spawn(async move {
            let mut rng =
                Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
            let mut wh = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut rh = wh.clone();
            let (mut werr, mut rerr, mut first_error) = (0u64, 0u64, None);
            while issued.fetch_add(1, Ordering::Relaxed) < ops && Instant::now() < deadline {
                let key = rng.next() % keys;
                let write = (rng.next() % 100) < u64::from(write_percent);
                let t0 = Instant::now();
                let res = if write {
                    client.put(&table, &row(key, &payload)).await.map(|_| ())
                } else {
                    let key = RowKey::Int(key as i64);
                    client.get(&table, key, read).await.map(|_| ())
                };
                let us = t0.elapsed().as_micros() as u64;
                done.fetch_add(1, Ordering::Relaxed);
                if write {
                    slowest.fetch_max(us, Ordering::Relaxed);
                }
                match (res, write) {
                    (Ok(()), true) => wh.saturating_record(us.max(1)),
                    (Ok(()), false) => rh.saturating_record(us.max(1)),
                    (Err(e), w) => {
                        if w {
                            werr += 1
                        } else {
                            rerr += 1
                        }
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (wh, rh, werr, rerr, first_error)
        }));
    }
    let mut wh = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut rh = wh.clone();
    let (mut werr, mut rerr, mut first_error) = (0, 0, None);
    for t in tasks {
        let (w, r, we, re, fe) = t.await?;
        wh.add(&w)?;
        rh.add(&r)?;
        werr += we;
        rerr += re;
        if first_error.is_none() {
            first_error = fe;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(done);
    let intervals = match reporter {
        Some(r) => r.await?,
        None => vec![],
    };
    let ok = wh.len() + rh.len();
    let after = traffic(&clients);
    let requests_per_stream = (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64;
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await
        }
    }
    admin.close().await;
    Ok(Report {
        ops: ok,
        seconds,
        ops_per_sec: ok as f64 / seconds,
        concurrency: args.concurrency,
        value_size: args.value_size,
        read_mode: format!("{:?}", args.read).to_lowercase(),
        write_percent,
        write: stats(&wh, werr),
        read: stats(&rh, rerr),
        first_error,
        requests_per_stream,
        intervals,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_mix;

    #[test]
    fn mixes() {
        assert_eq!(parse_mix("write:50,read:50"), Ok(50));
        assert_eq!(parse_mix("write:100"), Ok(100));
        assert_eq!(parse_mix("read:3,write:1"), Ok(25));
        assert!(parse_mix("delete:5")
            .unwrap_err()
            .contains("unknown operation"));
        assert!(parse_mix("write").is_err());
        assert!(parse_mix("write:0").is_err());
    }
}
