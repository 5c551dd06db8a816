//! The actor holding one shard copy on this node. Where the node is the
//! shard's primary it runs [`Primary`] (the DESIGN's ShardActor role): it
//! orders writes, logs them with group commit, replicates them, applies and
//! answers once every member has them. Where the node is a backup it runs
//! [`Backup`] (the ReplicaActor role): it logs what the primary sends, acks,
//! and applies what the primary committed. The replication decisions are the
//! pure state machines of `tstore_core::replication`, down to whether a read
//! may be served (`read_permit`), how long a promoted primary waits and
//! what a rejoining copy keeps (`replication::reconfigure`); this
//! actor does the I/O and tells them the time and what the rows hold.
//!
//! Where the node is a learner (a copy being built) it follows the log like
//! a backup without counting for commits, until the coordinator makes it a
//! backup. If the node already holds rows of the shard (it restarted, was
//! dropped and re-added, or the copy moves back) it keeps them and drops
//! its log after them (`reconfigure::rejoin`), and the primary sends what
//! it missed from its log; otherwise, or when the primary no longer holds
//! that part of its log (`Effect::Rebuild`), it installs a snapshot
//! streamed from the primary first.
//!
//! Log truncation (`Effect::Truncate`) is carried out with the copy's next
//! group commit (`Work::truncate`), bounded by entries by the state machine
//! and by bytes by the store (`CopyEnv::retention`).
//!
//! Corruption: stored data that fails its checksum
//! (`StoreError::Corrupt`, met by a read, a scan, an apply, sending the log
//! or a status checksum) is never served: the request that met it gets an
//! error and the copy reports it (a warning naming the shard and the key or
//! seq, and `corrupt: ...` in its status). A backup or learner then discards
//! its copy and installs a snapshot from the primary (`corrupted`); one
//! that reflects at least what it had acknowledged, so the primary's view of
//! it holds. A primary fails instead (`fail`): it refuses reads and writes.
//!
//! Splits (elastic tables): when the map splits a shard
//! (`MapCommand::SplitShard`), the parent's primary logs a split marker
//! (`Op::Split`) as it takes the new epoch, and logs it again in any later
//! epoch until its own copy has applied one. Every copy of the parent applies
//! the marker at the same log position: the child's rows move to the
//! child's storage and the client sessions are copied there, in the apply's
//! transaction (`ShardStore::split_in`). The child's member copies start
//! [`Role::Splitting`]: they wait until their node's copy of the parent has
//! built them, then go on as copies of a new shard (empty log, the rows
//! already there). No row crosses the network. From the new epoch on, the
//! parent refuses as stale a request for a key it gave away, and a scan
//! planned by an older map (`LocalCopy::range_epoch`): the client refreshes
//! its map and finds the child.
//!
//! Merges (elastic tables): the map seals both shards
//! (`MapCommand::SealMerge`; a sealed primary takes no writes, and reports
//! `sealed_at` in its status once nothing is in flight), the coordinator
//! waits until every member of both reports the same sealed position, and
//! `MapCommand::FinishMerge` hands the absorbed shard's keys to the kept
//! one. No log entry marks it: each member copy of the kept shard, when it
//! takes the merged epoch (or starts in it), merges its node's two copies
//! in one transaction (`ShardStore::merge`), its log going on from
//! `Merged::log_from`, and only then builds its state machine. A copy
//! that is not where the merge expects it (it missed entries, or this node
//! lacks the absorbed copy) copies a snapshot from the primary instead; a
//! primary in that state fails, and the coordinator fails it over.
//!
//! Each copy reports its state (role, epoch, `copying` or `ready` for a
//! learner, a primary's silent backups, `failed`) to the node's
//! [`CopyPublisher`], which shows every copy of the node in gossip as one
//! compact value, and withdraws it when stopped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use tstore_membership::Membership;

use super::messages::{
    GetStatus, LoadReport, MiddleKey, Read, Reconfigure, Replicate, ScanShard, StopCopy, Write,
};
use super::publish::CopyPublisher;
use super::snapshot::{self, Fetch, Installed};
use crate::clock::{now_ms, wall_ms};
use crate::data::committer::Committer;
use crate::data::store::{Done, MergeOutcome, ShardPrefix, ShardStore, StoreError, Truncate, Work};
use crate::hearing::Hearing;
use crate::peer::PeerMessage;
use crate::peer_link::PeerLink;
use crate::recovery::Recovery;
use tstore_core::cluster_map::{KeyRange, NodeId, RowKey};
use tstore_core::coordinator::elastic::ShardStats;
use tstore_core::copy_gossip::CopyGossip;
use tstore_core::data::ops::{OpResult, RowRecord};
use tstore_core::data::sessions::Command;
use tstore_core::replication::outbox;
use tstore_core::replication::reconfigure::{rejoin, takeover_not_before, Rejoin};
use tstore_core::replication::{
    Backup, Effect, LeaseConfig, LogEntry, LogRetention, Millis, Primary, ProposeError,
    ReadRefusal, ReplMsg, Seq,
};
use tstore_core::shard::{LocalCopy, LocalRole, ShardKey};
use tstore_core::wire::ReadMode;
use tstore_core::wire::{CopyStatus, DataError, ErrorKind};

/// Pause before a failed snapshot is asked for again.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

/// What every copy on a node shares.
#[derive(Clone)]
pub struct CopyEnv {
    pub membership: Arc<Membership>,
    pub store: ShardStore,
    /// The node's group commit (writes `store`).
    pub committer: Committer,
    /// How the copy reaches the other members (replication, snapshots).
    pub link: Arc<dyn PeerLink>,
    pub lease: LeaseConfig,
    /// How much replication log each copy keeps.
    pub retention: LogRetention,
    /// The node's recovery counters (`node-stats`).
    pub recovery: Recovery,
    /// Where the copy reports its state for gossip.
    pub gossip: CopyPublisher,
    /// When each peer node was last heard (its node heartbeats): a quiet
    /// backup is in sync while its primary's node is.
    pub hearing: Hearing,
}

enum Role {
    Primary(Primary),
    /// A backup, or a learner that has installed its snapshot.
    Backup(Backup),
    /// A learner fetching its snapshot.
    Installing,
    /// A member of a shard split off another, waiting for this node's copy
    /// of the parent to apply the split marker that builds it (since when).
    Splitting(Instant),
}

/// How often a copy waiting for its split checks whether it was built.
const SPLIT_CHECK: Duration = Duration::from_millis(20);
/// A copy waiting longer than this for its split says so in the log, again
/// every such period.
const SPLIT_WARN: Duration = Duration::from_secs(10);
/// A request reaching a copy that has waited less than this for its split
/// is held (sent to the copy again every [`SPLIT_CHECK`]) rather than
/// refused: the client would retry after a backoff, longer than the wait.
const SPLIT_HOLD: Duration = Duration::from_secs(2);

/// The request identity of a split marker: never admitted as a client's
/// request (the store applies a marker before looking at sessions).
const SPLIT_MARKER_ID: tstore_core::data::sessions::RequestId =
    tstore_core::data::sessions::RequestId {
        client: tstore_core::data::sessions::ClientId {
            started_ms: 0,
            nonce: 0,
        },
        seq: 0,
        first_incomplete: 0,
    };

type Reply = oneshot::Sender<Result<OpResult, DataError>>;

/// A copy of one shard on this node.
pub struct CopyActor {
    key: ShardKey,
    copy: LocalCopy,
    env: CopyEnv,
    id: ShardPrefix,
    role: Role,
    /// Entries handed to the disk and not yet written (group commit).
    to_persist: Vec<LogEntry>,
    /// Replication messages of this turn, sent merged at its end
    /// (`tstore_core::replication::outbox`).
    outbox: Vec<(NodeId, ReplMsg)>,
    flush_scheduled: bool,
    /// Entries committed and not yet applied, up to here.
    pending_apply: Option<Seq>,
    /// Log truncation asked for and not yet carried out (`below`, `limit`).
    pending_truncate: Option<(Seq, Seq)>,
    /// Clients waiting for their entry to commit.
    waiting: HashMap<Seq, Reply>,
    /// Reads held until the rows reach the commit point (the next apply
    /// wakes them to be checked again): at most [`MAX_PARKED_READS`].
    parked_reads: Vec<oneshot::Sender<()>>,
    /// A storage failure stopped this copy; it refuses work until restarted.
    failed: Option<String>,
    /// Corrupt data found in this copy, while it is being rebuilt.
    corrupt: Option<String>,
    /// A rebuild is due (corruption met where no context was at hand).
    rebuild_due: bool,
    /// The epoch and log position this copy had acknowledged when it was
    /// found corrupt: in that epoch, the snapshot replacing it must reflect
    /// at least that much (the primary goes on from what was acknowledged).
    snapshot_floor: (u64, Seq),
    /// The last word from a primary (`Backup::primary_contact`) of the
    /// backup this copy last ran, kept while it runs something else: a
    /// later backup starts from it, a promoted primary waits out the old
    /// lease from it.
    primary_contact: Millis,
    /// Rows and bytes of the snapshot being installed, so far.
    copied: Arc<(AtomicU64, AtomicU64)>,
    /// The state last reported for gossip.
    published: Option<CopyGossip>,
    /// This actor's ticket with the node's gossip publisher.
    ticket: u64,
    /// Stopped: reports nothing more.
    withdrawn: bool,
    /// A tick is scheduled (`keep_ticking`).
    ticking: bool,
    /// Split markers this primary has logged in its epoch: `(epoch, child)`.
    markers: std::collections::BTreeSet<(u64, u32)>,
    /// Requests served (reads, scans, writes taken), and the count and
    /// time of the last [`LoadReport`], to report a rate.
    ops: u64,
    ops_mark: (Instant, u64),
    /// Warnings logged while waiting for the split (`wait_for_split`).
    split_warnings: u32,
}

/// Reads one copy holds at most while its rows catch up with its commit
/// point (see `CopyActor::park_read`); more are refused, to be retried.
const MAX_PARKED_READS: usize = 4096;

impl CopyActor {
    pub fn new(key: ShardKey, copy: LocalCopy, env: CopyEnv) -> Self {
        let id = ShardPrefix {
            table: copy.table_id,
            shard: key.index,
        };
        let ticket = env.gossip.ticket();
        let mut actor = Self {
            key,
            id,
            role: Role::Installing,
            copy,
            env,
            to_persist: Vec::new(),
            outbox: Vec::new(),
            flush_scheduled: false,
            pending_apply: None,
            pending_truncate: None,
            waiting: HashMap::new(),
            parked_reads: Vec::new(),
            failed: None,
            corrupt: None,
            rebuild_due: false,
            snapshot_floor: (0, 0),
            primary_contact: 0,
            copied: Arc::default(),
            published: None,
            ticket,
            withdrawn: false,
            ticking: false,
            markers: Default::default(),
            ops: 0,
            ops_mark: (Instant::now(), 0),
            split_warnings: 0,
        };
        if actor.awaits_split() {
            actor.role = Role::Splitting(Instant::now());
            return actor;
        }
        if !actor.merge_locally() {
            return actor; // installing, or failed
        }
        // Installing (a snapshot) unless what this node holds serves; a
        // restarted copy's hello is sent once the actor runs.
        let _ = actor.take_role(None, false, None);
        actor
    }

    /// A member copy of a shard that took a neighbour in by a merge merges
    /// its node's two copies, once (module docs, "Merges"). Returns whether
    /// the copy goes on from what this node holds; if not, it is left
    /// installing a snapshot (a backup) or failed (a primary).
    fn merge_locally(&mut self) -> bool {
        let Some(m) = self.copy.merged.clone() else {
            return true;
        };
        if self.copy.role == LocalRole::Learner {
            return true; // built from a snapshot of the merged shard
        }
        let absorbed = ShardPrefix {
            table: self.id.table,
            shard: m.absorbed,
        };
        let absorbed = (absorbed, m.absorbed_born);
        let why = match self.env.store.merge(self.id, absorbed, m.seqs.0, m.seqs.1) {
            Ok(MergeOutcome::AlreadyDone) => return true,
            Ok(MergeOutcome::Merged { rows, bytes }) => {
                info!(shard = %self.key, absorbed = m.absorbed, rows, bytes, log_from = m.log_from(), "merged this node's copy of the absorbed shard into this one");
                return true;
            }
            Ok(MergeOutcome::Mismatch(why)) => why,
            Err(e) => format!("the merge could not be written here: {e}"),
        };
        if self.copy.role == LocalRole::Primary {
            self.fail(format!("cannot merge here: {why}"));
        } else {
            warn!(shard = %self.key, absorbed = m.absorbed, %why, "this copy cannot be merged here; copying a snapshot of the merged shard from the primary");
            self.role = Role::Installing;
        }
        false
    }

    /// A member copy of a shard split off another that this node has not
    /// built yet: its copy of the parent will (a learner copies a
    /// snapshot instead, as always).
    fn awaits_split(&self) -> bool {
        self.copy.split_from.is_some()
            && self.copy.role != LocalRole::Learner
            && !self
                .env
                .store
                .built(self.id, self.copy.born)
                .unwrap_or(false)
    }

    /// While [`Role::Splitting`]: checks every [`SPLIT_CHECK`] whether the
    /// parent's copy here has built this one, then takes the copy's role.
    fn wait_for_split(&mut self, ctx: &mut Context<Self>) {
        let Role::Splitting(since) = self.role else {
            return;
        };
        if self.awaits_split() {
            // The parent's copy here went past the split without building
            // this one (it was rebuilt from a snapshot taken after the
            // marker): nothing here ever will. Failed, the coordinator
            // replaces it (a new copy is built from the shard's primary).
            let parent = self.copy.split_from.map(|p| ShardPrefix {
                table: self.id.table,
                shard: p,
            });
            let past = parent.is_some_and(|p| {
                self.env
                    .store
                    .split_done(p, self.key.index, self.copy.born.unwrap_or_default())
                    .unwrap_or(false)
            });
            let why = if !self.copy.parent_here {
                Some("this node holds no copy of the shard it is split from")
            } else if past {
                Some("this node's copy of the shard it is split from was rebuilt past the split")
            } else {
                None
            };
            // (Built meanwhile, between the two reads: go on below.)
            if let Some(why) = why.filter(|_| self.awaits_split()) {
                self.fail(format!(
                    "{why} ({}/{}): it cannot be built here",
                    self.key.table,
                    self.copy.split_from.unwrap_or_default()
                ));
                self.publish(ctx);
                self.keep_ticking(ctx);
                return;
            }
            let waited = since.elapsed();
            if waited >= SPLIT_WARN * (self.split_warnings + 1) {
                self.split_warnings += 1;
                warn!(shard = %self.key, parent = ?self.copy.split_from, secs = waited.as_secs(), "still waiting for this node's copy of the parent to apply the split");
            }
            ctx.run_later(SPLIT_CHECK, |act, ctx| act.wait_for_split(ctx));
            return;
        }
        info!(shard = %self.key, parent = ?self.copy.split_from, ms = since.elapsed().as_millis() as u64, "built by the split of the parent's copy here");
        self.role = Role::Installing;
        match self.take_role(None, false, None) {
            Some(effects) => {
                self.run(effects, ctx);
                self.after_configure(ctx);
                self.log_split_markers(ctx);
                self.publish(ctx);
                self.keep_ticking(ctx);
            }
            None => self.copy_afresh(ctx),
        }
    }

    /// A request that reached this copy while it waits for its split (for
    /// less than [`SPLIT_HOLD`]): sent to the copy again [`SPLIT_CHECK`]
    /// later. `None`: serve or refuse it now.
    fn split_hold<M, T>(
        &self,
        ctx: &Context<Self>,
        msg: M,
    ) -> Option<futures::future::LocalBoxFuture<'static, Result<T, DataError>>>
    where
        M: Message<Result = Result<T, DataError>> + Send + 'static,
        T: Send + 'static,
        Self: Handler<M>,
    {
        let Role::Splitting(since) = self.role else {
            return None;
        };
        if since.elapsed() >= SPLIT_HOLD || self.failed.is_some() {
            return None;
        }
        let me = ctx.address();
        Some(Box::pin(async move {
            // (Held again there while the copy waits, at most SPLIT_HOLD.)
            tokio::time::sleep(SPLIT_CHECK).await;
            me.send(msg).await.unwrap_or_else(|_| {
                Err(DataError::unavailable(
                    "the shard copy stopped before it could serve the request; retry",
                ))
            })
        }))
    }

    /// The primary of a shard that was split logs the split marker of each
    /// child its copy has not applied yet, once per epoch (module docs,
    /// "Splits"). Logged before any write of the epoch can be: every entry
    /// after it is for the keys the shard kept.
    fn log_split_markers(&mut self, ctx: &mut Context<Self>) {
        let epoch = self.copy.replicas.epoch;
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        let mut effects = Vec::new();
        for c in &self.copy.children {
            let child = &c.index;
            if c.epoch > epoch || self.markers.contains(&(epoch, *child)) {
                continue;
            }
            match self.env.store.split_done(self.id, *child, c.born) {
                Ok(false) => {}
                Ok(true) => continue,
                Err(e) => {
                    warn!(shard = %self.key, child, error = %e, "cannot read whether the split was applied; logging its marker");
                }
            }
            let cmd = Command {
                id: SPLIT_MARKER_ID,
                at_ms: wall_ms(),
                op: tstore_core::data::ops::Op::Split {
                    child: *child,
                    range: c.range.clone(),
                    born: c.born,
                },
            };
            let bytes = postcard::to_stdvec(&cmd).expect("encodable");
            match p.propose(bytes, now_ms()) {
                Ok((seq, fx)) => {
                    info!(shard = %self.key, child, seq, epoch, "logged the split marker");
                    self.markers.insert((epoch, *child));
                    effects.extend(fx);
                }
                Err(e) => {
                    // Waiting out the old lease (or no lease): the next
                    // tick tries again.
                    debug!(shard = %self.key, child, error = %e, "split marker not logged yet");
                }
            }
        }
        self.markers.retain(|(e, _)| *e == epoch);
        if !effects.is_empty() {
            self.run(effects, ctx);
        }
    }

    /// Builds the state machine for the copy's role from what this node
    /// holds of the shard; `from` is the role held until now (`None` at
    /// start), and `reconfigure::rejoin` says what is kept: members go on
    /// from their durable state, a copy becoming a learner keeps its
    /// applied rows and follows the primary from them. Returns the effects
    /// to run, or `None` when the copy must be built from a snapshot.
    fn take_role(
        &mut self,
        from: Option<LocalRole>,
        led_before: bool,
        old_primary: Option<NodeId>,
    ) -> Option<Vec<Effect>> {
        // Unreadable: nothing to keep (a member then fails in `configure`).
        let meta = self
            .env
            .store
            .meta(self.id)
            .inspect_err(|e| warn!(shard = %self.key, error = %e, "cannot read what this node holds of the shard"))
            .ok();
        // What this node holds at the shard's index may have been built
        // for another shard once there (one merged away since, the index
        // reused by a split): none of it is this shard's.
        // (A mark that cannot be read is no proof: reading the shard's
        // state fails on its own below.)
        let birth = self
            .env
            .store
            .birth(self.id)
            .unwrap_or(Some(self.copy.born));
        let birth = birth.flatten();
        let foreign = meta.as_ref().is_some_and(|m| m.applied > 0) && birth != self.copy.born;
        if foreign {
            warn!(shard = %self.key, held = ?birth, wanted = ?self.copy.born, "the copy held here was built for another shard at this index; not keeping it");
            if self.copy.role == LocalRole::Primary {
                self.fail(
                    "the copy held here was built for another shard once at this index".into(),
                );
                return Some(vec![]);
            }
            return None;
        }
        match rejoin(from, self.copy.role, meta.as_ref().map_or(0, |m| m.applied)) {
            Rejoin::Keep => Some(self.configure(led_before, old_primary)),
            Rejoin::Afresh => None,
            Rejoin::FromApplied => {
                let meta = meta.expect("something applied was read");
                // The unapplied log goes, and what was about to be written.
                self.to_persist.clear();
                self.pending_truncate = None;
                let epoch = self.copy.replicas.epoch;
                if let Err(e) = self.env.store.reconcile(self.id, meta.applied, epoch) {
                    warn!(shard = %self.key, error = %e, "cannot drop the unapplied log; copying a snapshot");
                    return None;
                }
                info!(shard = %self.key, epoch, applied = meta.applied, dropped = meta.logged.saturating_sub(meta.applied), "rejoining as a learner with the rows held here; catching up from the primary's log");
                self.env.recovery.rejoined();
                Some(self.configure(false, None))
            }
        }
    }

    /// Builds the state machine for the current configuration from what is
    /// durable here. `led_before`: this copy was the primary of the previous
    /// epoch (no other lease to wait out).
    fn configure(&mut self, led_before: bool, old_primary: Option<NodeId>) -> Vec<Effect> {
        self.keep_contact();
        let epoch = self.copy.replicas.epoch;
        let built = (|| -> Result<(Role, Vec<Effect>), crate::data::store::StoreError> {
            let meta = self.env.store.meta(self.id)?;
            let tail = self
                .env
                .store
                .log_range(self.id, meta.applied + 1, meta.logged)?;
            Ok(match self.copy.role {
                LocalRole::Primary => {
                    self.env.store.set_epoch(self.id, epoch)?;
                    // The previous primary's lease may still run.
                    let not_before = takeover_not_before(
                        epoch,
                        led_before,
                        self.primary_contact,
                        &self.env.lease,
                    );
                    let mut p = Primary::new(
                        epoch,
                        &self.copy.replicas.backups,
                        &self.copy.replicas.learners,
                        meta.applied,
                        tail,
                        self.env.lease,
                        not_before,
                    );
                    p = p.with_min_copies(self.copy.min_copies);
                    p = p.with_retention(self.env.retention, meta.log_start);
                    if let Some(old) = old_primary {
                        p = p.with_handover_from(old);
                    }
                    if let Role::Primary(previous) = &self.role {
                        p = p.carry_lease_from(previous);
                    }
                    (Role::Primary(p), vec![])
                }
                LocalRole::Backup | LocalRole::Learner => {
                    // Our log was written in an older epoch: reconcile it
                    // with the new primary before taking anything.
                    let reconcile = (meta.epoch < epoch)
                        .then(|| tail.iter().map(|e| (e.seq, e.epoch)).collect());
                    let b = Backup::new(
                        epoch,
                        self.copy.replicas.primary.clone(),
                        meta.logged,
                        meta.applied,
                        reconcile,
                        self.env.lease,
                    )
                    .with_retention(self.env.retention, meta.log_start)
                    .carry_contact(self.primary_contact);
                    let hello = b.hello().into_iter().collect();
                    (Role::Backup(b), hello)
                }
            })
        })();
        match built {
            Ok((role, effects)) => {
                self.role = role;
                effects
            }
            Err(e) if e.is_corrupt() && self.copy.role != LocalRole::Primary => {
                // Rebuilt by the caller (`after_configure`) or at start.
                self.note_corrupt(&e, "reading the log at configuration");
                self.role = Role::Installing;
                self.rebuild_due = true;
                vec![]
            }
            Err(e) => {
                self.fail(format!("cannot read shard state: {e}"));
                vec![]
            }
        }
    }

    /// After `configure`: starts the rebuild it found due, if any.
    fn after_configure(&mut self, ctx: &mut Context<Self>) {
        if std::mem::take(&mut self.rebuild_due) {
            self.copy_afresh(ctx);
        }
    }

    /// Records corrupt data found in this copy (see the module notes) and
    /// the floor of the snapshot that will replace it.
    fn note_corrupt(&mut self, e: &StoreError, found_by: &str) {
        let why = e.to_string();
        warn!(shard = %self.key, role = %self.copy.role, found_by, error = %why, "corrupt data in this shard copy; not serving it");
        let logged = match &self.role {
            Role::Backup(b) => b.logged(),
            _ => 0,
        };
        let logged = logged.max(self.env.store.meta(self.id).map(|m| m.logged).unwrap_or(0));
        self.snapshot_floor = (self.copy.replicas.epoch, logged);
        self.corrupt = Some(why);
    }

    /// Corrupt data met in this copy: a backup or learner is rebuilt from
    /// a snapshot of the primary; a primary stops serving (`fail`).
    fn corrupted(&mut self, e: &StoreError, found_by: &str, ctx: &mut Context<Self>) {
        if self.failed_corrupt() || matches!(self.role, Role::Installing) {
            // Already stopped, or being replaced by a snapshot (which
            // drops everything held here first).
            return;
        }
        self.note_corrupt(e, found_by);
        if self.copy.role == LocalRole::Primary {
            self.fail(format!("corrupt: {e}"));
            return;
        }
        warn!(shard = %self.key, role = %self.copy.role, "discarding the corrupt copy; copying a snapshot from the primary");
        self.copy_afresh(ctx);
    }

    /// Whether this copy stopped because its data is corrupt.
    fn failed_corrupt(&self) -> bool {
        self.failed
            .as_deref()
            .is_some_and(|f| f.starts_with("corrupt"))
    }

    /// Before the backup state machine is replaced: remember its last word
    /// from a primary (see `primary_contact`).
    fn keep_contact(&mut self) {
        if let Role::Backup(b) = &self.role {
            self.primary_contact = b.primary_contact();
        }
    }

    /// A learner's first step: replace whatever this node held of the shard
    /// with a snapshot streamed from the primary (throttled there), then
    /// follow the log.
    fn install(&mut self, ctx: &mut Context<Self>) {
        let primary = self.copy.replicas.primary.clone();
        let epoch = self.copy.replicas.epoch;
        info!(shard = %self.key, %primary, epoch, "copying a snapshot from the primary");
        let started = Instant::now();
        let progress = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        self.copied = progress.clone();
        let (floor_epoch, floor) = self.snapshot_floor;
        let fetch = snapshot::fetch(Fetch {
            link: self.env.link.clone(),
            primary,
            key: self.key.clone(),
            store: self.env.store.clone(),
            id: self.id,
            epoch,
            // A copy of a merged shard starts at the merge at least: a
            // snapshot of a primary that has not merged yet is waited out.
            min_applied: (if floor_epoch == epoch { floor } else { 0 })
                .max(self.copy.merged.as_ref().map_or(0, |m| m.log_from())),
            progress,
        });
        ctx.spawn(fetch.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Installed {
                applied,
                rows,
                bytes,
            }) => {
                act.env.recovery.installed(bytes);
                info!(shard = %act.key, applied, rows, bytes, ms = started.elapsed().as_millis() as u64, "snapshot installed; following the log");
                if let Some(m) = act.copy.merged.as_ref().filter(|m| applied < m.log_from()) {
                    // Fetched before this copy heard of the merge: the
                    // merged shard's copy goes on from the merge.
                    info!(shard = %act.key, applied, log_from = m.log_from(), "the snapshot is from before the merge; copying the merged shard's");
                    act.copy_afresh(ctx);
                    return;
                }
                if let Some(why) = act.corrupt.take() {
                    info!(shard = %act.key, corrupt = %why, "corrupt copy rebuilt from the primary's snapshot");
                }
                act.snapshot_floor = (0, 0);
                let fx = act.configure(false, None);
                act.run(fx, ctx);
                act.after_configure(ctx);
                act.publish(ctx);
            }
            Err(e) => {
                warn!(shard = %act.key, error = %e, "snapshot copy failed; retrying");
                ctx.run_later(SNAPSHOT_RETRY, |act, ctx| act.install(ctx));
            }
        }));
    }

    /// Discards this copy's log work in progress and copies the shard
    /// again from its primary's snapshot (a rejoining copy, or a learner
    /// behind the primary's retained log).
    fn copy_afresh(&mut self, ctx: &mut Context<Self>) {
        self.to_persist.clear();
        self.pending_apply = None;
        self.pending_truncate = None;
        self.keep_contact();
        self.role = Role::Installing;
        self.publish(ctx);
        self.install(ctx);
    }

    fn gossip_state(&self) -> CopyGossip {
        let mut state = CopyGossip::new(self.copy.role, self.copy.replicas.epoch);
        if self.failed.is_some() {
            // Serves nothing: the coordinator treats the copy as down.
            state.failed = true;
            return state;
        }
        match (&self.role, self.copy.role) {
            (Role::Primary(p), LocalRole::Primary) => state.silent = p.silent_backups(now_ms()),
            (Role::Backup(b), LocalRole::Learner) if b.caught_up() => state.ready = true,
            (_, LocalRole::Learner) => state.copying = true,
            _ => {}
        }
        state
    }

    /// This node's id.
    fn copy_me(&self) -> String {
        self.env.membership.identity().node_id.clone()
    }

    fn fail(&mut self, why: String) {
        warn!(shard = %self.key, error = %why, "shard copy failed; refusing work");
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(DataError::unknown(format!(
                "shard {} failed before the write committed ({why}); its outcome is unknown",
                self.key
            ))));
        }
        self.failed = Some(why);
    }

    /// Reports the copy's state for gossip if it changed.
    fn publish(&mut self, _: &mut Context<Self>) {
        let state = self.gossip_state();
        if self.withdrawn || self.published.as_ref() == Some(&state) {
            return;
        }
        self.published = Some(state.clone());
        self.env.gossip.report(&self.key, self.ticket, state);
    }

    fn run(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        // Whatever woke the primary (a write, a read, a member's word)
        // went through here: it ticks again.
        self.keep_ticking(ctx);
        for e in effects {
            match e {
                Effect::Persist(entries) => {
                    self.to_persist.extend(entries);
                    self.schedule_flush(ctx);
                }
                Effect::Send { to, msg } => {
                    if let ReplMsg::Rebuild { log_start, .. } = &msg {
                        debug!(shard = %self.key, to, log_start, "learner behind the retained log: told to copy a snapshot again");
                    }
                    self.outbox.push((to, msg));
                    self.schedule_flush(ctx);
                }
                Effect::SendLog {
                    to,
                    from,
                    upto,
                    mut msg,
                } => {
                    match self.env.store.log_range(self.id, from, upto) {
                        Ok(found) => {
                            self.env.recovery.log_sent(found.len() as u64);
                            // Never a gap: without its first entry, the
                            // message goes as a heartbeat.
                            let whole = from > upto || found.first().map(|e| e.seq) == Some(from);
                            if !whole {
                                warn!(shard = %self.key, to, from, upto, "log entries a copy needs are not here; sending none");
                            }
                            if let ReplMsg::Prepare { entries, .. } = &mut msg {
                                *entries = if whole { found } else { vec![] };
                            }
                        }
                        Err(e) if e.is_corrupt() => {
                            self.corrupted(&e, "sending the log", ctx);
                            return;
                        }
                        Err(e) => {
                            self.fail(format!("log read failed: {e}"));
                            return;
                        }
                    }
                    self.run(vec![Effect::Send { to, msg }], ctx);
                }
                Effect::Reconciled { keep, epoch } => {
                    if let Err(e) = self.env.store.reconcile(self.id, keep, epoch) {
                        self.fail(format!("log reconciliation failed: {e}"));
                        return;
                    }
                    debug!(shard = %self.key, keep, epoch, "log reconciled with the primary");
                }
                Effect::Commit { upto } => {
                    self.pending_apply = Some(self.pending_apply.unwrap_or(0).max(upto));
                    self.schedule_flush(ctx);
                }
                Effect::FetchMap { seen } => {
                    debug!(shard = %self.key, seen, mine = self.copy.replicas.epoch, "newer epoch seen; waiting for the map")
                }
                Effect::Truncate { below, limit } => {
                    let (b, l) = self.pending_truncate.unwrap_or((below, limit));
                    self.pending_truncate = Some((b.max(below), l.max(limit)));
                    self.schedule_flush(ctx);
                }
                Effect::Rebuild { log_start } => {
                    if self.copy.role != LocalRole::Learner {
                        warn!(shard = %self.key, role = %self.copy.role, log_start, "told to copy a snapshot again, but this copy counts for commits; keeping it");
                        continue;
                    }
                    let logged = self.env.store.meta(self.id).map(|m| m.logged).unwrap_or(0);
                    warn!(shard = %self.key, logged, log_start, "learner is behind the primary's retained log (it starts at {log_start}); discarding this copy and copying a snapshot again");
                    self.copy_afresh(ctx);
                    return;
                }
            }
        }
    }

    /// Everything proposed, received or committed before the next turn of
    /// the actor goes into one group commit.
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            // After the messages already queued (so a turn's writes leave
            // together), and without a timer: `run_later(ZERO)` waits for
            // the runtime's next timer tick, up to a millisecond, and a
            // write passes here four times (docs/engineering-notes.md).
            ctx.spawn(actix::fut::ready(()).map(|(), act: &mut Self, ctx| act.flush(ctx)));
        }
    }

    fn take_work(&mut self) -> Option<Work> {
        if self.failed.is_some()
            || (self.to_persist.is_empty()
                && self.pending_apply.is_none()
                && self.pending_truncate.is_none())
        {
            return None;
        }
        let max_bytes = self.env.retention.bytes;
        Some(Work {
            id: self.id,
            entries: std::mem::take(&mut self.to_persist),
            apply: self
                .pending_apply
                .take()
                .map(|upto| (upto, self.copy.key_column.clone())),
            truncate: self.pending_truncate.take().map(|(below, limit)| Truncate {
                below,
                limit,
                max_bytes,
            }),
        })
    }

    /// Hands the pending log entries and applies to the node's committer
    /// and pauses this copy's mailbox until they are durable; the actor
    /// thread serves the other copies meanwhile, whose work joins the same
    /// transaction.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        self.send_outbox();
        let Some(work) = self.take_work() else {
            return;
        };
        let done = self.env.committer.submit(work);
        ctx.wait(
            done.into_actor(self)
                .map(|res, act, ctx| act.flushed(res, ctx)),
        );
    }

    /// Sends this turn's replication messages, merged (a turn's Prepares
    /// to one backup leave as one).
    fn send_outbox(&mut self) {
        for (to, msg) in outbox::merge(std::mem::take(&mut self.outbox)) {
            let m = PeerMessage::Repl {
                shard: self.key.clone(),
                msg,
            };
            if let Err(e) = self.env.link.send_oneway(&to, m) {
                debug!(shard = %self.key, to, error = %e, "replication message not sent");
            }
        }
    }

    /// The same, done here and now: before a reconfiguration reads the
    /// store to build the next state machine.
    fn flush_now(&mut self, ctx: &mut Context<Self>) {
        self.send_outbox();
        // Bounded: a flush can add one more (an apply the persist unlocked).
        for _ in 0..4 {
            let Some(work) = self.take_work() else {
                return;
            };
            let res = self
                .env
                .store
                .commit_batch(std::slice::from_ref(&work))
                .pop()
                .expect("one result per piece of work");
            self.flushed(res, ctx);
        }
    }

    fn flushed(&mut self, res: Result<Done, StoreError>, ctx: &mut Context<Self>) {
        match res {
            Ok(done) => {
                if let Some(&(upto, _)) = done.applied.last() {
                    let effects = match &mut self.role {
                        Role::Primary(p) => p.on_applied(upto),
                        Role::Backup(b) => b.on_applied(upto),
                        Role::Installing | Role::Splitting(_) => vec![],
                    };
                    self.run(effects, ctx);
                }
                for (seq, res) in done.applied {
                    if let Some(reply) = self.waiting.remove(&seq) {
                        let _ = reply.send(res.map_err(DataError::from));
                    }
                }
                // Reads waiting for the rows: check them again.
                self.wake_parked_reads();
                if let Some(logged) = done.logged {
                    let effects = match &mut self.role {
                        Role::Primary(p) => p.on_persisted(logged),
                        Role::Backup(b) => b.on_persisted(logged),
                        Role::Installing | Role::Splitting(_) => vec![],
                    };
                    self.run(effects, ctx);
                }
            }
            Err(e) if e.is_corrupt() => self.corrupted(&e, "applying the log", ctx),
            Err(e) => self.fail(format!("log write failed: {e}")),
        }
    }

    fn unavailable(&self) -> Option<String> {
        self.failed
            .as_ref()
            .map(|why| format!("shard {} unavailable: {why}", self.key))
    }
}

impl Actor for CopyActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        info!(shard = %self.key, role = %self.copy.role, epoch = self.copy.replicas.epoch, "shard copy started");
        self.publish(ctx);
        self.rebuild_due = false; // an installing copy copies anyway
        if self.failed.is_some() {
            // (A primary that could not be configured or merged: it never
            // copies from itself; the coordinator replaces it.)
            self.keep_ticking(ctx);
            return;
        }
        match &self.role {
            Role::Installing => self.install(ctx),
            Role::Splitting(_) => return self.wait_for_split(ctx),
            Role::Backup(b) => {
                let hello = b.hello().into_iter().collect();
                self.run(hello, ctx);
            }
            Role::Primary(_) => self.log_split_markers(ctx),
        }
        self.keep_ticking(ctx);
    }
}

impl CopyActor {
    /// Schedules the next tick, every replication heartbeat, while the copy
    /// has something to do on time: a primary that is not quiet, or a
    /// failed copy (to say so). A backup, or a quiet primary, has no timer
    /// at all: an idle shard costs nothing (`tstore_core::replication`,
    /// "Quiescence"); a write, a read or a member's message wakes it.
    fn keep_ticking(&mut self, ctx: &mut Context<Self>) {
        let due = self.failed.is_some() || matches!(&self.role, Role::Primary(p) if !p.is_quiet());
        if self.ticking || !due {
            return;
        }
        self.ticking = true;
        ctx.run_later(
            Duration::from_millis(self.env.lease.heartbeat),
            |act, ctx| {
                act.ticking = false;
                act.tick(ctx);
                act.keep_ticking(ctx);
            },
        );
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.failed.is_some() {
            // A failed copy says so (and a failed primary stops
            // heartbeating): the coordinator replaces it.
            self.publish(ctx);
            return;
        }
        if !self.copy.children.is_empty() {
            self.log_split_markers(ctx);
        }
        if let Role::Primary(p) = &mut self.role {
            let effects = p.on_tick(now_ms());
            self.run(effects, ctx);
            // Backups going silent (or answering again) show in gossip.
            self.publish(ctx);
        }
    }
}

impl Handler<Reconfigure> for CopyActor {
    type Result = ();

    fn handle(&mut self, Reconfigure(copy): Reconfigure, ctx: &mut Context<Self>) {
        if copy.role != self.copy.role {
            info!(shard = %self.key, epoch = copy.replicas.epoch, from = %self.copy.role, to = %copy.role, "role changed");
        }
        let led_before = matches!(self.role, Role::Primary(_));
        let old_primary = Some(self.copy.replicas.primary.clone()).filter(|p| *p != self.copy_me());
        // A primary that stays primary keeps its waiting writes: they are
        // in its log and commit in the new epoch under the same seq.
        if !(led_before && copy.role == LocalRole::Primary) {
            for (_, reply) in self.waiting.drain() {
                let _ = reply.send(Err(DataError::unknown(format!(
                    "shard {} was reconfigured (epoch {}) before the write committed; its outcome is unknown",
                    self.key, copy.replicas.epoch
                ))));
            }
        }
        let from = self.copy.role;
        self.copy = copy;
        if self.failed_corrupt() && self.copy.role != LocalRole::Primary {
            // A corrupt primary moved away: rebuilt like a corrupt backup.
            self.failed = None;
            self.copy_afresh(ctx);
            return;
        }
        if matches!(self.role, Role::Installing) {
            self.publish(ctx);
            return; // the snapshot being copied stays valid
        }
        if matches!(self.role, Role::Splitting(_)) {
            if self.copy.role == LocalRole::Learner {
                self.copy_afresh(ctx);
            }
            return; // built by the parent's copy, then configured
        }
        self.flush_now(ctx);
        if !self.merge_locally() {
            if matches!(self.role, Role::Installing) {
                self.copy_afresh(ctx);
            } else {
                self.publish(ctx);
                self.keep_ticking(ctx);
            }
            return;
        }
        match self.take_role(Some(from), led_before, old_primary) {
            Some(effects) => {
                // A new primary (effects or not) ticks from now.
                self.run(effects, ctx);
                self.after_configure(ctx);
                self.log_split_markers(ctx);
                self.publish(ctx);
            }
            None => self.copy_afresh(ctx),
        }
    }
}

impl Handler<StopCopy> for CopyActor {
    type Result = ();

    fn handle(&mut self, stop: StopCopy, ctx: &mut Context<Self>) {
        info!(shard = %self.key, drop_data = stop.drop_data, "shard copy stopped");
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(DataError::unknown(format!(
                "shard {} moved away from this node before the write committed; its outcome is unknown",
                self.key
            ))));
        }
        if stop.drop_data {
            if let Err(e) = self.env.store.drop_shard(self.id) {
                warn!(shard = %self.key, error = %e, "could not delete the shard's data");
            }
        }
        self.withdrawn = true;
        self.env.gossip.withdraw(&self.key, self.ticket);
        ctx.stop();
    }
}

impl Handler<Replicate> for CopyActor {
    type Result = ();

    fn handle(&mut self, Replicate { from, msg }: Replicate, ctx: &mut Context<Self>) {
        if self.failed.is_some() {
            return;
        }
        let effects = match &mut self.role {
            Role::Primary(p) => p.on_message(&from, msg, now_ms()),
            Role::Backup(b) => b.on_message(&from, msg, now_ms()),
            Role::Installing | Role::Splitting(_) => return,
        };
        self.run(effects, ctx);
        // Reads held for a lease (a quiet primary woken): check them again
        // once the answers renewed it.
        if !self.parked_reads.is_empty()
            && matches!(&self.role, Role::Primary(p) if p.lease_valid(now_ms()))
        {
            self.wake_parked_reads();
        }
        if self.copy.role == LocalRole::Learner {
            self.publish(ctx);
        }
    }
}

impl Handler<Write> for CopyActor {
    type Result = ResponseFuture<Result<OpResult, DataError>>;

    fn handle(&mut self, Write { id, op }: Write, ctx: &mut Context<Self>) -> Self::Result {
        self.ops += 1;
        if let Some(e) = self.unavailable() {
            return Box::pin(async move { Err(DataError::unavailable(e)) });
        }
        if let Err(e) = self.owns_op(&op) {
            return Box::pin(async move { Err(e) });
        }
        if self.copy.sealed {
            // Nothing was proposed: the client's retry is taken once, by
            // the merged shard.
            let msg = format!(
                "shard {} is sealed for a merge and takes no writes until it is done (about a second); retry",
                self.key
            );
            return Box::pin(async move { Err(DataError::unavailable(msg)) });
        }
        if let Some(held) = self.split_hold(ctx, Write { id, op: op.clone() }) {
            self.ops = self.ops.saturating_sub(1); // counted when it comes back
            return held;
        }
        let Role::Primary(p) = &mut self.role else {
            let primary = self.copy.replicas.primary.clone();
            let key = self.key.clone();
            return Box::pin(async move {
                Err(DataError::unavailable(format!(
                    "shard {key} is not led here (primary is {primary}); retry"
                )))
            });
        };
        // The primary's wall clock stamps the entry: client sessions expire
        // by the shard time these stamps make (see `data::sessions`).
        let cmd = Command {
            id,
            at_ms: wall_ms(),
            op,
        };
        let bytes = postcard::to_stdvec(&cmd).expect("encodable");
        match p.propose(bytes, now_ms()) {
            Ok((seq, effects)) => {
                let (tx, rx) = oneshot::channel();
                self.waiting.insert(seq, tx);
                self.run(effects, ctx);
                Box::pin(async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(DataError::unknown(
                            "the shard copy stopped before the write committed; its outcome is unknown",
                        ))
                    })
                })
            }
            Err(ProposeError::NotYet { wait_ms, .. }) => {
                // A new primary waiting out the old lease (at most the
                // grace period): hold the write and take it then, rather
                // than send the client away to retry after a backoff.
                // Nothing was proposed, so taking it later is taking it once.
                debug!(shard = %self.key, wait_ms, "holding a write until the old primary's lease is over");
                let me = ctx.address();
                let Command { id, op, .. } = cmd;
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    me.send(Write { id, op }).await.unwrap_or_else(|_| {
                        Err(DataError::unavailable(
                            "the shard copy stopped before it could take the write; retry",
                        ))
                    })
                })
            }
            Err(e) => {
                let msg = format!("shard {} unavailable: {e}", self.key);
                Box::pin(async move { Err(DataError::unavailable(msg)) })
            }
        }
    }
}

impl CopyActor {
    /// A request for a key this shard gave away in a split: the client
    /// routed by a map from before it. Refused as stale, so that it
    /// refreshes its map and goes to the shard that owns the key now.
    fn gave_away(&self, key: &RowKey) -> DataError {
        DataError::new(
            ErrorKind::Stale,
            format!(
                "shard {} does not hold key {key}: it holds {} (split at epoch {}); refresh the map",
                self.key, self.copy.range, self.copy.range_epoch()
            ),
        )
    }

    /// Whether every key `op` writes is this shard's.
    fn owns_op(&self, op: &tstore_core::data::ops::Op) -> Result<(), DataError> {
        use tstore_core::data::ops::Op;
        match op {
            Op::Batch(ops) => ops.iter().try_for_each(|o| self.owns_op(o)),
            Op::Split { .. } => Err(DataError::invalid("a split marker is not a client's write")),
            other => match other.key() {
                Some(k) if !self.copy.range.contains(k) => Err(self.gave_away(k)),
                _ => Ok(()),
            },
        }
    }

    /// Whether this copy may serve a read in `mode` now: its state machine
    /// decides (`read_permit`: the primary under its lease, a backup in
    /// sync with its primary, rows holding what the read needs). `needs`:
    /// see [`Read::needs`].
    fn check_read_upto(&self, mode: ReadMode, needs: Option<Seq>) -> Result<(), DataError> {
        if let Some(e) = self.unavailable() {
            return Err(DataError::unavailable(e));
        }
        if let Role::Splitting(_) = self.role {
            return Err(DataError::unavailable(format!(
                "shard {} is being split off its parent; retry",
                self.key
            )));
        }
        let permit = match (&self.role, needs) {
            (Role::Installing | Role::Splitting(_), _) => Err(ReadRefusal::Copying),
            (Role::Primary(p), Some(n)) => p.read_permit_upto(mode, now_ms(), n),
            (Role::Primary(p), None) => p.read_permit(mode, now_ms()),
            (Role::Backup(b), _) => {
                let heard = self.env.hearing.last(&self.copy.replicas.primary);
                b.read_permit_heard(mode, now_ms(), heard)
            }
        };
        permit.map_err(|why| DataError::unavailable(format!("shard {} {why}", self.key)))
    }

    /// A read the primary will serve once its rows hold what was committed
    /// when it arrived (the apply is already under way): it waits for the
    /// next apply and is checked again, rather than sending the client
    /// away to retry after a backoff. So does a read just arrived at a
    /// primary without a lease that may have one soon: a quiet primary,
    /// which the read wakes (its backups' answers renew the lease, one
    /// round trip), or one woken less than a lease ago
    /// (`Primary::lease_coming`); it waits at most a lease. Returns the
    /// wake-up and what the rows must hold; `None`: serve or refuse now.
    fn park_read(
        &mut self,
        mode: ReadMode,
        needs: Option<Seq>,
        ctx: &mut Context<Self>,
    ) -> Option<(oneshot::Receiver<()>, Seq)> {
        if self.unavailable().is_some() || self.parked_reads.len() >= MAX_PARKED_READS {
            return None;
        }
        let Role::Primary(p) = &mut self.role else {
            return None;
        };
        let now = now_ms();
        let upto = needs.unwrap_or(p.committed());
        let (wake, hold) = match p.read_permit_upto(mode, now, upto) {
            Err(ReadRefusal::Applying { .. }) => (vec![], true),
            // Held once, when it arrives.
            Err(ReadRefusal::NoLease { .. }) if needs.is_none() => {
                let wake = p.wake(now);
                (wake, p.lease_coming(now))
            }
            _ => return None,
        };
        self.run(wake, ctx);
        if !hold {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.parked_reads.push(tx);
        Some((rx, upto))
    }

    /// Wakes every held read (`park_read`) to be checked again: after an
    /// apply, or once the lease a quiet primary woke up for is back.
    fn wake_parked_reads(&mut self) {
        for wake in self.parked_reads.drain(..) {
            let _ = wake.send(());
        }
    }

    /// A read (point or scan) refused now, held if `park_read` says so:
    /// the answer to `again(needs)`, sent to this copy once woken (at most
    /// a lease later). `None`: answer now. Only a refused read is held: a
    /// permitted one is checked once.
    fn hold<M, T>(
        &mut self,
        mode: ReadMode,
        needs: Option<Seq>,
        ctx: &mut Context<Self>,
        again: impl FnOnce(Seq) -> M + 'static,
    ) -> Option<Response<Result<T, DataError>>>
    where
        M: Message<Result = Result<T, DataError>> + Send + 'static,
        T: Send + 'static,
        Self: Handler<M>,
    {
        let (woken, needs) = self.park_read(mode, needs, ctx)?;
        let me = ctx.address();
        let most = Duration::from_millis(self.env.lease.lease);
        Some(Response::fut(async move {
            // Woken, timed out, or dropped with the copy: checked again.
            let _ = tokio::time::timeout(most, woken).await;
            me.send(again(needs)).await.unwrap_or_else(|_| {
                Err(DataError::unavailable(
                    "the shard copy stopped before it could serve the read; retry",
                ))
            })
        }))
    }

    /// The answer to a read that failed; corrupt data is reported and the
    /// copy rebuilt or stopped (`corrupted`), never served.
    fn read_failed(&mut self, what: &str, e: StoreError, ctx: &mut Context<Self>) -> DataError {
        if e.is_corrupt() {
            self.corrupted(&e, what, ctx);
            return DataError::unavailable(format!(
                "shard {} {what} failed: this copy is corrupt ({e}); it is not served and is being repaired, read from another copy",
                self.key
            ));
        }
        DataError::unavailable(format!("shard {} {what} failed: {e}", self.key))
    }
}

impl Handler<Read> for CopyActor {
    type Result = Response<Result<Option<RowRecord>, DataError>>;

    fn handle(&mut self, read: Read, ctx: &mut Context<Self>) -> Self::Result {
        if read.needs.is_none() {
            self.ops += 1; // a held read counts once
        }
        if !self.copy.range.contains(&read.key) {
            return Response::reply(Err(self.gave_away(&read.key)));
        }
        if let Some(held) = self.split_hold(ctx, read.clone()) {
            self.ops = self.ops.saturating_sub(1); // counted when it comes back
            return Response::fut(held);
        }
        let permit = self.check_read_upto(read.mode, read.needs);
        if permit.is_err() {
            let (mode, needs, held) = (read.mode, read.needs, read.clone());
            let again = move |needs| Read {
                needs: Some(needs),
                ..held
            };
            if let Some(held) = self.hold(mode, needs, ctx, again) {
                return held;
            }
        }
        let key = read.key;
        Response::reply(permit.and_then(|()| {
            let found = self
                .env
                .store
                .get(self.id, &key)
                .map_err(|e| self.read_failed("read", e, ctx))?;
            match found {
                None => self.not_merged_away().map(|()| None),
                found => Ok(found),
            }
        }))
    }
}

impl CopyActor {
    /// Refused if this copy's rows went to the shard it was merged into
    /// (a read queued here when the kept shard's copy merged: this copy
    /// stops right after). Checked after reading: rows read before the
    /// merge were this shard's.
    fn not_merged_away(&self) -> Result<(), DataError> {
        match self.env.store.merged_away(self.id) {
            Ok(false) => Ok(()),
            Ok(true) => Err(DataError::new(
                ErrorKind::Stale,
                format!(
                    "shard {} was merged into another; refresh the map",
                    self.key
                ),
            )),
            Err(e) => Err(DataError::unavailable(format!(
                "shard {}: {e}; retry",
                self.key
            ))),
        }
    }
}

impl Handler<ScanShard> for CopyActor {
    type Result = Response<Result<Vec<(RowKey, RowRecord)>, DataError>>;

    fn handle(&mut self, s: ScanShard, ctx: &mut Context<Self>) -> Self::Result {
        if s.needs.is_none() {
            self.ops += 1;
        }
        if s.epoch > self.copy.replicas.epoch {
            // The node has the map the scan was planned by, this copy not
            // yet (it is reconfigured right after): its range may still be
            // the one from before a split.
            return Response::reply(Err(DataError::unavailable(format!(
                "shard {} is not at epoch {} yet (it is at {}); retry",
                self.key, s.epoch, self.copy.replicas.epoch
            ))));
        }
        if s.epoch < self.copy.range_epoch() {
            return Response::reply(Err(DataError::new(
                ErrorKind::Stale,
                format!(
                    "shard {} was split at epoch {} and holds {} now; the scan was planned at epoch {}: refresh the map",
                    self.key, self.copy.range_epoch(), self.copy.range, s.epoch
                ),
            )));
        }
        if let Some(held) = self.split_hold(ctx, s.clone()) {
            self.ops = self.ops.saturating_sub(1); // counted when it comes back
            return Response::fut(held);
        }
        let permit = self.check_read_upto(s.mode, s.needs);
        if let Err(e) = permit {
            let (mode, needs, held) = (s.mode, s.needs, s.clone());
            let again = move |needs| ScanShard {
                needs: Some(needs),
                ..held
            };
            return self
                .hold(mode, needs, ctx, again)
                .unwrap_or_else(|| Response::reply(Err(e)));
        }
        // Only the shard's own keys: a copy that has not applied the split
        // marker yet still holds the keys it gave away.
        // (A shard never split holds only its own keys.)
        let (range, split) = (&self.copy.range, self.copy.range_epoch() > 0);
        let res = self
            .env
            .store
            .scan_within(self.id, s.from.as_ref(), s.to.as_ref(), s.limit, &|k| {
                !split || range.contains(k)
            })
            .map_err(|e| self.read_failed("scan", e, ctx))
            .and_then(|rows| self.not_merged_away().map(|()| rows));
        debug!(shard = %self.key, role = %self.copy.role, mode = ?s.mode, from = ?s.from, to = ?s.to, limit = s.limit, rows = ?res.as_ref().map(|r| r.len()), "scan");
        Response::reply(res)
    }
}

impl Handler<LoadReport> for CopyActor {
    type Result = ResponseFuture<Option<ShardStats>>;

    fn handle(&mut self, r: LoadReport, _: &mut Context<Self>) -> Self::Result {
        if !matches!(self.role, Role::Primary(_)) || self.failed.is_some() {
            return Box::pin(async { None });
        }
        let (since, before) = std::mem::replace(&mut self.ops_mark, (Instant::now(), self.ops));
        let secs = since.elapsed().as_secs_f64().max(0.001);
        let ops_per_sec = ((self.ops - before) as f64 / secs).round() as u64;
        let Ok(meta) = self.env.store.meta(self.id) else {
            return Box::pin(async { None });
        };
        let size_bytes = meta.row_bytes;
        let over = (r.split_size_bytes > 0 && size_bytes > r.split_size_bytes)
            || (r.split_load_ops > 0 && ops_per_sec > r.split_load_ops);
        let needs_median = over && matches!(self.copy.range, KeyRange::Range { .. });
        let (store, id, key) = (self.env.store.clone(), self.id, self.key.clone());
        Box::pin(async move {
            // Two passes over the keys: off the copies' thread.
            let median = if needs_median {
                match tokio::task::spawn_blocking(move || store.middle_key(id)).await {
                    Ok(Ok(m)) => m.map(|(k, _)| k),
                    Ok(Err(e)) => {
                        warn!(shard = %key, error = %e, "cannot find the median key");
                        None
                    }
                    Err(_) => None,
                }
            } else {
                None
            };
            Some(ShardStats {
                size_bytes,
                ops_per_sec,
                median,
            })
        })
    }
}

impl Handler<MiddleKey> for CopyActor {
    type Result = ResponseFuture<Result<Option<(RowKey, RowRecord)>, DataError>>;

    fn handle(&mut self, _: MiddleKey, _: &mut Context<Self>) -> Self::Result {
        // A hint for where to split, not a read: any copy's rows serve.
        if let Some(e) = self.unavailable() {
            return Box::pin(async move { Err(DataError::unavailable(e)) });
        }
        if matches!(self.role, Role::Installing | Role::Splitting(_)) {
            let e =
                DataError::unavailable(format!("shard {} is being built here; retry", self.key));
            return Box::pin(async move { Err(e) });
        }
        let (store, id, key) = (self.env.store.clone(), self.id, self.key.clone());
        Box::pin(async move {
            // Two passes over the keys: off the copies' thread.
            tokio::task::spawn_blocking(move || store.middle_key(id))
                .await
                .map_err(|e| DataError::unavailable(e.to_string()))?
                .map_err(|e| {
                    DataError::unavailable(format!("shard {key}: finding the median key: {e}"))
                })
        })
    }
}

impl Handler<GetStatus> for CopyActor {
    type Result = MessageResult<GetStatus>;

    fn handle(
        &mut self,
        GetStatus { checksum }: GetStatus,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        // Counting rows is a scan: done only with the checksum. It checks
        // every stored value, so corruption found shows here at once.
        let verified = match (checksum, &self.role) {
            (false, _) | (_, Role::Installing | Role::Splitting(_)) => None,
            _ => match self.env.store.verify(self.id) {
                Ok(v) => Some(v),
                Err(e) => {
                    if e.is_corrupt() {
                        self.corrupted(&e, "a status checksum", ctx);
                    }
                    None
                }
            },
        };
        let meta = self.env.store.meta(self.id).unwrap_or_default();
        let state = match (&self.failed, &self.role) {
            (Some(why), _) => format!("failed: {why}"),
            (None, Role::Installing) if self.corrupt.is_some() => format!(
                "corrupt: {}; copying a snapshot from the primary: {} rows, {} bytes so far",
                self.corrupt.as_deref().unwrap_or_default(),
                self.copied.0.load(Ordering::Relaxed),
                self.copied.1.load(Ordering::Relaxed)
            ),
            (None, Role::Splitting(since)) => format!(
                "splitting: waiting {} ms for this node's copy of {}/{} to build it",
                since.elapsed().as_millis(),
                self.key.table,
                self.copy.split_from.unwrap_or_default()
            ),
            (None, Role::Installing) => format!(
                "copying: {} rows, {} bytes so far",
                self.copied.0.load(Ordering::Relaxed),
                self.copied.1.load(Ordering::Relaxed)
            ),
            (None, _) if self.copy.sealed => "sealed for a merge: refusing writes".into(),
            // A quiet primary let its lease go; the next read wakes it.
            (None, Role::Primary(p)) if !p.is_quiet() && !p.lease_valid(now_ms()) => {
                "no lease: refusing writes".into()
            }
            (None, _) => "serving".into(),
        };
        // Settled: logged and applied to one position with nothing in
        // flight (a primary: nothing proposed past it, in this epoch).
        let settled = meta.logged == meta.applied
            && match &self.role {
                Role::Primary(p) => {
                    p.epoch() == self.copy.replicas.epoch
                        && p.last_seq() == meta.applied
                        && p.committed() == meta.applied
                }
                Role::Backup(_) => self.copy.role == LocalRole::Backup,
                Role::Installing | Role::Splitting(_) => false,
            };
        let sealed_at =
            (self.copy.sealed && self.failed.is_none() && settled).then_some(meta.applied);
        MessageResult(CopyStatus {
            role: self.copy.role.to_string(),
            epoch: self.copy.replicas.epoch,
            logged: meta.logged,
            applied: meta.applied,
            state,
            checksum: verified.map(|v| v.checksum),
            log_entries: (meta.logged + 1).saturating_sub(meta.log_start),
            log_start: meta.log_start,
            log_bytes: meta.log_bytes,
            rows: verified.map(|v| v.rows),
            row_bytes: verified.map(|v| v.row_bytes),
            quiet: match &self.role {
                Role::Primary(p) => p.is_quiet(),
                Role::Backup(b) => b.is_quiet(),
                Role::Installing | Role::Splitting(_) => false,
            },
            sealed_at,
        })
    }
}

/// The copies a node holds, by shard (used by the NodeActor to route).
pub type Copies = BTreeMap<ShardKey, (LocalCopy, Addr<CopyActor>)>;
