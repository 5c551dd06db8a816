//! Simulation tests of the replication state machines: one primary and two
//! backups over a network that loses, reorders and duplicates messages, with
//! disks that finish writes late and rows that trail the commit point (an
//! apply is its own step), under random schedules (proptest). The
//! invariants are checked after every step; a quiet phase at the end checks
//! that everything proposed gets committed everywhere.
//!
//! Reads: at random steps, and on every copy in every mode at each round of
//! the quiet phase, a copy is asked for a read; whenever its `read_permit`
//! admits one, what its rows hold is checked: a strong read sees every entry
//! acknowledged so far, a session read `AtLeast(n)` every entry up to `n`,
//! and no read sees an entry that was not acknowledged. After a failover the
//! old primary keeps running, cut off, with its lease, so the lease and the
//! promoted primary's wait are what keep its reads right.
//!
//! Log truncation: the model store deletes everything a `Truncate` allows
//! (up to its `limit`, the most a byte bound may delete), and any read of a
//! deleted entry (a `SendLog`, an apply, a promoted primary's inherited
//! tail, a reconciliation) fails the run. A learner told to rebuild installs
//! a snapshot of the primary's rows.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::reconfigure::{self, takeover_not_before};
use super::*;
use crate::wire::ReadMode;

const P: &str = "p";
const BACKUPS: [&str; 2] = ["b1", "b2"];

#[derive(Debug, Clone)]
enum Step {
    Propose(u8),
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    /// The messages in flight from one sender are merged as its actor
    /// merges a turn's (`outbox::merge`).
    Merge(usize),
    Disk(usize),
    /// A copy applies what it was told is committed (its rows catch up).
    Apply(usize),
    /// A client reads from copy `.0` in mode `.1` (session token picked by
    /// `.2` among the acknowledged entries).
    Read(usize, u8, usize),
    Tick(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => any::<u8>().prop_map(Step::Propose),
        6 => any::<usize>().prop_map(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Drop),
        1 => any::<usize>().prop_map(Step::Duplicate),
        1 => any::<usize>().prop_map(Step::Merge),
        4 => any::<usize>().prop_map(Step::Disk),
        3 => any::<usize>().prop_map(Step::Apply),
        3 => (any::<usize>(), any::<u8>(), any::<usize>()).prop_map(|(n, m, t)| Step::Read(n, m, t)),
        2 => (1u8..120).prop_map(Step::Tick),
    ]
}

struct World {
    now: Millis,
    /// Who leads now (`p` until a failover).
    lead: String,
    primary: Primary,
    /// After a failover: the old primary, still running but cut off (the
    /// new configuration refuses its epoch).
    deposed: Option<(String, Primary)>,
    /// Crashed nodes: they send and receive nothing.
    dead: BTreeSet<String>,
    /// Every entry a primary committed (and so acknowledged to a client).
    acked: BTreeMap<Seq, LogEntry>,
    /// What clients have seen: entries acknowledged to their writer (by the
    /// primary that proposed them: a promoted primary commits what it
    /// inherited before the old lease is over, and acknowledges it to
    /// nobody), and what strong reads returned. A strong read must see all
    /// of it.
    visible: BTreeMap<Seq, LogEntry>,
    backups: BTreeMap<String, Backup>,
    /// Durable logs: every entry each node logged (and did not drop in a
    /// reconciliation), whether truncated since or not.
    logs: BTreeMap<String, BTreeMap<Seq, LogEntry>>,
    /// The first entry each node's log still holds: entries below were
    /// deleted by a truncation (or never held, after a snapshot).
    starts: BTreeMap<String, Seq>,
    /// Retention of every copy.
    retain: LogRetention,
    /// Truncations carried out, and learner rebuilds.
    truncations: usize,
    rebuilds: usize,
    /// Writes asked for and not done yet, per node, in order.
    disks: BTreeMap<String, VecDeque<Vec<LogEntry>>>,
    net: Vec<(String, String, ReplMsg)>,
    applied: BTreeMap<String, Seq>,
    /// What each node's rows reflect (`on_applied`); they catch up with
    /// `applied` at `Step::Apply`.
    rows: BTreeMap<String, Seq>,
    /// Reads admitted and checked.
    reads: usize,
    /// Strong reads that found the primary quiet and woke it.
    quiets: usize,
    /// After an epoch change: the backups moved to epoch 2.
    switched: bool,
    persists_after_switch: usize,
}

/// Small, so that schedules of a few hundred steps truncate often.
fn retain() -> LogRetention {
    LogRetention {
        entries: 2,
        bytes: 0,
        batch: 3,
        learner_hold: u64::MAX,
    }
}

fn cfg() -> LeaseConfig {
    LeaseConfig {
        lease: 1000,
        grace: 1500,
        heartbeat: 50,
        window: 16,
        // Short, so that schedules go quiet and wake up often.
        quiet_after: 300,
    }
}

impl World {
    fn new() -> Self {
        Self::with_retention(retain())
    }

    fn with_retention(retain: LogRetention) -> Self {
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
            primary: Primary::new(1, &backups, &[], 0, vec![], cfg(), 0).with_retention(retain, 1),
            deposed: None,
            dead: BTreeSet::new(),
            acked: BTreeMap::new(),
            visible: BTreeMap::new(),
            backups: backups
                .iter()
                .map(|b| {
                    let backup = Backup::new(1, P.into(), 0, 0, None, cfg());
                    (b.clone(), backup.with_retention(retain, 1))
                })
                .collect(),
            logs,
            starts: BTreeMap::new(),
            retain,
            truncations: 0,
            rebuilds: 0,
            disks,
            net: Vec::new(),
            applied: BTreeMap::new(),
            rows: BTreeMap::new(),
            reads: 0,
            quiets: 0,
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
                    assert!(
                        from > upto || from >= self.start(node),
                        "{node} sends {to} entries {from}..={upto}, deleted below {}",
                        self.start(node)
                    );
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
                    assert!(keep + 1 >= self.start(node), "{node} keeps deleted entries");
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
                    let epoch = if node == self.lead {
                        self.check_committed_everywhere(upto);
                        Some(self.primary.epoch())
                    } else {
                        // The cut-off old primary commits too.
                        self.deposed
                            .as_ref()
                            .filter(|(d, _)| d == node)
                            .map(|(_, p)| p.epoch())
                    };
                    if let Some(epoch) = epoch {
                        for seq in before + 1..=upto {
                            let e = self.logs[node][&seq].clone();
                            if let Some(old) = self.acked.insert(seq, e.clone()) {
                                assert_eq!(old, e, "acknowledged entry {seq} changed");
                            }
                            // Its writer hears of it from the primary that
                            // proposed it (a promoted primary has nobody
                            // waiting for what it inherited).
                            if e.epoch == epoch {
                                self.visible.insert(seq, e);
                            }
                        }
                    }
                }
                Effect::Truncate { below, limit } => {
                    let rows = self.rows.get(node).copied().unwrap_or(0);
                    assert!(below <= limit, "{node}: below {below} past limit {limit}");
                    assert!(limit <= rows + 1, "{node} truncates entries not applied");
                    // The most the store may delete (a byte bound of 0).
                    if limit > self.start(node) {
                        self.starts.insert(node.to_string(), limit);
                        self.truncations += 1;
                    }
                }
                Effect::Rebuild { log_start } => {
                    assert_eq!(node, "l", "only a learner rebuilds");
                    assert!(log_start > self.applied.get(node).copied().unwrap_or(0) + 1);
                    self.rebuild_learner();
                }
                Effect::FetchMap { seen } => {
                    assert!(
                        seen > 1 && node == self.lead
                            || self.switched
                            || self.deposed.is_some()
                            || !self.dead.is_empty()
                    )
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

    /// The first entry `node`'s log still holds.
    fn start(&self, node: &str) -> Seq {
        self.starts.get(node).copied().unwrap_or(1)
    }

    /// Learner `l` discards its copy and installs a snapshot of the lead's
    /// rows: it holds what they reflect, with no log before it.
    fn rebuild_learner(&mut self) {
        self.rebuilds += 1;
        let rows = self.rows.get(&self.lead).copied().unwrap_or(0);
        let content: BTreeMap<Seq, LogEntry> = self.logs[&self.lead]
            .range(..=rows)
            .map(|(s, e)| (*s, e.clone()))
            .collect();
        self.logs.insert("l".into(), content);
        self.disks.insert("l".into(), VecDeque::new());
        self.starts.insert("l".into(), rows + 1);
        self.applied.insert("l".into(), rows);
        self.rows.insert("l".into(), rows);
        let b = Backup::new(
            self.primary.epoch(),
            self.lead.clone(),
            rows,
            rows,
            None,
            cfg(),
        )
        .with_retention(self.retain, rows + 1);
        let hello = b.hello().into_iter().collect();
        self.backups.insert("l".into(), b);
        self.run("l", hello);
    }

    fn check(&self) {
        // A learner that says it is ready (the coordinator then makes it a
        // backup, which may be promoted) holds every acknowledged entry.
        if let Some(l) = self.backups.get("l").filter(|l| l.caught_up()) {
            for (seq, e) in &self.acked {
                assert_eq!(
                    self.logs["l"].get(seq),
                    Some(e),
                    "learner l reports ready without acknowledged entry {seq} ({l:?})"
                );
            }
        }
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
                // Some clients still write to the old primary.
                if let Some((old, p)) = self.deposed.as_mut().filter(|_| b % 4 == 0) {
                    let old = old.clone();
                    if let Ok((_, fx)) = p.propose(vec![b], self.now) {
                        self.run(&old, fx);
                    }
                } else if let Ok((_, fx)) = self.primary.propose(vec![b], self.now) {
                    let lead = self.lead.clone();
                    self.run(&lead, fx);
                }
            }
            Step::Apply(i) => {
                let behind: Vec<String> = self
                    .applied
                    .iter()
                    .filter(|(n, upto)| {
                        !self.dead.contains(*n) && **upto > self.rows.get(*n).copied().unwrap_or(0)
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                if !behind.is_empty() {
                    self.finish_apply(&behind[i % behind.len()].clone());
                }
            }
            Step::Read(n, m, t) => {
                let nodes = self.copies();
                let tokens: Vec<Seq> = std::iter::once(0)
                    .chain(self.visible.keys().copied())
                    .collect();
                let mode = match m % 3 {
                    0 => ReadMode::Strong,
                    1 => ReadMode::Replica,
                    _ => ReadMode::AtLeast(tokens[t % tokens.len()]),
                };
                self.read(&nodes[n % nodes.len()].clone(), mode);
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
            Step::Merge(i) if !self.net.is_empty() => {
                let from = self.net[i % self.net.len()].0.clone();
                let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.net)
                    .into_iter()
                    .partition(|(f, _, _)| *f == from);
                let sends = mine.into_iter().map(|(_, to, msg)| (to, msg)).collect();
                self.net = rest;
                for (to, msg) in super::outbox::merge(sends) {
                    self.net.push((from.clone(), to, msg));
                }
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
                    } else if let Some((_, p)) = self.deposed.as_mut().filter(|(d, _)| d == node) {
                        p.on_persisted(upto)
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
                if let Some((old, p)) = self.deposed.as_mut() {
                    let old = old.clone();
                    let fx = p.on_tick(self.now);
                    self.run(&old, fx);
                }
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
        } else if let Some((_, p)) = self.deposed.as_mut().filter(|(d, _)| d == to) {
            p.on_message(from, msg, self.now)
        } else if let Some(b) = self.backups.get_mut(to) {
            b.on_message(from, msg, self.now)
        } else {
            return; // the new epoch's primary is not simulated
        };
        self.run(to, fx);
    }

    /// The live nodes running a state machine.
    fn copies(&self) -> Vec<String> {
        std::iter::once(self.lead.clone())
            .chain(self.deposed.iter().map(|(d, _)| d.clone()))
            .chain(self.backups.keys().cloned())
            .filter(|n| !self.dead.contains(n))
            .collect()
    }

    /// `node`'s rows catch up with what it was told to apply.
    fn finish_apply(&mut self, node: &str) {
        let Some(upto) = self.applied.get(node).copied() else {
            return;
        };
        let rows = self.rows.get(node).copied().unwrap_or(0);
        if upto <= rows {
            return;
        }
        for seq in rows + 1..=upto {
            assert!(
                self.logs[node].contains_key(&seq) && seq >= self.start(node),
                "{node} applies entry {seq} it has not logged"
            );
        }
        self.rows.insert(node.to_string(), upto);
        let fx = if node == self.lead {
            self.primary.on_applied(upto)
        } else if let Some((_, p)) = self.deposed.as_mut().filter(|(d, _)| d == node) {
            p.on_applied(upto)
        } else if let Some(b) = self.backups.get_mut(node) {
            b.on_applied(upto)
        } else {
            vec![]
        };
        self.run(node, fx);
    }

    /// A client reads from `node` in `mode`: if the copy admits it, what
    /// its rows hold must be what the mode promises.
    fn read(&mut self, node: &str, mode: ReadMode) {
        if self.dead.contains(node) {
            return;
        }
        let permit = if node == self.lead {
            self.primary.read_permit(mode, self.now)
        } else if let Some((_, p)) = self.deposed.as_ref().filter(|(d, _)| d == node) {
            p.read_permit(mode, self.now)
        } else if let Some(b) = self.backups.get(node) {
            b.read_permit(mode, self.now)
        } else {
            return;
        };
        if permit.is_err() {
            // A strong read finding the primary quiet wakes it, as the
            // actor does (module docs, "Quiescence").
            if mode == ReadMode::Strong {
                let now = self.now;
                let primary = if node == self.lead {
                    Some(&mut self.primary)
                } else {
                    self.deposed
                        .as_mut()
                        .filter(|(d, _)| d == node)
                        .map(|(_, p)| p)
                };
                if let Some(p) = primary.filter(|p| p.is_quiet()) {
                    let fx = p.wake(now);
                    self.quiets += 1;
                    self.run(node, fx);
                }
            }
            return;
        }
        self.reads += 1;
        let rows = self.rows.get(node).copied().unwrap_or(0);
        let log = &self.logs[node];
        let at = self.now;
        // Only committed entries, with their content.
        for seq in 1..=rows {
            assert_eq!(
                self.acked.get(&seq),
                log.get(&seq),
                "{node} served a {mode:?} read at {at} with entry {seq} not as committed"
            );
        }
        let needed = match mode {
            // Everything acknowledged or read so far.
            ReadMode::Strong => self.visible.keys().last().copied().unwrap_or(0),
            ReadMode::Replica => 0,
            // The session's entry and everything before it.
            ReadMode::AtLeast(n) => n,
        };
        assert!(
            rows >= needed,
            "{node} served a {mode:?} read at {at} with rows at {rows}, missing acknowledged entries up to {needed}"
        );
        for (seq, e) in self.visible.range(..=rows) {
            assert_eq!(
                log.get(seq),
                Some(e),
                "{node} served a {mode:?} read at {at} with entry {seq} not as acknowledged"
            );
        }
        if mode == ReadMode::Strong {
            let seen: Vec<(Seq, LogEntry)> =
                log.range(..=rows).map(|(s, e)| (*s, e.clone())).collect();
            self.visible.extend(seen);
        }
    }

    /// Every copy is asked for a read in every mode.
    fn read_everywhere(&mut self) {
        let last = self.visible.keys().last().copied().unwrap_or(0);
        for node in self.copies() {
            for mode in [
                ReadMode::Strong,
                ReadMode::Replica,
                ReadMode::AtLeast(last),
                ReadMode::AtLeast(last / 2),
            ] {
                self.read(&node, mode);
            }
        }
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
            self.read_everywhere();
            for n in self.copies() {
                self.finish_apply(&n);
            }
            self.read_everywhere();
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

    /// The primary is cut off; the coordinator promotes backup number `pick`
    /// (any member of the configuration will do: each has every committed
    /// entry) in epoch 2, and the other backup follows it.
    fn fail_over(&mut self, pick: usize) {
        let new_lead = BACKUPS[pick % BACKUPS.len()];
        let other = *BACKUPS.iter().find(|b| **b != new_lead).unwrap();
        self.fail_over_to(new_lead, other, 2);
    }

    /// The primary is cut off; the coordinator promotes `new_lead` in
    /// `epoch`, and `other` follows it. Anyone else is out of the
    /// configuration. The old primary goes on running (unless dead): it
    /// only hears answers still in flight and refusals, and serves reads
    /// while its lease lasts.
    fn fail_over_to(&mut self, new_lead: &str, other: &str, epoch: Epoch) {
        assert!(epoch > self.primary.epoch(), "epochs only grow");
        // The survivors' actors finish their pending disk writes and
        // applies before they take the new configuration.
        for b in [new_lead, other] {
            while let Some(batch) = self.disks.get_mut(b).unwrap().pop_front() {
                let log = self.logs.get_mut(b).unwrap();
                for e in batch {
                    log.entry(e.seq).or_insert(e);
                }
            }
            self.finish_apply(b);
        }
        // The new primary waits out the old lease from its last word from
        // the old primary.
        let contact = self.backups[new_lead].primary_contact();
        let logged = |w: &World, n: &str| {
            let mut s = 0;
            while w.logs[n].contains_key(&(s + 1)) {
                s += 1;
            }
            s
        };
        let (new_lead, other) = (new_lead.to_string(), other.to_string());
        let applied = self.applied.get(&new_lead).copied().unwrap_or(0);
        let last = logged(self, &new_lead);
        assert!(
            applied + 1 >= self.start(&new_lead),
            "{new_lead} deleted unapplied entries"
        );
        let inherited: Vec<LogEntry> = self.logs[&new_lead]
            .range(applied + 1..last + 1)
            .map(|(_, e)| e.clone())
            .collect();
        let primary = Primary::new(
            epoch,
            std::slice::from_ref(&other),
            &[],
            applied,
            inherited,
            cfg(),
            takeover_not_before(epoch, false, contact, &cfg()),
        )
        .with_retention(self.retain, self.start(&new_lead));
        let other_logged = logged(self, &other);
        let other_applied = self.applied.get(&other).copied().unwrap_or(0);
        let tail = self.logs[&other]
            .range(other_applied + 1..other_logged.max(other_applied) + 1)
            .map(|(s, e)| (*s, e.epoch))
            .collect();
        self.backups.clear();
        self.backups.insert(
            other.clone(),
            Backup::new(
                epoch,
                new_lead.clone(),
                other_logged,
                other_applied,
                Some(tail),
                cfg(),
            )
            .with_retention(self.retain, self.start(&other)),
        );
        let old = std::mem::replace(&mut self.lead, new_lead);
        if !self.dead.contains(&old) {
            let deposed = std::mem::replace(&mut self.primary, primary);
            self.deposed = Some((old, deposed));
        } else {
            self.primary = primary;
        }
    }

    /// The map adds learner `l` with an empty copy (it is fed from the
    /// primary's durable log).
    fn add_learner(&mut self, l: &str) {
        let backups: Vec<String> = BACKUPS.iter().map(|b| b.to_string()).collect();
        self.finish_apply(P);
        let committed = self.primary.committed();
        self.primary = Primary::new(1, &backups, &[l.into()], committed, vec![], cfg(), 0)
            .with_retention(self.retain, self.start(P));
        self.backups.insert(
            l.into(),
            Backup::new(1, P.into(), 0, 0, None, cfg()).with_retention(self.retain, 1),
        );
        self.logs.insert(l.into(), BTreeMap::new());
        self.disks.insert(l.into(), VecDeque::new());
    }

    /// The cut-off old primary crashes and comes back (with its data dir),
    /// and the map re-adds it, in a new epoch, as learner `l` beside the
    /// lead and its backup. As `reconfigure::rejoin` says, it keeps its rows
    /// and drops its log after them, then follows the lead from there (or
    /// installs a snapshot when it applied nothing).
    fn return_as_learner(&mut self) {
        let (old, _) = self.deposed.take().expect("a deposed primary");
        // It crashed: what it sent and what its disk had not written are
        // gone. It no longer runs under its old name.
        self.net.retain(|(f, t, _)| *f != old && *t != old);
        self.disks.get_mut(&old).unwrap().clear();
        self.dead.insert(old.clone());
        self.settle();
        self.finish_apply(&self.lead.clone());
        let lead = self.lead.clone();
        let epoch = self.primary.epoch() + 1;
        let others: Vec<String> = self.backups.keys().cloned().collect();
        self.primary = Primary::new(
            epoch,
            &others,
            &["l".into()],
            self.primary.committed(),
            vec![],
            cfg(),
            0,
        )
        .with_retention(self.retain, self.start(&lead));
        for o in others {
            let b = &self.backups[&o];
            let (logged, applied) = (b.logged(), b.applied());
            let tail = self.logs[&o]
                .range(applied + 1..logged.max(applied) + 1)
                .map(|(s, e)| (*s, e.epoch))
                .collect();
            let b = Backup::new(epoch, lead.clone(), logged, applied, Some(tail), cfg())
                .with_retention(self.retain, self.start(&o));
            self.backups.insert(o, b);
        }
        // What its store holds: rows up to what it applied, the log kept.
        let rows = self.rows.get(&old).copied().unwrap_or(0);
        let start = self.start(&old);
        let kept: BTreeMap<Seq, LogEntry> = self.logs[&old]
            .range(..=rows)
            .map(|(s, e)| (*s, e.clone()))
            .collect();
        self.logs.insert("l".into(), kept);
        self.disks.insert("l".into(), VecDeque::new());
        self.starts.insert("l".into(), start);
        self.applied.insert("l".into(), rows);
        self.rows.insert("l".into(), rows);
        let b =
            Backup::new(epoch, lead, rows, rows, None, cfg()).with_retention(self.retain, start);
        let hello = b.hello().into_iter().collect();
        self.backups.insert("l".into(), b);
        match reconfigure::rejoin(None, crate::shard::LocalRole::Learner, rows) {
            reconfigure::Rejoin::FromApplied => self.run("l", hello),
            reconfigure::Rejoin::Afresh => self.rebuild_learner(),
            reconfigure::Rejoin::Keep => unreachable!("a returning learner never keeps its log"),
        }
    }

    /// `n` heartbeat rounds with every message delivered.
    fn heartbeats(&mut self, n: usize) {
        for _ in 0..n {
            self.apply(Step::Tick(60));
            self.deliver_all_but(&[]);
        }
    }

    /// Delivers every message in flight except those to `held` (they stay
    /// in flight), and finishes every disk write of the live nodes, until
    /// nothing moves.
    fn deliver_all_but(&mut self, held: &[&str]) {
        for _ in 0..100 {
            let (kept, mut go): (Vec<_>, Vec<_>) = std::mem::take(&mut self.net)
                .into_iter()
                .partition(|(_, to, _)| held.contains(&to.as_str()));
            self.net = kept;
            let disks_busy = self
                .disks
                .iter()
                .any(|(n, d)| !d.is_empty() && !self.dead.contains(n));
            if go.is_empty() && !disks_busy {
                return;
            }
            for (from, to, msg) in go.drain(..) {
                self.deliver(&from, &to, msg);
            }
            let nodes: Vec<String> = self
                .disks
                .keys()
                .filter(|n| !self.dead.contains(*n))
                .cloned()
                .collect();
            for (i, n) in nodes.iter().enumerate() {
                while !self.disks[n].is_empty() {
                    self.apply(Step::Disk(i));
                }
            }
        }
        panic!("messages kept flowing");
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
        for b in BACKUPS {
            w.finish_apply(b);
        }
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
            w.backups.insert(n, Backup::new(2, "p2".into(), logged, applied, Some(tail), cfg()));
        }
        for s in after {
            w.apply(s);
        }
        prop_assert_eq!(w.persists_after_switch, 0, "a backup accepted an old-epoch entry");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The primary is cut off at a random point of a faulty run (it goes on
    /// running, and serving reads under its lease) and either backup is
    /// promoted: every entry any primary acknowledged survives with its
    /// content, every admitted read sees what it must (checked at each
    /// step), and once faults stop both survivors hold the same log and
    /// apply all of it.
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A learner joins a faulty run: whenever it reports itself ready, it
    /// holds every entry acknowledged so far (checked after every step),
    /// and once faults stop it has everything.
    #[test]
    fn a_ready_learner_holds_every_acknowledged_entry(
        before in proptest::collection::vec(step(), 0..100),
        after in proptest::collection::vec(step(), 1..400),
    ) {
        let mut w = World::new();
        for s in before {
            w.apply(s);
        }
        w.settle();
        w.add_learner("l");
        for s in after {
            w.apply(s);
        }
        w.settle();
        prop_assert_eq!(&w.logs["l"], &w.logs[P]);
        // Once it has answered, the learner's entries are kept for it: at
        // most one rebuild, for a log truncated before it joined.
        prop_assert!(w.rebuilds <= 1, "{} rebuilds", w.rebuilds);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The old primary is cut off at a random point of a faulty run, goes
    /// on taking writes it cannot commit, crashes, and returns as a learner
    /// keeping its rows (a node restarted with its data dir): whenever it
    /// reports ready it holds every acknowledged entry (checked at each
    /// step), and once faults stop its log is the lead's, none of the
    /// uncommitted tail it had left.
    #[test]
    fn a_returning_primary_keeps_only_committed_rows_and_converges(
        before in proptest::collection::vec(step(), 1..200),
        pick in 0usize..2,
        during in proptest::collection::vec(step(), 0..150),
        after in proptest::collection::vec(step(), 0..200),
    ) {
        let mut w = World::new();
        for s in before {
            w.apply(s);
        }
        w.fail_over(pick);
        for s in during {
            w.apply(s);
        }
        w.return_as_learner();
        for s in after {
            w.apply(s);
        }
        w.settle();
        w.heartbeats(2);
        let lead = w.lead.clone();
        prop_assert!(w.backups["l"].caught_up());
        for (seq, e) in &w.acked {
            prop_assert_eq!(w.logs["l"].get(seq), Some(e), "acknowledged entry {} missing on l", seq);
        }
        let last = w.primary.last_seq();
        prop_assert_eq!(w.logs["l"].range(..=last).count() as u64, last);
        for seq in 1..=last {
            prop_assert_eq!(w.logs["l"].get(&seq), w.logs[&lead].get(&seq));
        }
        prop_assert!(w.rebuilds <= 1, "{} rebuilds", w.rebuilds);
    }
}

#[test]
fn a_promoted_primary_waits_out_the_old_lease() {
    let mut w = World::new();
    w.apply(Step::Propose(1));
    w.settle();
    // b1 hears the old primary last now.
    w.heartbeats(1);
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
fn the_old_primary_serves_strong_reads_until_its_lease_ends_and_the_new_one_only_after() {
    let mut w = World::new();
    w.apply(Step::Propose(1));
    w.settle();
    w.heartbeats(1);
    w.fail_over(0);
    let (mut old_until, mut new_from) = (None, None);
    for _ in 0..40 {
        let old = &w.deposed.as_ref().unwrap().1;
        if old.read_permit(ReadMode::Strong, w.now).is_ok() {
            old_until = Some(w.now);
        }
        if new_from.is_none() && w.primary.read_permit(ReadMode::Strong, w.now).is_ok() {
            new_from = Some(w.now);
        }
        w.read_everywhere();
        w.heartbeats(1);
    }
    let (old_until, new_from) = (old_until.unwrap(), new_from.unwrap());
    assert!(
        old_until + cfg().grace - cfg().lease <= new_from,
        "the old primary read until {old_until}, the new one from {new_from}"
    );
    // The new primary's writes are seen by strong reads, and the old
    // primary serves none any more.
    w.apply(Step::Propose(2));
    w.settle();
    assert_eq!(w.visible.len(), 2);
    assert!(w.reads > 0);
    let old = &w.deposed.as_ref().unwrap().1;
    assert_eq!(
        old.read_permit(ReadMode::Strong, w.now),
        Err(ReadRefusal::NoLease { epoch: 1 })
    );
}

#[test]
fn a_clean_handover_needs_no_lease_wait() {
    // b1 takes over from p, which stays as a backup of epoch 2.
    let mut old = Backup::new(2, "b1".into(), 0, 0, Some(vec![]), cfg());
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
    let answer = old.on_message("b1", to_p, 100);
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

/// No truncation at all: the safe point never moves by a batch.
fn keep_everything() -> LogRetention {
    LogRetention {
        batch: u64::MAX,
        ..retain()
    }
}

#[test]
fn a_learner_far_behind_is_fed_from_the_log_and_counts_for_commits_only_once_caught_up() {
    let mut w = World::with_retention(keep_everything());
    for i in 0..40u8 {
        w.apply(Step::Propose(i));
        w.settle();
    }
    // A learner joins with an empty copy: entries 1..40 are no longer in
    // the primary's memory, so they come from its durable log.
    w.add_learner("l");
    // While it copies, a silent learner holds nothing back.
    w.dead.insert("l".into());
    w.apply(Step::Propose(40));
    w.deliver_all_but(&[]);
    assert_eq!(w.primary.committed(), 41);
    w.dead.remove("l");
    w.settle();
    w.heartbeats(2);
    assert_eq!(w.backups["l"].applied(), 41);
    assert!(w.backups["l"].caught_up());
    assert_eq!(w.logs["l"], w.logs[P]);
    // Caught up, it counts for commits (it is about to become a backup),
    // but not for the lease: a silent learner then holds writes back until
    // the coordinator drops it, and strong reads go on.
    w.dead.insert("l".into());
    w.apply(Step::Propose(99));
    w.deliver_all_but(&[]);
    assert_eq!(w.primary.committed(), 41);
    assert!(w.primary.lease_valid(w.now));
}

/// The coordinator makes a learner a backup once the learner says it has
/// caught up (gossip `ready`), and may promote it later like any backup:
/// a rebalancing move onto a node that just came back, whose primary is
/// killed. So everything the primary acknowledges after the learner said so
/// must be on the learner. Here the primary's messages to the learner are
/// still in flight when it takes one more write and is killed; the learner
/// replaces b1 (epoch 2) and, leading no shard, is promoted (epoch 3).
#[test]
fn a_learner_that_reported_ready_holds_every_entry_acknowledged_since() {
    let mut w = World::new();
    for i in 0..5u8 {
        w.apply(Step::Propose(i));
        w.settle();
    }
    w.add_learner("l");
    w.settle();
    // Its ack shows the primary it has everything committed; the next
    // heartbeat tells it that it counts now.
    w.heartbeats(2);
    assert!(
        w.backups["l"].caught_up(),
        "l reports ready: the coordinator makes it a backup"
    );
    // One more write; b1 and b2 log it, l has not received it yet.
    w.apply(Step::Propose(5));
    w.deliver_all_but(&["l"]);
    for (seq, e) in &w.acked {
        assert_eq!(
            w.logs["l"].get(seq),
            Some(e),
            "entry {seq} was acknowledged after l reported ready, and l does not hold it"
        );
    }
    // The move swaps l in for b1, the primary dies, l is promoted: every
    // acknowledged entry survives, and b2 ends with l's log.
    w.fail_over_to("l", "b2", 3);
    w.settle();
    for (seq, e) in &w.acked {
        assert_eq!(
            w.logs["l"].get(seq),
            Some(e),
            "acknowledged entry {seq} lost"
        );
    }
    assert_eq!(w.logs["b2"], w.logs["l"]);
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

#[test]
fn every_copy_truncates_and_still_converges_and_serves_every_acknowledged_write() {
    let mut w = World::new();
    for i in 0..60u8 {
        w.apply(Step::Propose(i));
        if i % 7 == 0 {
            w.settle();
        }
    }
    // b2 misses some entries: the primary keeps what b2 has not acked.
    for i in 60..70u8 {
        w.apply(Step::Propose(i));
    }
    w.net.retain(|(_, to, _)| to != "b2");
    w.deliver_all_but(&["b2"]);
    assert!(
        w.start(P) <= w.backups["b2"].logged() + 1,
        "the primary deleted entries b2 still needs"
    );
    w.settle();
    w.read_everywhere();
    assert!(w.truncations >= 3, "only {} truncations", w.truncations);
    for n in std::iter::once(P).chain(BACKUPS) {
        assert!(w.start(n) > 50, "{n} keeps its log from {}", w.start(n));
        assert_eq!(w.rows[n], 70);
    }
    assert_eq!(w.acked.len(), 70);
}

#[test]
fn a_learner_behind_the_retained_log_installs_a_snapshot_again() {
    let mut w = World::new();
    for i in 0..30u8 {
        w.apply(Step::Propose(i));
        w.settle();
    }
    assert!(w.start(P) > 20);
    // A learner whose copy ends long before the primary's first retained
    // entry (an empty one here): told to rebuild, never sent a gap.
    w.add_learner("l");
    w.settle();
    w.heartbeats(2);
    assert_eq!(w.rebuilds, 1);
    assert!(w.backups["l"].caught_up());
    assert_eq!(w.logs["l"], w.logs[P]);
    for (seq, e) in &w.acked {
        assert_eq!(w.logs["l"].get(seq), Some(e));
    }
}

/// A primary cut off with entries of its own that nobody else logged comes
/// back after the new primary wrote other entries at the same positions:
/// with the log retained, it catches up from the log (no snapshot), drops
/// its divergent tail and ends with the new primary's entries.
#[test]
fn a_returning_primary_drops_its_divergent_tail_and_catches_up_from_the_log() {
    let mut w = World::with_retention(keep_everything());
    for i in 0..10u8 {
        w.apply(Step::Propose(i));
        w.settle();
    }
    // Three more entries, durable on p only: nothing reaches the backups.
    for i in 10..13u8 {
        w.apply(Step::Propose(i));
    }
    w.net.clear();
    while !w.disks[P].is_empty() {
        let i = w.disks.keys().position(|n| n == P).unwrap();
        w.apply(Step::Disk(i));
    }
    assert_eq!(w.logs[P].len(), 13);
    w.fail_over(0);
    w.now += cfg().grace + 1;
    for i in 20..25u8 {
        w.apply(Step::Propose(i));
        w.settle();
    }
    let lead = w.lead.clone();
    assert_eq!(
        w.logs[&lead][&11].epoch, 2,
        "the new primary wrote seq 11 anew"
    );
    assert_eq!(w.logs[P][&11].epoch, 1);
    w.return_as_learner();
    w.settle();
    w.heartbeats(2);
    assert_eq!(w.rebuilds, 0, "caught up from the log");
    assert!(w.backups["l"].caught_up());
    assert_eq!(w.logs["l"], w.logs[&lead]);
}

/// The same past the retention window: the new primary no longer holds
/// what the returning copy missed, so it installs a snapshot, once.
#[test]
fn a_returning_primary_past_the_retained_log_installs_a_snapshot() {
    let mut w = World::new();
    for i in 0..10u8 {
        w.apply(Step::Propose(i));
        w.settle();
    }
    w.fail_over(1);
    w.now += cfg().grace + 1;
    for i in 20..50u8 {
        w.apply(Step::Propose(i));
        w.settle();
    }
    let lead = w.lead.clone();
    assert!(w.start(&lead) > 11, "the lead truncated what p missed");
    w.return_as_learner();
    w.settle();
    w.heartbeats(2);
    assert_eq!(w.rebuilds, 1);
    assert!(w.backups["l"].caught_up());
    for (seq, e) in &w.acked {
        assert_eq!(w.logs["l"].get(seq), Some(e));
    }
}

/// A learner that stops answering holds the primary's log back by at most
/// `learner_hold` entries: past that the primary deletes them anyway, and
/// the learner, once it answers again, is told to rebuild (never sent a
/// gap), installs a snapshot once, and catches up.
#[test]
fn a_silent_learner_holds_the_log_back_only_so_far() {
    let mut w = World::with_retention(LogRetention {
        learner_hold: 10,
        ..retain()
    });
    for i in 0..5u8 {
        w.apply(Step::Propose(i));
        w.settle();
    }
    // The learner never answers (as one copying a big snapshot, or stuck).
    w.add_learner("l");
    w.dead.insert("l".into());
    let held_at = 0;
    for i in 5..65u8 {
        w.apply(Step::Propose(i));
        w.deliver_all_but(&["l"]);
        w.finish_apply(P);
    }
    w.net.retain(|(_, to, _)| to != "l");
    let start = w.start(P);
    assert!(
        start > held_at + 1,
        "the primary kept everything since {held_at} for the silent learner (log starts at {start})"
    );
    assert!(
        w.primary.committed() - start < 10 + 2 * retain().batch + 10,
        "log from {start} to {}",
        w.primary.committed()
    );
    w.dead.remove("l");
    w.settle();
    w.heartbeats(3);
    assert_eq!(w.rebuilds, 1);
    assert!(w.backups["l"].caught_up());
    for (seq, e) in &w.acked {
        assert_eq!(w.logs["l"].get(seq), Some(e));
    }
}

/// A world whose primary took `writes` writes, then stayed idle (12
/// heartbeats, 720 ms; quiet after 300) until it went quiet.
fn quiet_world(writes: u8) -> World {
    let mut w = World::new();
    for i in 0..writes {
        w.apply(Step::Propose(i));
    }
    w.settle();
    w.heartbeats(12);
    assert!(w.primary.is_quiet(), "idle for 720 ms, quiet after 300");
    w
}

/// Whether a strong read on `node` was admitted (it is attempted, and
/// checked if admitted).
fn strong_read(w: &mut World, node: &str) -> bool {
    let before = w.reads;
    w.read(node, ReadMode::Strong);
    w.reads > before
}

#[test]
fn an_idle_shard_goes_quiet_and_a_strong_read_wakes_it_for_one_round_trip() {
    let mut w = quiet_world(1);
    assert!(BACKUPS.iter().all(|b| w.backups[*b].is_quiet()));
    // Quiet: ticks send nothing, for as long as it stays idle.
    for _ in 0..50 {
        w.apply(Step::Tick(100));
        assert!(w.net.is_empty(), "a quiet primary sent {:?}", w.net);
    }
    assert_eq!(w.primary.silent_backups(w.now), Vec::<String>::new());
    // Its lease has run out: the first strong read is refused and wakes it.
    assert!(!strong_read(&mut w, P));
    assert_eq!(w.quiets, 1);
    assert!(!w.primary.is_quiet());
    assert_eq!(w.net.len(), 2, "one heartbeat to each backup");
    // One round trip later the lease is back and the read is served.
    w.deliver_all_but(&[]);
    assert!(w.primary.lease_valid(w.now));
    assert!(strong_read(&mut w, P));
    // It goes quiet again, and a write wakes it and commits as usual.
    w.heartbeats(12);
    assert!(w.primary.is_quiet());
    w.apply(Step::Propose(2));
    assert!(!w.primary.is_quiet());
    assert!(BACKUPS.iter().all(|b| !w.backups[*b].is_quiet()) || !w.net.is_empty());
    w.settle();
    assert_eq!(w.primary.committed(), 2);
    assert!(BACKUPS.iter().all(|b| !w.backups[*b].is_quiet()));
}

#[test]
fn a_quiet_primary_cut_off_from_a_backup_never_gets_its_lease_back() {
    let mut w = quiet_world(1);
    w.now += cfg().lease + 1;
    // b2 is cut off: the wake-up reaches b1 only.
    assert!(!strong_read(&mut w, P));
    w.net.retain(|(_, to, _)| to != "b2");
    w.deliver_all_but(&["b2"]);
    for _ in 0..20 {
        assert!(!strong_read(&mut w, P), "served without b2's answer");
        w.apply(Step::Tick(60));
        w.net.retain(|(_, to, _)| to != "b2");
        w.deliver_all_but(&["b2"]);
    }
    assert!(!w.primary.is_quiet(), "stays awake, heartbeating b2");
}

#[test]
fn a_quiet_primary_deposed_and_woken_never_serves_again() {
    let mut w = quiet_world(3);
    // b1 is promoted while the old primary sleeps; b2 follows it. The old
    // primary's lease from its backups' last answers runs out.
    w.fail_over_to("b1", "b2", 2);
    w.now += cfg().lease + 1;
    for _ in 0..30 {
        w.apply(Step::Tick(60));
        assert!(!strong_read(&mut w, P), "the deposed primary served");
        strong_read(&mut w, "b1");
        w.deliver_all_but(&[]);
    }
    assert!(w.quiets >= 1, "the deposed primary was woken by a read");
    assert!(strong_read(&mut w, "b1"), "the new primary serves");
}

#[test]
fn a_write_to_a_shard_quiet_for_longer_than_its_lease_is_taken_and_commits() {
    let mut w = quiet_world(1);
    w.now += 10 * cfg().lease;
    // Not refused for the lease that lapsed while quiet: the backups have
    // not been asked anything since.
    let (seq, fx) = w.primary.propose(vec![2], w.now).expect("taken");
    w.run(P, fx);
    assert!(!w.primary.is_quiet());
    assert!(w.primary.silent_backups(w.now).is_empty());
    w.deliver_all_but(&[]);
    w.finish_apply(P);
    assert_eq!(w.primary.committed(), seq);
    assert!(w.primary.lease_valid(w.now));
    // Awake for longer than a lease with a backup gone silent: refused
    // again, as before it went quiet.
    w.dead.insert("b2".into());
    w.now += cfg().lease + 1;
    w.apply(Step::Tick(1));
    assert!(w.primary.propose(vec![3], w.now).is_err());
}
