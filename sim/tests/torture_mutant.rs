//! With `--features mutants`: torture reports planted bugs through the
//! production adapters, each by the check that is about it. A file of its own, because the switch is
//! process-wide (torture's runtime is multi-threaded) and would leak into
//! the clean runs of `torture.rs`.
#![cfg(feature = "mutants")]

mod torture_support;

use purchase_saga_sim::torture::{self, TortureOutcome};
use torture_support::{light, require_services};

/// Each planted bug with the checks that are about it: one of them must be
/// among the findings. The
/// light profile's seeds are clean without them (`torture.rs`). One test,
/// the mutants one after another: the switch is process-wide.
const CAUGHT_BY: [(&str, &[&str]); 4] = [
    // Inventory grants without consuming the slot reservation.
    (
        "grant-without-reservation",
        &[
            "grant-exactly-once",
            "slots-match-reservations",
            "no-open-reservation",
        ],
    ),
    // The new checks of issue 23: ack against the inbox at ack time
    // (`witness.rs`), the compensation ledger over committed outbox rows.
    ("ack-before-commit", &["ack-only-after-commit"]),
    ("compensate-twice", &["compensation-exactly-once"]),
    (
        "refund-wrong-amount",
        &["amounts-agree", "balance-conservation", "balance-matches-holds"],
    ),
];

#[test]
fn planted_bugs_are_caught_by_their_checks_through_the_production_adapters() {
    require_services();
    let mut settings = light();
    settings.stop_at_first_finding = true;
    let mut missed = Vec::new();
    for (mutant, checks) in CAUGHT_BY {
        purchase_saga_sim::mutants::activate_process(Some(mutant)).expect("a known mutant");
        let mut outcomes: Vec<TortureOutcome> = Vec::new();
        for seed in 0..3 {
            let o = torture::run_seed(&settings, seed);
            let caught = !o.findings.is_empty();
            outcomes.push(o);
            if caught {
                break;
            }
        }
        purchase_saga_sim::mutants::activate_process(None).expect("switching off");
        let found: Vec<String> = outcomes
            .iter()
            .flat_map(|o| o.violations())
            .map(|f| f.check)
            .collect();
        if !found.iter().any(|c| checks.contains(&c.as_str())) {
            missed.push(format!(
                "{mutant}: found {found:?} on seeds 0..{}, none of {checks:?}",
                outcomes.len()
            ));
        }
    }
    assert!(missed.is_empty(), "{missed:#?}");
}
