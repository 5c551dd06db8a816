//! Rows, patches and batches as text: the row check, the CLI's batch
//! parser, the checks a batch passes before it is logged
//! (`data::validate`), and the evaluation of the operations they make
//! against an in-memory table.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tstore_core::cluster_map::{ClusterMap, MapCommand, RowKey, Table, TableSpec};
use tstore_core::data::ops::{check_row, evaluate, Op, RowRecord};
use tstore_core::data::validate;

const KEY: &str = "id";

type Rows = BTreeMap<RowKey, RowRecord>;

static TABLE: OnceLock<Table> = OnceLock::new();

/// Evaluates `op` as entry `seq`, checks what it wants written, and writes it.
fn apply(rows: &mut Rows, op: &Op, seq: u64) {
    let (res, writes) = evaluate(op, seq, KEY, &|k| rows.get(k).cloned());
    let (res2, writes2) = evaluate(op, seq, KEY, &|k| rows.get(k).cloned());
    assert_eq!(
        (&res, &writes),
        (&res2, &writes2),
        "evaluation is not deterministic"
    );
    if res.is_err() {
        assert!(writes.is_empty(), "a failed operation writes");
    }
    for (key, w) in writes {
        match w {
            Some(r) => {
                assert_eq!(r.version, seq);
                let (k, _) = check_row(&r.json, KEY)
                    .unwrap_or_else(|e| panic!("a write stores a row that fails its check: {e}"));
                assert_eq!(k, key, "a row is stored under another key");
                rows.insert(key, r);
            }
            None => {
                rows.remove(&key);
            }
        }
    }
}

/// A table keyed by `id`, hashed over two shards, as the map holds it.
fn table() -> Table {
    let mut map = ClusterMap::default();
    map.apply(&MapCommand::RegisterNode {
        node_id: "n1".into(),
        addr: "127.0.0.1:7401".into(),
        zone: String::new(),
    })
    .unwrap();
    let spec: TableSpec = serde_json::from_value(serde_json::json!({
        "name": "t", "key": KEY, "sharding": {"Hash": {"shards": 2}}, "replicas": 1, "min_copies": 0
    }))
    .expect("a table spec");
    map.apply(&MapCommand::CreateTable {
        spec,
        placement: vec![("n1".into(), vec![]); 2],
    })
    .unwrap();
    map.tables["t"].clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut rows = Rows::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    for i in 1..=2 {
        let row = serde_json::json!({ "id": i, "name": "x" }).to_string();
        apply(
            &mut rows,
            &Op::Put {
                key: RowKey::Int(i),
                row,
            },
            next(),
        );
    }

    // The text as a row, and as a patch of an existing row.
    if let Ok((key, value)) = check_row(text, KEY) {
        assert_eq!(RowKey::from_row(&value, KEY).ok(), Some(key.clone()));
        let put = Op::Put {
            key: key.clone(),
            row: text.to_owned(),
        };
        apply(&mut rows, &put, next());
        let insert = Op::Insert {
            key,
            row: text.to_owned(),
        };
        apply(&mut rows, &insert, next());
    }
    for if_version in [None, Some(1)] {
        let update = Op::Update {
            key: RowKey::Int(1),
            patch: text.to_owned(),
            if_version,
        };
        apply(&mut rows, &update, next());
    }

    // The text as the CLI's batch, made into one operation as the client
    // and the node do: each operation alone, then all at once.
    if let Ok(batch) = tstore_client::batch::parse_batch(text) {
        let table = TABLE.get_or_init(table);
        if let Ok(op) = validate::batch_op(table, batch) {
            if validate::shard_of_write(table, &op).is_ok() {
                let Op::Batch(ops) = &op else {
                    panic!("batch_op makes a batch");
                };
                let mut alone = rows.clone();
                for o in ops {
                    apply(&mut alone, o, next());
                }
                apply(&mut rows, &op, next());
            }
        }
    }
});
