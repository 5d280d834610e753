//! What the torture tests share: the services they need (failing, with
//! what to start, when one is missing) and the light profile they run.
#![allow(dead_code)] // Each test file uses a different part of this module.

use purchase_saga_sim::torture::servers::preflight;
use purchase_saga_sim::torture::{TortureOutcome, TortureSettings};
use purchase_saga_sim::Profile;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Fails (never skips) when a service torture needs is missing.
pub fn require_services() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(e) = rt.block_on(preflight(&database_url(), None)) {
        panic!("torture cannot run: {e}");
    }
}

/// The light profile with every fault kind, issue 17's included.
pub fn light() -> TortureSettings {
    TortureSettings::new(database_url(), None, Profile::Light)
}

/// The verdict every clean torture seed must give: no finding, and every
/// order of its scenario ended on a path (placed and terminal, or
/// rejected).
pub fn assert_clean_with_every_order_on_a_path(o: &TortureOutcome) {
    assert!(
        o.findings.is_empty(),
        "seed {} failed:\n{}",
        o.seed(),
        o.failure_report()
    );
    let placed: u64 = o.paths.values().sum();
    assert_eq!(
        placed,
        o.input.scenario.orders.len() as u64,
        "seed {}: every order ends on a path (placed and terminal, or rejected)",
        o.seed()
    );
}
