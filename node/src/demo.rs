//! `tstore demo`: a local cluster of real `tstore start` processes.
//!
//! Makes certificates (once) in `--dir`, starts the nodes on consecutive ports
//! of one loopback address, waits until every node is live in gossip, prints
//! how to talk to the cluster, and on Ctrl-C/SIGTERM stops every node with
//! SIGTERM so each leaves politely. The children run in their own process
//! group, so the terminal's Ctrl-C reaches only the demo, which stops them in
//! order.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tstore_membership::NodeStatus;
use tstore_transport::certs::CertDir;
use tstore_transport::Role;

use tstore_client::admin::AdminClient;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Working directory for certificates, node data and logs.
    #[arg(long, default_value = "tstore-demo")]
    pub dir: PathBuf,
    /// How many nodes (1-9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
    /// Loopback address the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port of the first node; the others follow.
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// TCP port of the first node's HTTP listener (metrics, console); the others follow; 0 for none [default: base port + 2000].
    #[arg(long)]
    pub metrics_base_port: Option<u16>,
    /// Settings passed to every node's `tstore start`, after `--`: e.g.
    /// `tstore demo -- --split-size-bytes 1048576`.
    #[arg(last = true)]
    pub node_args: Vec<String>,
}

/// How long the cluster may take to come up.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// How long a node may take to leave after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);

struct Node {
    id: String,
    addr: SocketAddr,
    log: PathBuf,
    child: Child,
    /// Its unexpected exit was reported already.
    reported: bool,
}

/// The running nodes; dropping it kills whatever still runs.
struct Nodes(Vec<Node>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in &mut self.0 {
            if let Ok(None) = n.child.try_wait() {
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
    }
}

impl Nodes {
    fn exited(&mut self) -> Option<String> {
        for n in &mut self.0 {
            if n.reported {
                continue;
            }
            if let Ok(Some(status)) = n.child.try_wait() {
                n.reported = true;
                return Some(format!(
                    "node {} exited ({status}); its log {} ends with:\n{}",
                    n.id,
                    n.log.display(),
                    log_tail(&n.log)
                ));
            }
        }
        None
    }

    fn stop(&mut self) {
        for n in &self.0 {
            let _ = kill(Pid::from_raw(n.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_LIMIT;
        for n in &mut self.0 {
            loop {
                match n.child.try_wait() {
                    Ok(Some(status)) => {
                        println!("{} stopped ({status})", n.id);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        println!("{} did not stop in time; killed", n.id);
                        let _ = n.child.kill();
                        let _ = n.child.wait();
                        break;
                    }
                }
            }
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn ensure_certs(certs: &CertDir, nodes: &[String]) -> anyhow::Result<()> {
    if !certs.ca_cert().exists() {
        certs.create_ca(false)?;
    }
    for id in nodes {
        if !certs.leaf(Role::Node, id).0.exists() {
            certs.create_leaf(Role::Node, id, false)?;
        }
    }
    if !certs.leaf(Role::Client, "admin").0.exists() {
        certs.create_leaf(Role::Client, "admin", false)?;
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ids: Vec<String> = (1..=args.nodes).map(|i| format!("n{i}")).collect();
    let certs = CertDir::new(dir.join("certs"));
    ensure_certs(&certs, &ids)?;
    let exe = std::env::current_exe().context("locating the tstore executable")?;
    let addrs: Vec<SocketAddr> = (0..args.nodes)
        .map(|i| SocketAddr::new(args.host, args.base_port + i))
        .collect();

    let metrics: Vec<Option<SocketAddr>> = match args
        .metrics_base_port
        .unwrap_or(args.base_port.saturating_add(2000))
    {
        0 => vec![None; addrs.len()],
        base => (0..args.nodes)
            .map(|i| Some(SocketAddr::new(args.host, base + i)))
            .collect(),
    };

    let mut nodes = Nodes(Vec::new());
    for (index, (id, addr)) in ids.iter().zip(&addrs).enumerate() {
        let log = dir.join(format!("{id}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("start")
            .args(["--node-id", id])
            .args(["--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(dir.join(id))
            .arg("--certs")
            .arg(certs.path())
            .args(["--seeds", &addrs[0].to_string()])
            // The first (up to) three nodes form the control plane; any others join it.
            .args([
                "--bootstrap-expect",
                &bootstrap_expect(args.nodes, index).to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        if let Some(m) = metrics[index] {
            cmd.args(["--metrics-listen", &m.to_string()]);
        }
        cmd.args(&args.node_args);
        let child = cmd.spawn().with_context(|| format!("starting node {id}"))?;
        nodes.0.push(Node {
            id: id.clone(),
            addr: *addr,
            log,
            child,
            reported: false,
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = Instant::now();
        wait_until_live(&mut nodes, &certs, args.nodes as usize).await?;
        let me = std::env::args().next().unwrap_or_else(|| "tstore".into());
        let c = certs.path().display();
        println!(
            "tstore demo: {} nodes live and the control plane formed after {:.1}s\n",
            args.nodes,
            started.elapsed().as_secs_f64()
        );
        for n in &nodes.0 {
            println!("  {}  {}  (log: {})", n.id, n.addr, n.log.display());
        }
        if let Some(m) = metrics[0] {
            println!("\n  console: http://{m}/   metrics: http://{m}/metrics   (the next ports: the other nodes)");
        }
        println!("\nTry, in another terminal:");
        println!("  {me} admin --node {} --certs {c} members", addrs[0]);
        println!("  {me} admin --node {} --certs {c} gossip", addrs[0]);
        println!(
            "  {me} admin --node {} --certs {c} gossip --watch",
            addrs[0]
        );
        println!("  {me} admin --node {} --certs {c} cluster", addrs[0]);
        println!(
            "  {me} admin --node {} --certs {c} create-table user --key id --shards 8 --replicas {}",
            addrs[0],
            args.nodes.min(3)
        );
        println!(
            "  {me} admin --node {} --certs {c} describe user",
            addrs[addrs.len() - 1]
        );
        println!(
            "  kill -9 <pid of a node>   # watch it go down; pids: {}",
            pids(&nodes)
        );
        println!("\nCtrl-C stops the cluster.");

        let mut sigterm = signal(SignalKind::terminate())?;
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
                _ = check.tick() => {
                    if let Some(msg) = nodes.exited() {
                        eprintln!("warning: {msg}");
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    println!("\nstopping the cluster (each node leaves politely)...");
    nodes.stop();
    Ok(())
}

/// The `--bootstrap-expect` of the demo's `index`-th node.
fn bootstrap_expect(nodes: u16, index: usize) -> u16 {
    let voters = nodes.min(3);
    if (index as u16) < voters {
        voters
    } else {
        0
    }
}

fn pids(nodes: &Nodes) -> String {
    nodes
        .0
        .iter()
        .map(|n| format!("{}={}", n.id, n.child.id()))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn wait_until_live(nodes: &mut Nodes, certs: &CertDir, want: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_LIMIT;
    let first = nodes.0[0].addr;
    let mut last_error = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Some(msg) = nodes.exited() {
            bail!("{msg}");
        }
        match AdminClient::connect(first, certs.path(), "admin").await {
            Ok(client) => {
                match client.members().await {
                    Ok((_, members)) => {
                        let live = members
                            .iter()
                            .filter(|m| m.status == NodeStatus::Live)
                            .count();
                        let leader = match client.cluster().await {
                            Ok(status) => status.leader,
                            Err(_) => None,
                        };
                        if live == want && leader.is_some() {
                            client.close().await;
                            return Ok(());
                        }
                        last_error = format!(
                            "{live} of {want} nodes live, control plane {}",
                            if leader.is_some() {
                                "formed"
                            } else {
                                "not formed yet"
                            }
                        );
                    }
                    Err(e) => last_error = e.to_string(),
                }
                client.close().await;
            }
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the cluster did not come up within {STARTUP_LIMIT:?}: {last_error}")
}
