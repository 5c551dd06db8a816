//! Network partitions between nodes of one test cluster, made with
//! `iptables` on the loopback interface.
//!
//! Every node of a [`crate::Cluster`] listens on one UDP port of the
//! cluster's own loopback address and sends all its peer traffic (gossip,
//! Raft, replication) from that port, while clients dial from ephemeral
//! ports. So a DROP rule matching (source port, destination port) cuts two
//! nodes apart and leaves every client session to either of them working:
//! exactly a partition between servers. Rules go in the receiver's INPUT
//! chain (silent loss; a DROP in OUTPUT makes `sendto` fail instead) and
//! match this cluster's address only, so parallel tests are not touched.
//! Dropping the [`Partition`] deletes its rules, also when a test fails.
//! [`Partition::lossy`] drops a random share of the packets instead
//! (`-m statistic --mode random`). Needs root and the `iptables` command
//! (`.ci/run` installs it).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

/// DROP rules in force until dropped.
pub struct Partition {
    rules: Vec<Vec<String>>,
}

fn rule(from: SocketAddr, to: SocketAddr) -> Vec<String> {
    lossy_rule(from, to, None)
}

/// A DROP rule for packets from `from` to `to`, all of them or, with
/// `probability`, that share of them at random.
fn lossy_rule(from: SocketAddr, to: SocketAddr, probability: Option<f64>) -> Vec<String> {
    let mut r: Vec<String> = [
        "INPUT",
        "-p",
        "udp",
        "-s",
        &from.ip().to_string(),
        "--sport",
        &from.port().to_string(),
        "-d",
        &to.ip().to_string(),
        "--dport",
        &to.port().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = probability {
        r.extend(
            [
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &format!("{p:.3}"),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
    }
    r.extend(["-j".to_owned(), "DROP".to_owned()]);
    r
}

fn iptables(action: &str, rule: &[String]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .arg(action)
        .args(rule)
        .output()
        .map_err(|e| format!("cannot run iptables (install it; tests need root): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {action} {} failed: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Partition {
    /// Cuts `node` off from every one of `others`, both ways.
    pub fn isolate(node: SocketAddr, others: &[SocketAddr]) -> Result<Self, String> {
        let mut links = Vec::new();
        for &o in others {
            links.push((node, o));
            links.push((o, node));
        }
        Self::drop_links(&links)
    }

    /// Drops every packet from `from` to `to` (one way).
    pub fn one_way(from: SocketAddr, to: &[SocketAddr]) -> Result<Self, String> {
        let links: Vec<_> = to.iter().map(|&t| (from, t)).collect();
        Self::drop_links(&links)
    }

    /// Cuts every node of each group off from every node of the other
    /// groups, both ways (`[[a], [b], [c]]`: nobody hears anybody).
    pub fn split(groups: &[Vec<SocketAddr>]) -> Result<Self, String> {
        let mut links = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            for (j, h) in groups.iter().enumerate() {
                if i != j {
                    for &a in g {
                        links.extend(h.iter().map(|&b| (a, b)));
                    }
                }
            }
        }
        Self::drop_links(&links)
    }

    /// Drops each packet between any two of `nodes` (both ways) with
    /// `probability` (0 to 1).
    pub fn lossy(nodes: &[SocketAddr], probability: f64) -> Result<Self, String> {
        let mut p = Partition { rules: Vec::new() };
        for &a in nodes {
            for &b in nodes {
                if a != b {
                    let r = lossy_rule(a, b, Some(probability));
                    iptables("-I", &r)?;
                    p.rules.push(r);
                }
            }
        }
        Ok(p)
    }

    fn drop_links(links: &[(SocketAddr, SocketAddr)]) -> Result<Self, String> {
        let mut p = Partition { rules: Vec::new() };
        for &(from, to) in links {
            let r = rule(from, to);
            iptables("-I", &r)?;
            p.rules.push(r);
        }
        Ok(p)
    }

    /// Removes the rules (the same as dropping the partition).
    pub fn heal(self) {}
}

/// Deletes every INPUT rule for packets to `ip` (left by a test process
/// killed before its guards ran), so that a cluster given the same loopback
/// address starts whole. Returns how many rules it deleted.
pub fn sweep(ip: IpAddr) -> usize {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
    else {
        return 0;
    };
    let mark = format!(" -d {ip}/32 ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&mark))
        .filter_map(|l| l.strip_prefix("-A INPUT "))
        .filter(|rest| {
            let mut rule = vec!["INPUT".to_owned()];
            rule.extend(rest.split_whitespace().map(str::to_owned));
            iptables("-D", &rule).is_ok()
        })
        .count()
}

impl Drop for Partition {
    fn drop(&mut self) {
        for r in self.rules.drain(..) {
            if let Err(e) = iptables("-D", &r) {
                eprintln!("could not remove a partition rule: {e}");
            }
        }
    }
}
