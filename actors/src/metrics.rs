//! What a node counts for its Prometheus endpoint (`tstore start
//! --metrics-listen`), as plain atomics the hot paths bump: client requests
//! by operation and outcome with their latency, and the group commit's batch
//! sizes and commit (fsync) time. Gauges (gossip, Raft, shard copies) are not
//! kept here: they are read from their owners when a scrape asks
//! ([`crate::observe`]). A leaf module: it knows no actor.
//!
//! The histograms are fixed arrays of atomic counters rather than a metrics
//! crate's histogram, which takes a lock per observation: a request costs a
//! few relaxed atomic additions and nothing else.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tstore_core::wire::{DataReply, DataRequest, ErrorKind, ShardRequest};

/// Latency buckets, in seconds: 100 µs to 10 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Group commit batch size buckets (writes per LMDB transaction).
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// A histogram of fixed buckets, each an atomic counter.
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// One per bound, then one past the last (`+Inf`); not cumulative.
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of the observations, in units of `1 / scale`.
    sum: AtomicU64,
    scale: f64,
}

/// A histogram's figures at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations in this bucket only)`, the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl AtomicHistogram {
    /// `bounds` increase; sums are kept to `1 / scale` (e.g. `1e9` for
    /// seconds kept in nanoseconds).
    pub fn new(bounds: &'static [f64], scale: f64) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    pub fn observe(&self, v: f64) {
        // Prometheus buckets count `v <= bound`.
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum
            .fetch_add((v.max(0.0) * self.scale) as u64, Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64())
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect::<Vec<_>>();
        HistogramSnapshot {
            // Counted from the buckets, so `_count` equals the `+Inf` bucket.
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum: self.sum.load(Relaxed) as f64 / self.scale,
        }
    }
}

/// The operations of client requests, as the `op` label says them.
pub const OPS: [&str; 5] = ["write", "get", "scan", "status", "copies"];

/// The outcomes of client requests, as the `outcome` label says them:
/// `ok`, or the kind of the error.
pub const OUTCOMES: [&str; 10] = [
    "ok",
    "invalid",
    "conflict",
    "unavailable",
    "unknown",
    "too_large",
    "bad_key",
    "no_table",
    "stale",
    "expired",
];

fn op_index(req: &DataRequest) -> usize {
    match req {
        DataRequest::Routed { request, .. } => match request {
            ShardRequest::Write { .. } => 0,
            ShardRequest::Get { .. } => 1,
            ShardRequest::Scan { .. } => 2,
            ShardRequest::Status { .. } | ShardRequest::Middle { .. } => 3,
        },
        DataRequest::Copies { .. } => 4,
    }
}

fn outcome_index(reply: &DataReply) -> usize {
    match reply {
        DataReply::Error(e) => match e.kind {
            ErrorKind::Invalid => 1,
            ErrorKind::Conflict => 2,
            ErrorKind::Unavailable => 3,
            ErrorKind::Unknown => 4,
            ErrorKind::TooLarge => 5,
            ErrorKind::BadKey => 6,
            ErrorKind::NoTable => 7,
            ErrorKind::Stale => 8,
            ErrorKind::Expired => 9,
        },
        _ => 0,
    }
}

/// The client requests a node served: counts by operation and outcome,
/// latency by operation. Shared (cloning shares it).
#[derive(Clone)]
pub struct RequestMetrics(Arc<RequestCounters>);

struct RequestCounters {
    counts: [[AtomicU64; OUTCOMES.len()]; OPS.len()],
    latency: [AtomicHistogram; OPS.len()],
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self(Arc::new(RequestCounters {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| AtomicHistogram::new(LATENCY_BOUNDS, 1e9)),
        }))
    }
}

/// Which operation a request is, taken before it is served (it is moved).
#[derive(Debug, Clone, Copy)]
pub struct OpKind(usize);

impl OpKind {
    pub fn of(req: &DataRequest) -> Self {
        Self(op_index(req))
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}

impl RequestMetrics {
    /// A request of kind `op` was answered `reply` after `elapsed`.
    pub fn served(&self, op: OpKind, reply: &DataReply, elapsed: Duration) {
        self.0.counts[op.0][outcome_index(reply)].fetch_add(1, Relaxed);
        self.0.latency[op.0].observe_duration(elapsed);
    }

    /// `(op, outcome, count)` for every pair.
    pub fn counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(OPS.len() * OUTCOMES.len());
        for (o, op) in OPS.iter().enumerate() {
            for (k, outcome) in OUTCOMES.iter().enumerate() {
                out.push((*op, *outcome, self.0.counts[o][k].load(Relaxed)));
            }
        }
        out
    }

    /// `(op, latency)` for every operation.
    pub fn latencies(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        OPS.iter()
            .zip(&self.0.latency)
            .map(|(op, h)| (*op, h.snapshot()))
            .collect()
    }
}

/// The group commit's figures: writes per LMDB transaction and how long the
/// transaction's commit (its fsync) took. Shared (cloning shares it).
#[derive(Clone)]
pub struct CommitMetrics(Arc<CommitHistograms>);

struct CommitHistograms {
    batch: AtomicHistogram,
    seconds: AtomicHistogram,
}

impl Default for CommitMetrics {
    fn default() -> Self {
        Self(Arc::new(CommitHistograms {
            batch: AtomicHistogram::new(BATCH_BOUNDS, 1.0),
            seconds: AtomicHistogram::new(LATENCY_BOUNDS, 1e9),
        }))
    }
}

impl std::fmt::Debug for CommitMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitMetrics").finish_non_exhaustive()
    }
}

impl CommitMetrics {
    /// One transaction of `writes` pieces committed in `took`.
    pub fn committed(&self, writes: usize, took: Duration) {
        self.0.batch.observe(writes as f64);
        self.0.seconds.observe_duration(took);
    }

    pub fn batch_sizes(&self) -> HistogramSnapshot {
        self.0.batch.snapshot()
    }

    pub fn commit_seconds(&self) -> HistogramSnapshot {
        self.0.seconds.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_the_first_bucket_that_holds_it() {
        let h = AtomicHistogram::new(&[1.0, 2.0, 4.0], 1.0);
        for v in [0.5, 1.0, 1.5, 4.0, 9.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(1.0, 2), (2.0, 1), (4.0, 1), (f64::INFINITY, 1)]
        );
        assert_eq!(s.count, 5);
        assert_eq!(s.sum, 15.0);
    }

    #[test]
    fn requests_are_counted_by_operation_and_outcome() {
        let m = RequestMetrics::default();
        let copies = DataRequest::Copies {
            table: "t".into(),
            checksums: false,
        };
        let op = OpKind::of(&copies);
        m.served(op, &DataReply::Copies(vec![]), Duration::from_millis(2));
        m.served(
            op,
            &DataReply::Error(tstore_core::wire::DataError::unavailable("x")),
            Duration::from_millis(3),
        );
        let counts = m.counts();
        assert!(counts.contains(&("copies", "ok", 1)));
        assert!(counts.contains(&("copies", "unavailable", 1)));
        assert_eq!(counts.iter().map(|c| c.2).sum::<u64>(), 2);
        let (_, lat) = m.latencies().into_iter().find(|l| l.0 == "copies").unwrap();
        assert_eq!(lat.count, 2);
        assert!((lat.sum - 0.005).abs() < 1e-6);
    }
}
