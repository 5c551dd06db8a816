//! Closed-loop load client for etcd.
//!
//! `concurrency` tasks share one budget of `ops` requests; each task sends its
//! next request only once the previous one has answered, on a key drawn
//! uniformly from `keys` keys. This is how `tstore bench` drives tstore, so the
//! two figures describe the same load. A request that fails (or is still
//! pending at the time limit) counts as an error and is not retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use etcd_client::{Client, GetOptions};
use hdrhistogram::Histogram;
use tokio::time::timeout_at;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Put: a durable write, committed through Raft.
    Put,
    /// Linearizable get (etcd's default): confirmed with the leader.
    Get,
    /// Serializable get: served from the local member's store.
    GetSerializable,
}

#[derive(Parser, Debug)]
#[command(about = "Closed-loop etcd load: fixed concurrency, fixed operation count")]
struct Args {
    /// Comma-separated client endpoints, e.g. 127.0.0.1:2379,127.0.0.1:2381.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Requests in flight: this many tasks, one outstanding request each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Keys are drawn uniformly from this many keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Requests to send in the measured run (all tasks together).
    #[arg(long, default_value_t = 200_000)]
    ops: u64,
    #[arg(long, value_enum, default_value_t = Mode::Put)]
    mode: Mode,
    /// Stop the measured run (and the preload) after this many seconds.
    #[arg(long, default_value_t = 300)]
    time_limit: u64,
    /// Get modes: skip writing every key once before measuring (for a run
    /// that follows a put run over the same keys, as `tstore bench --no-preload`).
    #[arg(long)]
    no_preload: bool,
    /// Key prefix.
    #[arg(long, default_value = "etcd-load/")]
    prefix: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn key(prefix: &str, i: u64) -> String {
    format!("{prefix}{i:08}")
}

/// xorshift64*: enough for uniform key choice, one state per task.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

struct Outcome {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `ops` requests over `concurrency` closed-loop tasks. With `keys_in_order`
/// (the preload) key i is the i-th request; otherwise keys are uniform.
async fn run(
    client: &Client,
    args: &Args,
    mode: Mode,
    ops: u64,
    keys_in_order: bool,
) -> (Outcome, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let value: Arc<Vec<u8>> = Arc::new(
        (0..args.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect(),
    );
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.time_limit);
    let mut tasks = Vec::with_capacity(args.concurrency);
    for t in 0..args.concurrency {
        let mut kv = client.kv_client();
        let next = next.clone();
        let value = value.clone();
        let prefix = args.prefix.clone();
        let nkeys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(t as u64 + 1);
            let mut out = Outcome {
                hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
                ok: 0,
                errors: 0,
                first_error: None,
            };
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ops || tokio::time::Instant::now() >= deadline {
                    break;
                }
                let k = key(&prefix, if keys_in_order { n } else { rng.below(nkeys) });
                let sent = Instant::now();
                let res = match mode {
                    Mode::Put => timeout_at(deadline, kv.put(k, value.as_slice(), None))
                        .await
                        .map(|r| r.map(|_| ())),
                    Mode::Get => timeout_at(deadline, kv.get(k, None))
                        .await
                        .map(|r| r.map(|_| ())),
                    Mode::GetSerializable => timeout_at(
                        deadline,
                        kv.get(k, Some(GetOptions::new().with_serializable())),
                    )
                    .await
                    .map(|r| r.map(|_| ())),
                };
                match res {
                    Ok(Ok(())) => {
                        out.ok += 1;
                        let us = sent.elapsed().as_micros().max(1) as u64;
                        out.hist.saturating_record(us);
                    }
                    Ok(Err(e)) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                    Err(_) => {
                        out.errors += 1;
                        out.first_error
                            .get_or_insert_with(|| "time limit reached".into());
                        break;
                    }
                }
            }
            out
        }));
    }
    let mut total = Outcome {
        hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
        ok: 0,
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        match t.await {
            Ok(o) => {
                total.hist.add(&o.hist).expect("same histogram bounds");
                total.ok += o.ok;
                total.errors += o.errors;
                if total.first_error.is_none() {
                    total.first_error = o.first_error;
                }
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("task failed: {e}"));
            }
        }
    }
    (total, start.elapsed())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.concurrency == 0 || args.keys == 0 {
        eprintln!("etcd-load: --concurrency and --keys must be at least 1");
        std::process::exit(2);
    }
    let client = match tokio::time::timeout(
        Duration::from_secs(10),
        Client::connect(args.endpoints.clone(), None),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("etcd-load: cannot connect to {:?}: {e}", args.endpoints);
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("etcd-load: connecting to {:?} timed out", args.endpoints);
            std::process::exit(1);
        }
    };

    if args.mode != Mode::Put && !args.no_preload {
        let (pre, took) = run(&client, &args, Mode::Put, args.keys, true).await;
        if pre.errors > 0 {
            eprintln!(
                "etcd-load: preload of {} keys: {} errors (first: {})",
                args.keys,
                pre.errors,
                pre.first_error.unwrap_or_default()
            );
            std::process::exit(1);
        }
        if !args.json {
            println!(
                "preloaded {} keys in {:.1} s",
                args.keys,
                took.as_secs_f64()
            );
        }
    }

    let (out, took) = run(&client, &args, args.mode, args.ops, false).await;
    let secs = took.as_secs_f64();
    let ops_per_sec = if secs > 0.0 {
        out.ok as f64 / secs
    } else {
        0.0
    };
    let p = |q: f64| {
        if out.ok > 0 {
            out.hist.value_at_quantile(q) as f64 / 1000.0
        } else {
            0.0
        }
    };
    if args.json {
        let j = serde_json::json!({
            "mode": format!("{:?}", args.mode),
            "ops_per_sec": ops_per_sec,
            "p50_ms": p(0.50),
            "p99_ms": p(0.99),
            "count": out.ok,
            "errors": out.errors,
            "seconds": secs,
            "concurrency": args.concurrency,
            "keys": args.keys,
            "value_size": args.value_size,
        });
        println!("{j}");
    } else {
        println!(
            "{:?}: {} ok, {} errors in {:.2} s: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
            args.mode,
            out.ok,
            out.errors,
            secs,
            ops_per_sec,
            p(0.50),
            p(0.99)
        );
    }
    if let Some(e) = &out.first_error {
        eprintln!("etcd-load: first error: {e}");
    }
    if out.ok == 0 {
        std::process::exit(1);
    }
}
