//! Who this node still hears: the time of the last replication message or
//! node heartbeat from each peer ([`Hearing`], fed by
//! [`PeerDispatch`](crate::dispatch)), the task that reports the primaries
//! gone silent to the coordinator ([`watch_primaries`]), and the one that
//! sends this node's heartbeat to every node backing a shard it leads
//! ([`send_heartbeats`]): one message per node pair per heartbeat, which
//! keeps the backups of quiet shards hearing their primary's node
//! (`tstore_core::replication`, "Quiescence"). The decisions are
//! `tstore_core::coordinator::suspicion`'s; this is their I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::debug;
use tstore_core::cluster_map::ClusterMap;
use tstore_core::coordinator::suspicion::{backups_of, primaries_of, suspect_after, PrimaryWatch};
use tstore_core::replication::Millis;

use crate::clock::now_ms;
use crate::control::ControlPlane;
use crate::peer::PeerMessage;
use crate::peer_link::PeerLink;

/// How often a node looks for silent primaries (and repeats its reports
/// while they stay silent).
pub const WATCH_EVERY: Duration = Duration::from_millis(50);

/// The last time (`now_ms`) a replication message came from each node.
#[derive(Clone, Default)]
pub struct Hearing(Arc<Mutex<HashMap<String, Millis>>>);

impl Hearing {
    /// A replication message or node heartbeat from `node` arrived now.
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

/// Every `heartbeat` ms, sends this node's heartbeat to every node backing
/// a shard it leads (`backups_of`, recomputed when the map changes). Runs
/// until the process ends.
pub async fn send_heartbeats(
    me: String,
    link: Arc<dyn PeerLink>,
    control: ControlPlane,
    heartbeat: Millis,
) {
    let mut every = tokio::time::interval(Duration::from_millis(heartbeat.max(1)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Arc<ClusterMap>> = None;
    let mut to = Vec::new();
    loop {
        every.tick().await;
        let map = control.map();
        if !seen.as_ref().is_some_and(|m| Arc::ptr_eq(m, &map)) {
            to = backups_of(&me, &map).into_iter().collect();
            seen = Some(map);
        }
        for node in &to {
            if let Err(e) = link.send_oneway(node, PeerMessage::Heartbeat) {
                debug!(node, error = %e, "node heartbeat not sent");
            }
        }
    }
}
