//! History-checked nemesis rounds (`tstore_tests::nemesis`): faults
//! injected into a real 3-node cluster while clients record every
//! operation; each key's history must be linearizable, no write applied
//! twice, and the copies identical once the faults heal.
//!
//! - `the_checker_*`: the checker itself, on hand-made histories that must
//!   pass and that must fail.
//! - `nemesis_ci_rounds`: a short set of rounds ([`CI_ROUNDS`], about 15 s
//!   of faults each) that must pass. Add a line there to cover another
//!   fault in CI.
//! - `nemesis_long` (ignored): the long mode, configured by environment
//!   variables; `bench/nemesis.sh` runs it.
//! - `nemesis_recheck` (ignored): checks a kept `history.jsonl` again.
//!
//! Partitions need root and `iptables` (`.ci/run` installs it).

use std::path::PathBuf;
use std::time::Duration;

use tstore_tests::history::{
    cas, conflict, delete, deleted, insert, ok, put, read_jsonl, refused, unknown, update, Op,
    Sketch,
};
use tstore_tests::linearizability::{check, Check, Limits, ProblemKind, Verdict};
use tstore_tests::nemesis::{keep_dir, run, summary, FaultKind, Plan, RoundVerdict, RunConfig};

/// The CI rounds: the faults a round may use, and its seed. The seed fixes
/// the schedule (times, holds, targets); `bench/nemesis.sh --rounds 1
/// --seed S --duration 15 --faults F` replays a line.
const CI_ROUNDS: &[(&str, u64)] = &[
    ("kill", 101),
    ("pause", 102),
    ("partition-primary", 103),
    ("deaf", 104),
    ("mute", 105),
    ("loss", 106),
    ("split", 107),
    ("merge", 108),
];

/// Seconds of faults and load per CI round.
const CI_DURATION: u64 = 15;

fn checked(h: &[Op]) -> Check {
    check(h, Limits::default())
}

fn assert_passes(name: &str, h: &[Op]) {
    let c = checked(h);
    assert!(c.ok(), "{name} must pass:\n{}", c.report());
}

fn assert_fails(name: &str, h: &[Op], kind: ProblemKind) {
    let c = checked(h);
    assert!(!c.ok(), "{name} must fail");
    assert!(
        c.by_kind().contains_key(&kind),
        "{name} must fail with {kind}:\n{}",
        c.report()
    );
    eprintln!("{name}: caught\n{}", c.report());
}

#[test]
fn the_checker_passes_linearizable_histories() {
    // Writes and reads one after another.
    assert_passes(
        "sequential",
        &Sketch::new()
            .read(0, 0, 1, None)
            .op(0, 2, 3, put("a"), ok(4))
            .read(1, 4, 5, Some(("a", 4)))
            .op(1, 6, 7, cas("b", 4), ok(9))
            .read(0, 8, 9, Some(("b", 9)))
            .op(0, 10, 11, delete(None), deleted())
            .read(1, 12, 13, None)
            .build(),
    );
    // Two overlapping writes: reads may see them in either order, as long
    // as everyone agrees.
    assert_passes(
        "overlapping writes",
        &Sketch::new()
            .op(0, 0, 10, put("a"), ok(3))
            .op(1, 0, 10, put("b"), ok(2))
            .read(2, 1, 9, Some(("b", 2)))
            .read(2, 11, 12, Some(("a", 3)))
            .build(),
    );
    // A read overlapping a write sees the old or the new value.
    assert_passes(
        "read during a write",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(0, 2, 10, put("b"), ok(2))
            .read(1, 3, 4, Some(("a", 1)))
            .read(2, 5, 6, Some(("b", 2)))
            .build(),
    );
    // Conditions that failed for good reasons.
    assert_passes(
        "conflicts",
        &Sketch::new()
            .op(0, 0, 1, insert("a"), ok(1))
            .op(1, 2, 3, insert("b"), conflict())
            .op(0, 4, 5, put("c"), ok(2))
            .op(1, 6, 7, cas("d", 1), conflict())
            .op(0, 8, 9, delete(Some(2)), deleted())
            .op(1, 10, 11, delete(None), conflict())
            .op(1, 12, 13, update("e"), conflict())
            .read(0, 14, 15, None)
            .build(),
    );
    // A refused write is not applied and need not be.
    assert_passes(
        "refused write",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(0, 2, 3, put("b"), refused())
            .read(1, 4, 5, Some(("a", 1)))
            .build(),
    );
    // Unknown writes are fine either way: never seen...
    assert_passes(
        "unknown write never applied",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(1, 2, 3, put("u"), unknown())
            .read(0, 4, 5, Some(("a", 1)))
            .read(0, 50, 51, Some(("a", 1)))
            .build(),
    );
    // ... or seen, even long after the client gave up on them.
    assert_passes(
        "unknown write applied late",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(1, 2, 3, put("u"), unknown())
            .read(0, 4, 5, Some(("a", 1)))
            .read(0, 50, 51, Some(("u", 7)))
            .op(0, 52, 53, cas("v", 7), ok(8))
            .build(),
    );
    // An unknown delete explains a row gone; an unknown write a conflict.
    assert_passes(
        "unknown delete and unknown write",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(1, 2, 3, delete(None), unknown())
            .read(0, 4, 5, None)
            .op(0, 6, 7, put("b"), ok(3))
            .op(1, 8, 9, put("w"), unknown())
            .op(0, 10, 11, cas("c", 3), conflict())
            .build(),
    );
    // A batch's own intermediate value is never visible, its final one is.
    let mut h = Sketch::new()
        .op(0, 0, 5, put("b2"), ok(4))
        .read(1, 6, 7, Some(("b2", 4)))
        .build();
    h[0].batch = Some(1);
    h[0].shadowed = vec!["b1".into()];
    assert_passes("batch", &h);
    // Keys are checked apart.
    assert_passes(
        "two keys",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .key(2)
            .op(0, 0, 1, put("x"), ok(1))
            .read(1, 2, 3, Some(("x", 1)))
            .key(1)
            .read(1, 2, 3, Some(("a", 1)))
            .build(),
    );
}

#[test]
fn the_checker_catches_each_anomaly() {
    assert_fails(
        "a stale read after an acknowledged write",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(0, 2, 3, put("b"), ok(2))
            .read(1, 4, 5, Some(("a", 1)))
            .build(),
        ProblemKind::NotLinearizable,
    );
    assert_fails(
        "a lost write (a later read misses an acknowledged write)",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .read(1, 2, 3, Some(("a", 1)))
            .op(0, 4, 5, put("b"), ok(2))
            .read(1, 6, 7, Some(("a", 1)))
            .build(),
        ProblemKind::NotLinearizable,
    );
    assert_fails(
        "a row that vanishes",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .read(1, 2, 3, None)
            .build(),
        ProblemKind::NotLinearizable,
    );
    assert_fails(
        "a value that reappears (A, B, A; A written once)",
        &Sketch::new()
            .op(0, 0, 1, put("A"), ok(1))
            .read(1, 2, 3, Some(("A", 1)))
            .op(0, 4, 5, put("B"), ok(2))
            .read(1, 6, 7, Some(("B", 2)))
            .read(1, 8, 9, Some(("A", 1)))
            .build(),
        ProblemKind::NotLinearizable,
    );
    // The same with A written again by a retry: a new version.
    let h = Sketch::new()
        .op(0, 0, 1, put("A"), ok(1))
        .read(1, 2, 3, Some(("A", 1)))
        .op(0, 4, 5, put("B"), ok(2))
        .read(1, 6, 7, Some(("B", 2)))
        .read(1, 8, 9, Some(("A", 3)))
        .build();
    assert_fails(
        "a value that reappears at a new version",
        &h,
        ProblemKind::AppliedTwice,
    );
    assert_fails(
        "a value that reappears at a new version",
        &h,
        ProblemKind::NotLinearizable,
    );
    assert_fails(
        "a value at two versions",
        &Sketch::new()
            .op(0, 0, 1, put("A"), ok(1))
            .read(1, 2, 3, Some(("A", 1)))
            .read(1, 4, 5, Some(("A", 5)))
            .build(),
        ProblemKind::AppliedTwice,
    );
    assert_fails(
        "a value acknowledged at one version and read at another",
        &Sketch::new()
            .op(0, 0, 10, put("A"), ok(2))
            .read(1, 11, 12, Some(("A", 3)))
            .build(),
        ProblemKind::AppliedTwice,
    );
    assert_fails(
        "a compare-and-set that succeeded against a version that was not current",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .read(1, 2, 3, Some(("a", 1)))
            .op(0, 4, 5, put("b"), ok(2))
            .op(1, 6, 7, cas("c", 1), ok(3))
            .build(),
        ProblemKind::NotLinearizable,
    );
    assert_fails(
        "a compare-and-set refused while its version was current",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(1, 2, 3, cas("c", 1), conflict())
            .read(0, 4, 5, Some(("a", 1)))
            .build(),
        ProblemKind::NotLinearizable,
    );
    assert_fails(
        "an insert refused on an absent row",
        &Sketch::new()
            .op(0, 0, 1, insert("a"), conflict())
            .read(0, 2, 3, None)
            .build(),
        ProblemKind::NotLinearizable,
    );
    assert_fails(
        "acknowledgements whose versions run backwards",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(5))
            .op(0, 2, 3, put("b"), ok(4))
            .build(),
        ProblemKind::NotLinearizable,
    );
    assert_fails(
        "two values at one version",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(5))
            .op(1, 0, 1, put("b"), ok(5))
            .build(),
        ProblemKind::VersionReused,
    );
    assert_fails(
        "a refused write that is visible",
        &Sketch::new()
            .op(0, 0, 1, put("a"), refused())
            .read(1, 2, 3, Some(("a", 1)))
            .build(),
        ProblemKind::RefusedWriteVisible,
    );
    assert_fails(
        "a value nobody wrote",
        &Sketch::new().read(1, 2, 3, Some(("z", 1))).build(),
        ProblemKind::UnwrittenValue,
    );
    let mut h = Sketch::new()
        .op(0, 0, 5, put("b2"), ok(4))
        .read(1, 2, 3, Some(("b1", 4)))
        .build();
    h[0].batch = Some(1);
    h[0].shadowed = vec!["b1".into()];
    assert_fails(
        "a batch's intermediate value seen",
        &h,
        ProblemKind::BatchIntermediateVisible,
    );
    // An unknown write takes effect once at most: seen, replaced, seen again.
    assert_fails(
        "an unknown write applied twice",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(1, 2, 3, put("u"), unknown())
            .read(0, 4, 5, Some(("u", 2)))
            .op(0, 6, 7, put("b"), ok(3))
            .read(0, 8, 9, Some(("u", 2)))
            .build(),
        ProblemKind::NotLinearizable,
    );
    // A refused delete whose row was gone (the retried-delete shape).
    assert_fails(
        "a delete refused as missing while the row was there",
        &Sketch::new()
            .op(0, 0, 1, put("a"), ok(1))
            .op(1, 2, 3, delete(None), conflict())
            .read(0, 4, 5, None)
            .build(),
        ProblemKind::NotLinearizable,
    );
}

#[test]
fn the_checker_reports_undecided_rather_than_hang() {
    let mut s = Sketch::new();
    for i in 0..200u64 {
        s = s.op(
            (i % 5) as usize,
            i,
            i + 50,
            put(&format!("v{i}")),
            unknown(),
        );
    }
    for i in 0..200u64 {
        s = s.read(
            5,
            300 + 2 * i,
            301 + 2 * i,
            Some((&format!("v{}", 199 - i), 1000 + i)),
        );
    }
    let c = check(&s.build(), Limits { max_steps: 50 });
    assert_eq!(c.keys[0].verdict, Verdict::Undecided, "{}", c.report());
}

/// `TSTORE_NEMESIS_NODE_FLAGS`: extra `tstore start` flags for every
/// node, split at whitespace.
fn config(duration: Duration) -> RunConfig {
    let default = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nemesis");
    let mut config = RunConfig::new(duration, keep_dir(&default));
    if let Ok(flags) = std::env::var("TSTORE_NEMESIS_NODE_FLAGS") {
        config.node_flags = flags.split_whitespace().map(str::to_owned).collect();
    }
    config
}

/// The CI set: every round must pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_ci_rounds() {
    let plans: Vec<Plan> = CI_ROUNDS
        .iter()
        .map(|(faults, seed)| Plan {
            seed: *seed,
            faults: FaultKind::parse_list(faults).expect("a CI fault list"),
        })
        .collect();
    let reports = run(config(Duration::from_secs(CI_DURATION)), &plans).await;
    eprintln!("{}", summary(&reports));
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.verdict() != RoundVerdict::Pass)
        .map(|r| r.full())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} nemesis rounds failed:\n{}",
        failed.len(),
        reports.len(),
        failed.join("\n")
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} does not parse")),
        Err(_) => default,
    }
}

/// The long mode: `TSTORE_NEMESIS_ROUNDS` rounds (default 10) of
/// `TSTORE_NEMESIS_DURATION` seconds (default 30), round `i` seeded with
/// `TSTORE_NEMESIS_SEED + i` (default: from the clock, printed), using the
/// faults of `TSTORE_NEMESIS_FAULTS` (default `all`). Fails if any round
/// does not pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long mode: run by bench/nemesis.sh"]
async fn nemesis_long() {
    let rounds: usize = env_or("TSTORE_NEMESIS_ROUNDS", 10);
    let clock_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() % 1_000_000);
    let seed: u64 = env_or("TSTORE_NEMESIS_SEED", clock_seed);
    let duration: u64 = env_or("TSTORE_NEMESIS_DURATION", 30);
    let faults = FaultKind::parse_list(
        &std::env::var("TSTORE_NEMESIS_FAULTS").unwrap_or_else(|_| "all".into()),
    )
    .expect("TSTORE_NEMESIS_FAULTS");
    eprintln!(
        "nemesis: {rounds} rounds of {duration} s from seed {seed}, faults {}",
        FaultKind::list_name(&faults)
    );
    let plans: Vec<Plan> = (0..rounds)
        .map(|i| Plan {
            seed: seed.wrapping_add(i as u64),
            faults: faults.clone(),
        })
        .collect();
    let reports = run(config(Duration::from_secs(duration)), &plans).await;
    eprintln!("{}", summary(&reports));
    let failed = reports
        .iter()
        .filter(|r| r.verdict() != RoundVerdict::Pass)
        .count();
    assert_eq!(failed, 0, "{failed} of {rounds} rounds did not pass");
}

/// Checks a kept history again: `TSTORE_NEMESIS_HISTORY=path/history.jsonl`
/// (a relative path is taken from the workspace root).
#[test]
#[ignore = "run by hand on a kept history"]
fn nemesis_recheck() {
    let path =
        PathBuf::from(std::env::var("TSTORE_NEMESIS_HISTORY").expect("TSTORE_NEMESIS_HISTORY"));
    let path = if path.is_relative() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    } else {
        path
    };
    let h = read_jsonl(&path).expect("a history");
    let c = check(&h, Limits::default());
    eprintln!("{} operations\n{}", h.len(), c.report());
    assert!(c.ok());
}
