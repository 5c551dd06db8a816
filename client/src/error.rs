//! The client's one error type: what failed, and for a refused request its
//! kind (which says whether a retry is safe, and the CLI's exit code).

use tstore_core::wire::{AdminError, DataError};
use tstore_transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("client certificate {path} not found: create it with `tstore cert create-client --dir {dir} --name {name}`")]
    NoCertificate {
        path: String,
        dir: String,
        name: String,
    },
    /// The node refused or failed an admin request; its kind says why (and
    /// decides the CLI's exit code), `control` the control-plane cause.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The client could not make the request at all (no seed given, no
    /// node to ask); the text says why.
    #[error("{0}")]
    NoNode(String),
    /// A read or write failed; its kind says whether it was applied and
    /// whether a retry is safe.
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("the node answered {0}, which does not fit the request")]
    Unexpected(&'static str),
}
