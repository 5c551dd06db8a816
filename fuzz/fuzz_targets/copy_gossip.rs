//! A node's shard copies in gossip (`tstore_core::copy_gossip`): the text
//! as one chunk's value, as a peer's health derivation reads it.
//!
//! Decoding never panics, names only shards below the shard limit, and
//! what decodes encodes again into chunks that each fit the chunk limit
//! and read back to the same copies.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tstore_core::cluster_map::MAX_SHARDS;
use tstore_core::copy_gossip::{chunk_key, decode, encode, node_copies, MAX_CHUNK_BYTES};
use tstore_core::shard::ShardKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(groups) = decode(text) else {
        return;
    };
    let mut copies = BTreeMap::new();
    for g in &groups {
        assert!(!g.shards.is_empty());
        for &s in &g.shards {
            assert!(s < MAX_SHARDS);
            copies.insert(ShardKey::new(&g.table, s), g.state.clone());
        }
    }
    let chunks = encode(&copies);
    let keys: Vec<(String, String)> = chunks
        .iter()
        .enumerate()
        .map(|(i, v)| {
            assert!(v.len() <= MAX_CHUNK_BYTES);
            (chunk_key(i), v.clone())
        })
        .collect();
    let mut back = BTreeMap::new();
    for g in node_copies(keys.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        for s in g.shards {
            back.insert(ShardKey::new(&g.table, s), g.state.clone());
        }
    }
    assert_eq!(back, copies);
});
