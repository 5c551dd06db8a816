//! Who votes in the control plane's Raft group: bootstrap and voter upkeep.
//!
//! Both are pure decisions over what gossip and Raft report; the coordinator
//! carries them out.
//!
//! Bootstrap (like Consul's `bootstrap_expect`): nodes started with
//! `--bootstrap-expect N` publish N in gossip. Once a node has seen N live
//! nodes publishing the same N, for long enough that the view is stable, the
//! node with the smallest id among them initializes Raft with those N as
//! voters. The others wait to be contacted. Start exactly N nodes with the
//! flag: more nodes racing with partial views could form two groups.
//!
//! Upkeep (on the leader): nodes outside the group join as learners; learners
//! are promoted until there are `target` voters; a voter down for longer than
//! the replacement delay is swapped for a live learner, so the voter count
//! stays the same.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cluster_map::NodeId;

/// What one node should do about bootstrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Not enough nodes yet (`have` of `want` seen).
    Wait { have: usize, want: usize },
    /// This node initializes Raft with these voters.
    Initialize(Vec<NodeId>),
    /// Another node (`by`) initializes; this one waits to be contacted.
    Other { by: NodeId },
}

/// Decides bootstrap for `me`, given the live nodes that publish the same
/// `expect` (including `me`), and whether that view has been stable long enough.
pub fn bootstrap(
    me: &str,
    expect: usize,
    live_with_same_expect: &[NodeId],
    stable: bool,
) -> Bootstrap {
    let mut ids: Vec<&NodeId> = live_with_same_expect.iter().collect();
    ids.sort();
    ids.dedup();
    if ids.len() < expect || !stable || expect == 0 {
        return Bootstrap::Wait {
            have: ids.len(),
            want: expect,
        };
    }
    let first = ids[0];
    if first == me {
        Bootstrap::Initialize(ids.into_iter().take(expect).cloned().collect())
    } else {
        Bootstrap::Other { by: first.clone() }
    }
}

/// A voter-set change the leader should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterChange {
    /// Make these live nodes learners first (they receive the log).
    AddLearners(Vec<NodeId>),
    /// Switch the voter set to this one.
    SetVoters(BTreeSet<NodeId>),
}

/// The state the upkeep decision looks at.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Nodes live in gossip.
    pub live: BTreeSet<NodeId>,
    /// For voters not live: how long they have been down (unknown = just now).
    pub down_for: std::collections::BTreeMap<NodeId, Duration>,
}

/// The next change to the Raft group, if any. `target` is the wanted voter
/// count (odd, e.g. 3 or 5), `replace_after` how long a voter may be down
/// before it is replaced.
pub fn plan_voters(
    view: &GroupView,
    target: usize,
    replace_after: Duration,
) -> Option<VoterChange> {
    let outsiders: Vec<NodeId> = view
        .live
        .iter()
        .filter(|n| !view.voters.contains(*n) && !view.learners.contains(*n))
        .cloned()
        .collect();
    if !outsiders.is_empty() {
        return Some(VoterChange::AddLearners(outsiders));
    }
    let mut spare: Vec<&NodeId> = view
        .learners
        .iter()
        .filter(|n| view.live.contains(*n))
        .collect();
    spare.sort();
    let dead: Vec<&NodeId> = view
        .voters
        .iter()
        .filter(|v| {
            !view.live.contains(*v) && view.down_for.get(*v).is_some_and(|d| *d >= replace_after)
        })
        .collect();
    let mut voters = view.voters.clone();
    // Replace voters down for too long, one for one, while spares last.
    let mut spares = spare.into_iter();
    for d in dead {
        match spares.next() {
            Some(s) => {
                voters.remove(d);
                voters.insert(s.clone());
            }
            None => break,
        }
    }
    // Grow to the target with the remaining live learners.
    for s in spares {
        if voters.len() >= target {
            break;
        }
        voters.insert(s.clone());
    }
    (voters != view.voters).then_some(VoterChange::SetVoters(voters))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &[&str]) -> Vec<NodeId> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn set(s: &[&str]) -> BTreeSet<NodeId> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_smallest_id_initializes_once_enough_nodes_are_stable() {
        let three = ids(&["n2", "n1", "n3"]);
        assert_eq!(
            bootstrap("n1", 3, &ids(&["n1", "n2"]), true),
            Bootstrap::Wait { have: 2, want: 3 }
        );
        assert_eq!(
            bootstrap("n1", 3, &three, false),
            Bootstrap::Wait { have: 3, want: 3 }
        );
        assert_eq!(
            bootstrap("n1", 3, &three, true),
            Bootstrap::Initialize(ids(&["n1", "n2", "n3"]))
        );
        assert_eq!(
            bootstrap("n2", 3, &three, true),
            Bootstrap::Other { by: "n1".into() }
        );
        // A single node with expect 1 initializes alone.
        assert_eq!(
            bootstrap("n1", 1, &ids(&["n1"]), true),
            Bootstrap::Initialize(ids(&["n1"]))
        );
        // expect 0 means "never bootstrap: join an existing cluster".
        assert!(matches!(
            bootstrap("n1", 0, &ids(&["n1"]), true),
            Bootstrap::Wait { .. }
        ));
    }

    #[test]
    fn newcomers_become_learners_then_voters_up_to_the_target() {
        let mut view = GroupView {
            voters: set(&["n1"]),
            live: set(&["n1", "n2", "n3", "n4"]),
            ..Default::default()
        };
        let d = Duration::from_secs(30);
        assert_eq!(
            plan_voters(&view, 3, d),
            Some(VoterChange::AddLearners(ids(&["n2", "n3", "n4"])))
        );
        view.learners = set(&["n2", "n3", "n4"]);
        assert_eq!(
            plan_voters(&view, 3, d),
            Some(VoterChange::SetVoters(set(&["n1", "n2", "n3"])))
        );
        view.voters = set(&["n1", "n2", "n3"]);
        view.learners = set(&["n4"]);
        assert_eq!(plan_voters(&view, 3, d), None);
    }

    #[test]
    fn a_voter_down_too_long_is_replaced_by_a_live_learner() {
        let mut view = GroupView {
            voters: set(&["n1", "n2", "n3"]),
            learners: set(&["n4"]),
            live: set(&["n1", "n2", "n4"]),
            ..Default::default()
        };
        let d = Duration::from_secs(30);
        view.down_for.insert("n3".into(), Duration::from_secs(5));
        assert_eq!(plan_voters(&view, 3, d), None, "not down long enough");
        view.down_for.insert("n3".into(), Duration::from_secs(31));
        assert_eq!(
            plan_voters(&view, 3, d),
            Some(VoterChange::SetVoters(set(&["n1", "n2", "n4"])))
        );
        // Without a spare, the dead voter stays (the count must not shrink).
        view.learners.clear();
        view.live.remove("n4");
        assert_eq!(plan_voters(&view, 3, d), None);
    }
}
