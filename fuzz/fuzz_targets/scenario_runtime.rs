//! Arbitrary scenarios and schedules on the in-memory runtime: every
//! invariant holds after every commit and at quiescence.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::runtime::memory::{harness_config, Scheduler, SchedulerConfig};
use purchase_saga::workload::FuzzCase;

fuzz_target!(|data: &[u8]| {
    let case = FuzzCase::from_bytes(data);
    let config = SchedulerConfig {
        seed: case.seed,
        duplicate_per_mille: case.duplicate_per_mille,
        ..SchedulerConfig::default()
    };
    let report = Scheduler::run_blocking(
        &case.scenario,
        &config,
        harness_config(),
        Arc::new(SimulatedGateway::default()),
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
});
