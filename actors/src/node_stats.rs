//! A node's storage figures for operators (`tstore admin node-stats`): the
//! size of its data dir, its LMDB map size and use, the shard copies it
//! holds, and the bytes it wrote per log entry since start. Measured on
//! request, off the actors' threads (walking the data dir is blocking I/O).

use std::path::{Path, PathBuf};
use tstore_core::wire::NodeStats;

use crate::data::store::ShardStore;
use crate::recovery::Recovery;
use crate::shard::local::LocalCopies;
use crate::storage::StorageHealth;

/// Most directory entries walked under the data dir for one answer.
pub const MAX_WALK: usize = 100_000;

/// What a node measures its stats from.
#[derive(Clone)]
pub struct StatsSource {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub store: ShardStore,
    pub local: LocalCopies,
    pub recovery: Recovery,
    pub storage: StorageHealth,
}

impl StatsSource {
    /// Measures now (blocking: walks the data dir, reads `/proc/self/io`).
    pub fn measure(&self) -> NodeStats {
        let env = self.store.env();
        let info = env.info();
        let page_size = u64::from(env.unnamed_database_stat().page_size);
        let entries_logged = self.store.entries_logged();
        let disk_write_bytes = proc_write_bytes();
        NodeStats {
            node_id: self.node_id.clone(),
            data_dir: self.data_dir.display().to_string(),
            data_dir_bytes: dir_bytes(&self.data_dir, MAX_WALK),
            lmdb_map_size: info.map_size as u64,
            lmdb_used_bytes: (info.last_page_number as u64 + 1) * page_size,
            copies: self.local.current().len() as u64,
            entries_logged,
            disk_write_bytes,
            bytes_per_entry: disk_write_bytes
                .filter(|_| entries_logged > 0)
                .map(|b| b / entries_logged),
            recovery: self.recovery.stats(),
            group_commits: self.store.commits(),
            storage_error: self.storage.failure(),
        }
    }
}

/// Sum of the lengths of the files under `dir` (symbolic links not
/// followed), visiting at most `max` entries; unreadable entries count 0.
pub fn dir_bytes(dir: &Path, max: usize) -> u64 {
    let mut total = 0;
    let mut seen = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > max {
                return total;
            }
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                todo.push(e.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// `write_bytes` of `/proc/self/io`: bytes this process caused to be sent
/// to storage. `None` off Linux or where it cannot be read.
fn proc_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_bytes_sums_files_in_subdirectories_and_stops_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 32]).unwrap();
        assert_eq!(dir_bytes(dir.path(), MAX_WALK), 42);
        assert!(dir_bytes(dir.path(), 1) <= 10);
    }
}
