//! Property tests over generated scenarios and fault plans themselves (not
//! only seeds), so a failure shrinks to a minimal scenario and plan. Cases:
//! `PROPTEST_CASES` (default 256). Failures are kept in
//! `proptest-regressions/properties.txt` (committed) and rerun first.
//!
//! `SAGA_SIM_MUTANT=NAME` (with `--features mutants`) runs every case with
//! that planted bug switched on: proptest then finds and shrinks a failing
//! scenario and plan for it.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use purchase_saga::domain::Service;
use purchase_saga::workload::Scenario;
use purchase_saga_sim::faults::{CrashPoint, FaultPlan, Replica, Scheduled, TimedFault};
use purchase_saga_sim::topology::Topology;
use purchase_saga_sim::{mutants, run, SimInput, SimSettings};

/// Orders per case: small, so 256 cases fit in CI's budget.
const ORDERS_MAX: usize = 6;

fn scenario() -> impl Strategy<Value = Scenario> {
    let users = prop::collection::vec((0i64..=400, 0i64..=8), 1..=3);
    let items = prop::collection::vec((10i64..=100, 0i64..=6), 1..=3);
    // (user index, past the users = unknown user; item; qty; declining; at)
    let orders = prop::collection::vec(
        (
            0usize..4,
            0usize..3,
            1i64..=3,
            prop::bool::weighted(0.15),
            0i64..=3_000,
        ),
        1..=ORDERS_MAX,
    );
    (users, items, orders).prop_map(|(users, items, orders)| Scenario::from_parts(&users, &items, &orders))
}

fn timed() -> impl Strategy<Value = TimedFault> {
    (0u64..8_000, 0usize..6, 0u8..2, 0u8..4, 100u64..=3_000).prop_map(|(at_ms, s, index, kind, len)| {
        let replica = Replica {
            service: Service::ALL[s],
            index,
        };
        let fault = match kind {
            0 => Scheduled::Partition { replica, len_ms: len },
            k => Scheduled::Crash {
                replica,
                point: [
                    CrashPoint::Anywhere,
                    CrashPoint::BeforeCommit,
                    CrashPoint::AfterPublish,
                ][usize::from(k - 1)],
                down_ms: len,
            },
        };
        TimedFault { at_ms, fault }
    })
}

fn plan() -> impl Strategy<Value = FaultPlan> {
    let rates = (0u32..=100, 0u32..=100, 0u32..=100, 0u32..=100);
    let deadline = prop_oneof![Just(10_000i64), 1_000i64..=4_000];
    (
        0u64..=20,
        rates,
        deadline,
        prop::collection::vec(timed(), 0..=4),
        3_000u64..=8_000,
    )
        .prop_map(
            |(jitter_ms_max, (dup, drop_pub, drop_del, abort), saga_deadline_ms, mut timed, heal_at_ms)| {
                timed.sort_by_key(|t| t.at_ms);
                FaultPlan {
                    jitter_ms_max,
                    duplicate_per_mille: dup,
                    drop_publish_per_mille: drop_pub,
                    drop_delivery_per_mille: drop_del,
                    abort_per_mille: abort,
                    saga_deadline_ms,
                    timed,
                    heal_at_ms,
                    ..FaultPlan::none()
                }
            },
        )
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/properties.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_invariant_holds_under_any_plan(seed in any::<u64>(), scenario in scenario(), plan in plan()) {
        let input = SimInput { seed, scenario, plan, topology: Topology::default() };
        let mutant = std::env::var("SAGA_SIM_MUTANT").ok();
        let outcome = mutants::with(mutant.as_deref(), || run(&input, &SimSettings::default()))
            .expect("SAGA_SIM_MUTANT names a mutant of this build");
        prop_assert!(
            outcome.violations.is_empty(),
            "violations: {:#?}\nreplay the input above with purchase_saga_sim::run",
            outcome.violations
        );
    }
}
