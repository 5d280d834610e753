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

/// The count of fault kind `name` in a run's outcome.
fn count(o: &purchase_saga_sim::SimOutcome, name: &str) -> u64 {
    o.faults
        .iter()
        .find(|(k, _)| k.name() == name)
        .map_or(0, |(_, n)| *n)
}

/// A lingering run: the replicas' pruners (the runtime's own loop) delete
/// inbox ids and outbox entries once the scaled retention lets them go,
/// and the run is quiescent and clean after it.
#[test]
fn the_pruner_deletes_in_a_lingering_run_and_nothing_breaks() {
    let settings = SimSettings::default();
    let mut input = input_from_seed(3, Profile::None, 20, &settings);
    input.plan.linger_ms = purchase_saga_sim::faults::LINGER_MS;
    let o = run(&input, &settings);
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    assert!(count(&o, "prune") > 0, "no prune pass deleted anything");
    assert!(count(&o, "wake") > 0, "no commit woke a relay");
    let stopped = run(&input_from_seed(3, Profile::None, 20, &settings), &settings);
    assert_eq!(
        count(&stopped, "prune"),
        0,
        "a run stopped at quiescence prunes nothing"
    );
}

/// The store answers `Unavailable` often and every replica's pool holds one
/// connection: the runtime backs off and leaves the work for redelivery,
/// and every order still ends, with every invariant held.
#[test]
fn store_unavailable_and_a_pool_of_one_are_recovered_from() {
    let settings = SimSettings::default();
    // A heavy plan (its crashes, duplicates and deadlines make the
    // transactions of one replica overlap) with every pool cut to one
    // connection and a tenth of the store's answers `Unavailable`.
    let mut input = input_from_seed(11, Profile::Heavy, 20, &settings);
    input.plan.unavailable_per_mille = 100;
    input.plan.pool_size = 1;
    input.plan.jitter_ms_max = input.plan.jitter_ms_max.max(40);
    let o = run(&input, &settings);
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    assert!(count(&o, "unavailable") > 10, "{:?}", o.faults);
    assert!(count(&o, "pool-exhausted") > 0, "{:?}", o.faults);
}

/// Every host's clock off by up to the bound, both ways: still clean, and
/// the skew is in the coverage.
#[test]
fn clock_skew_within_the_bound_keeps_every_invariant() {
    use purchase_saga_sim::faults::SKEW_MS_MAX;
    let settings = SimSettings::default();
    let mut input = input_from_seed(12, Profile::None, 20, &settings);
    let hosts: Vec<String> = purchase_saga_sim::run::replicas(&settings)
        .iter()
        .map(|r| r.host())
        .chain(["client".to_string()])
        .collect();
    for (n, host) in hosts.iter().enumerate() {
        let sign = if n % 2 == 0 { 1 } else { -1 };
        input.plan.skew_ms.insert(host.clone(), sign * SKEW_MS_MAX);
    }
    input.plan.heal_at_ms = 6_000;
    let o = run(&input, &settings);
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    assert_eq!(count(&o, "skew"), hosts.len() as u64);
}

/// A plan with only `fault` at `at_ms`, healing at 8 s.
fn only(seed: u64, at_ms: u64, fault: Scheduled) -> purchase_saga_sim::SimInput {
    let settings = SimSettings::default();
    let mut input = input_from_seed(seed, Profile::None, 20, &settings);
    input.plan = FaultPlan {
        timed: vec![TimedFault { at_ms, fault }],
        heal_at_ms: 8_000,
        ..FaultPlan::none()
    };
    input
}

/// The broker host crashes mid-run and comes back with nothing (streams,
/// groups, pending entries, dead letters): the buses re-create the groups
/// on NOGROUP, re-drive republishes what was lost, every order ends and
/// every invariant holds.
#[test]
fn a_broker_that_lost_everything_is_recovered_from() {
    let settings = SimSettings::default();
    // Seed 22 at 0.5 s: six entries delivered and not yet acknowledged
    // (with send on commit the entries of seed 21 at 2.5 s were all acked).
    let input = only(22, 500, Scheduled::BrokerLoss { down_ms: 600 });
    let o = run(&input, &settings);
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    assert_eq!(count(&o, "broker-loss"), 1, "{:?}", o.faults);
    let lost = o
        .lines
        .iter()
        .find(|l| l.contains("broker crashed and lost all of its state"))
        .expect("the loss is traced");
    assert!(
        !lost.contains("(0 unacknowledged"),
        "the loss should strike with entries in flight: {lost}"
    );
    assert!(
        o.lines
            .iter()
            .any(|l| l.contains("== broker restarted, empty ==")),
        "the broker came back"
    );
    let without = run(
        &purchase_saga_sim::SimInput {
            plan: input
                .plan
                .clone()
                .without(purchase_saga_sim::FaultKind::BrokerLoss),
            ..input.clone()
        },
        &settings,
    );
    assert_eq!(count(&without, "broker-loss"), 0);
}

/// The client crashes right after an order committed, before it learned
/// so; restarted, it re-sends that request under the same order id: one
/// order per request, every order terminal, every invariant held.
#[test]
fn a_client_crashing_after_its_order_committed_re_sends_it_once() {
    use purchase_saga_sim::faults::ClientCrashPoint;
    let settings = SimSettings::default();
    let input = only(
        22,
        300,
        Scheduled::ClientCrash {
            point: ClientCrashPoint::AfterPlace,
            down_ms: 700,
        },
    );
    let o = run(&input, &settings);
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    assert_eq!(count(&o, "client-crash"), 1, "{:?}", o.faults);
    assert!(
        o.lines.iter().any(|l| l.contains("re-sent after a restart")),
        "the restarted client re-sent the unanswered request"
    );
    assert_eq!(
        o.order_paths.len() as u64 + o.paths.get("REJECTED").copied().unwrap_or(0),
        o.orders,
        "one outcome per request: {:?}",
        o.paths
    );
}

/// The client crashes at an arbitrary moment while placing orders and
/// restarts 1.5 s later: the orders it had not sent yet are still placed
/// (late), nothing twice.
#[test]
fn a_client_crashing_anywhere_resumes_from_its_request_log() {
    use purchase_saga_sim::faults::ClientCrashPoint;
    let settings = SimSettings::default();
    let input = only(
        23,
        1_000,
        Scheduled::ClientCrash {
            point: ClientCrashPoint::Anywhere,
            down_ms: 1_500,
        },
    );
    let o = run(&input, &settings);
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    assert_eq!(count(&o, "client-crash"), 1, "{:?}", o.faults);
    assert!(o.lines.iter().any(|l| l.contains("== client restarted ==")));
}
