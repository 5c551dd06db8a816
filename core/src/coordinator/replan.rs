//! When the leader's planners need to run: not at every coordinator round
//! once they found nothing to do and nothing they read has changed since.
//!
//! The failover and rebalancing planners look at every shard of every
//! table; at 10,000 shards, four rounds a second of them were most of an
//! idle leader's CPU (issue 17). Their inputs are the map and the
//! [`Health`] derived from gossip; with both as they were when the planners
//! last returned nothing, they would return nothing again, but for the
//! decisions that wait on the clock (a copy away waits
//! `rereplicate_after_ms`, stamped with [`Health::now_unix_ms`]). So a
//! round plans when the map version or the health (its clock aside)
//! changed, or when [`REPLAN_EVERY_MS`] passed since the last plan.
//!
//! Pure: no I/O, no clock of its own.

use super::failover::Health;
use crate::replication::Millis;

/// The longest the planners go unrun while the leader leads: rules that
/// wait on the clock act at most this late.
pub const REPLAN_EVERY_MS: Millis = 1000;

/// The inputs of the last plan that found nothing to do.
#[derive(Debug, Default)]
pub struct Replan {
    idle: Option<(u64, Health, Millis)>,
}

impl Replan {
    /// Whether to run the planners at `now` on map `version` and `health`.
    pub fn due(&self, version: u64, health: &Health, now: Millis) -> bool {
        let Some((v, h, at)) = &self.idle else {
            return true;
        };
        *v != version
            || !same_but_the_clock(h, health)
            || now.saturating_sub(*at) >= REPLAN_EVERY_MS
    }

    /// The planners ran at `now` on these inputs: `planned_nothing` when
    /// they returned no change (the next rounds may skip them), otherwise
    /// they run again next round.
    pub fn ran(&mut self, version: u64, health: &Health, now: Millis, planned_nothing: bool) {
        self.idle = planned_nothing.then(|| (version, health.clone(), now));
    }
}

fn same_but_the_clock(a: &Health, b: &Health) -> bool {
    let Health {
        live,
        down,
        ready,
        failed,
        silent,
        suspect,
        namings,
        now_unix_ms: _,
        rereplicate_after_ms,
        hears,
    } = a;
    *live == b.live
        && *down == b.down
        && *ready == b.ready
        && *failed == b.failed
        && *silent == b.silent
        && *suspect == b.suspect
        && *namings == b.namings
        && *rereplicate_after_ms == b.rereplicate_after_ms
        && *hears == b.hears
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planners_are_skipped_only_while_nothing_they_read_changed() {
        let mut r = Replan::default();
        let h = Health {
            now_unix_ms: 1,
            ..Default::default()
        };
        assert!(r.due(7, &h, 0), "never planned");
        r.ran(7, &h, 0, false);
        assert!(r.due(7, &h, 10), "changes were planned: plan again");
        r.ran(7, &h, 10, true);
        // Nothing changed but the clock: skipped for a while.
        let later = Health {
            now_unix_ms: 500,
            ..h.clone()
        };
        assert!(!r.due(7, &later, 10 + REPLAN_EVERY_MS - 1));
        assert!(r.due(7, &later, 10 + REPLAN_EVERY_MS), "the clock's rules");
        // A new map, a node down, a silence report: planned at once.
        assert!(r.due(8, &h, 20));
        let mut down = h.clone();
        down.down.insert("n2".into());
        assert!(r.due(7, &down, 20));
        let mut suspect = h.clone();
        suspect.suspect.insert("n3".into());
        assert!(r.due(7, &suspect, 20));
    }
}
