//! Suspicion: a dead primary noticed by the copies that stop hearing it,
//! sooner than gossip's failure detector says so.
//!
//! A primary sends each of its backups something (a `Prepare`, at least a
//! heartbeat) every `replication_heartbeat_ms`. A node whose backups have
//! heard nothing from a primary's node for [`SUSPECT_AFTER_MS`] reports
//! that node to the coordinator ([`PrimaryWatch`], on every node). Gossip
//! would take `phi_threshold × gossip_interval` (about 1.2 s by default)
//! plus a coordinator round to say the same.
//!
//! A report alone never moves a shard: the reporter may be the one cut off.
//! The coordinator confirms it ([`Suspicions`]): it probes the node itself
//! (a ping with a short timeout), and only a probe that goes unanswered
//! makes the node count as down ([`Suspicions::apply`]), for at most
//! [`DOWN_HOLD_MS`], by then gossip has its own verdict. The one exception
//! is the Raft leader this coordinator's node replaced: a majority of
//! voters stopped hearing it for an election timeout, which is the same
//! evidence as a failed probe, so a report about it is confirmed at once.
//!
//! Safety does not rest on any of this. A node wrongly held down loses its
//! shards' primaries as a node wrongly marked down by gossip does: the new
//! primary still waits out the old lease before it serves, and the old
//! primary's writes cannot commit without the backups that moved on.
//!
//! Pure: no I/O and no clock (time comes in as `now`).

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster_map::{ClusterMap, NodeId};
use crate::coordinator::failover::Health;
use crate::replication::Millis;

/// A primary's node silent this long to a backup is reported: three
/// heartbeats missed at the default 100 ms ([`suspect_after`] for others).
pub const SUSPECT_AFTER_MS: Millis = 300;

/// How long a primary's node may be silent before a backup reports it,
/// for a replication `heartbeat` (ms): three heartbeats, at least
/// [`SUSPECT_AFTER_MS`].
pub fn suspect_after(heartbeat: Millis) -> Millis {
    heartbeat.saturating_mul(3).max(SUSPECT_AFTER_MS)
}
/// A node whose probe went unanswered counts as down this long (unless it
/// answers a later probe first).
pub const DOWN_HOLD_MS: Millis = 5_000;
/// A report about the leader this node replaced counts as confirmed while
/// this node has led for less than this.
pub const DEPOSED_CONFIRMS_MS: Millis = 5_000;

/// The nodes leading a shard of which `me` is a backup: those this node
/// expects to hear from every heartbeat.
pub fn primaries_of(me: &str, map: &ClusterMap) -> BTreeSet<NodeId> {
    map.tables
        .values()
        .flat_map(|t| &t.shards)
        .map(|s| &s.replicas)
        .filter(|r| r.primary != me && r.backups.iter().any(|b| b == me))
        .map(|r| r.primary.clone())
        .collect()
}

/// The nodes backing a shard `me` leads (backups and learners): those this
/// node sends its node heartbeat (`PeerMessage::Heartbeat`) every
/// heartbeat, so that they hear it while its shards are quiet.
pub fn backups_of(me: &str, map: &ClusterMap) -> BTreeSet<NodeId> {
    map.tables
        .values()
        .flat_map(|t| &t.shards)
        .map(|s| &s.replicas)
        .filter(|r| r.primary == me)
        .flat_map(|r| r.backups.iter().chain(&r.learners))
        .filter(|n| *n != me)
        .cloned()
        .collect()
}

/// Node side: the primaries this node's backups hear from, and which of
/// their nodes have gone silent.
#[derive(Debug)]
pub struct PrimaryWatch {
    /// Primary node → since when this node has expected to hear from it (a
    /// primary newly seen is given `after` from then).
    expected_since: BTreeMap<NodeId, Millis>,
    /// Silence reported (see [`suspect_after`]).
    after: Millis,
}

impl PrimaryWatch {
    /// Reports primaries silent for `after` ms ([`suspect_after`]).
    pub fn new(after: Millis) -> Self {
        Self {
            expected_since: BTreeMap::new(),
            after,
        }
    }

    /// From `now` on, this node expects to hear from `primaries` (see
    /// [`primaries_of`]; call it when the map changes).
    pub fn expect(&mut self, primaries: BTreeSet<NodeId>, now: Millis) {
        self.expected_since
            .retain(|node, _| primaries.contains(node));
        for node in primaries {
            self.expected_since.entry(node).or_insert(now);
        }
    }

    /// The nodes to report at `now`, each with how long it has been
    /// silent: the expected primaries whose last message here
    /// (`last_heard`) is older than the watch's silence.
    pub fn silent(
        &self,
        last_heard: impl Fn(&str) -> Option<Millis>,
        now: Millis,
    ) -> Vec<(NodeId, Millis)> {
        self.expected_since
            .iter()
            .filter_map(|(node, since)| {
                let heard = last_heard(node).unwrap_or(0).max(*since);
                let silent = now.saturating_sub(heard);
                (silent >= self.after).then(|| (node.clone(), silent))
            })
            .collect()
    }
}

/// What the coordinator does with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Probe the node; pass the outcome to [`Suspicions::probed`].
    Probe,
    /// Nothing to do: not a node of the map, already down, or a probe of
    /// it is running or just answered.
    Ignore,
    /// Down now: no probe needed (the leader this node replaced).
    Confirmed,
}

/// What [`Suspicions::screen`] makes of the nodes accused of being cut off.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Screened {
    /// Not counted cut off (`failover::Health::hears`).
    pub hears: BTreeSet<NodeId>,
    /// To probe now.
    pub probe: Vec<NodeId>,
}

/// Coordinator side: reports, probes and the nodes held down.
#[derive(Debug, Default)]
pub struct Suspicions {
    down_until: BTreeMap<NodeId, Millis>,
    probing: BTreeSet<NodeId>,
    /// A probe answered: reports until then are not probed again (one
    /// reporter cut off from a live node would otherwise have it pinged
    /// every time it reports).
    answered_until: BTreeMap<NodeId, Millis>,
    /// The Raft leader this node replaced, and when this node took over.
    deposed: Option<(NodeId, Millis)>,
}

impl Suspicions {
    /// This node became the Raft leader at `now`, replacing `previous`
    /// (`None`: it did not know one, or it was itself).
    pub fn leading_since(&mut self, previous: Option<NodeId>, now: Millis) {
        self.deposed = previous.map(|p| (p, now));
    }

    /// A node reports `node` silent. `down` is the set of nodes gossip or
    /// an earlier confirmation already has down.
    pub fn report(
        &mut self,
        node: &str,
        map: &ClusterMap,
        down: &BTreeSet<NodeId>,
        now: Millis,
    ) -> Verdict {
        self.expire(now);
        if !map.nodes.contains_key(node)
            || down.contains(node)
            || self.down_until.contains_key(node)
            || self.probing.contains(node)
            || self.answered_until.contains_key(node)
        {
            return Verdict::Ignore;
        }
        let deposed = self.deposed.as_ref().is_some_and(|(who, since)| {
            who == node && now.saturating_sub(*since) < DEPOSED_CONFIRMS_MS
        });
        if deposed {
            self.down_until.insert(node.to_owned(), now + DOWN_HOLD_MS);
            return Verdict::Confirmed;
        }
        self.probing.insert(node.to_owned());
        Verdict::Probe
    }

    /// The probe of `node` finished: `answered` or not. Returns whether the
    /// node is now held down.
    pub fn probed(&mut self, node: &str, answered: bool, now: Millis) -> bool {
        self.probing.remove(node);
        if answered {
            self.down_until.remove(node);
            self.answered_until
                .insert(node.to_owned(), now + SUSPECT_AFTER_MS);
            false
        } else {
            self.down_until.insert(node.to_owned(), now + DOWN_HOLD_MS);
            true
        }
    }

    /// Whether `node` answered a probe recently (within
    /// [`SUSPECT_AFTER_MS`] of `now`).
    pub fn answered(&self, node: &str, now: Millis) -> bool {
        self.answered_until
            .get(node)
            .is_some_and(|until| *until > now)
    }

    /// Screens the nodes the silence rules accuse of being cut off
    /// (`silence::cut_off_nodes`): one is counted cut off only once shown
    /// deaf. `me` (the coordinator's node) hears while a majority of
    /// voters answers it (`quorum_fresh`). Any other node not already
    /// `down` hears while a probe of it runs or after it answered one; it
    /// is to be probed unless it answered recently (a probe that goes
    /// unanswered holds it down, see [`Suspicions::probed`]).
    pub fn screen(
        &self,
        me: &str,
        accused: BTreeSet<NodeId>,
        down: &BTreeSet<NodeId>,
        quorum_fresh: bool,
        now: Millis,
    ) -> Screened {
        let mut out = Screened::default();
        for node in accused {
            if node == me {
                if quorum_fresh {
                    out.hears.insert(node);
                }
            } else if !down.contains(&node) {
                if !self.answered(&node, now) {
                    out.probe.push(node.clone());
                }
                out.hears.insert(node);
            }
        }
        out
    }

    /// The nodes held down at `now`.
    pub fn held_down(&mut self, now: Millis) -> BTreeSet<NodeId> {
        self.expire(now);
        self.down_until.keys().cloned().collect()
    }

    /// Counts every node held down as down in `health` (the coordinator's
    /// own node never is).
    pub fn apply(&mut self, me: &str, health: &mut Health, now: Millis) {
        for node in self.held_down(now) {
            if node != me && health.live.remove(&node) {
                health.down.insert(node);
            }
        }
    }

    fn expire(&mut self, now: Millis) {
        self.down_until.retain(|_, until| *until > now);
        self.answered_until.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ClusterMap {
        crate::coordinator::test_maps::map(3, &[])
    }

    #[test]
    fn a_backup_reports_its_primarys_node_once_silent_long_enough() {
        let map = map();
        let me = "n1";
        let shards = &map.tables["t"].shards;
        let led_by_others: BTreeSet<&NodeId> = shards
            .iter()
            .filter(|s| s.replicas.primary != me)
            .map(|s| &s.replicas.primary)
            .collect();
        assert!(!led_by_others.is_empty());
        let mut w = PrimaryWatch::new(suspect_after(100));
        assert_eq!(suspect_after(100), SUSPECT_AFTER_MS);
        assert_eq!(suspect_after(500), 1_500, "a slow heartbeat: three of them");
        w.expect(primaries_of(me, &map), 1_000);
        // Newly expected: given SUSPECT_AFTER_MS from then, even with
        // nothing heard yet.
        assert!(w.silent(|_| None, 1_000 + SUSPECT_AFTER_MS - 1).is_empty());
        let silent = w.silent(|_| None, 1_000 + SUSPECT_AFTER_MS);
        let named: BTreeSet<&NodeId> = silent.iter().map(|(n, _)| n).collect();
        assert_eq!(named, led_by_others);
        assert!(silent.iter().all(|(_, ms)| *ms == SUSPECT_AFTER_MS));
        // Heard recently: not reported; never the node itself.
        let now = 5_000;
        assert!(w.silent(|_| Some(now - 10), now).is_empty());
        assert!(w
            .silent(|_| Some(0), now)
            .iter()
            .all(|(n, ms)| n != me && *ms == now - 1_000));
        // The map changes: a primary no longer expected is not reported,
        // one expected again starts afresh.
        w.expect(BTreeSet::new(), now);
        assert!(w.silent(|_| None, now + 10_000).is_empty());
        w.expect(primaries_of(me, &map), now);
        assert!(w.silent(|_| None, now + SUSPECT_AFTER_MS - 1).is_empty());
    }

    #[test]
    fn an_accused_node_is_counted_cut_off_only_once_shown_deaf() {
        let map = map();
        let mut s = Suspicions::default();
        let set = |n: &[&str]| n.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        let accused = || set(&["n1", "n2", "n3"]);
        // n1 is the coordinator's node, n3 is down already.
        let down = set(&["n3"]);
        let first = s.screen("n1", accused(), &down, true, 0);
        assert_eq!(first.hears, set(&["n1", "n2"]));
        assert_eq!(
            first.probe,
            vec!["n2".to_string()],
            "probed, not yet cut off"
        );
        // A leader no majority answers is not shown to hear.
        assert_eq!(
            s.screen("n1", accused(), &down, false, 0).hears,
            set(&["n2"])
        );
        // n2 answers: not probed again for a while, still not cut off.
        assert_eq!(s.report("n2", &map, &down, 0), Verdict::Probe);
        assert!(!s.probed("n2", true, 0));
        let answered = s.screen("n1", accused(), &down, true, 10);
        assert_eq!(
            (answered.hears, answered.probe),
            (set(&["n1", "n2"]), vec![])
        );
        // Its answer grows old: probed again.
        let later = s.screen("n1", accused(), &down, true, SUSPECT_AFTER_MS);
        assert_eq!(later.probe, vec!["n2".to_string()]);
        // Unanswered: held down, so no longer screened as hearing.
        assert_eq!(
            s.report("n2", &map, &down, SUSPECT_AFTER_MS),
            Verdict::Probe
        );
        assert!(s.probed("n2", false, SUSPECT_AFTER_MS));
        let held = s.held_down(SUSPECT_AFTER_MS);
        assert!(!s
            .screen("n1", accused(), &held, true, SUSPECT_AFTER_MS)
            .hears
            .contains("n2"));
    }

    #[test]
    fn every_node_a_primary_must_be_heard_by_gets_its_node_heartbeat() {
        let map = map();
        // Whoever backs a shard hears its primary's node heartbeat.
        for me in ["n1", "n2", "n3"] {
            for primary in primaries_of(me, &map) {
                assert!(
                    backups_of(&primary, &map).contains(me),
                    "{me} backs a shard of {primary} but gets no heartbeat from it"
                );
            }
            assert!(!backups_of(me, &map).contains(me));
        }
    }

    #[test]
    fn a_report_is_probed_once_and_only_an_unanswered_probe_holds_the_node_down() {
        let map = map();
        let none = BTreeSet::new();
        let mut s = Suspicions::default();
        assert_eq!(
            s.report("n9", &map, &none, 0),
            Verdict::Ignore,
            "not in the map"
        );
        assert_eq!(s.report("n2", &map, &none, 0), Verdict::Probe);
        assert_eq!(
            s.report("n2", &map, &none, 10),
            Verdict::Ignore,
            "probe running"
        );
        // Answered: not probed again for a while, and not down.
        assert!(!s.probed("n2", true, 100));
        assert_eq!(s.report("n2", &map, &none, 200), Verdict::Ignore);
        assert!(s.held_down(200).is_empty());
        assert_eq!(
            s.report("n2", &map, &none, 100 + SUSPECT_AFTER_MS),
            Verdict::Probe
        );
        // Unanswered: down for DOWN_HOLD_MS.
        assert!(s.probed("n2", false, 1_000));
        assert_eq!(s.held_down(1_000), BTreeSet::from(["n2".to_string()]));
        let mut health = Health::default();
        health
            .live
            .extend(["n1".to_string(), "n2".to_string(), "n3".to_string()]);
        s.apply("n1", &mut health, 1_001);
        assert!(health.down.contains("n2") && !health.live.contains("n2"));
        assert_eq!(
            s.report("n2", &map, &none, 1_002),
            Verdict::Ignore,
            "already down"
        );
        assert!(
            s.held_down(1_000 + DOWN_HOLD_MS).is_empty(),
            "the hold ends"
        );
        // Gossip already has it down: nothing to probe.
        let down = BTreeSet::from(["n3".to_string()]);
        assert_eq!(s.report("n3", &map, &down, 0), Verdict::Ignore);
    }

    #[test]
    fn the_leader_this_node_replaced_is_confirmed_without_a_probe() {
        let map = map();
        let none = BTreeSet::new();
        let mut s = Suspicions::default();
        s.leading_since(Some("n3".into()), 1_000);
        assert_eq!(s.report("n2", &map, &none, 1_100), Verdict::Probe);
        assert_eq!(s.report("n3", &map, &none, 1_100), Verdict::Confirmed);
        assert!(s.held_down(1_100).contains("n3"));
        // Long after taking over, the election is old news: probe.
        let mut s = Suspicions::default();
        s.leading_since(Some("n3".into()), 1_000);
        assert_eq!(
            s.report("n3", &map, &none, 1_000 + DEPOSED_CONFIRMS_MS),
            Verdict::Probe
        );
        // The coordinator's own node is never held down.
        let mut s = Suspicions::default();
        s.report("n1", &map, &none, 0);
        s.probed("n1", false, 0);
        let mut health = Health::default();
        health.live.insert("n1".into());
        s.apply("n1", &mut health, 1);
        assert!(health.live.contains("n1") && health.down.is_empty());
    }
}
