//! Fitness functions for the layering of ARCHITECTURE.md: the domain knows
//! nothing of async, I/O, clocks or randomness; the runtime knows nothing of
//! the production adapters or the simulator.

use std::fs;
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of code (comments stripped) in `dir` that contain any of `banned`.
fn offenders(dir: &str, banned: &[&str]) -> Vec<String> {
    offenders_allowing(dir, banned, &[])
}

/// As [`offenders`], with the phrases `allowed` removed from each line
/// first (e.g. `tokio::time::Instant::now`, which turmoil simulates, where
/// `Instant::now` is banned for `std`'s, which it does not).
fn offenders_allowing(dir: &str, banned: &[&str], allowed: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    assert!(
        !files.is_empty(),
        "{dir} has no Rust files: the check would pass vacuously"
    );
    let mut found = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut code = line.split("//").next().unwrap_or("").to_string();
            for phrase in allowed {
                code = code.replace(phrase, "");
            }
            for word in banned {
                if code.contains(word) {
                    found.push(format!(
                        "{}:{}: `{word}` in {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn domain_is_pure() {
    let found = offenders(
        "src/domain",
        &[
            "async ",
            ".await",
            "tokio",
            "sqlx",
            "redis",
            "turmoil",
            "std::fs",
            "std::net",
            "Instant::now",
            "SystemTime",
            "Utc::now",
            "thread_rng",
            "rand::",
            "HashMap",
            "HashSet",
            "std::thread",
        ],
    );
    assert!(
        found.is_empty(),
        "the domain must stay pure:\n{}",
        found.join("\n")
    );
}

#[test]
fn runtime_knows_no_adapter() {
    let found = offenders_allowing(
        "src/runtime",
        &[
            "sqlx",
            "redis::",
            "turmoil",
            "axum",
            "HashMap",
            "HashSet",
            "thread_rng",
            "Instant::now",
        ],
        &["tokio::time::Instant::now"],
    );
    assert!(
        found.is_empty(),
        "the runtime must not name adapters:\n{}",
        found.join("\n")
    );
}
