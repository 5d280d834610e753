//! Hand-written fault plans for the driver's corner cases.

use purchase_saga::domain::Service;
use purchase_saga_sim::faults::{CrashPoint, FaultPlan, Replica, Scheduled, TimedFault};
use purchase_saga_sim::{input_from_seed, run, Profile, SimSettings};

fn crash(at_ms: u64, replica: Replica, point: CrashPoint) -> TimedFault {
    TimedFault {
        at_ms,
        fault: Scheduled::Crash {
            replica,
            point,
            down_ms: 300,
        },
    }
}

/// A replica armed again before its first crash point fired, then armed at
/// another point: every request crashes it once, with its own downtime.
/// (The driver once kept downtimes apart from the armed points, and a
/// re-arm between a fire and its crash panicked it in the CI sweep.)
#[test]
fn rearming_a_replica_before_its_crash_point_fires() {
    let settings = SimSettings::default();
    let mut input = input_from_seed(5, Profile::None, 20, &settings);
    let order0 = Replica {
        service: Service::Order,
        index: 0,
    };
    let payment1 = Replica {
        service: Service::Payment,
        index: 1,
    };
    let mut timed = Vec::new();
    for k in 0..12u64 {
        let point = [CrashPoint::BeforeCommit, CrashPoint::AfterPublish][(k % 2) as usize];
        timed.push(crash(200 + k * 350, order0, point));
        timed.push(crash(210 + k * 350, payment1, point));
    }
    input.plan = FaultPlan {
        timed,
        heal_at_ms: 6_000,
        ..FaultPlan::none()
    };
    let o = run(&input, &settings);
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    let crashes = o
        .faults
        .iter()
        .find(|(k, _)| k.name() == "crash")
        .map_or(0, |(_, n)| *n);
    assert!(crashes >= 4, "armed crash points fired only {crashes} times");
}
