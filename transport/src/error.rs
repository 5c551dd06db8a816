use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::frame::FrameError;

/// Everything that can go wrong moving a message between two endpoints.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read {path}: {cause}")]
    ReadFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write {path}: {cause}")]
    WriteFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} already exists (pass --force to overwrite it)")]
    Exists { path: PathBuf },
    #[error("invalid certificate or key in {path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid name {name:?}: use 1-63 letters, digits, '-' or '_'")]
    BadName { name: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot bind UDP {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{addr} is unreachable (last connection attempt failed {since:?} ago)")]
    Backoff { addr: SocketAddr, since: Duration },
    #[error("connection to {addr} lost: {cause}")]
    Connection {
        addr: SocketAddr,
        cause: quinn::ConnectionError,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} closed the stream without answering")]
    NoReply { addr: SocketAddr },
    #[error("{limit} one-way messages already in flight; message refused")]
    Saturated { limit: usize },
    #[error("frame from/to {addr}: {cause}")]
    Frame { addr: SocketAddr, cause: FrameError },
    /// One failure shared by several requests that travelled together (a
    /// coalesced stream of requests): each of them gets this.
    #[error("{0}")]
    Shared(std::sync::Arc<TransportError>),
}

impl TransportError {
    /// The error at the bottom of any [`TransportError::Shared`] wrapping.
    pub fn root(&self) -> &TransportError {
        match self {
            TransportError::Shared(e) => e.root(),
            e => e,
        }
    }
}
