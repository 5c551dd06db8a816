//! The node's one publisher of its copies' state in gossip.
//!
//! Every copy actor reports its [`CopyGossip`] here whenever it may have
//! changed (start, role change, a learner catching up, a primary's silent
//! backups on each heartbeat tick, a failure) and withdraws it when it
//! stops; a report equal to the last one costs a map lookup. Each copy
//! actor reports under its own [`ticket`](CopyPublisher::ticket), and the
//! newest actor of a shard wins: a copy stopped here and started again at
//! once (it moved away and back) is not withdrawn, or overwritten, by the
//! old actor's late words. One task publishes the whole set as the compact
//! chunks of `tstore_core::copy_gossip`, only when something changed and
//! at most once every [`COALESCE`]: the first change after a quiet spell
//! goes out at once, later ones together. Only the chunks whose value
//! changed are set.
//!
//! Before, every copy published a key of its own: every node held a key
//! per copy of every node, a change of one copy was a key-value sent to
//! every peer, and a table created or dropped set, then left a tombstone
//! of, a key per copy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::debug;
use tstore_core::copy_gossip::{changes, chunk_key, encode, CopyGossip};
use tstore_core::shard::ShardKey;
use tstore_membership::Membership;

/// The shortest time between two publications.
pub const COALESCE: Duration = Duration::from_millis(50);

/// The copies' reports (shared; cloning shares it).
#[derive(Clone, Default)]
pub struct CopyPublisher {
    /// Each copy's state, with the ticket of the actor that reported it.
    copies: Arc<Mutex<BTreeMap<ShardKey, (u64, CopyGossip)>>>,
    changed: Arc<Notify>,
    tickets: Arc<AtomicU64>,
}

impl CopyPublisher {
    /// A publisher writing to `membership`'s gossip state, from a task of
    /// the current tokio runtime.
    pub fn start(membership: Arc<Membership>) -> Self {
        let publisher = Self::default();
        tokio::spawn(publisher.clone().run(membership));
        publisher
    }

    /// A ticket for a new copy actor: later actors get larger tickets.
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Copy `key` (the actor holding `ticket`) is now in `state`; ignored
    /// when a newer actor of the shard has reported.
    pub fn report(&self, key: &ShardKey, ticket: u64, state: CopyGossip) {
        let mut copies = self.copies.lock().expect("copy reports lock");
        match copies.get(key) {
            Some((t, _)) if *t > ticket => {}
            Some((t, s)) if *t == ticket && *s == state => {}
            _ => {
                copies.insert(key.clone(), (ticket, state));
                self.changed.notify_one();
            }
        }
    }

    /// Copy `key` (the actor holding `ticket`) stopped here.
    pub fn withdraw(&self, key: &ShardKey, ticket: u64) {
        let mut copies = self.copies.lock().expect("copy reports lock");
        if copies.get(key).is_some_and(|(t, _)| *t == ticket) {
            copies.remove(key);
            self.changed.notify_one();
        }
    }

    /// The chunks the copies encode to now.
    fn encoded(&self) -> (usize, Vec<String>) {
        let copies = self.copies.lock().expect("copy reports lock");
        (
            copies.len(),
            encode(copies.iter().map(|(k, (_, s))| (k, s))),
        )
    }

    async fn run(self, membership: Arc<Membership>) {
        let mut published: Vec<String> = Vec::new();
        loop {
            self.changed.notified().await;
            let (copies, chunks) = self.encoded();
            let (set, withdraw) = changes(&published, &chunks);
            for (n, value) in &set {
                membership.set(&chunk_key(*n), value).await;
            }
            for n in &withdraw {
                membership.delete(&chunk_key(*n)).await;
            }
            debug!(
                copies,
                chunks = chunks.len(),
                bytes = chunks.iter().map(String::len).sum::<usize>(),
                set = set.len(),
                withdrawn = withdraw.len(),
                "copies published in gossip"
            );
            published = chunks;
            tokio::time::sleep(COALESCE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tstore_core::shard::LocalRole;

    fn state(epoch: u64) -> CopyGossip {
        CopyGossip::new(LocalRole::Backup, epoch)
    }

    #[test]
    fn the_newest_actor_of_a_shard_wins() {
        let p = CopyPublisher::default();
        let key = ShardKey::new("t", 0);
        let (old, new) = (p.ticket(), p.ticket());
        p.report(&key, old, state(1));
        p.report(&key, new, state(2));
        // The old actor's late words change nothing.
        p.report(&key, old, state(1));
        p.withdraw(&key, old);
        assert_eq!(p.encoded(), (1, vec!["v1 t=b2:0".to_owned()]));
        p.withdraw(&key, new);
        assert_eq!(p.encoded(), (0, vec![]));
    }
}
