//! The daemon's shape, checked: its modules import each other in no circle (each service
//! takes only what it needs; `daemon.rs` drives them and `api.rs` routes to them, and nothing
//! they use imports those two back).

use std::collections::{BTreeMap, BTreeSet};

/// Module name -> the sibling modules it names as `crate::<module>`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for ent in std::fs::read_dir(&src).unwrap() {
        let path = ent.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            // the shape is the shipped code's: a module's unit tests (at its end) and the tests'
            // own support (`testing.rs`, which builds a whole daemon) may use anything
            let shipped = text.find("#[cfg(test)]\nmod tests").map_or(text.as_str(), |at| &text[..at]);
            modules.insert(name, shipped.to_string());
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .filter(|(m, _)| !["lib", "main", "testing"].contains(&m.as_str()))
        .map(|(m, text)| {
            let mut used = BTreeSet::new();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let word: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if word != *m && names.contains(&word) {
                    used.insert(word);
                }
            }
            // `use crate::{a, b::C}` forms
            for (i, _) in text.match_indices("crate::{") {
                let group = &text[i + "crate::{".len()..];
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for part in group.split(',') {
                    let word = part.trim().split("::").next().unwrap_or("").to_string();
                    if word != *m && names.contains(&word) {
                        used.insert(word);
                    }
                }
            }
            (m.clone(), used)
        })
        .collect()
}

/// A circle through `from`, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    fn walk(g: &BTreeMap<String, BTreeSet<String>>, from: &str, path: &mut Vec<String>) -> bool {
        let last = path.last().cloned().unwrap_or_default();
        for next in g.get(&last).into_iter().flatten() {
            if next == from {
                path.push(next.clone());
                return true;
            }
            if !path.contains(next) {
                path.push(next.clone());
                if walk(g, from, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(graph, from, &mut path).then_some(path)
}

#[test]
fn the_daemons_modules_import_each_other_in_no_circle() {
    let graph = imports();
    assert!(graph.len() > 10, "the daemon's modules were not found: {graph:?}");
    assert!(graph["daemon"].contains("network"), "the import scan misses imports: {:?}", graph["daemon"]);
    let circles: Vec<String> = graph.keys().filter_map(|m| circle(&graph, m)).map(|c| c.join(" -> ")).collect();
    assert!(circles.is_empty(), "import circles in engine/daemon/src: {circles:#?}");
    // only the routers (the Docker API's over HTTP, the CRI's over gRPC) and the composition
    // root know the Daemon
    let knows_daemon: Vec<&String> = graph.iter().filter(|(_, used)| used.contains("daemon")).map(|(m, _)| m).collect();
    assert_eq!(knows_daemon, ["api", "cri"], "modules taking the whole Daemon");
}
