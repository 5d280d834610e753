//! The fuzzers' committed corpora seed these tests, so every input a fuzzer
//! ever kept (including past crashes, once fixed) runs on every `cargo test`
//! without the nightly toolchain.

use std::path::PathBuf;

use purchase_saga::adapters::http::body::parse_order_body_checked;
use purchase_saga::domain::Event;
use purchase_saga::runtime::memory::Scheduler;
use purchase_saga::workload::FuzzCase;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "corpus {target} has only {} inputs",
        files.len()
    );
    files
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect()
}

#[test]
fn decode_event_corpus() {
    let mut decoded = 0;
    for (path, bytes) in corpus("decode_event") {
        if let Ok(event) = Event::decode(&bytes) {
            decoded += 1;
            let again = Event::decode(event.encode().as_bytes()).expect("re-encoded event decodes");
            assert_eq!(again, event, "{}", path.display());
        }
    }
    assert!(
        decoded >= 17,
        "the corpus holds one valid event per type, {decoded} decoded"
    );
}

#[test]
fn scenario_runtime_corpus() {
    for (path, bytes) in corpus("scenario_runtime") {
        let case = FuzzCase::from_bytes(&bytes);
        let report = Scheduler::run_scenario(&case.scenario, case.seed, case.duplicate_per_mille);
        assert!(
            report.violations.is_empty(),
            "{}: {:#?}",
            path.display(),
            report.violations
        );
    }
}

#[test]
fn order_body_corpus() {
    let mut accepted = 0;
    for (path, bytes) in corpus("order_body") {
        // Panics (with the input's path in the test output) on a violation.
        let parsed = parse_order_body_checked(&bytes);
        eprintln!(
            "{}: {}",
            path.display(),
            parsed.as_ref().map_or_else(|e| e.error, |_| "accepted")
        );
        accepted += usize::from(parsed.is_ok());
    }
    assert!(
        (3..=5).contains(&accepted),
        "the corpus holds a few valid bodies among the refusals, {accepted} accepted"
    );
}
