//! The actor holding one shard copy on this node. Where the node is the
//! shard's primary it runs [`Primary`] (the DESIGN's ShardActor role): it
//! orders writes, logs them with group commit, replicates them, applies and
//! answers once every member has them. Where the node is a backup it runs
//! [`Backup`] (the ReplicaActor role): it logs what the primary sends, acks,
//! and applies what the primary committed. The replication decisions are the
//! pure state machines of `crate::replication`; this actor does the I/O.
//!
//! Each copy publishes itself in gossip (`shard:<table>/<index>` =
//! `<role> e<epoch>`) and withdraws when stopped.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use tstore_membership::Membership;
use tstore_transport::Endpoint;

use super::{LocalCopy, LocalRole, ShardKey};
use crate::cluster_map::SplitKey;
use crate::control::ControlPlane;
use crate::data::ops::{Op, OpResult, RowRecord};
use crate::data::store::{ShardId, ShardStore};
use crate::replication::{Backup, Effect, LeaseConfig, LogEntry, Millis, Primary, ReplMsg, Seq};
use crate::wire::PeerMessage;

/// The gossip key a copy is published under.
pub fn gossip_key(key: &ShardKey) -> String {
    format!("shard:{key}")
}

fn gossip_value(copy: &LocalCopy) -> String {
    format!("{} e{}", copy.role, copy.replicas.epoch)
}

/// Milliseconds since this process started (monotonic).
pub fn now_ms() -> Millis {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as Millis
}

/// What every copy on a node shares.
#[derive(Clone)]
pub struct CopyEnv {
    pub membership: Arc<Membership>,
    pub store: ShardStore,
    pub endpoint: Endpoint,
    pub control: ControlPlane,
    pub lease: LeaseConfig,
}

/// Replace the copy's configuration (new epoch, new members, new role).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub LocalCopy);

/// Stop holding the copy (its data stays until the table is dropped).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopCopy {
    /// The shard left the map for good (table dropped): delete its data.
    pub drop_data: bool,
}

/// A replication message from another member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Replicate {
    pub from: String,
    pub msg: ReplMsg,
}

/// A client write, to the primary.
#[derive(Message)]
#[rtype(result = "Result<OpResult, String>")]
pub struct Write(pub Op);

/// How a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadMode {
    /// From the primary, under a valid lease: linearizable.
    Strong,
    /// From any copy: may lag the primary by its commit lag.
    Replica,
}

/// A point read.
#[derive(Message)]
#[rtype(result = "Result<Option<RowRecord>, String>")]
pub struct Read {
    pub key: SplitKey,
    pub mode: ReadMode,
}

/// A range read within the shard.
#[derive(Message)]
#[rtype(result = "Result<Vec<(SplitKey, RowRecord)>, String>")]
pub struct ScanShard {
    pub from: Option<SplitKey>,
    pub to: Option<SplitKey>,
    pub limit: usize,
    pub mode: ReadMode,
}

enum Role {
    Primary(Primary),
    Backup(Backup),
}

type Reply = oneshot::Sender<Result<OpResult, String>>;

/// A copy of one shard on this node.
pub struct CopyActor {
    key: ShardKey,
    copy: LocalCopy,
    env: CopyEnv,
    id: ShardId,
    role: Role,
    /// Entries handed to the disk and not yet written (group commit).
    to_persist: Vec<LogEntry>,
    flush_scheduled: bool,
    /// Clients waiting for their entry to commit.
    waiting: HashMap<Seq, Reply>,
    /// A storage failure stopped this copy; it refuses work until restarted.
    failed: Option<String>,
}

impl CopyActor {
    pub fn new(key: ShardKey, copy: LocalCopy, env: CopyEnv) -> Self {
        let id = ShardId {
            table: copy.table_id,
            shard: key.index,
        };
        let mut actor = Self {
            key,
            id,
            role: Role::Backup(Backup::new(0, String::new(), 0, 0)),
            copy,
            env,
            to_persist: Vec::new(),
            flush_scheduled: false,
            waiting: HashMap::new(),
            failed: None,
        };
        actor.configure();
        actor
    }

    /// Builds the state machine for the current configuration from what is
    /// durable here.
    fn configure(&mut self) {
        let epoch = self.copy.replicas.epoch;
        let meta = match self
            .env
            .store
            .set_epoch(self.id, epoch)
            .and_then(|()| self.env.store.meta(self.id))
        {
            Ok(m) => m,
            Err(e) => {
                self.fail(format!("cannot read shard state: {e}"));
                return;
            }
        };
        self.role = match self.copy.role {
            LocalRole::Primary => {
                let inherited = self
                    .env
                    .store
                    .log_range(self.id, meta.applied + 1, meta.logged)
                    .unwrap_or_default();
                Role::Primary(Primary::new(
                    epoch,
                    &self.copy.replicas.backups,
                    meta.applied,
                    inherited,
                    self.env.lease,
                ))
            }
            LocalRole::Backup => Role::Backup(Backup::new(
                epoch,
                self.copy.replicas.primary.clone(),
                meta.logged,
                meta.applied,
            )),
        };
    }

    fn fail(&mut self, why: String) {
        warn!(shard = %self.key, error = %why, "shard copy failed; refusing work");
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(format!("shard {} unavailable: {why}", self.key)));
        }
        self.failed = Some(why);
    }

    fn publish(&self, ctx: &mut Context<Self>) {
        let (membership, k, v) = (
            self.env.membership.clone(),
            gossip_key(&self.key),
            gossip_value(&self.copy),
        );
        ctx.spawn(async move { membership.set(&k, &v).await }.into_actor(self));
    }

    fn addr_of(&self, node: &str) -> Option<SocketAddr> {
        self.env
            .control
            .map()
            .nodes
            .get(node)
            .and_then(|n| n.addr.parse().ok())
    }

    fn run(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for e in effects {
            match e {
                Effect::Persist(entries) => {
                    self.to_persist.extend(entries);
                    if !self.flush_scheduled {
                        self.flush_scheduled = true;
                        // Everything proposed before the next turn of the
                        // actor shares one transaction.
                        ctx.run_later(Duration::ZERO, |act, ctx| act.flush(ctx));
                    }
                }
                Effect::Send { to, msg } => match self.addr_of(&to) {
                    Some(addr) => {
                        let m = PeerMessage::Repl {
                            table: self.key.table.clone(),
                            shard: self.key.index,
                            msg,
                        };
                        if let Err(e) = self.env.endpoint.send_oneway(addr, &m) {
                            debug!(shard = %self.key, to, error = %e, "replication message not sent");
                        }
                    }
                    None => debug!(shard = %self.key, to, "no address for replica"),
                },
                Effect::Commit { upto } => self.apply(upto),
                Effect::FetchMap { seen } => {
                    debug!(shard = %self.key, seen, mine = self.copy.replicas.epoch, "newer epoch seen; waiting for the map")
                }
            }
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        if self.to_persist.is_empty() || self.failed.is_some() {
            return;
        }
        let entries = std::mem::take(&mut self.to_persist);
        match self.env.store.append(self.id, &entries) {
            Ok(logged) => {
                let effects = match &mut self.role {
                    Role::Primary(p) => p.on_persisted(logged),
                    Role::Backup(b) => b.on_persisted(logged),
                };
                self.run(effects, ctx);
            }
            Err(e) => self.fail(format!("log write failed: {e}")),
        }
    }

    fn apply(&mut self, upto: Seq) {
        match self.env.store.apply(self.id, upto, &self.copy.key_column) {
            Ok(results) => {
                for (seq, res) in results {
                    if let Some(reply) = self.waiting.remove(&seq) {
                        let _ = reply.send(res.map_err(|e| e.to_string()));
                    }
                }
            }
            Err(e) => self.fail(format!("apply failed: {e}")),
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
        ctx.run_interval(
            Duration::from_millis(self.env.lease.heartbeat),
            |act, ctx| {
                if let Role::Primary(p) = &mut act.role {
                    let effects = p.on_tick(now_ms());
                    act.run(effects, ctx);
                }
            },
        );
    }
}

impl Handler<Reconfigure> for CopyActor {
    type Result = ();

    fn handle(&mut self, Reconfigure(copy): Reconfigure, ctx: &mut Context<Self>) {
        if copy.role != self.copy.role && copy.role == LocalRole::Primary {
            info!(shard = %self.key, epoch = copy.replicas.epoch, "promoted to primary");
        }
        // Writes still waiting belong to the old configuration.
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(format!(
                "shard {} was reconfigured (epoch {}); retry",
                self.key, copy.replicas.epoch
            )));
        }
        self.copy = copy;
        self.flush(ctx);
        self.configure();
        self.publish(ctx);
    }
}

impl Handler<StopCopy> for CopyActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, stop: StopCopy, _: &mut Context<Self>) -> Self::Result {
        info!(shard = %self.key, drop_data = stop.drop_data, "shard copy stopped");
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(format!(
                "shard {} moved away from this node; retry",
                self.key
            )));
        }
        if stop.drop_data {
            if let Err(e) = self.env.store.drop_shard(self.id) {
                warn!(shard = %self.key, error = %e, "could not delete the shard's data");
            }
        }
        let (membership, k) = (self.env.membership.clone(), gossip_key(&self.key));
        Box::pin(
            async move { membership.delete(&k).await }
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        )
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
            Role::Backup(b) => b.on_message(&from, msg),
        };
        self.run(effects, ctx);
    }
}

impl Handler<Write> for CopyActor {
    type Result = ResponseFuture<Result<OpResult, String>>;

    fn handle(&mut self, Write(op): Write, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(e) = self.unavailable() {
            return Box::pin(async move { Err(e) });
        }
        let Role::Primary(p) = &mut self.role else {
            let primary = self.copy.replicas.primary.clone();
            let key = self.key.clone();
            return Box::pin(async move {
                Err(format!(
                    "shard {key} is not led here (primary is {primary}); retry"
                ))
            });
        };
        let bytes = postcard::to_stdvec(&op).expect("encodable");
        match p.propose(bytes, now_ms()) {
            Ok((seq, effects)) => {
                let (tx, rx) = oneshot::channel();
                self.waiting.insert(seq, tx);
                self.run(effects, ctx);
                Box::pin(async move {
                    rx.await.unwrap_or_else(|_| {
                        Err("the shard stopped before the write committed".into())
                    })
                })
            }
            Err(e) => {
                let msg = format!("shard {} unavailable: {e}", self.key);
                Box::pin(async move { Err(msg) })
            }
        }
    }
}

impl CopyActor {
    fn check_read(&self, mode: ReadMode) -> Result<(), String> {
        if let Some(e) = self.unavailable() {
            return Err(e);
        }
        match (&self.role, mode) {
            (Role::Primary(p), ReadMode::Strong) => {
                if p.lease_valid(now_ms()) {
                    Ok(())
                } else {
                    Err(format!(
                        "shard {} refuses strong reads: primary lease not held at epoch {}",
                        self.key,
                        p.epoch()
                    ))
                }
            }
            (Role::Backup(_), ReadMode::Strong) => Err(format!(
                "shard {} is not led here (primary is {}); strong reads go to the primary",
                self.key, self.copy.replicas.primary
            )),
            (_, ReadMode::Replica) => Ok(()),
        }
    }
}

impl Handler<Read> for CopyActor {
    type Result = Result<Option<RowRecord>, String>;

    fn handle(&mut self, Read { key, mode }: Read, _: &mut Context<Self>) -> Self::Result {
        self.check_read(mode)?;
        self.env
            .store
            .get(self.id, &key)
            .map_err(|e| format!("shard {} read failed: {e}", self.key))
    }
}

impl Handler<ScanShard> for CopyActor {
    type Result = Result<Vec<(SplitKey, RowRecord)>, String>;

    fn handle(&mut self, s: ScanShard, _: &mut Context<Self>) -> Self::Result {
        self.check_read(s.mode)?;
        let res = self
            .env
            .store
            .scan(self.id, s.from.as_ref(), s.to.as_ref(), s.limit)
            .map_err(|e| format!("shard {} scan failed: {e}", self.key));
        debug!(shard = %self.key, role = %self.copy.role, mode = ?s.mode, from = ?s.from, to = ?s.to, limit = s.limit, rows = ?res.as_ref().map(|r| r.len()), "scan");
        res
    }
}

/// The copies a node holds, by shard (used by the NodeActor to route).
pub type Copies = BTreeMap<ShardKey, (LocalCopy, Addr<CopyActor>)>;
