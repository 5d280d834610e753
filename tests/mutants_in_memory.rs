//! With the `mutants` feature: which planted bugs the in-memory scheduler
//! (random order, duplicates, deadlines; no crashes, no store faults, no
//! concurrency) catches on its own. The simulator catches the rest; this
//! pins down the in-memory checker's share.
//!
//! Run: `cargo test --features mutants --test mutants_in_memory`.
#![cfg(feature = "mutants")]

use purchase_saga::mutants::{self, Mutant};
use purchase_saga::runtime::memory::{Scheduler, SchedulerConfig, SchedulerReport};
use purchase_saga::workload::{Scenario, ScenarioSize};
use rand::SeedableRng;

/// The run of generated scenario `seed` under `mutant` (or none).
fn run(seed: u64, mutant: Option<Mutant>) -> SchedulerReport {
    let scenario = Scenario::generate(
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        ScenarioSize::default(),
    );
    mutants::with(mutant, || {
        Scheduler::run_scenario(&scenario, seed, SchedulerConfig::default().duplicate_per_mille)
    })
}

/// First seed in `0..budget` whose run violates an invariant under `mutant`.
fn first_failing_seed(mutant: Mutant, budget: u64) -> Option<(u64, String)> {
    (0..budget).find_map(|seed| {
        run(seed, Some(mutant))
            .violations
            .first()
            .map(|v| (seed, v.to_string()))
    })
}

/// The mutants whose bug shows without crashes, store faults, lost
/// messages or concurrent replicas. The other four (ack-before-commit,
/// emit-outside-tx, at-most-once-bus, unlocked-stock-check) survive here by
/// construction and are the simulator's to catch.
#[test]
fn scheduler_catches_the_mutants_it_can_see() {
    // The scheduler has no ack check: what it catches of the dedupe
    // mutants, it catches by their effects.
    let must_catch = [
        Mutant::SkipInboxDedupe,
        Mutant::ApplyRecordedDuplicate,
        Mutant::NoTombstone,
        Mutant::CancelAtOrder,
        Mutant::DoubleRefund,
        Mutant::GrantWithoutReservation,
    ];
    for mutant in must_catch {
        let found = first_failing_seed(mutant, 200);
        println!("{:<26} {:?}", mutant.name(), found);
        assert!(found.is_some(), "{} survived 200 seeds", mutant.name());
    }
}

#[test]
fn without_a_mutant_the_same_seeds_are_clean() {
    for seed in 0..50 {
        let report = run(seed, None);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
    }
}
