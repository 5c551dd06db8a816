//! The AdminActor: answers operator and client sessions.
//!
//! Each request is turned into a stream of replies. A gossip watch sends the
//! full state first, then the changes found every `watch_interval` (heartbeat
//! ticks are not changes). Watches are bounded in number; each ends when its
//! client goes away.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use futures::stream::{self, BoxStream, StreamExt};
use tstore_membership::{view, Membership};

use crate::control::ControlPlane;
use crate::node_stats::StatsSource;
use tstore_core::wire::{
    AdminError, AdminErrorKind, AdminReply, AdminRequest, ControlError, DataError, DataReply,
    ErrorKind,
};

/// At most this many gossip watches at once per node.
pub const MAX_WATCHES: usize = 64;

pub struct AdminActor {
    membership: Arc<Membership>,
    control: ControlPlane,
    watch_interval: Duration,
    watches: Arc<AtomicUsize>,
    stats: StatsSource,
}

impl AdminActor {
    pub fn new(
        membership: Arc<Membership>,
        control: ControlPlane,
        watch_interval: Duration,
        stats: StatsSource,
    ) -> Self {
        Self {
            membership,
            control,
            watch_interval,
            watches: Arc::default(),
            stats,
        }
    }
}

impl Actor for AdminActor {
    type Context = Context<Self>;
}

/// One admin request; the result is the stream of replies to send back.
#[derive(Message)]
#[rtype(result = "BoxStream<'static, AdminReply>")]
pub struct AdminCall(pub AdminRequest);

impl Handler<AdminCall> for AdminActor {
    type Result = MessageResult<AdminCall>;

    fn handle(&mut self, AdminCall(req): AdminCall, _: &mut Context<Self>) -> Self::Result {
        let membership = self.membership.clone();
        MessageResult(match req {
            AdminRequest::Members => stream::once(async move {
                let snapshot = membership.snapshot().await;
                AdminReply::Members {
                    members: view::members(&snapshot),
                    observer: snapshot.observer,
                }
            })
            .boxed(),
            AdminRequest::Gossip => {
                stream::once(async move { AdminReply::Gossip(membership.snapshot().await) }).boxed()
            }
            AdminRequest::WatchGossip => self.watch(membership),
            // Reads and writes are routed by the node's service straight
            // to the shard copies (`service::Routing`), not through here.
            AdminRequest::Data(_) | AdminRequest::DataMany(_) => stream::once(async {
                AdminReply::Data(DataReply::Error(DataError::unavailable(
                    "data requests are served by the node's router, not the admin actor",
                )))
            })
            .boxed(),
            AdminRequest::Route { table } => {
                let map = self.control.map();
                let reply = match map.tables.get(&table) {
                    Some(t) => AdminReply::Route {
                        map_version: map.version,
                        now_unix_ms: crate::clock::wall_ms(),
                        table: t.clone(),
                        nodes: map
                            .nodes
                            .iter()
                            .map(|(id, n)| (id.clone(), n.addr.clone()))
                            .collect(),
                    },
                    None => AdminReply::Data(DataReply::Error(DataError::new(
                        ErrorKind::NoTable,
                        ControlError::no_such_table(&table, &map).to_string(),
                    ))),
                };
                stream::once(async move { reply }).boxed()
            }
            AdminRequest::Cluster => {
                let control = self.control.clone();
                stream::once(async move { AdminReply::Cluster(control.status().await) }).boxed()
            }
            AdminRequest::Tables => {
                let map = self.control.map();
                let reply = AdminReply::Tables {
                    map_version: map.version,
                    tables: map.tables.values().cloned().collect(),
                };
                stream::once(async move { reply }).boxed()
            }
            AdminRequest::Describe { name } => {
                let map = self.control.map();
                let reply = match map.tables.get(&name) {
                    Some(t) => AdminReply::Table {
                        map_version: map.version,
                        table: t.clone(),
                    },
                    None => AdminReply::Error(ControlError::no_such_table(&name, &map).into()),
                };
                stream::once(async move { reply }).boxed()
            }
            AdminRequest::CreateTable(spec) => {
                let control = self.control.clone();
                stream::once(async move {
                    match control.create_table(spec).await {
                        Ok((map_version, table)) => AdminReply::Table { map_version, table },
                        Err(e) => AdminReply::Error(e.into()),
                    }
                })
                .boxed()
            }
            AdminRequest::NodeStats => {
                let stats = self.stats.clone();
                stream::once(async move {
                    match tokio::task::spawn_blocking(move || stats.measure()).await {
                        Ok(s) => AdminReply::NodeStats(s),
                        Err(e) => AdminReply::Error(AdminError::new(
                            AdminErrorKind::Unavailable,
                            format!("measuring node stats failed: {e}"),
                        )),
                    }
                })
                .boxed()
            }
            AdminRequest::Events => {
                let map = self.control.map();
                let reply = AdminReply::Events {
                    map_version: map.version,
                    events: map.events.iter().cloned().collect(),
                };
                stream::once(async move { reply }).boxed()
            }
            AdminRequest::SetNodeState { node_id, state } => {
                let control = self.control.clone();
                stream::once(async move {
                    match control.set_node_state(node_id, state).await {
                        Ok(map_version) => AdminReply::Done { map_version },
                        Err(e) => AdminReply::Error(e.into()),
                    }
                })
                .boxed()
            }
            AdminRequest::SetPlacement { table, rule } => {
                let control = self.control.clone();
                stream::once(async move {
                    match control.set_placement(table, rule).await {
                        Ok(map_version) => AdminReply::Done { map_version },
                        Err(e) => AdminReply::Error(e.into()),
                    }
                })
                .boxed()
            }
            AdminRequest::SetAutoSplit { table, on } => {
                let control = self.control.clone();
                stream::once(async move {
                    match control.set_auto_split(table, on).await {
                        Ok(map_version) => AdminReply::Done { map_version },
                        Err(e) => AdminReply::Error(e.into()),
                    }
                })
                .boxed()
            }
            AdminRequest::SetAutoMerge { table, on } => {
                let control = self.control.clone();
                stream::once(async move {
                    match control.set_auto_merge(table, on).await {
                        Ok(map_version) => AdminReply::Done { map_version },
                        Err(e) => AdminReply::Error(e.into()),
                    }
                })
                .boxed()
            }
            AdminRequest::MergeShards { table, a, b } => {
                let control = self.control.clone();
                stream::once(async move {
                    match control.merge(table, a, b).await {
                        Ok(map_version) => AdminReply::Done { map_version },
                        Err(e) => AdminReply::Error(e.into()),
                    }
                })
                .boxed()
            }
            AdminRequest::SplitShard { table, shard, at } => {
                let control = self.control.clone();
                stream::once(async move {
                    match control.split(table, shard, at).await {
                        Ok(map_version) => AdminReply::Done { map_version },
                        Err(e) => AdminReply::Error(e.into()),
                    }
                })
                .boxed()
            }
            AdminRequest::Shard { table, shard, op } => {
                let control = self.control.clone();
                stream::once(async move {
                    match control.manual(table, shard, op).await {
                        Ok(map_version) => AdminReply::Done { map_version },
                        Err(e) => AdminReply::Error(e.into()),
                    }
                })
                .boxed()
            }
            AdminRequest::DropTable { name } => {
                let control = self.control.clone();
                stream::once(async move {
                    match control.drop_table(name).await {
                        Ok(map_version) => AdminReply::Done { map_version },
                        Err(e) => AdminReply::Error(e.into()),
                    }
                })
                .boxed()
            }
        })
    }
}

/// Decrements the watch count when a watch stream is dropped.
struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AdminActor {
    fn watch(&self, membership: Arc<Membership>) -> BoxStream<'static, AdminReply> {
        if self.watches.fetch_add(1, Ordering::SeqCst) >= MAX_WATCHES {
            self.watches.fetch_sub(1, Ordering::SeqCst);
            return stream::once(async {
                AdminReply::Error(AdminError::new(
                    AdminErrorKind::Unavailable,
                    format!("this node already serves {MAX_WATCHES} gossip watches; try another node or later"),
                ))
            })
            .boxed();
        }
        let slot = WatchSlot(self.watches.clone());
        let mut tick = tokio::time::interval(self.watch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        stream::unfold(
            (membership, None, tick, slot),
            |(membership, prev, mut tick, slot)| async move {
                let Some(mut prev) = prev else {
                    let snapshot = membership.snapshot().await;
                    let reply = AdminReply::Gossip(snapshot.clone());
                    return Some((reply, (membership, Some(snapshot), tick, slot)));
                };
                loop {
                    tick.tick().await;
                    let snapshot = membership.snapshot().await;
                    let changes = view::diff(&prev, &snapshot);
                    if !changes.is_empty() {
                        let reply = AdminReply::GossipChanges {
                            at_unix_ms: now_ms(),
                            changes,
                        };
                        return Some((reply, (membership, Some(snapshot), tick, slot)));
                    }
                    prev = snapshot;
                }
            },
        )
        .boxed()
    }
}
