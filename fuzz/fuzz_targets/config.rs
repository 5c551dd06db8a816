//! The node's TOML configuration: parsing, then resolving (defaults and
//! range checks), alone and under flags. A configuration that resolves must
//! be one the node can run with: every duration in it can be added to a
//! clock reading without overflowing.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tstore_node::config::{NodeConfig, NodeOptions};

/// A clock reading in milliseconds far in the future (about 35 years of
/// uptime), as the replication state machines keep time.
const LATE_MS: u64 = 1 << 40;

fn check(cfg: &NodeConfig) {
    let now = Instant::now();
    for (what, d) in [
        ("gossip interval", cfg.membership.gossip_interval),
        ("dead node grace", cfg.membership.dead_node_grace_period),
        ("request timeout", cfg.limits.request_timeout),
        ("voter replacement", cfg.control.voter_replace_after),
    ] {
        assert!(
            now.checked_add(d.saturating_mul(2)).is_some(),
            "{what} of {d:?} overflows the clock"
        );
    }
    for (what, ms) in [
        ("lease", cfg.lease.lease),
        ("grace", cfg.lease.grace),
        ("heartbeat", cfg.lease.heartbeat),
    ] {
        assert!(
            ms.checked_mul(2)
                .and_then(|m| m.checked_add(LATE_MS))
                .is_some(),
            "{what} of {ms} ms overflows the clock"
        );
        assert!(now.checked_add(Duration::from_millis(ms)).is_some());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(options) = NodeOptions::parse(text) else {
        return;
    };
    if let Ok(cfg) = options.clone().resolve() {
        check(&cfg);
    }
    let flags = NodeOptions {
        gossip_interval_ms: Some(100),
        ..Default::default()
    };
    if let Ok(cfg) = flags.over(options).resolve() {
        check(&cfg);
    }
});
