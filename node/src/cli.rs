//! The `tstore` command line.
//!
//! Exit codes: 0 success, 2 bad usage (clap's message), 1 or 3-9 a failed
//! command (see [`exit_code`]; the README lists them).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use tstore_transport::certs::CertDir;
use tstore_transport::Role;

use tstore_core::cluster_map::{NodeState, PlacementRule, RowKey, Sharding, TableSpec};
use tstore_core::coordinator::failover::ManualOp;
use tstore_core::data::ops::{OpResult, RowRecord};

use crate::config::NodeOptions;
use crate::{demo, output, run};
use tstore_client::admin::{AdminClient, ClientError, WatchItem};
use tstore_client::routing::{Client, Consistency, SessionToken};

#[derive(Debug, Parser)]
#[command(
    name = "tstore",
    version,
    about = "A distributed, sharded, replicated table store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the cluster CA and node/client certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run a node (until SIGINT/SIGTERM, when it leaves the cluster politely).
    Start {
        /// TOML file with the same keys as the flags (flags win).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        options: Box<NodeOptions>,
    },
    /// Talk to a running node as an operator.
    Admin(AdminArgs),
    /// Run a local 3-node cluster with generated certificates; Ctrl-C stops it.
    Demo(demo::DemoArgs),
    /// Load a running cluster and report ops/s and latency percentiles.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create the cluster CA (ca.crt, ca.key).
    CreateCa {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create a node certificate signed by the CA (node-NAME.crt/.key).
    CreateNode {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The node id the certificate is for.
        #[arg(long)]
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Create a client/operator certificate signed by the CA (client-NAME.crt/.key).
    CreateClient {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "admin")]
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub options: AdminOptions,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Where and as whom `tstore admin` connects, and how it prints.
#[derive(Debug, clap::Args)]
pub struct AdminOptions {
    /// Address of any node of the cluster.
    #[arg(long, env = "TSTORE_NODE", default_value = "127.0.0.1:7401")]
    pub node: SocketAddr,
    /// Certificate directory holding ca.crt and the client certificate.
    #[arg(long, env = "TSTORE_CERTS", default_value = "certs")]
    pub certs: PathBuf,
    /// Which client certificate (client-NAME.crt) to use.
    #[arg(long, env = "TSTORE_CLIENT", default_value = "admin")]
    pub client_name: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// A session file for read-your-writes across commands: row commands
    /// load the session token from it and save it back; `--read session`
    /// then sees every write made with the same file.
    #[arg(long, env = "TSTORE_SESSION")]
    pub session: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    /// JSON; one object per line for streams.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Every node: status (live/down/left/joining), generation, address, zone, roles, version.
    Members,
    /// The raw gossip state: per node heartbeat, keys, values and versions.
    Gossip {
        /// Keep streaming changes as they happen (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
    },
    /// The control plane: voters, Raft leader (= coordinator), term, commit index, map version.
    Cluster,
    /// The contacted node's storage: data dir size, LMDB map size and use,
    /// shard copies held, disk bytes written per log entry since start.
    NodeStats,
    /// Create a table, hash-sharded (--shards) or range-sharded (--range-splits).
    CreateTable {
        /// Table name (letters, digits, '_', '-').
        name: String,
        /// The primary-key (partition-key) column.
        #[arg(long)]
        key: String,
        /// Hash sharding into this many shards.
        #[arg(
            long,
            conflicts_with = "range_splits",
            required_unless_present = "range_splits"
        )]
        shards: Option<u32>,
        /// Range sharding at these split points (integers or strings), increasing.
        #[arg(long, value_delimiter = ',')]
        range_splits: Option<Vec<String>>,
        /// Copies of each shard, primary included.
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// Copies that must hold a write before it is acknowledged; a shard
        /// with fewer members refuses writes. Default: min(2, replicas).
        #[arg(long)]
        min_copies: Option<u32>,
        #[command(flatten)]
        rule: RuleArgs,
    },
    /// Keep a table's copies on named nodes (a placement rule), or
    /// `--clear` the rule: `placement user --primaries n1 --backups n2,n3`.
    Placement {
        table: String,
        #[command(flatten)]
        rule: RuleArgs,
        /// Remove the table's rule: its copies may go anywhere again.
        #[arg(long, conflicts_with_all = ["nodes", "primaries", "backups"])]
        clear: bool,
    },
    /// Drop a table and all its shards.
    DropTable { name: String },
    /// List the tables.
    Tables,
    /// Show a table's shards: key range or hash slot, primary, backups, learners, epoch,
    /// state (healthy, recovering, under-replicated, unavailable) and backup lag.
    Describe {
        name: String,
        /// Also checksum every copy's rows and say whether the copies are identical.
        #[arg(long)]
        verify: bool,
    },
    /// Which shard holds a key, and which nodes hold that shard.
    Locate { table: String, key: String },
    /// The coordinator's recent decisions: what, why, when, epoch.
    Events {
        /// Show only the newest N.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Move every copy off a node (primaries handed over first); waits until it holds none.
    Drain {
        node: String,
        /// Return once the drain is recorded instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Most seconds to wait.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Make a drained node take copies again.
    Undrain { node: String },
    /// Move a backup copy to another node: `move-shard user/3 --from n2 --to n4`.
    MoveShard {
        /// TABLE/SHARD
        shard: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Split a shard in two, online: `split-shard events/0 --at 5000` (a
    /// range shard; default: the median key of its rows), `split-shard
    /// user/3` (a hash shard: into its two hash halves). Each copy splits
    /// its own data; the rebalancer then moves one half away.
    SplitShard {
        /// TABLE/SHARD
        shard: String,
        /// The key the upper half starts at (range shards only): an integer,
        /// or a string.
        #[arg(long)]
        at: Option<String>,
    },
    /// Merge two neighbouring shards of a table, online: `merge-shards
    /// events/2 events/0`. The newer of the two must be the table's newest
    /// shard; its copies move next to the other's first, then both take
    /// no writes for about a second while they merge. Waits until done.
    MergeShards {
        /// TABLE/SHARD
        a: String,
        /// TABLE/SHARD (the same table)
        b: String,
        /// Give up waiting after this many seconds (the merge goes on).
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Turn the automatic splits of a table's shards (by size and load; see
    /// the `split_*` settings) on or off: `auto-split events off`.
    AutoSplit {
        table: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Turn the automatic merges of a table's cold, small neighbouring
    /// shards (see `merge_after_secs`) on or off: `auto-merge events off`.
    AutoMerge {
        table: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Switch a shard's primary to one of its backups: `promote user/3 --node n3`.
    Promote {
        /// TABLE/SHARD
        shard: String,
        #[arg(long)]
        node: String,
    },
    /// Drop a backup (or learner) copy now; it is re-created elsewhere if needed.
    RemoveReplica {
        /// TABLE/SHARD
        shard: String,
        #[arg(long)]
        node: String,
    },
    /// Reads and writes of rows (put, insert, update, get, delete, batch,
    /// import, scan), served through the routing client.
    #[command(flatten)]
    Row(RowCommand),
}

/// A placement rule on the command line: `--nodes`, or `--primaries` with
/// `--backups`.
#[derive(Debug, Clone, clap::Args)]
pub struct RuleArgs {
    /// Keep every copy on these nodes, primaries spread over them.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["primaries", "backups"])]
    nodes: Option<Vec<String>>,
    /// Keep each shard's primary on one of these nodes...
    #[arg(long, value_delimiter = ',', requires = "backups")]
    primaries: Option<Vec<String>>,
    /// ...and its backups on these (then on the other primaries).
    #[arg(long, value_delimiter = ',', requires = "primaries")]
    backups: Option<Vec<String>>,
}

impl RuleArgs {
    fn rule(&self) -> Option<PlacementRule> {
        match (&self.nodes, &self.primaries, &self.backups) {
            (Some(nodes), _, _) => Some(PlacementRule {
                primaries: nodes.clone(),
                backups: nodes.clone(),
            }),
            (None, Some(primaries), Some(backups)) => Some(PlacementRule {
                primaries: primaries.clone(),
                backups: backups.clone(),
            }),
            _ => None,
        }
    }
}

/// The row commands: one request each, through the routing client.
#[derive(Debug, Subcommand)]
pub enum RowCommand {
    /// Create or replace a row: `put user '{"id":1,"name":"Alice","age":25}'`.
    Put { table: String, row: String },
    /// Create a row; fails if its key exists.
    Insert { table: String, row: String },
    /// Merge columns into a row: `update user 1 '{"age":26}' [--if-version 4]`.
    Update {
        table: String,
        key: String,
        patch: String,
        /// Only if the row is at this version (optimistic concurrency).
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Read a row.
    Get {
        table: String,
        key: String,
        /// strong (the primary, under its lease), replica (any in-sync
        /// copy) or session (an in-sync copy with every write of the
        /// session, else the primary).
        #[arg(long, default_value_t = Consistency::Strong)]
        read: Consistency,
    },
    /// Delete a row.
    Delete {
        table: String,
        key: String,
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Several writes in one shard, all or nothing: `batch user '[{"put":{"id":1,"n":"A"}},
    /// {"update":{"key":1,"patch":{"n":"B"}}}]'` (`locate` tells which keys share a shard).
    Batch {
        table: String,
        /// A JSON array of `{"put": ROW}`, `{"insert": ROW}`,
        /// `{"update": {"key": K, "patch": {..}, "if_version": V}}`, `{"delete": {"key": K, "if_version": V}}`.
        ops: String,
    },
    /// Bulk-load rows from a JSON-lines file (one JSON object per line), with a progress bar.
    Import {
        table: String,
        file: PathBuf,
        /// Rows written at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Rows in key order: `scan user [--from K] [--to K] [--limit N]` (from inclusive, to exclusive).
    Scan {
        table: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// strong (the primary, under its lease), replica (any in-sync
        /// copy) or session (an in-sync copy with every write of the
        /// session, else the primary).
        #[arg(long, default_value_t = Consistency::Strong)]
        read: Consistency,
    },
}

fn row_line(key: &RowKey, r: &RowRecord) -> String {
    format!("{}  (key {key}, version {})", r.json, r.version)
}

fn row_json(key: &RowKey, r: &RowRecord) -> serde_json::Value {
    let row: serde_json::Value = serde_json::from_str(&r.json).unwrap_or(serde_json::Value::Null);
    serde_json::json!({ "key": key.to_string(), "version": r.version, "row": row })
}

/// Parses arguments, runs the command, and returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Start { .. } => "info,openraft=warn",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match execute(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

/// The exit code for a failed command: a failed request's kind decides it
/// (the table is at `tstore_core::wire::ErrorKind::exit_code`); 1 for any
/// other failure (connection, configuration, files).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Data(d)) => d.kind.exit_code(),
        Some(ClientError::Admin(a)) => a.kind.exit_code(),
        _ => 1,
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Cert(c) => cert(c),
        Command::Start { config, options } => {
            let file = match config {
                Some(path) => NodeOptions::from_file(&path)?,
                None => NodeOptions::default(),
            };
            run::run_node((*options).over(file).resolve()?)
        }
        Command::Admin(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(admin(args))
        }
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => crate::bench::run(args),
    }
}

fn cert(c: CertCommand) -> anyhow::Result<()> {
    match c {
        CertCommand::CreateCa { dir, force } => {
            let path = CertDir::new(&dir).create_ca(force)?;
            println!("created cluster CA {}", path.display());
        }
        CertCommand::CreateNode { dir, name, force } => {
            let (crt, key) = CertDir::new(&dir).create_leaf(Role::Node, &name, force)?;
            println!(
                "created node certificate {} and key {}",
                crt.display(),
                key.display()
            );
        }
        CertCommand::CreateClient { dir, name, force } => {
            let (crt, key) = CertDir::new(&dir).create_leaf(Role::Client, &name, force)?;
            println!(
                "created client certificate {} and key {}",
                crt.display(),
                key.display()
            );
        }
    }
    Ok(())
}

/// `user/3` → ("user", 3).
fn parse_shard(s: &str) -> anyhow::Result<(String, u32)> {
    let (t, i) = s
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("shard {s:?}: write TABLE/SHARD, e.g. user/3"))?;
    let i = i
        .parse()
        .map_err(|_| anyhow::anyhow!("shard {s:?}: {i:?} is not a shard number"))?;
    Ok((t.to_owned(), i))
}

fn done(json: bool, map_version: u64, text: &str) -> anyhow::Result<()> {
    show(
        json,
        &serde_json::json!({ "map_version": map_version }),
        || format!("{text} (map version {map_version})\n"),
    )
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Prints a command's result: `value` as one JSON line with `--output json`,
/// else the text `text` renders (from `output`).
fn show<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        print_json(value)
    } else {
        print!("{}", text());
        Ok(())
    }
}

async fn admin(
    AdminArgs {
        options: args,
        command,
    }: AdminArgs,
) -> anyhow::Result<()> {
    let command = match command {
        AdminCommand::Row(row) => return rows(&args, row).await,
        other => other,
    };
    let client = AdminClient::connect(args.node, &args.certs, &args.client_name).await?;
    let json = args.output == Output::Json;
    match command {
        AdminCommand::Members => {
            let (observer, members) = client.members().await?;
            show(
                json,
                &serde_json::json!({ "observer": observer, "members": members }),
                || output::members(&observer, &members),
            )?;
        }
        AdminCommand::Gossip { watch: false } => {
            let snapshot = client.gossip().await?;
            show(json, &snapshot, || output::gossip(&snapshot))?;
        }
        AdminCommand::Cluster => {
            let status = client.cluster().await?;
            show(json, &status, || output::cluster(&status))?;
        }
        AdminCommand::NodeStats => {
            let stats = client.node_stats().await?;
            show(json, &stats, || output::node_stats(&stats))?;
        }
        AdminCommand::CreateTable {
            name,
            key,
            shards,
            range_splits,
            replicas,
            min_copies,
            rule,
        } => {
            let sharding = match (shards, range_splits) {
                (Some(shards), None) => Sharding::Hash { shards },
                (None, Some(splits)) => Sharding::Range {
                    splits: splits.iter().map(|s| RowKey::parse(s)).collect(),
                },
                _ => anyhow::bail!("give either --shards or --range-splits"),
            };
            let spec = TableSpec {
                name,
                key,
                sharding,
                replicas,
                min_copies: min_copies.unwrap_or(0),
            };
            let (mut version, mut table) = client.create_table(spec).await?;
            if let Some(rule) = rule.rule() {
                // Placed by the coordinator first; its copies then move to
                // the named nodes (at once for an empty table).
                client.set_placement(&table.spec.name, Some(rule)).await?;
                (version, table) = client.describe(&table.spec.name).await?;
            }
            if json {
                print_json(&serde_json::json!({ "map_version": version, "table": table }))?;
            } else {
                println!(
                    "created table {:?} (map version {version})",
                    table.spec.name
                );
                print!("{}", output::table(version, &table));
            }
        }
        AdminCommand::Placement { table, rule, clear } => {
            let rule = match (rule.rule(), clear) {
                (None, false) => {
                    anyhow::bail!("give --nodes, --primaries with --backups, or --clear")
                }
                (rule, _) => rule,
            };
            let text = match &rule {
                Some(r) => format!("table {table:?}: {r}; the coordinator moves its copies there"),
                None => format!("table {table:?} has no placement rule now"),
            };
            let v = client.set_placement(&table, rule).await?;
            done(json, v, &text)?;
        }
        AdminCommand::DropTable { name } => {
            let version = client.drop_table(&name).await?;
            show(
                json,
                &serde_json::json!({ "map_version": version, "dropped": name }),
                || format!("dropped table {name:?} (map version {version})\n"),
            )?;
        }
        AdminCommand::Tables => {
            let (version, tables) = client.tables().await?;
            show(
                json,
                &serde_json::json!({ "map_version": version, "tables": tables }),
                || output::tables(version, &tables),
            )?;
        }
        AdminCommand::Describe { name, verify } => {
            let (version, table) = client.describe(&name).await?;
            let copies = client.copies(&name, verify).await?;
            if json {
                let shards: Vec<serde_json::Value> = table
                    .shards
                    .iter()
                    .map(|s| {
                        let (state, lag) = output::shard_health(&table, s.index, &copies);
                        serde_json::json!({ "shard": s.index, "state": state, "lag": lag })
                    })
                    .collect();
                print_json(&serde_json::json!({
                    "map_version": version, "table": table, "health": shards, "copies": copies
                }))?;
            } else {
                print!(
                    "{}",
                    output::table_with_copies(version, &table, &copies, verify)
                );
            }
        }
        AdminCommand::Locate { table, key } => {
            let (_, t) = client.describe(&table).await?;
            let s = &t.shards[t.shard_of(&RowKey::parse(&key)) as usize];
            let r = &s.replicas;
            if json {
                print_json(&serde_json::json!({
                    "table": table, "shard": s.index, "primary": r.primary,
                    "backups": r.backups, "learners": r.learners, "epoch": r.epoch
                }))?;
            } else {
                println!(
                    "{table}/{} (primary {}, backups {}, epoch {})",
                    s.index,
                    r.primary,
                    if r.backups.is_empty() {
                        "-".into()
                    } else {
                        r.backups.join(",")
                    },
                    r.epoch
                );
            }
        }
        AdminCommand::Events { limit } => {
            let (version, mut events) = client.events().await?;
            if let Some(n) = limit {
                let skip = events.len().saturating_sub(n);
                events.drain(..skip);
            }
            show(
                json,
                &serde_json::json!({ "map_version": version, "events": events }),
                || output::events(version, &events),
            )?;
        }
        AdminCommand::Drain {
            node,
            no_wait,
            timeout_secs,
        } => {
            let v = client.set_node_state(&node, NodeState::Draining).await?;
            if !json {
                println!("{node} is draining (map version {v})");
            }
            if !no_wait {
                let started = std::time::Instant::now();
                loop {
                    let (_, tables) = client.tables().await?;
                    let held: usize = tables
                        .iter()
                        .flat_map(|t| &t.shards)
                        .filter(|s| s.replicas.holders().any(|h| *h == node))
                        .count();
                    if held == 0 {
                        break;
                    }
                    if started.elapsed().as_secs() >= timeout_secs {
                        anyhow::bail!(
                            "{node} still holds {held} copies after {timeout_secs} s; see `events` and `describe`"
                        );
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
            if json {
                print_json(&serde_json::json!({ "node": node, "drained": !no_wait }))?;
            } else if !no_wait {
                println!("{node} holds no copies: safe to stop");
            }
        }
        AdminCommand::Undrain { node } => {
            let v = client.set_node_state(&node, NodeState::Active).await?;
            show(json, &serde_json::json!({ "map_version": v }), || {
                format!("{node} is active (map version {v})\n")
            })?;
        }
        AdminCommand::MoveShard { shard, from, to } => {
            let (t, i) = parse_shard(&shard)?;
            let v = client
                .shard_op(
                    &t,
                    i,
                    ManualOp::Move {
                        from,
                        to: to.clone(),
                    },
                )
                .await?;
            done(
                json,
                v,
                &format!("moving {shard} to {to}: it becomes a backup once caught up"),
            )?;
        }
        AdminCommand::AutoSplit { table, state } => {
            let on = state == "on";
            let v = client.set_auto_split(&table, on).await?;
            done(json, v, &format!("automatic splits of {table} are {state}"))?;
        }
        AdminCommand::AutoMerge { table, state } => {
            let on = state == "on";
            let v = client.set_auto_merge(&table, on).await?;
            done(json, v, &format!("automatic merges of {table} are {state}"))?;
        }
        AdminCommand::MergeShards { a, b, wait_secs } => {
            let (t, i) = parse_shard(&a)?;
            let (t2, j) = parse_shard(&b)?;
            if t != t2 {
                anyhow::bail!(
                    "{a} and {b} are shards of different tables: only shards of one table merge"
                );
            }
            let v = client
                .merge_shards(&t, i, j, std::time::Duration::from_secs(wait_secs))
                .await?;
            done(
                json,
                v,
                &format!("merged {t}/{} into {t}/{}", i.max(j), i.min(j)),
            )?;
        }
        AdminCommand::SplitShard { shard, at } => {
            let (t, i) = parse_shard(&shard)?;
            let (v, child) = client
                .split_shard(&t, i, at.as_deref().map(RowKey::parse))
                .await?;
            done(
                json,
                v,
                &format!("split {shard}: {t}/{child} takes half of its keys"),
            )?;
        }
        AdminCommand::Promote { shard, node } => {
            let (t, i) = parse_shard(&shard)?;
            let v = client
                .shard_op(&t, i, ManualOp::Promote { node: node.clone() })
                .await?;
            done(json, v, &format!("{node} now leads {shard}"))?;
        }
        AdminCommand::RemoveReplica { shard, node } => {
            let (t, i) = parse_shard(&shard)?;
            let v = client
                .shard_op(&t, i, ManualOp::RemoveReplica { node: node.clone() })
                .await?;
            done(json, v, &format!("dropped {node}'s copy of {shard}"))?;
        }
        AdminCommand::Gossip { watch: true } => {
            let mut watch = client.watch_gossip().await?;
            while let Some(item) = tokio::select! {
                item = watch.next() => item?,
                _ = tokio::signal::ctrl_c() => None,
            } {
                match item {
                    WatchItem::Snapshot(s) if json => print_json(&s)?,
                    WatchItem::Snapshot(s) => {
                        print!("{}", output::gossip(&s));
                        println!("-- watching for changes (Ctrl-C to stop) --");
                    }
                    WatchItem::Changes {
                        at_unix_ms,
                        changes,
                    } if json => print_json(
                        &serde_json::json!({ "at_unix_ms": at_unix_ms, "changes": changes }),
                    )?,
                    WatchItem::Changes {
                        at_unix_ms,
                        changes,
                    } => print!("{}", output::changes(at_unix_ms, &changes)),
                }
                use std::io::Write;
                std::io::stdout().flush()?;
            }
        }
        AdminCommand::Row(_) => {} // served by rows(), above
    }
    client.close().await;
    Ok(())
}

/// Row commands, through the routing client: each key goes straight to the
/// node serving its shard. With `--session FILE` the session token is
/// loaded before and saved after.
async fn rows(args: &AdminOptions, command: RowCommand) -> anyhow::Result<()> {
    // Bad input is reported before anything is dialed.
    if let RowCommand::Batch { ops, .. } = &command {
        tstore_client::batch::parse_batch(ops).map_err(ClientError::Data)?;
    }
    let client = Client::connect(&[args.node], &args.certs, &args.client_name).await?;
    if let Some(path) = &args.session {
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the session file {}", path.display()))?;
            let token: SessionToken = serde_json::from_str(&text).with_context(|| {
                format!("the session file {} is not a session token", path.display())
            })?;
            client.resume_session(token);
        }
    }
    let json = args.output == Output::Json;
    let result = rows_command(&client, command, json).await;
    if let Some(path) = &args.session {
        std::fs::write(path, serde_json::to_string(&client.session())?)
            .with_context(|| format!("writing the session file {}", path.display()))?;
    }
    client.close().await;
    result
}

async fn rows_command(client: &Client, command: RowCommand, json: bool) -> anyhow::Result<()> {
    match command {
        RowCommand::Put { table, row } => {
            let version = client.put(&table, &row).await?;
            show(json, &serde_json::json!({ "version": version }), || {
                format!("ok (version {version})\n")
            })?;
        }
        RowCommand::Insert { table, row } => {
            let version = client.insert(&table, &row).await?;
            show(json, &serde_json::json!({ "version": version }), || {
                format!("ok (version {version})\n")
            })?;
        }
        RowCommand::Update {
            table,
            key,
            patch,
            if_version,
        } => {
            let version = client
                .update(&table, RowKey::parse(&key), &patch, if_version)
                .await?;
            show(json, &serde_json::json!({ "version": version }), || {
                format!("ok (version {version})\n")
            })?;
        }
        RowCommand::Delete {
            table,
            key,
            if_version,
        } => {
            client
                .delete(&table, RowKey::parse(&key), if_version)
                .await?;
            show(json, &serde_json::json!({ "deleted": key }), || {
                "deleted\n".to_owned()
            })?;
        }
        RowCommand::Get { table, key, read } => {
            let key = RowKey::parse(&key);
            match client.get(&table, key.clone(), read).await? {
                Some(r) if json => print_json(&row_json(&key, &r))?,
                Some(r) => println!("{}", row_line(&key, &r)),
                None => anyhow::bail!("row {key} of table {table:?} does not exist"),
            }
        }
        RowCommand::Scan {
            table,
            from,
            to,
            limit,
            read,
        } => {
            let rows = client
                .scan(
                    &table,
                    from.as_deref().map(RowKey::parse),
                    to.as_deref().map(RowKey::parse),
                    limit,
                    read,
                )
                .await?;
            for (k, r) in &rows {
                if json {
                    print_json(&row_json(k, r))?;
                } else {
                    println!("{}", row_line(k, r));
                }
            }
            if !json {
                println!("({} rows)", rows.len());
            }
        }
        RowCommand::Import {
            table,
            file,
            concurrency,
        } => {
            let report = crate::import::run(client, &table, &file, concurrency.max(1)).await?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "imported {} rows into {table:?} in {:.1}s ({:.0} rows/s); {} failed",
                    report.imported,
                    report.seconds,
                    report.rows_per_sec,
                    report.failed.len()
                );
                for (line, why) in report.failed.iter().take(20) {
                    println!("  line {line}: {why}");
                }
            }
            if !report.failed.is_empty() {
                anyhow::bail!("{} rows were not imported", report.failed.len());
            }
        }
        RowCommand::Batch { table, ops } => {
            let ops = tstore_client::batch::parse_batch(&ops).map_err(ClientError::Data)?;
            let results = client.batch(&table, ops).await?;
            if json {
                print_json(&serde_json::json!({ "results": results }))?;
            } else {
                for (i, r) in results.iter().enumerate() {
                    match r {
                        OpResult::Written { version } => println!("{i}: ok (version {version})"),
                        OpResult::Deleted { .. } => println!("{i}: deleted"),
                        OpResult::Batch(_) => println!("{i}: ok"),
                    }
                }
            }
        }
    }
    Ok(())
}
