//! Client and operator requests and their replies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tstore_core::wire::{AdminReply, AdminRequest};
use tstore_fuzz::{roundtrip, select};

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = select(data) else {
        return;
    };
    match which % 2 {
        0 => drop(roundtrip::<AdminRequest>(bytes)),
        _ => drop(roundtrip::<AdminReply>(bytes)),
    }
});
