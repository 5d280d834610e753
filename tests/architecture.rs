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

/// The methods of `trait name` in the Rust source `text` (comments
/// stripped) that have a default body: `fn` items of the trait whose
/// signature ends in `{` rather than `;`.
fn methods_with_default_bodies(text: &str, name: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let header = format!("pub trait {name}");
    let start = code
        .find(&format!("{header}:"))
        .or_else(|| code.find(&format!("{header} ")))
        .unwrap_or_else(|| panic!("no `{header}` found: the check would pass vacuously"));
    let open = start + code[start..].find('{').expect("a trait has a body");
    let body = &code[open + 1..];
    let mut depth = 0usize;
    let mut found = Vec::new();
    let mut methods = 0;
    let mut rest = body;
    let mut prev = ' ';
    while let Some(c) = rest.chars().next() {
        if c == '}' && depth == 0 {
            break; // the end of the trait
        }
        if depth == 0 && rest.starts_with("fn ") && !(prev.is_alphanumeric() || prev == '_') {
            methods += 1;
            let fn_name: String = rest[3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let end = rest.find([';', '{']).expect("a signature ends");
            if rest.as_bytes()[end] == b'{' {
                found.push(format!("{name}::{fn_name}"));
            }
            // Skip the signature; a body, if any, is skipped brace by brace.
            rest = &rest[end..];
            prev = ' ';
            continue;
        }
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        prev = c;
        rest = &rest[c.len_utf8()..];
    }
    assert!(
        methods > 0,
        "trait {name} has no methods: the check would pass vacuously"
    );
    found
}

/// Every wrapper of the store and bus ports (torture's fault boundary, the
/// simulator's store and bus) forwards every method, batch ones included:
/// with no default body, a method a wrapper does not write is a compile
/// error instead of a silent fallback to another path (issue 23: torture's
/// `FaultyTx` ran the single-row statements where `serve` runs the batched
/// ones, through the defaults).
#[test]
fn port_traits_have_no_default_bodies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = fs::read_to_string(root.join("src/runtime/store.rs")).unwrap();
    let bus = fs::read_to_string(root.join("src/runtime/bus.rs")).unwrap();
    let mut found = methods_with_default_bodies(&store, "Store");
    found.extend(methods_with_default_bodies(&store, "StoreTx"));
    found.extend(methods_with_default_bodies(&bus, "Bus"));
    assert!(
        found.is_empty(),
        "port methods with a default body (a wrapper that forgets them falls back to it): {found:?}"
    );
}

#[test]
fn the_default_body_check_sees_a_default_body() {
    let text = "pub trait Port: Send {\n    /// a { brace in a comment\n    async fn a(&self) -> Result<(), ()>;\n    \
                fn b(&self) -> Vec<u8> {\n        if true { vec![] } else { vec![1] }\n    }\n    fn c(&self);\n}\n\
                pub trait Other { fn d(&self) {} }\n";
    assert_eq!(methods_with_default_bodies(text, "Port"), ["Port::b"]);
    assert_eq!(methods_with_default_bodies(text, "Other"), ["Other::d"]);
}
