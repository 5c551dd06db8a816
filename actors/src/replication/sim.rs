//! Simulation tests of the replication state machines: one primary and two
//! backups over a network that loses, reorders and duplicates messages, with
//! disks that finish writes late, under random schedules (proptest). The
//! invariants are checked after every step; a quiet phase at the end checks
//! that everything proposed gets committed everywhere.

use std::collections::{BTreeMap, VecDeque};

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
    primary: Primary,
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
            primary: Primary::new(1, &backups, 0, vec![], cfg()),
            backups: backups
                .iter()
                .map(|b| (b.clone(), Backup::new(1, P.into(), 0, 0)))
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
                Effect::Commit { upto } => {
                    let before = self.applied.insert(node.to_string(), upto).unwrap_or(0);
                    assert!(
                        upto > before,
                        "{node} committed backwards: {before} -> {upto}"
                    );
                    if node == P {
                        self.check_committed_everywhere(upto);
                    }
                }
                Effect::FetchMap { seen } => assert!(seen > 1 && node == P || self.switched),
            }
        }
    }

    /// The safety property: what the primary commits (and so acknowledges)
    /// is durably on every member, with the same content.
    fn check_committed_everywhere(&self, upto: Seq) {
        let primary_log = &self.logs[P];
        for seq in 1..=upto {
            let mine = primary_log
                .get(&seq)
                .unwrap_or_else(|| panic!("primary committed {seq} it has not logged"));
            for b in BACKUPS {
                let theirs = self.logs[b]
                    .get(&seq)
                    .unwrap_or_else(|| panic!("committed {seq} is not durable on {b}"));
                assert_eq!(theirs, mine, "{b} logged a different entry {seq}");
            }
        }
    }

    fn check(&self) {
        for (name, b) in &self.backups {
            assert!(b.applied() <= b.logged(), "{name} applied past its log");
            if !self.switched {
                assert!(
                    b.applied() <= self.primary.committed(),
                    "{name} applied {} beyond the commit point {}",
                    b.applied(),
                    self.primary.committed()
                );
            }
        }
    }

    fn apply(&mut self, s: Step) {
        match s {
            Step::Propose(b) => {
                if let Ok((_, fx)) = self.primary.propose(vec![b], self.now) {
                    self.run(P, fx);
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
                let nodes: Vec<String> = self.disks.keys().cloned().collect();
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
                    let fx = if node == P {
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
                self.run(P, fx);
            }
            _ => {}
        }
        self.check();
    }

    fn deliver(&mut self, from: &str, to: &str, msg: ReplMsg) {
        let fx = if to == P {
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
            let nodes: Vec<String> = self.disks.keys().cloned().collect();
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
                && self.backups.values().all(|b| b.applied() == last)
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
            w.backups.insert(n, Backup::new(2, "p2".into(), logged, applied));
        }
        for s in after {
            w.apply(s);
        }
        prop_assert_eq!(w.persists_after_switch, 0, "a backup accepted an old-epoch entry");
    }
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
