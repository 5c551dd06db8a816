//! Who this node still hears: the time of the last replication message
//! from each peer ([`Hearing`], fed by [`PeerDispatch`](crate::dispatch)),
//! and the task that reports the primaries gone silent to the coordinator
//! ([`watch_primaries`]). The decision is
//! `tstore_core::coordinator::suspicion`'s; this is its I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tstore_core::cluster_map::ClusterMap;
use tstore_core::coordinator::suspicion::{primaries_of, suspect_after, PrimaryWatch};
use tstore_core::replication::Millis;

use crate::clock::now_ms;
use crate::control::ControlPlane;

/// How often a node looks for silent primaries (and repeats its reports
/// while they stay silent).
pub const WATCH_EVERY: Duration = Duration::from_millis(50);

/// The last time (`now_ms`) a replication message came from each node.
#[derive(Clone, Default)]
pub struct Hearing(Arc<Mutex<HashMap<String, Millis>>>);

impl Hearing {
    /// A replication message from `node` arrived now.
    pub fn heard(&self, node: &str) {
        let now = now_ms();
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(node) {
            Some(at) => *at = now,
            None => {
                last.insert(node.to_owned(), now);
            }
        }
    }

    /// When `node` was last heard; `None` if never.
    pub fn last(&self, node: &str) -> Option<Millis> {
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        last.get(node).copied()
    }
}

/// Every [`WATCH_EVERY`], reports to the Raft leader each node that leads
/// a shard backed up here and has sent nothing for three replication
/// heartbeats (`heartbeat` ms; at least 300 ms, see
/// [`suspect_after`]). Runs until the process ends.
pub async fn watch_primaries(
    me: String,
    hearing: Hearing,
    control: ControlPlane,
    heartbeat: Millis,
) {
    let mut watch = PrimaryWatch::new(suspect_after(heartbeat));
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Arc<ClusterMap>> = None;
    loop {
        every.tick().await;
        let map = control.map();
        if !seen.as_ref().is_some_and(|m| Arc::ptr_eq(m, &map)) {
            watch.expect(primaries_of(&me, &map), now_ms());
            seen = Some(map);
        }
        for (node, silent_ms) in watch.silent(|n| hearing.last(n), now_ms()) {
            control.report_silent(&me, node, silent_ms).await;
        }
    }
}
