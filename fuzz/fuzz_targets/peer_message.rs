//! Node-to-node messages and their replies, as a node decodes them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tstore_actors::peer::{PeerMessage, PeerReply};
use tstore_fuzz::{roundtrip, select};

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = select(data) else {
        return;
    };
    match which % 2 {
        0 => drop(roundtrip::<PeerMessage>(bytes)),
        _ => drop(roundtrip::<PeerReply>(bytes)),
    }
});
