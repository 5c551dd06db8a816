//! `tstore admin ... import`: bulk-loads a JSON-lines file, one row per line,
//! `concurrency` puts at a time (each sent straight to its shard's primary), with a progress bar on stderr. A bad line is
//! reported with its number and reason and the rest still load; the command
//! fails at the end if any line did not.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use tstore_client::routing::Client;

#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub imported: u64,
    /// (line number, why) of every line that was not imported.
    pub failed: Vec<(usize, String)>,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

pub async fn run(
    client: &Client,
    table: &str,
    file: &Path,
    concurrency: usize,
) -> anyhow::Result<ImportReport> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let total = std::io::BufReader::new(&f).lines().count() as u64;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  eta {eta}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let lines = std::io::BufReader::new(f).lines().enumerate();
    let results: Vec<(usize, Result<(), String>)> = stream::iter(lines)
        .map(|(i, line)| {
            let bar = bar.clone();
            async move {
                let res = match line {
                    Ok(l) if l.trim().is_empty() => Ok(()),
                    Ok(l) => client
                        .put(table, l.trim())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("unreadable line: {e}")),
                };
                bar.inc(1);
                (i + 1, res)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let mut failed: Vec<(usize, String)> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| (*n, e.clone())))
        .collect();
    failed.sort();
    let imported = results.len() as u64 - failed.len() as u64;
    Ok(ImportReport {
        imported,
        failed,
        seconds,
        rows_per_sec: imported as f64 / seconds.max(1e-9),
    })
}
