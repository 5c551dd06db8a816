//! The messages clients exchange with nodes (ALPN `tstore-client/1`), and
//! the control-plane changes nodes forward to the coordinator: one enum per
//! protocol. Plain data: framed and versioned by `tstore_transport::frame`
//! (bump `WIRE_VERSION` on an incompatible change). The node-to-node half
//! (replication, Raft, snapshots) is `tstore_actors::peer`.

use serde::{Deserialize, Serialize};

use crate::cluster_map::{
    ClusterMap, MapError, MapEvent, NodeState, PlacementRule, RowKey, Table, TableSpec,
};
use crate::coordinator::failover::ManualOp;
use crate::coordinator::placement::PlacementError;
use crate::data::ops::{Op, OpResult, RowRecord};
use crate::data::sessions::RequestId;
use crate::shard::ShardKey;
use crate::view::{GossipChange, GossipSnapshot, Member};

/// Most rows one scan returns.
pub const MAX_SCAN: usize = 10_000;

/// How a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadMode {
    /// From the primary, under a valid lease: linearizable.
    Strong,
    /// From any in-sync copy (a backup that heard from its primary within
    /// the lease, or the primary under its lease): may lag the primary by
    /// its commit lag.
    Replica,
    /// Read-your-writes: from an in-sync copy that has applied at least
    /// entry `n` of the shard's log (the client's session token), else from
    /// the primary.
    AtLeast(u64),
}

/// A read or write addressed to one shard copy. (A [`ShardKey`] encodes
/// as its table name then its index, so these bytes are those of separate
/// `table` and `shard` fields.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShardRequest {
    /// A write, with the identity that makes it exactly-once: every resend
    /// of it carries the same `id`.
    Write {
        shard: ShardKey,
        id: RequestId,
        op: Op,
    },
    Get {
        shard: ShardKey,
        key: RowKey,
        mode: ReadMode,
    },
    Scan {
        shard: ShardKey,
        from: Option<RowKey>,
        to: Option<RowKey>,
        limit: usize,
        mode: ReadMode,
        /// The shard's epoch in the map the scan was planned by: a copy
        /// whose keys narrowed since (a split) refuses it as stale, since
        /// the plan misses the shard that took the rest.
        epoch: u64,
    },
    /// The copy's replication state (and a checksum of its rows if asked).
    Status { shard: ShardKey, checksum: bool },
    /// The median key of the shard's rows (at its primary), where
    /// `split-shard` splits a range shard by default: answered as
    /// [`DataReply::Rows`] with that one row, or none for an empty shard.
    Middle { shard: ShardKey },
}

impl ShardRequest {
    /// The shard of `t` that owns the request's key (a write's, a point
    /// read's), `None` for a request that names no key (a scan or a
    /// status is for the shard it names).
    pub fn shard_in(&self, t: &Table) -> Option<u32> {
        match self {
            ShardRequest::Write { op, .. } => op.first_key().map(|k| t.shard_of(k)),
            ShardRequest::Get { key, .. } => Some(t.shard_of(key)),
            ShardRequest::Scan { .. }
            | ShardRequest::Status { .. }
            | ShardRequest::Middle { .. } => None,
        }
    }

    /// The request for shard `index` of its table, a scan planned at the
    /// shard's `epoch`.
    pub fn to(&self, index: u32, epoch: u64) -> ShardRequest {
        let mut r = self.clone();
        match &mut r {
            ShardRequest::Write { shard, .. }
            | ShardRequest::Get { shard, .. }
            | ShardRequest::Status { shard, .. }
            | ShardRequest::Middle { shard } => shard.index = index,
            ShardRequest::Scan {
                shard, epoch: e, ..
            } => {
                shard.index = index;
                *e = epoch;
            }
        }
        r
    }

    /// The shard the request is for.
    pub fn shard(&self) -> &ShardKey {
        match self {
            ShardRequest::Write { shard, .. }
            | ShardRequest::Get { shard, .. }
            | ShardRequest::Scan { shard, .. }
            | ShardRequest::Status { shard, .. }
            | ShardRequest::Middle { shard } => shard,
        }
    }
}

/// One shard copy's replication state, as the copy reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStatus {
    /// `primary`, `backup` or `learner`.
    pub role: String,
    pub epoch: u64,
    /// Durable log end, and what the rows reflect.
    pub logged: u64,
    pub applied: u64,
    /// `serving`; `copying: R rows, B bytes so far` (a learner fetching its
    /// snapshot); `no lease: refusing writes` (a primary whose backups have
    /// not all answered within the lease); or `failed: <why>`.
    pub state: String,
    /// Of the rows (keys, versions, content); comparable across nodes.
    pub checksum: Option<u64>,
    /// Log entries the copy holds: `logged - log_start + 1`, from its
    /// metadata (no scan).
    pub log_entries: u64,
    /// The oldest log position held (`logged + 1` when it holds none):
    /// older entries were truncated or came in a snapshot.
    pub log_start: u64,
    /// Bytes of the log entries held (their stored encoding).
    pub log_bytes: u64,
    /// Rows, and the bytes of their keys and stored records: counted by a
    /// scan, so only when checksums were asked (`describe --verify`).
    pub rows: Option<u64>,
    pub row_bytes: Option<u64>,
    /// Quiet: the shard is idle and sends nothing of its own until a
    /// request wakes it (`replication`, "Quiescence"); it serves all the
    /// same (a quiet primary's first strong read waits one round trip).
    pub quiet: bool,
    /// Sealed for a merge and settled: the position every entry of the
    /// copy is logged and applied up to, with nothing in flight (on the
    /// primary: nothing proposed past it). The coordinator completes a
    /// merge once every member of both shards reports one, the same per
    /// shard.
    pub sealed_at: Option<u64>,
}

/// One copy of a shard with its status, or why it could not be asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyReport {
    pub shard: u32,
    pub node: String,
    pub status: Result<CopyStatus, String>,
}

/// Client reads and writes (ALPN `tstore-client/1`). Row requests come
/// routed by the client ([`DataRequest::Routed`]): there is one request
/// format per operation, carrying the shard's epoch and, for a write, its
/// request identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataRequest {
    /// Every copy of every shard of a table, asked for its state.
    Copies { table: String, checksums: bool },
    /// A request the client routed itself, from its cached map, to a node
    /// holding the shard at configuration `epoch`. Served (forwarded at
    /// most once if need be) only if the contacted node's map has the shard
    /// at that epoch; an older epoch gets a [`ErrorKind::Stale`] answer.
    Routed { epoch: u64, request: ShardRequest },
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOp {
    Put {
        row: String,
    },
    Insert {
        row: String,
    },
    Update {
        key: RowKey,
        patch: String,
        if_version: Option<u64>,
    },
    Delete {
        key: RowKey,
        if_version: Option<u64>,
    },
}

/// What kind of failure a data request met; it decides whether a retry is
/// safe and the CLI's exit code. New kinds go at the end (wire order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request itself is wrong (not JSON, not an object, a batch across
    /// shards): nothing was written; do not retry as is.
    Invalid,
    /// A condition did not hold (the row exists, does not exist, or is at
    /// another version): nothing was written.
    Conflict,
    /// The shard could not take the request now (no primary yet, lease,
    /// failover in progress): nothing was written; retry later.
    Unavailable,
    /// The write was sent but its outcome is not known (its primary failed
    /// or changed while it was in flight): read before retrying it.
    Unknown,
    /// The row (or the row an update makes) is larger than the limit.
    TooLarge,
    /// The key column is missing, or of a type a key cannot have.
    BadKey,
    /// The table does not exist.
    NoTable,
    /// The client routed by a map older than the contacted node's: nothing
    /// was done; refresh the map and resend.
    Stale,
    /// The write's client session was forgotten by the shard (idle longer
    /// than its time to live, or a request it reported complete): it was not
    /// applied now and may have been applied before; do not resend it.
    Expired,
}

impl ErrorKind {
    /// The `tstore` CLI's exit code for a request that failed this way.
    ///
    /// The CLI's exit codes, in one place: 0 success; 1 any other failure
    /// (including [`AdminErrorKind::Internal`]); 2 a bad command line; 3
    /// invalid request; 4 conflict; 5 unavailable or stale (retry later); 6
    /// outcome unknown or session expired (read before retrying); 7 row too
    /// large; 8 bad key; 9 no such table (or node).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Invalid => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::Unavailable | ErrorKind::Stale => 5,
            ErrorKind::Unknown | ErrorKind::Expired => 6,
            ErrorKind::TooLarge => 7,
            ErrorKind::BadKey => 8,
            ErrorKind::NoTable => 9,
        }
    }
}

/// A failed data request: its kind and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct DataError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DataError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unknown, message)
    }
}

impl From<crate::data::ops::OpError> for DataError {
    fn from(e: crate::data::ops::OpError) -> Self {
        use crate::data::ops::OpError;
        fn kind(e: &OpError) -> ErrorKind {
            match e {
                OpError::Exists { .. }
                | OpError::NotFound { .. }
                | OpError::VersionMismatch { .. } => ErrorKind::Conflict,
                OpError::InvalidRow(_) => ErrorKind::Invalid,
                OpError::TooLarge(_) => ErrorKind::TooLarge,
                OpError::Key(_) => ErrorKind::BadKey,
                OpError::Batch { cause, .. } => kind(cause),
                OpError::Expired(_) => ErrorKind::Expired,
            }
        }
        Self::new(kind(&e), e.to_string())
    }
}

/// Why a change to the cluster map (DDL, drain, an operator's shard change)
/// was not made. Typed so that callers act on the cause (retry, start more
/// nodes, fix the request) without reading the message; it travels between
/// nodes when a change is forwarded to the Raft leader, and reaches clients
/// as an [`AdminError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControlError {
    /// Raft has not been initialized: not enough nodes started with the
    /// same `--bootstrap-expect` have met yet.
    #[error("the control plane is not formed yet: start {need} nodes with --bootstrap-expect {need} (this node has {have})")]
    NotFormed { need: usize, have: usize },
    /// No leader is known or reachable; the message says which voters are
    /// down.
    #[error("{0}")]
    NoLeader(String),
    /// The leader could not confirm a majority, or the change was not
    /// committed in time; the message says which voters are down.
    #[error("{0}")]
    NoQuorum(String),
    /// Leadership moved while the change was being made; retry.
    #[error("leadership moved (now {}); retry", leader.as_deref().unwrap_or("unknown"))]
    LeaderMoved { leader: Option<String> },
    /// Fewer nodes can take copies than the table wants.
    #[error("the table wants {need} replicas but only {have} nodes can take them ({nodes}); start more nodes or lower --replicas")]
    NotEnoughNodes {
        need: usize,
        have: usize,
        nodes: String,
    },
    #[error("table {0:?} already exists")]
    TableExists(String),
    /// `known` lists the tables that do exist.
    #[error("table {name:?} does not exist{}", if known.is_empty() { String::new() } else { format!(" (tables: {})", known.join(", ")) })]
    NoSuchTable { name: String, known: Vec<String> },
    #[error("node {0:?} is not in the cluster map")]
    NoSuchNode(String),
    /// The request is malformed (a bad table spec, an unknown shard).
    #[error("{0}")]
    Invalid(String),
    /// The request is well-formed but the cluster's state forbids it now
    /// (draining the last node that can hold a copy, promoting a copy that
    /// is not in sync).
    #[error("{0}")]
    Refused(String),
    /// Raft or storage failed; the message says how.
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// `NoSuchTable`, listing the tables `map` has.
    pub fn no_such_table(name: &str, map: &ClusterMap) -> Self {
        ControlError::NoSuchTable {
            name: name.to_owned(),
            known: map.tables.keys().cloned().collect(),
        }
    }

    /// The kind an admin client sees, which decides its exit code.
    pub fn kind(&self) -> AdminErrorKind {
        match self {
            ControlError::NotFormed { .. }
            | ControlError::NoLeader(_)
            | ControlError::NoQuorum(_)
            | ControlError::LeaderMoved { .. }
            | ControlError::NotEnoughNodes { .. } => AdminErrorKind::Unavailable,
            ControlError::TableExists(_) | ControlError::Refused(_) => AdminErrorKind::Conflict,
            ControlError::NoSuchTable { .. } | ControlError::NoSuchNode(_) => {
                AdminErrorKind::NotFound
            }
            ControlError::Invalid(_) => AdminErrorKind::Invalid,
            ControlError::Internal(_) => AdminErrorKind::Internal,
        }
    }
}

impl From<MapError> for ControlError {
    fn from(e: MapError) -> Self {
        match e {
            MapError::TableExists(t) => ControlError::TableExists(t),
            MapError::NoSuchTable(name) => ControlError::NoSuchTable {
                name,
                known: vec![],
            },
            MapError::UnknownNode(n) => ControlError::NoSuchNode(n),
            e @ (MapError::InvalidTable(_)
            | MapError::InvalidSplits(_)
            | MapError::InvalidMerge(_)
            | MapError::InvalidPlacement(_)) => ControlError::Invalid(e.to_string()),
            e @ (MapError::StaleEpoch { .. } | MapError::UnsafeChange { .. }) => {
                ControlError::Refused(e.to_string())
            }
        }
    }
}

impl From<PlacementError> for ControlError {
    fn from(e: PlacementError) -> Self {
        match e {
            PlacementError::NotEnoughNodes {
                wanted,
                available,
                nodes,
            } => ControlError::NotEnoughNodes {
                need: wanted,
                have: available,
                nodes,
            },
        }
    }
}

/// What kind of failure an admin request met; it decides the CLI's exit
/// code. New kinds go at the end (wire order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminErrorKind {
    /// The request is malformed: fix it.
    Invalid,
    /// The cluster's state forbids it (the table exists, a drain would
    /// leave a shard without copies).
    Conflict,
    /// The control plane cannot decide now (no leader, no quorum, not
    /// formed, too few nodes): retry later or start nodes.
    Unavailable,
    /// The table or node named does not exist.
    NotFound,
    /// Something failed inside the node; its log says more.
    Internal,
}

impl AdminErrorKind {
    /// The `tstore` CLI's exit code (see [`ErrorKind::exit_code`] for the
    /// whole table).
    pub fn exit_code(self) -> i32 {
        match self {
            AdminErrorKind::Invalid => 3,
            AdminErrorKind::Conflict => 4,
            AdminErrorKind::Unavailable => 5,
            AdminErrorKind::NotFound => 9,
            AdminErrorKind::Internal => 1,
        }
    }
}

/// A failed admin request: its kind and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub kind: AdminErrorKind,
    pub message: String,
    /// The control-plane cause, when there is one.
    pub control: Option<ControlError>,
}

impl AdminError {
    pub fn new(kind: AdminErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            control: None,
        }
    }
}

impl From<ControlError> for AdminError {
    fn from(e: ControlError) -> Self {
        Self {
            kind: e.kind(),
            message: e.to_string(),
            control: Some(e),
        }
    }
}

/// Answers to data requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataReply {
    Written(OpResult),
    Row(Option<RowRecord>),
    Rows(Vec<(RowKey, RowRecord)>),
    Status(CopyStatus),
    Copies(Vec<CopyReport>),
    Error(DataError),
}

/// Cluster-map changes that only the coordinator (the Raft leader) makes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlRequest {
    CreateTable(TableSpec),
    DropTable(String),
    SetNodeState {
        node_id: String,
        state: NodeState,
    },
    Manual {
        table: String,
        shard: u32,
        op: ManualOp,
    },
    /// Split a shard (`MapCommand::SplitShard`).
    Split {
        table: String,
        shard: u32,
        at: Option<RowKey>,
    },
    /// Turn a table's automatic splits on or off.
    SetAutoSplit {
        table: String,
        on: bool,
    },
    /// Turn a table's automatic merges on or off.
    SetAutoMerge {
        table: String,
        on: bool,
    },
    /// Begin merging two shards (`MapCommand::BeginMerge`).
    Merge {
        table: String,
        keep: u32,
        absorb: u32,
    },
    SetPlacement {
        table: String,
        rule: Option<PlacementRule>,
    },
}

/// Client and operator requests (ALPN `tstore-client/1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The member list: newest incarnation of each node, with status.
    Members,
    /// The raw gossip state as the contacted node sees it.
    Gossip,
    /// The gossip state, then every change to it, until the client goes away.
    WatchGossip,
    /// The control plane: voters, leader, term, commit index, map version.
    Cluster,
    /// Creates a table (placed by the coordinator on the Raft leader).
    CreateTable(TableSpec),
    DropTable {
        name: String,
    },
    /// Every table, from the contacted node's copy of the map.
    Tables,
    /// One table with every shard's range and replica set.
    Describe {
        name: String,
    },
    /// Rows: put, insert, update, delete, get, scan.
    Data(DataRequest),
    /// The coordinator's recent decisions, oldest first.
    Events,
    /// Drain a node (its copies move away) or make it active again.
    SetNodeState {
        node_id: String,
        state: NodeState,
    },
    /// An operator's change to one shard.
    Shard {
        table: String,
        shard: u32,
        op: ManualOp,
    },
    /// What a client needs to route a table's keys itself: the table and
    /// the address of every node of the map.
    Route {
        table: String,
    },
    /// The contacted node's storage: data dir size, LMDB map size and use,
    /// shard copies held, bytes written per logged entry.
    NodeStats,
    /// Several row requests in one stream, as a client coalesces what it
    /// has in flight to one node: each is served as if sent alone, and
    /// answered by one [`AdminReply::DataAt`] as soon as it finishes (not
    /// in order); the stream then ends. At most [`MAX_COALESCED`].
    DataMany(Vec<DataRequest>),
    /// Sets (or with `None` clears) a table's placement rule: where its
    /// copies and primaries may be.
    SetPlacement {
        table: String,
        rule: Option<PlacementRule>,
    },
    /// Splits a shard in two: a range shard at `at` (a key strictly inside
    /// it), a hash shard into its two hash halves (`at` is `None`).
    SplitShard {
        table: String,
        shard: u32,
        at: Option<RowKey>,
    },
    /// Turns the coordinator's automatic splits of a table on or off.
    SetAutoSplit {
        table: String,
        on: bool,
    },
    /// Turns the coordinator's automatic merges of a table on or off.
    SetAutoMerge {
        table: String,
        on: bool,
    },
    /// Begins merging two neighbouring shards of a table (the newer of the
    /// two, which must be the table's newest shard, goes into the other);
    /// the coordinator carries it out (`MapCommand::BeginMerge`). Answered
    /// once begun: the merge is done when the newer shard has left the map.
    MergeShards {
        table: String,
        a: u32,
        b: u32,
    },
}

/// The most row requests one [`AdminRequest::DataMany`] may carry.
pub const MAX_COALESCED: usize = 256;

/// One node's storage, as it measures it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    pub node_id: String,
    pub data_dir: String,
    /// Sum of the sizes of the files under the data dir.
    pub data_dir_bytes: u64,
    /// Address space reserved for the LMDB environment (its upper bound).
    pub lmdb_map_size: u64,
    /// Pages in use up to the highest one written, in bytes (free pages
    /// inside that range are counted: the file does not shrink).
    pub lmdb_used_bytes: u64,
    /// Shard copies this node holds.
    pub copies: u64,
    /// Log entries this node appended (as primary or backup) since start.
    pub entries_logged: u64,
    /// Bytes this process caused to be written to storage since start
    /// (`write_bytes` of `/proc/self/io`); `None` where that is not readable.
    pub disk_write_bytes: Option<u64>,
    /// `disk_write_bytes / entries_logged`, when both are known and nonzero.
    pub bytes_per_entry: Option<u64>,
    /// Group commits (one LMDB write transaction, one fsync, for the log
    /// appends and applies of many copies) since start.
    #[serde(default)]
    pub group_commits: u64,
    /// How this node's copies were (re)built since start, and what it sent
    /// others to build theirs.
    #[serde(default)]
    pub recovery: RecoveryStats,
    /// Why the shard store cannot write, while it cannot (disk full, I/O
    /// errors); its copies then fail over to other nodes.
    #[serde(default)]
    pub storage_error: Option<String>,
}

/// Counters of copy recovery on one node since it started: whether copies
/// came back from their own data and the log or from full snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStats {
    /// Copies that (re)joined as learners keeping the rows this node held,
    /// to catch up from the primary's log.
    pub rejoined_from_own_data: u64,
    /// Snapshots installed here, and their bytes.
    pub snapshots_installed: u64,
    pub snapshot_bytes_installed: u64,
    /// Snapshots this node served to learners, and their bytes.
    pub snapshots_served: u64,
    pub snapshot_bytes_served: u64,
    /// Log entries sent from the durable log to copies catching up.
    pub log_entries_sent: u64,
}

/// The control plane as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: String,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    /// Index of the last log entry known committed and applied here.
    pub applied_index: u64,
    pub last_log_index: u64,
    /// The last entry the latest snapshot of the map covers (0: none yet).
    pub snapshot_index: u64,
    /// The log holds no entry up to here: it was compacted (0: none).
    pub purged_index: u64,
    /// Voters with whether gossip sees them live.
    pub voters: Vec<(String, bool)>,
    pub learners: Vec<(String, bool)>,
    pub map_version: u64,
}

/// Replies to [`AdminRequest`]s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminReply {
    Members {
        observer: String,
        members: Vec<Member>,
    },
    Gossip(GossipSnapshot),
    /// Changes seen by a watch since its previous reply; `at_unix_ms` is the
    /// observer's clock when they were seen.
    GossipChanges {
        at_unix_ms: u64,
        changes: Vec<GossipChange>,
    },
    Cluster(ClusterStatus),
    /// A table as committed, with the map version that holds it.
    Table {
        map_version: u64,
        table: Table,
    },
    Tables {
        map_version: u64,
        tables: Vec<Table>,
    },
    /// A change was committed in this map version.
    Done {
        map_version: u64,
    },
    Data(DataReply),
    Events {
        map_version: u64,
        events: Vec<MapEvent>,
    },
    Error(AdminError),
    /// Answer to [`AdminRequest::Route`]: node ids with their addresses,
    /// and the node's wall clock (a client stamps its session id in the
    /// cluster's time, see `data::sessions`).
    Route {
        map_version: u64,
        now_unix_ms: u64,
        table: Table,
        nodes: Vec<(String, String)>,
    },
    /// Answer to [`AdminRequest::NodeStats`].
    NodeStats(NodeStats),
    /// One answer to an [`AdminRequest::DataMany`]: the position of the
    /// request it answers, and the reply.
    DataAt {
        index: u32,
        reply: DataReply,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_errors_keep_their_cause_and_map_to_one_kind_each() {
        let cases = [
            (
                ControlError::NotFormed { need: 3, have: 0 },
                AdminErrorKind::Unavailable,
                "start 3 nodes with --bootstrap-expect 3 (this node has 0)",
            ),
            (
                ControlError::LeaderMoved { leader: None },
                AdminErrorKind::Unavailable,
                "leadership moved (now unknown); retry",
            ),
            (
                ControlError::TableExists("t".into()),
                AdminErrorKind::Conflict,
                "table \"t\" already exists",
            ),
            (
                ControlError::NoSuchTable {
                    name: "x".into(),
                    known: vec!["a".into(), "b".into()],
                },
                AdminErrorKind::NotFound,
                "table \"x\" does not exist (tables: a, b)",
            ),
            (
                ControlError::NoSuchNode("n9".into()),
                AdminErrorKind::NotFound,
                "node \"n9\" is not in the cluster map",
            ),
            (
                ControlError::Internal("disk".into()),
                AdminErrorKind::Internal,
                "disk",
            ),
        ];
        for (e, kind, says) in cases {
            let admin = AdminError::from(e.clone());
            assert_eq!(admin.kind, kind, "{e:?}");
            assert!(admin.message.contains(says), "{}", admin.message);
            assert_eq!(admin.control, Some(e));
        }
        assert_eq!(AdminErrorKind::Unavailable.exit_code(), 5);
        assert_eq!(
            AdminErrorKind::NotFound.exit_code(),
            ErrorKind::NoTable.exit_code()
        );
    }

    #[test]
    fn map_and_placement_errors_become_typed_control_errors() {
        assert_eq!(
            ControlError::from(MapError::TableExists("t".into())),
            ControlError::TableExists("t".into())
        );
        assert_eq!(
            ControlError::from(MapError::UnknownNode("n".into())),
            ControlError::NoSuchNode("n".into())
        );
        assert!(matches!(
            ControlError::from(MapError::InvalidTable("bad".into())),
            ControlError::Invalid(m) if m.contains("bad")
        ));
        assert!(matches!(
            ControlError::from(MapError::StaleEpoch {
                shard: "t/0".into(),
                expected: 1,
                now: 2
            }),
            ControlError::Refused(_)
        ));
        let e = ControlError::from(PlacementError::NotEnoughNodes {
            wanted: 5,
            available: 3,
            nodes: "n1, n2, n3".into(),
        });
        assert_eq!(
            e,
            ControlError::NotEnoughNodes {
                need: 5,
                have: 3,
                nodes: "n1, n2, n3".into()
            }
        );
        assert!(e.to_string().contains("only 3 nodes can take them"));
        let map = ClusterMap::default();
        assert_eq!(
            ControlError::no_such_table("x", &map).to_string(),
            "table \"x\" does not exist"
        );
    }
}
