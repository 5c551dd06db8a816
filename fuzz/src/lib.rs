//! What the fuzz targets share: decoding the way a node does, and the
//! round-trip check.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `bytes` as a `T` the way a node decodes a frame's payload or a
/// stored record (`tstore_transport::decode`). When that succeeds, the value
/// is encoded, decoded and encoded again: both encodings must be equal.
///
/// Encodings are compared rather than values so that types without
/// `PartialEq` (most wire enums) are checked too; the first decode may
/// differ from the input (non-minimal varints, trailing bytes), the second
/// may not. Returns the decoded value.
pub fn roundtrip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = tstore_transport::decode::from_bytes(bytes).ok()?;
    let once = postcard::to_stdvec(&value).expect("a decoded value encodes");
    let again: T = tstore_transport::decode::from_bytes(&once)
        .unwrap_or_else(|e| panic!("a re-encoded value does not decode: {e}"));
    let twice = postcard::to_stdvec(&again).expect("a decoded value encodes");
    assert_eq!(once, twice, "the round trip is not stable");
    Some(value)
}

/// Splits the first byte off `data`: it picks what the rest is decoded as.
pub fn select(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(&b, rest)| (b, rest))
}
