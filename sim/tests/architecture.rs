//! The simulator's own layering rules, checked over its source:
//! - it names no saga event type (neither wire name nor Rust variant): the
//!   saga's rules live in the domain, and the sim learns outcomes from rows;
//! - it uses nothing that breaks determinism (hash-ordered collections, OS
//!   entropy, the wall clock except to report wall time, unbiased select).

use std::path::{Path, PathBuf};

use purchase_saga::domain::EventType;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    files.sort();
    assert!(files.len() >= 10, "found only {} source files", files.len());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable source");
            (p, text)
        })
        .collect()
}

#[test]
fn sim_names_no_saga_event_type() {
    let mut names: Vec<String> = Vec::new();
    for t in EventType::ALL {
        names.push(t.as_str().to_string());
        names.push(format!("{t:?}"));
    }
    assert!(names.len() >= 30, "the domain has its event types");
    let mut found = Vec::new();
    for (path, text) in sources() {
        for name in &names {
            if text.contains(name.as_str()) {
                found.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "sim/ names saga event types:\n{}",
        found.join("\n")
    );
}

#[test]
fn sim_uses_nothing_nondeterministic() {
    let banned = [
        "HashMap",
        "HashSet",
        "thread_rng",
        "SystemTime",
        "new_v4",
        "select!",
    ];
    let mut found = Vec::new();
    for (path, text) in sources() {
        if path.ends_with("architecture.rs") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            for b in banned {
                if line.contains(b) {
                    found.push(format!("{}:{}: {b}", path.display(), n + 1));
                }
            }
            // The wall clock only measures the run for the report (tokio's
            // Instant inside a host is simulated time). Torture is the one
            // exception: it drives the real servers in real time and is not
            // deterministic by design (no simulated run reaches its code).
            let wall_clock = line.contains("Instant::now") && !line.contains("tokio::time::Instant");
            let real_time = path.components().any(|c| c.as_os_str() == "torture");
            if wall_clock && !real_time && !line.contains("wall") && !line.contains("started") {
                found.push(format!(
                    "{}:{}: Instant::now outside a wall-time report",
                    path.display(),
                    n + 1
                ));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The simulator's top-level modules (a file `src/x.rs` or a folder
/// `src/x/`) and, for each, the modules it names through `crate::`
/// (directly, or through a name `lib.rs` re-exports).
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(&src).expect("readable src") {
        let path = entry.expect("dir entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() || (path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main") {
            modules.insert(name);
        }
    }
    // `pub use faults::{FaultKind, ...};` in lib.rs: names to modules.
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let mut reexports: BTreeMap<String, String> = BTreeMap::new();
    for line in lib.lines().filter(|l| l.starts_with("pub use ")) {
        let rest = line.trim_start_matches("pub use ").trim_end_matches(';');
        if let Some((module, names)) = rest.split_once("::") {
            for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
                reexports.insert(name.trim().to_string(), module.to_string());
            }
        }
    }
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for module in &modules {
        let mut files = Vec::new();
        let file = src.join(format!("{module}.rs"));
        if file.exists() {
            files.push(file);
        } else {
            rust_files(&src.join(module), &mut files);
        }
        let mut named = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let after = &line[i + "crate::".len()..];
                    let mut names = Vec::new();
                    if let Some(inner) = after.strip_prefix('{') {
                        // `crate::{a, b::{c}, D}`: the names at the first depth.
                        let mut depth = 0;
                        let mut start = true;
                        for (j, c) in inner.char_indices() {
                            match c {
                                '{' => depth += 1,
                                '}' if depth == 0 => break,
                                '}' => depth -= 1,
                                ',' if depth == 0 => start = true,
                                c if c.is_whitespace() => {}
                                _ if start && depth == 0 => {
                                    names.push(ident(&inner[j..]));
                                    start = false;
                                }
                                _ => {}
                            }
                        }
                    } else {
                        names.push(ident(after));
                    }
                    for name in names {
                        let target = if modules.contains(&name) {
                            Some(name)
                        } else {
                            reexports.get(&name).cloned()
                        };
                        if let Some(target) = target.filter(|t| t != module) {
                            named.insert(target);
                        }
                    }
                }
            }
        }
        graph.insert(module.clone(), named);
    }
    graph
}

#[test]
fn the_simulators_modules_import_each_other_in_no_circle() {
    let graph = module_graph();
    assert!(graph.len() >= 20, "{graph:?}");
    assert!(
        graph["run"].contains("client"),
        "the graph reads imports: {graph:?}"
    );
    // Depth-first search; a module met again on the current path closes a
    // circle.
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            circles.push(circle.join(" -> "));
            return;
        }
        if !done.insert(node.to_string()) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, circles);
        }
        path.pop();
    }
    let mut circles = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}
