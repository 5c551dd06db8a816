//! The messages a copy sends in one turn of its actor, merged.
//!
//! A primary proposes each write as it arrives and, pipelined, sends every
//! backup a `Prepare` with the new entry at once. Under load its actor
//! takes many writes in one turn (those that queued while its previous
//! group commit was syncing), which made as many `Prepare`s per backup, as
//! many disk jobs and `Ack`s on the backup, and as many acks back. The
//! actor now queues what it sends during a turn and, at the end of the
//! turn, sends [`merge`]'s result: one `Prepare` per backup carrying all of
//! the turn's entries.
//!
//! Merging never changes what a receiver learns, only how many messages
//! carry it. Two `Prepare`s to one node merge only when the second goes on
//! where the first stopped (its first entry follows the first's last, or
//! either carries no entry) and both speak for the same epoch and the same
//! `counted`; the merged message carries the later commit point (commit
//! points only grow), the later send time (sent after both were stamped,
//! so the lease computed from its echo is no longer than either's), and the
//! epoch history if either carried it. Any other message is sent as it
//! was, in its place.

use super::ReplMsg;
use crate::cluster_map::NodeId;

/// Merges each `Prepare` in `out` into the last message queued before it
/// to the same node, when that one is a `Prepare` it continues (module
/// docs). Messages to different nodes keep their order among themselves;
/// so do the messages to one node, with merged ones sent at the first's
/// place.
pub fn merge(out: Vec<(NodeId, ReplMsg)>) -> Vec<(NodeId, ReplMsg)> {
    let mut merged: Vec<(NodeId, ReplMsg)> = Vec::with_capacity(out.len());
    for (to, msg) in out {
        let last = merged.iter_mut().rev().find(|(n, _)| *n == to);
        if let Some((_, prev)) = last {
            if let Some(msg) = absorb(prev, msg) {
                merged.push((to, msg));
            }
        } else {
            merged.push((to, msg));
        }
    }
    merged
}

/// Folds `next` into `prev` when `prev` is a `Prepare` that `next`
/// continues; otherwise hands `next` back to be sent on its own.
fn absorb(prev: &mut ReplMsg, next: ReplMsg) -> Option<ReplMsg> {
    let ReplMsg::Prepare {
        epoch: e1,
        history: h1,
        entries: x1,
        committed: c1,
        sent_at: s1,
        counted: k1,
    } = prev
    else {
        return Some(next);
    };
    let fits = match &next {
        ReplMsg::Prepare {
            epoch,
            entries,
            counted,
            ..
        } => {
            let continues = match (x1.last(), entries.first()) {
                (Some(a), Some(b)) => b.seq == a.seq + 1,
                _ => true,
            };
            *epoch == *e1 && *counted == *k1 && continues
        }
        _ => false,
    };
    if !fits {
        return Some(next);
    }
    if let ReplMsg::Prepare {
        history,
        entries,
        committed,
        sent_at,
        ..
    } = next
    {
        x1.extend(entries);
        *c1 = (*c1).max(committed);
        *s1 = (*s1).max(sent_at);
        if h1.is_none() {
            *h1 = history;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::{EpochHistory, LogEntry};

    fn entry(seq: u64) -> LogEntry {
        LogEntry {
            epoch: 2,
            seq,
            op: vec![seq as u8],
        }
    }

    fn prepare(seqs: std::ops::RangeInclusive<u64>, committed: u64, sent_at: u64) -> ReplMsg {
        ReplMsg::Prepare {
            epoch: 2,
            history: None,
            entries: seqs.map(entry).collect(),
            committed,
            sent_at,
            counted: true,
        }
    }

    /// A Prepare without entries.
    fn heartbeat(committed: u64, sent_at: u64) -> ReplMsg {
        ReplMsg::Prepare {
            epoch: 2,
            history: None,
            entries: vec![],
            committed,
            sent_at,
            counted: true,
        }
    }

    fn seqs(m: &ReplMsg) -> Vec<u64> {
        match m {
            ReplMsg::Prepare { entries, .. } => entries.iter().map(|e| e.seq).collect(),
            other => panic!("not a prepare: {other:?}"),
        }
    }

    #[test]
    fn a_turns_prepares_to_one_backup_leave_as_one() {
        let out = vec![
            ("b".to_string(), prepare(5..=5, 3, 100)),
            ("c".to_string(), prepare(5..=5, 3, 100)),
            ("b".to_string(), prepare(6..=6, 4, 101)),
            ("c".to_string(), prepare(6..=6, 4, 101)),
            ("b".to_string(), prepare(7..=8, 4, 102)),
        ];
        let merged = merge(out);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].0, "b");
        assert_eq!(seqs(&merged[0].1), vec![5, 6, 7, 8]);
        assert_eq!(seqs(&merged[1].1), vec![5, 6]);
        let ReplMsg::Prepare {
            committed, sent_at, ..
        } = &merged[0].1
        else {
            unreachable!()
        };
        assert_eq!(
            (*committed, *sent_at),
            (4, 102),
            "the later commit point and send time"
        );
    }

    #[test]
    fn heartbeats_fold_in_and_the_history_is_kept() {
        let mut first = heartbeat(3, 100);
        if let ReplMsg::Prepare { history, .. } = &mut first {
            *history = Some(EpochHistory::default());
        }
        let merged = merge(vec![
            ("b".to_string(), first),
            ("b".to_string(), prepare(4..=4, 3, 105)),
            ("b".to_string(), heartbeat(4, 106)),
        ]);
        assert_eq!(merged.len(), 1);
        let ReplMsg::Prepare {
            history,
            committed,
            sent_at,
            ..
        } = &merged[0].1
        else {
            unreachable!()
        };
        assert!(history.is_some());
        assert_eq!(
            (seqs(&merged[0].1), *committed, *sent_at),
            (vec![4], 4, 106)
        );
    }

    #[test]
    fn what_does_not_continue_is_sent_as_it_was() {
        let other_epoch = ReplMsg::Prepare {
            epoch: 3,
            history: None,
            entries: vec![],
            committed: 0,
            sent_at: 1,
            counted: true,
        };
        let not_counted = ReplMsg::Prepare {
            epoch: 2,
            history: None,
            entries: vec![entry(9)],
            committed: 0,
            sent_at: 1,
            counted: false,
        };
        let rebuild = ReplMsg::Rebuild {
            epoch: 2,
            log_start: 7,
        };
        let out = vec![
            ("b".to_string(), prepare(5..=5, 3, 100)),
            ("b".to_string(), prepare(7..=7, 3, 100)), // a gap
            ("b".to_string(), other_epoch.clone()),
            ("b".to_string(), not_counted.clone()),
            ("b".to_string(), rebuild.clone()),
            ("b".to_string(), prepare(10..=10, 3, 100)), // after a Rebuild
        ];
        let merged = merge(out.clone());
        assert_eq!(merged, out, "nothing merges: every pair differs");
    }
}
