//! The node's stable identity: a node id chosen at first start and kept in the
//! data dir, and a generation that grows at every start.
//!
//! The generation makes a restarted node a new incarnation in gossip (a new
//! chitchat id), so nothing published by the old process is trusted as the new
//! one's. It is `max(previous + 1, unix time in ms)`: monotonic even if the
//! clock steps back, and still larger than any earlier incarnation's if the
//! file is lost.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::MembershipError;

const FILE: &str = "identity.json";

/// Who this node is, and which incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: String,
    pub generation: u64,
}

/// Node ids travel in certificates and file names: keep them to a DNS label.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl NodeIdentity {
    /// Loads the identity kept in `data_dir` (creating the dir and the identity
    /// on first start), checks it against `node_id` if given, bumps the
    /// generation and persists it before returning.
    pub fn start(data_dir: &Path, node_id: Option<&str>) -> Result<Self, MembershipError> {
        std::fs::create_dir_all(data_dir).map_err(|cause| MembershipError::Write {
            path: data_dir.to_owned(),
            cause,
        })?;
        let path = data_dir.join(FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice::<NodeIdentity>(&bytes).map_err(|e| {
                MembershipError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(cause) => return Err(MembershipError::Read { path, cause }),
        };
        let (node_id, previous) = match (stored, node_id) {
            (Some(s), Some(req)) if s.node_id != req => {
                return Err(MembershipError::WrongNode {
                    dir: data_dir.to_owned(),
                    stored: s.node_id,
                    requested: req.to_owned(),
                })
            }
            (Some(s), _) => (s.node_id, s.generation),
            (None, Some(req)) => (req.to_owned(), 0),
            (None, None) => {
                return Err(MembershipError::NoNodeId {
                    dir: data_dir.to_owned(),
                })
            }
        };
        if !valid_node_id(&node_id) {
            return Err(MembershipError::BadNodeId(node_id));
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let identity = NodeIdentity {
            node_id,
            generation: (previous + 1).max(now_ms),
        };
        write_atomically(
            &path,
            &serde_json::to_vec_pretty(&identity).expect("serializable"),
        )?;
        Ok(identity)
    }
}

/// Writes `bytes` to a temporary file, syncs it, and renames it over `path`,
/// so a crash leaves either the old or the new identity, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MembershipError> {
    let tmp: PathBuf = path.with_extension("json.tmp");
    let err = |cause| MembershipError::Write {
        path: path.to_owned(),
        cause,
    };
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_needs_an_id_then_remembers_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = NodeIdentity::start(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("--node-id"), "{err}");
        let a = NodeIdentity::start(dir.path(), Some("n1")).unwrap();
        let b = NodeIdentity::start(dir.path(), None).unwrap();
        let c = NodeIdentity::start(dir.path(), Some("n1")).unwrap();
        assert_eq!(b.node_id, "n1");
        assert!(a.generation < b.generation && b.generation < c.generation);
    }

    #[test]
    fn refuses_another_nodes_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        NodeIdentity::start(dir.path(), Some("n1")).unwrap();
        let err = NodeIdentity::start(dir.path(), Some("n2")).unwrap_err();
        assert!(err.to_string().contains("belongs to node \"n1\""), "{err}");
    }

    #[test]
    fn refuses_bad_ids_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            NodeIdentity::start(dir.path(), Some("a b")),
            Err(MembershipError::BadNodeId(_))
        ));
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(matches!(
            NodeIdentity::start(dir.path(), None),
            Err(MembershipError::Corrupt { .. })
        ));
    }
}
