//! The batch grammar: a JSON array of operations, each an object with one
//! of `put`, `insert`, `update`, `delete`:
//!
//! ```text
//! [{"put": {"id": 1, "name": "Alice"}},
//!  {"update": {"key": 2, "patch": {"age": 31}, "if_version": 4}},
//!  {"delete": {"key": 3}}]
//! ```
//!
//! Parsed here into [`BatchOp`]s for `Client::batch`; a malformed batch is
//! an `Invalid` request naming the operation that was wrong.

use serde_json::Value;
use tstore_core::cluster_map::RowKey;
use tstore_core::wire::{BatchOp, DataError};

/// Parses a batch; a bad one is an `Invalid` request (the CLI's exit code 3).
pub fn parse_batch(text: &str) -> Result<Vec<BatchOp>, DataError> {
    let items: Vec<Value> = serde_json::from_str(text).map_err(|e| {
        DataError::invalid(format!(
            "a batch is a JSON array of operations, e.g. [{{\"put\":{{\"id\":1}}}}]: {e}"
        ))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_op(i, item))
        .collect()
}

fn parse_op(i: usize, item: &Value) -> Result<BatchOp, DataError> {
    let bad = |what: String| DataError::invalid(format!("batch operation {i}: {what}"));
    let obj = item.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
        DataError::invalid(format!(
            "batch operation {i} must be an object with one of put, insert, update, delete"
        ))
    })?;
    let (op, body) = obj.iter().next().expect("one entry, checked above");
    let key = || match body.get("key") {
        Some(Value::Number(n)) if n.is_i64() => Ok(RowKey::Int(n.as_i64().expect("checked"))),
        Some(Value::String(s)) => Ok(RowKey::Str(s.clone())),
        _ => Err(bad("\"key\" must be an integer or a string".into())),
    };
    let version = || match body.get("if_version") {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad("\"if_version\" must be a whole number".into())),
    };
    Ok(match op.as_str() {
        "put" => BatchOp::Put {
            row: body.to_string(),
        },
        "insert" => BatchOp::Insert {
            row: body.to_string(),
        },
        "update" => BatchOp::Update {
            key: key()?,
            patch: body
                .get("patch")
                .ok_or_else(|| bad("update needs \"patch\"".into()))?
                .to_string(),
            if_version: version()?,
        },
        "delete" => BatchOp::Delete {
            key: key()?,
            if_version: version()?,
        },
        other => {
            return Err(bad(format!(
                "unknown operation {other:?} (use put, insert, update, delete)"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tstore_core::wire::ErrorKind;

    #[test]
    fn every_operation_parses() {
        let ops = parse_batch(
            r#"[{"put":{"id":1}},{"insert":{"id":2}},
                {"update":{"key":"k","patch":{"a":1},"if_version":3}},{"delete":{"key":4}}]"#,
        )
        .unwrap();
        assert_eq!(ops.len(), 4);
        assert_eq!(
            ops[2],
            BatchOp::Update {
                key: RowKey::Str("k".into()),
                patch: r#"{"a":1}"#.into(),
                if_version: Some(3),
            }
        );
        assert_eq!(
            ops[3],
            BatchOp::Delete {
                key: RowKey::Int(4),
                if_version: None
            }
        );
    }

    #[test]
    fn a_bad_batch_is_invalid_and_names_the_operation() {
        for (text, needle) in [
            ("{}", "JSON array"),
            ("[1]", "operation 0 must be an object"),
            (
                r#"[{"put":{}},{"drop":{}}]"#,
                "operation 1: unknown operation \"drop\"",
            ),
            (r#"[{"delete":{"key":1.5}}]"#, "\"key\" must be"),
            (r#"[{"update":{"key":1}}]"#, "update needs \"patch\""),
            (r#"[{"delete":{"key":1,"if_version":-1}}]"#, "if_version"),
        ] {
            let e = parse_batch(text).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Invalid, "{text}");
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
    }
}
