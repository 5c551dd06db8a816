//! Read admission: whether a copy may serve a read now, and why not.
//!
//! A copy serves only while it knows it is current: the primary while its
//! lease holds and its rows hold everything it committed, a backup while
//! its primary has sent it a message of its own epoch within the lease (and,
//! for a session read, once its rows hold the session's entry). So a copy
//! cut off from its shard, or restarted with an old map, never serves rows
//! of an epoch it missed. [`Primary::read_permit`](super::Primary::read_permit)
//! and [`Backup::read_permit`](super::Backup::read_permit) decide; the
//! simulation checks that what they admit sees every acknowledged write.

use super::{Epoch, Seq};
use crate::cluster_map::NodeId;

/// Why a copy refuses a read. Each message says what the copy lacks and
/// where to read instead; it reads after the shard's name (the actor writes
/// `shard <table>/<index> <refusal>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadRefusal {
    /// A learner still installing its snapshot: it has no rows to serve.
    #[error("is still being copied to this node; read from the primary")]
    Copying,
    /// The primary does not hold its lease (a backup silent, the old
    /// primary's lease not yet over, or inherited entries not committed).
    #[error("refuses reads: primary lease not held at epoch {epoch}")]
    NoLease { epoch: Epoch },
    /// The primary committed entries its rows do not reflect yet.
    #[error("is applying entries {from}..={upto}; retry")]
    Applying { from: Seq, upto: Seq },
    /// A strong read sent to a backup.
    #[error("is not led here (primary is {primary}); strong reads go to the primary")]
    NotPrimary { primary: NodeId },
    /// A backup that has not heard from its primary, at its own epoch,
    /// within the lease.
    #[error("copy here is not in sync (no word from primary {primary} at epoch {epoch} within the lease); read from the primary")]
    NotInSync { primary: NodeId, epoch: Epoch },
    /// A backup whose rows do not yet hold the session's entry `needed`.
    #[error("copy here has applied entry {applied} of {needed} the session needs; read from the primary")]
    BehindSession { applied: Seq, needed: Seq },
}
