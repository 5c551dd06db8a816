//! The house's layering, checked on the source and the lock file:
//! - the crate graph: `tstore-core` and `tstore-transport` depend on no
//!   other tstore crate, `tstore-membership` on core only, `tstore-client`
//!   on core and transport only, `tstore-actors` on the three bottom crates,
//!   and only `tstore-node` (the binary) and the tests on the actors;
//! - `tstore-core` names serde, serde_json and thiserror only, and no
//!   client pulls in the actor framework, Raft or LMDB (the transitive
//!   dependencies of `tstore-client`, from `Cargo.lock`);
//! - within each crate, no two files import each other, directly or through
//!   others: the module graph (edges from `crate::`/`super::` paths, outside
//!   test modules) has no cycle.
//!
//! Plain file reading: it runs in milliseconds and needs no tool beyond the
//! test harness.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// `Cargo.lock` as package name → names of its dependencies (versions
/// merged: a name stands for every version of it).
fn lock_graph() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("Cargo.lock")).expect("read Cargo.lock");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in text.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = BTreeSet::new();
        let mut in_deps = false;
        for line in package.lines().map(str::trim) {
            if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_owned());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line == "]" {
                in_deps = false;
            } else if in_deps {
                let dep = line.trim_matches(|c| c == '"' || c == ',');
                let dep = dep.split(' ').next().unwrap_or(dep);
                deps.insert(dep.to_owned());
            }
        }
        if let Some(name) = name {
            graph.entry(name).or_default().extend(deps);
        }
    }
    graph
}

fn closure(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(p) = todo.pop() {
        for d in graph.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn crates_depend_only_downward() {
    let graph = lock_graph();
    let tstore_deps = |krate: &str| -> BTreeSet<&str> {
        graph[krate]
            .iter()
            .filter(|d| d.starts_with("tstore-"))
            .map(String::as_str)
            .collect()
    };
    let expect: [(&str, &[&str]); 6] = [
        ("tstore-core", &[]),
        ("tstore-transport", &[]),
        ("tstore-membership", &["tstore-core"]),
        ("tstore-client", &["tstore-core", "tstore-transport"]),
        (
            "tstore-actors",
            &["tstore-core", "tstore-membership", "tstore-transport"],
        ),
        (
            "tstore-node",
            &[
                "tstore-actors",
                "tstore-client",
                "tstore-core",
                "tstore-membership",
                "tstore-transport",
            ],
        ),
    ];
    for (krate, deps) in expect {
        assert_eq!(
            tstore_deps(krate),
            deps.iter().copied().collect::<BTreeSet<_>>(),
            "{krate}'s tstore dependencies"
        );
    }
}

#[test]
fn the_core_does_no_io_and_the_client_links_no_server() {
    let graph = lock_graph();
    let manifest =
        std::fs::read_to_string(root().join("core/Cargo.toml")).expect("read core/Cargo.toml");
    let deps: BTreeSet<&str> = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] section")
        .split("\n[")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .filter(|n| !n.is_empty() && !n.starts_with('#'))
        .collect();
    assert_eq!(
        deps,
        BTreeSet::from(["serde", "serde_json", "thiserror"]),
        "tstore-core names serde-family crates and thiserror only"
    );
    let core = closure(&graph, "tstore-core");
    for io in ["tokio", "actix", "heed", "openraft", "quinn", "chitchat"] {
        assert!(!core.contains(io), "tstore-core depends on {io}");
    }
    let client = closure(&graph, "tstore-client");
    for server in [
        "actix",
        "actix-rt",
        "openraft",
        "heed",
        "chitchat",
        "tstore-actors",
    ] {
        assert!(!client.contains(server), "tstore-client links {server}");
    }
}

/// A crate's modules: module path (`shard::actor`) → its source, with test
/// modules cut off.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src").with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts
            .last()
            .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
        {
            parts.pop();
        }
        if parts.first().is_some_and(|p| p == "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        out.insert(parts.join("::"), code);
    }
    out
}

/// Edges module → module it names, by the longest known module prefix of
/// each `crate::` or `super::` path. A module's own children do not count
/// (declaring or re-exporting a child is not depending on it).
fn module_graph(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, code) in mods {
        let mut edges = BTreeSet::new();
        for (prefix, base) in [("crate::", String::new()), ("super::", parent(name))] {
            for (i, _) in code.match_indices(prefix) {
                let before = code[..i].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let path: String = code[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut target = base.clone();
                let mut best = None;
                for seg in path.split("::").filter(|s| !s.is_empty()) {
                    target = if target.is_empty() {
                        seg.to_owned()
                    } else {
                        format!("{target}::{seg}")
                    };
                    if mods.contains_key(&target) {
                        best = Some(target.clone());
                    }
                }
                let target = best.unwrap_or_else(|| base.clone());
                let is_child = target.starts_with(&format!("{name}::")) || name.is_empty();
                if target != *name && !is_child {
                    edges.insert(target);
                }
            }
        }
        graph.insert(name.clone(), edges);
    }
    graph
}

fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default()
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == m).expect("on the stack");
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_file_imports_another_that_imports_it_back() {
    for krate in [
        "core",
        "transport",
        "membership",
        "client",
        "actors",
        "node",
    ] {
        let mods = modules(&root().join(krate).join("src"));
        assert!(mods.len() > 1, "{krate}: no modules found");
        let graph = module_graph(&mods);
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate}: import cycle {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    let mods: BTreeMap<String, String> = [
        ("a".to_owned(), "use crate::b::X;".to_owned()),
        ("b".to_owned(), "fn f() { crate::c::g() }".to_owned()),
        ("c".to_owned(), "use super::a;".to_owned()),
        ("d".to_owned(), "use crate::a::Y;".to_owned()),
    ]
    .into_iter()
    .collect();
    let cycle = find_cycle(&module_graph(&mods)).expect("a -> b -> c -> a");
    assert_eq!(cycle, ["a", "b", "c", "a"]);
    let mut acyclic = mods.clone();
    acyclic.insert("c".into(), "use crate::d::Z;".into());
    acyclic.insert("d".into(), String::new());
    assert_eq!(find_cycle(&module_graph(&acyclic)), None);
}
