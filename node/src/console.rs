//! The node's live web console (`GET /` on the `--metrics-listen` listener):
//! one static page ([`PAGE`], inline script, no build step) and the stream
//! it reads, `GET /events` (server-sent events).
//!
//! Each event is the whole picture as JSON: members with status,
//! generation, zone and phi; every table's shards with primary, backups,
//! learners, epoch and health; the newest coordinator events; request
//! totals (the page turns them into rates). An event is sent when the
//! node's gossip watch (the one `tstore admin gossip --watch` reads) reports
//! a change, when the map changes, and every [`TICK`] otherwise, at most one
//! per [`MIN_GAP`]. Read-only: the page only shows.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use hyper::body::Frame;
use tstore_actors::observe::{Observation, Observe};
use tstore_core::view::NodeStatus;

/// The console page.
pub const PAGE: &str = include_str!("console.html");

/// An event at least this often, for the request rates.
pub const TICK: Duration = Duration::from_secs(1);
/// At most one event per this long.
pub const MIN_GAP: Duration = Duration::from_millis(200);
/// Coordinator events shown.
pub const EVENTS_SHOWN: usize = 50;

/// The picture as the page reads it.
pub fn state_json(o: &Observation) -> serde_json::Value {
    use serde_json::json;
    let status = |s: NodeStatus| match s {
        NodeStatus::Joining => "joining",
        NodeStatus::Live => "live",
        NodeStatus::Down => "down",
        NodeStatus::Left => "left",
    };
    let members: Vec<_> = o
        .members
        .iter()
        .map(|m| {
            let phi = o
                .phis
                .iter()
                .find(|(n, _)| *n == m.node_id)
                .map(|(_, p)| *p);
            json!({
                "node": m.node_id, "status": status(m.status), "generation": m.generation,
                "zone": m.zone, "addr": m.addr, "heartbeat": m.heartbeat, "phi": phi,
            })
        })
        .collect();
    let health: std::collections::BTreeMap<(String, u32), &str> = o
        .shards
        .iter()
        .map(|(k, h)| ((k.table.clone(), k.index), h.as_str()))
        .collect();
    let tables: Vec<_> = o
        .map
        .tables
        .values()
        .map(|t| {
            let shards: Vec<_> = t
                .shards
                .iter()
                .map(|s| {
                    let r = &s.replicas;
                    json!({
                        "shard": format!("{}/{}", t.spec.name, s.index),
                        "primary": r.primary, "backups": r.backups, "learners": r.learners,
                        "epoch": r.epoch,
                        "state": health.get(&(t.spec.name.clone(), s.index)).copied().unwrap_or("unknown"),
                    })
                })
                .collect();
            json!({ "name": t.spec.name, "replicas": t.spec.replicas, "shards": shards })
        })
        .collect();
    let events: Vec<_> = o
        .map
        .events
        .iter()
        .rev()
        .take(EVENTS_SHOWN)
        .map(|e| {
            json!({
                "version": e.version, "at_unix_ms": e.at_unix_ms, "subject": e.subject,
                "what": e.what, "why": e.why, "epoch": e.epoch,
            })
        })
        .collect();
    let (mut count, mut seconds) = (0u64, 0.0f64);
    for (_, h) in o.requests.latencies() {
        count += h.count;
        seconds += h.sum;
    }
    json!({
        "observer": o.node_id,
        "map_version": o.map.version,
        "raft": { "leader": o.cluster.leader, "term": o.cluster.term },
        "members": members,
        "tables": tables,
        "events": events,
        "requests": { "count": count, "seconds": seconds },
    })
}

fn frame(o: &Observation) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!(
        "data: {}\n\n",
        state_json(o)
    ))))
}

/// What wakes the stream up.
enum Wake {
    Gossip,
    Map,
    Tick,
    GossipEnded,
}

/// The event stream of one page.
pub fn events(observe: Observe) -> BoxStream<'static, Result<Frame<Bytes>, Infallible>> {
    let gossip = observe.watch_gossip();
    let versions = observe.watch_version();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stream::unfold(
        (observe, gossip, versions, tick, true),
        |(observe, mut gossip, mut versions, mut tick, first)| async move {
            if !first {
                tokio::time::sleep(MIN_GAP).await;
                let wake = tokio::select! {
                    item = gossip.next() => if item.is_some() { Wake::Gossip } else { Wake::GossipEnded },
                    changed = versions.changed() => if changed.is_ok() { Wake::Map } else { Wake::Tick },
                    _ = tick.tick() => Wake::Tick,
                };
                if let Wake::GossipEnded = wake {
                    // The node refused the watch (too many) or is stopping:
                    // end the stream; the browser reconnects by itself.
                    return None;
                }
            }
            let o = observe.gather().await;
            Some((frame(&o), (observe, gossip, versions, tick, false)))
        },
    )
    .boxed()
}
