//! Every decoder a node runs on bytes it did not write, with random input:
//! wire messages, stored records, keys, rows. A short, stable-toolchain
//! version of the fuzz targets in `fuzz/` (see fuzz/README.md), plus one
//! regression test per crash the fuzzers found.
//!
//! Wire enums are only decoded here, never built, so these tests do not
//! change when a message gains a field.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tstore_actors::data::store::ShardMeta;
use tstore_actors::peer::{PeerMessage, PeerReply, SnapshotPart};
use tstore_core::cluster_map::RowKey;
use tstore_core::data::ops::{check_row, evaluate, Op, RowRecord};
use tstore_core::data::sessions::{ClientRecord, Command};
use tstore_core::replication::{EpochHistory, LogEntry, ReplMsg};
use tstore_core::wire::{AdminReply, AdminRequest, DataReply, DataRequest, ShardRequest};
use tstore_transport::decode::{self, DecodeError, MAX_DEPTH};
use tstore_transport::frame::{self, FrameError, WIRE_VERSION};

/// Decodes as a node does; a value that decodes must encode, decode and
/// encode again to the same bytes.
fn roundtrip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(v) = decode::from_bytes::<T>(bytes) {
        let once = postcard::to_stdvec(&v).unwrap();
        let again: T = decode::from_bytes(&once)
            .map_err(|e| TestCaseError::fail(format!("re-encoded value does not decode: {e}")))?;
        prop_assert_eq!(once, postcard::to_stdvec(&again).unwrap());
    }
    Ok(())
}

/// Every wire and storage type, picked by `which`.
fn decode_any(which: u8, bytes: &[u8]) -> Result<(), TestCaseError> {
    match which % 16 {
        14 => roundtrip::<Command>(bytes),
        15 => roundtrip::<ClientRecord>(bytes),
        0 => roundtrip::<PeerMessage>(bytes),
        1 => roundtrip::<PeerReply>(bytes),
        2 => roundtrip::<AdminRequest>(bytes),
        3 => roundtrip::<AdminReply>(bytes),
        4 => roundtrip::<DataRequest>(bytes),
        5 => roundtrip::<ShardRequest>(bytes),
        6 => roundtrip::<DataReply>(bytes),
        7 => roundtrip::<SnapshotPart>(bytes),
        8 => roundtrip::<ReplMsg>(bytes),
        9 => roundtrip::<LogEntry>(bytes),
        10 => roundtrip::<Op>(bytes),
        11 => roundtrip::<RowRecord>(bytes),
        12 => roundtrip::<ShardMeta>(bytes),
        _ => roundtrip::<EpochHistory>(bytes),
    }
}

fn key() -> impl Strategy<Value = RowKey> {
    prop_oneof![
        any::<i64>().prop_map(RowKey::Int),
        ".{0,12}".prop_map(RowKey::Str),
    ]
}

fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        (key(), ".{0,8}", any::<i32>()).prop_map(|(k, s, n)| {
            let k = match k {
                RowKey::Int(i) => serde_json::json!(i),
                RowKey::Str(s) => serde_json::json!(s),
            };
            serde_json::json!({"id": k, "name": s, "n": n}).to_string()
        }),
        "\\{\"[a-z]{1,3}\":(1|\"x\"|null|\\[\\]|\\{\\})\\}",
    ]
}

fn leaf_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (key(), json_text()).prop_map(|(key, row)| Op::Put { key, row }),
        (key(), json_text()).prop_map(|(key, row)| Op::Insert { key, row }),
        (key(), json_text(), any::<Option<u64>>()).prop_map(|(key, patch, if_version)| {
            Op::Update {
                key,
                patch,
                if_version,
            }
        }),
        (key(), any::<Option<u64>>()).prop_map(|(key, if_version)| Op::Delete { key, if_version }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        leaf_op(),
        proptest::collection::vec(leaf_op(), 0..5).prop_map(Op::Batch),
    ]
}

fn log_entry() -> impl Strategy<Value = LogEntry> {
    (any::<u64>(), any::<u64>(), op()).prop_map(|(epoch, seq, op)| LogEntry {
        epoch,
        seq,
        op: postcard::to_stdvec(&op).unwrap(),
    })
}

fn repl_msg() -> impl Strategy<Value = ReplMsg> {
    let history = (
        any::<u64>(),
        proptest::collection::vec(any::<(u64, u64)>(), 0..4),
        any::<u64>(),
    )
        .prop_map(|(floor, runs, last)| EpochHistory { floor, runs, last });
    prop_oneof![
        (
            any::<u64>(),
            proptest::option::of(history),
            proptest::collection::vec(log_entry(), 0..4),
            any::<u64>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(epoch, history, entries, committed, sent_at, counted)| {
                ReplMsg::Prepare {
                    epoch,
                    history,
                    entries,
                    committed,
                    sent_at,
                    counted,
                }
            }),
        any::<(u64, u64, u64)>().prop_map(|(epoch, logged, echo)| ReplMsg::Ack {
            epoch,
            logged,
            echo
        }),
        any::<u64>().prop_map(|epoch| ReplMsg::StaleEpoch { epoch }),
        any::<(u64, u64)>().prop_map(|(epoch, log_start)| ReplMsg::Rebuild { epoch, log_start }),
    ]
}

/// Applies `op` to `rows` as entry `seq`, checking what evaluation wants written.
fn apply(rows: &mut BTreeMap<RowKey, RowRecord>, op: &Op, seq: u64) -> Result<(), TestCaseError> {
    let (res, writes) = evaluate(op, seq, "id", &|k| rows.get(k).cloned());
    if res.is_err() {
        prop_assert!(writes.is_empty(), "a failed operation writes");
    }
    for (key, w) in writes {
        match w {
            Some(r) => {
                let (k, _) = check_row(&r.json, "id")
                    .map_err(|e| TestCaseError::fail(format!("stored row fails its check: {e}")))?;
                prop_assert_eq!(&k, &key);
                rows.insert(key, r);
            }
            None => {
                rows.remove(&key);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(
        which in any::<u8>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        decode_any(which, &bytes)?;
        let mut body = vec![WIRE_VERSION];
        body.extend_from_slice(&bytes);
        let _ = frame::decode_body::<PeerMessage>(&body);
        let _ = frame::decode_body::<AdminRequest>(&body);
    }

    #[test]
    fn valid_records_round_trip(
        op in op(),
        entry in log_entry(),
        msg in repl_msg(),
        meta in any::<(u64, u64, u64)>(),
        row in (any::<u64>(), json_text()),
    ) {
        let bytes = postcard::to_stdvec(&op).unwrap();
        prop_assert_eq!(decode::from_bytes::<Op>(&bytes).unwrap(), op);
        let bytes = postcard::to_stdvec(&entry).unwrap();
        prop_assert_eq!(decode::from_bytes::<LogEntry>(&bytes).unwrap(), entry);
        let bytes = postcard::to_stdvec(&msg).unwrap();
        prop_assert_eq!(decode::from_bytes::<ReplMsg>(&bytes).unwrap(), msg);
        let meta = ShardMeta { epoch: meta.0, logged: meta.1, applied: meta.2, ..Default::default() };
        let bytes = postcard::to_stdvec(&meta).unwrap();
        prop_assert_eq!(decode::from_bytes::<ShardMeta>(&bytes).unwrap(), meta);
        let row = RowRecord { version: row.0, json: row.1 };
        let bytes = postcard::to_stdvec(&row).unwrap();
        prop_assert_eq!(decode::from_bytes::<RowRecord>(&bytes).unwrap(), row);
    }

    #[test]
    fn arbitrary_operations_evaluate_without_panicking(ops in proptest::collection::vec(op(), 1..6)) {
        let mut rows = BTreeMap::new();
        for (seq, op) in ops.iter().enumerate() {
            apply(&mut rows, op, seq as u64 + 1)?;
        }
    }
}

/// `levels` operations, each a batch holding the next, around a delete.
fn nested_batches(levels: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..levels {
        bytes.extend_from_slice(&[4, 1]); // Op::Batch, one element
    }
    bytes.extend_from_slice(&[3, 0, 2, 0]); // Op::Delete { key: Int(1), if_version: None }
    bytes
}

#[test]
fn nested_batches_up_to_the_limit_still_decode() {
    let bytes = postcard::to_stdvec(&Op::Batch(vec![Op::Batch(vec![Op::Delete {
        key: RowKey::Int(1),
        if_version: None,
    }])]))
    .unwrap();
    assert_eq!(
        bytes,
        nested_batches(2),
        "the test's encoding is postcard's"
    );
    // Each batch is two levels (the enum, the Vec), the delete three (the
    // enum, its fields, the key).
    let deepest = (MAX_DEPTH - 3) / 2;
    assert!(decode::from_bytes::<Op>(&nested_batches(deepest)).is_ok());
    assert!(matches!(
        decode::from_bytes::<Op>(&nested_batches(deepest + 1)),
        Err(DecodeError::TooDeep { .. })
    ));
}

/// Regression: a batch nested in a batch 100,000 times (200 KB, well within
/// a frame) overflowed the decoding thread's stack and aborted the node. It
/// reaches a node as a client's routed write, a peer's forwarded write, or a
/// log entry's operation.
#[test]
fn deeply_nested_batches_are_refused_not_a_stack_overflow() {
    let op = nested_batches(100_000);
    let err = decode::from_bytes::<Op>(&op).unwrap_err();
    assert!(
        matches!(err, DecodeError::TooDeep { max: MAX_DEPTH }),
        "{err}"
    );

    // As a client's routed write: DataRequest::Routed (1) { epoch: 1,
    // request: ShardRequest::Write (0) { table: "t", shard: 0, id: all
    // zeros, op } }. The same prefix with a plain delete decodes, so the
    // layout is right.
    let prefix = [WIRE_VERSION, 1, 1, 0, 1, b't', 0, 0, 0, 0, 0];
    let shallow = [&prefix[..], &nested_batches(1)].concat();
    assert!(frame::decode_body::<DataRequest>(&shallow).is_ok());
    let body = [&prefix[..], &op].concat();
    let err = frame::decode_body::<DataRequest>(&body[..]).unwrap_err();
    assert!(matches!(err, FrameError::TooDeep { .. }), "{err}");
    assert!(err.is_protocol_violation());
    assert_eq!(err.to_string(), "message nests deeper than 64 levels");
}

/// A peer's Raft reply failing with a storage error whose source chain is
/// `levels` long.
fn error_chain(levels: usize) -> Vec<u8> {
    // PeerReply::Raft (1), RaftRpcReply::AppendEntries (0), Err (1),
    // RaftError::Fatal (1), Fatal::StorageError (0), StorageError::IO (1),
    // StorageIOError { subject: Store (0), verb: Read (0), source: AnyError, .. }.
    let mut body = vec![WIRE_VERSION, 1, 0, 1, 1, 0, 1, 0, 0];
    for _ in 0..levels {
        // AnyError { typ: None, msg: "", source: Some(
        body.extend_from_slice(&[0, 0, 1]);
    }
    // The innermost AnyError { typ: None, msg: "", source: None, context:
    // [], backtrace: None }, each outer one's context and backtrace, then
    // the StorageIOError's backtrace.
    body.extend_from_slice(&[0, 0, 0, 0, 0]);
    body.extend(std::iter::repeat_n(0, 2 * levels + 1));
    body
}

/// Regression: a peer's Raft reply carries openraft's `AnyError`, whose
/// `source` is an `Option<Box<AnyError>>`; a chain of 100,000 sources
/// overflowed the stack the same way.
#[test]
fn deeply_nested_error_chains_are_refused() {
    assert!(frame::decode_body::<PeerReply>(&error_chain(3)).is_ok());
    let err = frame::decode_body::<PeerReply>(&error_chain(100_000)).unwrap_err();
    assert!(matches!(err, FrameError::TooDeep { .. }), "{err}");
}
