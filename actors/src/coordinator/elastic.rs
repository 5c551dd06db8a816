//! Automatic splits and merges (elastic tables), on the Raft leader: every
//! `elastic_every`, ask each live node for the size and load of the shards
//! it leads (`PeerMessage::Loads`: one request per node, not gossip, so an
//! idle cluster of many shards pays nothing in gossip), run the pure planner
//! (`tstore_core::coordinator::elastic::plan`) and commit its decisions,
//! each with its reason: a split as `MapCommand::SplitShard`, a merge as
//! `MapCommand::BeginMerge` (carried on every round by `merge`). The
//! planner bounds how many run at once and keeps new shards from splitting
//! or merging again for a while.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use tstore_core::cluster_map::{KeyRange, MapCommand};
use tstore_core::coordinator::elastic::{self, Elastic, ShardRef, ShardStats};
use tstore_core::coordinator::health::live_peers;
use tstore_membership::GossipSnapshot;

use crate::control::ControlPlane;
use crate::peer::{PeerMessage, PeerReply};

/// How long the leader waits for one node's loads.
const LOADS_TIMEOUT: Duration = Duration::from_secs(2);

impl ControlPlane {
    /// One elastic round, if one is due (see the module docs).
    pub(crate) async fn elastic(&self, snapshot: &GossipSnapshot) {
        let settings = &self.inner.settings;
        let cfg = &settings.elastic;
        if cfg.split_size_bytes == 0 && cfg.split_load_ops == 0 && cfg.merge_after_ms == 0 {
            return;
        }
        {
            let mut upkeep = self.inner.upkeep.lock().await;
            if upkeep
                .elastic_at
                .is_some_and(|at| at.elapsed() < settings.elastic_every)
            {
                return;
            }
            upkeep.elastic_at = Some(Instant::now());
        }
        let map = self.map();
        if !map.tables.values().any(|t| t.auto_split || t.auto_merge) {
            return;
        }
        // Sorted: the nodes look names up by binary search.
        let tables: Vec<String> = map
            .tables
            .values()
            .filter(|t| t.auto_split || t.auto_merge)
            .map(|t| t.spec.name.clone())
            .collect();
        let tables = &tables;
        let live: BTreeSet<String> = live_peers(snapshot)
            .into_iter()
            .map(|p| p.node_id)
            .collect();
        let asks = map
            .nodes
            .iter()
            .filter(|(id, _)| live.contains(*id))
            .filter_map(|(id, e)| Some((id.clone(), e.addr.parse::<SocketAddr>().ok()?)))
            .map(|(id, addr)| async move {
                let msg = PeerMessage::Loads {
                    split_size_bytes: cfg.split_size_bytes,
                    split_load_ops: cfg.split_load_ops,
                    tables: tables.clone(),
                };
                let ask = self.inner.endpoint.request::<_, PeerReply>(addr, &msg);
                match tokio::time::timeout(LOADS_TIMEOUT, ask).await {
                    Ok(Ok(PeerReply::Loads(loads))) => Some((id, loads)),
                    other => {
                        debug!(node = %id, answer = ?other.map(|r| r.map(|_| ())), "no shard loads from a node");
                        None
                    }
                }
            });
        let mut stats: BTreeMap<ShardRef, ShardStats> = BTreeMap::new();
        for (node, loads) in futures::future::join_all(asks).await.into_iter().flatten() {
            for (key, s) in loads {
                // Only the primary the map names speaks for its shard.
                let leads = map.tables.get(&key.table).is_some_and(|t| {
                    (t.auto_split || t.auto_merge)
                        && t.shards
                            .get(key.index as usize)
                            .is_some_and(|sh| sh.replicas.primary == node)
                });
                if leads {
                    stats.insert((key.table, key.index), s);
                }
            }
        }
        // A shard changing configuration, or short of copies, waits.
        let live = &live;
        let busy: BTreeSet<ShardRef> = map
            .tables
            .values()
            .flat_map(|t| {
                t.shards.iter().filter_map(move |s| {
                    let r = &s.replicas;
                    let short = r.members().count() < t.spec.replicas as usize;
                    (short || !r.learners.is_empty() || r.members().any(|m| !live.contains(m)))
                        .then(|| (t.spec.name.clone(), s.index))
                })
            })
            .collect();
        let now = crate::clock::now_ms();
        let decisions = {
            let mut upkeep = self.inner.upkeep.lock().await;
            elastic::plan(&map, &stats, cfg, &mut upkeep.elastic, &busy, now)
        };
        for d in decisions {
            if let Err(e) = self.confirm_leadership().await {
                warn!(error = %e, "not splitting or merging shards");
                return;
            }
            let (table, shard, left, right, why) = match d {
                Elastic::Split {
                    table,
                    shard,
                    left,
                    right,
                    why,
                } => (table, shard, left, right, why),
                Elastic::Merge {
                    table,
                    keep,
                    absorb,
                    why,
                    ..
                } => {
                    let cmd = MapCommand::BeginMerge {
                        table: table.clone(),
                        keep,
                        absorb,
                        why: why.clone(),
                        at_unix_ms: crate::clock::wall_ms(),
                    };
                    match self.write(cmd).await {
                        Ok(v) => {
                            info!(shard = %format!("{table}/{absorb}"), into = keep, %why, map_version = v, "merge begun")
                        }
                        Err(e) => {
                            warn!(shard = %format!("{table}/{absorb}"), %why, error = %e, "merge not begun")
                        }
                    }
                    continue;
                }
            };
            let Some(s) = map
                .tables
                .get(&table)
                .and_then(|t| t.shards.get(shard as usize))
            else {
                continue;
            };
            let at = match &right {
                KeyRange::Range { start, .. } => start.clone(),
                KeyRange::HashSlot { .. } => None,
            };
            let cmd = MapCommand::SplitShard {
                table: table.clone(),
                shard,
                expect_epoch: s.replicas.epoch,
                at,
                why: why.clone(),
                at_unix_ms: crate::clock::wall_ms(),
            };
            match self.write(cmd).await {
                Ok(v) => {
                    info!(shard = %format!("{table}/{shard}"), %why, map_version = v, "shard split");
                    let mut upkeep = self.inner.upkeep.lock().await;
                    upkeep.elastic.born(&table, left, now);
                    upkeep.elastic.born(&table, right, now);
                }
                Err(e) => {
                    warn!(shard = %format!("{table}/{shard}"), %why, error = %e, "split not committed")
                }
            }
        }
    }
}
