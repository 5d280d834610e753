//! Same seed, same trace: in one process and across processes (the
//! `saga-sim replay` binary), byte for byte; and a short heavy sweep holds
//! every invariant.

use std::process::Command;

use purchase_saga_sim::{input_from_seed, run, Profile, SimSettings};

const SEED: u64 = 7;

#[test]
fn same_seed_gives_the_same_trace_in_one_process() {
    let settings = SimSettings::default();
    let input = input_from_seed(SEED, Profile::Heavy, 20, &settings);
    let a = run(&input, &settings);
    let b = run(&input, &settings);
    assert!(
        a.lines.len() > 100,
        "a heavy run traces more than {} lines",
        a.lines.len()
    );
    assert_eq!(a.lines, b.lines, "same seed, different traces");
    assert_eq!(a.hash, b.hash);
    let other = run(
        &input_from_seed(SEED + 1, Profile::Heavy, 20, &settings),
        &settings,
    );
    assert_ne!(a.hash, other.hash, "different seeds should not trace alike");
}

#[test]
fn same_seed_gives_the_same_hash_in_a_child_process() {
    let settings = SimSettings::default();
    let local = run(&input_from_seed(SEED, Profile::Heavy, 20, &settings), &settings);
    let out = Command::new(env!("CARGO_BIN_EXE_saga-sim"))
        .args([
            "replay",
            "--seed",
            &SEED.to_string(),
            "--faults",
            "heavy",
            "--orders",
            "20",
        ])
        .output()
        .expect("saga-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "replay failed: {stdout}");
    let hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("trace-hash: "))
        .unwrap_or_else(|| panic!("no trace-hash line in {stdout}"));
    assert_eq!(
        hash,
        format!("{:016x}", local.hash),
        "the child process traced differently"
    );
}

#[test]
fn a_short_heavy_sweep_holds_every_invariant_and_injects_faults() {
    let settings = SimSettings::default();
    let mut faults = 0;
    for seed in 100..106 {
        let o = run(&input_from_seed(seed, Profile::Heavy, 20, &settings), &settings);
        assert!(o.violations.is_empty(), "seed {seed}: {:?}", o.violations);
        assert!(
            o.paths.values().sum::<u64>() == 20,
            "seed {seed}: every order accounted for: {:?}",
            o.paths
        );
        faults += o.faults.values().sum::<u64>();
    }
    assert!(faults > 0, "a heavy sweep injected no fault");
}

#[test]
fn a_fault_free_run_injects_nothing() {
    let settings = SimSettings::default();
    let o = run(&input_from_seed(3, Profile::None, 20, &settings), &settings);
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    let injected: u64 = o
        .faults
        .iter()
        // Deadlines pass on their own; wake and prune are the runtime's own
        // paths, counted for coverage, not injected.
        .filter(|(k, _)| !["deadline", "wake", "prune"].contains(&k.name()))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(injected, 0, "faults without a fault profile: {:?}", o.faults);
}

#[test]
fn seeds_on_parallel_threads_trace_as_they_do_alone() {
    let settings = SimSettings::default();
    let seeds = [11u64, 12];
    let alone: Vec<u64> = seeds
        .iter()
        .map(|&s| run(&input_from_seed(s, Profile::Swarm, 20, &settings), &settings).hash)
        .collect();
    let threads: Vec<_> = seeds
        .iter()
        .map(|&s| {
            std::thread::spawn(move || {
                run(&input_from_seed(s, Profile::Swarm, 20, &settings), &settings).hash
            })
        })
        .collect();
    let parallel: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("a sim thread"))
        .collect();
    assert_eq!(alone, parallel, "a run depends on what runs beside it");
}
