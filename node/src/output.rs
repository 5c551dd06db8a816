//! Text rendering of admin replies (JSON output is serde's).

use std::fmt::Write;

use tstore_core::cluster_map::{MapEvent, Sharding, Table};
use tstore_core::wire::{ClusterStatus, CopyReport, NodeStats};
use tstore_membership::{GossipChange, GossipSnapshot, Member, NodeStatus};

/// `HH:MM:SS.mmm` (UTC) of a unix time in milliseconds.
pub fn clock(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn grid<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (c, w) in cells.zip(widths) {
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

fn sharding(t: &Table) -> String {
    let (kind, created) = match &t.spec.sharding {
        Sharding::Hash { shards } => ("hash", *shards as usize),
        Sharding::Range { splits } => ("range", splits.len() + 1),
    };
    let now = t.shards.len();
    if now == created {
        format!("{kind}, {now} shards")
    } else {
        format!("{kind}, {now} shards ({created} at creation)")
    }
}

/// Where a shard came from, and what it took in: `split from <parent> at
/// epoch <e>, <time>`, `took in <absorbed> (<keys>) at epoch <e>, <time>`,
/// `merging into <shard>` (`sealed`), joined by `; `; `-` for none.
fn lineage(t: &Table, s: &tstore_core::cluster_map::Shard) -> String {
    let name = &t.spec.name;
    let mut parts = Vec::new();
    if let Some(o) = &s.origin {
        parts.push(format!(
            "split from {name}/{} at epoch {}, {}",
            o.parent,
            o.epoch,
            clock(o.at_unix_ms)
        ));
    }
    if let Some(m) = &s.merged {
        parts.push(format!(
            "took in {name}/{} ({}) at epoch {}, {}",
            m.absorbed,
            m.range,
            m.epoch,
            clock(m.at_unix_ms)
        ));
    }
    if let Some(m) = &s.merging {
        parts.push(format!(
            "merging into {name}/{}{} since {} ({})",
            m.into,
            if m.sealed {
                ", sealed: writes wait"
            } else {
                ""
            },
            clock(m.since_unix_ms),
            m.why
        ));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

/// The table list.
pub fn tables(map_version: u64, tables: &[Table]) -> String {
    let rows: Vec<[String; 4]> = tables
        .iter()
        .map(|t| {
            [
                t.spec.name.clone(),
                t.spec.key.clone(),
                sharding(t),
                t.spec.replicas.to_string(),
            ]
        })
        .collect();
    let mut out = grid(["TABLE", "KEY", "SHARDING", "REPLICAS"], &rows);
    let _ = writeln!(out, "({} tables, map version {map_version})", tables.len());
    out
}

/// A table's first line: its definition and the map version; then its
/// placement rule, if it has one.
fn table_line(map_version: u64, t: &Table) -> String {
    let mut out = format!(
        "table {} (key {:?}, {}, {} replicas, writes need {}; map version {map_version})\n",
        t.spec.name,
        t.spec.key,
        sharding(t),
        t.spec.replicas,
        t.spec.min_copies()
    );
    if let Some(rule) = &t.placement {
        let _ = writeln!(out, "placement: {rule}");
    }
    out
}

/// One table and its shards.
pub fn table(map_version: u64, t: &Table) -> String {
    let mut out = table_line(map_version, t);
    let rows: Vec<[String; 6]> = t
        .shards
        .iter()
        .map(|s| {
            [
                format!("{}/{}", t.spec.name, s.index),
                s.range.to_string(),
                s.replicas.primary.clone(),
                or_dash(&s.replicas.backups.join(",")).to_owned(),
                s.replicas.epoch.to_string(),
                lineage(t, s),
            ]
        })
        .collect();
    out.push_str(&grid(
        ["SHARD", "KEYS", "PRIMARY", "BACKUPS", "EPOCH", "ORIGIN"],
        &rows,
    ));
    out
}

/// A shard's health from its copies' reports: `healthy`; `recovering` (a
/// copy is being built); `under-replicated` (fewer members than the table's
/// factor, or a member that does not answer); or `unavailable` (its primary
/// does not answer, failed, or has no lease); with the largest lag in
/// entries of a backup or learner behind the primary.
pub fn shard_health(t: &Table, shard: u32, reports: &[CopyReport]) -> (&'static str, u64) {
    let s = &t.shards[shard as usize];
    let of = |n: &str| {
        reports
            .iter()
            .find(|r| r.shard == shard && r.node == n)
            .and_then(|r| r.status.as_ref().ok())
    };
    let Some(primary) = of(&s.replicas.primary).filter(|p| p.state == "serving") else {
        return ("unavailable", 0);
    };
    let lag = s
        .replicas
        .backups
        .iter()
        .chain(&s.replicas.learners)
        .filter_map(|b| of(b))
        .map(|c| primary.applied.saturating_sub(c.applied))
        .max()
        .unwrap_or(0);
    let silent = s.replicas.backups.iter().any(|b| of(b).is_none());
    let state = if !s.replicas.learners.is_empty() {
        "recovering"
    } else if silent || s.replicas.members().count() < t.spec.replicas as usize {
        "under-replicated"
    } else {
        "healthy"
    };
    (state, lag)
}

/// One table, its shards and the state of every copy.
pub fn table_with_copies(
    map_version: u64,
    t: &Table,
    reports: &[CopyReport],
    verify: bool,
) -> String {
    let mut out = table_line(map_version, t);
    let rows: Vec<[String; 8]> = t
        .shards
        .iter()
        .map(|s| {
            let (state, lag) = shard_health(t, s.index, reports);
            let mut copies = String::new();
            if verify {
                let sums: Vec<Option<(u64, u64)>> = reports
                    .iter()
                    .filter(|r| r.shard == s.index && s.replicas.members().any(|m| *m == r.node))
                    .map(|r| {
                        let c = r.status.as_ref().ok()?;
                        Some((c.applied, c.checksum?))
                    })
                    .collect();
                // Copies at different log positions are not comparable yet
                // (a backup applies the last entries at the next heartbeat).
                copies = if sums.iter().any(Option::is_none) {
                    "unknown".into()
                } else if sums.iter().any(|c| c.map(|c| c.0) != sums[0].map(|c| c.0)) {
                    "catching-up".into()
                } else if sums.iter().all(|c| *c == sums[0]) {
                    "identical".into()
                } else {
                    "DIFFER".into()
                };
            }
            [
                format!("{}/{}", t.spec.name, s.index),
                s.range.to_string(),
                s.replicas.primary.clone(),
                or_dash(&s.replicas.backups.join(",")).to_owned(),
                or_dash(&s.replicas.learners.join(",")).to_owned(),
                s.replicas.epoch.to_string(),
                state.to_string(),
                if verify {
                    format!("{lag} {copies}")
                } else {
                    lag.to_string()
                },
            ]
        })
        .collect();
    out.push_str(&grid(
        [
            "SHARD",
            "KEYS",
            "PRIMARY",
            "BACKUPS",
            "LEARNERS",
            "EPOCH",
            "STATE",
            if verify { "LAG ROWS" } else { "LAG" },
        ],
        &rows,
    ));
    for s in t
        .shards
        .iter()
        .filter(|s| s.origin.is_some() || s.merged.is_some() || s.merging.is_some())
    {
        let _ = writeln!(out, "{}/{}: {}", t.spec.name, s.index, lineage(t, s));
    }
    let busy: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let st = r.status.as_ref().ok()?;
            (st.state != "serving").then(|| {
                format!(
                    "  {}/{} on {} ({}): {}",
                    t.spec.name, r.shard, r.node, st.role, st.state
                )
            })
        })
        .collect();
    out.push_str(&copy_lines(t, reports));
    out.push_str(&away_lines(t));
    if !busy.is_empty() {
        out.push_str("copies not serving:\n");
        out.push_str(&busy.join("\n"));
        out.push('\n');
    }
    let unreachable: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            r.status
                .as_ref()
                .err()
                .map(|e| format!("  {}/{} on {}: {e}", t.spec.name, r.shard, r.node))
        })
        .collect();
    if !unreachable.is_empty() {
        out.push_str("copies not answering:\n");
        out.push_str(&unreachable.join("\n"));
        out.push('\n');
    }
    out
}

/// The copies that left with a down node and may come back (the
/// coordinator re-adds that node first, and waits `rereplicate_after_secs`
/// before copying the shard elsewhere).
fn away_lines(t: &Table) -> String {
    let lines: Vec<String> = t
        .shards
        .iter()
        .flat_map(|s| {
            s.replicas.away.iter().map(move |a| {
                format!(
                    "  {}/{}: {} (down since {})",
                    t.spec.name,
                    s.index,
                    a.node,
                    clock(a.since_unix_ms)
                )
            })
        })
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "copies away with their node (re-added first when it is back):\n{}\n",
            lines.join("\n")
        )
    }
}

/// One line per copy that answered: its role, log position, rows (counted
/// only with `--verify`), and the log it retains.
fn copy_lines(t: &Table, reports: &[CopyReport]) -> String {
    let num = |n: Option<u64>| n.map_or("-".into(), |n| n.to_string());
    let rows: Vec<[String; 9]> = reports
        .iter()
        .filter_map(|r| {
            let c = r.status.as_ref().ok()?;
            Some([
                format!("{}/{}", t.spec.name, r.shard),
                r.node.clone(),
                c.role.clone(),
                c.applied.to_string(),
                num(c.rows),
                num(c.row_bytes),
                c.log_entries.to_string(),
                c.log_start.to_string(),
                c.log_bytes.to_string(),
            ])
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    grid(
        [
            "COPY",
            "NODE",
            "ROLE",
            "APPLIED",
            "ROWS",
            "ROW BYTES",
            "LOG ENTRIES",
            "LOG START",
            "LOG BYTES",
        ],
        &rows,
    )
}

/// A node's storage figures.
pub fn node_stats(s: &NodeStats) -> String {
    let opt = |n: Option<u64>| n.map_or("unknown".into(), |n| n.to_string());
    let mut out = format!("node {}, data dir {}\n", s.node_id, s.data_dir);
    let _ = writeln!(out, "  data dir bytes:     {}", s.data_dir_bytes);
    let _ = writeln!(out, "  lmdb map size:      {}", s.lmdb_map_size);
    let _ = writeln!(out, "  lmdb used bytes:    {}", s.lmdb_used_bytes);
    let _ = writeln!(out, "  shard copies:       {}", s.copies);
    let _ = writeln!(
        out,
        "  entries logged:     {} (since start)",
        s.entries_logged
    );
    let _ = writeln!(
        out,
        "  disk bytes written: {} (since start)",
        opt(s.disk_write_bytes)
    );
    let _ = writeln!(out, "  bytes per entry:    {}", opt(s.bytes_per_entry));
    let _ = writeln!(
        out,
        "  group commits:      {} (since start; entries per commit: {})",
        s.group_commits,
        if s.group_commits == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", s.entries_logged as f64 / s.group_commits as f64)
        }
    );
    if let Some(why) = &s.storage_error {
        let _ = writeln!(out, "  STORAGE FAILED:     {why}");
    }
    let r = &s.recovery;
    let _ = writeln!(out, "  recovery since start:");
    let _ = writeln!(
        out,
        "    copies rejoined from their own rows: {}",
        r.rejoined_from_own_data
    );
    let _ = writeln!(
        out,
        "    snapshots installed:  {} ({} bytes)",
        r.snapshots_installed, r.snapshot_bytes_installed
    );
    let _ = writeln!(
        out,
        "    snapshots served:     {} ({} bytes)",
        r.snapshots_served, r.snapshot_bytes_served
    );
    let _ = writeln!(
        out,
        "    log entries sent to copies catching up: {}",
        r.log_entries_sent
    );
    out
}

/// The coordinator's decisions.
pub fn events(map_version: u64, events: &[MapEvent]) -> String {
    let rows: Vec<[String; 5]> = events
        .iter()
        .map(|e| {
            [
                clock(e.at_unix_ms),
                e.subject.clone(),
                e.epoch.map_or("-".into(), |x| x.to_string()),
                e.what.clone(),
                e.why.clone(),
            ]
        })
        .collect();
    let mut out = grid(["WHEN", "SHARD", "EPOCH", "WHAT", "WHY"], &rows);
    let _ = writeln!(out, "({} events, map version {map_version})", events.len());
    out
}

/// The control plane status.
pub fn cluster(s: &ClusterStatus) -> String {
    let mut out = format!(
        "node {} is {}; leader (coordinator): {}; term {}; applied index {} of {}; map version {}\n\
         log compacted up to {} (last snapshot at {})\n",
        s.node_id,
        s.role,
        s.leader.as_deref().unwrap_or("none"),
        s.term,
        s.applied_index,
        s.last_log_index,
        s.map_version,
        s.purged_index,
        s.snapshot_index
    );
    let live = |l: bool| if l { "live" } else { "down" }.to_owned();
    let rows: Vec<[String; 3]> = s
        .voters
        .iter()
        .map(|(n, l)| [n.clone(), "voter".into(), live(*l)])
        .chain(
            s.learners
                .iter()
                .map(|(n, l)| [n.clone(), "learner".into(), live(*l)]),
        )
        .collect();
    out.push_str(&grid(["NODE", "RAFT ROLE", "GOSSIP"], &rows));
    out
}

/// The member list as an aligned table.
pub fn members(observer: &str, members: &[Member]) -> String {
    let rows: Vec<[String; 7]> = members
        .iter()
        .map(|m| {
            [
                m.node_id.clone(),
                match &m.storage_error {
                    Some(_) => format!("{} (storage failed)", m.status),
                    None => m.status.to_string(),
                },
                m.generation.to_string(),
                m.addr.clone(),
                or_dash(&m.zone).to_owned(),
                or_dash(&m.roles.join(",")).to_owned(),
                or_dash(&m.version).to_owned(),
            ]
        })
        .collect();
    let mut out = grid(
        [
            "NODE",
            "STATUS",
            "GENERATION",
            "ADDRESS",
            "ZONE",
            "ROLES",
            "VERSION",
        ],
        &rows,
    );
    let live = members
        .iter()
        .filter(|m| m.status == NodeStatus::Live)
        .count();
    let _ = writeln!(
        out,
        "({live} of {} live, as seen by {observer})",
        members.len()
    );
    for m in members {
        if let Some(why) = &m.storage_error {
            let _ = writeln!(
                out,
                "{}: its shard store cannot write ({why}); its copies fail over to other nodes until it can",
                m.node_id
            );
        }
    }
    out
}

/// The raw gossip state.
pub fn gossip(s: &GossipSnapshot) -> String {
    let mut out = String::new();
    let seeds: Vec<String> = s.seeds.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "gossip state seen by {} (cluster {:?}, seeds: {})",
        s.observer,
        s.cluster_id,
        or_dash(&seeds.join(","))
    );
    for n in &s.nodes {
        let _ = writeln!(
            out,
            "{} gen {} @ {}  {}  heartbeat {}  max_version {}",
            n.node_id, n.generation, n.gossip_addr, n.status, n.heartbeat, n.max_version
        );
        for (k, v) in &n.keys {
            let deleted = if v.deleted { "  (deleted)" } else { "" };
            let _ = writeln!(out, "    {k} = {:?}  (v{}){deleted}", v.value, v.version);
        }
    }
    out
}

/// One line per change, stamped with the observer's clock.
pub fn changes(at_unix_ms: u64, changes: &[GossipChange]) -> String {
    let mut out = String::new();
    for c in changes {
        let _ = writeln!(out, "{} {c}", clock(at_unix_ms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_away_are_listed_with_when_their_node_went_down() {
        use tstore_core::cluster_map::{Away, ClusterMap, MapCommand, Sharding, TableSpec};
        let mut m = ClusterMap::default();
        for n in ["n1", "n2"] {
            m.apply(&MapCommand::RegisterNode {
                node_id: n.into(),
                addr: String::new(),
                zone: String::new(),
            })
            .unwrap();
        }
        m.apply(&MapCommand::CreateTable {
            spec: TableSpec {
                name: "t".into(),
                key: "id".into(),
                sharding: Sharding::Hash { shards: 2 },
                replicas: 1,
                min_copies: 0,
            },
            placement: vec![("n1".into(), vec![]), ("n2".into(), vec![])],
        })
        .unwrap();
        let mut t = m.tables["t"].clone();
        assert_eq!(away_lines(&t), "", "nothing away, nothing said");
        t.shards[1].replicas.away.push(Away {
            node: "n3".into(),
            since_unix_ms: 3_723_045,
        });
        assert_eq!(
            away_lines(&t),
            "copies away with their node (re-added first when it is back):\n  t/1: n3 (down since 01:02:03.045Z)\n"
        );
    }

    #[test]
    fn clock_formats_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00.000Z");
        assert_eq!(clock(86_400_000 + 3_723_045), "01:02:03.045Z");
    }

    #[test]
    fn member_table_aligns_and_counts() {
        let m = |id: &str, status| Member {
            node_id: id.into(),
            generation: 7,
            status,
            addr: "127.0.0.1:7401".into(),
            zone: String::new(),
            roles: vec!["data".into()],
            version: "0.1.0".into(),
            heartbeat: 3,
            storage_error: None,
        };
        let out = members(
            "n1",
            &[m("n1", NodeStatus::Live), m("node-two", NodeStatus::Down)],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NODE      STATUS"), "{out}");
        assert!(lines[2].starts_with("node-two  down"), "{out}");
        assert_eq!(lines[3], "(1 of 2 live, as seen by n1)");
        // A node whose store cannot write says so.
        let full = Member {
            storage_error: Some("the shard store is full".into()),
            ..m("n3", NodeStatus::Live)
        };
        let out = members("n1", &[full]);
        assert!(out.contains("live (storage failed)"), "{out}");
        assert!(
            out.contains("n3: its shard store cannot write (the shard store is full)"),
            "{out}"
        );
    }
}
