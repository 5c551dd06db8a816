//! How a node shows its shard copies in gossip: one compact, versioned text
//! value for all of them, not one key per copy.
//!
//! Every copy's state is a [`CopyGossip`] (role and epoch; failed; a
//! learner still copying or caught up; a primary's backups silent past the
//! lease). The node's publisher (`actors::shard::publish`) gathers them and
//! [`encode`]s them: the copies of a table in the same state are written
//! once, with the set of their shard indices (runs, or a hex bitmap when
//! that is shorter), so 10,000 copies in a handful of states take a few KB.
//! The value is cut into chunks of at most [`MAX_CHUNK_BYTES`], each under
//! its own key `copies:<n>` ([`chunk_key`]) and readable on its own, so no
//! value ever nears chitchat's limit of one gossip message (65,507 bytes:
//! a key-value larger than that would never be sent, and would hold back
//! every later key of the node). The health derivation of the coordinator
//! reads them back with [`node_copies`].
//!
//! Grammar, version 1 (gossip values are text):
//!
//! ```text
//! value  = "v1" *( " " table )
//! table  = name "=" group *( ";" group )        ; a table may appear in several chunks
//! group  = role epoch flags [ "/" node *( "+" node ) ] ":" set
//! role   = "p" | "b" | "l"                      ; primary, backup, learner
//! flags  = [ "f" ] [ "r" ] [ "c" ]              ; failed, ready, copying
//! set    = range *( "," range ) | "x" start "." hex
//! range  = index [ "-" index ]
//! ```
//!
//! In a bitmap, the high bit of the first hex digit is shard `start`, the
//! next bit `start + 1`, and so on. The `/` list names a primary's silent
//! backups. Table names and node ids are letters, digits, `_` and `-`, so
//! none of the separators occur in them. A reader that meets another
//! version (or a malformed value) ignores that chunk: the decode returns an
//! error and the caller skips it, as it skipped an unreadable per-copy value
//! before.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cluster_map::{NodeId, MAX_SHARDS};
pub use crate::shard::LocalRole;
use crate::shard::ShardKey;

/// The prefix of the gossip keys holding a node's copies.
pub const CHUNK_KEY_PREFIX: &str = "copies:";
/// The version tag every value starts with.
pub const VERSION_TAG: &str = "v1";
/// The most bytes of one chunk's value. Chitchat sends a node's keys in
/// messages of at most 65,507 bytes; a chunk this size leaves room for the
/// node's other keys and the message's own fields.
pub const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// What a copy says of itself in gossip.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CopyGossip {
    pub role: LocalRole,
    pub epoch: u64,
    /// A learner that holds everything the primary had committed.
    pub ready: bool,
    /// A primary's backups that did not answer within the lease.
    pub silent: Vec<NodeId>,
    /// A copy that serves nothing any more (corrupt data, a write it could
    /// not carry out): the coordinator treats it as down.
    pub failed: bool,
    /// A learner still copying its snapshot.
    pub copying: bool,
}

impl CopyGossip {
    /// A copy in `role` at `epoch` with nothing to report.
    pub fn new(role: LocalRole, epoch: u64) -> Self {
        Self {
            role,
            epoch,
            ready: false,
            silent: vec![],
            failed: false,
            copying: false,
        }
    }
}

/// Copies of one table in one state, as read back from gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyGroup {
    pub table: String,
    pub state: CopyGossip,
    /// Shard indices, increasing.
    pub shards: Vec<u32>,
}

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("copies value of version {found:?}, this node reads {VERSION_TAG}")]
    Version { found: String },
    #[error("malformed copies value: {0}")]
    Malformed(String),
}

/// The gossip key of chunk `n`.
pub fn chunk_key(n: usize) -> String {
    format!("{CHUNK_KEY_PREFIX}{n}")
}

/// The chunk number of a key holding copies, or `None` for any other key.
pub fn parse_chunk_key(key: &str) -> Option<usize> {
    key.strip_prefix(CHUNK_KEY_PREFIX)?.parse().ok()
}

fn role_letter(r: LocalRole) -> char {
    match r {
        LocalRole::Primary => 'p',
        LocalRole::Backup => 'b',
        LocalRole::Learner => 'l',
    }
}

/// The header of a group: role, epoch, flags, silent backups.
fn header(s: &CopyGossip) -> String {
    let mut h = String::new();
    h.push(role_letter(s.role));
    let _ = write!(h, "{}", s.epoch);
    for (on, c) in [(s.failed, 'f'), (s.ready, 'r'), (s.copying, 'c')] {
        if on {
            h.push(c);
        }
    }
    if !s.silent.is_empty() {
        h.push('/');
        h.push_str(&s.silent.join("+"));
    }
    h
}

/// The shorter of the two encodings of increasing, distinct indices.
fn encode_set(shards: &[u32]) -> String {
    let mut runs = String::new();
    let mut i = 0;
    while i < shards.len() {
        let start = shards[i];
        let mut end = start;
        while i + 1 < shards.len() && shards[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        if !runs.is_empty() {
            runs.push(',');
        }
        if end == start {
            let _ = write!(runs, "{start}");
        } else {
            let _ = write!(runs, "{start}-{end}");
        }
        i += 1;
    }
    let (Some(&first), Some(&last)) = (shards.first(), shards.last()) else {
        return runs;
    };
    let digits = (last - first) as usize / 4 + 1;
    if 2 + digits >= runs.len() {
        return runs;
    }
    let mut nibbles = vec![0u8; digits];
    for &s in shards {
        let bit = (s - first) as usize;
        nibbles[bit / 4] |= 8 >> (bit % 4);
    }
    let mut bitmap = format!("x{first}.");
    for n in nibbles {
        bitmap.push(char::from_digit(u32::from(n), 16).expect("a nibble is a hex digit"));
    }
    if bitmap.len() < runs.len() {
        bitmap
    } else {
        runs
    }
}

/// Encodes a node's copies (each shard once) as the values of its chunks, in order (chunk 0
/// first); no copies give no chunk. Deterministic: the same copies give
/// the same values, so a publisher can tell what changed.
pub fn encode<'a>(copies: impl IntoIterator<Item = (&'a ShardKey, &'a CopyGossip)>) -> Vec<String> {
    // Table, then state, then the shards in it.
    let mut groups: BTreeMap<&str, BTreeMap<&CopyGossip, Vec<u32>>> = BTreeMap::new();
    for (k, s) in copies {
        groups
            .entry(k.table.as_str())
            .or_default()
            .entry(s)
            .or_default()
            .push(k.index);
    }
    for shards in groups.values_mut().flat_map(|s| s.values_mut()) {
        shards.sort_unstable();
        shards.dedup();
    }
    let mut chunks = Vec::new();
    let mut cur = String::from(VERSION_TAG);
    let mut cur_table: Option<&str> = None;
    for (table, states) in groups {
        for (state, shards) in states {
            let group = format!("{}:{}", header(state), encode_set(&shards));
            let open_table = cur_table != Some(table);
            let extra = group.len() + if open_table { table.len() + 2 } else { 1 };
            if cur.len() > VERSION_TAG.len() && cur.len() + extra > MAX_CHUNK_BYTES {
                chunks.push(std::mem::replace(&mut cur, String::from(VERSION_TAG)));
                cur_table = None;
            }
            if cur_table != Some(table) {
                cur.push(' ');
                cur.push_str(table);
                cur.push('=');
                cur_table = Some(table);
            } else {
                cur.push(';');
            }
            cur.push_str(&group);
        }
    }
    if cur.len() > VERSION_TAG.len() {
        chunks.push(cur);
    }
    chunks
}

fn malformed(what: &str, near: &str) -> DecodeError {
    let near: String = near.chars().take(40).collect();
    DecodeError::Malformed(format!("{what} near {near:?}"))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_index(s: &str) -> Result<u32, DecodeError> {
    match s.parse::<u32>() {
        Ok(i) if i < MAX_SHARDS => Ok(i),
        _ => Err(malformed("a shard index below the shard limit expected", s)),
    }
}

fn decode_set(s: &str) -> Result<Vec<u32>, DecodeError> {
    let mut out = Vec::new();
    if let Some(bitmap) = s.strip_prefix('x') {
        let (start, hex) = bitmap
            .split_once('.')
            .ok_or_else(|| malformed("a bitmap needs start.hex", s))?;
        let start = parse_index(start)?;
        for (d, c) in hex.chars().enumerate() {
            let n = c
                .to_digit(16)
                .ok_or_else(|| malformed("a hex digit expected", hex))?;
            for b in 0..4 {
                if n & (8 >> b) != 0 {
                    // Bounded: an index past the limit is refused.
                    let i = u64::from(start) + (d as u64) * 4 + b;
                    out.push(parse_index(&i.to_string())?);
                }
            }
        }
    } else {
        for range in s.split(',') {
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (parse_index(a)?, parse_index(b)?),
                None => {
                    let a = parse_index(range)?;
                    (a, a)
                }
            };
            if b < a || out.last().is_some_and(|&l| l >= a) {
                return Err(malformed("shard ranges must increase", range));
            }
            out.extend(a..=b);
        }
    }
    if out.is_empty() {
        return Err(malformed("an empty set of shards", s));
    }
    Ok(out)
}

fn decode_header(h: &str) -> Result<CopyGossip, DecodeError> {
    let (h, silent) = match h.split_once('/') {
        Some((h, list)) => (h, list.split('+').map(str::to_owned).collect::<Vec<_>>()),
        None => (h, vec![]),
    };
    if silent.iter().any(|n| !valid_name(n)) {
        return Err(malformed("a node id expected", h));
    }
    let mut chars = h.chars();
    let role = match chars.next() {
        Some('p') => LocalRole::Primary,
        Some('b') => LocalRole::Backup,
        Some('l') => LocalRole::Learner,
        _ => return Err(malformed("a role (p, b or l) expected", h)),
    };
    let rest = chars.as_str();
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let epoch = rest[..digits]
        .parse()
        .map_err(|_| malformed("an epoch expected", h))?;
    let mut state = CopyGossip::new(role, epoch);
    state.silent = silent;
    let flags = &rest[digits..];
    // Each flag at most once, in the order written.
    let mut order = "frc".chars();
    for f in flags.chars() {
        if !order.any(|o| o == f) {
            return Err(malformed("flags are f, r, c, in that order", h));
        }
        match f {
            'f' => state.failed = true,
            'r' => state.ready = true,
            _ => state.copying = true,
        }
    }
    Ok(state)
}

/// Reads one chunk's value back.
pub fn decode(value: &str) -> Result<Vec<CopyGroup>, DecodeError> {
    let mut parts = value.split(' ');
    let version = parts.next().unwrap_or_default();
    if version != VERSION_TAG {
        return Err(DecodeError::Version {
            found: version.chars().take(16).collect(),
        });
    }
    let mut out = Vec::new();
    for table in parts {
        let (name, groups) = table
            .split_once('=')
            .ok_or_else(|| malformed("table=groups expected", table))?;
        if !valid_name(name) {
            return Err(malformed("a table name expected", name));
        }
        for group in groups.split(';') {
            let (h, set) = group
                .split_once(':')
                .ok_or_else(|| malformed("header:shards expected", group))?;
            out.push(CopyGroup {
                table: name.to_owned(),
                state: decode_header(h)?,
                shards: decode_set(set)?,
            });
        }
    }
    Ok(out)
}

/// A node's copies as its gossip keys show them: every chunk that reads,
/// in chunk order; unreadable chunks (another version, damage) are left
/// out. `keys` are the node's live (not deleted) keys and values.
pub fn node_copies<'a>(keys: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<CopyGroup> {
    let mut chunks: Vec<(usize, &str)> = keys
        .into_iter()
        .filter_map(|(k, v)| Some((parse_chunk_key(k)?, v)))
        .collect();
    chunks.sort();
    chunks
        .into_iter()
        .filter_map(|(_, v)| decode(v).ok())
        .flatten()
        .collect()
}

/// What a publisher must do to go from the chunks it published to `next`:
/// the chunks to set (number and value: new or changed), and the chunk
/// numbers to withdraw (the value got shorter).
pub fn changes(published: &[String], next: &[String]) -> (Vec<(usize, String)>, Vec<usize>) {
    let set = next
        .iter()
        .enumerate()
        .filter(|(i, v)| published.get(*i) != Some(*v))
        .map(|(i, v)| (i, v.clone()))
        .collect();
    let withdraw = (next.len()..published.len()).collect();
    (set, withdraw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, i: u32) -> ShardKey {
        ShardKey::new(t, i)
    }

    fn expand(groups: &[CopyGroup]) -> BTreeMap<ShardKey, CopyGossip> {
        let mut out = BTreeMap::new();
        for g in groups {
            for &s in &g.shards {
                assert!(
                    out.insert(key(&g.table, s), g.state.clone()).is_none(),
                    "{}/{s} appears twice",
                    g.table
                );
            }
        }
        out
    }

    fn round_trip(copies: &BTreeMap<ShardKey, CopyGossip>) -> Vec<String> {
        let chunks = encode(copies);
        for c in &chunks {
            assert!(c.len() <= MAX_CHUNK_BYTES, "chunk of {} bytes", c.len());
        }
        let keys: Vec<(String, String)> = chunks
            .iter()
            .enumerate()
            .map(|(i, v)| (chunk_key(i), v.clone()))
            .collect();
        let back = node_copies(keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(&expand(&back), copies);
        chunks
    }

    #[test]
    fn every_state_reads_back() {
        let mut copies = BTreeMap::new();
        copies.insert(key("user", 0), CopyGossip::new(LocalRole::Primary, 3));
        let mut silent = CopyGossip::new(LocalRole::Primary, 3);
        silent.silent = vec!["n2".into(), "n-3_b".into()];
        copies.insert(key("user", 1), silent);
        let mut failed = CopyGossip::new(LocalRole::Backup, 7);
        failed.failed = true;
        copies.insert(key("user", 2), failed);
        let mut ready = CopyGossip::new(LocalRole::Learner, 2);
        ready.ready = true;
        copies.insert(key("events", 5), ready);
        let mut copying = CopyGossip::new(LocalRole::Learner, 2);
        copying.copying = true;
        copies.insert(key("events", 6), copying);
        copies.insert(key("events", 1023), CopyGossip::new(LocalRole::Backup, 1));
        let chunks = round_trip(&copies);
        assert_eq!(
            chunks,
            vec!["v1 events=b1:1023;l2c:6;l2r:5 user=p3:0;p3/n2+n-3_b:1;b7f:2".to_owned()]
        );
    }

    #[test]
    fn a_thousand_shard_table_takes_a_few_hundred_bytes() {
        // Node n1 of three: primary of every third shard, backup of the rest.
        let mut copies = BTreeMap::new();
        for i in 0..1000 {
            let role = if i % 3 == 0 {
                LocalRole::Primary
            } else {
                LocalRole::Backup
            };
            copies.insert(key("t1", i), CopyGossip::new(role, 1));
        }
        let chunks = round_trip(&copies);
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].len() < 600, "{} bytes", chunks[0].len());

        // Ten such tables, with a failover's epochs on some shards.
        let mut copies = BTreeMap::new();
        for t in 0..10 {
            for i in 0..1000u32 {
                let role = if i % 3 == 0 {
                    LocalRole::Primary
                } else {
                    LocalRole::Backup
                };
                copies.insert(
                    key(&format!("table{t}"), i),
                    CopyGossip::new(role, 1 + u64::from(i % 7 == 0)),
                );
            }
        }
        let chunks = round_trip(&copies);
        let total: usize = chunks.iter().map(String::len).sum();
        assert!(total < 12_000, "10,000 copies took {total} bytes");
    }

    #[test]
    fn the_worst_case_is_cut_into_chunks_that_each_read_alone() {
        // Every copy in its own state: nothing to share.
        let mut copies = BTreeMap::new();
        for t in 0..10 {
            for i in 0..1000u32 {
                copies.insert(
                    key(&format!("a-rather-long-table-name-{t}"), i),
                    CopyGossip::new(LocalRole::Backup, u64::from(i) * 1_000_003),
                );
            }
        }
        let chunks = round_trip(&copies);
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        for c in &chunks {
            assert!(!decode(c).unwrap().is_empty());
        }
    }

    #[test]
    fn sets_use_runs_or_a_bitmap_whichever_is_shorter() {
        assert_eq!(encode_set(&[0, 1, 2, 3, 4, 9]), "0-4,9");
        assert_eq!(encode_set(&[5]), "5");
        let every_other: Vec<u32> = (0..64).map(|i| i * 2).collect();
        assert_eq!(encode_set(&every_other), format!("x0.{}", "a".repeat(32)));
        assert_eq!(decode_set("x4.81").unwrap(), vec![4, 11]);
        assert_eq!(decode_set("0-2,5").unwrap(), vec![0, 1, 2, 5]);
    }

    #[test]
    fn malformed_values_are_refused_and_skipped() {
        for bad in [
            "",
            "v2 t=p1:0",
            "v1 t",
            "v1 t=p1",
            "v1 t=q1:0",
            "v1 t=p:0",
            "v1 t=px1:0",
            "v1 t=p1rf:0",
            "v1 t=p1ff:0",
            "v1 t=p1:",
            "v1 t=p1:3-1",
            "v1 t=p1:2,1",
            "v1 t=p1:0-4294967295",
            "v1 t=p1:1024",
            "v1 t=p1:x1020.ff",
            "v1 t=p1:x0.g",
            "v1 t=p1:x0.",
            "v1 t=p1/:0",
            "v1 t=p1/n1+:0",
            "v1 t/x=p1:0",
            "v1 t=p99999999999999999999:0",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} was read");
        }
        assert!(matches!(
            decode("v2 t=p1:0"),
            Err(DecodeError::Version { .. })
        ));
        // A bad chunk is skipped, the others still read.
        let good = encode(&BTreeMap::from([(
            key("t", 4),
            CopyGossip::new(LocalRole::Backup, 2),
        )]));
        let groups = node_copies([
            ("copies:0", good[0].as_str()),
            ("copies:1", "v1 t=p1:1024"),
            ("shard:t/0", "primary e1"),
            ("addr", "127.0.0.1:1"),
        ]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].shards, vec![4]);
    }

    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = CopyGossip> {
        (
            0..3u8,
            0..5u64,
            any::<bool>(),
            proptest::collection::vec("[a-z0-9_-]{1,6}", 0..3),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(role, epoch, ready, silent, failed, copying)| CopyGossip {
                role: [LocalRole::Primary, LocalRole::Backup, LocalRole::Learner][role as usize],
                epoch,
                ready,
                silent,
                failed,
                copying,
            })
    }

    proptest! {
        #[test]
        fn any_copies_read_back(
            copies in proptest::collection::btree_map(
                ("[a-z]{1,3}", 0..MAX_SHARDS).prop_map(|(t, i)| ShardKey::new(&t, i)),
                state(),
                0..300,
            )
        ) {
            round_trip(&copies);
        }

        #[test]
        fn any_text_decodes_or_is_refused_and_what_decodes_reads_back(
            text in "(v1 )?[a-z0-9=:;,./+x -]{0,60}"
        ) {
            if let Ok(groups) = decode(&text) {
                let mut copies = BTreeMap::new();
                for g in &groups {
                    prop_assert!(!g.shards.is_empty());
                    for &s in &g.shards {
                        prop_assert!(s < MAX_SHARDS);
                        copies.insert(key(&g.table, s), g.state.clone());
                    }
                }
                round_trip(&copies);
            }
        }
    }

    #[test]
    fn a_publisher_sets_what_changed_and_withdraws_what_is_gone() {
        let a = vec!["v1 a".to_owned(), "v1 b".to_owned(), "v1 c".to_owned()];
        let b = vec!["v1 a".to_owned(), "v1 B".to_owned()];
        assert_eq!(changes(&a, &b), (vec![(1, "v1 B".to_owned())], vec![2]));
        assert_eq!(changes(&b, &b), (vec![], vec![]));
        assert_eq!(
            changes(&[], &a),
            (
                vec![
                    (0, "v1 a".to_owned()),
                    (1, "v1 b".to_owned()),
                    (2, "v1 c".to_owned())
                ],
                vec![]
            )
        );
        assert!(encode(&BTreeMap::new()).is_empty());
    }
}
