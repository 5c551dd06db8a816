//! The primary side of a shard's replication.

use std::collections::{BTreeMap, VecDeque};

use super::{
    Effect, Epoch, EpochHistory, LeaseConfig, LogEntry, LogRetention, Millis, ReadRefusal, ReplMsg,
    Seq, Truncation,
};
use crate::cluster_map::NodeId;
use crate::wire::ReadMode;

/// Why a proposal was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("replication window full: {0} writes in flight")]
    WindowFull(usize),
    #[error("new primary at epoch {epoch} waits {wait_ms} ms more for the old primary's lease to run out")]
    NotYet { epoch: Epoch, wait_ms: Millis },
    #[error("primary lease expired at epoch {epoch}: backup {backup} has not answered for {silent_ms} ms")]
    LeaseExpired {
        epoch: Epoch,
        backup: NodeId,
        silent_ms: Millis,
    },
    #[error("only {members} of the {needed} copies a write needs are members at epoch {epoch}: writes are refused until a new copy has caught up")]
    TooFewCopies {
        epoch: Epoch,
        members: usize,
        needed: usize,
    },
}

#[derive(Debug, Clone, Default)]
struct Peer {
    /// A backup (counts for commits and the lease) or a learner (not for
    /// the lease; for commits only once `counted`).
    voting: bool,
    /// A learner that has had every committed entry: it counts for commits
    /// from then on in this epoch (not for the lease), because the
    /// coordinator may make it a backup at any moment on its word.
    counted: bool,
    /// Has acknowledged something in this epoch (so it has reconciled).
    answered: bool,
    /// Every entry up to this is durable on the backup.
    acked: Seq,
    /// Send time of the newest message the backup answered.
    heard_at: Option<Millis>,
    /// Last time we sent to it.
    sent_at: Option<Millis>,
    /// Last time its `acked` advanced or we resent to it; a backup behind
    /// for a heartbeat period since then gets the missing entries again.
    progress_at: Millis,
    /// The echo of its newest `QuietAck`: it took a `Quiet` sent then.
    quiet_echo: Option<Millis>,
}

impl Peer {
    /// Whether nothing commits without this peer's ack.
    fn counts(&self) -> bool {
        self.voting || self.counted
    }
}

/// The primary of one shard in one epoch.
#[derive(Debug, Clone)]
pub struct Primary {
    epoch: Epoch,
    cfg: LeaseConfig,
    peers: BTreeMap<NodeId, Peer>,
    /// Entries not yet acknowledged by every backup (they may need resending).
    unacked: VecDeque<LogEntry>,
    /// The log when this primary took the epoch (see `ReplMsg::Prepare`).
    history: EpochHistory,
    /// No writes or strong reads before this time (the old primary's lease).
    not_before: Millis,
    /// In a handover, the previous primary, now our backup: once it answers
    /// in our epoch it has stopped serving, and `not_before` is lifted.
    handover_from: Option<NodeId>,
    last_seq: Seq,
    /// Our own log is durable up to here.
    persisted: Seq,
    committed: Seq,
    /// The rows reflect every entry up to here (`on_applied`): they reach
    /// `committed` a group commit after it moves.
    applied: Seq,
    /// Members (this primary and its backups) a write needs.
    min_copies: usize,
    /// When this primary first saw the time (its first tick or proposal).
    since: Option<Millis>,
    /// What of its log this copy keeps (module docs, "Log retention").
    trunc: Truncation,
    /// Quiet: idle, every backup told so; sends nothing until woken
    /// (module docs, "Quiescence").
    quiet: bool,
    /// The last write proposed or wake-up: the shard goes quiet
    /// `quiet_after` later.
    active_at: Millis,
}

impl Primary {
    /// A primary for `epoch` whose log (committed or not) ends at `last_seq`
    /// and is committed up to `committed`. Entries after `committed` that it
    /// inherited must be passed in `inherited` so they are replicated and
    /// committed first. `learners` receive the log without counting for
    /// the lease, nor for commits until they have caught up; `not_before`
    /// is when the old primary's lease has surely run out (0 when this node
    /// already led the previous epoch).
    pub fn new(
        epoch: Epoch,
        backups: &[NodeId],
        learners: &[NodeId],
        committed: Seq,
        inherited: Vec<LogEntry>,
        cfg: LeaseConfig,
        not_before: Millis,
    ) -> Self {
        let last_seq = inherited.last().map(|e| e.seq).unwrap_or(committed);
        debug_assert!(inherited.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let peer = |voting| Peer {
            voting,
            ..Default::default()
        };
        Self {
            epoch,
            cfg,
            peers: backups
                .iter()
                .map(|b| (b.clone(), peer(true)))
                .chain(learners.iter().map(|l| (l.clone(), peer(false))))
                .collect(),
            history: EpochHistory::of(committed, &inherited),
            unacked: inherited.into(),
            not_before,
            handover_from: None,
            last_seq,
            persisted: last_seq,
            committed,
            applied: committed,
            min_copies: 1,
            since: None,
            trunc: Truncation::new(LogRetention::default(), 1),
            quiet: false,
            active_at: 0,
        }
    }

    /// Keeps the log as `retention` says; `log_start` is the first entry
    /// the durable log still holds (nothing below it is there).
    pub fn with_retention(mut self, retention: LogRetention, log_start: Seq) -> Self {
        self.trunc = Truncation::new(retention, log_start);
        self
    }

    /// Entries below this may have been deleted from the log.
    pub fn log_start(&self) -> Seq {
        self.trunc.start
    }

    /// Refuses writes while the configuration has fewer than `n` members
    /// (this primary included): a write acknowledged by fewer copies would
    /// be lost with one more failure.
    pub fn with_min_copies(mut self, n: usize) -> Self {
        self.min_copies = n;
        self
    }

    /// Backups (and caught-up learners) that have not answered a message
    /// sent within the lease, once this primary has led for a whole lease
    /// (before that, none has had the time). The coordinator reads these reports to tell a backup
    /// that cannot hear (or be heard) from a primary that cannot hear.
    /// A quiet primary reports none: it sends nothing, so hears nothing.
    pub fn silent_backups(&self, now: Millis) -> Vec<NodeId> {
        let Some(since) = self.since.filter(|_| !self.quiet) else {
            return vec![];
        };
        if now.saturating_sub(since) <= self.cfg.lease {
            return vec![];
        }
        // Caught-up learners count for commits: one gone silent holds
        // writes back like a backup, so it is reported too.
        self.peers
            .iter()
            .filter(|(_, p)| p.counts())
            .filter(|(_, p)| {
                p.heard_at
                    .is_none_or(|t| now.saturating_sub(t) > self.cfg.lease)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Quiet (module docs, "Quiescence"): nothing to send until a write,
    /// a message from a member or [`wake`](Self::wake).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Woken (or started) less than a lease ago: a lease may be on its way
    /// (the backups' answers to the wake-up), so a read refused for want of
    /// one is worth holding for that long.
    pub fn lease_coming(&self, now: Millis) -> bool {
        !self.quiet
            && now >= self.not_before
            && self
                .since
                .is_some_and(|s| now.saturating_sub(s) <= self.cfg.lease)
    }

    /// Wakes a quiet primary (a strong read wants a lease): a heartbeat to
    /// every backup, whose answers renew the lease.
    pub fn wake(&mut self, now: Millis) -> Vec<Effect> {
        if !self.quiet {
            return vec![];
        }
        self.stir(now);
        let peers: Vec<NodeId> = self.peers.keys().cloned().collect();
        let effects = peers.iter().flat_map(|id| self.resend(id, now)).collect();
        self.check_invariants();
        effects
    }

    /// A write or a wake-up: the idle time starts again, and a quiet
    /// primary is awake from now (a fresh start for `silent_backups` and
    /// the lease check of `propose`: its backups have not had the time to
    /// answer).
    fn stir(&mut self, now: Millis) {
        if self.quiet {
            self.quiet = false;
            self.since = Some(now);
        }
        self.active_at = self.active_at.max(now);
    }

    /// The last activity (a write, a wake-up) or, without one, when this
    /// primary started.
    fn idle_since(&self, now: Millis) -> Millis {
        self.active_at.max(self.since.unwrap_or(now))
    }

    /// Whether the shard may go quiet at `now`: idle for `quiet_after`,
    /// nothing in flight, every peer a backup holding every entry, no old
    /// lease being waited out.
    fn settled(&self, now: Millis) -> bool {
        self.cfg.quiet_after > 0
            && now.saturating_sub(self.idle_since(now)) >= self.cfg.quiet_after
            && now >= self.not_before
            && self.handover_from.is_none()
            && self.applied == self.last_seq
            && self.committed == self.last_seq
            && self.history.last <= self.committed
            && self
                .peers
                .values()
                .all(|p| p.voting && p.answered && p.acked == self.last_seq)
    }

    /// Goes quiet once settled and every backup answered a `Quiet` sent
    /// since the last activity.
    fn try_quiet(&mut self, now: Millis) {
        let since = self.idle_since(now);
        if !self.quiet
            && self.settled(now)
            && self
                .peers
                .values()
                .all(|p| p.quiet_echo.is_some_and(|e| e > since))
        {
            self.quiet = true;
        }
    }

    pub fn committed(&self) -> Seq {
        self.committed
    }

    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// A clean handover: `old` (the previous primary, a backup of this
    /// epoch) lifts the wait for its lease by answering us.
    pub fn with_handover_from(mut self, old: NodeId) -> Self {
        if self.peers.get(&old).is_some_and(|p| p.voting) {
            self.handover_from = Some(old);
        }
        self
    }

    /// A primary staying primary into a new epoch keeps what it knew of the
    /// backups that stay: their last answers still bound the lease (none of
    /// them can have followed anyone else meanwhile), so strong reads do
    /// not pause at every reconfiguration.
    ///
    /// It also keeps waiting for an older primary's lease if it still was
    /// (`not_before`, and the handover that may lift it): a configuration
    /// change (a learner added, a backup dropped) right after a promotion
    /// does not end a lease that may still run elsewhere.
    pub fn carry_lease_from(mut self, previous: &Primary) -> Self {
        debug_assert!(previous.epoch <= self.epoch, "an epoch went backwards");
        for (id, peer) in self.peers.iter_mut() {
            if let Some(old) = previous.peers.get(id).filter(|p| p.voting) {
                peer.heard_at = old.heard_at;
            }
        }
        if previous.not_before > self.not_before {
            self.not_before = previous.not_before;
            self.handover_from = previous
                .handover_from
                .clone()
                .filter(|old| self.peers.get(old).is_some_and(|p| p.voting));
        }
        self
    }

    /// How far each learner has logged (for progress reports).
    pub fn learner_progress(&self) -> impl Iterator<Item = (&NodeId, Seq)> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.voting)
            .map(|(id, p)| (id, p.acked))
    }

    /// Whether every backup answered a message sent within the lease (and
    /// any previous primary's lease is over).
    /// A promoted primary also waits until it has committed what it
    /// inherited, so its rows hold every acknowledged write.
    pub fn lease_valid(&self, now: Millis) -> bool {
        now >= self.not_before
            && self.committed >= self.history.last
            && self.lease_problem(now).is_none()
    }

    /// Whether this primary may serve a read (in any mode) at `now`: only
    /// under its lease (see `lease_valid`), and only once its rows hold
    /// everything it committed. Applies are written a group commit after
    /// the commit point moves; a promoted primary's inherited entries,
    /// acknowledged by its predecessor, are among them.
    pub fn read_permit(&self, mode: ReadMode, now: Millis) -> Result<(), ReadRefusal> {
        self.read_permit_upto(mode, now, self.committed)
    }

    /// As [`read_permit`](Self::read_permit) for a read that arrived when
    /// the commit point was `needed` and has waited for the rows since:
    /// they need to hold only that much. Every write acknowledged before
    /// the read arrived, and every row an earlier read saw, is at or below
    /// it, so serving there is linearizable, and a read is not kept
    /// waiting behind writes committed after it arrived.
    pub fn read_permit_upto(
        &self,
        _mode: ReadMode,
        now: Millis,
        needed: Seq,
    ) -> Result<(), ReadRefusal> {
        if !self.lease_valid(now) {
            return Err(ReadRefusal::NoLease { epoch: self.epoch });
        }
        let needed = needed.min(self.committed);
        if self.applied < needed {
            return Err(ReadRefusal::Applying {
                from: self.applied + 1,
                upto: needed,
            });
        }
        Ok(())
    }

    /// The rows reflect every entry up to `upto` (the actor applied what
    /// an `Effect::Commit` asked for; as raft-rs's `advance_apply_to`).
    /// May ask to truncate the log.
    pub fn on_applied(&mut self, upto: Seq) -> Vec<Effect> {
        self.applied = self.applied.max(upto);
        let effects = self.truncate().into_iter().collect();
        self.check_invariants();
        effects
    }

    /// Asks to delete what nobody needs (module docs, "Log retention"):
    /// below what the rows hold and what every peer fed, backup or
    /// learner, has acknowledged (0 for one that has not answered).
    fn truncate(&mut self) -> Option<Effect> {
        let members = self.counted_min(self.applied);
        let learners = self
            .peers
            .values()
            .filter(|p| !p.counts())
            .map(|p| p.acked)
            .min()
            .unwrap_or(members);
        // A learner not counted yet holds back at most `learner_hold`.
        let held = learners.max(members.saturating_sub(self.trunc.cfg.learner_hold));
        self.trunc.step(held.min(members))
    }

    /// The invariants of `super` (module docs), checked in debug builds
    /// after every event.
    fn check_invariants(&self) {
        debug_assert!(
            self.applied <= self.committed
                && self.committed <= self.persisted
                && self.persisted <= self.last_seq,
            "applied {} <= committed {} <= persisted {} <= last {} broken",
            self.applied,
            self.committed,
            self.persisted,
            self.last_seq
        );
        debug_assert!(
            self.peers.values().all(|p| p.acked <= self.last_seq),
            "a backup acked past the last entry {}",
            self.last_seq
        );
    }

    /// What a peer that has not answered in this epoch needs to reconcile.
    fn history_for(&self, peer: &Peer) -> Option<EpochHistory> {
        (!peer.answered).then(|| self.history.clone())
    }

    fn voters(&self) -> impl Iterator<Item = (&NodeId, &Peer)> {
        self.peers.iter().filter(|(_, p)| p.voting)
    }

    /// The first entry still held in memory (older ones are on disk only).
    fn mem_start(&self) -> Seq {
        self.unacked
            .front()
            .map(|e| e.seq)
            .unwrap_or(self.last_seq + 1)
    }

    fn lease_problem(&self, now: Millis) -> Option<(NodeId, Millis)> {
        self.voters().find_map(|(id, p)| match p.heard_at {
            Some(t) if now.saturating_sub(t) <= self.cfg.lease => None,
            Some(t) => Some((id.clone(), now.saturating_sub(t))),
            None => Some((id.clone(), Millis::MAX)),
        })
    }

    /// Takes a new operation: assigns it the next sequence number, logs it
    /// and sends it to every backup.
    pub fn propose(
        &mut self,
        op: Vec<u8>,
        now: Millis,
    ) -> Result<(Seq, Vec<Effect>), ProposeError> {
        if now < self.not_before {
            return Err(ProposeError::NotYet {
                epoch: self.epoch,
                wait_ms: self.not_before - now,
            });
        }
        self.since.get_or_insert(now);
        self.stir(now);
        let members = 1 + self.voters().count();
        if members < self.min_copies {
            return Err(ProposeError::TooFewCopies {
                epoch: self.epoch,
                members,
                needed: self.min_copies,
            });
        }
        let in_flight = (self.last_seq - self.committed) as usize;
        if in_flight >= self.cfg.window {
            return Err(ProposeError::WindowFull(in_flight));
        }
        // A primary that has heard from its backups once and then lost one
        // stops taking writes: it is about to be replaced. (Not one just
        // woken: its backups have not had the time to answer.)
        let awake_for = now.saturating_sub(self.since.unwrap_or(now));
        if let Some((backup, silent_ms)) = self.lease_problem(now) {
            if awake_for > self.cfg.lease && self.voters().all(|(_, p)| p.heard_at.is_some()) {
                return Err(ProposeError::LeaseExpired {
                    epoch: self.epoch,
                    backup,
                    silent_ms,
                });
            }
        }
        self.last_seq += 1;
        let entry = LogEntry {
            epoch: self.epoch,
            seq: self.last_seq,
            op,
        };
        self.unacked.push_back(entry.clone());
        let mut effects = vec![Effect::Persist(vec![entry.clone()])];
        // Pipelined: every backup gets every new entry at once; one that
        // missed earlier ones buffers it and is repaired by `on_tick`. A
        // learner still fed from the disk log gets it later, in order.
        let mem_start = self.mem_start();
        for (id, peer) in self.peers.iter_mut() {
            if !peer.voting && peer.acked + 1 < mem_start {
                continue;
            }
            peer.sent_at = Some(now);
            let history = (!peer.answered).then(|| self.history.clone());
            effects.push(Effect::Send {
                to: id.clone(),
                msg: ReplMsg::Prepare {
                    epoch: self.epoch,
                    history,
                    entries: vec![entry.clone()],
                    committed: self.committed,
                    sent_at: now,
                    counted: peer.counts(),
                },
            });
        }
        self.check_invariants();
        Ok((entry.seq, effects))
    }

    /// Our own log is durable up to `upto`.
    pub fn on_persisted(&mut self, upto: Seq) -> Vec<Effect> {
        self.persisted = self.persisted.max(upto.min(self.last_seq));
        let effects = self.advance();
        self.check_invariants();
        effects
    }

    /// A message from a backup.
    pub fn on_message(&mut self, from: &str, msg: ReplMsg, now: Millis) -> Vec<Effect> {
        let effects = self.step(from, msg, now);
        self.check_invariants();
        effects
    }

    fn step(&mut self, from: &str, msg: ReplMsg, now: Millis) -> Vec<Effect> {
        let quiet_ack = matches!(msg, ReplMsg::QuietAck { .. });
        let msg = match msg {
            ReplMsg::QuietAck {
                epoch,
                logged,
                echo,
            } => ReplMsg::Ack {
                epoch,
                logged,
                echo,
            },
            other => other,
        };
        match msg {
            ReplMsg::Ack {
                epoch,
                logged,
                echo,
            } if epoch == self.epoch => {
                if self.handover_from.as_deref() == Some(from) {
                    // The old primary is our backup now: its lease is over.
                    self.not_before = 0;
                    self.handover_from = None;
                }
                let committed = self.committed;
                let Some(peer) = self.peers.get_mut(from) else {
                    return vec![];
                };
                peer.answered = true;
                let logged = logged.min(self.last_seq);
                let advanced = logged > peer.acked;
                if advanced {
                    peer.acked = logged;
                    peer.progress_at = now;
                }
                // A learner with everything committed so far counts for
                // commits from now on: once it says it is ready (it hears
                // this first), it holds every entry acknowledged to a client.
                if peer.acked >= committed {
                    peer.counted = true;
                }
                peer.heard_at = Some(peer.heard_at.map_or(echo, |h| h.max(echo)).min(now));
                if quiet_ack {
                    peer.quiet_echo = Some(peer.quiet_echo.map_or(echo, |e| e.max(echo)));
                }
                let behind = peer.acked + 1 < self.mem_start();
                // A plain ack to a quiet primary (a restarted backup saying
                // where it stands): it may need entries; wake up.
                let mut effects = if quiet_ack { vec![] } else { self.wake(now) };
                effects.extend(self.advance());
                self.try_quiet(now);
                // A copy catching up from the disk log gets its next chunk as
                // soon as it has the previous one.
                if advanced && behind {
                    effects.extend(self.resend(from, now));
                }
                effects
            }
            ReplMsg::Ack { epoch, .. } | ReplMsg::StaleEpoch { epoch } if epoch > self.epoch => {
                vec![Effect::FetchMap { seen: epoch }]
            }
            // Old-epoch acks, or anything else, change nothing.
            _ => vec![],
        }
    }

    /// Time passes: resend to backups that made no progress for a heartbeat
    /// period while behind, and heartbeat the idle ones.
    pub fn on_tick(&mut self, now: Millis) -> Vec<Effect> {
        self.since.get_or_insert(now);
        self.try_quiet(now);
        if self.quiet {
            return vec![];
        }
        let settled = self.settled(now);
        let hb = self.cfg.heartbeat;
        let last = self.last_seq;
        let due: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                let stuck = p.acked < last && now.saturating_sub(p.progress_at) >= hb;
                let idle = p.sent_at.is_none_or(|t| now.saturating_sub(t) >= hb);
                stuck || idle
            })
            .map(|(id, _)| id.clone())
            .collect();
        let effects = due
            .into_iter()
            .flat_map(|id| {
                if settled {
                    self.quiet_word(&id, now)
                } else {
                    self.resend(&id, now)
                }
            })
            .collect();
        self.check_invariants();
        effects
    }

    /// A settled primary's heartbeat: `Quiet` (module docs, "Quiescence").
    fn quiet_word(&mut self, to: &str, now: Millis) -> Vec<Effect> {
        let Some(peer) = self.peers.get_mut(to) else {
            return vec![];
        };
        peer.sent_at = Some(now);
        vec![Effect::Send {
            to: to.to_owned(),
            msg: ReplMsg::Quiet {
                epoch: self.epoch,
                committed: self.committed,
                sent_at: now,
            },
        }]
    }

    /// Sends a backup everything it has not acknowledged (at most a window),
    /// or a heartbeat when it has everything.
    fn resend(&mut self, to: &str, now: Millis) -> Vec<Effect> {
        let mem_start = self.mem_start();
        let Some(peer) = self.peers.get(to) else {
            return vec![];
        };
        let history = self.history_for(peer);
        let peer = self.peers.get_mut(to).expect("just found");
        if peer.acked + 1 < mem_start {
            // Older than what memory holds: committed, so on the disk.
            peer.sent_at = Some(now);
            peer.progress_at = now;
            let from = peer.acked + 1;
            let log_start = self.trunc.start;
            if from < log_start {
                // Never a gap. A peer that has not answered yet gets a
                // heartbeat (it answers with where it stands); a learner
                // behind the log is told to copy a snapshot again; a
                // counted peer cannot be here (module docs).
                let msg = if peer.answered && !peer.counts() {
                    ReplMsg::Rebuild {
                        epoch: self.epoch,
                        log_start,
                    }
                } else {
                    debug_assert!(
                        !peer.answered,
                        "counted peer {to} at {} is behind the log start {log_start}",
                        peer.acked
                    );
                    ReplMsg::Prepare {
                        epoch: self.epoch,
                        history,
                        entries: vec![],
                        committed: self.committed,
                        sent_at: now,
                        counted: peer.counts(),
                    }
                };
                return vec![Effect::Send {
                    to: to.to_owned(),
                    msg,
                }];
            }
            return vec![Effect::SendLog {
                to: to.to_owned(),
                from,
                upto: (mem_start - 1).min(from + self.cfg.window as Seq - 1),
                msg: ReplMsg::Prepare {
                    epoch: self.epoch,
                    history,
                    entries: vec![],
                    committed: self.committed,
                    sent_at: now,
                    counted: peer.counts(),
                },
            }];
        }
        let entries: Vec<LogEntry> = self
            .unacked
            .iter()
            .filter(|e| e.seq > peer.acked)
            .take(self.cfg.window)
            .cloned()
            .collect();
        peer.sent_at = Some(now);
        peer.progress_at = now;
        vec![Effect::Send {
            to: to.to_owned(),
            msg: ReplMsg::Prepare {
                epoch: self.epoch,
                history,
                entries,
                committed: self.committed,
                sent_at: now,
                counted: peer.counts(),
            },
        }]
    }

    /// The lowest of `own` (a position of the primary's) and what every
    /// peer that counts for commits (backups, caught-up learners) has acked.
    fn counted_min(&self, own: Seq) -> Seq {
        self.peers
            .values()
            .filter(|p| p.counts())
            .map(|p| p.acked)
            .fold(own, Seq::min)
    }

    /// Commits what is durable on the primary, on every backup and on
    /// every learner that has caught up.
    fn advance(&mut self) -> Vec<Effect> {
        let everywhere = self.counted_min(self.persisted);
        let mut effects = Vec::new();
        if everywhere > self.committed {
            self.committed = everywhere;
            effects.push(Effect::Commit { upto: everywhere });
        }
        let all_acked = self
            .voters()
            .map(|(_, p)| p.acked)
            .min()
            .unwrap_or(self.persisted);
        while self
            .unacked
            .front()
            .is_some_and(|e| e.seq <= all_acked.min(self.committed))
        {
            self.unacked.pop_front();
        }
        effects.extend(self.truncate());
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(backups: &[&str]) -> Primary {
        let backups: Vec<NodeId> = backups.iter().map(|b| b.to_string()).collect();
        Primary::new(1, &backups, &[], 0, vec![], LeaseConfig::default(), 0)
    }

    fn ack(p: &mut Primary, from: &str, logged: Seq, echo: Millis, now: Millis) {
        p.on_message(
            from,
            ReplMsg::Ack {
                epoch: 1,
                logged,
                echo,
            },
            now,
        );
    }

    #[test]
    fn a_configuration_below_min_copies_refuses_writes() {
        let mut p = primary(&["b"]).with_min_copies(2);
        assert!(p.propose(vec![], 0).is_ok());
        let mut alone = primary(&[]).with_min_copies(2);
        assert_eq!(
            alone.propose(vec![], 0).unwrap_err(),
            ProposeError::TooFewCopies {
                epoch: 1,
                members: 1,
                needed: 2
            }
        );
        assert!(
            primary(&[]).propose(vec![], 0).is_ok(),
            "min 1: a lone copy writes"
        );
    }

    #[test]
    fn a_primary_reads_under_its_lease_once_its_rows_hold_its_commits() {
        let cfg = LeaseConfig::default();
        let backups = ["b".to_string()];
        let refusal = |p: &Primary, now| {
            format!(
                "shard t/0 {}",
                p.read_permit(ReadMode::Strong, now).unwrap_err()
            )
        };
        // Promoted at epoch 2: waits for the old lease to end.
        let mut p = Primary::new(2, &backups, &[], 0, vec![], cfg, 1500);
        assert_eq!(
            refusal(&p, 1000),
            "shard t/0 refuses reads: primary lease not held at epoch 2"
        );
        p.on_message(
            "b",
            ReplMsg::Ack {
                epoch: 2,
                logged: 0,
                echo: 1400,
            },
            1450,
        );
        assert_eq!(p.read_permit(ReadMode::Strong, 1500), Ok(()));
        let (_, _) = p.propose(vec![], 1500).unwrap();
        p.on_persisted(1);
        p.on_message(
            "b",
            ReplMsg::Ack {
                epoch: 2,
                logged: 1,
                echo: 1500,
            },
            1510,
        );
        assert_eq!(p.committed(), 1);
        // Committed, not yet in the rows: every mode waits.
        for mode in [ReadMode::Strong, ReadMode::Replica, ReadMode::AtLeast(0)] {
            assert_eq!(
                format!("shard t/0 {}", p.read_permit(mode, 1510).unwrap_err()),
                "shard t/0 is applying entries 1..=1; retry"
            );
        }
        // A read that arrived before entry 1 committed (and was held)
        // needs only what was committed then; one arriving now needs 1.
        assert_eq!(p.read_permit_upto(ReadMode::Strong, 1510, 0), Ok(()));
        assert_eq!(
            p.read_permit_upto(ReadMode::Strong, 1510, 1),
            Err(ReadRefusal::Applying { from: 1, upto: 1 })
        );
        p.on_applied(1);
        assert_eq!(p.read_permit(ReadMode::Strong, 1510), Ok(()));
        // The backup silent for longer than the lease: no more reads.
        assert_eq!(
            refusal(&p, 1501 + cfg.lease),
            "shard t/0 refuses reads: primary lease not held at epoch 2"
        );
    }

    #[test]
    fn a_new_configuration_keeps_waiting_out_the_old_primarys_lease() {
        // Regression: promoted at epoch 2 (waiting until 1500), then given a
        // learner at epoch 3 before 1500. Built as "led before" (no wait of
        // its own), it took writes at once while the old lease could run.
        let cfg = LeaseConfig::default();
        let backups = ["b".to_string()];
        let promoted = Primary::new(2, &backups, &[], 0, vec![], cfg, 1500);
        let mut p =
            Primary::new(3, &backups, &["l".into()], 0, vec![], cfg, 0).carry_lease_from(&promoted);
        assert_eq!(
            p.propose(vec![], 1000).unwrap_err(),
            ProposeError::NotYet {
                epoch: 3,
                wait_ms: 500
            }
        );
        assert!(p.propose(vec![], 1500).is_ok());
        // A handover still pending carries over too: the old primary's
        // answer in the new epoch lifts the wait.
        let handed =
            Primary::new(2, &backups, &[], 0, vec![], cfg, 1500).with_handover_from("b".into());
        let mut p = Primary::new(3, &backups, &[], 0, vec![], cfg, 0).carry_lease_from(&handed);
        assert!(p.propose(vec![], 1000).is_err());
        p.on_message(
            "b",
            ReplMsg::Ack {
                epoch: 3,
                logged: 0,
                echo: 1000,
            },
            1001,
        );
        assert!(p.propose(vec![], 1001).is_ok());
    }

    #[test]
    fn backups_that_do_not_answer_within_the_lease_are_reported_silent() {
        let lease = LeaseConfig::default().lease;
        let mut p = primary(&["b", "c"]);
        p.on_tick(0);
        assert!(p.silent_backups(lease).is_empty(), "too early to tell");
        ack(&mut p, "b", 0, lease, lease + 10);
        ack(&mut p, "c", 0, lease, lease + 10);
        assert!(p.silent_backups(lease + 20).is_empty());
        // c keeps answering, b goes quiet.
        ack(&mut p, "c", 0, 2 * lease, 2 * lease + 10);
        assert_eq!(p.silent_backups(2 * lease + 50), vec!["b".to_string()]);
        // A primary that hears nobody reports every backup.
        assert_eq!(
            p.silent_backups(4 * lease),
            vec!["b".to_string(), "c".to_string()]
        );
    }

    fn retention() -> LogRetention {
        LogRetention {
            entries: 10,
            bytes: 0,
            batch: 4,
            learner_hold: 1_000,
        }
    }

    fn truncations(effects: &[Effect]) -> Vec<(Seq, Seq)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Truncate { below, limit } => Some((*below, *limit)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_primary_keeps_what_its_slowest_peer_has_not_acked_plus_the_window() {
        let mut p = Primary::new(
            1,
            &["b".into()],
            &["l".into()],
            0,
            vec![],
            LeaseConfig::default(),
            0,
        )
        .with_retention(retention(), 1);
        for _ in 0..100 {
            p.propose(vec![], 0).unwrap();
        }
        p.on_persisted(100);
        // b has everything, the learner l has not answered yet: it counts
        // as holding nothing, so nothing may go.
        ack(&mut p, "b", 100, 0, 1);
        assert_eq!(p.committed(), 100);
        assert!(truncations(&p.on_applied(100)).is_empty());
        // l answers at 30: everything up to 30 is on every peer; 10 more
        // are kept below that.
        let fx = p.on_message(
            "l",
            ReplMsg::Ack {
                epoch: 1,
                logged: 30,
                echo: 0,
            },
            2,
        );
        assert_eq!(truncations(&fx), vec![(21, 31)]);
        assert_eq!(p.log_start(), 31);
        // Less than a batch further: nothing; a batch: the next range.
        let fx = p.on_message(
            "l",
            ReplMsg::Ack {
                epoch: 1,
                logged: 33,
                echo: 0,
            },
            3,
        );
        assert!(truncations(&fx).is_empty());
        let fx = p.on_message(
            "l",
            ReplMsg::Ack {
                epoch: 1,
                logged: 60,
                echo: 0,
            },
            4,
        );
        assert_eq!(truncations(&fx), vec![(51, 61)]);
        // Never past what the rows hold.
        for _ in 0..20 {
            p.propose(vec![], 5).unwrap();
        }
        p.on_persisted(120);
        ack(&mut p, "b", 120, 5, 6);
        let fx = p.on_message(
            "l",
            ReplMsg::Ack {
                epoch: 1,
                logged: 120,
                echo: 5,
            },
            6,
        );
        assert_eq!(p.committed(), 120);
        assert_eq!(truncations(&fx), vec![(91, 101)], "rows still at 100");
        assert_eq!(truncations(&p.on_applied(120)), vec![(111, 121)]);
    }

    #[test]
    fn a_learner_behind_the_first_retained_entry_is_told_to_rebuild_not_sent_a_gap() {
        // The log starts at 50 (truncated in an earlier epoch).
        let mut p = Primary::new(
            2,
            &["b".into()],
            &["l".into()],
            80,
            vec![],
            LeaseConfig::default(),
            0,
        )
        .with_retention(retention(), 50);
        // Before l answers: a plain heartbeat, no log read.
        let fx = p.on_tick(0);
        let to_l: Vec<&Effect> = fx
            .iter()
            .filter(
                |e| matches!(e, Effect::Send { to, .. } | Effect::SendLog { to, .. } if to == "l"),
            )
            .collect();
        assert!(
            matches!(to_l[..], [Effect::Send { msg: ReplMsg::Prepare { ref entries, .. }, .. }] if entries.is_empty()),
            "{to_l:?}"
        );
        // l answers at 20, below the log: rebuild.
        let fx = p.on_message(
            "l",
            ReplMsg::Ack {
                epoch: 2,
                logged: 20,
                echo: 0,
            },
            10,
        );
        assert_eq!(
            fx,
            vec![Effect::Send {
                to: "l".into(),
                msg: ReplMsg::Rebuild {
                    epoch: 2,
                    log_start: 50
                }
            }]
        );
        // At 60 it is fed from the log.
        let fx = p.on_message(
            "l",
            ReplMsg::Ack {
                epoch: 2,
                logged: 60,
                echo: 0,
            },
            20,
        );
        assert!(
            matches!(
                fx[..],
                [Effect::SendLog {
                    from: 61,
                    upto: 80,
                    ..
                }]
            ),
            "{fx:?}"
        );
    }
}
