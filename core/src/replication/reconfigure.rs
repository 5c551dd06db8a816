//! What a copy keeps when the map changes its role: when a new primary may
//! start serving, and when a copy's data must be thrown away instead of
//! reconciled. The actor asks these at every reconfiguration.

use super::{Epoch, LeaseConfig, Millis};
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

/// Whether a copy going from role `from` to role `to` must discard its data
/// and copy the shard afresh. Copies are (re)added to a shard only as
/// learners, so a copy that was a member and comes back as a learner left
/// the configuration and missed its epochs. It may hold entries no member
/// has (a cut-off primary's uncommitted tail) below the new primary's
/// commit point, where log reconciliation cannot see them
/// ([`EpochHistory::agreement`](super::EpochHistory::agreement) trusts
/// everything below the floor), so its log and rows cannot be kept.
pub fn rejoin_discards_copy(from: LocalRole, to: LocalRole) -> bool {
    to == LocalRole::Learner && from != LocalRole::Learner
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
    fn only_a_member_coming_back_as_a_learner_discards_its_copy() {
        use LocalRole::*;
        assert!(rejoin_discards_copy(Primary, Learner));
        assert!(rejoin_discards_copy(Backup, Learner));
        assert!(
            !rejoin_discards_copy(Learner, Learner),
            "still the same copy being built"
        );
        assert!(
            !rejoin_discards_copy(Learner, Backup),
            "a caught-up learner is kept"
        );
        assert!(!rejoin_discards_copy(Backup, Primary));
        assert!(!rejoin_discards_copy(Primary, Backup));
    }
}
