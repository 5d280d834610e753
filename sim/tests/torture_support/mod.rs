//! What the torture tests share: the services they need (failing, with
//! what to start, when one is missing) and the light profile they run.
#![allow(dead_code)] // Each test file uses a different part of this module.

use purchase_saga_sim::torture::servers::preflight;
use purchase_saga_sim::torture::TortureSettings;
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
