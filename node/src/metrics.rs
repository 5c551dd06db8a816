//! A node's Prometheus metrics: one [`Observation`] encoded in the
//! Prometheus text format (0.0.4) by `prometheus-client`'s encoder, at every
//! scrape of `GET /metrics` (see [`crate::http`]).
//!
//! Names follow Prometheus' conventions: a `tstore_` prefix, the unit as a
//! suffix (`_seconds`, `_bytes`), `_total` on counters (the encoder adds
//! it). Gauges describe the moment of the scrape as this node sees it (its
//! gossip state and its copy of the map), so every node reports the whole
//! cluster's shard health: alert on `max` across nodes.

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tstore_actors::metrics::HistogramSnapshot;
use tstore_actors::observe::{Observation, ShardHealth};
use tstore_core::view::NodeStatus;

/// The content type of [`encode`]'s text.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The text of `GET /metrics` for `o`.
pub fn encode(o: Observation) -> String {
    let mut registry = Registry::with_prefix("tstore");
    registry.register_collector(Box::new(Scrape(o)));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        let _ = writeln!(out, "# encoding failed: {e}");
    }
    out
}

#[derive(Debug)]
struct Scrape(Observation);

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn gauge<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in values {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in values {
        m.encode_family(&labels)?
            .encode_counter::<Labels<'_>, u64, f64>(&v, None)?;
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: impl IntoIterator<Item = (Labels<'static>, HistogramSnapshot)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (labels, h) in values {
        m.encode_family(&labels)?
            .encode_histogram::<Labels<'_>>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}

fn status_str(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Joining => "joining",
        NodeStatus::Live => "live",
        NodeStatus::Down => "down",
        NodeStatus::Left => "left",
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let o = &self.0;
        let e = &mut enc;
        let seconds = Some(&Unit::Seconds);
        let bytes = Some(&Unit::Bytes);

        // Client requests.
        counter(
            e,
            "requests",
            "Row requests this node served, by operation and outcome (ok, or the error's kind).",
            None,
            o.requests
                .counts()
                .into_iter()
                .map(|(op, outcome, n)| (vec![("op", op), ("outcome", outcome)], n)),
        )?;
        histogram(
            e,
            "request_duration",
            "Time this node took to answer a row request, by operation.",
            seconds,
            o.requests
                .latencies()
                .into_iter()
                .map(|(op, h)| (vec![("op", op)], h)),
        )?;

        // Storage: the group commit.
        histogram(
            e,
            "group_commit_batch_writes",
            "Shard writes (appends and applies) carried by one LMDB transaction of the group commit.",
            None,
            [(vec![], o.commits.batch_sizes())],
        )?;
        histogram(
            e,
            "group_commit_duration",
            "Time one group commit transaction took, its fsync included.",
            seconds,
            [(vec![], o.commits.commit_seconds())],
        )?;
        counter(
            e,
            "log_entries_appended",
            "Replication log entries this node appended since it started.",
            None,
            [(vec![], o.entries_logged)],
        )?;

        // Re-replication.
        let r = &o.recovery;
        counter(
            e,
            "snapshots_installed",
            "Shard snapshots installed on this node (new copies built here).",
            None,
            [(vec![], r.snapshots_installed)],
        )?;
        counter(
            e,
            "snapshot_installed",
            "Bytes of the shard snapshots installed on this node.",
            bytes,
            [(vec![], r.snapshot_bytes_installed)],
        )?;
        counter(
            e,
            "snapshots_served",
            "Shard snapshots this node sent to new copies.",
            None,
            [(vec![], r.snapshots_served)],
        )?;
        counter(
            e,
            "snapshot_served",
            "Bytes of the shard snapshots this node sent to new copies.",
            bytes,
            [(vec![], r.snapshot_bytes_served)],
        )?;
        counter(
            e,
            "copies_rejoined",
            "Copies that came back as learners keeping their own rows, to catch up from the log.",
            None,
            [(vec![], r.rejoined_from_own_data)],
        )?;
        counter(
            e,
            "catch_up_log_entries_sent",
            "Log entries read from the durable log for copies catching up.",
            None,
            [(vec![], r.log_entries_sent)],
        )?;

        // This node's shard copies.
        let copies: Vec<_> = o
            .copies
            .iter()
            .map(|(k, s)| (k.table.as_str(), k.index.to_string(), s))
            .collect();
        let per_copy = |f: fn(&tstore_core::wire::CopyStatus) -> u64| {
            copies.iter().filter_map(move |(t, i, s)| {
                s.as_ref()
                    .map(|s| (vec![("table", *t), ("shard", i.as_str())], f(s) as f64))
            })
        };
        gauge(
            e,
            "copy_info",
            "One per shard copy on this node (1), its role and state as labels; a copy that did not answer has state \"silent\".",
            None,
            copies.iter().map(|(t, i, s)| {
                let (role, state) = match s {
                    Some(s) => (s.role.as_str(), state_word(&s.state)),
                    None => ("unknown", "silent"),
                };
                (
                    vec![("table", *t), ("shard", i.as_str()), ("role", role), ("state", state)],
                    1.0,
                )
            }),
        )?;
        gauge(
            e,
            "copies_quiet",
            "Shard copies on this node that are quiet: idle, sending nothing of their own until a request wakes them.",
            None,
            [(
                vec![],
                copies
                    .iter()
                    .filter(|(_, _, s)| s.as_ref().is_some_and(|s| s.quiet))
                    .count() as f64,
            )],
        )?;
        gauge(
            e,
            "copy_epoch",
            "The configuration epoch of each shard copy on this node.",
            None,
            per_copy(|s| s.epoch),
        )?;
        gauge(
            e,
            "copy_applied_index",
            "The last log position each shard copy on this node applied (committed and in its rows).",
            None,
            per_copy(|s| s.applied),
        )?;
        gauge(
            e,
            "copy_logged_index",
            "The end of each shard copy's durable log on this node.",
            None,
            per_copy(|s| s.logged),
        )?;
        gauge(
            e,
            "copy_lag_entries",
            "Log entries each shard copy on this node holds but has not applied (logged - applied); lag behind the primary is max(applied) - applied across nodes.",
            None,
            per_copy(|s| s.logged.saturating_sub(s.applied)),
        )?;
        gauge(
            e,
            "copy_log_entries",
            "Log entries each shard copy on this node retains.",
            None,
            per_copy(|s| s.log_entries),
        )?;
        gauge(
            e,
            "copy_log",
            "Bytes of the log entries each shard copy on this node retains.",
            bytes,
            per_copy(|s| s.log_bytes),
        )?;

        // Shard health, as this node's map and gossip see it.
        let states = [
            ShardHealth::Healthy,
            ShardHealth::Recovering,
            ShardHealth::UnderReplicated,
            ShardHealth::Unavailable,
        ];
        gauge(
            e,
            "shards",
            "Shards of every table by health, as this node's map and gossip see them.",
            None,
            states.iter().map(|h| {
                let n = o.shards.iter().filter(|(_, s)| s == h).count();
                (vec![("state", h.as_str())], n as f64)
            }),
        )?;
        let count = |h: ShardHealth| o.shards.iter().filter(|(_, s)| *s == h).count() as f64;
        gauge(
            e,
            "shards_under_replicated",
            "Shards with fewer live members than their table's replication factor (their primary live).",
            None,
            [(vec![], count(ShardHealth::UnderReplicated))],
        )?;
        gauge(
            e,
            "shards_unavailable",
            "Shards whose primary is not live.",
            None,
            [(vec![], count(ShardHealth::Unavailable))],
        )?;

        // Gossip.
        gauge(
            e,
            "gossip_nodes",
            "Cluster members by status, as this node's gossip sees them.",
            None,
            ["live", "down", "joining", "left"].map(|st| {
                let n = o
                    .members
                    .iter()
                    .filter(|m| status_str(m.status) == st)
                    .count();
                (vec![("status", st)], n as f64)
            }),
        )?;
        gauge(
            e,
            "gossip_node_up",
            "1 if gossip sees the member live, else 0; the member's status, generation and zone as labels.",
            None,
            o.members.iter().map(|m| {
                (
                    vec![
                        ("node", m.node_id.as_str()),
                        ("status", status_str(m.status)),
                        ("zone", m.zone.as_str()),
                    ],
                    f64::from(u8::from(m.status == NodeStatus::Live)),
                )
            }),
        )?;
        gauge(
            e,
            "gossip_node_heartbeat",
            "The heartbeat counter of each member in this node's gossip state (it grows while the member is live).",
            None,
            o.members
                .iter()
                .map(|m| (vec![("node", m.node_id.as_str())], m.heartbeat as f64)),
        )?;

        let g = &o.gossip;
        counter(
            e,
            "gossip_messages",
            "Gossip messages this node sent and received since it started (three per gossip round with a peer: syn, syn-ack, ack).",
            None,
            [
                (vec![("direction", "sent")], g.messages_sent),
                (vec![("direction", "received")], g.messages_received),
            ],
        )?;
        counter(
            e,
            "gossip",
            "Bytes of gossip this node sent and received since it started.",
            bytes,
            [
                (vec![("direction", "sent")], g.bytes_sent),
                (vec![("direction", "received")], g.bytes_received),
            ],
        )?;
        gauge(
            e,
            "gossip_node_phi",
            "Each peer's phi-accrual suspicion as this node's gossip computes it: it climbs while the peer is silent, and the peer is marked down past phi_threshold.",
            None,
            o.phis
                .iter()
                .map(|(node, phi)| (vec![("node", node.as_str())], *phi)),
        )?;

        // The control plane.
        let c = &o.cluster;
        gauge(
            e,
            "raft_term",
            "The control plane's Raft term as this node knows it.",
            None,
            [(vec![], c.term as f64)],
        )?;
        gauge(
            e,
            "raft_leader",
            "1 with the leader's id as label (absent while there is none).",
            None,
            c.leader.iter().map(|l| (vec![("leader", l.as_str())], 1.0)),
        )?;
        gauge(
            e,
            "raft_is_leader",
            "1 if this node is the Raft leader (and so the coordinator), else 0.",
            None,
            [(vec![], f64::from(u8::from(c.role == "leader")))],
        )?;
        gauge(
            e,
            "raft_applied_index",
            "The last control-plane log entry applied here (committed).",
            None,
            [(vec![], c.applied_index as f64)],
        )?;
        gauge(
            e,
            "raft_last_log_index",
            "The last control-plane log entry this node holds.",
            None,
            [(vec![], c.last_log_index as f64)],
        )?;
        gauge(
            e,
            "map_version",
            "The version of the cluster map this node applied.",
            None,
            [(vec![], o.map.version as f64)],
        )?;
        counter(
            e,
            "coordinator_decisions",
            "Coordinator decisions this node saw committed in the map since it started, by kind (the decision's first word).",
            None,
            o.decisions
                .iter()
                .map(|(k, n)| (vec![("kind", k.as_str())], *n)),
        )?;

        // The transport.
        let f = &o.refusals;
        counter(
            e,
            "refused_connections",
            "Connections refused: the TLS handshake failed (no or a foreign certificate) or timed out, or the certificate may not speak the protocol it asked for.",
            None,
            [
                (vec![("reason", "handshake")], f.handshakes),
                (vec![("reason", "forbidden")], f.forbidden),
            ],
        )?;
        counter(
            e,
            "refused_frames",
            "Frames refused as oversized or undecodable (their connection was closed).",
            None,
            [(vec![], f.frames)],
        )?;
        Ok(())
    }
}

/// The first word of a copy's state (`serving`, `copying`, `no lease`, `failed`).
fn state_word(state: &str) -> &str {
    match state.split(':').next().unwrap_or(state) {
        s if s.starts_with("no lease") => "no_lease",
        s => s.split_whitespace().next().unwrap_or("unknown"),
    }
}
