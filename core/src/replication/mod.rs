//! PacificA-style primary-backup replication of one shard, as pure state
//! machines: [`Primary`] and [`Backup`] take events (a proposal, a message,
//! a finished disk write, a finished apply, the time) and return [`Effect`]s
//! for their actor to carry out (write the log, send, apply). They also
//! decide whether the copy may serve a read now (`read_permit`, refusing
//! with a [`ReadRefusal`]), and [`reconfigure`]'s functions decide what a
//! copy keeps when its role changes. No I/O and no clocks inside, so the
//! protocol is tested by simulation (`sim` tests: loss, reordering,
//! duplication, slow disks, epoch changes, failover with the old primary
//! still running; every read a copy admits is checked against the
//! acknowledged writes).
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
//!   A promoted primary takes no writes and serves no strong reads until
//!   `grace` (longer than the lease, see `LeaseConfig::check`) has passed
//!   since it last heard from the old primary
//!   ([`reconfigure::takeover_not_before`]), so two leases never overlap.
//!   A backup serves replica and session reads only while its primary has
//!   sent it a message of its own epoch within the lease. Reads are judged
//!   on what the rows hold (reported by `on_applied`), not on the commit
//!   point: the primary serves once its rows reach its commit point, a
//!   backup serves a session read once they reach the session's entry;
//! - reconciliation (as Kafka's leader-epoch truncation): a backup entering
//!   a new epoch compares the epochs of its uncommitted tail with the new
//!   primary's ([`EpochHistory`]) and keeps its log only up to the last entry
//!   both have with the same epoch; the rest was never committed (a commit
//!   needs every member, the new primary included). Entries with the same
//!   `(seq, epoch)` are the same entry, so afterwards every member's log is a
//!   prefix of the primary's. A promoted primary serves strong reads only once
//!   it has committed everything it inherited;
//! - learners: a copy being built receives the log like a backup but does
//!   not count for the lease, nor for commits while it is behind; a learner
//!   far behind is fed from the primary's durable log (`Effect::SendLog`).
//!   Once it has every committed entry, the primary counts it for commits
//!   (and tells it so): only then does it report itself ready, and the
//!   coordinator makes it a backup. So a learner made a backup holds every
//!   acknowledged entry, like every other member, even if the primary dies
//!   before it hears of the change (judged on its own view of the commit
//!   point, it could lack what was committed since it last heard).
//!
//! Log retention (truncation). Each copy deletes the head of its log once
//! nobody can need it; the decision is the state machine's
//! (`Effect::Truncate`), the store carries it out in the next group commit:
//! - a write commits only when *every* member of the configuration has
//!   logged it, so every entry up to the commit point is on every member;
//! - the primary may delete below `min(applied, acked of every peer it
//!   feeds: backups and learners)`: every peer already holds those entries
//!   (a peer that has not answered in this epoch counts as holding nothing,
//!   so a new epoch or a new learner truncates nothing until it answers);
//!   but a learner that does not count for commits holds back at most
//!   `LogRetention::learner_hold` entries below what the members have (a
//!   learner it leaves behind is told to rebuild, never sent a gap);
//! - a backup may delete below `min(applied, the primary's commit point it
//!   heard)`: those entries are on every member;
//! - below that safe point a retention window is kept (`LogRetention`:
//!   entries here, bytes in the store, which may delete further while the
//!   log is larger than its byte bound, never up to the safe point), for
//!   copies that may come back; the effect is emitted only once the safe
//!   point has moved by `LogRetention::batch`, so deletions are amortised.
//!
//! Why `Effect::SendLog` never needs a deleted entry of a counted member: the
//! primary sends a peer the entries after what the peer acked, and in its
//! own epoch it truncated only below what every peer acked. Across epochs, a
//! member of the new configuration holds every entry committed in the old
//! one (a learner becomes a backup only once it has every committed entry),
//! and keeps, through reconciliation, at least up to the new primary's
//! commit point when it took the epoch (`EpochHistory::floor`, its applied
//! position), which is at or above anything the new primary deleted (a copy
//! deletes only below its applied position). A learner is not covered: it
//! may have installed its snapshot from a primary that was then replaced by
//! one that had deleted more. Such a learner, once it reports a position
//! below the primary's first retained entry, is told to install a fresh
//! snapshot (`ReplMsg::Rebuild`) instead of being sent a gap; a counted copy
//! never discards its log on that word.
//!
//! Quiescence (an idle shard costs nothing). A primary whose shard has had
//! no write for `LeaseConfig::quiet_after`, with nothing in flight (every
//! entry committed, applied and acked by every member, no learner, no old
//! lease to wait out), sends its backups `ReplMsg::Quiet` in place of its
//! heartbeats; once each has answered `QuietAck` (it has everything and
//! knows the commit point), the primary is *quiet*: `on_tick` sends
//! nothing, and its actor stops ticking. The node's one heartbeat to each
//! peer (`PeerMessage::Heartbeat`) keeps telling the backups that its
//! node lives, so a dead node's quiet shards still fail over at once.
//!
//! A quiet primary holds no lease. Its backups' last answers age out like
//! any other, so after `lease` it serves no strong read: a strong read
//! finding it quiet wakes it (`wake`: a heartbeat to every backup, as
//! Raft's ReadIndex costs one round trip) and waits for the answers, which
//! renew the lease by the usual rule; a write wakes it by being sent. The
//! lease argument is therefore the per-shard one above, unchanged: every
//! answer the primary counts was to a message of its epoch that the
//! answering backup received, and that receipt is the backup's contact
//! from which a promoted primary waits `grace`. No answer to a node-level
//! heartbeat ever renews a shard's lease. (CockroachDB's epoch-based
//! leases keep quiet ranges' leases on node liveness; that needs every
//! node-level answer to say which shards it still backs at which epoch,
//! or a backup promoted in a new epoch would go on renewing the old
//! primary's lease. The cost here is one round trip on the first strong
//! read after an idle second.)
//!
//! A quiet backup (its newest message from the primary was `Quiet`) counts
//! as in sync for replica reads while the primary's *node* is heard within
//! the lease (`Backup::read_permit_heard`): the shard had nothing in
//! flight when it went quiet, a write wakes it with a `Prepare` sent before
//! any later node heartbeat on the same ordered lane, and the write cannot
//! commit without this backup's ack. So a quiet backup's staleness is
//! bounded like an awake one's. A message of the primary's that is not a
//! `Quiet` (a `Prepare`, which any write or wake sends) ends it.
//!
//! Invariants, asserted (`debug_assert!`) after every event and so checked
//! across every simulated schedule:
//! - on the primary, applied ≤ committed ≤ persisted ≤ last seq, and what a
//!   backup acked ≤ last seq (`applied`: what the rows reflect, reported by
//!   `on_applied`);
//! - on a backup, rows applied ≤ handed to apply ≤ the primary's commit
//!   point as heard, and applied ≤ logged ≤ asked to persist;
//! - epochs only grow: a primary carried into a new epoch comes from an
//!   older one, and a backup holds and takes no entry of a newer epoch than
//!   its own.

mod backup;
pub mod outbox;
mod primary;
mod read;
pub mod reconfigure;
#[cfg(test)]
mod sim;

use serde::{Deserialize, Serialize};

pub use backup::Backup;
pub use primary::{Primary, ProposeError};
pub use read::ReadRefusal;

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

/// The epochs of a primary's log between `floor` (its commit point when it
/// took the epoch: identical on every member) and its last entry then:
/// `runs` are `(first seq, epoch)`, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochHistory {
    pub floor: Seq,
    pub runs: Vec<(Seq, Epoch)>,
    pub last: Seq,
}

impl EpochHistory {
    pub fn of(floor: Seq, entries: &[LogEntry]) -> Self {
        let mut runs: Vec<(Seq, Epoch)> = Vec::new();
        for e in entries {
            if runs.last().is_none_or(|r| r.1 != e.epoch) {
                runs.push((e.seq, e.epoch));
            }
        }
        Self {
            floor,
            runs,
            last: entries.last().map_or(floor, |e| e.seq),
        }
    }

    /// The epoch of the primary's entry `seq`, if it is in the history.
    pub fn epoch_at(&self, seq: Seq) -> Option<Epoch> {
        if seq <= self.floor || seq > self.last {
            return None;
        }
        self.runs
            .iter()
            .take_while(|(start, _)| *start <= seq)
            .last()
            .map(|r| r.1)
    }

    /// How much of a log whose uncommitted tail is `tail` ((seq, epoch),
    /// ascending, right after `applied`) agrees with the primary's: the last
    /// seq to keep.
    pub fn agreement(&self, applied: Seq, tail: &[(Seq, Epoch)]) -> Seq {
        tail.iter()
            .rev()
            .find(|(seq, epoch)| *seq <= self.floor || self.epoch_at(*seq) == Some(*epoch))
            .map_or(applied, |(seq, _)| *seq)
    }
}

/// Replication messages of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplMsg {
    /// Primary → backup: contiguous entries (possibly none: a heartbeat), the
    /// primary's commit point, and its send time (echoed back for the lease).
    Prepare {
        epoch: Epoch,
        /// The primary's log when it took the epoch, sent until the backup
        /// first answers in this epoch (it reconciles against it).
        history: Option<EpochHistory>,
        entries: Vec<LogEntry>,
        committed: Seq,
        sent_at: Millis,
        /// Nothing commits any more without the receiver's ack: always so
        /// for a backup, and for a learner once it has caught up. A learner
        /// reports itself ready to become a backup only after hearing this.
        counted: bool,
    },
    /// Backup → primary: every entry up to `logged` is durable here.
    Ack {
        epoch: Epoch,
        logged: Seq,
        echo: Millis,
    },
    /// A message from an older epoch was refused; `epoch` is the receiver's.
    StaleEpoch { epoch: Epoch },
    /// Primary → learner: the entries after your position are no longer in
    /// my log (the first I keep is `log_start`); install a fresh snapshot.
    /// Only a learner that does not count for commits acts on it.
    Rebuild { epoch: Epoch, log_start: Seq },
    /// Primary → backup: a heartbeat saying the shard has gone idle, with
    /// nothing in flight: everything is committed up to `committed`, the
    /// primary's last entry (module docs, "Quiescence"). The backup takes
    /// it as an empty `Prepare` and answers `QuietAck`.
    Quiet {
        epoch: Epoch,
        committed: Seq,
        sent_at: Millis,
    },
    /// Backup → primary: an `Ack` from a backup whose newest message from
    /// the primary was a `Quiet`: it expects nothing more until woken.
    QuietAck {
        epoch: Epoch,
        logged: Seq,
        echo: Millis,
    },
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
    /// Reconciled with the new epoch's primary: delete every log entry after
    /// `keep` (never below what is applied) and record the epoch.
    Reconciled {
        keep: Seq,
        epoch: Epoch,
    },
    /// Send `to` the Prepare `msg` with the durable log entries
    /// `from..=upto` as its entries (a learner or backup behind the entries
    /// the primary keeps in memory).
    SendLog {
        to: NodeId,
        from: Seq,
        upto: Seq,
        msg: ReplMsg,
    },
    /// Delete the log entries with `seq < below` (the retention window in
    /// entries is kept below the safe point). The store may go on deleting
    /// the oldest entries while the log is larger than its byte bound, but
    /// never an entry at or after `limit`, the first one some copy may
    /// still need (the safe point). Carried out with the next group commit.
    Truncate {
        below: Seq,
        limit: Seq,
    },
    /// The primary no longer has the entries this learner needs
    /// (`ReplMsg::Rebuild`): discard the copy and install a fresh snapshot.
    Rebuild {
        log_start: Seq,
    },
}

/// How much of its log a copy keeps below the point nobody needs any more
/// (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRetention {
    /// Entries kept below the safe point.
    pub entries: u64,
    /// At most this many bytes of log kept below the safe point (applied
    /// by the store, which knows the sizes).
    pub bytes: u64,
    /// The safe point must move by this many entries before the next
    /// deletion, so each one deletes a run of entries in one range.
    pub batch: u64,
    /// At most this many entries a learner that does not count for commits
    /// yet (one copying a snapshot, or one that stopped answering) holds
    /// back below what the members have: past it the primary deletes the
    /// entries anyway, and the learner, once it answers, is told to copy a
    /// snapshot again (`ReplMsg::Rebuild`). Keeps a stuck learner from
    /// growing the log without bound; a learner whose snapshot takes longer
    /// than this many writes of its shard copies again.
    pub learner_hold: u64,
}

/// Default entries kept: 10,000 writes, a few seconds of a busy shard, so
/// a backup or learner briefly cut off catches up from the log.
pub const DEFAULT_RETAIN_ENTRIES: u64 = 10_000;
/// Default bytes kept: 64 MiB per copy, so a shard of large rows cannot
/// keep 10,000 of them (a 100 KB row would make it 1 GB).
pub const DEFAULT_RETAIN_BYTES: u64 = 64 << 20;
/// Default amortisation: one range deletion per 256 entries.
pub const DEFAULT_TRUNCATE_BATCH: u64 = 256;
/// Default hold of a learner that does not count yet: 1,000,000 entries
/// (over three minutes of a shard taking 5,000 writes/s).
pub const DEFAULT_LEARNER_HOLD: u64 = 1_000_000;

impl Default for LogRetention {
    fn default() -> Self {
        Self {
            entries: DEFAULT_RETAIN_ENTRIES,
            bytes: DEFAULT_RETAIN_BYTES,
            batch: DEFAULT_TRUNCATE_BATCH,
            learner_hold: DEFAULT_LEARNER_HOLD,
        }
    }
}

/// When to truncate, shared by the primary and the backup: `start` is the
/// first entry that may still be in the log (nothing below it is), `limit`
/// the last limit asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Truncation {
    cfg: LogRetention,
    /// Entries below this may have been deleted (the store's first retained
    /// entry when the state machine was built, or the last `limit` asked).
    start: Seq,
}

impl Truncation {
    fn new(cfg: LogRetention, log_start: Seq) -> Self {
        Self {
            cfg,
            start: log_start.max(1),
        }
    }

    /// The truncation to ask for now that every entry up to `safe` is
    /// needed by nobody, if the safe point moved by a batch.
    fn step(&mut self, safe: Seq) -> Option<Effect> {
        let limit = safe + 1;
        if limit < self.start.saturating_add(self.cfg.batch.max(1)) {
            return None;
        }
        let below = limit.saturating_sub(self.cfg.entries).max(1);
        self.start = limit;
        Some(Effect::Truncate { below, limit })
    }
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
    /// A primary with nothing in flight and no write for this long goes
    /// quiet (module docs, "Quiescence"); 0: never.
    pub quiet_after: Millis,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            lease: 500,
            grace: 700,
            heartbeat: 100,
            window: 1024,
            quiet_after: DEFAULT_QUIET_AFTER_MS,
        }
    }
}

/// Default idle time before a shard goes quiet: one second, ten
/// heartbeats (module docs, "Quiescence").
pub const DEFAULT_QUIET_AFTER_MS: Millis = 1000;

/// Longest grace period (and so lease and heartbeat) accepted: ten
/// minutes. Longer would mean as long without a primary after a failure,
/// and the millisecond clock readings they are added to must not overflow.
pub const MAX_GRACE_MS: Millis = 600_000;

impl LeaseConfig {
    /// The invariant that makes leases safe: an old primary's lease has
    /// expired before anyone may replace it, and heartbeats renew the lease
    /// several times per period.
    pub fn check(&self) -> Result<(), String> {
        if self.grace > MAX_GRACE_MS {
            return Err(format!(
                "grace ({} ms) must be at most {MAX_GRACE_MS} ms",
                self.grace
            ));
        }
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

    fn entry(seq: Seq, epoch: Epoch) -> LogEntry {
        LogEntry {
            epoch,
            seq,
            op: vec![],
        }
    }

    #[test]
    fn reconciliation_keeps_the_longest_agreeing_prefix() {
        // The new primary committed to 10, then holds 11-12 of epoch 2 and
        // 13 of epoch 3.
        let h = EpochHistory::of(10, &[entry(11, 2), entry(12, 2), entry(13, 3)]);
        assert_eq!(h.epoch_at(12), Some(2));
        assert_eq!(h.epoch_at(13), Some(3));
        assert_eq!(h.epoch_at(14), None);
        // Same epochs: all kept.
        assert_eq!(h.agreement(10, &[(11, 2), (12, 2)]), 12);
        // Diverged at 12 (an epoch-1 entry the new primary never had).
        assert_eq!(h.agreement(9, &[(10, 1), (11, 2), (12, 1), (13, 1)]), 11);
        // Longer than the primary: the extra is dropped.
        assert_eq!(h.agreement(10, &[(11, 2), (12, 2), (13, 3), (14, 3)]), 13);
        // Nothing agrees past the commit point.
        assert_eq!(h.agreement(10, &[(11, 1)]), 10);
        // Below the primary's commit point everything agrees.
        assert_eq!(h.agreement(7, &[(8, 1), (9, 1)]), 9);
    }

    #[test]
    fn grace_must_outlast_the_lease() {
        assert!(LeaseConfig::default().check().is_ok());
        let bad = LeaseConfig {
            lease: 1000,
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
        // Regression: a grace near u64::MAX passed, and `last contact +
        // grace` overflowed the millisecond clock.
        let bad = LeaseConfig {
            lease: u64::MAX - 1,
            grace: u64::MAX,
            ..Default::default()
        };
        assert_eq!(
            bad.check().unwrap_err(),
            "grace (18446744073709551615 ms) must be at most 600000 ms"
        );
    }
}
