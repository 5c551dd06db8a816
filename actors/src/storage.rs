//! The node's LMDB environments (heed), two per node:
//! - `<data dir>/lmdb`: every shard copy's log, rows, client sessions and
//!   metadata (`data::store`), in a map of `lmdb_map_size` bytes;
//! - `<data dir>/control`: the control plane's Raft log, vote and applied
//!   cluster map (`control::store`). Apart, so that shard data filling its
//!   map (or writes failing) does not stop this node's part in the control
//!   plane, which is what moves the shards away and brings them back.
//!
//! A write transaction's commit is LMDB's fsync'd commit, so what a commit
//! returned survives kill -9 and power loss.
//!
//! [`StorageHealth`] says whether the shard store can write: the group
//! commit marks it failed on a write that fails for want of space or with an
//! I/O error, and the node publishes it in gossip (see
//! `tstore_core::view::KEY_STORAGE`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use heed::{Env, EnvOpenOptions};

/// Address space reserved for the shard data by default (LMDB grows the
/// file as needed, up to this).
pub const MAP_SIZE: usize = 64 << 30;
/// Address space of the control plane's environment.
pub const CONTROL_MAP_SIZE: usize = 4 << 30;
/// Named databases the environment can hold.
pub const MAX_DBS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create {path}: {cause}")]
    CreateDir { path: String, cause: std::io::Error },
    #[error("cannot open LMDB environment {path}: {cause}")]
    Open { path: String, cause: heed::Error },
}

/// Opens (creating if needed) the shard data environment under `data_dir`
/// with the default map size.
pub fn open_env(data_dir: &Path) -> Result<Env, StorageError> {
    open_data_env(data_dir, MAP_SIZE)
}

/// Opens (creating if needed) the shard data environment under `data_dir`,
/// `map_size` bytes at most.
pub fn open_data_env(data_dir: &Path, map_size: usize) -> Result<Env, StorageError> {
    open_at(&data_dir.join("lmdb"), map_size)
}

/// Opens (creating if needed) the control plane's environment under
/// `data_dir`.
pub fn open_control_env(data_dir: &Path) -> Result<Env, StorageError> {
    open_at(&data_dir.join("control"), CONTROL_MAP_SIZE)
}

fn open_at(path: &Path, map_size: usize) -> Result<Env, StorageError> {
    let path = path.to_path_buf();
    std::fs::create_dir_all(&path).map_err(|cause| StorageError::CreateDir {
        path: path.display().to_string(),
        cause,
    })?;
    let mut options = EnvOpenOptions::new();
    options.map_size(map_size).max_dbs(MAX_DBS);
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

/// Whether the node's shard store can write; cheap to clone, shared by the
/// group commit (which marks it failed) and the node (which probes it back
/// and publishes it).
#[derive(Clone, Default)]
pub struct StorageHealth(Arc<Mutex<Option<String>>>);

impl StorageHealth {
    /// A write failed for want of space or with an I/O error.
    pub fn failed(&self, why: &str) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            tracing::error!(error = %why, "the shard store cannot write: this node's copies will fail over to other nodes until it can");
        }
        *g = Some(why.to_owned());
    }

    /// Writes work again.
    pub fn recovered(&self) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = g.take() {
            tracing::info!(was = %why, "the shard store can write again");
        }
    }

    /// Why the store cannot write, while it cannot.
    pub fn failure(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
