//! The `tstore` binary.
//!
//! - [`cli`]: the command line (`tstore cert|start|admin|demo|bench|import`).
//! - [`config`]: node configuration from a TOML file and flags (flags win).
//! - [`run`]: starting a node process and shutting it down on SIGINT/SIGTERM.
//! - [`demo`]: a local 3-node cluster with generated certificates.
//! - [`bench`]: `tstore bench`, a closed-loop load over the routing client.
//! - [`import`]: `tstore admin import`, rows from a JSON-lines file.
//! - [`http`]: the node's HTTP listener (`--metrics-listen`).
//! - [`console`]: the live web console that listener serves.
//! - [`metrics`]: the node's figures in Prometheus text, for `/metrics`.
//!
//! The Rust client the CLI is built on is the `tstore-client` crate.

pub mod bench;
pub mod cli;
pub mod config;
pub mod console;
pub mod demo;
pub mod http;
pub mod import;
pub mod metrics;
mod output;
pub mod run;
