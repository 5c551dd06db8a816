//! Row reads and writes (as clients send them and as nodes forward them to
//! a shard copy) and their replies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tstore_core::wire::{DataReply, DataRequest, ShardRequest};
use tstore_fuzz::{roundtrip, select};

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = select(data) else {
        return;
    };
    match which % 3 {
        0 => drop(roundtrip::<DataRequest>(bytes)),
        1 => drop(roundtrip::<ShardRequest>(bytes)),
        _ => drop(roundtrip::<DataReply>(bytes)),
    }
});
