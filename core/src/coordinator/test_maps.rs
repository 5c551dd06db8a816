//! A map the coordinator's tests share: `nodes` nodes (`n1`...), each in
//! the zone at its position in `zones` (none past its end), and a table
//! `t` of 2 hash shards x 3 copies: shard 0 led by n1 (backups n2, n3),
//! shard 1 led by n2 (backups n3, n1).

use crate::cluster_map::{ClusterMap, MapCommand, Sharding, TableSpec};

pub(crate) fn map(nodes: usize, zones: &[&str]) -> ClusterMap {
    let mut m = ClusterMap::default();
    for i in 1..=nodes {
        m.apply(&MapCommand::RegisterNode {
            node_id: format!("n{i}"),
            addr: String::new(),
            zone: zones.get(i - 1).map(|z| z.to_string()).unwrap_or_default(),
        })
        .unwrap();
    }
    m.apply(&MapCommand::CreateTable {
        spec: TableSpec {
            name: "t".into(),
            key: "id".into(),
            sharding: Sharding::Hash { shards: 2 },
            replicas: 3,
            min_copies: 0,
        },
        placement: vec![
            ("n1".into(), vec!["n2".into(), "n3".into()]),
            ("n2".into(), vec!["n3".into(), "n1".into()]),
        ],
    })
    .unwrap();
    m
}
