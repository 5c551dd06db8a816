//! Table operations, evaluated deterministically when a committed log entry
//! is applied.
//!
//! Every copy of a shard applies the same entries in the same order, so
//! conditions (insert-if-absent, `--if-version`) are checked at apply time
//! against the rows as they are at that point of the log; every copy reaches
//! the same verdict. A failed condition writes nothing and is the entry's
//! result. A row's version is the sequence number of the entry that last
//! wrote it, so versions grow with every write.
//!
//! [`evaluate`] is pure: it reads rows through a lookup function and returns
//! the result and the writes to make; a batch is all or nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster_map::RowKey;
use crate::keys::KeyError;

/// Largest row accepted, as JSON text.
pub const MAX_ROW_BYTES: usize = 64 * 1024;
/// Most operations in one batch.
pub const MAX_BATCH: usize = 1000;

/// A row as stored: its JSON text and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRecord {
    pub version: u64,
    pub json: String,
}

/// One write to a shard, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create or replace the row.
    Put { key: RowKey, row: String },
    /// Create the row; fails if it exists.
    Insert { key: RowKey, row: String },
    /// Merge columns into an existing row.
    Update {
        key: RowKey,
        patch: String,
        if_version: Option<u64>,
    },
    Delete {
        key: RowKey,
        if_version: Option<u64>,
    },
    /// All or nothing, within one shard.
    Batch(Vec<Op>),
    /// Not a client's write: the marker a shard's primary logs when the map
    /// splits the shard (`MapCommand::SplitShard`). Every copy applying it
    /// moves the rows in `range` to shard `child` of the same table and
    /// copies its client sessions there, at the same position of the log
    /// (`tstore_actors` store, "Splits"). `born` names the child: its
    /// `cluster_map::Origin` (epoch, time), which marks every copy built
    /// for it, so a copy left over from a shard merged away at the same
    /// index is never taken for it.
    Split {
        child: u32,
        range: crate::cluster_map::KeyRange,
        born: (u64, u64),
    },
}

impl Op {
    /// The row that places the operation in a shard: its key, a batch's
    /// first operation's; `None` for an empty batch or a split marker.
    pub fn first_key(&self) -> Option<&RowKey> {
        match self {
            Op::Batch(ops) => ops.first().and_then(Op::key),
            other => other.key(),
        }
    }

    /// The row the operation writes; `None` for a batch.
    pub fn key(&self) -> Option<&RowKey> {
        match self {
            Op::Put { key, .. }
            | Op::Insert { key, .. }
            | Op::Update { key, .. }
            | Op::Delete { key, .. } => Some(key),
            Op::Batch(_) | Op::Split { .. } => None,
        }
    }
}

/// Why an operation wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    #[error("row {key} already exists (version {version})")]
    Exists { key: String, version: u64 },
    #[error("row {key} does not exist")]
    NotFound { key: String },
    #[error(
        "condition failed on row {key}: expected version {expected}, current version is {current}"
    )]
    VersionMismatch {
        key: String,
        expected: u64,
        current: String,
    },
    #[error("invalid row: {0}")]
    InvalidRow(String),
    #[error("row too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    Key(String),
    #[error("batch failed at operation {index}: {cause}")]
    Batch { index: usize, cause: Box<OpError> },
    /// The request's client session is not known here any more (see
    /// `data::sessions`): it was not applied now, and may have been before.
    #[error("{0}")]
    Expired(String),
}

impl From<KeyError> for OpError {
    fn from(e: KeyError) -> Self {
        OpError::Key(e.to_string())
    }
}

/// The outcome of one applied operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Written {
        version: u64,
    },
    /// The row was deleted by entry `seq`.
    Deleted {
        seq: u64,
    },
    Batch(Vec<OpResult>),
}

/// A row write to make: `None` deletes.
pub type Writes = BTreeMap<RowKey, Option<RowRecord>>;

/// Parses and checks a row for `key_column`; returns its key.
pub fn check_row(json: &str, key_column: &str) -> Result<(RowKey, serde_json::Value), OpError> {
    if json.len() > MAX_ROW_BYTES {
        return Err(OpError::TooLarge(format!(
            "{} bytes exceeds the limit of {MAX_ROW_BYTES} bytes",
            json.len()
        )));
    }
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| OpError::InvalidRow(format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(OpError::InvalidRow("a row must be a JSON object".into()));
    }
    let key = RowKey::from_row(&value, key_column)?;
    Ok((key, value))
}

/// Evaluates `op` as entry `seq`, reading current rows through `lookup`.
pub fn evaluate(
    op: &Op,
    seq: u64,
    key_column: &str,
    lookup: &dyn Fn(&RowKey) -> Option<RowRecord>,
) -> (Result<OpResult, OpError>, Writes) {
    let mut writes = Writes::new();
    let res = eval_into(op, seq, key_column, lookup, &mut writes);
    if res.is_err() {
        writes.clear();
    }
    (res, writes)
}

fn eval_into(
    op: &Op,
    seq: u64,
    key_column: &str,
    lookup: &dyn Fn(&RowKey) -> Option<RowRecord>,
    writes: &mut Writes,
) -> Result<OpResult, OpError> {
    // Reads see this batch's earlier writes.
    let current = |key: &RowKey, writes: &Writes| match writes.get(key) {
        Some(w) => w.clone(),
        None => lookup(key),
    };
    match op {
        Op::Put { key, row } | Op::Insert { key, row } => {
            let (row_key, _) = check_row(row, key_column)?;
            if &row_key != key {
                return Err(OpError::InvalidRow(format!(
                    "key {row_key} does not match {key}"
                )));
            }
            if let (Op::Insert { .. }, Some(existing)) = (op, current(key, writes)) {
                return Err(OpError::Exists {
                    key: key.to_string(),
                    version: existing.version,
                });
            }
            writes.insert(
                key.clone(),
                Some(RowRecord {
                    version: seq,
                    json: row.clone(),
                }),
            );
            Ok(OpResult::Written { version: seq })
        }
        Op::Update {
            key,
            patch,
            if_version,
        } => {
            let existing = current(key, writes).ok_or_else(|| OpError::NotFound {
                key: key.to_string(),
            })?;
            check_version(key, *if_version, Some(existing.version))?;
            let patch: serde_json::Value = serde_json::from_str(patch)
                .map_err(|e| OpError::InvalidRow(format!("update is not JSON: {e}")))?;
            let serde_json::Value::Object(patch) = patch else {
                return Err(OpError::InvalidRow(
                    "an update must be a JSON object".into(),
                ));
            };
            if let Some(k) = patch.get(key_column) {
                if RowKey::from_row(&serde_json::json!({ key_column: k }), key_column)
                    .ok()
                    .as_ref()
                    != Some(key)
                {
                    return Err(OpError::InvalidRow(format!(
                        "an update cannot change the key column {key_column:?}"
                    )));
                }
            }
            let mut row: serde_json::Value = serde_json::from_str(&existing.json)
                .map_err(|e| OpError::InvalidRow(e.to_string()))?;
            let obj = row.as_object_mut().expect("stored rows are objects");
            for (k, v) in patch {
                obj.insert(k, v);
            }
            let json = row.to_string();
            if json.len() > MAX_ROW_BYTES {
                return Err(OpError::TooLarge(format!(
                    "the updated row of {} bytes exceeds the limit of {MAX_ROW_BYTES} bytes",
                    json.len()
                )));
            }
            writes.insert(key.clone(), Some(RowRecord { version: seq, json }));
            Ok(OpResult::Written { version: seq })
        }
        Op::Delete { key, if_version } => {
            let existing = current(key, writes);
            if if_version.is_some() || existing.is_none() {
                check_version(key, *if_version, existing.as_ref().map(|r| r.version))?;
            }
            if existing.is_none() {
                return Err(OpError::NotFound {
                    key: key.to_string(),
                });
            }
            writes.insert(key.clone(), None);
            Ok(OpResult::Deleted { seq })
        }
        Op::Batch(ops) => {
            if ops.len() > MAX_BATCH {
                return Err(OpError::InvalidRow(format!(
                    "batch of {} operations exceeds the limit of {MAX_BATCH}",
                    ops.len()
                )));
            }
            let mut results = Vec::with_capacity(ops.len());
            for (index, op) in ops.iter().enumerate() {
                let r = eval_into(op, seq, key_column, lookup, writes).map_err(|cause| {
                    OpError::Batch {
                        index,
                        cause: Box::new(cause),
                    }
                })?;
                results.push(r);
            }
            Ok(OpResult::Batch(results))
        }
        // Carried out by the store, which sees both shards.
        Op::Split { .. } => Ok(OpResult::Written { version: seq }),
    }
}

fn check_version(key: &RowKey, expected: Option<u64>, current: Option<u64>) -> Result<(), OpError> {
    match (expected, current) {
        (Some(e), Some(c)) if e == c => Ok(()),
        (Some(e), c) => Err(OpError::VersionMismatch {
            key: key.to_string(),
            expected: e,
            current: c.map_or_else(|| "none (no such row)".into(), |v| v.to_string()),
        }),
        (None, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: i64) -> RowKey {
        RowKey::Int(i)
    }

    fn row(i: i64, name: &str) -> String {
        serde_json::json!({"id": i, "name": name}).to_string()
    }

    fn apply(
        rows: &mut BTreeMap<RowKey, RowRecord>,
        op: Op,
        seq: u64,
    ) -> Result<OpResult, OpError> {
        let snapshot = rows.clone();
        let (res, writes) = evaluate(&op, seq, "id", &|key| snapshot.get(key).cloned());
        for (key, w) in writes {
            match w {
                Some(r) => rows.insert(key, r),
                None => rows.remove(&key),
            };
        }
        res
    }

    #[test]
    fn the_briefs_user_rows() {
        let mut rows = BTreeMap::new();
        assert_eq!(
            apply(
                &mut rows,
                Op::Put {
                    key: k(1),
                    row: row(1, "Alice")
                },
                4
            ),
            Ok(OpResult::Written { version: 4 })
        );
        assert_eq!(
            apply(
                &mut rows,
                Op::Insert {
                    key: k(1),
                    row: row(1, "Eve")
                },
                5
            ),
            Err(OpError::Exists {
                key: "1".into(),
                version: 4
            })
        );
        let err = apply(
            &mut rows,
            Op::Update {
                key: k(1),
                patch: r#"{"age":26}"#.into(),
                if_version: Some(3),
            },
            6,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "condition failed on row 1: expected version 3, current version is 4"
        );
        apply(
            &mut rows,
            Op::Update {
                key: k(1),
                patch: r#"{"age":26}"#.into(),
                if_version: Some(4),
            },
            7,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&rows[&k(1)].json).unwrap();
        assert_eq!(v, serde_json::json!({"id": 1, "name": "Alice", "age": 26}));
        assert_eq!(rows[&k(1)].version, 7);
        assert_eq!(
            apply(
                &mut rows,
                Op::Delete {
                    key: k(1),
                    if_version: None
                },
                8
            ),
            Ok(OpResult::Deleted { seq: 8 })
        );
        assert_eq!(
            apply(
                &mut rows,
                Op::Delete {
                    key: k(1),
                    if_version: None
                },
                9
            ),
            Err(OpError::NotFound { key: "1".into() })
        );
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let mut rows = BTreeMap::new();
        apply(
            &mut rows,
            Op::Put {
                key: k(2),
                row: row(2, "Bob"),
            },
            1,
        )
        .unwrap();
        let batch = Op::Batch(vec![
            Op::Put {
                key: k(3),
                row: row(3, "Carol"),
            },
            Op::Insert {
                key: k(2),
                row: row(2, "Bob again"),
            },
        ]);
        let err = apply(&mut rows, batch, 2).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("batch failed at operation 1: row 2 already exists"),
            "{err}"
        );
        assert!(!rows.contains_key(&k(3)), "a failed batch wrote something");
        // Later operations in a batch see the earlier ones.
        let batch = Op::Batch(vec![
            Op::Insert {
                key: k(4),
                row: row(4, "Dan"),
            },
            Op::Update {
                key: k(4),
                patch: r#"{"age":40}"#.into(),
                if_version: Some(3),
            },
        ]);
        assert!(apply(&mut rows, batch, 3).is_ok());
    }

    #[test]
    fn bad_rows_are_named() {
        assert_eq!(
            check_row("[1]", "id").unwrap_err().to_string(),
            "invalid row: a row must be a JSON object"
        );
        assert!(check_row("{", "id")
            .unwrap_err()
            .to_string()
            .starts_with("invalid row: not JSON"));
        assert_eq!(
            check_row(r#"{"name":"x"}"#, "id").unwrap_err().to_string(),
            "key column \"id\" is missing"
        );
        let big = serde_json::json!({"id": 1, "blob": "x".repeat(MAX_ROW_BYTES)}).to_string();
        assert!(check_row(&big, "id")
            .unwrap_err()
            .to_string()
            .contains("exceeds the limit"));
        let mut rows = BTreeMap::new();
        apply(
            &mut rows,
            Op::Put {
                key: k(1),
                row: row(1, "A"),
            },
            1,
        )
        .unwrap();
        let err = apply(
            &mut rows,
            Op::Update {
                key: k(1),
                patch: r#"{"id":2}"#.into(),
                if_version: None,
            },
            2,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("cannot change the key column"),
            "{err}"
        );
    }
}
