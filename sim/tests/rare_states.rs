//! Issue 23: the rare states some seeds are steered into (`FaultPlan::steer`,
//! `FaultKind::RARE`) are reached and clean, a planted bug that hides in one
//! of them is caught there, and the dedupe mutants are caught by a check of
//! the saga's effects (money, stock, grants, notifications counted once),
//! not by a side effect of how they were planted.
//!
//! Run: `cargo test -p purchase-saga-sim --test rare_states` (and with
//! `--features mutants` for the planted bugs).

use purchase_saga_sim::faults::{FaultPlan, Steer};
use purchase_saga_sim::{input_from_seed, run, FaultKind, Profile, SimInput, SimOutcome, SimSettings};

/// A quiet run (no fault but the steer) steered into `state` at 1 s.
fn steered(seed: u64, state: FaultKind) -> SimInput {
    let settings = SimSettings::default();
    let mut input = input_from_seed(seed, Profile::None, 20, &settings);
    input.plan = FaultPlan {
        heal_at_ms: 8_000,
        steer: Some(Steer { state, at_ms: 1_000 }),
        ..FaultPlan::none()
    };
    input
}

fn count(o: &SimOutcome, kind: FaultKind) -> u64 {
    o.faults.get(&kind).copied().unwrap_or(0)
}

/// Each steer's lever reaches its state, counted from what the run did,
/// and the run stays clean: the lever is a legal behaviour of the servers
/// (lost or late acks, a slow store, a poison entry), not a bug.
#[test]
fn every_steer_reaches_its_rare_state_and_the_run_stays_clean() {
    for state in FaultKind::RARE {
        let o = run(&steered(3, state), &SimSettings::default());
        assert!(o.violations.is_empty(), "{state}: {:#?}", o.violations);
        assert!(count(&o, state) >= 1, "{state} never happened: {:?}", o.faults);
    }
}

/// The steering is drawn after every other draw of a plan: a seed that is
/// not steered has the plan it had before, and one seed in eight or so is
/// steered, each rare state in turn.
#[test]
fn a_fraction_of_seeds_is_steered_and_each_state_is_drawn() {
    let settings = SimSettings::default();
    let steers: Vec<Option<Steer>> = (0..400)
        .map(|seed| input_from_seed(seed, Profile::Heavy, 20, &settings).plan.steer)
        .collect();
    let steered = steers.iter().flatten().count();
    assert!((25..=75).contains(&steered), "{steered} of 400 seeds steered");
    for state in FaultKind::RARE {
        assert!(
            steers.iter().flatten().any(|s| s.state == state),
            "no seed steered to {state}"
        );
    }
    let none = input_from_seed(0, Profile::None, 20, &settings).plan;
    assert_eq!(none.steer, None, "a run without faults is never steered");
}

#[cfg(feature = "mutants")]
mod planted {
    use super::*;
    use purchase_saga_sim::mutants;

    /// The saga's effects counted exactly once: money, stock, slots,
    /// grants, notifications and compensations.
    const EFFECT_CHECKS: [&str; 12] = [
        "non-negative-balance",
        "non-negative-stock",
        "balance-matches-holds",
        "stock-matches-reservations",
        "slots-match-reservations",
        "slots-within-capacity",
        "notification-at-most-once",
        "one-outcome-notification",
        "balance-conservation",
        "stock-conservation",
        "grant-exactly-once",
        "compensation-exactly-once",
    ];

    fn with_mutant(name: &str, input: &SimInput) -> SimOutcome {
        mutants::with(Some(name), || run(input, &SimSettings::default())).expect("built with mutants")
    }

    /// The first heavy seed in `0..budget` whose run finds anything under
    /// `mutant`.
    fn first_caught(mutant: &str, budget: u64) -> SimOutcome {
        let settings = SimSettings::default();
        (0..budget)
            .map(|seed| with_mutant(mutant, &input_from_seed(seed, Profile::Heavy, 20, &settings)))
            .find(|o| !o.violations.is_empty())
            .unwrap_or_else(|| panic!("{mutant} survived {budget} heavy seeds"))
    }

    /// An applied event whose acks were lost reaches the deliveries limit;
    /// a consumer that dead-letters it there without asking the inbox is
    /// caught, and only because the run was steered there.
    #[test]
    fn dead_lettering_an_applied_event_past_the_limit_is_caught_in_its_state() {
        let mutant = "past-limit-dead-letters-applied";
        let input = steered(3, FaultKind::AppliedPastLimit);
        let o = with_mutant(mutant, &input);
        assert_eq!(
            purchase_saga_sim::catch::first_catch_in_time(&o).as_deref(),
            Some("no-dead-letter"),
            "{:#?}",
            o.violations
        );
        let mut unsteered = input.clone();
        unsteered.plan.steer = None;
        let o = with_mutant(mutant, &unsteered);
        assert!(o.violations.is_empty(), "not steered: {:#?}", o.violations);
    }

    /// A duplicate applied although the inbox has its id, in the
    /// single-row and the batched path, and a pruner that deletes inbox
    /// ids still live: each is reported first by an effect check (the
    /// ack check used to report `prune-live-inbox`: it took an id the
    /// pruner deleted after its commit for one never committed).
    #[test]
    fn duplicates_applied_twice_are_caught_by_an_effect_check() {
        for mutant in [
            "apply-recorded-duplicate",
            "batch-apply-recorded-duplicate",
            "prune-live-inbox",
        ] {
            let o = first_caught(mutant, 50);
            let first = purchase_saga_sim::catch::first_catch_in_time(&o).expect("a violation");
            assert!(
                EFFECT_CHECKS.contains(&first.as_str()),
                "{mutant}: seed {} first found {first}: {:#?}",
                o.seed,
                o.violations
            );
            assert!(
                o.violations.iter().all(|v| v.check != "ack-only-after-commit"),
                "{mutant}: the ack check blames an ack: {:#?}",
                o.violations
            );
        }
    }

    /// `skip-inbox-dedupe` never writes the inbox, so its first ack trips
    /// the ack check; the double application is seen by an effect check in
    /// the same run.
    #[test]
    fn skipping_the_inbox_is_also_seen_by_an_effect_check() {
        let o = first_caught("skip-inbox-dedupe", 50);
        assert!(
            o.violations
                .iter()
                .any(|v| EFFECT_CHECKS.contains(&v.check.as_str())),
            "seed {}: {:#?}",
            o.seed,
            o.violations
        );
    }
}
