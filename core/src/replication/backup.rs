//! The backup side of a shard's replication.

use std::collections::BTreeMap;

use super::{
    Effect, Epoch, LeaseConfig, LogEntry, LogRetention, Millis, ReadRefusal, ReplMsg, Seq,
    Truncation,
};

use crate::cluster_map::NodeId;
use crate::wire::ReadMode;

/// Out-of-order entries a backup keeps while it waits for a gap to fill;
/// beyond it they are dropped and come again with the primary's resend.
pub const MAX_BUFFERED: usize = 4096;

/// A backup of one shard in one epoch.
#[derive(Debug, Clone)]
pub struct Backup {
    epoch: Epoch,
    primary: NodeId,
    /// Durable up to here (contiguous).
    logged: Seq,
    /// Asked the disk to write up to here.
    persisting: Seq,
    /// Handed to the actor to apply (`Effect::Commit`) up to here.
    applied: Seq,
    /// The rows reflect every entry up to here (`on_applied`): they reach
    /// `applied` a group commit later.
    rows: Seq,
    /// The primary's commit point as last heard.
    primary_committed: Seq,
    /// Entries past a gap.
    buffer: BTreeMap<Seq, LogEntry>,
    /// Send time of the newest Prepare, echoed in acks.
    last_sent_at: Millis,
    /// Entering this epoch from an older one: the `(seq, epoch)` of our log
    /// after `applied`, to compare with the new primary's history.
    reconcile: Option<Vec<(Seq, Epoch)>>,
    /// Has accepted a Prepare of this epoch.
    heard: bool,
    /// The primary said nothing commits without our ack any more (see
    /// `ReplMsg::Prepare::counted`).
    counted: bool,
    cfg: LeaseConfig,
    /// When the primary last sent us a message of our epoch: the copy is in
    /// sync (serves replica reads) for a lease from then.
    in_sync_at: Option<Millis>,
    /// When the configured primary last sent us anything (any epoch, any
    /// message). Carried from backup to backup of the same copy
    /// (`carry_contact`): a promoted primary waits out the old lease from
    /// it (`reconfigure::takeover_not_before`).
    contact: Millis,
    /// What of its log this copy keeps (module docs, "Log retention").
    trunc: Truncation,
    /// The newest message from the primary was a `Quiet`: the shard is
    /// idle (module docs, "Quiescence").
    quiet: bool,
}

impl Backup {
    /// A backup for `epoch` of `primary`, whose durable log ends at `logged`
    /// and which has applied up to `applied`. `reconcile` is `Some(tail)`
    /// when the log was written in an older epoch: the `(seq, epoch)` of its
    /// entries after `applied` (see `EpochHistory::agreement`). It is in
    /// sync (serves replica reads) only once its primary speaks.
    pub fn new(
        epoch: Epoch,
        primary: NodeId,
        logged: Seq,
        applied: Seq,
        reconcile: Option<Vec<(Seq, Epoch)>>,
        cfg: LeaseConfig,
    ) -> Self {
        debug_assert!(applied <= logged, "applied {applied} past the log {logged}");
        debug_assert!(
            reconcile.iter().flatten().all(|(_, e)| *e <= epoch),
            "a log written in an older epoch holds an entry of a newer one"
        );
        Self {
            reconcile,
            heard: false,
            counted: false,
            epoch,
            primary,
            logged,
            persisting: logged,
            applied,
            rows: applied,
            primary_committed: applied,
            buffer: BTreeMap::new(),
            last_sent_at: 0,
            cfg,
            in_sync_at: None,
            contact: 0,
            trunc: Truncation::new(LogRetention::default(), 1),
            quiet: false,
        }
    }

    /// Keeps the log as `retention` says; `log_start` is the first entry
    /// the durable log still holds (nothing below it is there).
    pub fn with_retention(mut self, retention: LogRetention, log_start: Seq) -> Self {
        self.trunc = Truncation::new(retention, log_start);
        self
    }

    /// Keeps the last word from a primary that an earlier backup of this
    /// copy had (`previous.primary_contact()`), until ours speaks.
    pub fn carry_contact(mut self, at: Millis) -> Self {
        self.contact = self.contact.max(at);
        self
    }

    /// When the configured primary (or an earlier backup's, see
    /// `carry_contact`) last sent this copy anything; 0 if never.
    pub fn primary_contact(&self) -> Millis {
        self.contact
    }

    /// Whether the primary sent us a message of our epoch within the lease.
    pub fn in_sync(&self, now: Millis) -> bool {
        self.in_sync_at
            .is_some_and(|at| now.saturating_sub(at) <= self.cfg.lease)
    }

    /// Whether the primary's last word was `Quiet` (module docs,
    /// "Quiescence").
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// In sync, or quiet while the primary's node was heard (`node_heard`:
    /// its node heartbeat, the last time anything of it arrived here)
    /// within the lease (module docs, "Quiescence").
    fn in_sync_heard(&self, now: Millis, node_heard: Option<Millis>) -> bool {
        self.in_sync(now)
            || (self.quiet
                && self.in_sync_at.is_some()
                && node_heard.is_some_and(|at| now.saturating_sub(at) <= self.cfg.lease))
    }

    /// Whether this copy may serve a read in `mode` at `now`: never a
    /// strong one (those go to the primary); a replica or session read
    /// while in sync, a session read `AtLeast(n)` only once the rows hold
    /// entry `n`.
    pub fn read_permit(&self, mode: ReadMode, now: Millis) -> Result<(), ReadRefusal> {
        self.read_permit_heard(mode, now, None)
    }

    /// As [`read_permit`](Self::read_permit), where the primary's node was
    /// last heard at `node_heard`: a quiet backup is in sync while it is
    /// (module docs, "Quiescence").
    pub fn read_permit_heard(
        &self,
        mode: ReadMode,
        now: Millis,
        node_heard: Option<Millis>,
    ) -> Result<(), ReadRefusal> {
        let needed = match mode {
            ReadMode::Strong => {
                return Err(ReadRefusal::NotPrimary {
                    primary: self.primary.clone(),
                })
            }
            ReadMode::Replica => None,
            ReadMode::AtLeast(n) => Some(n),
        };
        if !self.in_sync_heard(now, node_heard) {
            return Err(ReadRefusal::NotInSync {
                primary: self.primary.clone(),
                epoch: self.epoch,
            });
        }
        // What the rows hold, not what was handed to the actor to apply.
        match needed {
            Some(n) if self.rows < n => Err(ReadRefusal::BehindSession {
                applied: self.rows,
                needed: n,
            }),
            _ => Ok(()),
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn logged(&self) -> Seq {
        self.logged
    }

    pub fn applied(&self) -> Seq {
        self.applied
    }

    /// Whether this copy has everything the primary had committed when it
    /// last spoke, and the primary commits nothing more without it (a
    /// learner ready to become a backup: it will hold every acknowledged
    /// entry when it is one, even if the primary dies first).
    pub fn caught_up(&self) -> bool {
        self.heard
            && self.counted
            && self.reconcile.is_none()
            && self.logged >= self.primary_committed
    }

    /// Tells the primary where this copy stands (a learner that has just
    /// installed its snapshot, a restarted backup). Nothing while the log
    /// still has to be reconciled: an ack then could count entries about to
    /// be dropped.
    pub fn hello(&self) -> Option<Effect> {
        self.reconcile.is_none().then(|| self.ack())
    }

    /// A message from (what claims to be) the primary, received at `now`.
    pub fn on_message(&mut self, from: &str, msg: ReplMsg, now: Millis) -> Vec<Effect> {
        let effects = self.step(from, msg, now);
        self.check_invariants();
        effects
    }

    fn step(&mut self, from: &str, msg: ReplMsg, now: Millis) -> Vec<Effect> {
        if from == self.primary {
            self.contact = now;
        }
        if let ReplMsg::Rebuild { epoch, log_start } = msg {
            // Only a learner that counts for nothing may discard its copy
            // (a counted one may hold acknowledged entries nobody else
            // has), and only if it is still behind (not a late duplicate).
            let ours = epoch == self.epoch && from == self.primary;
            // Not behind: the primary has an old position of ours.
            return if !ours {
                vec![]
            } else if !self.counted && self.logged + 1 < log_start {
                vec![Effect::Rebuild { log_start }]
            } else {
                vec![self.ack()]
            };
        }
        // A `Quiet` is an empty Prepare that leaves this copy quiet.
        let quiet_word = matches!(msg, ReplMsg::Quiet { .. });
        let msg = match msg {
            ReplMsg::Quiet {
                epoch,
                committed,
                sent_at,
            } => ReplMsg::Prepare {
                epoch,
                history: None,
                entries: vec![],
                committed,
                sent_at,
                counted: false,
            },
            other => other,
        };
        let ReplMsg::Prepare {
            epoch,
            history,
            entries,
            committed,
            sent_at,
            counted,
        } = msg
        else {
            return vec![];
        };
        if epoch < self.epoch {
            return vec![Effect::Send {
                to: from.to_owned(),
                msg: ReplMsg::StaleEpoch { epoch: self.epoch },
            }];
        }
        if epoch > self.epoch {
            return vec![Effect::FetchMap { seen: epoch }];
        }
        if from != self.primary {
            return vec![]; // same epoch, not our primary: impossible with one map
        }
        // Our primary, at our epoch: we are in sync (even before reconciling).
        self.in_sync_at = Some(now);
        let mut effects = Vec::new();
        if let Some(tail) = &self.reconcile {
            // Nothing is taken before we know where our log agrees.
            let Some(history) = history else {
                return vec![];
            };
            debug_assert!(
                tail.iter().all(|(_, e)| *e <= self.epoch),
                "an epoch went backwards"
            );
            let keep = history.agreement(self.applied, tail).max(self.applied);
            self.reconcile = None;
            self.persisting = self.persisting.min(keep);
            self.logged = self.logged.min(keep);
            effects.push(Effect::Reconciled {
                keep,
                epoch: self.epoch,
            });
        }
        self.heard = true;
        self.counted |= counted;
        // The newest word decides (an older one may arrive late).
        if sent_at >= self.last_sent_at {
            self.quiet = quiet_word;
        }
        self.last_sent_at = self.last_sent_at.max(sent_at);
        self.primary_committed = self.primary_committed.max(committed);
        for e in entries {
            debug_assert!(e.epoch <= self.epoch, "entry {} of a newer epoch", e.seq);
            if e.seq > self.persisting && self.buffer.len() < MAX_BUFFERED {
                self.buffer.entry(e.seq).or_insert(e);
            }
        }
        let mut ready = Vec::new();
        while let Some(e) = self.buffer.remove(&(self.persisting + 1)) {
            self.persisting = e.seq;
            ready.push(e);
        }
        if ready.is_empty() {
            // Nothing new to write: acknowledge what we have (duplicates,
            // heartbeats, gaps) so the primary knows where we stand.
            effects.push(self.ack());
        } else {
            effects.push(Effect::Persist(ready));
        }
        effects.extend(self.apply());
        effects
    }

    /// The log is durable up to `upto`.
    pub fn on_persisted(&mut self, upto: Seq) -> Vec<Effect> {
        self.logged = self.logged.max(upto.min(self.persisting));
        let mut effects = vec![self.ack()];
        effects.extend(self.apply());
        self.check_invariants();
        effects
    }

    /// The rows reflect every entry up to `upto` (the actor applied what
    /// an `Effect::Commit` asked for; as raft-rs's `advance_apply_to`).
    /// May ask to truncate the log: below what the rows hold and the
    /// primary's commit point (module docs, "Log retention").
    pub fn on_applied(&mut self, upto: Seq) -> Vec<Effect> {
        self.rows = self.rows.max(upto);
        let safe = self.rows.min(self.primary_committed);
        let effects = self.trunc.step(safe).into_iter().collect();
        self.check_invariants();
        effects
    }

    /// The invariants of `super` (module docs), checked in debug builds
    /// after every event.
    fn check_invariants(&self) {
        debug_assert!(
            self.rows <= self.applied,
            "rows at {} past what was applied ({})",
            self.rows,
            self.applied
        );
        debug_assert!(
            self.applied <= self.primary_committed,
            "applied {} past the primary's commit point {}",
            self.applied,
            self.primary_committed
        );
        debug_assert!(
            self.applied <= self.logged && self.logged <= self.persisting,
            "applied {} <= logged {} <= persisting {} broken",
            self.applied,
            self.logged,
            self.persisting
        );
    }

    fn ack(&self) -> Effect {
        let (epoch, logged, echo) = (self.epoch, self.logged, self.last_sent_at);
        Effect::Send {
            to: self.primary.clone(),
            msg: if self.quiet {
                ReplMsg::QuietAck {
                    epoch,
                    logged,
                    echo,
                }
            } else {
                ReplMsg::Ack {
                    epoch,
                    logged,
                    echo,
                }
            },
        }
    }

    /// Applies what the primary committed and we have durably.
    fn apply(&mut self) -> Vec<Effect> {
        let upto = self.primary_committed.min(self.logged);
        if upto > self.applied {
            self.applied = upto;
            vec![Effect::Commit { upto }]
        } else {
            vec![]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(epoch: Epoch, committed: Seq, entries: Vec<LogEntry>) -> ReplMsg {
        ReplMsg::Prepare {
            epoch,
            history: None,
            entries,
            committed,
            sent_at: 0,
            counted: true,
        }
    }

    fn refusal(b: &Backup, mode: ReadMode, now: Millis) -> String {
        format!("shard t/0 {}", b.read_permit(mode, now).unwrap_err())
    }

    #[test]
    fn a_backup_serves_replica_reads_only_while_its_primary_speaks_at_its_epoch() {
        let cfg = LeaseConfig::default();
        let mut b = Backup::new(3, "p".into(), 0, 0, None, cfg);
        let not_in_sync = "shard t/0 copy here is not in sync (no word from primary p at epoch 3 within the lease); read from the primary";
        assert_eq!(
            refusal(&b, ReadMode::Replica, 0),
            not_in_sync,
            "not before it hears"
        );
        // Another node, or an older epoch, does not count.
        b.on_message("q", prepare(3, 0, vec![]), 10);
        b.on_message("p", prepare(2, 0, vec![]), 10);
        assert_eq!(refusal(&b, ReadMode::Replica, 10), not_in_sync);
        assert_eq!(
            b.primary_contact(),
            10,
            "any word from the primary is contact"
        );
        b.on_message("p", prepare(3, 0, vec![]), 20);
        assert_eq!(b.read_permit(ReadMode::Replica, 20), Ok(()));
        assert_eq!(b.read_permit(ReadMode::Replica, 20 + cfg.lease), Ok(()));
        assert_eq!(refusal(&b, ReadMode::Replica, 21 + cfg.lease), not_in_sync);
        assert_eq!(
            refusal(&b, ReadMode::Strong, 20),
            "shard t/0 is not led here (primary is p); strong reads go to the primary"
        );
    }

    #[test]
    fn a_session_read_waits_for_the_rows_not_the_commit_point() {
        let mut b = Backup::new(1, "p".into(), 0, 0, None, LeaseConfig::default());
        let entry = LogEntry {
            epoch: 1,
            seq: 1,
            op: vec![],
        };
        b.on_message("p", prepare(1, 1, vec![entry]), 0);
        assert!(b.on_persisted(1).contains(&Effect::Commit { upto: 1 }));
        assert_eq!(
            refusal(&b, ReadMode::AtLeast(1), 0),
            "shard t/0 copy here has applied entry 0 of 1 the session needs; read from the primary"
        );
        b.on_applied(1);
        assert_eq!(b.read_permit(ReadMode::AtLeast(1), 0), Ok(()));
    }

    #[test]
    fn the_last_contact_is_carried_to_the_next_backup_of_the_copy() {
        let b = Backup::new(4, "p".into(), 0, 0, None, LeaseConfig::default()).carry_contact(700);
        assert_eq!(b.primary_contact(), 700);
        assert!(
            b.read_permit(ReadMode::Replica, 700).is_err(),
            "contact is not sync"
        );
    }

    fn entries(seqs: std::ops::RangeInclusive<Seq>) -> Vec<LogEntry> {
        seqs.map(|seq| LogEntry {
            epoch: 1,
            seq,
            op: vec![],
        })
        .collect()
    }

    #[test]
    fn a_backup_truncates_below_what_it_applied_and_the_commit_point_in_batches() {
        let retention = LogRetention {
            entries: 10,
            bytes: 0,
            batch: 4,
            ..LogRetention::default()
        };
        let mut b = Backup::new(1, "p".into(), 0, 0, None, LeaseConfig::default())
            .with_retention(retention, 1);
        b.on_message("p", prepare(1, 40, entries(1..=50)), 0);
        assert!(b.on_persisted(50).contains(&Effect::Commit { upto: 40 }));
        // Rows at 20 of the 40 committed: the safe point is 20.
        assert_eq!(
            b.on_applied(20),
            vec![Effect::Truncate {
                below: 11,
                limit: 21
            }]
        );
        assert_eq!(b.on_applied(22), vec![], "less than a batch");
        assert_eq!(
            b.on_applied(40),
            vec![Effect::Truncate {
                below: 31,
                limit: 41
            }]
        );
        // Logged past the commit point: never truncated beyond it.
        b.on_message("p", prepare(1, 50, vec![]), 1);
        assert_eq!(
            b.on_applied(50),
            vec![Effect::Truncate {
                below: 41,
                limit: 51
            }]
        );
    }

    #[test]
    fn only_a_learner_that_does_not_count_rebuilds_when_told() {
        let rebuild = ReplMsg::Rebuild {
            epoch: 1,
            log_start: 50,
        };
        let mut learner = Backup::new(1, "p".into(), 20, 20, None, LeaseConfig::default());
        assert_eq!(
            learner.on_message("p", rebuild.clone(), 0),
            vec![Effect::Rebuild { log_start: 50 }]
        );
        assert_eq!(
            learner.on_message("q", rebuild.clone(), 0),
            vec![],
            "not its primary"
        );
        // A counted copy may hold acknowledged entries: it never discards
        // them; it tells the primary where it stands.
        let mut counted = Backup::new(1, "p".into(), 20, 20, None, LeaseConfig::default());
        counted.on_message("p", prepare(1, 20, vec![]), 0);
        let fx = counted.on_message("p", rebuild, 0);
        assert!(
            matches!(
                fx[..],
                [Effect::Send {
                    msg: ReplMsg::Ack { logged: 20, .. },
                    ..
                }]
            ),
            "{fx:?}"
        );
    }
}
