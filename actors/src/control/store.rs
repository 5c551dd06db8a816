//! The control plane's Raft storage on LMDB: the log, the vote, and the
//! applied cluster map (the state machine), in the node's one environment.
//!
//! Durability: every write is one LMDB write transaction; its commit is
//! fsync'd, and only then does openraft hear the write is done (for `append`,
//! through the `LogFlushed` callback). So a vote or an entry acknowledged to a
//! peer survives kill -9. Values are postcard-encoded.
//!
//! The state machine is small (the cluster map), so it is persisted whole
//! after every applied batch, and a snapshot is simply its encoding.

// openraft's traits return its `StorageError` (large); our helpers share it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, RwLock};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::{MapRaft, RaftNode};
use tstore_core::cluster_map::ClusterMap;

type NodeId = u64;
type StoreResult<T> = Result<T, StorageError<NodeId>>;
type LogDb = Database<'static, U64<BigEndian>, Bytes>;
type MetaDb = Database<'static, Str, Bytes>;

const LOG_DB: &str = "raft-log";
const META_DB: &str = "raft-meta";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last-purged";
const KEY_SM: &str = "state-machine";
const KEY_SNAPSHOT: &str = "snapshot";

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

fn encode<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    postcard::to_stdvec(v).map_err(write_err)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    tstore_transport::decode::from_bytes(bytes).map_err(read_err)
}

fn get_meta<T: DeserializeOwned>(env: &Env, db: MetaDb, key: &str) -> StoreResult<Option<T>> {
    let rtxn = env.read_txn().map_err(read_err)?;
    match db.get(&rtxn, key).map_err(read_err)? {
        Some(bytes) => decode(bytes).map(Some),
        None => Ok(None),
    }
}

fn put_meta<T: Serialize>(env: &Env, db: MetaDb, key: &str, value: &T) -> StoreResult<()> {
    let bytes = encode(value)?;
    let mut wtxn = env.write_txn().map_err(write_err)?;
    db.put(&mut wtxn, key, &bytes).map_err(write_err)?;
    wtxn.commit().map_err(write_err)
}

fn open_dbs(env: &Env) -> Result<(LogDb, MetaDb), heed::Error> {
    let wtxn = env.write_txn()?;
    let dbs = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
            let log = opener.create_database::<U64<BigEndian>, Bytes>(wtxn, Some(LOG_DB))?;
            let meta = opener.create_database::<Str, Bytes>(wtxn, Some(META_DB))?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit((log, meta)))
        })?
        .unwrap_commit();
    Ok(dbs)
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    env: Env,
    log: LogDb,
    meta: MetaDb,
}

impl LogStore {
    pub fn open(env: &Env) -> Result<Self, heed::Error> {
        let (log, meta) = open_dbs(env)?;
        Ok(Self {
            env: env.clone(),
            log,
            meta,
        })
    }
}

impl RaftLogReader<MapRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<MapRaft>>> {
        let rtxn = self.env.read_txn().map_err(read_err)?;
        let mut out = Vec::new();
        for item in self.log.range(&rtxn, &range).map_err(read_err)? {
            let (_, bytes) = item.map_err(read_err)?;
            out.push(decode(bytes)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<MapRaft> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<MapRaft>> {
        let last_purged: Option<LogId<NodeId>> = get_meta(&self.env, self.meta, KEY_PURGED)?;
        let last = {
            let rtxn = self.env.read_txn().map_err(read_err)?;
            match self.log.last(&rtxn).map_err(read_err)? {
                Some((_, bytes)) => Some(decode::<Entry<MapRaft>>(bytes)?.log_id),
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            // A log that was purged past its end (after a snapshot install)
            // still reports the purge point as its last id.
            last_log_id: last.max(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        put_meta(&self.env, self.meta, KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        get_meta(&self.env, self.meta, KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        put_meta(&self.env, self.meta, KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(get_meta::<Option<LogId<NodeId>>>(&self.env, self.meta, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<MapRaft>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<MapRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, encode(&e)?)))
            .collect::<StoreResult<_>>()?;
        let mut wtxn = self.env.write_txn().map_err(write_err)?;
        for (index, bytes) in &encoded {
            self.log.put(&mut wtxn, index, bytes).map_err(write_err)?;
        }
        let res = wtxn.commit();
        let io = res
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io);
        res.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut wtxn = self.env.write_txn().map_err(write_err)?;
        self.log
            .delete_range(&mut wtxn, &(log_id.index..))
            .map_err(write_err)?;
        wtxn.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let bytes = encode(&log_id)?;
        let mut wtxn = self.env.write_txn().map_err(write_err)?;
        self.meta
            .put(&mut wtxn, KEY_PURGED, &bytes)
            .map_err(write_err)?;
        self.log
            .delete_range(&mut wtxn, &(..=log_id.index))
            .map_err(write_err)?;
        wtxn.commit().map_err(write_err)
    }
}

/// What the state machine holds, persisted whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MapState {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, RaftNode>,
    /// Shared with every reader: a data request takes a reference, not a
    /// copy (the map holds every table and the event log).
    pub map: Arc<ClusterMap>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, RaftNode>,
    data: Vec<u8>,
}

/// The applied cluster map. Readers share it through [`StateMachine::shared`];
/// every applied change is announced on a watch of the map version.
#[derive(Clone)]
pub struct StateMachine {
    env: Env,
    meta: MetaDb,
    state: Arc<RwLock<MapState>>,
    version: Arc<watch::Sender<u64>>,
}

impl StateMachine {
    /// Opens the state machine, loading what was applied before a restart.
    pub fn open(env: &Env) -> Result<Self, StorageError<NodeId>> {
        let (_, meta) = open_dbs(env).map_err(read_err)?;
        let state: MapState = get_meta(env, meta, KEY_SM)?.unwrap_or_default();
        let (version, _) = watch::channel(state.map.version);
        Ok(Self {
            env: env.clone(),
            meta,
            state: Arc::new(RwLock::new(state)),
            version: Arc::new(version),
        })
    }

    /// The applied state, shared with readers.
    pub fn shared(&self) -> Arc<RwLock<MapState>> {
        self.state.clone()
    }

    /// Fires with the map version after every applied change.
    pub fn watch_version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Makes `state` durable, then visible to readers, then announces its
    /// version (in that order: a reader woken by the announcement must find
    /// the new map).
    fn persist(&self, state: MapState) -> StoreResult<()> {
        put_meta(&self.env, self.meta, KEY_SM, &state)?;
        let version = state.map.version;
        *self.state.write().unwrap() = state;
        self.version.send_replace(version);
        Ok(())
    }
}

impl RaftSnapshotBuilder<MapRaft> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<MapRaft>> {
        let state = self.state.read().unwrap().clone();
        let data = encode(&state)?;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.last_membership.clone(),
            snapshot_id: match state.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, state.map.version),
                None => format!("empty-{}", state.map.version),
            },
        };
        put_meta(
            &self.env,
            self.meta,
            KEY_SNAPSHOT,
            &StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            },
        )?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<MapRaft> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, RaftNode>)> {
        let s = self.state.read().unwrap();
        Ok((s.last_applied, s.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<super::types::MapResponse>>
    where
        I: IntoIterator<Item = Entry<MapRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut next = self.state.read().unwrap().clone();
        let mut responses = Vec::new();
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Ok(next.map.version),
                EntryPayload::Normal(cmd) => Arc::make_mut(&mut next.map)
                    .apply(&cmd)
                    .map(|()| next.map.version),
                EntryPayload::Membership(m) => {
                    next.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(next.map.version)
                }
            };
            responses.push(response);
        }
        self.persist(next)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let mut state: MapState = decode(&data)?;
        state.last_applied = meta.last_log_id;
        state.last_membership = meta.last_membership.clone();
        put_meta(
            &self.env,
            self.meta,
            KEY_SNAPSHOT,
            &StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )?;
        self.persist(state)
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<MapRaft>>> {
        let stored: Option<StoredSnapshot> = get_meta(&self.env, self.meta, KEY_SNAPSHOT)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<MapRaft, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> StoreResult<(tempfile::TempDir, LogStore, StateMachine)> {
            let dir = tempfile::tempdir().map_err(write_err)?;
            let env = crate::storage::open_env(dir.path()).map_err(write_err)?;
            let log = LogStore::open(&env).map_err(write_err)?;
            let sm = StateMachine::open(&env)?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    #[tokio::test]
    async fn the_map_and_the_log_survive_reopening() {
        use tstore_core::cluster_map::MapCommand;
        let dir = tempfile::tempdir().unwrap();
        let leader = openraft::CommittedLeaderId::new(1, 0);
        {
            let env = crate::storage::open_env(dir.path()).unwrap();
            let mut sm = StateMachine::open(&env).unwrap();
            let mut log = LogStore::open(&env).unwrap();
            let entry = Entry::<MapRaft> {
                log_id: LogId::new(leader, 1),
                payload: EntryPayload::Normal(MapCommand::RegisterNode {
                    node_id: "n1".into(),
                    addr: "127.0.0.1:7401".into(),
                    zone: String::new(),
                }),
            };
            log.save_vote(&Vote::new(1, 0)).await.unwrap();
            let res = sm.apply([entry]).await.unwrap();
            assert_eq!(res, vec![Ok(1)]);
        }
        let env = crate::storage::open_env(dir.path()).unwrap();
        let sm = StateMachine::open(&env).unwrap();
        let mut log = LogStore::open(&env).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 0)));
        let state = sm.shared();
        let state = state.read().unwrap();
        assert_eq!(state.map.version, 1);
        assert!(state.map.nodes.contains_key("n1"));
        assert_eq!(state.last_applied, Some(LogId::new(leader, 1)));
    }
}
