//! The node's LMDB environment (heed): one per node, in `<data dir>/lmdb`.
//!
//! Every durable structure of the node lives in a named database of this one
//! environment: the control plane's Raft log, vote and applied cluster map
//! (`control::store`), and every shard copy's log, rows, client sessions and
//! metadata (`data::store`). A write transaction's commit is LMDB's fsync'd
//! commit, so what a commit returned survives kill -9 and power loss.

use std::path::Path;

use heed::{Env, EnvOpenOptions};

/// Address space reserved for the environment (LMDB grows the file as needed).
pub const MAP_SIZE: usize = 64 << 30;
/// Named databases the environment can hold.
pub const MAX_DBS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create {path}: {cause}")]
    CreateDir { path: String, cause: std::io::Error },
    #[error("cannot open LMDB environment {path}: {cause}")]
    Open { path: String, cause: heed::Error },
}

/// Opens (creating if needed) the node's environment under `data_dir`.
pub fn open_env(data_dir: &Path) -> Result<Env, StorageError> {
    let path = data_dir.join("lmdb");
    std::fs::create_dir_all(&path).map_err(|cause| StorageError::CreateDir {
        path: path.display().to_string(),
        cause,
    })?;
    let mut options = EnvOpenOptions::new();
    options.map_size(MAP_SIZE).max_dbs(MAX_DBS);
    // SAFETY: heed requires that an environment is opened at most once per
    // process and path, and that its files are not modified by other means
    // while open. A node opens its own data dir once at start-up (the data dir
    // belongs to one node id, checked by `NodeIdentity::start`).
    #[allow(unsafe_code)]
    let env = unsafe { options.open(&path) };
    env.map_err(|cause| StorageError::Open {
        path: path.display().to_string(),
        cause,
    })
}
