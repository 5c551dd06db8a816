//! Gossip envelopes (the vendored chitchat's codec), as a node decodes the
//! payload of a `PeerMessage::Gossip`.
//!
//! Only envelopes without a delta are re-encoded: a decoded `Delta` keeps
//! the length it was read with and its encoder asserts that it writes
//! exactly that many bytes, which a non-canonical input (the first crash
//! this target found) breaks. chitchat never re-encodes a delta it
//! received (it applies it and answers with its own), so that assertion is
//! not reachable from the network; decoding must still never panic.
#![no_main]

use chitchat::{ChitchatEnvelope, ChitchatMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = ChitchatEnvelope::deserialize(&mut &data[..]) else {
        return;
    };
    if !matches!(
        envelope.message,
        ChitchatMessage::Syn { .. } | ChitchatMessage::BadCluster
    ) {
        return;
    }
    let once = envelope.serialize_to_vec();
    let again =
        ChitchatEnvelope::deserialize(&mut &once[..]).expect("a re-encoded envelope decodes");
    assert_eq!(again, envelope);
    assert_eq!(
        once,
        again.serialize_to_vec(),
        "the round trip is not stable"
    );
});
