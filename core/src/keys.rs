//! Row keys: how a primary-key value is encoded for storage and routed to a
//! shard.
//!
//! A key is a JSON integer (i64) or string ([`RowKey`]). Its encoding keeps
//! order byte-wise, so an LMDB range scan returns rows in key order:
//! `0x01` + the integer's big-endian bytes with the sign bit flipped, or
//! `0x02` + the string's UTF-8 bytes (UTF-8 byte order is code-point order).
//! Integers sort before strings, as `RowKey`'s `Ord` says.
//!
//! Hash-sharded tables route a key to `fnv1a64(encoding) % shards`; the
//! client library and the nodes compute the same.

use crate::cluster_map::{KeyRange, RowKey, Table};

const TAG_INT: u8 = 0x01;
const TAG_STR: u8 = 0x02;

/// Why a JSON value cannot be a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key column {column:?} is missing")]
    Missing { column: String },
    #[error("key column {column:?} must be an integer or a string, not {found}")]
    WrongType { column: String, found: &'static str },
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
}

/// Longest encoded key (LMDB's default key limit is 511 bytes).
pub const MAX_KEY_BYTES: usize = 500;

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a non-integer number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl RowKey {
    /// The key in column `column` of a JSON row.
    pub fn from_row(row: &serde_json::Value, column: &str) -> Result<RowKey, KeyError> {
        let v = row.get(column).ok_or_else(|| KeyError::Missing {
            column: column.to_owned(),
        })?;
        let key = match v {
            serde_json::Value::Number(n) => n.as_i64().map(RowKey::Int),
            serde_json::Value::String(s) => Some(RowKey::Str(s.clone())),
            _ => None,
        }
        .ok_or_else(|| KeyError::WrongType {
            column: column.to_owned(),
            found: json_type(v),
        })?;
        let len = key.encode().len();
        if len > MAX_KEY_BYTES {
            return Err(KeyError::TooLong {
                len,
                max: MAX_KEY_BYTES,
            });
        }
        Ok(key)
    }

    /// The order-preserving encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            RowKey::Int(i) => {
                let mut out = Vec::with_capacity(9);
                out.push(TAG_INT);
                out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
                out
            }
            RowKey::Str(s) => {
                let mut out = Vec::with_capacity(1 + s.len());
                out.push(TAG_STR);
                out.extend_from_slice(s.as_bytes());
                out
            }
        }
    }

    /// Inverse of [`RowKey::encode`]; `None` for bytes it never produces.
    pub fn decode(bytes: &[u8]) -> Option<RowKey> {
        match bytes.split_first()? {
            (&TAG_INT, rest) => {
                let raw = u64::from_be_bytes(rest.try_into().ok()?);
                Some(RowKey::Int((raw ^ (1 << 63)) as i64))
            }
            (&TAG_STR, rest) => std::str::from_utf8(rest)
                .ok()
                .map(|s| RowKey::Str(s.to_owned())),
            _ => None,
        }
    }

    /// The key's hash (FNV-1a, 64 bits, of its encoding).
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.encode() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    /// The hash slot of this key among `of` slots.
    pub fn hash_slot(&self, of: u32) -> u32 {
        slot_of(self.hash(), of)
    }
}

fn slot_of(hash: u64, of: u32) -> u32 {
    (hash % u64::from(of.max(1))) as u32
}

impl KeyRange {
    /// Whether a key of this `hash` belongs to this hash slot (`false` for
    /// a range shard).
    fn holds_hash(&self, hash: u64) -> bool {
        matches!(self, KeyRange::HashSlot { slot, of } if slot_of(hash, *of) == *slot)
    }
}

impl KeyRange {
    /// Whether `key` belongs to this range.
    pub fn contains(&self, key: &RowKey) -> bool {
        match self {
            KeyRange::HashSlot { slot, of } => key.hash_slot(*of) == *slot,
            KeyRange::Range { start, end } => {
                start.as_ref().is_none_or(|s| key >= s) && end.as_ref().is_none_or(|e| key < e)
            }
        }
    }
}

impl Table {
    /// The index of the shard that owns `key`.
    ///
    /// A shard the table was created with sits where its creation put it
    /// (`hash % shards`, or its position among the split points) until it
    /// is split; after a split ([`crate::cluster_map::MapCommand::SplitShard`])
    /// the owner is the one shard whose range holds the key, found by a
    /// pass over the shards (a table split into many shards pays that per
    /// key; an index is future work).
    pub fn shard_of(&self, key: &RowKey) -> u32 {
        // Where creation put the key, and how a shard's range says it holds it.
        let (guess, holds): (u32, &dyn Fn(&KeyRange) -> bool) = match &self.spec.sharding {
            crate::cluster_map::Sharding::Hash { shards } => {
                let hash = key.hash();
                (slot_of(hash, *shards), &move |r| r.holds_hash(hash))
            }
            crate::cluster_map::Sharding::Range { splits } => {
                (splits.partition_point(|s| s <= key) as u32, &|r| {
                    r.contains(key)
                })
            }
        };
        if self
            .shards
            .get(guess as usize)
            .is_some_and(|s| holds(&s.range))
        {
            return guess;
        }
        self.shards
            .iter()
            .find(|s| holds(&s.range))
            .map_or(guess, |s| s.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::{ClusterMap, MapCommand, Sharding, TableSpec};
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = RowKey> {
        prop_oneof![
            any::<i64>().prop_map(RowKey::Int),
            ".{0,20}".prop_map(RowKey::Str),
        ]
    }

    proptest! {
        #[test]
        fn encoding_preserves_order_and_roundtrips(a in key(), b in key()) {
            prop_assert_eq!(a.cmp(&b), a.encode().cmp(&b.encode()));
            prop_assert_eq!(RowKey::decode(&a.encode()), Some(a.clone()));
        }

        #[test]
        fn arbitrary_bytes_decode_only_to_the_key_that_encodes_to_them(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            if let Some(k) = RowKey::decode(&bytes) {
                prop_assert_eq!(k.encode(), bytes);
            }
        }

        #[test]
        fn every_key_has_exactly_one_shard(k in key(), splits in proptest::collection::btree_set(key(), 1..6)) {
            let mut map = ClusterMap::default();
            map.apply(&MapCommand::RegisterNode { node_id: "n1".into(), addr: String::new(), zone: String::new() }).unwrap();
            let splits: Vec<RowKey> = splits.into_iter().collect();
            let n = splits.len() + 1;
            map.apply(&MapCommand::CreateTable {
                spec: TableSpec { name: "t".into(), key: "k".into(), sharding: Sharding::Range { splits }, replicas: 1 , min_copies: 0},
                placement: vec![("n1".into(), vec![]); n],
            }).unwrap();
            let t = &map.tables["t"];
            let owners: Vec<u32> = t.shards.iter().filter(|s| s.range.contains(&k)).map(|s| s.index).collect();
            prop_assert_eq!(owners, vec![t.shard_of(&k)]);
        }
    }

    #[test]
    fn keys_come_from_integer_or_string_columns_only() {
        let row = serde_json::json!({"id": 7, "name": "Alice", "age": 2.5, "tags": []});
        assert_eq!(RowKey::from_row(&row, "id"), Ok(RowKey::Int(7)));
        assert_eq!(
            RowKey::from_row(&row, "name"),
            Ok(RowKey::Str("Alice".into()))
        );
        assert_eq!(
            RowKey::from_row(&row, "age").unwrap_err().to_string(),
            "key column \"age\" must be an integer or a string, not a non-integer number"
        );
        assert_eq!(
            RowKey::from_row(&row, "missing").unwrap_err().to_string(),
            "key column \"missing\" is missing"
        );
        let long = serde_json::json!({"id": "x".repeat(600)});
        assert!(matches!(
            RowKey::from_row(&long, "id"),
            Err(KeyError::TooLong { .. })
        ));
    }

    #[test]
    fn hash_slots_are_stable() {
        // Pinned (computed independently): clients and nodes of every version must agree.
        assert_eq!(RowKey::Int(1).hash_slot(8), 7);
        assert_eq!(RowKey::Int(2).hash_slot(8), 2);
        assert_eq!(RowKey::Str("alice".into()).hash_slot(8), 7);
        assert_eq!(RowKey::Int(-5).hash_slot(1024), 984);
        let slots: Vec<u32> = (0..1000).map(|i| RowKey::Int(i).hash_slot(8)).collect();
        for s in 0..8 {
            let n = slots.iter().filter(|x| **x == s).count();
            assert!((60..190).contains(&n), "slot {s} got {n} of 1000 keys");
        }
    }
}
