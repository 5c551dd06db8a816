//! Replication messages and the records a node stores: log entries (and the
//! command each carries, decoded when it is applied), rows, shard state,
//! snapshot parts, client sessions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tstore_actors::data::store::ShardMeta;
use tstore_actors::peer::SnapshotPart;
use tstore_core::data::ops::{Op, RowRecord};
use tstore_core::data::sessions::{ClientRecord, Command};
use tstore_core::replication::{EpochHistory, LogEntry, ReplMsg};
use tstore_fuzz::{roundtrip, select};

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = select(data) else {
        return;
    };
    match which % 9 {
        0 => {
            if let Some(ReplMsg::Prepare { entries, .. }) = roundtrip::<ReplMsg>(bytes) {
                for e in entries {
                    roundtrip::<Command>(&e.op);
                }
            }
        }
        1 => {
            if let Some(e) = roundtrip::<LogEntry>(bytes) {
                roundtrip::<Command>(&e.op);
            }
        }
        2 => drop(roundtrip::<Op>(bytes)),
        3 => drop(roundtrip::<RowRecord>(bytes)),
        4 => drop(roundtrip::<ShardMeta>(bytes)),
        5 => drop(roundtrip::<EpochHistory>(bytes)),
        6 => drop(roundtrip::<SnapshotPart>(bytes)),
        7 => drop(roundtrip::<Command>(bytes)),
        _ => drop(roundtrip::<ClientRecord>(bytes)),
    }
});
