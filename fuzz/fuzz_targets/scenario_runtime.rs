//! Arbitrary scenarios and schedules on the in-memory runtime: every
//! invariant holds after every commit and at quiescence.
#![no_main]

use libfuzzer_sys::fuzz_target;
use purchase_saga::runtime::memory::Scheduler;
use purchase_saga::workload::FuzzCase;

fuzz_target!(|data: &[u8]| {
    let case = FuzzCase::from_bytes(data);
    let report = Scheduler::run_scenario(&case.scenario, case.seed, case.duplicate_per_mille);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
});
