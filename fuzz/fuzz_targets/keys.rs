//! The order-preserving key encoding: arbitrary bytes to decode, and
//! arbitrary keys to encode, compare, route and read back.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tstore_core::cluster_map::{KeyRange, RowKey};

#[derive(Debug, Arbitrary)]
enum Key {
    Int(i64),
    Str(String),
}

impl From<Key> for RowKey {
    fn from(k: Key) -> Self {
        match k {
            Key::Int(i) => RowKey::Int(i),
            Key::Str(s) => RowKey::Str(s),
        }
    }
}

fn check(a: &RowKey, b: &RowKey, of: u32) {
    let (ea, eb) = (a.encode(), b.encode());
    assert_eq!(
        RowKey::decode(&ea).as_ref(),
        Some(a),
        "{a:?} does not round-trip"
    );
    assert_eq!(a.cmp(b), ea.cmp(&eb), "{a:?} vs {b:?}: order not kept");
    assert_eq!(a == b, ea == eb);
    let slot = a.hash_slot(of);
    assert!(slot < of.max(1));
    assert!(KeyRange::HashSlot {
        slot,
        of: of.max(1)
    }
    .contains(a));
    // A range [lo, hi) holds exactly the keys between its bounds.
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let range = KeyRange::Range {
        start: Some(lo.clone()),
        end: Some(hi.clone()),
    };
    assert_eq!(range.contains(lo), lo != hi);
    assert!(!range.contains(hi));
    // Keys from a JSON row agree with the encoding's length limit.
    let json = match a {
        RowKey::Int(i) => serde_json::json!({ "k": i }),
        RowKey::Str(s) => serde_json::json!({ "k": s }),
    };
    match RowKey::from_row(&json, "k") {
        Ok(k) => assert_eq!(&k, a),
        Err(e) => assert!(ea.len() > tstore_core::keys::MAX_KEY_BYTES, "{e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // Decoding never panics, and what decodes is exactly what encodes to it.
    if let Some(k) = RowKey::decode(data) {
        assert_eq!(
            k.encode(),
            data,
            "{k:?} decodes from bytes it does not encode to"
        );
    }
    let mut u = Unstructured::new(data);
    let (Ok(a), Ok(b), Ok(of)) = (
        Key::arbitrary(&mut u),
        Key::arbitrary(&mut u),
        u32::arbitrary(&mut u),
    ) else {
        return;
    };
    let (a, b) = (RowKey::from(a), RowKey::from(b));
    check(&a, &b, of);
    check(&b, &a, of);
});
