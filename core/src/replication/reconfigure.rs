//! What a copy keeps when the map changes its role: when a new primary may
//! start serving, and when a copy's data must be thrown away instead of
//! reconciled. The actor asks these at every reconfiguration.

use super::{Epoch, LeaseConfig, Millis, Seq};
use crate::shard::LocalRole;

/// When a copy that becomes primary of `epoch` may take writes and serve
/// strong reads (its `not_before`): once the previous primary's lease has
/// surely run out. Epoch 1 had no previous primary, and a copy that led the
/// previous epoch was that primary itself: no wait. Otherwise the old lease
/// lasts at most `lease` past the send time of a message this copy answered
/// (`primary_contact`, this copy's last word from a primary as a backup, see
/// [`Backup::primary_contact`](super::Backup::primary_contact)), so waiting
/// `grace` (longer than the lease, [`LeaseConfig::check`]) from there
/// ensures two leases never overlap.
pub fn takeover_not_before(
    epoch: Epoch,
    led_before: bool,
    primary_contact: Millis,
    cfg: &LeaseConfig,
) -> Millis {
    if led_before || epoch == 1 {
        0
    } else {
        primary_contact.saturating_add(cfg.grace)
    }
}

/// What a copy keeps of the data this node already holds for its shard
/// when it starts (`from` is `None`) or changes role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejoin {
    /// Go on from the durable log and rows as they are (a member, or a
    /// learner still being built).
    Keep,
    /// Keep the rows, drop the log after `applied`, and follow the primary
    /// from there as a learner: the primary sends what was missed from its
    /// retained log, or says `Rebuild` if it no longer holds it.
    FromApplied,
    /// Nothing usable here: copy a snapshot from the primary.
    Afresh,
}

/// Whether a copy becoming a learner (added, or re-added after it left the
/// configuration: a restart, a drop for silence, a copy moving back) keeps
/// its data. It missed epochs, so the entries of its log it has not applied
/// may be a cut-off primary's uncommitted tail, which no member holds and
/// log reconciliation cannot see below the new primary's commit point
/// ([`EpochHistory::agreement`](super::EpochHistory::agreement) trusts
/// everything below its floor). Its *applied* entries, though, were
/// committed (a copy applies only what its primary said was committed, and
/// a commit needs every member of that configuration, so every later
/// primary holds them): rows up to `applied` are a prefix of every later
/// primary's history. So the copy drops its log after `applied` and asks
/// for the rest, like a Kafka follower truncating to the leader epoch
/// before fetching. With nothing applied (`applied == 0`: a new copy, or a
/// snapshot install cut short, which leaves `applied` at 0) it copies a
/// snapshot. A learner serves no reads, so a returning copy never answers
/// from an epoch it missed.
pub fn rejoin(from: Option<LocalRole>, to: LocalRole, applied: Seq) -> Rejoin {
    if to != LocalRole::Learner || from == Some(LocalRole::Learner) {
        Rejoin::Keep
    } else if applied > 0 {
        Rejoin::FromApplied
    } else {
        Rejoin::Afresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promoted_primary_waits_the_grace_period_from_its_last_contact() {
        let cfg = LeaseConfig::default();
        assert_eq!(
            takeover_not_before(1, false, 700, &cfg),
            0,
            "no primary before epoch 1"
        );
        assert_eq!(
            takeover_not_before(4, true, 700, &cfg),
            0,
            "it held the lease itself"
        );
        assert_eq!(takeover_not_before(4, false, 700, &cfg), 700 + cfg.grace);
        // Never heard from a primary (restarted): the grace period from
        // this process's start.
        assert_eq!(takeover_not_before(4, false, 0, &cfg), cfg.grace);
    }

    #[test]
    fn a_copy_becoming_a_learner_keeps_its_applied_rows_only() {
        use LocalRole::*;
        // A member re-added as a learner (a restart, a drop for silence):
        // its rows, not its unapplied log.
        assert_eq!(rejoin(Some(Primary), Learner, 40), Rejoin::FromApplied);
        assert_eq!(rejoin(Some(Backup), Learner, 40), Rejoin::FromApplied);
        // A node starting a learner over data it kept (restarted, or the
        // copy moves back): the same.
        assert_eq!(rejoin(None, Learner, 40), Rejoin::FromApplied);
        // Nothing applied: a snapshot.
        assert_eq!(rejoin(None, Learner, 0), Rejoin::Afresh);
        assert_eq!(rejoin(Some(Backup), Learner, 0), Rejoin::Afresh);
        // Still the same copy being built.
        assert_eq!(rejoin(Some(Learner), Learner, 40), Rejoin::Keep);
        // Members go on from their durable state.
        assert_eq!(rejoin(Some(Learner), Backup, 40), Rejoin::Keep);
        assert_eq!(rejoin(None, Backup, 40), Rejoin::Keep);
        assert_eq!(rejoin(Some(Backup), Primary, 40), Rejoin::Keep);
        assert_eq!(rejoin(Some(Primary), Backup, 40), Rejoin::Keep);
    }
}
