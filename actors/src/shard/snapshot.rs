//! Both ends of a snapshot stream, which builds a learner's copy of a shard.
//!
//! The primary's end, [`SnapshotServer`], reads the shard's rows and client
//! sessions in one LMDB read transaction on a thread of its own and streams
//! them as [`SnapshotPart`]s (header, row chunks, session chunks, end),
//! throttled to the node's recovery rate. The learner's end, [`fetch`],
//! replaces whatever the node held of the shard with those parts, then
//! records the point the rows reflect, from which the learner follows the
//! primary's log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use tstore_core::shard::ShardKey;

use crate::control::MapView;
use crate::data::store::{ChunkKind, ShardMeta, ShardPrefix, ShardStore, SnapshotMarks};
use crate::peer::{PeerMessage, PeerReply, SnapshotPart};
use crate::peer_link::PeerLink;
use crate::recovery::Recovery;

/// Rows per snapshot frame, by size (well under the frame limit).
const SNAPSHOT_CHUNK: usize = 256 * 1024;
/// How long a learner waits for the next part of a snapshot.
const SNAPSHOT_PART_TIMEOUT: Duration = Duration::from_secs(15);
/// Parts the server reads ahead of the network.
const SERVER_QUEUE: usize = 4;

/// Serves snapshots of the shards this node leads to learners.
#[derive(Clone)]
pub struct SnapshotServer {
    pub me: String,
    pub store: ShardStore,
    pub map: MapView,
    /// Bytes per second sent to one learner; 0 is unthrottled.
    pub rate: u64,
    pub recovery: Recovery,
}

impl SnapshotServer {
    /// Streams a shard's rows from one read transaction on a thread of its
    /// own, throttled to `rate`. Only the primary serves: its log holds
    /// every entry after the snapshot, which the learner needs next.
    pub fn serve(&self, key: ShardKey) -> BoxStream<'static, PeerReply> {
        let ShardKey {
            table,
            index: shard,
        } = key;
        let map = self.map.map();
        let Some(t) = map.tables.get(&table) else {
            let why = format!("table {table:?} does not exist here");
            return stream::once(async move { PeerReply::Refused(why) }).boxed();
        };
        let id = ShardPrefix { table: t.id, shard };
        match t.shards.get(shard as usize) {
            // A shard split off another: this copy may not be built yet.
            Some(s)
                if s.origin.is_some()
                    && !self
                        .store
                        .built(id, s.origin.as_ref().map(|o| o.birth()))
                        .unwrap_or(false) =>
            {
                let why = format!(
                    "{table}/{shard} is still being split off its parent on {}",
                    self.me
                );
                return stream::once(async move { PeerReply::Refused(why) }).boxed();
            }
            Some(s) if s.replicas.primary == self.me => {}
            _ => {
                let why = format!("{} is not the primary of {table}/{shard}", self.me);
                return stream::once(async move { PeerReply::Refused(why) }).boxed();
            }
        }
        let label = format!("{table}/{shard}");
        let (tx, rx) = tokio::sync::mpsc::channel(SERVER_QUEUE);
        let (store, rate, recovery) = (self.store.clone(), self.rate, self.recovery.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut sent = 0u64;
            let header = |m: ShardMeta, marks: SnapshotMarks| {
                tx.blocking_send(PeerReply::Snapshot(SnapshotPart::Header {
                    applied: m.applied,
                    clock: m.clock,
                    splits: marks.splits,
                    born: marks.born,
                }))
                .is_ok()
            };
            let chunk = |kind: ChunkKind, rows: Vec<(Vec<u8>, Vec<u8>)>| {
                sent += rows
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>();
                if rate > 0 {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let part = match kind {
                    ChunkKind::Rows => SnapshotPart::Rows(rows),
                    ChunkKind::Sessions => SnapshotPart::Sessions(rows),
                };
                tx.blocking_send(PeerReply::Snapshot(part)).is_ok()
            };
            let end = match store.snapshot(id, SNAPSHOT_CHUNK, header, chunk) {
                Ok(_) => {
                    recovery.served(sent);
                    PeerReply::Snapshot(SnapshotPart::End)
                }
                Err(e) => {
                    // A corrupt row is never shipped: the learner retries
                    // (from the next primary, if this one is replaced).
                    tracing::warn!(shard = %label, error = %e, "snapshot not served");
                    PeerReply::Refused(format!("snapshot failed: {e}"))
                }
            };
            let _ = tx.blocking_send(end);
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// A learner's copy of a shard, to be fetched from its primary.
pub(crate) struct Fetch {
    pub(crate) link: Arc<dyn PeerLink>,
    pub(crate) primary: String,
    pub(crate) key: ShardKey,
    pub(crate) store: ShardStore,
    pub(crate) id: ShardPrefix,
    /// The epoch the installed copy is recorded at.
    pub(crate) epoch: u64,
    /// A snapshot reflecting less than this is refused (the copy had
    /// acknowledged up to here before it was found corrupt).
    pub(crate) min_applied: u64,
    /// Rows and bytes installed so far.
    pub(crate) progress: Arc<(AtomicU64, AtomicU64)>,
}

/// What [`fetch`] installed.
pub(crate) struct Installed {
    /// The last entry the rows reflect.
    pub(crate) applied: u64,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
}

/// Replaces whatever this node held of the shard with a snapshot streamed
/// from the primary. Every wait is bounded: a part that does not come
/// within [`SNAPSHOT_PART_TIMEOUT`] fails the fetch (the caller retries).
pub(crate) async fn fetch(f: Fetch) -> Result<Installed, String> {
    let Fetch {
        link,
        primary,
        key,
        store,
        id,
        epoch,
        min_applied,
        progress,
    } = f;
    let blocking = |f: Box<dyn FnOnce() -> Result<(), String> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string())?
    };
    let req = PeerMessage::Snapshot { shard: key.clone() };
    let mut stream = link
        .request_stream(&primary, req)
        .await
        .map_err(|e| e.to_string())?;
    let (mut applied, mut rows, mut bytes) = (None, 0u64, 0u64);
    loop {
        let part = tokio::time::timeout(SNAPSHOT_PART_TIMEOUT, stream.next())
            .await
            .map_err(|_| format!("no snapshot data for {SNAPSHOT_PART_TIMEOUT:?}"))?
            .transpose()
            .map_err(|e| e.to_string())?;
        let (kind, chunk) = match part {
            Some(PeerReply::Snapshot(SnapshotPart::Header {
                applied: a,
                clock,
                splits,
                born,
            })) => {
                if a < min_applied {
                    return Err(format!(
                        "the primary's snapshot reflects entries up to {a}, short of the {min_applied} this copy needs; waiting for the primary to apply them"
                    ));
                }
                // What this node held goes only for a snapshot it can use
                // (a short one leaves it, say a copy not merged yet, alone).
                let st = store.clone();
                blocking(Box::new(move || {
                    st.begin_install(id).map_err(|e| e.to_string())
                }))
                .await?;
                applied = Some((a, clock, SnapshotMarks { splits, born }));
                continue;
            }
            Some(PeerReply::Snapshot(SnapshotPart::Rows(chunk))) => (ChunkKind::Rows, chunk),
            Some(PeerReply::Snapshot(SnapshotPart::Sessions(chunk))) => {
                (ChunkKind::Sessions, chunk)
            }
            Some(PeerReply::Snapshot(SnapshotPart::End)) => break,
            Some(PeerReply::Refused(why)) => return Err(why),
            Some(other) => return Err(format!("unexpected snapshot reply {other:?}")),
            None => return Err("the snapshot stream ended early".into()),
        };
        if applied.is_none() {
            return Err("snapshot data came before its header".into());
        }
        let chunk_bytes = chunk
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        if kind == ChunkKind::Rows {
            rows += chunk.len() as u64;
            progress.0.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        bytes += chunk_bytes;
        progress.1.fetch_add(chunk_bytes, Ordering::Relaxed);
        let st = store.clone();
        blocking(Box::new(move || {
            st.install(id, kind, &chunk).map_err(|e| e.to_string())
        }))
        .await?;
    }
    let (applied, clock, marks) = applied.ok_or("the snapshot had no header")?;
    let st = store.clone();
    blocking(Box::new(move || {
        st.finish_install(id, applied, clock, epoch, &marks)
            .map_err(|e| e.to_string())
    }))
    .await?;
    Ok(Installed {
        applied,
        rows,
        bytes,
    })
}
