//! A linearizability checker for the histories of [`crate::history`], one
//! key at a time (linearizability is local: a history is linearizable iff
//! each key's sub-history is).
//!
//! **The model of one key.** The state is the row's value or no row
//! (values are unique per write, so a value names its write). A put sets
//! the value; an insert needs no row; an update needs a row; a delete needs
//! a row and removes it; a compare-and-set (`if_version = V`) needs the row
//! at version `V`, which the checker turns into "the row holds the value
//! seen at version `V`" (a version is the shard log sequence number of the
//! entry that wrote the row, so within a key a version names one value,
//! and the reads and acknowledgements of the history say which). A read
//! needs the state it returned.
//!
//! **Outcomes.** An ok operation took effect once, between its invocation
//! and its completion. A write refused with a `Conflict` on its own key
//! took no effect, and its condition was false at some point in its
//! interval (an insert met a row, an update or delete met no row, a
//! compare-and-set met another value): it is checked as a read of that.
//! Any other refusal (`Unavailable`, a refused batch...) took no effect and
//! constrains nothing, so it is left out (if its value is ever read, that
//! is reported on its own). An unknown write took effect at most once, at
//! any point after its invocation, or never.
//!
//! **Versions.** Besides the search, every value must be seen at one
//! version only (a value at two versions is a write applied twice), a
//! version must hold one value, and the versions of the values written
//! must grow along the linearization (the log is the order of the writes).
//!
//! **The search** is Wing & Gong's, with Lowe's memoisation of (set of
//! operations placed, state), as in Porcupine / Knossos' `wgl`, over the
//! definite operations: their calls and returns in time order in a linked
//! list; take the first call whose operation can take effect now and whose
//! (set, state) is new, lift it out and start over; at a return whose
//! operation was not placed, undo the last choice.
//!
//! Unknown writes have no return. They are placed *just in time* (Lowe's
//! JIT linearization): only as a short chain (at most [`MAX_CHAIN`])
//! right before a definite operation whose condition does not hold
//! without them. That loses nothing: in any valid order, an unknown write
//! just before a definite write whose condition already held can be
//! dropped (the definite write sets the state anyway), and one just before
//! a read-like operation whose condition already held can move after it.
//! Unknown writes that are alike (same condition, same effect, same
//! version) are taken in invocation order only, and values no read or
//! compare-and-set looks at are one state ("a value nobody looks at"),
//! since nothing can tell them apart.
//!
//! The search runs twice. First relaxed: unknown writes whose value nobody
//! reads, and unknown deletes, may take effect any number of times. That
//! allows more than the model, so when it finds no order there is none,
//! and it is fast (such writes leave no trace in the memo). When it finds
//! an order, the exact search decides. A chain cut short by its bound
//! turns a "no" into [`Verdict::Undecided`], as does the step bound
//! ([`Limits::max_steps`]): never a hang, never a guess.
//!
//! The set of placed operations is hashed (Zobrist: a random 128-bit word
//! per operation, xored), so the memo holds 20 bytes per state; a
//! collision would prune a branch, with odds of about n²/2¹²⁸.
//!
//! A well-kept crate was considered: `stateright` 0.31's
//! `LinearizabilityTester` lets a thread have one operation in flight, as
//! its last (our clients carry on after an unknown write), and searches
//! without memoisation, so it does not fit histories of thousands of
//! operations with unknown writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

use crate::history::{Call, Op, Outcome, Rng};

/// Steps per key before the search gives up ([`Verdict::Undecided`]).
pub const DEFAULT_MAX_STEPS: u64 = 20_000_000;

/// Bounds of a check.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: DEFAULT_MAX_STEPS,
        }
    }
}

/// What the search concluded for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search did not finish within [`Limits::max_steps`].
    Undecided,
}

/// What kind of violation a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// One write's value seen at two versions: applied more than once.
    AppliedTwice,
    /// Two values seen at one version of the key.
    VersionReused,
    /// A value read whose write was refused (it was applied).
    RefusedWriteVisible,
    /// A value read that a batch replaced within itself (not atomic).
    BatchIntermediateVisible,
    /// A value read that no write of the key wrote.
    UnwrittenValue,
    /// Two writes of the history wrote one value: the history is broken.
    ValueWrittenTwice,
    /// No order of the operations fits their times and outcomes.
    NotLinearizable,
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProblemKind::AppliedTwice => "value at two versions (write applied twice)",
            ProblemKind::VersionReused => "two values at one version",
            ProblemKind::RefusedWriteVisible => "refused write visible",
            ProblemKind::BatchIntermediateVisible => "batch intermediate value visible",
            ProblemKind::UnwrittenValue => "value never written",
            ProblemKind::ValueWrittenTwice => "history writes a value twice",
            ProblemKind::NotLinearizable => "not linearizable",
        })
    }
}

/// One violation, with the operations that show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
}

/// The check of one key.
#[derive(Debug, Clone)]
pub struct KeyCheck {
    pub key: i64,
    /// Operations of the key (refused reads are not in histories).
    pub ops: usize,
    pub verdict: Verdict,
    /// Steps the search took.
    pub steps: u64,
    pub problems: Vec<Problem>,
}

impl KeyCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.verdict == Verdict::Linearizable
    }
}

/// The check of a whole history.
#[derive(Debug, Clone, Default)]
pub struct Check {
    pub keys: Vec<KeyCheck>,
}

impl Check {
    /// Every key linearizable and no problem.
    pub fn ok(&self) -> bool {
        self.keys.iter().all(KeyCheck::ok)
    }

    /// Keys with a violation.
    pub fn violating(&self) -> impl Iterator<Item = &KeyCheck> {
        self.keys.iter().filter(|k| !k.problems.is_empty())
    }

    /// Keys the search could not decide.
    pub fn undecided(&self) -> impl Iterator<Item = &KeyCheck> {
        self.keys.iter().filter(|k| k.verdict == Verdict::Undecided)
    }

    pub fn problems(&self) -> impl Iterator<Item = (i64, &Problem)> {
        self.keys
            .iter()
            .flat_map(|k| k.problems.iter().map(move |p| (k.key, p)))
    }

    /// How many problems of each kind.
    pub fn by_kind(&self) -> BTreeMap<ProblemKind, usize> {
        let mut m = BTreeMap::new();
        for (_, p) in self.problems() {
            *m.entry(p.kind).or_default() += 1;
        }
        m
    }

    pub fn ops(&self) -> usize {
        self.keys.iter().map(|k| k.ops).sum()
    }

    /// One line per key, then every problem in full.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for k in &self.keys {
            let _ = writeln!(
                out,
                "key {}: {} ops, {:?} after {} steps, {} problems",
                k.key,
                k.ops,
                k.verdict,
                k.steps,
                k.problems.len()
            );
        }
        for (key, p) in self.problems() {
            let _ = writeln!(out, "key {key}: {}: {}", p.kind, p.detail);
        }
        out
    }
}

/// Checks every key of `history`.
pub fn check(history: &[Op], limits: Limits) -> Check {
    let mut by_key: BTreeMap<i64, Vec<&Op>> = BTreeMap::new();
    for o in history {
        by_key.entry(o.key).or_default().push(o);
    }
    Check {
        keys: by_key
            .into_iter()
            .map(|(key, ops)| check_key(key, &ops, limits))
            .collect(),
    }
}

/// The state of the key in the search: no row, a value nobody checks, or
/// a value some read or compare-and-set looks at (`VALUES + index`).
type State = u32;
const ABSENT: State = 0;
const HIDDEN: State = 1;
const VALUES: State = 2;
/// A value no operation can hold (a compare-and-set on a version whose
/// value the history never saw).
const NOWHERE: State = u32::MAX;

/// What an operation needs of the state when it takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pre {
    Any,
    Absent,
    Present,
    Is(State),
    IsNot(State),
}

impl Pre {
    fn holds(self, s: State) -> bool {
        match self {
            Pre::Any => true,
            Pre::Absent => s == ABSENT,
            Pre::Present => s != ABSENT,
            Pre::Is(v) => s == v,
            Pre::IsNot(v) => s != v,
        }
    }
}

/// An operation as the search sees it.
#[derive(Debug, Clone)]
struct MOp {
    /// Index into the key's operations.
    op: usize,
    pre: Pre,
    /// The state it leaves (`None`: unchanged).
    post: Option<State>,
    /// The version its value was seen at, if it writes one and it was.
    version: Option<u64>,
    unknown: bool,
    zobrist: u128,
    invoke: u64,
    complete: u64,
}

/// A hasher for keys that are random already.
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u128(&mut self, i: u128) {
        self.0 ^= (i as u64) ^ ((i >> 64) as u64).rotate_left(29);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

type Memo = HashSet<(u128, State), BuildHasherDefault<MixHasher>>;

/// Checks one key's operations (all on `key`, in any order).
pub fn check_key(key: i64, ops: &[&Op], limits: Limits) -> KeyCheck {
    let mut ops: Vec<&Op> = ops.to_vec();
    ops.sort_by_key(|o| o.id);
    let mut problems = Vec::new();

    // Who wrote each value, and the values batches replaced within themselves.
    let mut writer: HashMap<&str, usize> = HashMap::new();
    let mut shadow: HashMap<&str, usize> = HashMap::new();
    for (i, o) in ops.iter().enumerate() {
        if let Some(v) = o.call.value() {
            if let Some(first) = writer.insert(v, i) {
                problems.push(Problem {
                    kind: ProblemKind::ValueWrittenTwice,
                    detail: format!("{} and {} both write {v}", ops[first], o),
                });
            }
        }
        for s in &o.shadowed {
            shadow.insert(s, i);
        }
    }

    // Versions seen per value, and values seen per version.
    let mut versions: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut at: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    let mut seen_by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, o) in ops.iter().enumerate() {
        let seen = match (&o.call, &o.outcome) {
            (
                Call::Read,
                Outcome::Ok {
                    value: Some(v),
                    version: Some(ver),
                },
            ) => Some((v.as_str(), *ver)),
            (
                c,
                Outcome::Ok {
                    version: Some(ver), ..
                },
            ) => c.value().map(|v| (v, *ver)),
            _ => None,
        };
        if let Some((v, ver)) = seen {
            versions.entry(v).or_default().insert(ver);
            at.entry(ver).or_default().insert(v);
            seen_by.entry(v).or_default().push(i);
        }
    }
    for (v, vs) in &versions {
        if vs.len() > 1 {
            let wrote = writer
                .get(v)
                .map_or_else(|| "no write".to_owned(), |&w| ops[w].to_string());
            let mut detail =
                format!("{v} seen at versions {vs:?}; written once by {wrote}; seen by:");
            for &i in seen_by[v].iter().take(6) {
                let _ = write!(detail, "\n    {}", ops[i]);
            }
            problems.push(Problem {
                kind: ProblemKind::AppliedTwice,
                detail,
            });
        }
    }
    for (ver, vals) in &at {
        if vals.len() > 1 {
            let mut detail = format!("version {ver} holds {vals:?}:");
            for v in vals {
                for &i in seen_by[v].iter().take(3) {
                    let _ = write!(detail, "\n    {}", ops[i]);
                }
            }
            problems.push(Problem {
                kind: ProblemKind::VersionReused,
                detail,
            });
        }
    }
    // Reads of values no write could have left.
    let mut reported: HashSet<&str> = HashSet::new();
    for o in &ops {
        let Outcome::Ok { value: Some(v), .. } = &o.outcome else {
            continue;
        };
        if !o.call.is_read() || !reported.insert(v) {
            continue;
        }
        match writer.get(v.as_str()) {
            Some(&w) if matches!(ops[w].outcome, Outcome::Failed { .. }) => {
                problems.push(Problem {
                    kind: ProblemKind::RefusedWriteVisible,
                    detail: format!("{o} read the value of {}", ops[w]),
                })
            }
            Some(_) => {}
            None => match shadow.get(v.as_str()) {
                Some(&w) => problems.push(Problem {
                    kind: ProblemKind::BatchIntermediateVisible,
                    detail: format!(
                        "{o} read {v}, which the batch {} replaced within itself",
                        ops[w]
                    ),
                }),
                None => problems.push(Problem {
                    kind: ProblemKind::UnwrittenValue,
                    detail: format!("{o} read {v}, which no write of key {key} wrote"),
                }),
            },
        }
    }

    // The search's model.
    let value_at = |ver: u64| at.get(&ver).and_then(|vals| vals.iter().next().copied());
    // Values some condition looks at get a state of their own.
    let mut ids: HashMap<&str, State> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    fn name_value<'a>(v: &'a str, ids: &mut HashMap<&'a str, State>, names: &mut Vec<String>) {
        let next = VALUES + ids.len() as State;
        ids.entry(v).or_insert_with(|| {
            names.push(v.to_owned());
            next
        });
    }
    for o in &ops {
        match (&o.call, &o.outcome) {
            (Call::Read, Outcome::Ok { value: Some(v), .. }) => name_value(v, &mut ids, &mut names),
            (
                Call::Update {
                    if_version: Some(ver),
                    ..
                },
                _,
            )
            | (
                Call::Delete {
                    if_version: Some(ver),
                },
                _,
            ) => {
                if let Some(v) = value_at(*ver) {
                    name_value(v, &mut ids, &mut names);
                }
            }
            _ => {}
        }
    }
    let state_of = |v: &str| ids.get(v).copied().unwrap_or(HIDDEN);
    let expected = |ver: u64| value_at(ver).map_or(NOWHERE, &state_of);
    let version_of = |v: &str| versions.get(v).and_then(|vs| vs.iter().next().copied());

    let mut mops: Vec<MOp> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        let (pre, negated) = match &o.call {
            Call::Read => (Pre::Any, None),
            Call::Put { .. } => (Pre::Any, None),
            Call::Insert { .. } => (Pre::Absent, Some(Pre::Present)),
            Call::Update {
                if_version: None, ..
            }
            | Call::Delete { if_version: None } => (Pre::Present, Some(Pre::Absent)),
            Call::Update {
                if_version: Some(ver),
                ..
            }
            | Call::Delete {
                if_version: Some(ver),
            } => (Pre::Is(expected(*ver)), Some(Pre::IsNot(expected(*ver)))),
        };
        let post = match &o.call {
            Call::Read => None,
            Call::Delete { .. } => Some(ABSENT),
            c => c.value().map(&state_of),
        };
        let version = o.call.value().and_then(version_of);
        let m = |pre, post, version, unknown, complete| MOp {
            op: i,
            pre,
            post,
            version,
            unknown,
            zobrist: 0,
            invoke: o.invoke_ns,
            complete,
        };
        match (&o.call, &o.outcome) {
            (Call::Read, Outcome::Ok { value, .. }) => {
                let pre = value
                    .as_deref()
                    .map_or(Pre::Absent, |v| Pre::Is(state_of(v)));
                mops.push(m(pre, None, None, false, o.complete_ns));
            }
            // Histories hold no failed reads; a loaded one might.
            (Call::Read, _) => {}
            (_, Outcome::Ok { .. }) => mops.push(m(pre, post, version, false, o.complete_ns)),
            (_, Outcome::Failed { conflict: true, .. }) => {
                if let Some(neg) = negated {
                    mops.push(m(neg, None, None, false, o.complete_ns));
                }
            }
            (_, Outcome::Failed { .. }) => {}
            (_, Outcome::Unknown { .. }) => mops.push(m(pre, post, version, true, u64::MAX)),
        }
    }

    // Alike unknown writes: one class, taken in invocation order.
    let mut classes: HashMap<(Pre, Option<State>, Option<u64>), usize> = HashMap::new();
    let mut unknown = Unknowns {
        members: Vec::new(),
        taken: Vec::new(),
        reusable: Vec::new(),
    };
    let mut order: Vec<usize> = (0..mops.len()).filter(|&i| mops[i].unknown).collect();
    order.sort_by_key(|&i| (mops[i].invoke, i));
    for i in order {
        let n = classes.len();
        let c = *classes
            .entry((mops[i].pre, mops[i].post, mops[i].version))
            .or_insert(n);
        if c == unknown.members.len() {
            unknown.members.push(Vec::new());
            unknown.taken.push(0);
            unknown.reusable.push(false);
        }
        unknown.members[c].push(i);
    }
    let mut rng = Rng::new(0x5EED_0000 ^ key as u64);
    for m in &mut mops {
        m.zobrist = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    }

    // First the relaxed search: unknown writes whose value nobody reads
    // (and unknown deletes) may take effect any number of times. It allows
    // more than the model, so when it finds no order there is none; it is
    // fast because placing such writes leaves no trace in the memo. When it
    // finds an order, the exact search decides.
    for (c, members) in unknown.members.iter().enumerate() {
        let m = &mops[members[0]];
        unknown.reusable[c] = m.version.is_none() && matches!(m.post, Some(ABSENT | HIDDEN));
    }
    let (mut verdict, mut steps, mut stuck) = search(&mops, &mut unknown, limits);
    let relaxed = verdict == Verdict::NotLinearizable;
    if !relaxed {
        unknown.reusable.iter_mut().for_each(|r| *r = false);
        unknown.taken.iter_mut().for_each(|t| *t = 0);
        let (v, s, st) = search(&mops, &mut unknown, limits);
        (verdict, stuck) = (v, st);
        steps += s;
    }
    if let Some(stuck) = stuck {
        let name = |s: State| match s {
            ABSENT => "no row".to_owned(),
            HIDDEN => "a value no read looks at".to_owned(),
            NOWHERE => "an unseen value".to_owned(),
            s => names[(s - VALUES) as usize].clone(),
        };
        let mut detail = format!(
            "the longest order found places {} of {} definite operations, leaving {}; then {} cannot take effect before it returns{}.",
            stuck.depth,
            mops.iter().filter(|m| !m.unknown).count(),
            name(stuck.state),
            ops[mops[stuck.blocked].op],
            if relaxed && mops.iter().any(|m| m.unknown) {
                " (even with unknown writes allowed to take effect more than once)"
            } else {
                ""
            }
        );
        let _ = write!(detail, "\n  last placed, oldest first:");
        for &m in &stuck.last {
            let _ = write!(detail, "\n    {}", ops[mops[m].op]);
        }
        let _ = write!(detail, "\n  not placed yet (invoked by then):");
        for &m in &stuck.pending {
            let _ = write!(detail, "\n    {}", ops[mops[m].op]);
        }
        problems.push(Problem {
            kind: ProblemKind::NotLinearizable,
            detail,
        });
    }
    KeyCheck {
        key,
        ops: ops.len(),
        verdict,
        steps,
        problems,
    }
}

/// Where the deepest failed attempt of the search got stuck.
struct Stuck {
    depth: usize,
    state: State,
    /// The operation that had to be placed and could not.
    blocked: usize,
    /// The last operations placed.
    last: Vec<usize>,
    /// Operations invoked but not placed at that point.
    pending: Vec<usize>,
}

/// Unknown writes, grouped in classes of alike ones.
struct Unknowns {
    /// Per class, its members (indices into the operations) by invocation.
    members: Vec<Vec<usize>>,
    /// Per class, how many members are placed (always the first ones).
    taken: Vec<u32>,
    /// Per class: its first member may take effect any number of times
    /// (the relaxed search, see [`check_key`]).
    reusable: Vec<bool>,
}

/// Longest chain of unknown writes placed just before one operation.
pub const MAX_CHAIN: usize = 4;

/// Where a chain of unknown writes leads: state, floor, hash.
type Reached = (State, u64, u128);

impl Unknowns {
    /// The next member of class `c` not placed, if invoked by `limit`.
    fn head(&self, mops: &[MOp], c: usize, limit: u64) -> Option<usize> {
        let at = if self.reusable[c] { 0 } else { self.taken[c] };
        let m = *self.members[c].get(at as usize)?;
        (mops[m].invoke <= limit).then_some(m)
    }

    /// Chains of classes (at most `depth` long) that could bring the key
    /// from `state` to one where `goal` holds, the last write making it
    /// hold. Sets `truncated` when the depth bound cut a chain short.
    fn plan(
        &self,
        mops: &[MOp],
        state: State,
        goal: Pre,
        depth: usize,
        limit: u64,
        truncated: &mut bool,
    ) -> Vec<Vec<usize>> {
        if goal.holds(state) {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for c in 0..self.members.len() {
            let Some(m) = self.head(mops, c, limit) else {
                continue;
            };
            let post = mops[m].post.unwrap_or(state);
            if !goal.holds(post) {
                continue;
            }
            if depth == 0 {
                *truncated = true;
                continue;
            }
            for mut chain in self.plan(mops, state, mops[m].pre, depth - 1, limit, truncated) {
                chain.push(c);
                out.push(chain);
            }
        }
        out
    }

    /// Places `chain` from `from`; undone by [`Unknowns::undo`]. `None`
    /// (and nothing placed) if it does not fit.
    fn apply(
        &mut self,
        mops: &[MOp],
        chain: &[usize],
        from: Reached,
        limit: u64,
    ) -> Option<Reached> {
        let (mut state, mut floor, mut hash) = from;
        for (i, &c) in chain.iter().enumerate() {
            let fits = self.head(mops, c, limit).filter(|&m| {
                let op = &mops[m];
                op.pre.holds(state) && op.version.is_none_or(|v| v > floor)
            });
            let Some(m) = fits else {
                self.undo(&chain[..i]);
                return None;
            };
            let op = &mops[m];
            state = op.post.unwrap_or(state);
            floor = op.version.map_or(floor, |v| floor.max(v));
            if !self.reusable[c] {
                hash ^= op.zobrist;
                self.taken[c] += 1;
            }
        }
        Some((state, floor, hash))
    }

    fn undo(&mut self, chain: &[usize]) {
        for &c in chain {
            if !self.reusable[c] {
                self.taken[c] -= 1;
            }
        }
    }
}

/// A choice of the search: a definite operation (its call event), the
/// chain of unknown writes placed just before it, the chains still to try
/// in its place, and what was before.
struct Frame {
    call: usize,
    chain: Vec<usize>,
    rest: Vec<Vec<usize>>,
    before: Reached,
}

/// The search over the definite operations `mops[..]` (unknown writes are
/// the members of `classes` and have no return).
fn search(mops: &[MOp], unknown: &mut Unknowns, limits: Limits) -> (Verdict, u64, Option<Stuck>) {
    // Calls and returns of definite operations in time order; a call
    // before a return at the same time (conservative: the two operations
    // count as concurrent).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * mops.len());
    for (i, m) in mops.iter().enumerate() {
        if !m.unknown {
            events.push((m.invoke, false, i));
            events.push((m.complete, true, i));
        }
    }
    events.sort_unstable();
    let n = events.len();
    if n == 0 {
        return (Verdict::Linearizable, 0, None);
    }
    // A circular doubly linked list with `head` as its sentinel.
    let head = n;
    let mut next: Vec<usize> = (1..=n).chain([0]).collect();
    let mut prev: Vec<usize> = [head].into_iter().chain(0..n).collect();
    next[n - 1] = head;
    prev[head] = n - 1;
    let mut ret_of = vec![0usize; mops.len()];
    for (e, &(_, is_ret, m)) in events.iter().enumerate() {
        if is_ret {
            ret_of[m] = e;
        }
    }
    let unlink = |x: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = nx;
        prev[nx] = p;
    };
    let relink = |x: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        prev[nx] = x;
    };

    let mut now: Reached = (ABSENT, 0, 0);
    let mut stack: Vec<Frame> = Vec::new();
    let mut memo: Memo = Memo::default();
    let mut stuck: Option<Stuck> = None;
    let mut truncated = false;
    let mut steps = 0u64;
    // Places `chain`, then the definite operation of call event `call`, if
    // they fit and lead somewhere new; returns where they lead (the chain
    // stays placed).
    let try_place = |call: usize,
                     chain: &[usize],
                     limit: u64,
                     now: Reached,
                     unknown: &mut Unknowns,
                     memo: &mut Memo|
     -> Option<Reached> {
        let m = &mops[events[call].2];
        let (state, floor, hash) = unknown.apply(mops, chain, now, limit)?;
        let reached = (
            m.post.unwrap_or(state),
            m.version.map_or(floor, |v| floor.max(v)),
            hash ^ m.zobrist,
        );
        if m.pre.holds(state)
            && m.version.is_none_or(|v| v > floor)
            && memo.insert((reached.2, reached.0))
        {
            Some(reached)
        } else {
            unknown.undo(chain);
            None
        }
    };
    // The latest time an operation called before `e` may take effect: the
    // first return in the list (only calls come before the cursor).
    let limit_after = |mut e: usize, next: &[usize]| {
        while !events[e].1 {
            e = next[e];
        }
        events[e].0
    };
    let mut cur = next[head];
    'search: loop {
        if cur == head {
            return (Verdict::Linearizable, steps, None);
        }
        steps += 1;
        if steps > limits.max_steps {
            return (Verdict::Undecided, steps, None);
        }
        let (_, is_ret, mi) = events[cur];
        if !is_ret {
            let limit = limit_after(cur, &next);
            let m = &mops[mi];
            // Unknown writes take effect just in time: only to make a
            // definite operation's condition hold.
            let mut chains = if m.pre.holds(now.0) {
                vec![Vec::new()]
            } else {
                let mut c = unknown.plan(mops, now.0, m.pre, MAX_CHAIN, limit, &mut truncated);
                c.reverse();
                c
            };
            while let Some(chain) = chains.pop() {
                if let Some(reached) = try_place(cur, &chain, limit, now, unknown, &mut memo) {
                    stack.push(Frame {
                        call: cur,
                        chain,
                        rest: std::mem::take(&mut chains),
                        before: now,
                    });
                    now = reached;
                    unlink(cur, &mut next, &mut prev);
                    unlink(ret_of[mi], &mut next, &mut prev);
                    cur = next[head];
                    continue 'search;
                }
            }
            cur = next[cur];
            continue;
        }
        // A return whose operation is not placed: undo the last choice.
        if stuck.as_ref().is_none_or(|s| stack.len() > s.depth) {
            let last = stack[stack.len().saturating_sub(8)..]
                .iter()
                .map(|f| events[f.call].2)
                .collect();
            let mut pending = Vec::new();
            let mut e = next[head];
            while e != cur && pending.len() < 12 {
                if !events[e].1 {
                    pending.push(events[e].2);
                }
                e = next[e];
            }
            stuck = Some(Stuck {
                depth: stack.len(),
                state: now.0,
                blocked: mi,
                last,
                pending,
            });
        }
        let Some(f) = stack.pop() else {
            // A chain cut short by its bound might have fitted.
            let verdict = if truncated {
                Verdict::Undecided
            } else {
                Verdict::NotLinearizable
            };
            return (verdict, steps, stuck);
        };
        let Frame {
            call,
            chain,
            mut rest,
            before,
        } = f;
        let m = events[call].2;
        relink(ret_of[m], &mut next, &mut prev);
        relink(call, &mut next, &mut prev);
        unknown.undo(&chain);
        now = before;
        // Another chain of unknown writes before the same operation.
        let limit = limit_after(call, &next);
        while let Some(chain) = rest.pop() {
            if let Some(reached) = try_place(call, &chain, limit, now, unknown, &mut memo) {
                stack.push(Frame {
                    call,
                    chain,
                    rest,
                    before: now,
                });
                now = reached;
                unlink(call, &mut next, &mut prev);
                unlink(ret_of[m], &mut next, &mut prev);
                cur = next[head];
                continue 'search;
            }
        }
        cur = next[call];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{assemble, deleted, ok, put, unknown, Sketch};

    fn verdict(h: &[Op]) -> Check {
        check(h, Limits::default())
    }

    #[test]
    fn an_empty_history_and_a_lone_read_of_nothing_pass() {
        assert!(verdict(&[]).ok());
        assert!(verdict(&Sketch::new().read(0, 0, 1, None).build()).ok());
    }

    #[test]
    fn sequential_register_passes_and_the_memo_stays_small() {
        let mut s = Sketch::new();
        for i in 0..2000u64 {
            let v = format!("0.{i}");
            s = s.op(0, 10 * i, 10 * i + 2, put(&v), ok(i + 1)).read(
                1,
                10 * i + 3,
                10 * i + 5,
                Some((&v, i + 1)),
            );
        }
        let c = verdict(&s.build());
        assert!(c.ok(), "{}", c.report());
        assert!(c.keys[0].steps < 100_000, "{} steps", c.keys[0].steps);
    }

    /// A history made by simulating clients on a correct register: each
    /// operation takes effect at a random point of its interval; some
    /// writes are reported unknown (and applied or not).
    fn simulated(seed: u64, clients: usize, ops: usize, unknown_pct: u64) -> Vec<Op> {
        use crate::history::{cas, conflict, delete};
        let mut rng = Rng::new(seed);
        // (effect time, client, invoke, complete, index)
        let mut planned = Vec::new();
        let mut t = vec![0u64; clients];
        for i in 0..ops {
            let c = i % clients;
            let invoke = t[c] + rng.below(3);
            let complete = invoke + 1 + rng.below(20);
            let effect = invoke + rng.below(complete - invoke);
            t[c] = complete + 1;
            planned.push((effect, c, invoke, complete, i));
        }
        planned.sort();
        let mut value: Option<(String, u64)> = None;
        // Versions some outcome reported: a client compares-and-sets only
        // on a version it saw.
        let mut revealed: HashSet<u64> = HashSet::new();
        let mut seq = 0u64;
        let mut out = Vec::new();
        for (_, c, invoke, complete, i) in planned {
            let dice = rng.below(100);
            let lost = rng.below(100) < unknown_pct;
            let applied = !lost || rng.chance(50);
            let v = format!("{c}.{i}");
            let current = value.clone();
            let can_cas = current
                .as_ref()
                .is_some_and(|(_, ver)| revealed.contains(ver));
            let (call, outcome) = match dice {
                50..=79 => {
                    if applied {
                        seq += 1;
                        value = Some((v.clone(), seq));
                    }
                    (put(&v), ok(seq))
                }
                80..=94 if can_cas => {
                    if applied {
                        seq += 1;
                        value = Some((v.clone(), seq));
                    }
                    let ver = current.as_ref().map_or(0, |c| c.1);
                    (cas(&v, ver), ok(seq))
                }
                95.. if current.is_some() => {
                    if applied {
                        seq += 1;
                        value = None;
                    }
                    (delete(None), deleted())
                }
                95.. => (delete(None), conflict()),
                _ => {
                    if let Some((_, ver)) = &current {
                        revealed.insert(*ver);
                    }
                    let outcome = Outcome::Ok {
                        value: current.as_ref().map(|v| v.0.clone()),
                        version: current.as_ref().map(|v| v.1),
                    };
                    (Call::Read, outcome)
                }
            };
            let outcome = if lost && !call.is_read() && outcome != conflict() {
                unknown()
            } else {
                outcome
            };
            if !call.is_read() && outcome == ok(seq) {
                revealed.insert(seq);
            }
            out.push(Op {
                id: 0,
                client: c,
                key: 1,
                call,
                invoke_ns: invoke,
                complete_ns: complete,
                outcome,
                batch: None,
                shadowed: Vec::new(),
            });
        }
        assemble(vec![out])
    }

    #[test]
    fn simulated_histories_of_a_correct_register_pass_quickly() {
        for (seed, unknown_pct) in [(0, 2), (1, 2), (2, 5), (3, 10), (4, 20)] {
            let h = simulated(seed, 5, 10_000, unknown_pct);
            let started = std::time::Instant::now();
            let c = verdict(&h);
            assert!(c.ok(), "seed {seed}: {}", c.report());
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "seed {seed}: {:?}, {} steps",
                started.elapsed(),
                c.keys[0].steps
            );
        }
    }

    #[test]
    fn a_simulated_history_with_one_stale_read_fails() {
        for (seed, unknown_pct) in [(9, 2), (10, 10)] {
            one_stale_read_fails(seed, unknown_pct);
        }
    }

    fn one_stale_read_fails(seed: u64, unknown_pct: u64) {
        let mut h = simulated(seed, 5, 10_000, unknown_pct);
        // Turn a late read of the current value into a read of an older one.
        let reads: Vec<usize> = h
            .iter()
            .enumerate()
            .filter(|(_, o)| {
                o.call.is_read() && matches!(&o.outcome, Outcome::Ok { value: Some(_), .. })
            })
            .map(|(i, _)| i)
            .collect();
        let (early, late) = (reads[10], reads[reads.len() - 10]);
        let old = h[early].outcome.clone();
        assert_ne!(old, h[late].outcome);
        h[late].outcome = old;
        let c = verdict(&h);
        assert!(!c.ok());
        assert_eq!(
            c.by_kind().get(&ProblemKind::NotLinearizable),
            Some(&1),
            "{}",
            c.report()
        );
    }

    #[test]
    fn the_step_bound_gives_undecided() {
        let h = simulated(3, 5, 2_000, 5);
        let c = check(&h, Limits { max_steps: 50 });
        assert_eq!(c.keys[0].verdict, Verdict::Undecided);
        assert!(!c.ok());
        assert_eq!(c.violating().count(), 0);
    }

    #[test]
    fn a_delete_then_reads_of_nothing_pass() {
        let h = Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(1, 2, 3, crate::history::delete(None), deleted())
            .read(0, 4, 5, None)
            .build();
        assert!(verdict(&h).ok());
    }
}
