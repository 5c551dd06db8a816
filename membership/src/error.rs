use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("data dir {dir} belongs to node {stored:?}, not {requested:?}")]
    WrongNode {
        dir: PathBuf,
        stored: String,
        requested: String,
    },
    #[error("data dir {dir} has no node id yet: pass --node-id on the first start")]
    NoNodeId { dir: PathBuf },
    #[error("invalid node id {0:?}: use 1-63 letters, digits, '-' or '_'")]
    BadNodeId(String),
    #[error("gossip could not start: {0}")]
    Start(String),
}
