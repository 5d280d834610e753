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
