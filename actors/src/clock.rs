//! The node's two clocks, read in one place and passed into the pure core
//! as plain numbers.

use std::sync::OnceLock;
use std::time::Instant;

use tstore_core::replication::Millis;

/// Milliseconds since this process started (monotonic): leases, silence,
/// health timers.
pub fn now_ms() -> Millis {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as Millis
}

/// The wall clock, unix ms: stamps logged writes for client sessions and
/// shard changes in the map's event log.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
