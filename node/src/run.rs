//! Running one node process: actix system on a multi-thread tokio runtime
//! (actors on the system thread, quinn and chitchat on the workers), start-up,
//! and a polite shutdown on SIGINT or SIGTERM.

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};
use tstore_actors::{start_node, NodeSettings};
use tstore_membership::NodeIdentity;
use tstore_transport::certs::CertDir;
use tstore_transport::Role;

use crate::config::NodeConfig;

/// How often a gossip watch looks for changes.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs a node until SIGINT/SIGTERM; returns once it has left the cluster.
pub fn run_node(config: NodeConfig) -> anyhow::Result<()> {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    system.block_on(async move {
        let identity = NodeIdentity::start(&config.data_dir, config.node_id.as_deref())?;
        let certs = CertDir::new(&config.certs);
        let tls = certs
            .identity(Role::Node, &identity.node_id)
            .with_context(|| {
                format!(
                    "loading the certificate of node {:?} (make it with `tstore cert create-node --dir {} --name {}`)",
                    identity.node_id,
                    config.certs.display(),
                    identity.node_id
                )
            })?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let handle = start_node(NodeSettings {
            identity,
            listen: config.listen,
            advertise: config.advertise,
            tls,
            limits: config.limits,
            membership: config.membership,
            watch_interval: WATCH_INTERVAL,
            data_dir: config.data_dir.clone(),
            control: config.control,
            lease: Some(config.lease),
            retention: config.retention,
            recovery_rate: config.recovery_rate,
            lmdb_map_size: config.lmdb_map_size,
            commit_linger: config.commit_linger,
        })
        .await?;
        if let Some(addr) = config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener on {addr}"))?;
            info!(%addr, "metrics at http://{addr}/metrics");
            tokio::spawn(crate::http::serve(listener, handle.observe.clone()));
        }
        let why = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal = why, "shutting down");
        tokio::select! {
            _ = handle.shutdown() => info!("left the cluster; bye"),
            _ = sigterm.recv() => warn!("second signal: stopping at once"),
            _ = sigint.recv() => warn!("second signal: stopping at once"),
        }
        actix_rt::System::current().stop();
        Ok(())
    })
}
