//! `saga-sim bench` runs the same scenarios on both engines and reports a
//! rate for each, their ratio, and no violation.

use std::process::Command;

#[test]
fn bench_reports_both_engines_and_their_ratio() {
    let out = Command::new(env!("CARGO_BIN_EXE_saga-sim"))
        .args(["bench", "--seeds", "3", "--faults", "light", "--jobs", "1"])
        .output()
        .expect("saga-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "turmoil simulator",
        "in-memory runtime",
        "simulator overhead:",
        "violations: 0",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from:\n{stdout}");
    }
    let rates: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("turmoil") || l.starts_with("in-memory"))
        .map(|l| l.split_whitespace().rev().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(rates.len(), 2, "{stdout}");
    assert!(
        rates.iter().all(|r| *r > 0.0),
        "every engine ran seeds: {rates:?}"
    );
}

#[test]
fn bench_refuses_zero_seeds() {
    let out = Command::new(env!("CARGO_BIN_EXE_saga-sim"))
        .args(["bench", "--seeds", "0"])
        .output()
        .expect("saga-sim runs");
    assert_eq!(out.status.code(), Some(2));
}
