//! Simulation tests of the replication state machines: one primary and two
//! backups over a network that loses, reorders and duplicates messages, with
//! disks that finish writes late, under random schedules (proptest). The
//! invariants are checked after every step; a quiet phase at the end checks
//! that everything proposed gets committed everywhere.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;

const P: &str = "p";
const BACKUPS: [&str; 2] = ["b1", "b2"];

#[derive(Debug, Clone)]
enum Step {
    Propose(u8),
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    Disk(usize),
    Tick(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => any::<u8>().prop_map(Step::Propose),
        6 => any::<usize>().prop_map(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Drop),
        1 => any::<usize>().prop_map(Step::Duplicate),
        4 => any::<usize>().prop_map(Step::Disk),
        2 => (1u8..120).prop_map(Step::Tick),
    ]
}

struct World {
    now: Millis,
    /// Who leads now (`p` until a failover).
    lead: String,
    primary: Primary,
    /// Crashed nodes: they send and receive nothing.
    dead: BTreeSet<String>,
    /// Every entry a primary committed (and so acknowledged to a client).
    acked: BTreeMap<Seq, LogEntry>,
    backups: BTreeMap<String, Backup>,
    /// Durable logs.
    logs: BTreeMap<String, BTreeMap<Seq, LogEntry>>,
    /// Writes asked for and not done yet, per node, in order.
    disks: BTreeMap<String, VecDeque<Vec<LogEntry>>>,
    net: Vec<(String, String, ReplMsg)>,
    applied: BTreeMap<String, Seq>,
    /// After an epoch change: the backups moved to epoch 2.
    switched: bool,
    persists_after_switch: usize,
}

fn cfg() -> LeaseConfig {
    LeaseConfig {
        lease: 1000,
        grace: 1500,
        heartbeat: 50,
        window: 16,
    }
}

impl World {
    fn new() -> Self {
        let backups: Vec<String> = BACKUPS.iter().map(|b| b.to_string()).collect();
        let mut logs = BTreeMap::new();
        let mut disks = BTreeMap::new();
        for n in std::iter::once(P).chain(BACKUPS) {
            logs.insert(n.to_string(), BTreeMap::new());
            disks.insert(n.to_string(), VecDeque::new());
        }
        Self {
            now: 0,
            lead: P.into(),
            primary: Primary::new(1, &backups, &[], 0, vec![], cfg(), 0),
            dead: BTreeSet::new(),
            acked: BTreeMap::new(),
            backups: backups
                .iter()
                .map(|b| (b.clone(), Backup::new(1, P.into(), 0, 0, None)))
                .collect(),
            logs,
            disks,
            net: Vec::new(),
            applied: BTreeMap::new(),
            switched: false,
            persists_after_switch: 0,
        }
    }

    fn run(&mut self, node: &str, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Persist(entries) => {
                    if self.switched && node != P {
                        self.persists_after_switch += 1;
                    }
                    self.disks.get_mut(node).unwrap().push_back(entries);
                }
                Effect::Send { to, msg } => self.net.push((node.to_string(), to, msg)),
                Effect::SendLog {
                    to,
                    from,
                    upto,
                    mut msg,
                } => {
                    if let ReplMsg::Prepare { entries, .. } = &mut msg {
                        *entries = self.logs[node]
                            .range(from..upto.max(from - 1) + 1)
                            .map(|(_, e)| e.clone())
                            .collect();
                    }
                    self.net.push((node.to_string(), to, msg));
                }
                Effect::Reconciled { keep, .. } => {
                    let applied = self.applied.get(node).copied().unwrap_or(0);
                    assert!(keep >= applied, "{node} truncated below what it applied");
                    for seq in self.logs[node].keys().filter(|s| **s > keep) {
                        if let Some(e) = self.acked.get(seq) {
                            panic!("{node} dropped acknowledged entry {seq}: {e:?}");
                        }
                    }
                    self.logs.get_mut(node).unwrap().retain(|s, _| *s <= keep);
                }
                Effect::Commit { upto } => {
                    let before = self.applied.insert(node.to_string(), upto).unwrap_or(0);
                    assert!(
                        upto > before,
                        "{node} committed backwards: {before} -> {upto}"
                    );
                    if node == self.lead {
                        self.check_committed_everywhere(upto);
                        for seq in before + 1..=upto {
                            let e = self.logs[node][&seq].clone();
                            if let Some(old) = self.acked.insert(seq, e.clone()) {
                                assert_eq!(old, e, "acknowledged entry {seq} changed");
                            }
                        }
                    }
                }
                Effect::FetchMap { seen } => {
                    assert!(seen > 1 && node == self.lead || self.switched || !self.dead.is_empty())
                }
            }
        }
    }

    /// The safety property: what the primary commits (and so acknowledges)
    /// is durably on every member, with the same content.
    fn check_committed_everywhere(&self, upto: Seq) {
        let primary_log = &self.logs[&self.lead];
        for seq in 1..=upto {
            let mine = primary_log
                .get(&seq)
                .unwrap_or_else(|| panic!("primary committed {seq} it has not logged"));
            for b in self.backups.keys().filter(|b| *b != "l") {
                let theirs = self.logs[b]
                    .get(&seq)
                    .unwrap_or_else(|| panic!("committed {seq} is not durable on {b}"));
                assert_eq!(theirs, mine, "{b} logged a different entry {seq}");
            }
        }
    }

    fn check(&self) {
        // Anything applied anywhere was committed by some primary.
        let committed = self.acked.keys().last().copied().unwrap_or(0);
        for (name, b) in &self.backups {
            assert!(b.applied() <= b.logged(), "{name} applied past its log");
            if !self.switched {
                assert!(
                    b.applied() <= committed,
                    "{name} applied {} beyond the commit point {committed}",
                    b.applied(),
                );
            }
        }
    }

    fn apply(&mut self, s: Step) {
        match s {
            Step::Propose(b) => {
                if let Ok((_, fx)) = self.primary.propose(vec![b], self.now) {
                    let lead = self.lead.clone();
                    self.run(&lead, fx);
                }
            }
            Step::Deliver(i) if !self.net.is_empty() => {
                let (from, to, msg) = self.net.remove(i % self.net.len());
                self.deliver(&from, &to, msg);
            }
            Step::Drop(i) if !self.net.is_empty() => {
                self.net.remove(i % self.net.len());
            }
            Step::Duplicate(i) if !self.net.is_empty() => {
                let m = self.net[i % self.net.len()].clone();
                self.net.push(m);
            }
            Step::Disk(i) => {
                let nodes: Vec<String> = self
                    .disks
                    .keys()
                    .filter(|n| !self.dead.contains(*n))
                    .cloned()
                    .collect();
                let node = &nodes[i % nodes.len()];
                if let Some(batch) = self.disks.get_mut(node).unwrap().pop_front() {
                    let upto = batch.last().map(|e| e.seq).unwrap_or(0);
                    let log = self.logs.get_mut(node).unwrap();
                    for e in batch {
                        if let Some(old) = log.get(&e.seq) {
                            assert_eq!(old, &e, "{node} overwrote entry {}", e.seq);
                        }
                        log.insert(e.seq, e);
                    }
                    let fx = if *node == self.lead {
                        self.primary.on_persisted(upto)
                    } else {
                        self.backups.get_mut(node).unwrap().on_persisted(upto)
                    };
                    let node = node.clone();
                    self.run(&node, fx);
                }
            }
            Step::Tick(ms) => {
                self.now += u64::from(ms);
                let fx = self.primary.on_tick(self.now);
                let lead = self.lead.clone();
                self.run(&lead, fx);
            }
            _ => {}
        }
        self.check();
    }

    fn deliver(&mut self, from: &str, to: &str, msg: ReplMsg) {
        if self.dead.contains(from) || self.dead.contains(to) {
            return;
        }
        let fx = if to == self.lead {
            self.primary.on_message(from, msg, self.now)
        } else if let Some(b) = self.backups.get_mut(to) {
            b.on_message(from, msg)
        } else {
            return; // the new epoch's primary is not simulated
        };
        self.run(to, fx);
    }

    /// No more faults: deliver everything, finish every write, tick.
    fn settle(&mut self) {
        for _ in 0..500 {
            while !self.net.is_empty() {
                let (from, to, msg) = self.net.remove(0);
                self.deliver(&from, &to, msg);
            }
            let nodes: Vec<String> = self
                .disks
                .keys()
                .filter(|n| !self.dead.contains(*n))
                .cloned()
                .collect();
            for (i, _) in nodes.iter().enumerate() {
                while !self.disks[&nodes[i]].is_empty() {
                    self.apply(Step::Disk(i));
                }
            }
            if self.net.is_empty() {
                self.apply(Step::Tick(60));
            }
            let last = self.primary.last_seq();
            if self.primary.committed() == last
                && self
                    .backups
                    .iter()
                    .filter(|(n, _)| !self.dead.contains(*n))
                    .all(|(_, b)| b.applied() == last && b.logged() == last)
            {
                return;
            }
        }
        panic!(
            "did not settle: primary last {} committed {}, backups {:?}",
            self.primary.last_seq(),
            self.primary.committed(),
            self.backups
                .iter()
                .map(|(n, b)| (n.clone(), b.logged(), b.applied()))
                .collect::<Vec<_>>()
        );
    }

    /// The primary crashes; the coordinator promotes backup number `pick`
    /// (any member of the configuration will do: each has every committed
    /// entry) in epoch 2, and the other backup follows it.
    fn fail_over(&mut self, pick: usize) {
        self.dead.insert(self.lead.clone());
        // The survivors' actors finish their pending disk writes before
        // they take the new configuration.
        for b in BACKUPS {
            while let Some(batch) = self.disks.get_mut(b).unwrap().pop_front() {
                let log = self.logs.get_mut(b).unwrap();
                for e in batch {
                    log.entry(e.seq).or_insert(e);
                }
            }
        }
        let logged = |w: &World, n: &str| {
            let mut s = 0;
            while w.logs[n].contains_key(&(s + 1)) {
                s += 1;
            }
            s
        };
        let new_lead = BACKUPS[pick % BACKUPS.len()].to_string();
        let other = BACKUPS
            .iter()
            .find(|b| **b != new_lead)
            .unwrap()
            .to_string();
        let applied = self.applied.get(&new_lead).copied().unwrap_or(0);
        let last = logged(self, &new_lead);
        let inherited: Vec<LogEntry> = self.logs[&new_lead]
            .range(applied + 1..last + 1)
            .map(|(_, e)| e.clone())
            .collect();
        self.primary = Primary::new(
            2,
            std::slice::from_ref(&other),
            &[],
            applied,
            inherited,
            cfg(),
            self.now + cfg().grace,
        );
        let other_logged = logged(self, &other);
        let other_applied = self.applied.get(&other).copied().unwrap_or(0);
        let tail = self.logs[&other]
            .range(other_applied + 1..other_logged.max(other_applied) + 1)
            .map(|(s, e)| (*s, e.epoch))
            .collect();
        self.backups.clear();
        self.backups.insert(
            other.clone(),
            Backup::new(2, new_lead.clone(), other_logged, other_applied, Some(tail)),
        );
        self.lead = new_lead;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Under loss, reordering, duplication and slow disks: every committed
    /// entry is durable on every member, backups never apply past the commit
    /// point, and once faults stop everything proposed commits everywhere.
    #[test]
    fn committed_entries_are_on_every_member(steps in proptest::collection::vec(step(), 1..400)) {
        let mut w = World::new();
        for s in steps {
            w.apply(s);
        }
        w.settle();
        let last = w.primary.last_seq();
        for b in BACKUPS {
            for seq in 1..=last {
                prop_assert_eq!(w.logs[b].get(&seq), w.logs[P].get(&seq));
            }
        }
    }

    /// After the backups move to a new epoch, nothing the old primary sends
    /// is accepted: no backup writes anything more, and the old primary is
    /// told its epoch is stale.
    #[test]
    fn an_old_epoch_is_refused_after_a_new_one(
        before in proptest::collection::vec(step(), 1..150),
        after in proptest::collection::vec(step(), 1..150),
    ) {
        let mut w = World::new();
        for s in before {
            w.apply(s);
        }
        w.switched = true;
        let states: Vec<(String, Seq, Seq)> = w
            .backups
            .iter()
            .map(|(n, b)| (n.clone(), b.logged(), b.applied()))
            .collect();
        // Writes handed to a backup's disk before the switch belong to the
        // old epoch; the new configuration starts from what is durable.
        for b in BACKUPS {
            w.disks.get_mut(b).unwrap().clear();
        }
        for (n, logged, applied) in states {
            let tail = w.logs[&n].range(applied + 1..logged.max(applied) + 1).map(|(s, e)| (*s, e.epoch)).collect();
            w.backups.insert(n, Backup::new(2, "p2".into(), logged, applied, Some(tail)));
        }
        for s in after {
            w.apply(s);
        }
        prop_assert_eq!(w.persists_after_switch, 0, "a backup accepted an old-epoch entry");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The primary crashes at a random point of a faulty run and either
    /// backup is promoted: every entry any primary acknowledged survives
    /// with its content, and once faults stop both survivors hold the same
    /// log and apply all of it.
    #[test]
    fn no_acknowledged_entry_is_lost_across_a_failover(
        before in proptest::collection::vec(step(), 1..300),
        pick in 0usize..2,
        after in proptest::collection::vec(step(), 0..200),
    ) {
        let mut w = World::new();
        for s in before {
            w.apply(s);
        }
        w.fail_over(pick);
        for s in after {
            w.apply(s);
        }
        w.settle();
        let lead = w.lead.clone();
        for (seq, e) in &w.acked {
            prop_assert_eq!(w.logs[&lead].get(seq), Some(e), "acknowledged entry {} lost", seq);
        }
        let last = w.primary.last_seq();
        let other = w.backups.keys().next().unwrap().clone();
        for seq in 1..=last {
            prop_assert_eq!(w.logs[&other].get(&seq), w.logs[&lead].get(&seq));
        }
        prop_assert_eq!(w.logs[&other].len() as u64, last, "the follower kept extra entries");
    }
}

#[test]
fn a_promoted_primary_waits_out_the_old_lease() {
    let mut w = World::new();
    w.apply(Step::Propose(1));
    w.settle();
    w.fail_over(0);
    let err = w.primary.propose(vec![2], w.now).unwrap_err();
    assert_eq!(
        err.to_string(),
        "new primary at epoch 2 waits 1500 ms more for the old primary's lease to run out"
    );
    assert!(!w.primary.lease_valid(w.now));
    w.now += cfg().grace;
    assert!(w.primary.propose(vec![2], w.now).is_ok());
}

#[test]
fn a_clean_handover_needs_no_lease_wait() {
    // b1 takes over from p, which stays as a backup of epoch 2.
    let mut old = Backup::new(2, "b1".into(), 0, 0, Some(vec![]));
    let mut new = Primary::new(2, &["p".into(), "b2".into()], &[], 0, vec![], cfg(), 1500)
        .with_handover_from("p".into());
    assert!(
        new.propose(vec![1], 0).is_err(),
        "waits while p may still lead"
    );
    let hb = new.on_tick(100);
    let to_p = hb
        .into_iter()
        .find_map(|e| match e {
            Effect::Send { to, msg } if to == "p" => Some(msg),
            _ => None,
        })
        .unwrap();
    let answer = old.on_message("b1", to_p);
    let ack = answer
        .into_iter()
        .find_map(|e| match e {
            Effect::Send { msg, .. } => Some(msg),
            _ => None,
        })
        .unwrap();
    new.on_message("p", ack, 110);
    assert!(
        new.propose(vec![1], 120).is_ok(),
        "p answered in epoch 2: no wait"
    );
}

#[test]
fn a_learner_far_behind_is_fed_from_the_log_and_never_counts_for_commits() {
    let mut w = World::new();
    for i in 0..40u8 {
        w.apply(Step::Propose(i));
        w.settle();
    }
    // A learner joins with an empty copy: entries 1..40 are no longer in
    // the primary's memory, so they come from its durable log.
    let backups: Vec<String> = BACKUPS.iter().map(|b| b.to_string()).collect();
    let committed = w.primary.committed();
    w.primary = Primary::new(1, &backups, &["l".into()], committed, vec![], cfg(), 0);
    w.backups
        .insert("l".into(), Backup::new(1, P.into(), 0, 0, None));
    w.logs.insert("l".into(), BTreeMap::new());
    w.disks.insert("l".into(), VecDeque::new());
    w.settle();
    assert_eq!(w.backups["l"].applied(), 40);
    assert!(w.backups["l"].caught_up());
    assert_eq!(w.logs["l"], w.logs[P]);
    // A silent learner does not stop commits or the lease.
    w.dead.insert("l".into());
    w.apply(Step::Propose(99));
    w.settle();
    assert_eq!(w.primary.committed(), 41);
    assert!(w.primary.lease_valid(w.now));
}

#[test]
fn a_lagging_backup_catches_up_from_the_primary() {
    let mut w = World::new();
    // b2 hears nothing for 10 proposals.
    for i in 0..10u8 {
        w.apply(Step::Propose(i));
    }
    w.net.retain(|(_, to, _)| to != "b2");
    w.settle();
    assert_eq!(w.backups["b2"].applied(), 10);
    assert_eq!(w.logs["b2"].len(), 10);
}

#[test]
fn a_primary_that_lost_a_backup_stops_taking_writes() {
    let mut w = World::new();
    w.apply(Step::Propose(1));
    w.settle();
    assert!(w.primary.lease_valid(w.now));
    w.now += 2000; // no answers for longer than the lease
    let err = w.primary.propose(vec![2], w.now).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("primary lease expired at epoch 1: backup b1 has not answered for"),
        "{err}"
    );
}
