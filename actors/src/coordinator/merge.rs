//! Merges under way (elastic tables), on the Raft leader, every round while
//! the map has one: ask each member copy of the two shards for its status
//! (sealed copies report `sealed_at`), run the pure step
//! (`tstore_core::coordinator::merge::step`) and commit what it says: a
//! move of one copy, the seal, the finish, or giving up. A round finds a
//! sealed merge settled within a round or two (the copies settle as their
//! primaries' heartbeats carry the commit point), so writes to the two
//! shards pause for about that long.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use tstore_core::cluster_map::MapCommand;
use tstore_core::coordinator::merge::{self, CopySeal, MergeLimits, MergeStep};
use tstore_core::shard::ShardKey;
use tstore_core::wire::{DataReply, ShardRequest};
use tstore_membership::GossipSnapshot;

use crate::control::ControlPlane;
use crate::peer::{PeerMessage, PeerReply};

/// The step that completes a merge, and the one that gives it up (their
/// labels in the logs).
const FINISH: &str = "finish";
const GIVE_UP: &str = "give up";

/// How long the leader waits for one copy's status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

impl ControlPlane {
    /// One step of every merge under way (see the module docs).
    pub(crate) async fn merges(&self, snapshot: &GossipSnapshot) {
        let map = self.map();
        let tables: Vec<String> = map
            .tables
            .values()
            .filter(|t| t.merge_under_way().is_some())
            .map(|t| t.spec.name.clone())
            .collect();
        if tables.is_empty() {
            self.inner.upkeep.lock().await.sealed_since.clear();
            return;
        }
        let health = self.health(snapshot, &map).await;
        for table in tables {
            let t = &map.tables[&table];
            let Some((absorb, keep, sealed)) = t.merge_under_way() else {
                continue;
            };
            let sealed_for = {
                let mut upkeep = self.inner.upkeep.lock().await;
                let key = (table.clone(), absorb);
                if sealed {
                    let since = *upkeep.sealed_since.entry(key).or_insert_with(Instant::now);
                    since.elapsed().as_millis() as u64
                } else {
                    upkeep.sealed_since.remove(&key);
                    0
                }
            };
            let mut reports = BTreeMap::new();
            if sealed {
                let asks = [keep, absorb].into_iter().flat_map(|i| {
                    let s = &t.shards[i as usize];
                    s.replicas.members().map(move |n| (i, n.clone()))
                });
                let asks = asks.map(|(i, node)| {
                    let addr = map
                        .nodes
                        .get(&node)
                        .and_then(|e| e.addr.parse::<SocketAddr>().ok());
                    let msg = PeerMessage::Data(ShardRequest::Status {
                        shard: ShardKey::new(&table, i),
                        checksum: false,
                    });
                    async move {
                        let ask = self.inner.endpoint.request::<_, PeerReply>(addr?, &msg);
                        match tokio::time::timeout(STATUS_TIMEOUT, ask).await {
                            Ok(Ok(PeerReply::Data(DataReply::Status(s)))) => Some((
                                (i, node),
                                CopySeal {
                                    epoch: s.epoch,
                                    sealed_at: s.sealed_at,
                                },
                            )),
                            other => {
                                debug!(%node, shard = i, answer = ?other.map(|r| r.map(|_| ())), "no status for a merge");
                                None
                            }
                        }
                    }
                });
                reports = futures::future::join_all(asks)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
            }
            let now = crate::clock::wall_ms();
            let limits = MergeLimits::default();
            let Some(step) = merge::step(&map, &table, &health, &reports, now, sealed_for, &limits)
            else {
                continue;
            };
            let name = format!("{table}/{absorb}");
            let (label, cmd) = match step {
                MergeStep::Wait(why) => {
                    debug!(shard = %name, %why, "merge waiting");
                    continue;
                }
                MergeStep::Colocate(change) => ("move a copy", change.into_command(now)),
                MergeStep::Seal { expect_epochs } => (
                    "seal",
                    MapCommand::SealMerge {
                        table: table.clone(),
                        absorb,
                        expect_epochs,
                        at_unix_ms: now,
                    },
                ),
                MergeStep::Finish {
                    expect_epochs,
                    seqs,
                } => (
                    FINISH,
                    MapCommand::FinishMerge {
                        table: table.clone(),
                        absorb,
                        expect_epochs,
                        seqs,
                        at_unix_ms: now,
                    },
                ),
                MergeStep::Cancel(why) => (
                    GIVE_UP,
                    MapCommand::CancelMerge {
                        table: table.clone(),
                        absorb,
                        why,
                        at_unix_ms: now,
                    },
                ),
            };
            if let Err(e) = self.confirm_leadership().await {
                warn!(error = %e, "not carrying out merges");
                return;
            }
            match self.write(cmd).await {
                Ok(v) => {
                    info!(shard = %name, map_version = v, step = label, "merge step committed");
                    // The shards it leaves are left alone for the settling
                    // time: a merged shard does not split back at once, a
                    // merge given up is not begun again at once.
                    if label == FINISH || label == GIVE_UP {
                        let mut upkeep = self.inner.upkeep.lock().await;
                        upkeep.sealed_since.remove(&(table.clone(), absorb));
                        let now = crate::clock::now_ms();
                        if let Some(t) = self.map().tables.get(&table) {
                            for s in [keep, absorb]
                                .iter()
                                .filter_map(|i| t.shards.get(*i as usize))
                            {
                                upkeep.elastic.born(&table, s.range.clone(), now);
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!(shard = %name, step = label, error = %e, "merge step not committed")
                }
            }
        }
    }
}
