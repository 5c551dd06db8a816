//! Exactly-once writes: client sessions kept in a shard's replicated state.
//!
//! Every write carries a [`RequestId`]: the client's id, a sequence number
//! of its own, and the lowest sequence number it still waits for on that
//! shard. The shard
//! keeps, per client, the outcome of every request it applied at or above
//! that mark ([`ClientRecord`]). When a logged [`Command`] is applied, the
//! copy first asks [`admit`]: a request seen before gets its first outcome
//! back and writes nothing, so a write resent by a client, forwarded twice,
//! or logged twice by two primaries of one shard takes effect once. This is
//! the scheme of the Raft dissertation's client sessions and of RIFL
//! (Lee et al., SOSP 2015), with RIFL's "first incomplete" mark so that a
//! client with many requests in flight needs no registration round trip.
//!
//! The records are part of the shard's state: written in the same LMDB
//! transaction as the rows, copied with the rows in snapshots and compared
//! by checksums. Every decision here is a pure function of the log, so every
//! copy decides the same:
//! - time is the shard's clock, the highest `at_ms` of any applied entry
//!   (the wall clock of the primary that logged it), never the local clock;
//! - a client idle for [`CLIENT_TTL_MS`] of shard time is forgotten;
//! - a request of a client that is older than the TTL and has no record
//!   here could be a resend of a forgotten request: it is refused as
//!   expired, never applied ([`Admission::Expired`]). Clients therefore take
//!   a new id before theirs is half the TTL old ([`ClientId::is_fresh`]),
//!   and a resend is never more than a retry budget (seconds) late;
//! - a client keeps at most [`MAX_OUTCOMES`] outcomes per shard; past it
//!   the oldest are dropped and the mark is raised over them, so a late
//!   resend of one of them is refused, never applied twice.
//!
//! Pure: no I/O; the store reads and writes the records around it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ops::{Op, OpError, OpResult};

/// How long a shard remembers a client that sent nothing (shard time).
/// One fixed value for every node: copies must expire records alike.
pub const CLIENT_TTL_MS: u64 = 10 * 60 * 1000;

/// Most outcomes one client keeps per shard (its requests in flight there).
pub const MAX_OUTCOMES: usize = 4096;

/// How often (shard time) a copy sweeps out expired clients.
pub const SWEEP_EVERY_MS: u64 = CLIENT_TTL_MS / 10;

/// A client incarnation: when it started (its wall clock, unix ms) and a
/// random number. A client takes a new one before this one is half the TTL
/// old.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId {
    pub started_ms: u64,
    pub nonce: u64,
}

impl ClientId {
    /// A new id, started now.
    pub fn new(now_ms: u64, nonce: u64) -> Self {
        Self {
            started_ms: now_ms,
            nonce,
        }
    }

    /// Whether new requests may still use this id at `now_ms` (client's clock).
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.started_ms) < CLIENT_TTL_MS / 2
    }

    /// The record's key in storage (order: by start time, then nonce).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.started_ms.to_be_bytes());
        b[8..].copy_from_slice(&self.nonce.to_be_bytes());
        b
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{:x}", self.started_ms, self.nonce)
    }
}

/// The identity of one write request, the same on every resend of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client: ClientId,
    /// The client's sequence number for this request (1, 2, ...).
    pub seq: u64,
    /// Every request of this client to this shard below this number has
    /// completed (the client will never send them again): the shard may
    /// forget them.
    pub first_incomplete: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.client, self.seq)
    }
}

/// A write as logged: the operation, who asked for it, and when (the wall
/// clock of the primary that logged it, unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: RequestId,
    pub at_ms: u64,
    pub op: Op,
}

/// An applied operation's outcome, as remembered.
pub type Outcome = Result<OpResult, OpError>;

/// What a shard remembers of one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Shard time of the client's last applied request.
    pub last_ms: u64,
    /// Requests below this are complete; their outcomes are dropped.
    pub floor: u64,
    /// Outcomes of applied requests at or above `floor`, by sequence number.
    pub outcomes: BTreeMap<u64, Outcome>,
}

/// The shard's clock and when it last swept out expired clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClock {
    pub now_ms: u64,
    pub swept_ms: u64,
}

impl SessionClock {
    /// Advances to an entry logged at `at_ms` (never backwards: primaries'
    /// clocks differ); returns whether a sweep is due.
    pub fn advance(&mut self, at_ms: u64) -> bool {
        self.now_ms = self.now_ms.max(at_ms);
        if self.now_ms.saturating_sub(self.swept_ms) >= SWEEP_EVERY_MS {
            self.swept_ms = self.now_ms;
            return true;
        }
        false
    }

    /// Whether a record last active at `last_ms` is forgotten now.
    pub fn expired(&self, record: &ClientRecord) -> bool {
        record.last_ms.saturating_add(CLIENT_TTL_MS) < self.now_ms
    }
}

/// What to do with a logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Not seen before: apply it.
    Apply,
    /// Applied before: answer with its first outcome, write nothing.
    Duplicate(Outcome),
    /// Possibly applied before and forgotten: refuse, write nothing.
    Expired(String),
}

/// Decides a request against the client's record (`None`: none here) at
/// shard time `clock`.
pub fn admit(record: Option<&ClientRecord>, id: &RequestId, clock: &SessionClock) -> Admission {
    match record {
        Some(r) => {
            if let Some(outcome) = r.outcomes.get(&id.seq) {
                Admission::Duplicate(outcome.clone())
            } else if id.seq < r.floor {
                Admission::Expired(format!(
                    "request {id} was already answered (the client reported everything below {} complete); it is not applied again",
                    r.floor
                ))
            } else {
                Admission::Apply
            }
        }
        None if id.client.started_ms.saturating_add(CLIENT_TTL_MS) < clock.now_ms => {
            Admission::Expired(format!(
                "client session {} started more than {} s before this shard's clock and is not known here: its earlier requests may have been forgotten, so request {id} is not applied (start a new client)",
                id.client,
                CLIENT_TTL_MS / 1000
            ))
        }
        None => Admission::Apply,
    }
}

/// The client's record after applying `id` with `outcome` at `clock`.
pub fn record(
    record: Option<ClientRecord>,
    id: &RequestId,
    outcome: &Outcome,
    clock: &SessionClock,
) -> ClientRecord {
    let mut r = record.unwrap_or_default();
    r.last_ms = clock.now_ms;
    r.floor = r.floor.max(id.first_incomplete.min(id.seq));
    r.outcomes = r.outcomes.split_off(&r.floor);
    r.outcomes.insert(id.seq, outcome.clone());
    bound(&mut r);
    r
}

/// Keeps at most [`MAX_OUTCOMES`] outcomes: the lowest go, and the floor
/// is raised over them so a late resend of one is refused.
fn bound(r: &mut ClientRecord) {
    while r.outcomes.len() > MAX_OUTCOMES {
        let (&lowest, _) = r.outcomes.iter().next().expect("over the bound");
        r.outcomes.remove(&lowest);
        r.floor = r.floor.max(lowest + 1);
    }
}

/// One client's records of two shards merged into one (the store merges
/// a shard into another). A floor is the client's word that every request
/// below it is complete table-wide, so the higher one holds for both. The
/// outcomes of both are kept, at or above it, then bounded as [`record`]
/// bounds them. A request both remember (from before a split, which
/// copies the sessions) has one outcome: `a`'s is kept.
pub fn merge_records(a: ClientRecord, b: ClientRecord) -> ClientRecord {
    let floor = a.floor.max(b.floor);
    let mut outcomes = a.outcomes;
    for (seq, outcome) in b.outcomes {
        outcomes.entry(seq).or_insert(outcome);
    }
    let mut r = ClientRecord {
        last_ms: a.last_ms.max(b.last_ms),
        floor,
        outcomes: outcomes.split_off(&floor),
    };
    bound(&mut r);
    r
}

/// The outcome to answer a request with, and the writes it makes (pure:
/// `apply` evaluates the operation; it is called only for a new request).
/// Returns `(outcome, updated record or None when unchanged)`.
pub fn decide(
    existing: Option<ClientRecord>,
    id: &RequestId,
    clock: &SessionClock,
    apply: impl FnOnce() -> Outcome,
) -> (Outcome, Option<ClientRecord>) {
    match admit(existing.as_ref(), id, clock) {
        Admission::Duplicate(outcome) => (outcome, None),
        Admission::Expired(why) => (Err(OpError::Expired(why)), None),
        Admission::Apply => {
            let outcome = apply();
            let updated = record(existing, id, &outcome, clock);
            (outcome, Some(updated))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn id(seq: u64, first_incomplete: u64) -> RequestId {
        RequestId {
            client: ClientId::new(T0, 7),
            seq,
            first_incomplete,
        }
    }

    fn at(now_ms: u64) -> SessionClock {
        SessionClock {
            now_ms,
            swept_ms: now_ms,
        }
    }

    fn written(v: u64) -> Outcome {
        Ok(OpResult::Written { version: v })
    }

    #[test]
    fn a_request_seen_again_gets_its_first_outcome_and_writes_nothing() {
        let clock = at(T0 + 10);
        let (first, rec) = decide(None, &id(1, 1), &clock, || written(36));
        assert_eq!(first, written(36));
        let rec = rec.expect("recorded");
        let mut applied_again = false;
        let (again, unchanged) = decide(Some(rec.clone()), &id(1, 1), &clock, || {
            applied_again = true;
            written(40)
        });
        assert!(!applied_again, "a duplicate is not evaluated");
        assert_eq!(again, written(36), "the first outcome, not a new version");
        assert!(unchanged.is_none());
    }

    #[test]
    fn a_failed_condition_is_remembered_too() {
        let clock = at(T0 + 10);
        let conflict: Outcome = Err(OpError::NotFound { key: "6".into() });
        let (_, rec) = decide(None, &id(3, 3), &clock, || conflict.clone());
        let (again, _) = decide(rec, &id(3, 3), &clock, || written(99));
        assert_eq!(
            again, conflict,
            "a compare-and-set that failed fails again, even if it would succeed now"
        );
    }

    #[test]
    fn completed_requests_are_forgotten_and_refused_if_they_come_back() {
        let clock = at(T0 + 10);
        let (_, rec) = decide(None, &id(1, 1), &clock, || written(1));
        let (_, rec) = decide(rec, &id(2, 1), &clock, || written(2));
        let rec = rec.unwrap();
        assert_eq!(rec.outcomes.len(), 2);
        // The client says 1 and 2 are done.
        let (_, rec) = decide(Some(rec), &id(3, 3), &clock, || written(3));
        let rec = rec.unwrap();
        assert_eq!(rec.outcomes.keys().copied().collect::<Vec<_>>(), vec![3]);
        let (late, unchanged) = decide(Some(rec), &id(1, 1), &clock, || written(9));
        assert!(matches!(late, Err(OpError::Expired(_))), "{late:?}");
        assert!(unchanged.is_none());
    }

    #[test]
    fn concurrent_requests_of_one_client_are_each_remembered() {
        let clock = at(T0 + 10);
        let mut rec = None;
        // Sent 1..=5 at once; they arrive out of order.
        for seq in [3, 1, 5, 2, 4] {
            let (_, r) = decide(rec, &id(seq, 1), &clock, || written(seq * 10));
            rec = r;
        }
        for seq in 1..=5 {
            let (o, _) = decide(rec.clone(), &id(seq, 1), &clock, || written(0));
            assert_eq!(o, written(seq * 10));
        }
    }

    #[test]
    fn an_unknown_client_older_than_the_ttl_is_refused_not_applied() {
        let late = at(T0 + CLIENT_TTL_MS + 1);
        let (o, r) = decide(None, &id(8, 1), &late, || written(1));
        assert!(matches!(o, Err(OpError::Expired(_))));
        assert!(r.is_none());
        // A young client with no record is simply new.
        let (o, _) = decide(None, &id(1, 1), &at(T0 + 5), || written(1));
        assert_eq!(o, written(1));
    }

    #[test]
    fn the_clock_never_goes_back_and_sweeps_periodically() {
        let mut c = SessionClock::default();
        assert!(c.advance(T0), "the first entry starts a sweep period");
        assert!(!c.advance(T0 - 5_000), "an entry from a slower clock");
        assert_eq!(c.now_ms, T0);
        assert!(!c.advance(T0 + SWEEP_EVERY_MS - 1));
        assert!(c.advance(T0 + SWEEP_EVERY_MS));
        let idle = ClientRecord {
            last_ms: T0,
            ..Default::default()
        };
        assert!(!c.expired(&idle));
        c.advance(T0 + CLIENT_TTL_MS + 1);
        assert!(c.expired(&idle));
    }

    #[test]
    fn outcomes_are_bounded_and_the_dropped_ones_are_refused() {
        let clock = at(T0 + 10);
        let mut rec = None;
        for seq in 1..=(MAX_OUTCOMES as u64 + 2) {
            let (_, r) = decide(rec, &id(seq, 1), &clock, || written(seq));
            rec = r;
        }
        let rec = rec.unwrap();
        assert_eq!(rec.outcomes.len(), MAX_OUTCOMES);
        assert_eq!(rec.floor, 3);
        let (o, _) = decide(Some(rec), &id(1, 1), &clock, || written(0));
        assert!(matches!(o, Err(OpError::Expired(_))));
    }

    fn outcomes(r: &ClientRecord) -> Vec<u64> {
        r.outcomes.keys().copied().collect()
    }

    #[test]
    fn merged_records_keep_both_shards_outcomes_above_the_higher_floor() {
        let clock = at(T0 + 10);
        // Shard a saw requests 1..=4, shard b 3..=6 with everything below 4
        // declared complete.
        let mut a = None;
        for seq in 1..=4 {
            a = decide(a, &id(seq, 1), &clock, || written(seq)).1;
        }
        let mut b = None;
        for seq in 5..=6 {
            b = decide(b, &id(seq, 4), &at(T0 + 20), || written(seq * 10)).1;
        }
        let (a, b) = (a.unwrap(), b.unwrap());
        let m = merge_records(a.clone(), b.clone());
        assert_eq!(m.floor, 4);
        assert_eq!(m.last_ms, T0 + 20, "the later of the two");
        assert_eq!(outcomes(&m), vec![4, 5, 6], "below the floor is gone");
        assert_eq!(m.outcomes[&4], written(4));
        assert_eq!(m.outcomes[&6], written(60));
        assert_eq!(merge_records(b, a), m, "the order does not matter");
        // A request below the floor is refused, one above it answered.
        let (o, _) = decide(Some(m.clone()), &id(2, 1), &clock, || written(0));
        assert!(matches!(o, Err(OpError::Expired(_))), "{o:?}");
        let (o, _) = decide(Some(m), &id(5, 4), &clock, || written(0));
        assert_eq!(o, written(50));
    }

    #[test]
    fn a_request_both_records_remember_keeps_the_first_records_outcome() {
        let clock = at(T0 + 10);
        let a = decide(None, &id(1, 1), &clock, || written(7)).1.unwrap();
        let b = decide(None, &id(1, 1), &clock, || written(9)).1.unwrap();
        let m = merge_records(a, b);
        assert_eq!(outcomes(&m), vec![1]);
        assert_eq!(m.outcomes[&1], written(7));
        let empty = merge_records(ClientRecord::default(), ClientRecord::default());
        assert_eq!(empty, ClientRecord::default());
    }

    #[test]
    fn merged_outcomes_are_bounded_and_the_floor_raised_over_the_dropped() {
        let clock = at(T0 + 10);
        let half = MAX_OUTCOMES as u64 / 2;
        let mut a = None;
        for seq in 1..=half + 1 {
            a = decide(a, &id(seq, 1), &clock, || written(seq)).1;
        }
        let mut b = None;
        for seq in half + 2..=2 * half + 3 {
            b = decide(b, &id(seq, 1), &clock, || written(seq)).1;
        }
        let m = merge_records(a.unwrap(), b.unwrap());
        assert_eq!(m.outcomes.len(), MAX_OUTCOMES);
        assert_eq!(m.floor, 4, "requests 1..=3 dropped");
        assert_eq!(outcomes(&m).first(), Some(&4));
        let (o, _) = decide(Some(m), &id(3, 1), &clock, || written(0));
        assert!(matches!(o, Err(OpError::Expired(_))), "{o:?}");
    }

    #[test]
    fn a_fresh_id_is_renewed_before_half_the_ttl() {
        let c = ClientId::new(T0, 1);
        assert!(c.is_fresh(T0 + CLIENT_TTL_MS / 2 - 1));
        assert!(!c.is_fresh(T0 + CLIENT_TTL_MS / 2));
    }
}
