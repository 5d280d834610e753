//! `saga-sim bench` runs the same scenarios on the simulator, turmoil's
//! floor for the same shapes and the in-memory runtime, and reports a rate
//! for each, how the simulator's CPU splits, their ratio, and no violation.

use std::process::Command;

#[test]
fn bench_reports_every_engine_the_floor_split_and_their_ratio() {
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
        "turmoil floor",
        "in-memory runtime",
        "seeds' shape:",
        "the floor is",
        "simulator overhead:",
        "violations: 0",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from:\n{stdout}");
    }
    let rates: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("turmoil") || l.starts_with("in-memory"))
        // wall s, seeds/s, CPU s, CPU ms/seed, simulated/wall: seeds/s is
        // the fourth from the end.
        .map(|l| l.split_whitespace().rev().nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(rates.len(), 3, "{stdout}");
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
