use std::time::Duration;

/// Gossip and failure-detector settings.
///
/// The defaults are tuned for a LAN: a node gossips every 200 ms, and a peer
/// that stops sending heartbeats is marked down once phi (elapsed time over
/// the mean heartbeat interval) passes `phi_threshold`: about 6 × 200 ms, so a
/// killed node is down everywhere in roughly 1.2-1.6 s. Raise both on a lossy
/// or slow network (chitchat's own defaults are 1 s and 8).
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Nodes of another cluster id are ignored.
    pub cluster_id: String,
    /// Seed addresses (`host:port`) to join through.
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    /// How long a dead node stays in the gossip state before it is forgotten.
    pub dead_node_grace_period: Duration,
    /// What this node publishes about itself.
    pub profile: NodeProfile,
}

/// What a node publishes about itself in gossip.
#[derive(Debug, Clone, Default)]
pub struct NodeProfile {
    pub zone: Option<String>,
    pub roles: Vec<String>,
    pub version: String,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            cluster_id: "tstore".into(),
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 6.0,
            dead_node_grace_period: Duration::from_secs(3600),
            profile: NodeProfile::default(),
        }
    }
}

impl MembershipConfig {
    /// Roughly how long after its last heartbeat a silent node is marked down.
    pub fn expected_detection_time(&self) -> Duration {
        self.gossip_interval.mul_f64(self.phi_threshold + 1.0)
    }
}
