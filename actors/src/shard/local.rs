//! The registry of this node's shard copies, by shard: the NodeActor
//! publishes it whenever the copies change; peer messages (replication,
//! forwarded requests) and routed requests read it from the transport's
//! tasks, without a stop at the NodeActor.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use actix::Addr;
use tstore_core::shard::ShardKey;

use super::actor::CopyActor;

/// The copies' addresses at one moment.
pub type CopyAddrs = BTreeMap<ShardKey, Addr<CopyActor>>;

/// The copies this node holds now (shared; cloning shares it).
#[derive(Clone, Default)]
pub struct LocalCopies(Arc<RwLock<Arc<CopyAddrs>>>);

impl LocalCopies {
    /// The copies as last published (not copied).
    pub fn current(&self) -> Arc<CopyAddrs> {
        self.0.read().expect("local copies lock").clone()
    }

    /// The copy of `key` held here, if any.
    pub fn get(&self, key: &ShardKey) -> Option<Addr<CopyActor>> {
        self.0.read().expect("local copies lock").get(key).cloned()
    }

    /// Publishes the copies now held.
    pub fn replace(&self, copies: CopyAddrs) {
        *self.0.write().expect("local copies lock") = Arc::new(copies);
    }
}
