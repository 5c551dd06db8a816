//! Checks of a write before it is sent or logged, shared by the routing
//! client (which builds the operation and finds its shard) and the node
//! (which checks what it is asked to log): one set of rules, one set of
//! messages.
//!
//! Pure: no I/O.

use crate::cluster_map::{RowKey, Table};
use crate::data::ops::{check_row, Op, MAX_BATCH};
use crate::wire::{BatchOp, DataError, ErrorKind};

/// An update's patch must be a JSON object (checked again at apply time).
fn check_patch(patch: &str) -> Result<(), DataError> {
    match serde_json::from_str::<serde_json::Value>(patch) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(DataError::invalid("an update must be a JSON object")),
        Err(e) => Err(DataError::invalid(format!("update is not JSON: {e}"))),
    }
}

/// That `key` is in `shard` of `t`. Else `Stale`: the client's map placed
/// the key elsewhere than this one does (a split or merge it has not seen;
/// a shard index reused after a merge can even carry the same epoch): it
/// refreshes its map and sends again.
pub fn check_key(t: &Table, shard: u32, key: &RowKey) -> Result<(), DataError> {
    let owner = t.shard_of(key);
    if owner == shard {
        return Ok(());
    }
    let table = &t.spec.name;
    Err(DataError::new(
        ErrorKind::Stale,
        format!("key {key} belongs to {table}/{owner}, not {table}/{shard}: refresh the map"),
    ))
}

/// Checks a write before it is logged: rows parse and carry their key, a
/// batch is within its bounds and every key is in `shard`.
pub fn check_op(t: &Table, shard: u32, op: &Op) -> Result<(), DataError> {
    let key = match op {
        Op::Put { key, row } | Op::Insert { key, row } => {
            let (row_key, _) = check_row(row, &t.spec.key).map_err(DataError::from)?;
            if &row_key != key {
                return Err(DataError::invalid(format!(
                    "the row's key {row_key} does not match the key {key} it was sent with"
                )));
            }
            key
        }
        Op::Update { key, patch, .. } => {
            check_patch(patch)?;
            key
        }
        Op::Delete { key, .. } => key,
        Op::Split { .. } => {
            return Err(DataError::invalid(
                "a split is made with `tstore admin split-shard`, not written",
            ))
        }
        Op::Batch(ops) => {
            if ops.is_empty() {
                return Err(DataError::invalid("a batch needs at least one operation"));
            }
            if ops.len() > MAX_BATCH {
                return Err(DataError::invalid(format!(
                    "a batch of {} operations exceeds the limit of {MAX_BATCH}",
                    ops.len()
                )));
            }
            if ops.iter().any(|o| matches!(o, Op::Batch(_))) {
                return Err(DataError::invalid("a batch cannot hold a batch"));
            }
            // Stale if the first key is elsewhere (the client's map is
            // older); a later one elsewhere is a batch across shards here.
            for (i, o) in ops.iter().enumerate() {
                match check_op(t, shard, o) {
                    Err(e) if i > 0 && e.kind == ErrorKind::Stale => {
                        return Err(DataError::invalid(format!(
                            "a batch is atomic within one shard: {}",
                            e.message
                        )))
                    }
                    r => r?,
                }
            }
            return Ok(());
        }
    };
    check_key(t, shard, key)
}

/// The shard a write belongs to, once checked: for a batch, the shard of
/// its first key, which every other key must share.
pub fn shard_of_write(t: &Table, op: &Op) -> Result<u32, DataError> {
    let Some(first) = op.first_key() else {
        return Err(DataError::invalid("a batch needs at least one operation"));
    };
    let shard = t.shard_of(first);
    if let Op::Batch(ops) = op {
        if let Some(other) = ops
            .iter()
            .filter_map(Op::key)
            .find(|k| t.shard_of(k) != shard)
        {
            let name = &t.spec.name;
            return Err(DataError::invalid(format!(
                "a batch is atomic within one shard: key {first} is in {name}/{shard}, key {other} in {name}/{}",
                t.shard_of(other)
            )));
        }
    }
    check_op(t, shard, op)?;
    Ok(shard)
}

/// A row write (put or insert) of `row`, keyed by the table's key column.
pub fn row_op(
    t: &Table,
    row: &str,
    make: impl FnOnce(RowKey, String) -> Op,
) -> Result<Op, DataError> {
    let (key, _) = check_row(row, &t.spec.key).map_err(DataError::from)?;
    Ok(make(key, row.to_owned()))
}

/// Turns a client's batch into one operation, each piece checked; the
/// error names the piece.
pub fn batch_op(t: &Table, ops: Vec<BatchOp>) -> Result<Op, DataError> {
    let mut out = Vec::with_capacity(ops.len());
    for (i, b) in ops.into_iter().enumerate() {
        let at = |e: DataError| DataError::new(e.kind, format!("batch operation {i}: {e}"));
        out.push(match b {
            BatchOp::Put { row } => row_op(t, &row, |key, row| Op::Put { key, row }).map_err(at)?,
            BatchOp::Insert { row } => {
                row_op(t, &row, |key, row| Op::Insert { key, row }).map_err(at)?
            }
            BatchOp::Update {
                key,
                patch,
                if_version,
            } => {
                check_patch(&patch).map_err(at)?;
                Op::Update {
                    key,
                    patch,
                    if_version,
                }
            }
            BatchOp::Delete { key, if_version } => Op::Delete { key, if_version },
        });
    }
    Ok(Op::Batch(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::{KeyRange, ReplicaSet, Shard, Sharding, TableSpec};

    fn table(shards: u32) -> Table {
        Table {
            id: 1,
            placement: None,
            auto_split: true,
            auto_merge: true,
            retired: Default::default(),
            spec: TableSpec {
                name: "user".into(),
                key: "id".into(),
                sharding: Sharding::Hash { shards },
                replicas: 1,
                min_copies: 0,
            },
            shards: (0..shards)
                .map(|i| Shard {
                    index: i,
                    range: KeyRange::HashSlot {
                        slot: i,
                        of: shards,
                    },
                    replicas: ReplicaSet {
                        primary: "n1".into(),
                        backups: vec![],
                        learners: vec![],
                        moves: vec![],
                        epoch: 1,
                        away: vec![],
                    },
                    origin: None,
                    merging: None,
                    merged: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_across_shards_is_refused_with_both_keys_named() {
        let t = table(8);
        let (a, b) = (1..100)
            .map(RowKey::Int)
            .find_map(|k| {
                let other = (1..100)
                    .map(RowKey::Int)
                    .find(|o| t.shard_of(o) != t.shard_of(&k))?;
                Some((k, other))
            })
            .unwrap();
        let op = Op::Batch(vec![
            Op::Delete {
                key: a.clone(),
                if_version: None,
            },
            Op::Delete {
                key: b.clone(),
                if_version: None,
            },
        ]);
        let e = shard_of_write(&t, &op).unwrap_err();
        assert!(e.message.contains(&format!("key {a}")), "{e}");
        assert!(e.message.contains(&format!("key {b}")), "{e}");
    }

    #[test]
    fn bad_pieces_are_named_and_keys_must_match_their_shard() {
        let t = table(4);
        let e = batch_op(
            &t,
            vec![
                BatchOp::Put {
                    row: r#"{"id":1}"#.into(),
                },
                BatchOp::Update {
                    key: RowKey::Int(1),
                    patch: "[1]".into(),
                    if_version: None,
                },
            ],
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "batch operation 1: an update must be a JSON object"
        );
        let k = RowKey::Int(5);
        let wrong = (t.shard_of(&k) + 1) % 4;
        let e = check_op(
            &t,
            wrong,
            &Op::Delete {
                key: k,
                if_version: None,
            },
        )
        .unwrap_err();
        assert!(e.message.starts_with("key 5 belongs to user/"), "{e}");
        assert!(shard_of_write(&t, &Op::Batch(vec![])).is_err());
    }
}
