//! The actors holding shard copies: a `ShardActor` where this node is the
//! primary, a `ReplicaActor` where it is a backup. Each publishes its copy in
//! gossip (`shard:<table>/<index>` = `<role> e<epoch>`) and withdraws it when
//! stopped. The replication protocol they will run is the data path's.

use std::sync::Arc;

use actix::prelude::*;
use tracing::info;
use tstore_membership::Membership;

use super::{LocalCopy, LocalRole, ShardKey};

/// The gossip key a copy is published under.
pub fn gossip_key(key: &ShardKey) -> String {
    format!("shard:{key}")
}

fn gossip_value(copy: &LocalCopy) -> String {
    format!("{} e{}", copy.role, copy.replicas.epoch)
}

/// Replace the copy's configuration (new epoch, new members, new role).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub LocalCopy);

/// Stop holding the copy.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopCopy;

/// A copy of one shard on this node, primary or backup.
pub struct CopyActor {
    key: ShardKey,
    copy: LocalCopy,
    membership: Arc<Membership>,
}

impl CopyActor {
    pub fn new(key: ShardKey, copy: LocalCopy, membership: Arc<Membership>) -> Self {
        Self {
            key,
            copy,
            membership,
        }
    }

    fn publish(&self, ctx: &mut Context<Self>) {
        let (membership, k, v) = (
            self.membership.clone(),
            gossip_key(&self.key),
            gossip_value(&self.copy),
        );
        ctx.spawn(async move { membership.set(&k, &v).await }.into_actor(self));
    }
}

impl Actor for CopyActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(shard = %self.key, role = %self.copy.role, epoch = self.copy.replicas.epoch, "shard copy started");
        self.publish(ctx);
    }
}

impl Handler<Reconfigure> for CopyActor {
    type Result = ();

    fn handle(&mut self, Reconfigure(copy): Reconfigure, ctx: &mut Context<Self>) {
        if copy.role != self.copy.role && copy.role == LocalRole::Primary {
            info!(shard = %self.key, epoch = copy.replicas.epoch, "promoted to primary");
        }
        self.copy = copy;
        self.publish(ctx);
    }
}

impl Handler<StopCopy> for CopyActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopCopy, _: &mut Context<Self>) -> Self::Result {
        info!(shard = %self.key, "shard copy stopped");
        let (membership, k) = (self.membership.clone(), gossip_key(&self.key));
        Box::pin(
            async move { membership.delete(&k).await }
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        )
    }
}
