//! PacificA-style primary-backup replication of one shard, as pure state
//! machines: [`Primary`] and [`Backup`] take events (a proposal, a message,
//! a finished disk write, the time) and return [`Effect`]s for their actor to
//! carry out (write the log, send, apply). No I/O and no clocks inside, so the
//! protocol is tested by simulation (`sim` tests: loss, reordering,
//! duplication, slow disks, epoch changes).
//!
//! The rules that keep acknowledged writes safe:
//! - the primary assigns `(epoch, seq)`; an entry is committed, applied and
//!   acknowledged to the client only once the primary *and every backup of
//!   the configuration* have it durably in their logs;
//! - a backup applies an entry only once the primary says it is committed;
//! - messages carry the configuration epoch; a node refuses any message of an
//!   older epoch and asks for the map when it sees a newer one;
//! - the primary holds a lease: it counts as serving only while every backup
//!   has answered a message sent within `lease`. The lease runs from the
//!   primary's *send* time (echoed back in acks), so no clock sync is needed.
//!   A replacement primary may only start after a grace period longer than
//!   the lease (the coordinator's rule, see `LeaseConfig::check`).

mod backup;
mod primary;
#[cfg(test)]
mod sim;

use serde::{Deserialize, Serialize};

pub use backup::Backup;
pub use primary::{Primary, ProposeError};

use crate::cluster_map::NodeId;

/// Sequence number of a log entry within a shard (1, 2, 3, ...).
pub type Seq = u64;
/// Configuration epoch of a shard.
pub type Epoch = u64;
/// Milliseconds on the local monotonic clock of the node that reads it.
pub type Millis = u64;

/// One replicated log entry: an opaque, already validated operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The epoch of the primary that assigned it.
    pub epoch: Epoch,
    pub seq: Seq,
    pub op: Vec<u8>,
}

/// Replication messages of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplMsg {
    /// Primary → backup: contiguous entries (possibly none: a heartbeat), the
    /// primary's commit point, and its send time (echoed back for the lease).
    Prepare {
        epoch: Epoch,
        entries: Vec<LogEntry>,
        committed: Seq,
        sent_at: Millis,
    },
    /// Backup → primary: every entry up to `logged` is durable here.
    Ack {
        epoch: Epoch,
        logged: Seq,
        echo: Millis,
    },
    /// A message from an older epoch was refused; `epoch` is the receiver's.
    StaleEpoch { epoch: Epoch },
}

/// What a state machine asks its actor to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Append these entries to the durable log, then report `on_persisted`.
    Persist(Vec<LogEntry>),
    Send {
        to: NodeId,
        msg: ReplMsg,
    },
    /// Entries up to `upto` are committed: apply them (and, on the primary,
    /// acknowledge their clients).
    Commit {
        upto: Seq,
    },
    /// A newer epoch exists: fetch the cluster map.
    FetchMap {
        seen: Epoch,
    },
}

/// Timing of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// A primary serves while every backup answered a message sent this recently.
    pub lease: Millis,
    /// Nobody replaces a primary before it has been silent this long.
    pub grace: Millis,
    /// The primary sends at least this often to each backup (heartbeat and
    /// retransmission of unacknowledged entries).
    pub heartbeat: Millis,
    /// At most this many entries proposed and not yet committed.
    pub window: usize,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            lease: 1000,
            grace: 1500,
            heartbeat: 100,
            window: 1024,
        }
    }
}

impl LeaseConfig {
    /// The invariant that makes leases safe: an old primary's lease has
    /// expired before anyone may replace it, and heartbeats renew the lease
    /// several times per period.
    pub fn check(&self) -> Result<(), String> {
        if self.grace <= self.lease {
            return Err(format!(
                "grace ({} ms) must be longer than the lease ({} ms)",
                self.grace, self.lease
            ));
        }
        if self.heartbeat.saturating_mul(2) > self.lease {
            return Err(format!(
                "heartbeat ({} ms) must be at most half the lease ({} ms)",
                self.heartbeat, self.lease
            ));
        }
        if self.window == 0 {
            return Err("window must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_must_outlast_the_lease() {
        assert!(LeaseConfig::default().check().is_ok());
        let bad = LeaseConfig {
            grace: 1000,
            ..Default::default()
        };
        assert_eq!(
            bad.check().unwrap_err(),
            "grace (1000 ms) must be longer than the lease (1000 ms)"
        );
        let bad = LeaseConfig {
            heartbeat: 600,
            ..Default::default()
        };
        assert!(bad.check().is_err());
    }
}
