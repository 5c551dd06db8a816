//! Node configuration: a TOML file (`--config node.toml`) overridden by flags.
//!
//! Every key of the file has a flag of the same name with dashes
//! (`gossip_interval_ms` ↔ `--gossip-interval-ms`). Unknown keys are refused,
//! so a typo does not silently fall back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use tstore_actors::control::ControlSettings;
use tstore_core::replication::{LeaseConfig, LogRetention};
use tstore_membership::{MembershipConfig, NodeProfile};
use tstore_transport::Limits;

/// Settings of `tstore start`; each may come from a flag or the config file.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOptions {
    /// This node's id (letters, digits, '-', '_'); needed on the first start, then kept in the data dir.
    #[arg(long)]
    pub node_id: Option<String>,
    /// UDP address to listen on [default: 127.0.0.1:7401].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address peers and clients reach this node at [default: the listen address].
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// Directory for the node's identity and data [default: tstore-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Certificate directory made by `tstore cert` [default: certs].
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Seed nodes to join through, comma-separated host:port.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Zone (rack, availability zone) of this node, for replica spreading.
    #[arg(long)]
    pub zone: Option<String>,
    /// Cluster id; nodes of other clusters are ignored [default: tstore].
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Gossip interval in milliseconds [default: 200].
    #[arg(long)]
    pub gossip_interval_ms: Option<u64>,
    /// Phi-accrual threshold above which a silent peer is marked down [default: 6].
    #[arg(long)]
    pub phi_threshold: Option<f64>,
    /// Seconds a dead node stays in the gossip state before it is forgotten, 1..=2592000 [default: 3600].
    #[arg(long)]
    pub dead_node_grace_secs: Option<u64>,
    /// Largest accepted network frame in bytes [default: 8388608].
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Timeout of one request in milliseconds [default: 5000].
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Form the control plane once this many nodes started with the same value see each
    /// other [default: 1 without --seeds (a single-node cluster), 0 with (join an existing one)].
    #[arg(long)]
    pub bootstrap_expect: Option<usize>,
    /// Wanted number of Raft voters; learners are promoted up to it [default: 3].
    #[arg(long)]
    pub voters: Option<usize>,
    /// Seconds a voter may be down before a live learner replaces it, 1..=86400 [default: 30].
    #[arg(long)]
    pub voter_replace_after_secs: Option<u64>,
    /// A shard primary serves while every backup answered within this many ms [default: 500].
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// A promoted primary waits this long (ms) after it last heard the old one; must exceed lease_ms, at most 600000 [default: 700].
    #[arg(long)]
    pub lease_grace_ms: Option<u64>,
    /// Replication heartbeat in ms; at most half of lease_ms [default: 100].
    #[arg(long)]
    pub replication_heartbeat_ms: Option<u64>,
    /// A shard with no write for this many ms and nothing in flight goes quiet: no heartbeats of its own (its node's heartbeat stands for them) until a request wakes it, which costs its first strong read one round trip; 0 never; 0..=3600000 [default: 1000].
    #[arg(long)]
    pub quiet_after_ms: Option<u64>,
    /// Bytes per second a snapshot is sent to one new copy; 0 is unthrottled [default: 67108864].
    #[arg(long)]
    pub recovery_bytes_per_sec: Option<u64>,
    /// Copies moved (or primaries handed over) at once to rebalance the cluster, e.g. onto a node that joins; 0 disables rebalancing [default: 2].
    #[arg(long)]
    pub rebalance_max_moves: Option<usize>,
    /// Control-plane Raft entries between snapshots of the map; older entries are then purged; 10..=1000000 [default: 5000].
    #[arg(long)]
    pub raft_snapshot_entries: Option<u64>,
    /// Microseconds the group commit waits for more writes under load before each transaction (more writes per fsync and per rewritten page, a little latency); never with a single writer; 0 does not wait; 0..=100000 [default: 250].
    #[arg(long)]
    pub group_commit_linger_us: Option<u64>,
    /// The most bytes this node's shard data may take (the LMDB map size of `<data dir>/lmdb`); when full, writes there fail and the node's copies fail over to other nodes; 1048576..=17592186044416 [default: 68719476736].
    #[arg(long)]
    pub lmdb_map_size: Option<u64>,
    /// Seconds a shard waits for a copy whose node went down to come back (it then catches up from the log) before copying the shard to another node; 0 copies at once; 0..=604800 [default: 0].
    #[arg(long)]
    pub rereplicate_after_secs: Option<u64>,
    /// Replication log entries each shard copy keeps below what every copy has, for copies that fall behind; 0..=1000000000 [default: 10000].
    #[arg(long)]
    pub log_retain_entries: Option<u64>,
    /// At most this many bytes of such log per shard copy; 0..=1099511627776 [default: 67108864].
    #[arg(long)]
    pub log_retain_bytes: Option<u64>,
    /// At most this many log entries a new copy that is still copying (or stuck) holds back on its primary; past it the entries are deleted and the copy starts its snapshot again; 1000..=1000000000 [default: 1000000].
    #[arg(long)]
    pub log_learner_hold_entries: Option<u64>,
    /// TCP address (a loopback one) of the node's HTTP listener: Prometheus metrics at /metrics; off when unset [default: off].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// The coordinator splits a shard whose rows (keys and stored values) take more than this many bytes (elastic tables; a table can opt out with `admin auto-split TABLE off`); 0 never; 0..=1099511627776 [default: 67108864].
    #[arg(long)]
    pub split_size_bytes: Option<u64>,
    /// ... or that serves more than this many requests per second for split_load_secs; 0 never [default: 3000].
    #[arg(long)]
    pub split_load_ops: Option<u64>,
    /// Seconds a shard's load must stay over split_load_ops before it splits; 1..=86400 [default: 60].
    #[arg(long)]
    pub split_load_secs: Option<u64>,
    /// A shard smaller than this many bytes is never split automatically (a small hot shard is a hot key, which a split cannot spread) [default: 16777216].
    #[arg(long)]
    pub min_split_bytes: Option<u64>,
    /// Milliseconds between the coordinator's looks at shard sizes and loads; 100..=600000 [default: 10000].
    #[arg(long)]
    pub elastic_check_ms: Option<u64>,
    /// The coordinator merges a table's newest shard into a neighbour once both have stayed cold (under a quarter of split_load_ops) and small (together under half of split_size_bytes) this many seconds; 0 never; 0..=604800 [default: 600].
    #[arg(long)]
    pub merge_after_secs: Option<u64>,
}

/// A node's fully resolved configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: Option<String>,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub certs: PathBuf,
    pub limits: Limits,
    pub membership: MembershipConfig,
    pub control: ControlSettings,
    pub lease: LeaseConfig,
    pub retention: LogRetention,
    pub recovery_rate: u64,
    pub lmdb_map_size: usize,
    pub commit_linger: Duration,
    /// The HTTP listener's address (loopback only), if any.
    pub metrics_listen: Option<SocketAddr>,
}

/// Largest `rebalance_max_moves`.
pub const MAX_REBALANCE_MOVES: usize = 64;

/// Longest `dead_node_grace_secs`: 30 days. The grace is added to the
/// clock when a node dies, which a value near `u64::MAX` overflows.
pub const MAX_DEAD_NODE_GRACE_SECS: u64 = 30 * 24 * 3600;

/// Longest `voter_replace_after_secs`: a day.
pub const MAX_VOTER_REPLACE_AFTER_SECS: u64 = 24 * 3600;

/// Most `lmdb_map_size`: 16 TiB.
pub const MAX_LMDB_MAP_SIZE: u64 = 16 << 40;
/// Least `lmdb_map_size`: 1 MiB.
pub const MIN_LMDB_MAP_SIZE: u64 = 1 << 20;

/// Longest `rereplicate_after_secs`: a week.
pub const MAX_REREPLICATE_AFTER_SECS: u64 = 7 * 24 * 3600;

/// Most `log_retain_entries`.
pub const MAX_LOG_RETAIN_ENTRIES: u64 = 1_000_000_000;

/// Most `log_retain_bytes`: 1 TiB.
pub const MAX_LOG_RETAIN_BYTES: u64 = 1 << 40;

/// Default snapshot throughput to one new copy: 64 MiB/s.
pub const DEFAULT_RECOVERY_RATE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("lease settings: {0}")]
    Lease(String),
    #[error("{key} = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl NodeOptions {
    /// Reads options from a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses options from TOML text; the error is the parser's message.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    /// `self` (flags) where set, else `file`.
    pub fn over(self, file: NodeOptions) -> NodeOptions {
        NodeOptions {
            node_id: self.node_id.or(file.node_id),
            listen: self.listen.or(file.listen),
            advertise: self.advertise.or(file.advertise),
            data_dir: self.data_dir.or(file.data_dir),
            certs: self.certs.or(file.certs),
            seeds: self.seeds.or(file.seeds),
            zone: self.zone.or(file.zone),
            cluster_id: self.cluster_id.or(file.cluster_id),
            gossip_interval_ms: self.gossip_interval_ms.or(file.gossip_interval_ms),
            phi_threshold: self.phi_threshold.or(file.phi_threshold),
            dead_node_grace_secs: self.dead_node_grace_secs.or(file.dead_node_grace_secs),
            max_frame_bytes: self.max_frame_bytes.or(file.max_frame_bytes),
            request_timeout_ms: self.request_timeout_ms.or(file.request_timeout_ms),
            bootstrap_expect: self.bootstrap_expect.or(file.bootstrap_expect),
            voters: self.voters.or(file.voters),
            voter_replace_after_secs: self
                .voter_replace_after_secs
                .or(file.voter_replace_after_secs),
            lease_ms: self.lease_ms.or(file.lease_ms),
            lease_grace_ms: self.lease_grace_ms.or(file.lease_grace_ms),
            replication_heartbeat_ms: self
                .replication_heartbeat_ms
                .or(file.replication_heartbeat_ms),
            quiet_after_ms: self.quiet_after_ms.or(file.quiet_after_ms),
            recovery_bytes_per_sec: self.recovery_bytes_per_sec.or(file.recovery_bytes_per_sec),
            rebalance_max_moves: self.rebalance_max_moves.or(file.rebalance_max_moves),
            raft_snapshot_entries: self.raft_snapshot_entries.or(file.raft_snapshot_entries),
            rereplicate_after_secs: self.rereplicate_after_secs.or(file.rereplicate_after_secs),
            lmdb_map_size: self.lmdb_map_size.or(file.lmdb_map_size),
            group_commit_linger_us: self.group_commit_linger_us.or(file.group_commit_linger_us),
            log_retain_entries: self.log_retain_entries.or(file.log_retain_entries),
            log_retain_bytes: self.log_retain_bytes.or(file.log_retain_bytes),
            log_learner_hold_entries: self
                .log_learner_hold_entries
                .or(file.log_learner_hold_entries),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            split_size_bytes: self.split_size_bytes.or(file.split_size_bytes),
            split_load_ops: self.split_load_ops.or(file.split_load_ops),
            split_load_secs: self.split_load_secs.or(file.split_load_secs),
            min_split_bytes: self.min_split_bytes.or(file.min_split_bytes),
            elastic_check_ms: self.elastic_check_ms.or(file.elastic_check_ms),
            merge_after_secs: self.merge_after_secs.or(file.merge_after_secs),
        }
    }

    /// Applies defaults and checks ranges.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let mut membership = MembershipConfig::default();
        if let Some(ms) = self.gossip_interval_ms {
            if !(10..=60_000).contains(&ms) {
                return Err(invalid("gossip_interval_ms", ms, "must be 10..=60000"));
            }
            membership.gossip_interval = Duration::from_millis(ms);
        }
        if let Some(phi) = self.phi_threshold {
            if !(phi.is_finite() && (1.0..=100.0).contains(&phi)) {
                return Err(invalid("phi_threshold", phi, "must be 1..=100"));
            }
            membership.phi_threshold = phi;
        }
        if let Some(s) = self.dead_node_grace_secs {
            if !(1..=MAX_DEAD_NODE_GRACE_SECS).contains(&s) {
                return Err(invalid("dead_node_grace_secs", s, "must be 1..=2592000"));
            }
            membership.dead_node_grace_period = Duration::from_secs(s);
        }
        if let Some(id) = self.cluster_id {
            if id.is_empty() {
                return Err(invalid("cluster_id", "\"\"", "must not be empty"));
            }
            membership.cluster_id = id;
        }
        membership.seeds = self.seeds.unwrap_or_default();
        let mut control = ControlSettings {
            bootstrap_expect: self
                .bootstrap_expect
                .unwrap_or(if membership.seeds.is_empty() { 1 } else { 0 }),
            ..ControlSettings::default()
        };
        if control.bootstrap_expect > 9 {
            return Err(invalid(
                "bootstrap_expect",
                control.bootstrap_expect,
                "must be 0..=9",
            ));
        }
        if let Some(v) = self.voters {
            if !(1..=9).contains(&v) || v % 2 == 0 {
                return Err(invalid("voters", v, "must be odd, 1..=9"));
            }
            control.voters = v;
        }
        if let Some(s) = self.voter_replace_after_secs {
            if !(1..=MAX_VOTER_REPLACE_AFTER_SECS).contains(&s) {
                return Err(invalid("voter_replace_after_secs", s, "must be 1..=86400"));
            }
            control.voter_replace_after = Duration::from_secs(s);
        }
        if let Some(n) = self.rebalance_max_moves {
            if n > MAX_REBALANCE_MOVES {
                return Err(invalid("rebalance_max_moves", n, "must be 0..=64"));
            }
            control.rebalance_max_moves = n;
        }
        if let Some(n) = self.raft_snapshot_entries {
            if !(10..=1_000_000).contains(&n) {
                return Err(invalid("raft_snapshot_entries", n, "must be 10..=1000000"));
            }
            control.raft_snapshot_entries = n;
        }
        let commit_linger = match self.group_commit_linger_us {
            Some(us) if us > 100_000 => {
                return Err(invalid("group_commit_linger_us", us, "must be 0..=100000"));
            }
            Some(us) => Duration::from_micros(us),
            None => tstore_actors::data::committer::DEFAULT_LINGER,
        };
        let lmdb_map_size = match self.lmdb_map_size {
            Some(n) if !(MIN_LMDB_MAP_SIZE..=MAX_LMDB_MAP_SIZE).contains(&n) => {
                return Err(invalid(
                    "lmdb_map_size",
                    n,
                    "must be 1048576..=17592186044416 (1 MiB to 16 TiB)",
                ));
            }
            Some(n) => n as usize,
            None => tstore_actors::storage::MAP_SIZE,
        };
        if let Some(s) = self.rereplicate_after_secs {
            if s > MAX_REREPLICATE_AFTER_SECS {
                return Err(invalid("rereplicate_after_secs", s, "must be 0..=604800"));
            }
            control.rereplicate_after = Duration::from_secs(s);
        }
        if let Some(b) = self.split_size_bytes {
            if b > 1 << 40 {
                return Err(invalid("split_size_bytes", b, "must be 0..=1099511627776"));
            }
            control.elastic.split_size_bytes = b;
        }
        if let Some(n) = self.split_load_ops {
            control.elastic.split_load_ops = n;
        }
        if let Some(s) = self.split_load_secs {
            if !(1..=86_400).contains(&s) {
                return Err(invalid("split_load_secs", s, "must be 1..=86400"));
            }
            control.elastic.load_for_ms = s * 1000;
        }
        if let Some(b) = self.min_split_bytes {
            control.elastic.min_split_bytes = b;
        }
        if let Some(s) = self.merge_after_secs {
            if s > 604_800 {
                return Err(invalid("merge_after_secs", s, "must be 0..=604800"));
            }
            control.elastic.merge_after_ms = s * 1000;
        }
        if let Some(ms) = self.elastic_check_ms {
            if !(100..=600_000).contains(&ms) {
                return Err(invalid("elastic_check_ms", ms, "must be 100..=600000"));
            }
            control.elastic_every = Duration::from_millis(ms);
        }
        // A new half waits three looks before it may split again.
        control.elastic.settle_ms = 3 * control.elastic_every.as_millis() as u64;
        membership.profile = NodeProfile {
            zone: self.zone.filter(|z| !z.is_empty()),
            roles: vec!["data".into()],
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let mut limits = Limits::default();
        if let Some(b) = self.max_frame_bytes {
            if !(1024..=(1 << 30)).contains(&b) {
                return Err(invalid("max_frame_bytes", b, "must be 1024..=1073741824"));
            }
            limits.max_frame = b;
        }
        if let Some(ms) = self.request_timeout_ms {
            if !(10..=600_000).contains(&ms) {
                return Err(invalid("request_timeout_ms", ms, "must be 10..=600000"));
            }
            limits.request_timeout = Duration::from_millis(ms);
        }
        /// An hour: longer is as good as never.
        const MAX_QUIET_AFTER_MS: u64 = 3_600_000;
        let defaults = LeaseConfig::default();
        let lease = LeaseConfig {
            lease: self.lease_ms.unwrap_or(defaults.lease),
            grace: self.lease_grace_ms.unwrap_or(defaults.grace),
            heartbeat: self.replication_heartbeat_ms.unwrap_or(defaults.heartbeat),
            window: defaults.window,
            quiet_after: self.quiet_after_ms.unwrap_or(defaults.quiet_after),
        };
        if lease.quiet_after > MAX_QUIET_AFTER_MS {
            return Err(invalid(
                "quiet_after_ms",
                lease.quiet_after,
                "must be 0..=3600000",
            ));
        }
        if lease.heartbeat == 0 {
            return Err(invalid("replication_heartbeat_ms", 0, "must be at least 1"));
        }
        if let Err(why) = lease.check() {
            return Err(ConfigError::Lease(why));
        }
        let mut retention = LogRetention::default();
        if let Some(n) = self.log_retain_entries {
            if n > MAX_LOG_RETAIN_ENTRIES {
                return Err(invalid("log_retain_entries", n, "must be 0..=1000000000"));
            }
            retention.entries = n;
        }
        if let Some(b) = self.log_retain_bytes {
            if b > MAX_LOG_RETAIN_BYTES {
                return Err(invalid("log_retain_bytes", b, "must be 0..=1099511627776"));
            }
            retention.bytes = b;
        }
        if let Some(n) = self.log_learner_hold_entries {
            if !(1_000..=1_000_000_000).contains(&n) {
                return Err(invalid(
                    "log_learner_hold_entries",
                    n,
                    "must be 1000..=1000000000",
                ));
            }
            retention.learner_hold = n;
        }
        if let Some(addr) = self.metrics_listen {
            // Plain HTTP, no authentication, the cluster's layout on show:
            // loopback only (see `crate::http`).
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "metrics_listen",
                    addr,
                    "must be a loopback address (127.0.0.0/8 or ::1): the listener is plain HTTP without authentication; scrape it from the same host, or put a proxy that terminates TLS in front",
                ));
            }
        }
        Ok(NodeConfig {
            metrics_listen: self.metrics_listen,
            lease,
            retention,
            recovery_rate: self.recovery_bytes_per_sec.unwrap_or(DEFAULT_RECOVERY_RATE),
            lmdb_map_size,
            commit_linger,
            node_id: self.node_id,
            listen: self
                .listen
                .unwrap_or_else(|| "127.0.0.1:7401".parse().unwrap()),
            advertise: self.advertise,
            data_dir: self.data_dir.unwrap_or_else(|| "tstore-data".into()),
            certs: self.certs.unwrap_or_else(|| "certs".into()),
            limits,
            membership,
            control,
        })
    }
}

fn invalid(key: &'static str, value: impl ToString, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node_id = \"n1\"\nlisten = \"127.0.0.1:9000\"\nseeds = [\"127.0.0.1:9001\"]\ngossip_interval_ms = 100\n",
        )
        .unwrap();
        let file = NodeOptions::from_file(&path).unwrap();
        let flags = NodeOptions {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..Default::default()
        };
        let cfg = flags.over(file).resolve().unwrap();
        assert_eq!(cfg.node_id.as_deref(), Some("n1"));
        assert_eq!(cfg.listen.port(), 9100);
        assert_eq!(cfg.membership.seeds, vec!["127.0.0.1:9001"]);
        assert_eq!(cfg.membership.gossip_interval, Duration::from_millis(100));
        assert_eq!(cfg.certs, PathBuf::from("certs"));
        assert_eq!(cfg.control.rebalance_max_moves, 2);
    }

    #[test]
    fn log_learner_hold_entries_is_read_and_checked() {
        let cfg = NodeOptions::default().resolve().unwrap();
        assert_eq!(cfg.retention.learner_hold, 1_000_000);
        let cfg = NodeOptions {
            log_learner_hold_entries: Some(5_000),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.retention.learner_hold, 5_000);
        let err = NodeOptions {
            log_learner_hold_entries: Some(10),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "log_learner_hold_entries = 10: must be 1000..=1000000000"
        );
    }

    #[test]
    fn the_metrics_listener_is_off_by_default_and_loopback_only() {
        assert_eq!(
            NodeOptions::default().resolve().unwrap().metrics_listen,
            None
        );
        for ok in ["127.0.0.1:9100", "127.3.4.5:9100", "[::1]:9100"] {
            let cfg = NodeOptions {
                metrics_listen: Some(ok.parse().unwrap()),
                ..Default::default()
            }
            .resolve()
            .unwrap();
            assert_eq!(cfg.metrics_listen, Some(ok.parse().unwrap()));
        }
        for refused in ["0.0.0.0:9100", "10.1.2.3:9100", "[::]:9100"] {
            let err = NodeOptions {
                metrics_listen: Some(refused.parse().unwrap()),
                ..Default::default()
            }
            .resolve()
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with(&format!(
                    "metrics_listen = {refused}: must be a loopback address"
                )),
                "{err}"
            );
        }
        let file = NodeOptions::parse(r#"metrics_listen = "127.0.0.1:9100""#).unwrap();
        assert_eq!(file.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn group_commit_linger_defaults_and_is_checked() {
        let cfg = NodeOptions::default().resolve().unwrap();
        assert_eq!(cfg.commit_linger, Duration::from_micros(250));
        let cfg = NodeOptions {
            group_commit_linger_us: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.commit_linger, Duration::ZERO, "0 never waits");
        let err = NodeOptions {
            group_commit_linger_us: Some(100_001),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert_eq!(err, "group_commit_linger_us = 100001: must be 0..=100000");
    }

    #[test]
    fn rereplicate_after_secs_from_the_file_or_a_flag_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "rereplicate_after_secs = 60\n").unwrap();
        let file = NodeOptions::from_file(&path).unwrap();
        assert_eq!(
            NodeOptions::default()
                .resolve()
                .unwrap()
                .control
                .rereplicate_after,
            Duration::ZERO,
            "no wait unless asked"
        );
        let cfg = NodeOptions::default().over(file.clone()).resolve().unwrap();
        assert_eq!(cfg.control.rereplicate_after, Duration::from_secs(60));
        let flags = NodeOptions {
            rereplicate_after_secs: Some(5),
            ..Default::default()
        };
        assert_eq!(
            flags
                .over(file)
                .resolve()
                .unwrap()
                .control
                .rereplicate_after,
            Duration::from_secs(5)
        );
        let err = NodeOptions {
            rereplicate_after_secs: Some(604_801),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert_eq!(err, "rereplicate_after_secs = 604801: must be 0..=604800");
    }

    #[test]
    fn rebalance_max_moves_from_the_file_or_a_flag_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "rebalance_max_moves = 0\n").unwrap();
        let file = NodeOptions::from_file(&path).unwrap();
        let cfg = NodeOptions::default().over(file.clone()).resolve().unwrap();
        assert_eq!(cfg.control.rebalance_max_moves, 0, "0 disables rebalancing");
        let flags = NodeOptions {
            rebalance_max_moves: Some(5),
            ..Default::default()
        };
        let cfg = flags.over(file).resolve().unwrap();
        assert_eq!(cfg.control.rebalance_max_moves, 5);
        let err = NodeOptions {
            rebalance_max_moves: Some(65),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert_eq!(err, "rebalance_max_moves = 65: must be 0..=64");
    }

    #[test]
    fn raft_snapshot_entries_from_the_file_or_a_flag_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "raft_snapshot_entries = 100\n").unwrap();
        let file = NodeOptions::from_file(&path).unwrap();
        let cfg = NodeOptions::default().resolve().unwrap();
        assert_eq!(cfg.control.raft_snapshot_entries, 5000);
        let cfg = NodeOptions::default().over(file.clone()).resolve().unwrap();
        assert_eq!(cfg.control.raft_snapshot_entries, 100);
        let flags = NodeOptions {
            raft_snapshot_entries: Some(20),
            ..Default::default()
        };
        assert_eq!(
            flags
                .over(file)
                .resolve()
                .unwrap()
                .control
                .raft_snapshot_entries,
            20
        );
        let err = NodeOptions {
            raft_snapshot_entries: Some(5),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert_eq!(err, "raft_snapshot_entries = 5: must be 10..=1000000");
    }

    #[test]
    fn log_retention_from_the_file_or_a_flag_and_checked() {
        let cfg = NodeOptions::default().resolve().unwrap();
        assert_eq!(cfg.retention, LogRetention::default());
        assert_eq!(
            (cfg.retention.entries, cfg.retention.bytes),
            (10_000, 64 << 20)
        );
        let file =
            NodeOptions::parse("log_retain_entries = 200\nlog_retain_bytes = 1048576").unwrap();
        let cfg = NodeOptions::default().over(file.clone()).resolve().unwrap();
        assert_eq!((cfg.retention.entries, cfg.retention.bytes), (200, 1 << 20));
        let flags = NodeOptions {
            log_retain_entries: Some(0),
            ..Default::default()
        };
        assert_eq!(flags.over(file).resolve().unwrap().retention.entries, 0);
        for (text, err) in [
            (
                "log_retain_entries = 1000000001",
                "log_retain_entries = 1000000001: must be 0..=1000000000",
            ),
            (
                "log_retain_bytes = 1099511627777",
                "log_retain_bytes = 1099511627777: must be 0..=1099511627776",
            ),
        ] {
            let options = NodeOptions::parse(text).unwrap();
            assert_eq!(options.resolve().unwrap_err().to_string(), err);
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "gossip_intervl_ms = 100\n").unwrap();
        let err = NodeOptions::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("gossip_intervl_ms"), "{err}");
        let err = NodeOptions {
            phi_threshold: Some(0.0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert_eq!(err, "phi_threshold = 0: must be 1..=100");
        let err = NodeOptions {
            lease_ms: Some(2000),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "lease settings: grace (700 ms) must be longer than the lease (2000 ms)"
        );
    }

    /// Regression: durations that resolved but overflow the clock they are
    /// added to (a node's time of death plus the grace, the last contact
    /// with a primary plus the lease grace). The config fuzz target checks
    /// that every resolved duration fits on the clock.
    #[test]
    fn durations_that_overflow_the_clock_are_refused() {
        for (text, err) in [
            (
                "dead_node_grace_secs = 9223372036854775807",
                "dead_node_grace_secs = 9223372036854775807: must be 1..=2592000",
            ),
            (
                "voter_replace_after_secs = 9223372036854775807",
                "voter_replace_after_secs = 9223372036854775807: must be 1..=86400",
            ),
            (
                "lease_ms = 9223372036854775806\nlease_grace_ms = 9223372036854775807",
                "lease settings: grace (9223372036854775807 ms) must be at most 600000 ms",
            ),
        ] {
            let options = NodeOptions::parse(text).unwrap();
            assert_eq!(options.resolve().unwrap_err().to_string(), err);
        }
        assert!(NodeOptions::parse(
            "dead_node_grace_secs = 2592000\nvoter_replace_after_secs = 86400"
        )
        .unwrap()
        .resolve()
        .is_ok());
    }
}
