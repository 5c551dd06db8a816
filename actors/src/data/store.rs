//! Shard storage in the node's LMDB environment.
//!
//! Three databases hold every shard of the node, keyed by a 12-byte shard
//! prefix (table id, shard index, big-endian) so one shard is one contiguous
//! key range:
//! - `shard-rows`: prefix + order-preserving key → row (postcard [`RowRecord`]);
//! - `shard-log`: prefix + seq (big-endian) → replicated [`LogEntry`];
//! - `shard-meta`: prefix → [`ShardMeta`] (epoch, logged, applied, the
//!   shard's session clock, the first retained log entry and the log's size);
//! - `shard-sessions`: prefix + client id → [`ClientRecord`], what the shard
//!   remembers of each client so a request is applied once
//!   ([`super::sessions`]); written with the rows, copied with them.
//!
//! Group commit: `append` takes many entries and `apply` many committed
//! entries, each in one write transaction, and [`ShardStore::commit_batch`]
//! does the appends and applies of many shards in one transaction (the
//! node's [`super::committer::Committer`] feeds it), so durable throughput is
//! not one fsync per write, nor one per shard. A transaction that fails (disk full) leaves the store as
//! it was, and the error is returned to the caller: the write fails, the store
//! does not.
//!
//! Checksums: every stored log entry, row and client session is its
//! CRC32C (4 bytes, little-endian, of the rest) followed by its postcard
//! encoding ([`seal`]). Every read checks it ([`unseal`]): reads, scans,
//! applying (replay) the log, sending it, snapshots served and installed,
//! and [`ShardStore::verify`]. A mismatch is [`StoreError::Corrupt`],
//! naming the shard and the key or sequence number, and the bad value is
//! never returned; the copy then rebuilds itself from another copy (see
//! `shard::actor`). Snapshots carry the stored values as they are, checksum
//! included, so an install checks what it received. `log_bytes` and the
//! row bytes count stored values, checksums included. Shard metadata is
//! not sealed (postcard still catches most damage to it).
//!
//! Log retention: a [`Work`] may carry a [`Truncate`] (what the replication
//! state machine allows, `Effect::Truncate`), carried out in the same
//! transaction: the oldest entries are deleted below its `below`, and
//! further while the log is larger than its byte bound, never at or after
//! its `limit`. `ShardMeta::log_start` is the first entry kept.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use heed::types::Bytes;
use heed::{Database, Env};
use serde::{Deserialize, Serialize};

use tstore_core::cluster_map::{KeyRange, RowKey};
use tstore_core::data::ops::{evaluate, Op, OpError, OpResult, RowRecord};
use tstore_core::data::sessions::{decide, merge_records, ClientRecord, Command, SessionClock};
use tstore_core::replication::{Epoch, LogEntry, Seq};

type Db = Database<'static, Bytes, Bytes>;

/// Where a shard copy's data lives in the node's LMDB: the table's id in
/// the map (not its name, which a dropped table frees for reuse) and the
/// shard's index. Every stored key of the copy starts with these 12 bytes
/// (`ShardPrefix::prefix`). A shard's name is `tstore_core::shard::ShardKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardPrefix {
    pub table: u64,
    pub shard: u32,
}

impl std::fmt::Display for ShardPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}/{}", self.table, self.shard)
    }
}

impl ShardPrefix {
    fn prefix(&self) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[..8].copy_from_slice(&self.table.to_be_bytes());
        p[8..].copy_from_slice(&self.shard.to_be_bytes());
        p
    }

    /// The first key after every key of this shard.
    fn next_prefix(&self) -> Vec<u8> {
        let mut p = self.prefix().to_vec();
        for b in p.iter_mut().rev() {
            if *b == 0xff {
                *b = 0;
            } else {
                *b += 1;
                return p;
            }
        }
        vec![0xff; 13] // the very last shard: past every 12-byte prefix
    }

    fn key(&self, rest: &[u8]) -> Vec<u8> {
        let mut k = self.prefix().to_vec();
        k.extend_from_slice(rest);
        k
    }
}

/// Replication state of a shard copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub epoch: Epoch,
    /// The log is durable and contiguous up to here.
    pub logged: Seq,
    /// Rows reflect every entry up to here.
    pub applied: Seq,
    /// The shard's clock as of `applied` (client sessions expire by it).
    pub clock: SessionClock,
    /// The first entry the log still holds (`logged + 1` when it holds
    /// none): entries below were truncated, or came in a snapshot.
    #[serde(default = "first_seq")]
    pub log_start: Seq,
    /// Bytes of the log entries held (their stored encoding).
    #[serde(default)]
    pub log_bytes: u64,
    /// Rows held, and the bytes of their keys and stored values, kept up to
    /// date by every apply, split and install (elastic tables read them to
    /// split a shard by size; `verify` counts the same by a scan).
    pub rows: u64,
    pub row_bytes: u64,
}

/// `ShardMeta` as stored before row accounting (no `rows`, `row_bytes`):
/// read with the rows uncounted (0).
#[derive(Deserialize)]
struct ShardMetaV1 {
    epoch: Epoch,
    logged: Seq,
    applied: Seq,
    clock: SessionClock,
    log_start: Seq,
    log_bytes: u64,
}

fn first_seq() -> Seq {
    1
}

impl Default for ShardMeta {
    fn default() -> Self {
        Self {
            epoch: 0,
            logged: 0,
            applied: 0,
            clock: SessionClock::default(),
            log_start: 1,
            log_bytes: 0,
            rows: 0,
            row_bytes: 0,
        }
    }
}

/// `ShardMeta` as stored before log truncation (no `log_start`,
/// `log_bytes`): read as a log starting at 1 of unknown size.
#[derive(Deserialize)]
struct ShardMetaV0 {
    epoch: Epoch,
    logged: Seq,
    applied: Seq,
    clock: SessionClock,
}

/// A copy's metadata, in this format or an older one; the error is this
/// format's.
fn decode_meta(bytes: &[u8]) -> Result<ShardMeta, StoreError> {
    let newest = decode::<ShardMeta>("shard meta", bytes);
    if newest.is_ok() {
        return newest;
    }
    if let Ok(old) = decode::<ShardMetaV1>("shard meta", bytes) {
        return Ok(ShardMeta {
            epoch: old.epoch,
            logged: old.logged,
            applied: old.applied,
            clock: old.clock,
            log_start: old.log_start,
            log_bytes: old.log_bytes,
            ..ShardMeta::default()
        });
    }
    if let Ok(old) = decode::<ShardMetaV0>("shard meta", bytes) {
        return Ok(ShardMeta {
            epoch: old.epoch,
            logged: old.logged,
            applied: old.applied,
            clock: old.clock,
            ..ShardMeta::default()
        });
    }
    newest
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Lmdb(#[from] heed::Error),
    #[error("corrupt record in {what}: {cause}")]
    Corrupt { what: &'static str, cause: String },
    #[error("log gap: shard has entries up to {logged}, got entry {got}")]
    Gap { logged: Seq, got: Seq },
    #[error("group commit failed: {0}")]
    Batch(String),
    /// The store cannot write at all (no space, I/O errors): nothing of
    /// the write was stored, and the node's [`StorageHealth`] says so.
    ///
    /// [`StorageHealth`]: crate::storage::StorageHealth
    #[error("the node's storage cannot write: {0}")]
    Unwritable(String),
}

impl StoreError {
    /// Whether this is the store failing to write (rather than something
    /// wrong with one shard's data).
    pub fn is_unwritable(&self) -> bool {
        matches!(self, StoreError::Unwritable(_))
    }

    /// Stored data that fails its checksum or cannot be decoded: the copy
    /// holding it must not serve it and must be rebuilt.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }
}

/// errno values that mean the disk cannot take writes.
const ENOSPC: i32 = 28;
const EIO: i32 = 5;
const EROFS: i32 = 30;
const EDQUOT: i32 = 122;

/// Bytes a probe writes (and deletes) to see that the store can write again:
/// enough headroom that the first writes after recovery do not fail at once.
pub const PROBE_BYTES: usize = 4 << 20;
/// The probe's key in `shard-meta`: no shard prefix is this short.
const PROBE_KEY: &[u8] = b"probe";

/// One shard's share of a group commit: entries to append to its log, then
/// committed entries to apply (up to a sequence number, with the table's key
/// column), then the head of the log to delete.
#[derive(Debug, Clone)]
pub struct Work {
    pub id: ShardPrefix,
    pub entries: Vec<LogEntry>,
    pub apply: Option<(Seq, String)>,
    pub truncate: Option<Truncate>,
}

/// Deletes the oldest log entries: every one below `below`, then more
/// while the log holds over `max_bytes`, never one at or after `limit` (nor
/// one not yet applied). See `Effect::Truncate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncate {
    pub below: Seq,
    pub limit: Seq,
    pub max_bytes: u64,
}

/// What a [`Work`] did: the new end of the log if it appended, and the
/// results of the entries it applied.
#[derive(Debug, Default)]
pub struct Done {
    pub logged: Option<Seq>,
    pub applied: Vec<Applied>,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    tstore_transport::decode::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        what,
        cause: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("in-memory encoding cannot fail")
}

/// Bytes of the checksum in front of every stored log entry, row and
/// client session.
const SUM_BYTES: usize = 4;

/// A value as stored: the CRC32C of `payload`, then `payload`.
fn seal(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(SUM_BYTES + payload.len());
    v.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// `v` encoded and sealed, as stored.
fn encode_sealed<T: Serialize>(v: &T) -> Vec<u8> {
    seal(&encode(v))
}

/// The payload of a stored value if its checksum holds; `at` names where
/// it was found (shard and key or seq) for the error.
fn unseal<'a>(
    what: &'static str,
    at: impl FnOnce() -> String,
    bytes: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    if bytes.len() < SUM_BYTES {
        return Err(StoreError::Corrupt {
            what,
            cause: format!("{}: {} bytes, too short for a checksum", at(), bytes.len()),
        });
    }
    let (sum, payload) = bytes.split_at(SUM_BYTES);
    let stored = u32::from_le_bytes(sum.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(StoreError::Corrupt {
            what,
            cause: format!(
                "{}: checksum mismatch (stored {stored:08x}, computed {computed:08x})",
                at()
            ),
        });
    }
    Ok(payload)
}

/// A stored (sealed) value, checked and decoded.
fn open<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    at: impl Fn() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode(what, unseal(what, &at, bytes)?).map_err(|e| match e {
        StoreError::Corrupt { what, cause } => StoreError::Corrupt {
            what,
            cause: format!("{}: {cause}", at()),
        },
        e => e,
    })
}

/// The `shard-meta` key saying that copy `id` was built: by the split that
/// made its shard, or from a snapshot. Its value is the copy's [`Birth`]:
/// a shard's index is reused after a merge (the next split appends at the
/// index the merge freed), and a copy left on some node by the shard
/// merged away must never be taken for the new one.
fn born_mark(id: ShardPrefix) -> Vec<u8> {
    id.key(b"born")
}

/// The `shard-meta` key saying that copy `id` was merged into another shard
/// here (and its data dropped): its copy actor, until it stops, serves
/// nothing. Cleared with the rest when the index is built again.
fn gone_mark(id: ShardPrefix) -> Vec<u8> {
    id.key(b"gone")
}

/// The `shard-meta` key saying that copy `id` is being installed from a
/// snapshot (from `begin_install` to `finish_install`): a split applied
/// meanwhile must not build into it.
fn installing_mark(id: ShardPrefix) -> Vec<u8> {
    id.key(b"installing")
}

/// The `shard-meta` key saying that copy `id` split `child` off; its value
/// is the child's [`Birth`] (an index freed by a merge is split off again
/// later, maybe by the same shard: only the mark of that split counts).
fn split_mark(id: ShardPrefix, child: u32) -> Vec<u8> {
    let mut k = split_mark_prefix(id);
    k.extend_from_slice(&child.to_be_bytes());
    k
}

fn split_mark_prefix(id: ShardPrefix) -> Vec<u8> {
    id.key(b"split")
}

/// Which shard a copy was built for: the `Origin` of a shard split off
/// another (the parent's epoch at the split and the leader's clock then,
/// carried by the split marker and by snapshots), `None` for a shard the
/// table was created with. Unique per shard for practical purposes: an
/// index reused after a merge gets a new split, at another time.
pub type Birth = Option<(u64, u64)>;

fn encode_birth(b: Birth) -> Vec<u8> {
    b.map(|(epoch, at)| [epoch.to_be_bytes(), at.to_be_bytes()].concat())
        .unwrap_or_default()
}

fn decode_birth(id: ShardPrefix, v: &[u8]) -> Result<Birth, StoreError> {
    if v.is_empty() {
        return Ok(None);
    }
    let b = <[u8; 16]>::try_from(v).map_err(|_| StoreError::Corrupt {
        what: "born mark",
        cause: format!("{id}: {} bytes, not a birth", v.len()),
    })?;
    let (e, t) = b.split_at(8);
    Ok(Some((
        u64::from_be_bytes(e.try_into().expect("8 bytes")),
        u64::from_be_bytes(t.try_into().expect("8 bytes")),
    )))
}

/// The child index at the end of a `split_mark`'s key.
fn mark_child(k: &[u8]) -> Option<u32> {
    let b = <[u8; 4]>::try_from(k.get(k.len().checked_sub(4)?..)?).ok()?;
    Some(u32::from_be_bytes(b))
}

/// The row key of a stored row key (`k`: prefix and encoded key).
fn row_key(id: ShardPrefix, k: &[u8]) -> Result<RowKey, StoreError> {
    RowKey::decode(&k[12..]).ok_or_else(|| StoreError::Corrupt {
        what: "row key",
        cause: format!("undecodable, in {}", key_at(id, k)),
    })
}

/// Where a row key is, for errors.
fn key_at(id: ShardPrefix, key: &[u8]) -> String {
    match RowKey::decode(key.get(12..).unwrap_or_default()) {
        Some(k) => format!("{id} key {k:?}"),
        None => format!("{id} key {key:02x?}"),
    }
}

/// Where a client session is, for errors.
fn client_at(id: ShardPrefix, key: &[u8]) -> String {
    format!("{id} client {:02x?}", key.get(12..).unwrap_or_default())
}

/// Where a log entry is, for errors.
fn seq_at(id: ShardPrefix, seq: Seq) -> String {
    format!("{id} seq {seq}")
}

/// One applied entry: its sequence number and the operation's outcome.
pub type Applied = (Seq, Result<OpResult, OpError>);

/// All shard data of one node.
#[derive(Clone)]
pub struct ShardStore {
    env: Env,
    rows: Db,
    log: Db,
    meta: Db,
    sessions: Db,
    /// Log entries committed since the process started (for node stats).
    entries_logged: Arc<AtomicU64>,
    /// Write transactions committed by the group commit since start.
    commits: Arc<AtomicU64>,
    /// Their sizes and commit times (for the node's metrics).
    commit_metrics: crate::metrics::CommitMetrics,
}

/// A scan of a shard copy's rows and sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// See [`ShardStore::checksum`].
    pub checksum: u64,
    pub rows: u64,
    /// Bytes of the rows' keys (shard prefix left out) and stored records.
    pub row_bytes: u64,
}

/// What a chunk of a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    Rows,
    Sessions,
}

impl ChunkKind {
    fn what(self) -> &'static str {
        match self {
            ChunkKind::Rows => "row",
            ChunkKind::Sessions => "client session",
        }
    }

    fn at(self, id: ShardPrefix, key: &[u8]) -> String {
        match self {
            ChunkKind::Rows => key_at(id, key),
            ChunkKind::Sessions => client_at(id, key),
        }
    }
}

/// The marks a snapshot carries to the copy installed from it: the
/// shards split off the shard whose split it already reflects, and the
/// shard's [`Birth`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotMarks {
    /// `(child, its birth)`.
    pub splits: Vec<(u32, (u64, u64))>,
    pub born: Birth,
}

/// What [`ShardStore::merge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Merged: the rows moved in from the shard merged away, and their
    /// bytes (keys and stored values).
    Merged { rows: u64, bytes: u64 },
    /// This copy had merged already (it is at or past the merge's
    /// position): nothing was written.
    AlreadyDone,
    /// The copies here are not where the merge expects them: nothing was
    /// written.
    Mismatch(String),
}

impl ShardStore {
    /// `e` as the store failing to write, when it is that: no space (the
    /// LMDB map or the disk is full) or an I/O error; otherwise as it is.
    fn writing(&self, e: StoreError) -> StoreError {
        let StoreError::Lmdb(h) = &e else {
            return e;
        };
        let why = match h {
            heed::Error::Io(io) => format!("I/O error: {io}"),
            heed::Error::Mdb(heed::MdbError::MapFull) => format!(
                "the shard store is full: its LMDB map of {} bytes is used up (raise lmdb_map_size)",
                self.env.info().map_size
            ),
            heed::Error::Mdb(heed::MdbError::Other(code))
                if [ENOSPC, EIO, EROFS, EDQUOT].contains(code) =>
            {
                std::io::Error::from_raw_os_error(*code).to_string()
            }
            _ => return e,
        };
        StoreError::Unwritable(why)
    }

    /// Writes [`PROBE_BYTES`] and deletes them again, each in a committed
    /// transaction: `Ok` once the store can take writes again.
    pub fn probe(&self) -> Result<(), StoreError> {
        let run = || -> Result<(), StoreError> {
            let mut wtxn = self.env.write_txn()?;
            self.meta
                .put(&mut wtxn, PROBE_KEY, &vec![0u8; PROBE_BYTES])?;
            wtxn.commit()?;
            let mut wtxn = self.env.write_txn()?;
            self.meta.delete(&mut wtxn, PROBE_KEY)?;
            wtxn.commit()?;
            Ok(())
        };
        run().map_err(|e| self.writing(e))
    }

    pub fn open(env: &Env) -> Result<Self, StoreError> {
        let wtxn = env.write_txn()?;
        let (rows, log, meta, sessions) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                let rows = opener.create_database::<Bytes, Bytes>(wtxn, Some("shard-rows"))?;
                let log = opener.create_database::<Bytes, Bytes>(wtxn, Some("shard-log"))?;
                let meta = opener.create_database::<Bytes, Bytes>(wtxn, Some("shard-meta"))?;
                let sessions =
                    opener.create_database::<Bytes, Bytes>(wtxn, Some("shard-sessions"))?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit((
                    rows, log, meta, sessions,
                )))
            })?
            .unwrap_commit();
        Ok(Self {
            env: env.clone(),
            rows,
            log,
            meta,
            sessions,
            entries_logged: Arc::default(),
            commits: Arc::default(),
            commit_metrics: Default::default(),
        })
    }

    /// The environment the store lives in.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// The group commit's batch sizes and commit times since start.
    pub fn commit_metrics(&self) -> crate::metrics::CommitMetrics {
        self.commit_metrics.clone()
    }

    /// Log entries committed by this store since the process started.
    pub fn entries_logged(&self) -> u64 {
        self.entries_logged.load(Ordering::Relaxed)
    }

    /// Group commits (write transactions of `commit_batch`) since start.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    pub fn meta(&self, id: ShardPrefix) -> Result<ShardMeta, StoreError> {
        let rtxn = self.env.read_txn()?;
        self.meta_in(&rtxn, id)
    }

    fn meta_in(&self, txn: &heed::RoTxn, id: ShardPrefix) -> Result<ShardMeta, StoreError> {
        match self.meta.get(txn, &id.prefix())? {
            Some(b) => decode_meta(b),
            None => Ok(ShardMeta::default()),
        }
    }

    /// Records the configuration epoch this copy now serves in (nothing
    /// is written when it is already recorded).
    pub fn set_epoch(&self, id: ShardPrefix, epoch: Epoch) -> Result<(), StoreError> {
        self.record_epochs(&[(id, epoch)])
    }

    /// [`ShardStore::set_epoch`] for many copies, in one transaction.
    pub fn record_epochs(&self, copies: &[(ShardPrefix, Epoch)]) -> Result<(), StoreError> {
        {
            let rtxn = self.env.read_txn()?;
            let mut recorded = true;
            for (id, epoch) in copies {
                recorded &= self.meta_in(&rtxn, *id)?.epoch == *epoch;
            }
            if recorded {
                return Ok(());
            }
        }
        let mut wtxn = self.env.write_txn()?;
        for (id, epoch) in copies {
            let mut m = self.meta_in(&wtxn, *id)?;
            if m.epoch != *epoch {
                m.epoch = *epoch;
                self.meta.put(&mut wtxn, &id.prefix(), &encode(&m))?;
            }
        }
        wtxn.commit()?;
        Ok(())
    }

    /// Appends contiguous entries durably, in one transaction; returns the
    /// new `logged`. Entries at or below `logged` are skipped (duplicates).
    pub fn append(&self, id: ShardPrefix, entries: &[LogEntry]) -> Result<Seq, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let logged = self.append_in(&mut wtxn, id, entries)?;
        wtxn.commit()?;
        Ok(logged)
    }

    fn append_in(
        &self,
        wtxn: &mut heed::RwTxn,
        id: ShardPrefix,
        entries: &[LogEntry],
    ) -> Result<Seq, StoreError> {
        let mut m = self.meta_in(wtxn, id)?;
        for e in entries {
            if e.seq <= m.logged {
                continue;
            }
            if e.seq != m.logged + 1 {
                return Err(StoreError::Gap {
                    logged: m.logged,
                    got: e.seq,
                });
            }
            let value = encode_sealed(e);
            self.log.put(wtxn, &id.key(&e.seq.to_be_bytes()), &value)?;
            m.log_bytes += value.len() as u64;
            m.logged = e.seq;
        }
        self.meta.put(wtxn, &id.prefix(), &encode(&m))?;
        Ok(m.logged)
    }

    /// Applies the logged entries after `applied` up to `upto` to the rows,
    /// in one transaction; returns each entry's result.
    pub fn apply(
        &self,
        id: ShardPrefix,
        upto: Seq,
        key_column: &str,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let results = self.apply_in(&mut wtxn, id, upto, key_column)?;
        wtxn.commit()?;
        Ok(results)
    }

    fn apply_in(
        &self,
        wtxn: &mut heed::RwTxn,
        id: ShardPrefix,
        upto: Seq,
        key_column: &str,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut m = self.meta_in(wtxn, id)?;
        let upto = upto.min(m.logged);
        let mut results = Vec::new();
        for seq in m.applied + 1..=upto {
            let entry: LogEntry = match self.log.get(wtxn, &id.key(&seq.to_be_bytes()))? {
                Some(b) => open("log entry", || seq_at(id, seq), b)?,
                None => {
                    return Err(StoreError::Gap {
                        logged: m.applied,
                        got: seq,
                    })
                }
            };
            let cmd: Command = decode("command", &entry.op)?;
            if m.clock.advance(cmd.at_ms) {
                self.sweep_sessions(wtxn, id, &m.clock)?;
            }
            if let Op::Split { child, range, born } = &cmd.op {
                let (rows, bytes) =
                    self.split_in(wtxn, id, seq, (*child, range, *born), m.clock)?;
                m.rows = m.rows.saturating_sub(rows);
                m.row_bytes = m.row_bytes.saturating_sub(bytes);
                results.push((seq, Ok(OpResult::Written { version: seq })));
                continue;
            }
            let session_key = id.key(&cmd.id.client.to_bytes());
            let known: Option<ClientRecord> = match self.sessions.get(wtxn, &session_key)? {
                Some(b) => Some(open("client session", || client_at(id, &session_key), b)?),
                None => None,
            };
            let mut writes = Default::default();
            // A row that cannot be read fails the whole apply: evaluating
            // the operation without it would write a wrong outcome.
            let failed: std::cell::RefCell<Option<StoreError>> = Default::default();
            let (res, record) = decide(known, &cmd.id, &m.clock, || {
                let txn: &heed::RoTxn = wtxn;
                let lookup = |k: &RowKey| -> Option<RowRecord> {
                    let key = id.key(&k.encode());
                    let found = self
                        .rows
                        .get(txn, &key)
                        .map_err(StoreError::from)
                        .and_then(|b| b.map(|b| open("row", || key_at(id, &key), b)).transpose());
                    found.unwrap_or_else(|e| {
                        failed.borrow_mut().get_or_insert(e);
                        None
                    })
                };
                let (res, w) = evaluate(&cmd.op, seq, key_column, &lookup);
                writes = w;
                res
            });
            if let Some(e) = failed.into_inner() {
                return Err(e);
            }
            if let Some(record) = record {
                self.sessions
                    .put(wtxn, &session_key, &encode_sealed(&record))?;
            }
            for (key, w) in writes {
                let k = id.key(&key.encode());
                let key_len = (k.len() - 12) as u64;
                if let Some(old) = self.rows.get(wtxn, &k)? {
                    m.rows = m.rows.saturating_sub(1);
                    m.row_bytes = m.row_bytes.saturating_sub(key_len + old.len() as u64);
                }
                match w {
                    Some(r) => {
                        let v = encode_sealed(&r);
                        m.rows += 1;
                        m.row_bytes += key_len + v.len() as u64;
                        self.rows.put(wtxn, &k, &v)?
                    }
                    None => {
                        self.rows.delete(wtxn, &k)?;
                    }
                }
            }
            results.push((seq, res));
        }
        m.applied = m.applied.max(upto);
        self.meta.put(wtxn, &id.prefix(), &encode(&m))?;
        Ok(results)
    }

    /// Applies a split marker ([`Op::Split`]), entry `seq` of the parent:
    /// the parent's rows in `range` move to shard `child` (their stored
    /// bytes as they are: a value's checksum does not cover its key), its
    /// client sessions are copied there, and the child's metadata is
    /// written: the parent's clock, and a log that goes on from `seq` (as a
    /// copy installed from a snapshot at `seq`), so that a row's version,
    /// the seq of the entry that wrote it, keeps growing across the split
    /// (a version check never mistakes a new row for an old one) and a
    /// client's read-your-writes position stays meaningful. A child this
    /// node already holds (built for the same birth) is left alone (a
    /// marker logged twice, by two primaries of the parent), but the
    /// parent's rows in `range` go whatever happens: the parent owns them
    /// no longer. All in the transaction applying the marker (`child`,
    /// `range` and `born` of the [`Op::Split`]).
    fn split_in(
        &self,
        wtxn: &mut heed::RwTxn,
        id: ShardPrefix,
        seq: Seq,
        (child, range, born): (u32, &KeyRange, (u64, u64)),
        clock: SessionClock,
    ) -> Result<(u64, u64), StoreError> {
        let to = ShardPrefix {
            table: id.table,
            shard: child,
        };
        // Not `meta`: the node may have recorded the child's epoch already.
        // Nor a copy being installed from a snapshot: its rows are the
        // snapshot's. A copy left over from a shard merged away at the
        // same index is no copy of this child: it is wiped and built anew.
        let build = !self.built_in(wtxn, to, Some(born))?
            && self.meta.get(wtxn, &installing_mark(to))?.is_none();
        if build {
            self.drop_in(wtxn, to)?;
        }
        let (from_key, end_key) = match range {
            KeyRange::Range { start, end } => (
                id.key(&start.as_ref().map(RowKey::encode).unwrap_or_default()),
                end.as_ref()
                    .map_or_else(|| id.next_prefix(), |e| id.key(&e.encode())),
            ),
            KeyRange::HashSlot { .. } => (id.key(&[]), id.next_prefix()),
        };
        let bounds = (
            Bound::Included(from_key.as_slice()),
            Bound::Excluded(end_key.as_slice()),
        );
        let mut moving: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for item in self.rows.range(wtxn, &bounds)? {
            let (k, v) = item?;
            let key = row_key(id, k)?;
            if range.contains(&key) {
                moving.push((k[12..].to_vec(), v.to_vec()));
            }
        }
        let moved_bytes: u64 = moving.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        for (k, v) in &moving {
            self.rows.delete(wtxn, &id.key(k))?;
            if build {
                self.rows.put(wtxn, &to.key(k), v)?;
            }
        }
        if build {
            let sessions: Vec<(Vec<u8>, Vec<u8>)> = self
                .sessions
                .prefix_iter(wtxn, &id.prefix())?
                .map(|r| r.map(|(k, v)| (k[12..].to_vec(), v.to_vec())))
                .collect::<Result<_, _>>()?;
            for (k, v) in sessions {
                self.sessions.put(wtxn, &to.key(&k), &v)?;
            }
            let meta = ShardMeta {
                epoch: 0,
                logged: seq,
                applied: seq,
                clock,
                log_start: seq + 1,
                log_bytes: 0,
                rows: moving.len() as u64,
                row_bytes: moved_bytes,
            };
            self.meta.put(wtxn, &to.prefix(), &encode(&meta))?;
            self.meta
                .put(wtxn, &born_mark(to), &encode_birth(Some(born)))?;
        }
        self.meta
            .put(wtxn, &split_mark(id, child), &encode_birth(Some(born)))?;
        Ok((moving.len() as u64, moved_bytes))
    }

    /// The median row of a shard copy (by key order), `None` when it has no
    /// row: two passes over its keys (a count, then half of it).
    pub fn middle_key(&self, id: ShardPrefix) -> Result<Option<(RowKey, RowRecord)>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let rows = self.rows.prefix_iter(&rtxn, &id.prefix())?.count();
        let Some(item) = self.rows.prefix_iter(&rtxn, &id.prefix())?.nth(rows / 2) else {
            return Ok(None);
        };
        let (k, v) = item?;
        let key = row_key(id, k)?;
        Ok(Some((key, open("row", || key_at(id, k), v)?)))
    }

    /// Whether this node's copy of `id` was built, by a split or a snapshot
    /// install, for the shard born `born` (a copy of a shard split off
    /// another waits for it; one built for a shard merged away since, whose
    /// index was reused, does not count).
    pub fn built(&self, id: ShardPrefix, born: Birth) -> Result<bool, StoreError> {
        let rtxn = self.env.read_txn()?;
        self.built_in(&rtxn, id, born)
    }

    fn built_in(
        &self,
        txn: &heed::RoTxn,
        id: ShardPrefix,
        born: Birth,
    ) -> Result<bool, StoreError> {
        Ok(self.birth_in(txn, id)? == Some(born))
    }

    /// The [`Birth`] this node's copy of `id` was built with; `None` when
    /// it has no born mark (never built, or a shard the table was created
    /// with and never copied).
    pub fn birth(&self, id: ShardPrefix) -> Result<Option<Birth>, StoreError> {
        let rtxn = self.env.read_txn()?;
        self.birth_in(&rtxn, id)
    }

    fn birth_in(&self, txn: &heed::RoTxn, id: ShardPrefix) -> Result<Option<Birth>, StoreError> {
        self.meta
            .get(txn, &born_mark(id))?
            .map(|v| decode_birth(id, v))
            .transpose()
    }

    /// Whether this node's copy of `id` was merged into another shard here
    /// (its rows are the other shard's now).
    pub fn merged_away(&self, id: ShardPrefix) -> Result<bool, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(self.meta.get(&rtxn, &gone_mark(id))?.is_some())
    }

    /// Whether this copy of `id` has applied the marker splitting `child`
    /// off it.
    pub fn split_done(
        &self,
        id: ShardPrefix,
        child: u32,
        born: (u64, u64),
    ) -> Result<bool, StoreError> {
        let rtxn = self.env.read_txn()?;
        match self.meta.get(&rtxn, &split_mark(id, child))? {
            Some(v) => Ok(decode_birth(id, v)? == Some(born)),
            None => Ok(false),
        }
    }

    /// Merges this node's copy of shard `absorb` into its copy of `keep`,
    /// in one transaction and with no log entry: every member of the two
    /// does the same once both are sealed and every copy has applied
    /// exactly `sk` (keep) and `sa` (absorb). The merged shard's log goes on
    /// from `M = max(sk, sa) + 1`, a position no copy of either was ever
    /// at: row versions (log positions) keep growing across the merge, and
    /// a copy behind it can only catch up by a snapshot.
    ///
    /// Absorb's rows move to keep (their stored bytes as they are, as a
    /// split moves them), the client sessions of both are merged
    /// ([`merge_records`]), keep's log is deleted, and keep's metadata
    /// holds both: `logged = applied = M`, the later clock, the rows of
    /// both. Absorb's copy is dropped (a later split reusing its index
    /// builds its child afresh anyway: see [`Birth`]).
    ///
    /// [`MergeOutcome::AlreadyDone`] when keep is at or past `M` (the merge
    /// applied before, a restart since); [`MergeOutcome::Mismatch`] when
    /// either copy is not where the merge expects it (it must be rebuilt
    /// from a merged copy). Neither writes anything.
    ///
    /// [`merge_records`]: tstore_core::data::sessions::merge_records
    pub fn merge(
        &self,
        keep: ShardPrefix,
        (absorb, absorb_born): (ShardPrefix, Birth),
        sk: Seq,
        sa: Seq,
    ) -> Result<MergeOutcome, StoreError> {
        // Asked at every reconfiguration of a merged copy: done already is
        // read without taking the write lock.
        let done = self.meta(keep).is_ok_and(|m| m.applied > sk.max(sa));
        if done {
            return Ok(MergeOutcome::AlreadyDone);
        }
        let mut wtxn = self.env.write_txn()?;
        let outcome = self.merge_in(&mut wtxn, keep, (absorb, absorb_born), sk, sa)?;
        if matches!(outcome, MergeOutcome::Merged { .. }) {
            wtxn.commit()?;
        }
        Ok(outcome)
    }

    fn merge_in(
        &self,
        wtxn: &mut heed::RwTxn,
        keep: ShardPrefix,
        (absorb, absorb_born): (ShardPrefix, Birth),
        sk: Seq,
        sa: Seq,
    ) -> Result<MergeOutcome, StoreError> {
        let at = sk.max(sa) + 1;
        let mismatch = |why: String| {
            Ok(MergeOutcome::Mismatch(format!(
                "cannot merge {absorb} (at {sa}) into {keep} (at {sk}): {why}"
            )))
        };
        if keep == absorb {
            return mismatch("a shard cannot merge into itself".into());
        }
        let Some(k) = self.meta.get(wtxn, &keep.prefix())? else {
            return mismatch(format!("this node holds no copy of {keep}"));
        };
        let mut km = decode_meta(k)?;
        if km.applied >= at {
            return Ok(MergeOutcome::AlreadyDone);
        }
        let Some(a) = self.meta.get(wtxn, &absorb.prefix())? else {
            return mismatch(format!("this node holds no copy of {absorb}"));
        };
        let am = decode_meta(a)?;
        // What this node holds at absorb's index must be the shard merged
        // away, not a shard split off to that index since (a node whose
        // map jumped past both): its positions could even match.
        if self.birth_in(wtxn, absorb)?.unwrap_or(None) != absorb_born {
            return mismatch(format!(
                "what this node holds of {absorb} was built for another shard at that index"
            ));
        }
        for id in [keep, absorb] {
            if self.meta.get(wtxn, &installing_mark(id))?.is_some() {
                return mismatch(format!("{id} is being installed from a snapshot"));
            }
        }
        // A logged tail past `sk` (a stale copy's) goes with the log.
        if km.applied != sk {
            return mismatch(format!("{keep} has applied {}", km.applied));
        }
        if am.applied != sa {
            return mismatch(format!("{absorb} has applied {}", am.applied));
        }

        let moving: Vec<(Vec<u8>, Vec<u8>)> = self
            .rows
            .prefix_iter(wtxn, &absorb.prefix())?
            .map(|r| r.map(|(k, v)| (k[12..].to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()?;
        let (mut rows, mut bytes) = (0u64, 0u64);
        for (k, v) in &moving {
            let key = keep.key(k);
            // The shards' ranges are disjoint; were a key in both, the
            // counts stay right.
            if let Some(old) = self.rows.get(wtxn, &key)? {
                km.rows = km.rows.saturating_sub(1);
                km.row_bytes = km.row_bytes.saturating_sub((k.len() + old.len()) as u64);
            }
            self.rows.put(wtxn, &key, v)?;
            rows += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        km.rows += rows;
        km.row_bytes += bytes;

        let sessions: Vec<(Vec<u8>, Vec<u8>)> = self
            .sessions
            .prefix_iter(wtxn, &absorb.prefix())?
            .map(|r| r.map(|(k, v)| (k[12..].to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()?;
        for (k, v) in sessions {
            let key = keep.key(&k);
            let merged = match self.sessions.get(wtxn, &key)? {
                Some(mine) => {
                    let mine: ClientRecord =
                        open("client session", || client_at(keep, &key), mine)?;
                    let theirs: ClientRecord =
                        open("client session", || client_at(absorb, &absorb.key(&k)), &v)?;
                    encode_sealed(&merge_records(mine, theirs))
                }
                None => v,
            };
            self.sessions.put(wtxn, &key, &merged)?;
        }

        let log: Vec<Vec<u8>> = self
            .log
            .prefix_iter(wtxn, &keep.prefix())?
            .map(|r| r.map(|(k, _)| k.to_vec()))
            .collect::<Result<_, _>>()?;
        for k in log {
            self.log.delete(wtxn, &k)?;
        }
        let m = ShardMeta {
            epoch: km.epoch,
            logged: at,
            applied: at,
            clock: SessionClock {
                now_ms: km.clock.now_ms.max(am.clock.now_ms),
                swept_ms: km.clock.swept_ms.max(am.clock.swept_ms),
            },
            log_start: at + 1,
            log_bytes: 0,
            rows: km.rows,
            row_bytes: km.row_bytes,
        };
        self.meta.put(wtxn, &keep.prefix(), &encode(&m))?;
        // Absorb's copy goes here, not when its actor stops (which may come
        // first: the merge would find nothing). A read still queued there
        // finds the gone mark and is refused, not answered "no such row".
        self.drop_in(wtxn, absorb)?;
        self.meta.put(wtxn, &gone_mark(absorb), &[])?;
        self.meta.delete(wtxn, &split_mark(keep, absorb.shard))?;
        Ok(MergeOutcome::Merged { rows, bytes })
    }

    /// Deletes the head of the log as `t` says (see [`Truncate`]); returns
    /// the first entry kept.
    fn truncate_in(
        &self,
        wtxn: &mut heed::RwTxn,
        id: ShardPrefix,
        t: &Truncate,
    ) -> Result<Seq, StoreError> {
        let mut m = self.meta_in(wtxn, id)?;
        let start = m.log_start.max(1);
        // Never an entry the rows do not reflect yet.
        let limit = t.limit.min(m.applied + 1);
        if limit <= start {
            return Ok(start);
        }
        let (from, to) = (id.key(&start.to_be_bytes()), id.key(&limit.to_be_bytes()));
        let range = (
            Bound::Included(from.as_slice()),
            Bound::Excluded(to.as_slice()),
        );
        let mut doomed = Vec::new();
        let mut bytes = m.log_bytes;
        // Everything below `below` goes (none may be there); past it,
        // entries go while the log is over its byte bound.
        let mut new_start = start.max(t.below.min(limit));
        for item in self.log.range(wtxn, &range)? {
            let (k, v) = item?;
            let seq = Seq::from_be_bytes(k[12..].try_into().map_err(|_| StoreError::Corrupt {
                what: "log key",
                cause: format!("{} bytes", k.len()),
            })?);
            if seq >= t.below && bytes <= t.max_bytes {
                break;
            }
            bytes = bytes.saturating_sub(v.len() as u64);
            doomed.push(k.to_vec());
            new_start = new_start.max(seq + 1);
        }
        for k in &doomed {
            self.log.delete(wtxn, k)?;
        }
        m.log_bytes = bytes;
        m.log_start = new_start;
        self.meta.put(wtxn, &id.prefix(), &encode(&m))?;
        Ok(new_start)
    }

    /// How many log entries a shard copy holds, and their bytes (for
    /// status and tests; reads every key).
    pub fn log_size(&self, id: ShardPrefix) -> Result<(u64, u64), StoreError> {
        let rtxn = self.env.read_txn()?;
        let (mut n, mut bytes) = (0, 0);
        for item in self.log.prefix_iter(&rtxn, &id.prefix())? {
            let (_, v) = item?;
            n += 1;
            bytes += v.len() as u64;
        }
        Ok((n, bytes))
    }

    /// Deletes the records of clients idle past their time to live.
    fn sweep_sessions(
        &self,
        wtxn: &mut heed::RwTxn,
        id: ShardPrefix,
        clock: &SessionClock,
    ) -> Result<(), StoreError> {
        let mut expired = Vec::new();
        for item in self.sessions.prefix_iter(wtxn, &id.prefix())? {
            let (k, v) = item?;
            let r: ClientRecord = open("client session", || client_at(id, k), v)?;
            if clock.expired(&r) {
                expired.push(k.to_vec());
            }
        }
        for k in expired {
            self.sessions.delete(wtxn, &k)?;
        }
        Ok(())
    }

    /// How many clients the shard remembers (for status and tests).
    pub fn session_count(&self, id: ShardPrefix) -> Result<usize, StoreError> {
        let rtxn = self.env.read_txn()?;
        let mut n = 0;
        for item in self.sessions.prefix_iter(&rtxn, &id.prefix())? {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Group commit across shards: carries out every piece of `work` (an
    /// append, then an apply, of one shard each) in one write transaction,
    /// so one fsync makes all of them durable. Each piece runs in a nested
    /// transaction: one that fails leaves nothing behind and gets its own
    /// error, the others still commit. If the commit itself fails (disk
    /// full), every piece gets the error and nothing is written.
    pub fn commit_batch(&self, work: &[Work]) -> Vec<Result<Done, StoreError>> {
        let run = || -> Result<Vec<Result<Done, StoreError>>, StoreError> {
            let mut wtxn = self.env.write_txn()?;
            let mut out = Vec::with_capacity(work.len());
            for w in work {
                let mut nested = self.env.nested_write_txn(&mut wtxn)?;
                let done = (|| {
                    let logged = if w.entries.is_empty() {
                        None
                    } else {
                        Some(self.append_in(&mut nested, w.id, &w.entries)?)
                    };
                    let applied = match &w.apply {
                        Some((upto, key_column)) => {
                            self.apply_in(&mut nested, w.id, *upto, key_column)?
                        }
                        None => Vec::new(),
                    };
                    if let Some(t) = &w.truncate {
                        self.truncate_in(&mut nested, w.id, t)?;
                    }
                    Ok(Done { logged, applied })
                })();
                match done {
                    Ok(d) => {
                        nested.commit()?;
                        out.push(Ok(d));
                    }
                    Err(e) => {
                        nested.abort();
                        out.push(Err(self.writing(e)));
                    }
                }
            }
            let committing = std::time::Instant::now();
            wtxn.commit()?;
            self.commit_metrics
                .committed(work.len(), committing.elapsed());
            let appended: usize = work
                .iter()
                .zip(&out)
                .filter(|(_, r)| r.is_ok())
                .map(|(w, _)| w.entries.len())
                .sum();
            self.entries_logged
                .fetch_add(appended as u64, Ordering::Relaxed);
            self.commits.fetch_add(1, Ordering::Relaxed);
            Ok(out)
        };
        match run().map_err(|e| self.writing(e)) {
            Ok(out) => out,
            Err(StoreError::Unwritable(why)) => work
                .iter()
                .map(|_| Err(StoreError::Unwritable(why.clone())))
                .collect(),
            Err(e) => {
                let msg = e.to_string();
                work.iter()
                    .map(|_| Err(StoreError::Batch(msg.clone())))
                    .collect()
            }
        }
    }

    pub fn get(&self, id: ShardPrefix, key: &RowKey) -> Result<Option<RowRecord>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let k = id.key(&key.encode());
        match self.rows.get(&rtxn, &k)? {
            Some(b) => open("row", || key_at(id, &k), b).map(Some),
            None => Ok(None),
        }
    }

    /// Rows with `from <= key < to` (unbounded when `None`), in key order, at most `limit`.
    pub fn scan(
        &self,
        id: ShardPrefix,
        from: Option<&RowKey>,
        to: Option<&RowKey>,
        limit: usize,
    ) -> Result<Vec<(RowKey, RowRecord)>, StoreError> {
        self.scan_within(id, from, to, limit, &|_| true)
    }

    /// [`ShardStore::scan`] of the rows whose key `owns` says are the
    /// copy's (a copy that has not applied a split yet still holds rows it
    /// no longer owns): the others are skipped, not counted in `limit`.
    pub fn scan_within(
        &self,
        id: ShardPrefix,
        from: Option<&RowKey>,
        to: Option<&RowKey>,
        limit: usize,
        owns: &dyn Fn(&RowKey) -> bool,
    ) -> Result<Vec<(RowKey, RowRecord)>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let start = id.key(&from.map(|k| k.encode()).unwrap_or_default());
        let end = id.next_prefix();
        let range = (
            Bound::Included(start.as_slice()),
            Bound::Excluded(end.as_slice()),
        );
        let mut out = Vec::new();
        for item in self.rows.range(&rtxn, &range)? {
            let (k, v) = item?;
            let key = row_key(id, k)?;
            if to.is_some_and(|t| key >= *t) || out.len() >= limit {
                break;
            }
            if owns(&key) {
                out.push((key, open("row", || key_at(id, k), v)?));
            }
        }
        Ok(out)
    }

    /// Logged entries with `from <= seq <= to`.
    pub fn log_range(
        &self,
        id: ShardPrefix,
        from: Seq,
        to: Seq,
    ) -> Result<Vec<LogEntry>, StoreError> {
        if from > to {
            return Ok(vec![]);
        }
        let rtxn = self.env.read_txn()?;
        let (start, end) = (id.key(&from.to_be_bytes()), id.key(&to.to_be_bytes()));
        let range = (
            Bound::Included(start.as_slice()),
            Bound::Included(end.as_slice()),
        );
        let mut out = Vec::new();
        for item in self.log.range(&rtxn, &range)? {
            let (k, v) = item?;
            let at = || match k.get(12..).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
                Some(seq) => seq_at(id, Seq::from_be_bytes(seq)),
                None => format!("{id} log key {k:02x?}"),
            };
            let entry: LogEntry = open("log entry", at, v)?;
            if entry.seq > to {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Reconciliation with a new epoch's primary: drops the log entries
    /// after `keep` (never below `applied`) and records `epoch`, in one
    /// transaction.
    pub fn reconcile(&self, id: ShardPrefix, keep: Seq, epoch: Epoch) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let mut m = self.meta_in(&wtxn, id)?;
        let keep = keep.max(m.applied);
        for seq in keep + 1..=m.logged {
            let k = id.key(&seq.to_be_bytes());
            if let Some(v) = self.log.get(&wtxn, &k)? {
                m.log_bytes = m.log_bytes.saturating_sub(v.len() as u64);
            }
            self.log.delete(&mut wtxn, &k)?;
        }
        m.logged = m.logged.min(keep);
        m.epoch = epoch;
        self.meta.put(&mut wtxn, &id.prefix(), &encode(&m))?;
        wtxn.commit()?;
        Ok(())
    }

    /// A consistent copy of a shard's state for a new copy: `header` gets
    /// the metadata (rows and client sessions reflect exactly `applied`)
    /// and the copy's marks, then `chunk` gets batches of raw `(key, value)`
    /// pairs of about `chunk_bytes`, first the rows, then the client
    /// sessions, all from one read transaction. `chunk` returns false to
    /// stop early. Returns the number of rows. Blocking: run it on a thread
    /// of its own.
    pub fn snapshot(
        &self,
        id: ShardPrefix,
        chunk_bytes: usize,
        header: impl FnOnce(ShardMeta, SnapshotMarks) -> bool,
        mut chunk: impl FnMut(ChunkKind, Vec<(Vec<u8>, Vec<u8>)>) -> bool,
    ) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        // The children this copy split off, as of the snapshot, and what it
        // was built for: the installing copy records them (`finish_install`).
        let mut marks = SnapshotMarks {
            born: self.birth_in(&rtxn, id)?.flatten(),
            ..Default::default()
        };
        for item in self.meta.prefix_iter(&rtxn, &split_mark_prefix(id))? {
            let (k, v) = item?;
            if let (Some(child), Some(born)) = (mark_child(k), decode_birth(id, v)?) {
                marks.splits.push((child, born));
            }
        }
        if !header(self.meta_in(&rtxn, id)?, marks) {
            return Ok(0);
        }
        let mut rows = 0u64;
        for (kind, db) in [
            (ChunkKind::Rows, &self.rows),
            (ChunkKind::Sessions, &self.sessions),
        ] {
            let (mut batch, mut size) = (Vec::new(), 0usize);
            for item in db.prefix_iter(&rtxn, &id.prefix())? {
                let (k, v) = item?;
                // Never ship a value that fails its checksum.
                unseal(kind.what(), || kind.at(id, k), v)?;
                size += k.len() + v.len();
                batch.push((k[12..].to_vec(), v.to_vec()));
                if kind == ChunkKind::Rows {
                    rows += 1;
                }
                if size >= chunk_bytes {
                    if !chunk(kind, std::mem::take(&mut batch)) {
                        return Ok(rows);
                    }
                    size = 0;
                }
            }
            if !batch.is_empty() && !chunk(kind, batch) {
                return Ok(rows);
            }
        }
        Ok(rows)
    }

    /// Writes rows or client sessions of a snapshot being installed (raw,
    /// from `snapshot`).
    pub fn install(
        &self,
        id: ShardPrefix,
        kind: ChunkKind,
        pairs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let db = match kind {
            ChunkKind::Rows => &self.rows,
            ChunkKind::Sessions => &self.sessions,
        };
        let mut wtxn = self.env.write_txn()?;
        for (k, v) in pairs {
            let key = id.key(k);
            // What arrived is stored as it was sent: check it first.
            unseal(kind.what(), || kind.at(id, &key), v)?;
            db.put(&mut wtxn, &key, v)?;
        }
        wtxn.commit()?;
        Ok(())
    }

    /// Completes an installed snapshot: the copy holds everything up to
    /// `applied` (with no log: whatever log this node held of the shard is
    /// deleted, and the shard clock is `clock`) in `epoch`. `marks` are the
    /// snapshot's ([`ShardStore::snapshot`]).
    pub fn finish_install(
        &self,
        id: ShardPrefix,
        applied: Seq,
        clock: SessionClock,
        epoch: Epoch,
        marks: &SnapshotMarks,
    ) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let old: Vec<Vec<u8>> = self
            .log
            .prefix_iter(&wtxn, &id.prefix())?
            .map(|r| r.map(|(k, _)| k.to_vec()))
            .collect::<Result<_, _>>()?;
        for k in old {
            self.log.delete(&mut wtxn, &k)?;
        }
        let (mut rows, mut row_bytes) = (0, 0);
        for item in self.rows.prefix_iter(&wtxn, &id.prefix())? {
            let (k, v) = item?;
            rows += 1;
            row_bytes += (k.len() - 12 + v.len()) as u64;
        }
        let m = ShardMeta {
            epoch,
            logged: applied,
            applied,
            clock,
            log_start: applied + 1,
            log_bytes: 0,
            rows,
            row_bytes,
        };
        self.meta.put(&mut wtxn, &id.prefix(), &encode(&m))?;
        self.meta
            .put(&mut wtxn, &born_mark(id), &encode_birth(marks.born))?;
        self.meta.delete(&mut wtxn, &installing_mark(id))?;
        for (child, born) in &marks.splits {
            self.meta.put(
                &mut wtxn,
                &split_mark(id, *child),
                &encode_birth(Some(*born)),
            )?;
        }
        wtxn.commit()?;
        Ok(())
    }

    /// Starts installing copy `id` from a snapshot: drops what this node
    /// held of it and marks it installing, in one transaction.
    pub fn begin_install(&self, id: ShardPrefix) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        self.drop_in(&mut wtxn, id)?;
        self.meta.put(&mut wtxn, &installing_mark(id), &[])?;
        wtxn.commit()?;
        Ok(())
    }

    /// Removes every row, log entry and the metadata of a shard copy.
    pub fn drop_shard(&self, id: ShardPrefix) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        self.drop_in(&mut wtxn, id)?;
        wtxn.commit()?;
        Ok(())
    }

    fn drop_in(&self, wtxn: &mut heed::RwTxn, id: ShardPrefix) -> Result<(), StoreError> {
        let p = id.prefix();
        for db in [&self.rows, &self.log, &self.sessions] {
            let keys: Vec<Vec<u8>> = db
                .prefix_iter(wtxn, &p)?
                .map(|r| r.map(|(k, _)| k.to_vec()))
                .collect::<Result<_, _>>()?;
            for k in keys {
                db.delete(wtxn, &k)?;
            }
        }
        // The metadata and the marks (`born`, `installing`, `split_mark`).
        let keys: Vec<Vec<u8>> = self
            .meta
            .prefix_iter(wtxn, &p)?
            .map(|r| r.map(|(k, _)| k.to_vec()))
            .collect::<Result<_, _>>()?;
        for k in keys {
            self.meta.delete(wtxn, &k)?;
        }
        Ok(())
    }

    /// A checksum of a shard's rows (keys, versions, content) and client
    /// sessions, to compare copies (on any node: the shard prefix is left
    /// out). Every stored value's own checksum is checked on the way: a
    /// corrupt copy answers [`StoreError::Corrupt`], not a checksum.
    pub fn checksum(&self, id: ShardPrefix) -> Result<u64, StoreError> {
        Ok(self.verify(id)?.checksum)
    }

    /// The [`checksum`](Self::checksum) of a shard copy, with its rows
    /// counted on the way (one scan of its rows and sessions).
    pub fn verify(&self, id: ShardPrefix) -> Result<Verified, StoreError> {
        let rtxn = self.env.read_txn()?;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let (mut rows, mut row_bytes) = (0, 0);
        for (i, db) in [&self.rows, &self.sessions].into_iter().enumerate() {
            let kind = [ChunkKind::Rows, ChunkKind::Sessions][i];
            for item in db.prefix_iter(&rtxn, &id.prefix())? {
                let (k, v) = item?;
                unseal(kind.what(), || kind.at(id, k), v)?;
                if i == 0 {
                    rows += 1;
                    row_bytes += (k.len() - 12 + v.len()) as u64;
                }
                for b in k[12..].iter().chain(v) {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
        }
        Ok(Verified {
            checksum: h,
            rows,
            row_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tstore_core::data::ops::Op;
    use tstore_core::data::sessions::{ClientId, RequestId};

    const T0: u64 = 1_800_000_000_000;

    /// An entry of a request of its own (client 1, request `seq`).
    fn entry(seq: Seq, op: &Op) -> LogEntry {
        request(seq, seq, op)
    }

    /// Entry `seq` carrying client 1's request `request`.
    fn request(seq: Seq, request: u64, op: &Op) -> LogEntry {
        request_of(1, seq, request, op)
    }

    /// Entry `seq` carrying client `client`'s request `request`.
    fn request_of(client: u64, seq: Seq, request: u64, op: &Op) -> LogEntry {
        let cmd = Command {
            id: RequestId {
                client: ClientId::new(T0, client),
                seq: request,
                first_incomplete: 1,
            },
            at_ms: T0 + seq,
            op: op.clone(),
        };
        LogEntry {
            epoch: 1,
            seq,
            op: encode(&cmd),
        }
    }

    fn put(i: i64) -> Op {
        Op::Put {
            key: RowKey::Int(i),
            row: serde_json::json!({"id": i, "v": i * 10}).to_string(),
        }
    }

    #[test]
    fn epochs_of_many_copies_are_recorded_together_and_kept_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let a = ShardPrefix { table: 1, shard: 0 };
        let b = ShardPrefix { table: 1, shard: 1 };
        s.append(a, &[entry(1, &put(1))]).unwrap();
        s.record_epochs(&[(a, 3), (b, 2)]).unwrap();
        let (ma, mb) = (s.meta(a).unwrap(), s.meta(b).unwrap());
        assert_eq!((ma.epoch, ma.logged), (3, 1), "the log is kept");
        assert_eq!((mb.epoch, mb.logged), (2, 0));
        s.set_epoch(b, 2).unwrap();
        s.set_epoch(b, 4).unwrap();
        assert_eq!(s.meta(b).unwrap().epoch, 4);
        s.record_epochs(&[]).unwrap();
    }

    #[test]
    fn append_apply_get_scan_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = ShardPrefix { table: 1, shard: 0 };
        let b = ShardPrefix { table: 1, shard: 1 };
        {
            let env = crate::storage::open_env(dir.path()).unwrap();
            let s = ShardStore::open(&env).unwrap();
            let entries: Vec<LogEntry> = (1..=5).map(|i| entry(i, &put(6 - i as i64))).collect();
            assert_eq!(s.append(a, &entries).unwrap(), 5);
            assert_eq!(
                s.append(a, &entries[..2]).unwrap(),
                5,
                "duplicates are skipped"
            );
            let gap = s.append(a, &[entry(7, &put(9))]).unwrap_err();
            assert!(matches!(gap, StoreError::Gap { logged: 5, got: 7 }));
            let results = s.apply(a, 3, "id").unwrap();
            assert_eq!(results.len(), 3);
            let m = s.meta(a).unwrap();
            assert_eq!((m.epoch, m.logged, m.applied), (0, 5, 3));
            assert_eq!(
                m.clock.now_ms,
                T0 + 3,
                "the clock of the last applied entry"
            );
            s.append(b, &[entry(1, &put(100))]).unwrap();
            s.apply(b, 1, "id").unwrap();
        }
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        s.apply(a, 10, "id").unwrap();
        assert_eq!(s.meta(a).unwrap().applied, 5);
        let rows = s.scan(a, None, None, 100).unwrap();
        let keys: Vec<RowKey> = rows.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            (1..=5).map(RowKey::Int).collect::<Vec<_>>(),
            "key order, shard a only"
        );
        let some = s
            .scan(a, Some(&RowKey::Int(2)), Some(&RowKey::Int(4)), 100)
            .unwrap();
        assert_eq!(some.len(), 2);
        assert_eq!(s.scan(a, None, None, 2).unwrap().len(), 2);
        assert_eq!(s.get(a, &RowKey::Int(5)).unwrap().unwrap().version, 1);
        assert_eq!(s.log_range(a, 2, 4).unwrap().len(), 3);
        assert_ne!(s.checksum(a).unwrap(), s.checksum(b).unwrap());
        s.drop_shard(a).unwrap();
        assert!(s.scan(a, None, None, 10).unwrap().is_empty());
        assert_eq!(s.meta(a).unwrap(), ShardMeta::default());
        assert_eq!(
            s.scan(b, None, None, 10).unwrap().len(),
            1,
            "other shards untouched"
        );
    }

    #[test]
    fn reconcile_drops_the_unagreed_tail_and_snapshots_copy_rows() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let store = ShardStore::open(&env).unwrap();
        let id = ShardPrefix { table: 1, shard: 0 };
        let entries: Vec<LogEntry> = (1..=5).map(|i| entry(i, &put(i as i64))).collect();
        store.append(id, &entries).unwrap();
        store.apply(id, 3, "id").unwrap();
        store.reconcile(id, 1, 2).unwrap();
        let m = store.meta(id).unwrap();
        assert_eq!(
            (m.logged, m.applied, m.epoch),
            (3, 3, 2),
            "never below applied"
        );
        assert!(store.log_range(id, 4, 5).unwrap().is_empty());
        store.append(id, &[entry(4, &put(40))]).unwrap();

        let copy = ShardPrefix { table: 1, shard: 1 };
        let mut meta = None;
        let mut chunks = Vec::new();
        let rows = store
            .snapshot(
                id,
                1,
                |m, _| {
                    meta = Some(m);
                    true
                },
                |kind, c| {
                    chunks.push((kind, c));
                    true
                },
            )
            .unwrap();
        assert_eq!(rows, 3);
        let kinds: Vec<ChunkKind> = chunks.iter().map(|c| c.0).collect();
        assert_eq!(
            kinds,
            [ChunkKind::Rows; 3]
                .into_iter()
                .chain([ChunkKind::Sessions])
                .collect::<Vec<_>>(),
            "one row per chunk at 1 byte a chunk, then the client's session"
        );
        for (kind, c) in &chunks {
            store.install(copy, *kind, c).unwrap();
        }
        let meta = meta.unwrap();
        store
            .finish_install(copy, meta.applied, meta.clock, 2, &Default::default())
            .unwrap();
        assert_eq!(store.checksum(copy).unwrap(), store.checksum(id).unwrap());
        assert_eq!(store.meta(copy).unwrap().logged, 3);
    }

    #[test]
    fn identical_logs_give_identical_checksums() {
        let ops: Vec<Op> = vec![
            put(1),
            put(2),
            Op::Update {
                key: RowKey::Int(1),
                patch: r#"{"x":1}"#.into(),
                if_version: Some(1),
            },
            Op::Delete {
                key: RowKey::Int(2),
                if_version: None,
            },
            Op::Insert {
                key: RowKey::Int(1),
                row: r#"{"id":1}"#.into(),
            },
        ];
        let entries: Vec<LogEntry> = ops
            .iter()
            .enumerate()
            .map(|(i, o)| entry(i as u64 + 1, o))
            .collect();
        let sums: Vec<u64> = (0..2)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let env = crate::storage::open_env(dir.path()).unwrap();
                let s = ShardStore::open(&env).unwrap();
                let id = ShardPrefix { table: 3, shard: 2 };
                s.append(id, &entries).unwrap();
                let results = s.apply(id, 5, "id").unwrap();
                assert!(
                    results[4].1.is_err(),
                    "insert of an existing row fails on every copy"
                );
                s.checksum(id).unwrap()
            })
            .collect();
        assert_eq!(sums[0], sums[1]);
    }

    #[test]
    fn a_split_marker_moves_the_childs_rows_and_copies_the_sessions_once() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let parent = ShardPrefix { table: 1, shard: 0 };
        let child = ShardPrefix { table: 1, shard: 2 };
        for (range, owns) in [
            (
                KeyRange::Range {
                    start: Some(RowKey::Int(6)),
                    end: None,
                },
                Box::new(|k: i64| k >= 6) as Box<dyn Fn(i64) -> bool>,
            ),
            (
                KeyRange::HashSlot { slot: 1, of: 2 },
                Box::new(|k: i64| RowKey::Int(k).hash_slot(2) == 1),
            ),
        ] {
            s.drop_shard(parent).unwrap();
            s.drop_shard(child).unwrap();
            let mut log: Vec<LogEntry> = (1..=10).map(|i| entry(i as u64, &put(i))).collect();
            let split = Op::Split {
                child: 2,
                range: range.clone(),
                born: (2, 700),
            };
            log.push(entry(11, &split));
            log.push(entry(12, &split)); // logged again by a second primary
            s.append(parent, &log).unwrap();
            s.record_epochs(&[(child, 2)]).unwrap(); // the node saw the map first
            assert!(!s.built(child, Some((2, 700))).unwrap());
            s.apply(parent, 10, "id").unwrap();
            let all = s.checksum(parent).unwrap();
            s.apply(parent, 11, "id").unwrap();
            assert!(
                s.built(child, Some((2, 700))).unwrap()
                    && s.split_done(parent, 2, (2, 700)).unwrap()
            );
            // The child's log goes on from the marker's position.
            let m = s.meta(child).unwrap();
            assert_eq!((m.logged, m.applied, m.log_start), (11, 11, 12));
            // A write to the child after the split, then the second marker.
            s.append(child, &[request(12, 50, &put(7))]).unwrap();
            s.apply(child, 12, "id").unwrap();
            s.apply(parent, 12, "id").unwrap();
            let keys = |id| -> Vec<i64> {
                s.scan(id, None, None, 100)
                    .unwrap()
                    .into_iter()
                    .map(|(k, _)| match k {
                        RowKey::Int(i) => i,
                        RowKey::Str(_) => unreachable!(),
                    })
                    .collect()
            };
            let want_child: Vec<i64> = (1..=10).filter(|k| owns(*k)).collect();
            let want_parent: Vec<i64> = (1..=10).filter(|k| !owns(*k)).collect();
            assert_eq!(keys(child), want_child, "{range}");
            assert_eq!(keys(parent), want_parent, "{range}");
            assert_eq!(
                s.get(child, &RowKey::Int(7)).unwrap().unwrap().version,
                12,
                "the child's own write survives the second marker"
            );
            assert_ne!(s.checksum(parent).unwrap(), all);
            // Rows are accounted for as they move, as a scan counts them.
            for id in [parent, child] {
                let (m, v) = (s.meta(id).unwrap(), s.verify(id).unwrap());
                assert_eq!((m.rows, m.row_bytes), (v.rows, v.row_bytes), "{id}");
            }
            // The sessions came along: a resend of request 3 to the child
            // gets its first outcome and writes nothing.
            assert_eq!(s.session_count(child).unwrap(), 1);
            s.append(child, &[request(13, 3, &put(3))]).unwrap();
            assert_eq!(
                s.apply(child, 13, "id").unwrap()[0].1,
                Ok(OpResult::Written { version: 3 })
            );
        }
        s.drop_shard(parent).unwrap();
        assert!(
            !s.split_done(parent, 2, (2, 700)).unwrap(),
            "dropped with the shard"
        );
    }

    /// Shard 1/0 with rows 1..=10, split at entry 11: rows 6 and up go to
    /// 1/1.
    fn split_at_11(s: &ShardStore) -> (ShardPrefix, ShardPrefix) {
        let parent = ShardPrefix { table: 1, shard: 0 };
        let child = ShardPrefix { table: 1, shard: 1 };
        let mut log: Vec<LogEntry> = (1..=10).map(|i| entry(i as u64, &put(i))).collect();
        log.push(entry(11, &split_off(1, 6, FIRST)));
        s.append(parent, &log).unwrap();
        s.apply(parent, 11, "id").unwrap();
        (parent, child)
    }

    /// The births of two shards at index 1, split off shard 0 before and
    /// after a merge.
    const FIRST: (u64, u64) = (2, 1_000);
    const SECOND: (u64, u64) = (5, 9_000);

    /// The marker splitting the keys from `from` up off to `child`, born
    /// `born`.
    fn split_off(child: u32, from: i64, born: (u64, u64)) -> Op {
        Op::Split {
            child,
            born,
            range: KeyRange::Range {
                start: Some(RowKey::Int(from)),
                end: None,
            },
        }
    }

    /// The (integer) keys of a copy's rows, in order.
    fn ints(s: &ShardStore, id: ShardPrefix) -> Vec<i64> {
        s.scan(id, None, None, 1000)
            .unwrap()
            .into_iter()
            .map(|(k, _)| match k {
                RowKey::Int(i) => i,
                RowKey::Str(_) => unreachable!(),
            })
            .collect()
    }

    /// A whole snapshot of `id`: its metadata, marks and chunks.
    type Snap = (
        ShardMeta,
        SnapshotMarks,
        Vec<(ChunkKind, Vec<(Vec<u8>, Vec<u8>)>)>,
    );

    fn snap(s: &ShardStore, id: ShardPrefix) -> Snap {
        let (mut head, mut chunks) = (None, Vec::new());
        s.snapshot(
            id,
            1 << 20,
            |m, marks| {
                head = Some((m, marks));
                true
            },
            |kind, c| {
                chunks.push((kind, c));
                true
            },
        )
        .unwrap();
        let (m, marks) = head.unwrap();
        (m, marks, chunks)
    }

    /// Installs `snap` as copy `id` of `s`, recorded at epoch 1.
    fn install_snap(s: &ShardStore, id: ShardPrefix, snap: &Snap) {
        let (m, marks, chunks) = snap;
        s.begin_install(id).unwrap();
        for (kind, c) in chunks {
            s.install(id, *kind, c).unwrap();
        }
        s.finish_install(id, m.applied, m.clock, 1, marks).unwrap();
    }

    fn counted_as_scanned(s: &ShardStore, id: ShardPrefix) {
        let (m, v) = (s.meta(id).unwrap(), s.verify(id).unwrap());
        assert_eq!((m.rows, m.row_bytes), (v.rows, v.row_bytes), "{id}");
    }

    #[test]
    fn a_merge_moves_the_absorbed_shards_rows_and_sessions_and_goes_on_past_both() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let (keep, absorb) = split_at_11(&s);
        s.record_epochs(&[(keep, 3)]).unwrap();
        // Writes to both after the split: client 1 on both, client 2 on
        // the child only. Keep logged one more it never applied.
        s.append(
            absorb,
            &[
                request(12, 20, &put(100)),
                request_of(2, 13, 1, &put(101)),
                request(
                    14,
                    21,
                    &Op::Update {
                        key: RowKey::Int(7),
                        patch: r#"{"x":1}"#.into(),
                        if_version: None,
                    },
                ),
            ],
        )
        .unwrap();
        s.apply(absorb, 14, "id").unwrap();
        s.append(
            keep,
            &[
                request(12, 30, &put(0)),
                request(13, 31, &put(-1)),
                request(14, 32, &put(-2)),
            ],
        )
        .unwrap();
        s.apply(keep, 13, "id").unwrap();
        let moving = s.verify(absorb).unwrap();

        // Positions other than the copies' own: nothing is written.
        let state = |s: &ShardStore| {
            [keep, absorb].map(|id| (s.meta(id).unwrap(), s.checksum(id).unwrap()))
        };
        let before = state(&s);
        for (sk, sa) in [(13, 13), (12, 14), (13, 15)] {
            match s.merge(keep, (absorb, Some(FIRST)), sk, sa).unwrap() {
                MergeOutcome::Mismatch(why) => {
                    assert!(
                        why.contains("shard 1/0") && why.contains("shard 1/1"),
                        "{why}"
                    )
                }
                other => panic!("{sk}, {sa}: {other:?}"),
            }
            assert_eq!(state(&s), before);
        }
        assert!(s.split_done(keep, 1, FIRST).unwrap());
        // What is held at the index is not the shard the merge absorbs
        // (another shard split off there since): nothing is written.
        for born in [Some(SECOND), None] {
            let r = s.merge(keep, (absorb, born), 13, 14).unwrap();
            assert!(
                matches!(&r, MergeOutcome::Mismatch(why) if why.contains("another shard")),
                "{r:?}"
            );
            assert_eq!(state(&s), before);
        }

        assert_eq!(
            s.merge(keep, (absorb, Some(FIRST)), 13, 14).unwrap(),
            MergeOutcome::Merged {
                rows: moving.rows,
                bytes: moving.row_bytes
            }
        );
        let mut want: Vec<i64> = (-1..=10).chain([100, 101]).collect();
        want.sort_by_key(|i| RowKey::Int(*i).encode());
        assert_eq!(ints(&s, keep), want);
        assert_eq!(s.get(keep, &RowKey::Int(7)).unwrap().unwrap().version, 14);
        // The log goes on from 15, a position neither copy was at.
        let m = s.meta(keep).unwrap();
        assert_eq!(
            (m.epoch, m.logged, m.applied, m.log_start, m.log_bytes),
            (3, 15, 15, 16, 0)
        );
        assert_eq!(m.clock.now_ms, T0 + 14, "the later clock");
        assert_eq!(s.log_size(keep).unwrap(), (0, 0), "the unapplied tail too");
        counted_as_scanned(&s, keep);
        // Nothing is left of the shard merged away but the mark saying so
        // (a read still queued at its copy is refused), nor of its split.
        assert_eq!(s.meta(absorb).unwrap(), ShardMeta::default());
        assert_eq!(s.verify(absorb).unwrap().rows, 0);
        assert_eq!(s.session_count(absorb).unwrap(), 0);
        assert!(s.merged_away(absorb).unwrap() && !s.merged_away(keep).unwrap());
        assert!(!s.built(absorb, Some(FIRST)).unwrap() && !s.split_done(keep, 1, FIRST).unwrap());

        // Both shards' sessions: resends get their first outcomes.
        assert_eq!(s.session_count(keep).unwrap(), 2);
        s.append(
            keep,
            &[
                request(16, 20, &put(999)),
                request_of(2, 17, 1, &put(999)),
                request(18, 31, &put(999)),
                request(19, 40, &put(5)),
            ],
        )
        .unwrap();
        let written = |v| Ok(OpResult::Written { version: v });
        let outcomes: Vec<_> = s.apply(keep, 19, "id").unwrap();
        let outcomes: Vec<_> = outcomes.into_iter().map(|(_, o)| o).collect();
        assert_eq!(
            outcomes,
            [written(12), written(13), written(13), written(19)]
        );
        assert_eq!(s.get(keep, &RowKey::Int(100)).unwrap().unwrap().version, 12);
        counted_as_scanned(&s, keep);

        // Done once: a second call finds the copy past the merge.
        let sum = s.checksum(keep).unwrap();
        assert_eq!(
            s.merge(keep, (absorb, Some(FIRST)), 13, 14).unwrap(),
            MergeOutcome::AlreadyDone
        );
        assert_eq!(s.checksum(keep).unwrap(), sum);
    }

    #[test]
    fn a_split_reusing_a_merged_index_builds_the_child_afresh_over_a_stale_copy() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let (keep, child) = split_at_11(&s);
        // A split mark names its child's birth: a later split to the same
        // index (after a merge, by this shard or another) is not done yet.
        assert!(s.split_done(keep, 1, FIRST).unwrap());
        assert!(!s.split_done(keep, 1, SECOND).unwrap());
        // A copy of the child as it was at its birth (say, one moved off
        // a node that kept its data), then writes the child takes after.
        let old = snap(&s, child);
        s.append(
            child,
            &[
                request(
                    12,
                    20,
                    &Op::Update {
                        key: RowKey::Int(9),
                        patch: r#"{"x":1}"#.into(),
                        if_version: None,
                    },
                ),
                request(
                    13,
                    21,
                    &Op::Delete {
                        key: RowKey::Int(7),
                        if_version: None,
                    },
                ),
            ],
        )
        .unwrap();
        s.apply(child, 13, "id").unwrap();
        assert!(matches!(
            s.merge(keep, (child, Some(FIRST)), 11, 13).unwrap(),
            MergeOutcome::Merged { rows: 4, .. }
        ));
        // What is left of the old child on this node: a copy, but not one
        // of the child the merged shard splits off next.
        install_snap(&s, child, &old);
        assert_eq!(ints(&s, child), [6, 7, 8, 9, 10]);
        assert!(s.built(child, Some(FIRST)).unwrap());
        assert!(!s.built(child, Some(SECOND)).unwrap());

        // The merged shard splits the same keys off to the same index.
        s.append(keep, &[entry(15, &split_off(1, 6, SECOND))])
            .unwrap();
        s.apply(keep, 15, "id").unwrap();
        assert!(s.built(child, Some(SECOND)).unwrap() && !s.merged_away(child).unwrap());
        assert_eq!(ints(&s, child), [6, 8, 9, 10], "row 7 was deleted");
        assert_eq!(s.get(child, &RowKey::Int(9)).unwrap().unwrap().version, 12);
        assert_eq!(ints(&s, keep), [1, 2, 3, 4, 5]);
        let m = s.meta(child).unwrap();
        assert_eq!((m.logged, m.applied, m.log_start), (15, 15, 16));
        counted_as_scanned(&s, child);
        counted_as_scanned(&s, keep);
        // The marker logged again leaves the new child alone.
        s.append(child, &[request(16, 50, &put(8))]).unwrap();
        s.apply(child, 16, "id").unwrap();
        s.append(keep, &[entry(16, &split_off(1, 6, SECOND))])
            .unwrap();
        s.apply(keep, 16, "id").unwrap();
        assert_eq!(s.get(child, &RowKey::Int(8)).unwrap().unwrap().version, 16);
    }

    #[test]
    fn a_copy_installed_from_a_merged_shard_beside_a_stale_copy_of_the_absorbed_one_splits_anew() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let (keep, child) = split_at_11(&s);
        let old = snap(&s, child);
        assert_eq!(
            s.merge(keep, (child, Some(FIRST)), 11, 11).unwrap(),
            MergeOutcome::Merged {
                rows: 5,
                bytes: old.0.row_bytes
            }
        );
        let merged = snap(&s, keep);
        assert_eq!(
            merged.1,
            SnapshotMarks::default(),
            "no split marks after the merge"
        );
        assert_eq!(old.1.born, Some(FIRST), "a snapshot carries the birth");

        // Another node, holding what is left of the old child.
        let dir2 = tempfile::tempdir().unwrap();
        let env2 = crate::storage::open_env(dir2.path()).unwrap();
        let t = ShardStore::open(&env2).unwrap();
        install_snap(&t, child, &old);
        install_snap(&t, keep, &merged);
        assert_eq!(t.checksum(keep).unwrap(), s.checksum(keep).unwrap());
        assert_eq!(t.meta(keep).unwrap().applied, 12);
        assert!(t.built(child, Some(FIRST)).unwrap());
        assert!(!t.built(child, Some(SECOND)).unwrap());
        assert_eq!(snap(&t, keep).1, merged.1, "served on as received");
        // A child split off it later is built here from its rows.
        t.append(keep, &[entry(13, &split_off(1, 8, SECOND))])
            .unwrap();
        t.apply(keep, 13, "id").unwrap();
        assert!(t.built(child, Some(SECOND)).unwrap());
        assert_eq!(ints(&t, child), [8, 9, 10]);
        assert_eq!(ints(&t, keep), [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_split_never_builds_into_a_copy_being_installed_from_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let parent = ShardPrefix { table: 1, shard: 0 };
        let child = ShardPrefix { table: 1, shard: 1 };
        let mut log: Vec<LogEntry> = (1..=4).map(|i| entry(i as u64, &put(i))).collect();
        let range = KeyRange::Range {
            start: Some(RowKey::Int(3)),
            end: None,
        };
        log.push(entry(
            5,
            &Op::Split {
                child: 1,
                range,
                born: FIRST,
            },
        ));
        s.append(parent, &log).unwrap();
        s.apply(parent, 4, "id").unwrap();
        // The child's copy starts installing a snapshot; then the parent
        // applies the marker: the parent's rows 3 and 4 go, none is
        // written into the copy being installed.
        s.begin_install(child).unwrap();
        s.apply(parent, 5, "id").unwrap();
        assert_eq!(s.scan(parent, None, None, 10).unwrap().len(), 2);
        assert!(s.scan(child, None, None, 10).unwrap().is_empty());
        assert!(!s.built(child, Some(FIRST)).unwrap() && s.split_done(parent, 1, FIRST).unwrap());
        let marks = SnapshotMarks {
            splits: vec![],
            born: Some(FIRST),
        };
        s.finish_install(child, 5, SessionClock::default(), 2, &marks)
            .unwrap();
        assert!(s.built(child, Some(FIRST)).unwrap());
    }

    #[test]
    fn a_request_logged_twice_is_applied_once_on_every_copy_and_after_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let a = ShardPrefix { table: 1, shard: 0 };
        let put = |v: &str| Op::Put {
            key: RowKey::Int(6),
            row: serde_json::json!({"id": 6, "v": v}).to_string(),
        };
        // Request 1 writes A (entry 1); request 2 writes B (entry 2); then
        // request 1 is logged again (a resend, entry 3).
        s.append(
            a,
            &[
                request(1, 1, &put("A")),
                request(2, 2, &put("B")),
                request(3, 1, &put("A")),
            ],
        )
        .unwrap();
        let results = s.apply(a, 3, "id").unwrap();
        assert_eq!(results[0].1, Ok(OpResult::Written { version: 1 }));
        assert_eq!(
            results[2].1,
            Ok(OpResult::Written { version: 1 }),
            "the resend gets the first outcome"
        );
        let row = s.get(a, &RowKey::Int(6)).unwrap().unwrap();
        assert_eq!(row.version, 2, "B stays: A is not applied a second time");
        assert!(row.json.contains("\"B\""));
        assert_eq!(s.session_count(a).unwrap(), 1);

        // A copy made from a snapshot remembers request 1 as well.
        let b = ShardPrefix { table: 1, shard: 1 };
        let mut meta = None;
        s.snapshot(
            a,
            1 << 20,
            |m, _| {
                meta = Some(m);
                true
            },
            |kind, c| {
                s.install(b, kind, &c).unwrap();
                true
            },
        )
        .unwrap();
        let meta = meta.unwrap();
        s.finish_install(b, meta.applied, meta.clock, 1, &Default::default())
            .unwrap();
        assert_eq!(s.checksum(a).unwrap(), s.checksum(b).unwrap());
        for id in [a, b] {
            let (m, v) = (s.meta(id).unwrap(), s.verify(id).unwrap());
            assert_eq!((m.rows, m.row_bytes), (v.rows, v.row_bytes), "{id}");
        }
        s.append(b, &[request(4, 1, &put("A"))]).unwrap();
        assert_eq!(
            s.apply(b, 4, "id").unwrap()[0].1,
            Ok(OpResult::Written { version: 1 })
        );
        assert_eq!(s.get(b, &RowKey::Int(6)).unwrap().unwrap().version, 2);
    }

    #[test]
    fn idle_clients_are_swept_out_by_shard_time() {
        use tstore_core::data::sessions::CLIENT_TTL_MS;
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let a = ShardPrefix { table: 1, shard: 0 };
        s.append(a, &[entry(1, &put(1))]).unwrap();
        s.apply(a, 1, "id").unwrap();
        assert_eq!(s.session_count(a).unwrap(), 1);
        // Another client writes long after: the first one is forgotten.
        let later = Command {
            id: RequestId {
                client: ClientId::new(T0 + 2 * CLIENT_TTL_MS, 2),
                seq: 1,
                first_incomplete: 1,
            },
            at_ms: T0 + 2 * CLIENT_TTL_MS,
            op: put(2),
        };
        s.append(
            a,
            &[LogEntry {
                epoch: 1,
                seq: 2,
                op: encode(&later),
            }],
        )
        .unwrap();
        s.apply(a, 2, "id").unwrap();
        assert_eq!(
            s.session_count(a).unwrap(),
            1,
            "only the new client is left"
        );
        // A resend from the forgotten client is refused, not applied.
        s.append(a, &[request(3, 1, &put(1))]).unwrap();
        let res = s.apply(a, 3, "id").unwrap();
        assert!(matches!(res[0].1, Err(OpError::Expired(_))), "{:?}", res[0]);
    }

    #[test]
    fn truncation_deletes_the_head_by_entries_then_bytes_never_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let a = ShardPrefix { table: 1, shard: 0 };
        let other = ShardPrefix { table: 1, shard: 1 };
        let entries: Vec<LogEntry> = (1..=100).map(|i| entry(i, &put(i as i64))).collect();
        s.append(a, &entries).unwrap();
        s.append(other, &entries[..10]).unwrap();
        s.apply(a, 80, "id").unwrap();
        let (n, bytes) = s.log_size(a).unwrap();
        assert_eq!((n, bytes), (100, s.meta(a).unwrap().log_bytes));
        let each = bytes / 100;
        let truncate = |t: Truncate| {
            let work = Work {
                id: a,
                entries: vec![],
                apply: None,
                truncate: Some(t),
            };
            s.commit_batch(&[work]).pop().unwrap().unwrap();
            let m = s.meta(a).unwrap();
            let (n, bytes) = s.log_size(a).unwrap();
            assert_eq!(bytes, m.log_bytes);
            assert_eq!(n, m.logged + 1 - m.log_start);
            m.log_start
        };
        // By entries, with a byte bound that is not reached.
        let t = Truncate {
            below: 21,
            limit: 41,
            max_bytes: u64::MAX,
        };
        assert_eq!(truncate(t), 21);
        assert!(s.log_range(a, 1, 20).unwrap().is_empty());
        assert_eq!(s.log_range(a, 21, 21).unwrap().len(), 1);
        // The byte bound deletes more, up to the limit and no further.
        let t = Truncate {
            below: 21,
            limit: 41,
            max_bytes: 0,
        };
        assert_eq!(truncate(t), 41);
        // Within the bytes: from the oldest, just enough.
        let t = Truncate {
            below: 0,
            limit: 81,
            max_bytes: 50 * each,
        };
        let start = truncate(t);
        assert!((51..=52).contains(&start), "{start}");
        // Never past what the rows reflect.
        let t = Truncate {
            below: 101,
            limit: 101,
            max_bytes: 0,
        };
        assert_eq!(truncate(t), 81);
        assert_eq!(s.log_size(other).unwrap().0, 10, "other shards untouched");
        // A snapshot install resets the log.
        s.finish_install(a, 90, SessionClock::default(), 2, &Default::default())
            .unwrap();
        let m = s.meta(a).unwrap();
        assert_eq!((m.log_start, m.logged, m.log_bytes), (91, 90, 0));
        assert_eq!(s.log_size(a).unwrap(), (0, 0));
    }

    /// Flips one bit of the stored value under `key` in `db`, as a disk
    /// might.
    fn flip(s: &ShardStore, db: Db, key: &[u8], at: usize) {
        let mut wtxn = s.env.write_txn().unwrap();
        let mut v = db.get(&wtxn, key).unwrap().unwrap().to_vec();
        let i = at.min(v.len() - 1);
        v[i] ^= 0x04;
        db.put(&mut wtxn, key, &v).unwrap();
        wtxn.commit().unwrap();
    }

    fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>, names: &str) {
        match r {
            Err(e @ StoreError::Corrupt { .. }) => {
                assert!(e.is_corrupt());
                assert!(e.to_string().contains(names), "{e} should name {names}");
            }
            other => panic!("expected a corrupt record naming {names}, got {other:?}"),
        }
    }

    #[test]
    fn a_flipped_byte_in_a_row_is_reported_and_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let a = ShardPrefix { table: 7, shard: 3 };
        let entries: Vec<LogEntry> = (1..=3).map(|i| entry(i, &put(i as i64))).collect();
        s.append(a, &entries).unwrap();
        s.apply(a, 3, "id").unwrap();
        let good = s.checksum(a).unwrap();
        let key = a.key(&RowKey::Int(2).encode());
        // A byte inside the row's content (past the checksum).
        let len = s
            .rows
            .get(&s.env.read_txn().unwrap(), &key)
            .unwrap()
            .unwrap()
            .len();
        flip(&s, s.rows, &key, len - 3);
        assert_corrupt(s.get(a, &RowKey::Int(2)), "shard 7/3 key Int(2)");
        assert_eq!(
            s.get(a, &RowKey::Int(1)).unwrap().unwrap().version,
            1,
            "other rows read"
        );
        assert_corrupt(s.scan(a, None, None, 10), "key Int(2)");
        assert_eq!(
            s.scan(a, None, None, 1).unwrap().len(),
            1,
            "rows before it scan"
        );
        assert_corrupt(s.verify(a), "key Int(2)");
        assert_corrupt(s.checksum(a), "key Int(2)");
        assert_corrupt(
            s.snapshot(a, 1 << 20, |_, _| true, |_, _| true),
            "key Int(2)",
        );
        // Applying an entry that reads the row fails rather than writing a
        // wrong outcome; one that does not read it applies.
        let patch = Op::Update {
            key: RowKey::Int(2),
            patch: r#"{"x":1}"#.into(),
            if_version: None,
        };
        s.append(a, &[entry(4, &patch)]).unwrap();
        assert_corrupt(s.apply(a, 4, "id"), "key Int(2)");
        assert_eq!(s.meta(a).unwrap().applied, 3, "nothing applied");
        // The checksum's own bytes are covered too.
        flip(&s, s.rows, &key, len - 3);
        assert_eq!(s.checksum(a).unwrap(), good, "flipped back: whole again");
        flip(&s, s.rows, &key, 0);
        assert_corrupt(s.get(a, &RowKey::Int(2)), "checksum mismatch");
        // A snapshot chunk damaged on the way is not installed.
        let b = ShardPrefix { table: 7, shard: 4 };
        let mut bad = encode_sealed(&s.get(a, &RowKey::Int(1)).unwrap().unwrap());
        bad[6] ^= 1;
        assert_corrupt(
            s.install(b, ChunkKind::Rows, &[(RowKey::Int(1).encode(), bad)]),
            "shard 7/4 key Int(1)",
        );
        assert_eq!(s.verify(b).unwrap().rows, 0);
    }

    #[test]
    fn a_flipped_byte_in_a_log_entry_is_reported_at_replay_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::storage::open_env(dir.path()).unwrap();
        let s = ShardStore::open(&env).unwrap();
        let a = ShardPrefix { table: 1, shard: 0 };
        let entries: Vec<LogEntry> = (1..=4).map(|i| entry(i, &put(i as i64))).collect();
        s.append(a, &entries).unwrap();
        let stored: u64 = s.log_size(a).unwrap().1;
        assert_eq!(stored, s.meta(a).unwrap().log_bytes, "stored bytes counted");
        assert_eq!(
            stored,
            entries
                .iter()
                .map(|e| (SUM_BYTES + encode(e).len()) as u64)
                .sum::<u64>()
        );
        s.apply(a, 1, "id").unwrap();
        let key = a.key(&3u64.to_be_bytes());
        flip(&s, s.log, &key, 9);
        assert_corrupt(s.log_range(a, 1, 4), "shard 1/0 seq 3");
        assert_eq!(
            s.log_range(a, 1, 2).unwrap().len(),
            2,
            "entries before it read"
        );
        // Replay stops at the bad entry: nothing of it, or after it, applies.
        assert_corrupt(s.apply(a, 4, "id"), "seq 3");
        assert_eq!(s.meta(a).unwrap().applied, 1);
        let w = Work {
            id: a,
            entries: vec![],
            apply: Some((4, "id".into())),
            truncate: None,
        };
        assert_corrupt(s.commit_batch(&[w]).pop().unwrap(), "seq 3");
        assert_eq!(s.meta(a).unwrap().applied, 1);
        assert!(
            s.get(a, &RowKey::Int(3)).unwrap().is_none(),
            "never applied"
        );
    }

    #[test]
    fn meta_stored_before_truncation_is_read_as_a_log_from_1() {
        #[derive(Serialize)]
        struct Old {
            epoch: Epoch,
            logged: Seq,
            applied: Seq,
            clock: SessionClock,
        }
        let old = encode(&Old {
            epoch: 3,
            logged: 9,
            applied: 8,
            clock: SessionClock::default(),
        });
        let m = decode_meta(&old).unwrap();
        assert_eq!((m.epoch, m.logged, m.applied, m.log_start), (3, 9, 8, 1));
        assert_eq!(decode_meta(&encode(&m)).unwrap(), m);
    }
}
