//! The backup side of a shard's replication.

use std::collections::BTreeMap;

use super::{Effect, Epoch, LogEntry, Millis, ReplMsg, Seq};

use crate::cluster_map::NodeId;

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
    /// Applied up to here.
    applied: Seq,
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
}

impl Backup {
    /// A backup for `epoch` of `primary`, whose durable log ends at `logged`
    /// and which has applied up to `applied`. `reconcile` is `Some(tail)`
    /// when the log was written in an older epoch: the `(seq, epoch)` of its
    /// entries after `applied` (see `EpochHistory::agreement`).
    pub fn new(
        epoch: Epoch,
        primary: NodeId,
        logged: Seq,
        applied: Seq,
        reconcile: Option<Vec<(Seq, Epoch)>>,
    ) -> Self {
        Self {
            reconcile,
            heard: false,
            counted: false,
            epoch,
            primary,
            logged,
            persisting: logged,
            applied,
            primary_committed: applied,
            buffer: BTreeMap::new(),
            last_sent_at: 0,
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

    /// A message from (what claims to be) the primary.
    pub fn on_message(&mut self, from: &str, msg: ReplMsg) -> Vec<Effect> {
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
        let mut effects = Vec::new();
        if let Some(tail) = &self.reconcile {
            // Nothing is taken before we know where our log agrees.
            let Some(history) = history else {
                return vec![];
            };
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
        self.last_sent_at = self.last_sent_at.max(sent_at);
        self.primary_committed = self.primary_committed.max(committed);
        for e in entries {
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
        effects
    }

    fn ack(&self) -> Effect {
        Effect::Send {
            to: self.primary.clone(),
            msg: ReplMsg::Ack {
                epoch: self.epoch,
                logged: self.logged,
                echo: self.last_sent_at,
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
