//! How a node's shard copies came back since it started: from their own
//! rows and the primaries' logs, or from snapshots (`node-stats` shows it).
//! Shared by the copy actors and the snapshot server; a leaf module.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tstore_core::wire::RecoveryStats;

/// How copies were rebuilt on this node since start (shared by its copy
/// actors and its snapshot server; read by `node-stats`).
#[derive(Clone, Default)]
pub struct Recovery(Arc<RecoveryCounters>);

#[derive(Default)]
struct RecoveryCounters {
    rejoined: AtomicU64,
    installed: AtomicU64,
    installed_bytes: AtomicU64,
    served: AtomicU64,
    served_bytes: AtomicU64,
    log_entries_sent: AtomicU64,
}

impl Recovery {
    /// A copy became a learner keeping the rows it held.
    pub fn rejoined(&self) {
        self.0.rejoined.fetch_add(1, Relaxed);
    }

    /// A snapshot of `bytes` was installed here.
    pub fn installed(&self, bytes: u64) {
        self.0.installed.fetch_add(1, Relaxed);
        self.0.installed_bytes.fetch_add(bytes, Relaxed);
    }

    /// A snapshot of `bytes` was served to a learner.
    pub fn served(&self, bytes: u64) {
        self.0.served.fetch_add(1, Relaxed);
        self.0.served_bytes.fetch_add(bytes, Relaxed);
    }

    /// `n` entries were read from the durable log for a copy catching up.
    pub fn log_sent(&self, n: u64) {
        self.0.log_entries_sent.fetch_add(n, Relaxed);
    }

    pub fn stats(&self) -> RecoveryStats {
        let c = &self.0;
        RecoveryStats {
            rejoined_from_own_data: c.rejoined.load(Relaxed),
            snapshots_installed: c.installed.load(Relaxed),
            snapshot_bytes_installed: c.installed_bytes.load(Relaxed),
            snapshots_served: c.served.load(Relaxed),
            snapshot_bytes_served: c.served_bytes.load(Relaxed),
            log_entries_sent: c.log_entries_sent.load(Relaxed),
        }
    }
}
