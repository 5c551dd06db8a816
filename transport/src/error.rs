use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::frame::FrameError;

/// Everything that can go wrong moving a message between two endpoints.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
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
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{addr} is unreachable (last connection attempt failed {since:?} ago)")]
    Backoff { addr: SocketAddr, since: Duration },
    #[error("connection to {addr} lost: {source}")]
    Connection {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} closed the stream without answering")]
    NoReply { addr: SocketAddr },
    #[error("{limit} one-way messages already in flight; message refused")]
    Saturated { limit: usize },
    #[error("frame from/to {addr}: {source}")]
    Frame {
        addr: SocketAddr,
        source: FrameError,
    },
}
