//! A harness for multi-node tests with real `tstore` processes.
//!
//! Each [`Cluster`] gets its own temporary directory (certificates, data dirs,
//! logs) and its own loopback address (127.x.y.1, derived from the test
//! process id and a counter), so tests can run in parallel on fixed ports
//! without colliding. Every wait is bounded; dropping a cluster kills every
//! process it started. On a failed wait the error carries the tail of each
//! node's log.

pub mod checks;
pub mod history;
pub mod linearizability;
pub mod load;
pub mod nemesis;
pub mod partition;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tstore_client::admin::AdminClient;
use tstore_client::cluster_map::{NodeState, Sharding, Table, TableSpec};
use tstore_client::wire::ClusterStatus;
use tstore_membership::{Member, NodeStatus};
use tstore_transport::certs::CertDir;
use tstore_transport::Role;

/// The binary under test: `tstore-under-test`, which cargo builds beside the
/// integration tests (`target/<profile>/`, one level above `deps/`).
pub fn tstore_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("tstore-under-test");
    assert!(bin.exists(), "{} is not built", bin.display());
    bin
}

/// Node ids a cluster has certificates for.
pub const NODE_IDS: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

const BASE_PORT: u16 = 7401;

static NEXT_CLUSTER: AtomicU8 = AtomicU8::new(1);

/// A unique loopback address for one cluster of this test process.
fn unique_loopback() -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        100 + (pid % 150) as u8,
        NEXT_CLUSTER.fetch_add(1, Ordering::SeqCst),
        1,
    )
}

struct Proc {
    child: Child,
}

/// A hash-sharded table keyed by `id` with 3 copies of each of `shards`
/// shards, as the failure tests use.
pub fn hash_table(name: &str, shards: u32) -> TableSpec {
    TableSpec {
        name: name.into(),
        key: "id".into(),
        sharding: Sharding::Hash { shards },
        replicas: 3,
        min_copies: 0,
    }
}

/// Real node processes on one loopback address.
pub struct Cluster {
    dir: tempfile::TempDir,
    ip: Ipv4Addr,
    certs: CertDir,
    procs: BTreeMap<String, Proc>,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Cluster {
    /// Certificates for [`NODE_IDS`] and the client `admin`; no node running yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = CertDir::new(dir.path().join("certs"));
        certs.create_ca(false).expect("CA");
        for id in NODE_IDS {
            certs.create_leaf(Role::Node, id, false).expect("node cert");
        }
        certs
            .create_leaf(Role::Client, "admin", false)
            .expect("client cert");
        Self {
            dir,
            ip: unique_loopback(),
            certs,
            procs: BTreeMap::new(),
        }
    }

    pub fn certs(&self) -> &CertDir {
        &self.certs
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The address node `id` listens on.
    pub fn addr(&self, id: &str) -> SocketAddr {
        let index = NODE_IDS
            .iter()
            .position(|n| *n == id)
            .expect("known node id");
        SocketAddr::new(IpAddr::V4(self.ip), BASE_PORT + index as u16)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    /// Starts node `id` (with its data dir kept across restarts) seeded by `seeds`.
    pub fn start(&mut self, id: &str, seeds: &[&str]) {
        self.start_with(id, seeds, &[]);
    }

    /// Like [`Cluster::start`], with extra `tstore start` flags.
    pub fn start_with(&mut self, id: &str, seeds: &[&str], extra: &[&str]) {
        let seeds: Vec<String> = seeds.iter().map(|s| self.addr(s).to_string()).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let mut cmd = Command::new(tstore_binary());
        cmd.arg("start")
            .args(["--node-id", id])
            .args(["--listen", &self.addr(id).to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join(id))
            .arg("--certs")
            .arg(self.certs.path())
            .env("RUST_LOG", "info,openraft=warn,tstore_transport=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if !seeds.is_empty() {
            cmd.args(["--seeds", &seeds.join(",")]);
        }
        cmd.args(extra);
        let child = cmd.spawn().expect("spawn tstore");
        self.procs.insert(id.to_owned(), Proc { child });
    }

    /// A write load on `table` through `nodes` (see [`load::Load::start`]).
    pub fn load(
        &self,
        nodes: &[&str],
        table: &str,
        writers: usize,
        max_writes: usize,
    ) -> load::Load {
        load::Load::start(
            nodes.iter().map(|n| self.addr(n)).collect(),
            self.certs.path().to_path_buf(),
            table,
            writers,
            max_writes,
        )
    }

    /// Whether node `id` was started and not killed or waited for since.
    pub fn is_running(&self, id: &str) -> bool {
        self.procs.contains_key(id)
    }

    pub fn pid(&self, id: &str) -> Pid {
        Pid::from_raw(self.procs[id].child.id() as i32)
    }

    /// `kill -9`.
    pub fn kill9(&mut self, id: &str) {
        let mut p = self.procs.remove(id).expect("running node");
        p.child.kill().expect("SIGKILL");
        p.child.wait().expect("reap");
    }

    /// Sends a signal to a node (SIGSTOP, SIGCONT, SIGTERM...).
    pub fn signal(&self, id: &str, sig: Signal) {
        kill(self.pid(id), sig).expect("signal");
    }

    /// Waits (bounded) for node `id` to exit; kills it if it does not.
    pub fn wait_exit(&mut self, id: &str, limit: Duration) -> Result<ExitStatus, String> {
        let mut p = self.procs.remove(id).expect("running node");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = p.child.try_wait().expect("try_wait") {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
        Err(format!(
            "{id} did not exit within {limit:?}\n{}",
            self.logs()
        ))
    }

    pub async fn client(&self, via: &str) -> Result<AdminClient, String> {
        AdminClient::connect(self.addr(via), self.certs.path(), "admin")
            .await
            .map_err(|e| e.to_string())
    }

    /// The member list as node `via` sees it.
    pub async fn members(&self, via: &str) -> Result<Vec<Member>, String> {
        let client = self.client(via).await?;
        let res = client
            .members()
            .await
            .map(|(_, m)| m)
            .map_err(|e| e.to_string());
        client.close().await;
        res
    }

    /// The control plane as node `via` sees it.
    pub async fn status(&self, via: &str) -> Result<ClusterStatus, String> {
        let client = self.client(via).await?;
        let res = client.cluster().await.map_err(|e| e.to_string());
        client.close().await;
        res
    }

    /// The Raft leader as node `via` sees it, waiting (up to 10 s) while
    /// there is none: an election may be under way when a test asks (a
    /// leader missing a few 50 ms heartbeats on a loaded machine is
    /// replaced within about half a second).
    pub async fn leader(&self, via: &str) -> String {
        let (leader, _) = self
            .poll("a Raft leader", Duration::from_secs(10), || async {
                Ok(self.status(via).await.ok().and_then(|s| s.leader))
            })
            .await
            .unwrap();
        leader
    }

    /// Polls `probe` every 100 ms until it returns `Some`; returns the value
    /// and the time it took, or an error naming `what`, with the logs.
    pub async fn poll<T, F, Fut>(
        &self,
        what: &str,
        limit: Duration,
        mut probe: F,
    ) -> Result<(T, Duration), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, String>>,
    {
        let start = Instant::now();
        let mut last = String::from("nothing yet");
        while start.elapsed() < limit {
            match probe().await {
                Ok(Some(v)) => return Ok((v, start.elapsed())),
                Ok(None) => {}
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "{what} did not happen within {limit:?}; last error: {last}\n{}",
            self.logs()
        ))
    }

    /// Polls `via`'s member list every 50 ms until `done` holds; returns the
    /// time it took, or an error with the last view and the logs.
    pub async fn wait_for(
        &self,
        via: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Member]) -> bool,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = String::from("no answer");
        while start.elapsed() < limit {
            match self.members(via).await {
                Ok(m) if done(&m) => return Ok(start.elapsed()),
                Ok(m) => last = format!("{m:#?}"),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{via} did not see {what} within {limit:?}; last view: {last}\n{}",
            self.logs()
        ))
    }

    /// Starts `ids` (the first three bootstrap the control plane, the rest
    /// join through them) and waits for a leader with three voters, every
    /// node live in gossip, and every node registered in the map (so a table
    /// created next may place copies on any of them).
    pub async fn start_formed(&mut self, ids: &[&str]) {
        self.start_formed_with(ids, &[]).await
    }

    /// [`Cluster::start_formed`] with extra `tstore start` flags for every
    /// node.
    pub async fn start_formed_with(&mut self, ids: &[&str], extra: &[&str]) {
        self.start_formed_by(ids, |_| extra.to_vec()).await
    }

    /// [`Cluster::start_formed`] with extra `tstore start` flags for each
    /// node, as `flags(id)` gives them.
    /// Where node `id`'s HTTP listener (metrics, console) is, when started
    /// by [`Cluster::start_formed_with_http`]: on the node's own loopback
    /// address, so clusters of parallel tests do not collide.
    pub fn http_addr(&self, id: &str) -> std::net::SocketAddr {
        let quic = self.addr(id);
        std::net::SocketAddr::new(quic.ip(), 9100 + quic.port() % 100)
    }

    /// [`Cluster::start_formed`], each node with its HTTP listener at
    /// [`Cluster::http_addr`].
    pub async fn start_formed_with_http(&mut self, ids: &[&str]) {
        let flags: std::collections::BTreeMap<String, [String; 2]> = ids
            .iter()
            .map(|id| {
                let addr = self.http_addr(id).to_string();
                (id.to_string(), ["--metrics-listen".into(), addr])
            })
            .collect();
        self.start_formed_by(ids, |id| flags[id].iter().map(String::as_str).collect())
            .await;
    }

    pub async fn start_formed_by<'a>(
        &mut self,
        ids: &[&str],
        flags: impl Fn(&str) -> Vec<&'a str>,
    ) {
        let first: Vec<&str> = ids.iter().take(3).copied().collect();
        for id in ids {
            let seeds: Vec<&str> = first.iter().filter(|s| *s != id).copied().collect();
            let mut extra = flags(id);
            if first.contains(id) {
                extra.extend(["--bootstrap-expect", "3"]);
            }
            self.start_with(id, &seeds, &extra);
        }
        let n = ids.len();
        self.poll(
            "a formed control plane",
            Duration::from_secs(40),
            || async {
                let s = self.status(ids[0]).await?;
                let client = self.client(ids[0]).await?;
                let members = client.members().await.map_err(|e| e.to_string())?.1;
                client.close().await;
                Ok((s.leader.is_some()
                    && s.voters.len() == 3
                    && members
                        .iter()
                        .filter(|m| m.status == NodeStatus::Live)
                        .count()
                        == n)
                    .then_some(()))
            },
        )
        .await
        .unwrap();
        // Live in gossip is not enough for a node to receive copies: the
        // coordinator must have registered it in the map. Marking a node
        // active is refused for an unregistered node and changes nothing
        // for a registered active one.
        self.poll(
            "every node registered in the map",
            Duration::from_secs(30),
            || async {
                let client = self.client(ids[0]).await?;
                let mut res = Ok(Some(()));
                for id in ids {
                    if let Err(e) = client.set_node_state(id, NodeState::Active).await {
                        res = Err(format!("{id}: {e}"));
                        break;
                    }
                }
                client.close().await;
                res
            },
        )
        .await
        .unwrap();
    }

    /// Waits until `via`'s map holds no copy of `table` on `node` (the
    /// coordinator dropped it from every configuration); returns how long
    /// it waited.
    pub async fn wait_without(
        &self,
        via: &str,
        table: &str,
        node: &str,
        limit: Duration,
    ) -> Result<Duration, String> {
        let client = self.client(via).await?;
        let res = self
            .poll(
                &format!("every shard of {table} without {node}"),
                limit,
                || async {
                    let (_, t) = client.describe(table).await.map_err(|e| e.to_string())?;
                    Ok((!t
                        .shards
                        .iter()
                        .any(|s| s.replicas.holders().any(|h| h == node)))
                    .then_some(()))
                },
            )
            .await
            .map(|(_, took)| took);
        client.close().await;
        res
    }

    /// Creates a table through `via`, retrying while the cluster registers
    /// its nodes, and waits until every copy serves.
    pub async fn create_table(&self, via: &str, spec: TableSpec) -> Table {
        let name = spec.name.clone();
        let (table, _) = self
            .poll(
                &format!("create table {name}"),
                Duration::from_secs(30),
                || {
                    let spec = spec.clone();
                    async move {
                        let client = self.client(via).await?;
                        let r = client.create_table(spec).await;
                        client.close().await;
                        Ok(r.ok().map(|(_, t)| t))
                    }
                },
            )
            .await
            .unwrap();
        self.wait_healthy(via, &name, Duration::from_secs(30))
            .await
            .unwrap();
        table
    }

    /// Waits until every shard of `table` has its full replication factor,
    /// no copy being built, and every member serving the same rows (same
    /// applied position and checksum). Returns the map's table and the time
    /// it took.
    pub async fn wait_healthy(
        &self,
        via: &str,
        table: &str,
        limit: Duration,
    ) -> Result<(Table, Duration), String> {
        self.poll(&format!("{table} healthy and identical"), limit, || async {
            let client = self.client(via).await?;
            let res = async {
                let (_, t) = client.describe(table).await.map_err(|e| e.to_string())?;
                let copies = client
                    .copies(table, true)
                    .await
                    .map_err(|e| e.to_string())?;
                for s in &t.shards {
                    let r = &s.replicas;
                    if r.members().count() != t.spec.replicas as usize || !r.learners.is_empty() {
                        return Err(format!("{table}/{} is {r:?}", s.index));
                    }
                    let mut seen = None;
                    for m in r.members() {
                        let c = copies
                            .iter()
                            .find(|c| c.shard == s.index && c.node == *m)
                            .ok_or(format!("{table}/{} on {m}: no report", s.index))?;
                        let st = c.status.as_ref().map_err(|e| e.clone())?;
                        if st.state != "serving" {
                            return Err(format!("{table}/{} on {m}: {}", s.index, st.state));
                        }
                        let sig = (st.applied, st.checksum);
                        match seen {
                            None => seen = Some(sig),
                            Some(x) if x == sig => {}
                            Some(x) => {
                                return Err(format!(
                                    "{table}/{}: copies differ ({x:?} vs {m} {sig:?})",
                                    s.index
                                ))
                            }
                        }
                    }
                }
                Ok(t)
            }
            .await;
            client.close().await;
            res.map(Some)
        })
        .await
    }

    /// The last lines of every node's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for id in NODE_IDS {
            let path = self.log_path(id);
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!("--- {id} log (last 30 lines) ---\n"));
                for l in &lines[lines.len().saturating_sub(30)..] {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// The status of node `id` in a member list, if listed.
pub fn status_of(members: &[Member], id: &str) -> Option<NodeStatus> {
    members.iter().find(|m| m.node_id == id).map(|m| m.status)
}

/// The generation of node `id` in a member list, if listed.
pub fn generation_of(members: &[Member], id: &str) -> Option<u64> {
    members
        .iter()
        .find(|m| m.node_id == id)
        .map(|m| m.generation)
}

/// True when exactly `ids` are listed and all of them are live.
pub fn all_live(members: &[Member], ids: &[&str]) -> bool {
    members.len() == ids.len()
        && ids
            .iter()
            .all(|id| status_of(members, id) == Some(NodeStatus::Live))
}
