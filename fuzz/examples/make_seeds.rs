//! Writes the seed corpora: a handful of small, valid inputs per target, in
//! `corpus/<target>/seed-<name>`. Run from `fuzz/`:
//!
//! ```sh
//! cargo run --example make_seeds
//! ```
//!
//! Wire messages are written as JSON (serde's external tagging) and
//! converted, so this file does not construct the wire enums and keeps
//! compiling when they change; a seed whose JSON no longer fits its type is
//! reported and the run fails, for the JSON to be brought up to date.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, VoteRequest, VoteResponse};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tstore_actors::control::types::{MapRaft, RaftNode};
use tstore_actors::data::store::ShardMeta;
use tstore_actors::peer::{PeerMessage, PeerReply, SnapshotPart};
use tstore_core::cluster_map::{ClusterMap, MapCommand, RowKey, TableSpec};
use tstore_core::data::ops::Op;
use tstore_core::data::ops::RowRecord;
use tstore_core::data::sessions::{ClientRecord, Command};
use tstore_core::replication::{EpochHistory, LogEntry, ReplMsg};
use tstore_core::wire::{AdminReply, AdminRequest, DataReply, DataRequest, ShardRequest};
use tstore_transport::frame;

struct Seeds {
    failed: Vec<String>,
}

impl Seeds {
    fn write(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = Path::new("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }

    /// `json` as a `T`, postcard-encoded.
    fn encode<T: Serialize + DeserializeOwned>(
        &mut self,
        what: &str,
        json: Value,
    ) -> Option<Vec<u8>> {
        match serde_json::from_value::<T>(json) {
            Ok(v) => Some(postcard::to_stdvec(&v).unwrap()),
            Err(e) => {
                self.failed.push(format!("{what}: {e}"));
                None
            }
        }
    }

    /// A seed of a target whose first byte selects the type.
    fn typed<T: Serialize + DeserializeOwned>(
        &mut self,
        target: &str,
        selector: u8,
        name: &str,
        json: Value,
    ) {
        if let Some(bytes) = self.encode::<T>(&format!("{target}/{name}"), json) {
            let mut input = vec![selector];
            input.extend(bytes);
            self.write(target, name, &input);
        }
    }

    fn json<T: Serialize + DeserializeOwned>(&mut self, what: &str, json: Value) -> Option<T> {
        serde_json::from_value::<T>(json)
            .map_err(|e| self.failed.push(format!("{what}: {e}")))
            .ok()
    }
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

fn main() {
    let mut s = Seeds { failed: Vec::new() };

    let row = r#"{"id":1,"name":"Alice","age":25}"#;
    let put = json!({"Put": {"key": {"Int": 1}, "row": row}});
    let batch = json!({"Batch": [
        put,
        {"Update": {"key": {"Int": 1}, "patch": r#"{"age":26}"#, "if_version": 4}},
        {"Delete": {"key": {"Str": "bob"}, "if_version": null}},
        {"Insert": {"key": {"Int": -5}, "row": r#"{"id":-5}"#}},
    ]});
    let id = json!({"client": {"started_ms": 1_700_000_000_000u64, "nonce": 42}, "seq": 7,
        "first_incomplete": 5});
    let command = json!({"id": id, "at_ms": 1_700_000_000_500u64, "op": batch});
    let op_bytes = s
        .encode::<Command>("command", command.clone())
        .unwrap_or_default();
    let history = json!({"floor": 3, "runs": [[4, 2], [6, 3]], "last": 7});
    let entry = json!({"epoch": 3, "seq": 7, "op": op_bytes});
    let prepare = json!({"Prepare": {"epoch": 3, "history": history, "entries": [entry],
        "committed": 6, "sent_at": 1234, "counted": true}});
    let spec = json!({"name": "user", "key": "id", "sharding": {"Hash": {"shards": 8}}, "replicas": 2,
        "min_copies": 0});
    let range_spec = json!({"name": "events", "key": "ts",
        "sharding": {"Range": {"splits": [{"Int": 1000}, {"Str": "m"}]}}, "replicas": 2, "min_copies": 2});
    let shard_write =
        json!({"Write": {"shard": {"table": "user", "index": 3}, "id": id, "op": batch}});
    let shard_get = json!({"Get": {"shard": {"table": "user", "index": 3}, "key": {"Str": "alice"}, "mode": "Strong"}});
    let shard_scan = json!({"Scan": {"shard": {"table": "events", "index": 0}, "from": null, "to": {"Int": 10},
        "limit": 100, "mode": {"AtLeast": 5}}});
    let status = json!({"role": "primary", "epoch": 3, "logged": 9, "applied": 9, "state": "serving",
        "checksum": 77, "log_entries": 9, "log_start": 1, "log_bytes": 2475, "rows": 4,
        "row_bytes": 400, "quiet": false});

    // A table as the map holds it.
    let mut map = ClusterMap::default();
    for n in ["n1", "n2"] {
        map.apply(&MapCommand::RegisterNode {
            node_id: n.into(),
            addr: "127.0.0.1:7401".into(),
            zone: String::new(),
        })
        .unwrap();
    }
    let table_spec: TableSpec = serde_json::from_value(range_spec.clone()).unwrap();
    map.apply(&MapCommand::CreateTable {
        spec: table_spec,
        placement: vec![("n1".into(), vec!["n2".into()]); 3],
    })
    .unwrap();
    let table = to_json(&map.tables["events"]);

    // Raft RPCs.
    let log_id = |index| LogId::new(CommittedLeaderId::new(2, 7), index);
    let append = AppendEntriesRequest::<MapRaft> {
        vote: Vote::new_committed(2, 7),
        prev_log_id: Some(log_id(4)),
        entries: vec![
            Entry {
                log_id: log_id(5),
                payload: EntryPayload::Normal(MapCommand::CreateTable {
                    spec: serde_json::from_value(range_spec.clone()).unwrap(),
                    placement: vec![("n1".into(), vec!["n2".into()]); 3],
                }),
            },
            Entry {
                log_id: log_id(6),
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([7, 8])],
                    BTreeMap::from([
                        (
                            7,
                            RaftNode {
                                node_id: "n1".into(),
                                addr: "127.0.0.1:7401".into(),
                            },
                        ),
                        (
                            8,
                            RaftNode {
                                node_id: "n2".into(),
                                addr: "127.0.0.1:7402".into(),
                            },
                        ),
                    ]),
                )),
            },
        ],
        leader_commit: Some(log_id(4)),
    };
    let vote = VoteRequest::new(Vote::new(3, 8), Some(log_id(6)));
    let vote_reply = VoteResponse::new(Vote::new(3, 8), Some(log_id(6)), true);
    let io = std::io::Error::other("disk gone");
    let storage: StorageError<u64> = StorageIOError::read(&io).into();
    let fatal: RaftError<u64> = RaftError::Fatal(Fatal::StorageError(storage));

    // peer_message: 0 = PeerMessage, 1 = PeerReply.
    for (name, msg) in [
        ("ping", json!("Ping")),
        ("gossip", json!({"Gossip": [0xd3, 0xb0, 1, 0]})),
        (
            "repl",
            json!({"Repl": {"shard": {"table": "user", "index": 3}, "msg": prepare}}),
        ),
        ("data-write", json!({"Data": shard_write})),
        ("data-get", json!({"Data": shard_get})),
        (
            "snapshot",
            json!({"Snapshot": {"shard": {"table": "user", "index": 1}}}),
        ),
        ("control", json!({"Control": {"CreateTable": spec}})),
        (
            "manual",
            json!({"Control": {"Manual": {"table": "user", "shard": 1, "op": {"Move": {"from": "n1", "to": "n3"}}}}}),
        ),
        (
            "append",
            json!({"Raft": {"AppendEntries": to_json(&append)}}),
        ),
        ("vote", json!({"Raft": {"Vote": to_json(&vote)}})),
    ] {
        s.typed::<PeerMessage>("peer_message", 0, name, msg);
    }
    for (name, msg) in [
        ("pong", json!({"Pong": {"node_id": "n1", "generation": 3}})),
        ("control", json!({"Control": {"Ok": [5, table]}})),
        ("row", json!({"Data": {"Row": {"version": 4, "json": row}}})),
        (
            "snapshot-rows",
            json!({"Snapshot": {"Rows": [[RowKey::Int(1).encode(), [4, 2, b'{', b'}']]]}}),
        ),
        (
            "vote",
            json!({"Raft": {"Vote": {"Ok": to_json(&vote_reply)}}}),
        ),
        (
            "raft-error",
            json!({"Raft": {"AppendEntries": {"Err": to_json(&fatal)}}}),
        ),
        ("refused", json!({"Refused": "not a peer request"})),
    ] {
        s.typed::<PeerReply>("peer_message", 1, &format!("reply-{name}"), msg);
    }

    // data_request: 0 = DataRequest, 1 = ShardRequest, 2 = DataReply.
    let data_requests = [
        (
            "copies",
            json!({"Copies": {"table": "user", "checksums": true}}),
        ),
        (
            "routed-write",
            json!({"Routed": {"epoch": 3, "request": shard_write}}),
        ),
        (
            "routed-get",
            json!({"Routed": {"epoch": 3, "request": shard_get}}),
        ),
        (
            "routed-scan",
            json!({"Routed": {"epoch": 3, "request": shard_scan}}),
        ),
    ];
    for (name, msg) in &data_requests {
        s.typed::<DataRequest>("data_request", 0, name, msg.clone());
    }
    for (name, msg) in [
        ("write", shard_write.clone()),
        ("get", shard_get.clone()),
        ("scan", shard_scan.clone()),
        (
            "status",
            json!({"Status": {"shard": {"table": "user", "index": 1}, "checksum": true}}),
        ),
    ] {
        s.typed::<ShardRequest>("data_request", 1, &format!("shard-{name}"), msg);
    }
    for (name, msg) in [
        (
            "written",
            json!({"Written": {"Batch": [{"Written": {"version": 3}}, {"Deleted": {"seq": 3}}]}}),
        ),
        (
            "rows",
            json!({"Rows": [[{"Int": 1}, {"version": 2, "json": row}], [{"Str": "b"}, {"version": 5, "json": "{}"}]]}),
        ),
        ("status", json!({"Status": status})),
        (
            "copies",
            json!({"Copies": [{"shard": 0, "node": "n1", "status": {"Ok": status}},
            {"shard": 0, "node": "n2", "status": {"Err": "no answer from n2"}}]}),
        ),
        (
            "error",
            json!({"Error": {"kind": "Stale", "message": "map moved on"}}),
        ),
    ] {
        s.typed::<DataReply>("data_request", 2, &format!("reply-{name}"), msg);
    }

    // admin_request: 0 = AdminRequest, 1 = AdminReply.
    let member = json!({"node_id": "n1", "generation": 2, "status": "Live", "addr": "127.0.0.1:7401",
        "zone": "a", "roles": ["data"], "version": "0.1.0", "heartbeat": 40});
    let mut admin = vec![
        ("members", json!("Members")),
        ("watch", json!("WatchGossip")),
        ("cluster", json!("Cluster")),
        ("create", json!({"CreateTable": range_spec})),
        ("drop", json!({"DropTable": {"name": "user"}})),
        ("describe", json!({"Describe": {"name": "user"}})),
        (
            "state",
            json!({"SetNodeState": {"node_id": "n2", "state": "Draining"}}),
        ),
        (
            "shard",
            json!({"Shard": {"table": "user", "shard": 3, "op": {"Promote": {"node": "n2"}}}}),
        ),
        ("route", json!({"Route": {"table": "user"}})),
    ];
    admin.extend(
        data_requests
            .iter()
            .take(2)
            .map(|(n, m)| (*n, json!({"Data": m}))),
    );
    let many: Vec<_> = data_requests.iter().take(3).map(|(_, m)| m.clone()).collect();
    admin.push(("data_many", json!({ "DataMany": many })));
    for (name, msg) in admin {
        s.typed::<AdminRequest>("admin_request", 0, name, msg);
    }
    for (name, msg) in [
        (
            "members",
            json!({"Members": {"observer": "n1", "members": [member]}}),
        ),
        (
            "gossip",
            json!({"Gossip": {"observer": "n1", "cluster_id": "tstore", "seeds": ["127.0.0.1:7402"],
            "nodes": [{"node_id": "n2", "generation": 1, "gossip_addr": "127.0.0.1:7402", "status": "Live",
                "heartbeat": 9, "max_version": 4,
                "keys": {"addr": {"value": "127.0.0.1:7402", "version": 2, "deleted": false}}}]}}),
        ),
        (
            "changes",
            json!({"GossipChanges": {"at_unix_ms": 5, "changes": [
            {"StatusChanged": {"node_id": "n2", "generation": 1, "from": "Live", "to": "Down"}}]}}),
        ),
        (
            "cluster",
            json!({"Cluster": {"node_id": "n1", "role": "leader", "leader": "n1", "term": 3,
            "applied_index": 9, "last_log_index": 9, "snapshot_index": 5, "purged_index": 2, "voters": [["n1", true], ["n2", false]],
            "learners": [], "map_version": 4}}),
        ),
        (
            "table",
            json!({"Table": {"map_version": 3, "table": table}}),
        ),
        (
            "events",
            json!({"Events": {"map_version": 2, "events": [{"version": 1, "at_unix_ms": 5,
            "subject": "user/3", "what": "promoted n2", "why": "n1 down", "epoch": 4}]}}),
        ),
        (
            "route",
            json!({"Route": {"map_version": 3, "table": table, "nodes": [["n1", "127.0.0.1:7401"]],
                "now_unix_ms": 1_700_000_000_000u64}}),
        ),
        (
            "data_at",
            json!({"DataAt": {"index": 2, "reply": {"Row": {"version": 4, "json": row}}}}),
        ),
        (
            "error",
            json!({"Error": {"kind": "NotFound", "message": "table \"user\" does not exist",
                "control": {"NoSuchTable": {"name": "user", "known": ["events"]}}}}),
        ),
    ] {
        s.typed::<AdminReply>("admin_request", 1, &format!("reply-{name}"), msg);
    }

    // repl_msg: 0 ReplMsg, 1 LogEntry, 2 Op, 3 RowRecord, 4 ShardMeta,
    // 5 EpochHistory, 6 SnapshotPart.
    s.typed::<ReplMsg>("repl_msg", 0, "prepare", prepare);
    s.typed::<ReplMsg>(
        "repl_msg",
        0,
        "ack",
        json!({"Ack": {"epoch": 3, "logged": 7, "echo": 1234}}),
    );
    s.typed::<ReplMsg>("repl_msg", 0, "stale", json!({"StaleEpoch": {"epoch": 4}}));
    s.typed::<ReplMsg>(
        "repl_msg",
        0,
        "rebuild",
        json!({"Rebuild": {"epoch": 4, "log_start": 10001}}),
    );
    s.typed::<LogEntry>("repl_msg", 1, "entry", entry);
    s.typed::<Op>("repl_msg", 2, "op-batch", batch);
    s.typed::<Op>("repl_msg", 2, "op-put", put);
    s.typed::<RowRecord>("repl_msg", 3, "row", json!({"version": 4, "json": row}));
    let clock = json!({"now_ms": 600_000, "swept_ms": 540_000});
    s.typed::<ShardMeta>(
        "repl_msg",
        4,
        "meta",
        json!({"epoch": 3, "logged": 9, "applied": 8, "clock": clock}),
    );
    s.typed::<EpochHistory>("repl_msg", 5, "history", history);
    s.typed::<SnapshotPart>(
        "repl_msg",
        6,
        "header",
        json!({"Header": {"applied": 9, "clock": clock, "splits": [2], "born": [3, 1_800_000_000_000u64]}}),
    );
    s.typed::<Command>("repl_msg", 7, "command", command);
    s.typed::<ClientRecord>(
        "repl_msg",
        8,
        "client",
        json!({"last_ms": 599_000, "floor": 5,
        "outcomes": {"5": {"Ok": {"Written": {"version": 9}}}, "6": {"Err": {"Batch": {"index": 1,
            "cause": {"Exists": {"key": "1", "version": 4}}}}}}}),
    );

    // frame: the first byte picks the message type (even: PeerMessage,
    // odd: AdminRequest) and the chunk sizes; then a stream of frames.
    let peer: Vec<PeerMessage> = ["Ping"]
        .iter()
        .map(|m| json!(m))
        .chain([json!({"Data": {"Status": {"shard": {"table": "user", "index": 1}, "checksum": false}}})])
        .filter_map(|m| s.json("frame/peer", m))
        .collect();
    let mut stream = vec![0u8];
    for m in &peer {
        stream.extend(frame::encode(m, frame::DEFAULT_MAX_FRAME).unwrap());
    }
    s.write("frame", "peer", &stream);
    let mut stream = vec![5u8];
    for m in [json!("Members"), json!({"Data": data_requests[1].1})] {
        if let Some(m) = s.json::<AdminRequest>("frame/admin", m) {
            stream.extend(frame::encode(&m, frame::DEFAULT_MAX_FRAME).unwrap());
        }
    }
    s.write("frame", "admin", &stream);
    // Refused frames: too long, another version, empty.
    s.write("frame", "too-large", &[2, 0, 0, 0x20, 0, 1]);
    s.write("frame", "version", &[2, 0, 0, 0, 2, 9, 0]);
    s.write("frame", "empty", &[2, 0, 0, 0, 0]);

    // keys: encodings, which also drive the arbitrary keys.
    for (name, k) in [
        ("int", RowKey::Int(-5)),
        ("max", RowKey::Int(i64::MAX)),
        ("str", RowKey::Str("alice".into())),
        ("utf8", RowKey::Str("héllo wörld".into())),
    ] {
        s.write("keys", name, &k.encode());
    }

    // rows: rows, patches, batches.
    for (name, text) in [
        ("row", row),
        (
            "row-str",
            r#"{"id":"bob","tags":[1,2.5,{"a":null}],"ok":true}"#,
        ),
        ("patch", r#"{"age":26,"name":null}"#),
        (
            "batch",
            r#"[{"put":{"id":1,"name":"Alice","age":27}},{"update":{"key":1,"patch":{"age":28}}}]"#,
        ),
        (
            "batch-cond",
            r#"[{"insert":{"id":3}},{"delete":{"key":2,"if_version":2}},{"update":{"key":"x","patch":{},"if_version":9}}]"#,
        ),
    ] {
        s.write("rows", name, text.as_bytes());
    }

    // config: node.toml files.
    s.write(
        "config",
        "minimal",
        b"node_id = \"n1\"\nlisten = \"127.0.0.1:7401\"\n",
    );
    s.write(
        "config",
        "full",
        br#"node_id = "n1"
listen = "127.0.0.1:7401"
advertise = "10.0.0.1:7401"
data_dir = "d1"
certs = "certs"
seeds = ["127.0.0.1:7402", "127.0.0.1:7403"]
zone = "a"
cluster_id = "tstore"
gossip_interval_ms = 200
phi_threshold = 6.0
dead_node_grace_secs = 3600
max_frame_bytes = 8388608
request_timeout_ms = 5000
bootstrap_expect = 3
voters = 3
voter_replace_after_secs = 30
lease_ms = 1000
lease_grace_ms = 1500
replication_heartbeat_ms = 100
recovery_bytes_per_sec = 67108864
rebalance_max_moves = 2
"#,
    );
    s.write("config", "bad-lease", b"lease_ms = 2000\nvoters = 4\n");

    // gossip: envelopes of both protocol versions.
    for (name, version) in [
        ("v0", chitchat::ProtocolVersion::V0),
        ("v1", chitchat::ProtocolVersion::V1),
    ] {
        let syn = chitchat::ChitchatEnvelope {
            version,
            message: chitchat::ChitchatMessage::Syn {
                cluster_id: "tstore".into(),
                digest: Default::default(),
            },
        };
        s.write("gossip", &format!("syn-{name}"), &syn.serialize_to_vec());
        let bad = chitchat::ChitchatEnvelope {
            version,
            message: chitchat::ChitchatMessage::BadCluster,
        };
        s.write(
            "gossip",
            &format!("bad-cluster-{name}"),
            &bad.serialize_to_vec(),
        );
    }

    // copy_gossip: a node's copies as it publishes them (bitmaps, runs,
    // flags, a primary's silent backups).
    s.write(
        "copy_gossip",
        "mixed",
        b"v1 user=p1:x0.9249;b1:x1.6db6 events=b1:1023;l2c:6;l2r:5;p3/n2+n-3_b:1;b7f:2",
    );
    s.write("copy_gossip", "runs", b"v1 t=p2:0-4,9,12-15");

    if !s.failed.is_empty() {
        for f in &s.failed {
            eprintln!("seed not written: {f}");
        }
        std::process::exit(1);
    }
}
