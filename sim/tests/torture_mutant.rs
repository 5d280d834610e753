//! With `--features mutants`: torture reports a planted bug through the
//! production adapters. A file of its own, because the switch is
//! process-wide (torture's runtime is multi-threaded) and would leak into
//! the clean runs of `torture.rs`.
#![cfg(feature = "mutants")]

mod torture_support;

use purchase_saga_sim::torture::{self, TortureOutcome};
use torture_support::{light, require_services};

/// Inventory granting without consuming the slot reservation (every
/// completed order shows it): the light profile's seeds are
/// clean without it (`torture.rs`), so any finding here is the mutant's.
#[test]
fn a_planted_bug_is_reported_through_the_production_adapters() {
    require_services();
    let mut settings = light();
    settings.stop_at_first_finding = true;
    purchase_saga_sim::mutants::activate_process(Some("grant-without-reservation")).expect("a known mutant");
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
    assert!(
        outcomes.iter().any(|o| !o.findings.is_empty()),
        "grant-without-reservation went unnoticed on seeds 0..{}: paths {:?}",
        outcomes.len(),
        outcomes.iter().map(|o| &o.paths).collect::<Vec<_>>()
    );
}
