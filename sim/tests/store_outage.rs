//! One service's database down or slow while the others serve (issue 25,
//! `FaultPlan::store_outages`): the outage takes effect on that service
//! alone, the others commit through it, the service catches up after it,
//! and every invariant holds; heavy and swarm plans draw it from the seed,
//! deterministically.

use purchase_saga::domain::Service;
use purchase_saga_sim::faults::{FaultKind, FaultPlan, OutageMode, StoreOutage};
use purchase_saga_sim::world::EntryKind;
use purchase_saga_sim::{input_from_seed, run, Profile, SimInput, SimOutcome, SimSettings};

const SEED: u64 = 5;
const WINDOW: (i64, i64) = (1_000, 3_500);

/// The seed's fault-free scenario with only `outages`, healing at 8 s.
fn with_outages(outages: Vec<StoreOutage>) -> SimInput {
    let settings = SimSettings::default();
    let mut input = input_from_seed(SEED, Profile::None, 20, &settings);
    input.plan = FaultPlan {
        heal_at_ms: 8_000,
        store_outages: outages,
        ..FaultPlan::none()
    };
    input
}

fn payment(mode: OutageMode) -> StoreOutage {
    StoreOutage {
        service: Service::Payment,
        at_ms: WINDOW.0 as u64,
        len_ms: (WINDOW.1 - WINDOW.0) as u64,
        mode,
    }
}

fn in_window(at_ms: i64) -> bool {
    (WINDOW.0..WINDOW.1).contains(&at_ms)
}

/// Deliveries `to` applied (committed) within `span`.
fn applied(o: &SimOutcome, to: Service, span: impl Fn(i64) -> bool) -> usize {
    o.entries
        .iter()
        .filter(|e| span(e.at_ms))
        .filter(|e| matches!(&e.kind, EntryKind::Delivery { to: t, note: None, .. } if *t == to))
        .count()
}

fn outage_count(o: &SimOutcome) -> u64 {
    o.faults.get(&FaultKind::StoreOutage).copied().unwrap_or(0)
}

fn assert_clean(o: &SimOutcome) {
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    assert_eq!(
        o.paths.values().sum::<u64>(),
        20,
        "every order accounted for: {:?}",
        o.paths
    );
}

/// Every outage effect in the trace is at `service`, inside the window.
fn assert_effects_only_at(o: &SimOutcome, service: Service) {
    for e in &o.entries {
        if let EntryKind::Fault {
            kind: FaultKind::StoreOutage,
            at,
        } = &e.kind
        {
            assert_eq!(*at, Some(service), "an outage effect elsewhere: {}", e.text);
            assert!(in_window(e.at_ms), "an outage effect outside the window: {e:?}");
        }
    }
}

#[test]
fn payments_database_down_stops_payment_alone_and_the_saga_catches_up() {
    let settings = SimSettings::default();
    // Without the outage, Payment applies deliveries in the window: the
    // checks below are not vacuous.
    let control = run(&with_outages(Vec::new()), &settings);
    assert_clean(&control);
    assert!(
        applied(&control, Service::Payment, in_window) > 0,
        "the control run applies no payment delivery in the window"
    );
    assert_eq!(outage_count(&control), 0);

    let o = run(&with_outages(vec![payment(OutageMode::Down)]), &settings);
    assert_clean(&o);
    assert!(outage_count(&o) > 0, "the outage took no effect: {:?}", o.faults);
    assert_effects_only_at(&o, Service::Payment);
    assert_eq!(
        applied(&o, Service::Payment, in_window),
        0,
        "Payment committed while its database was down"
    );
    let published_by_payment = o
        .entries
        .iter()
        .filter(|e| in_window(e.at_ms))
        .filter(|e| {
            matches!(
                e.kind,
                EntryKind::Publish {
                    from: Service::Payment,
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        published_by_payment, 0,
        "Payment's relay read its outbox while down"
    );
    let others: usize = [Service::Order, Service::User, Service::Inventory]
        .into_iter()
        .map(|s| applied(&o, s, in_window))
        .sum();
    assert!(others > 0, "no other service committed during Payment's outage");
    assert!(
        applied(&o, Service::Payment, |t| t >= WINDOW.1) > 0,
        "Payment applied nothing after its database came back"
    );
}

#[test]
fn orders_database_down_holds_the_client_back_and_nothing_is_lost() {
    let settings = SimSettings::default();
    let mut outage = payment(OutageMode::Down);
    outage.service = Service::Order;
    let o = run(&with_outages(vec![outage]), &settings);
    assert_clean(&o);
    assert!(outage_count(&o) > 0, "{:?}", o.faults);
    assert_effects_only_at(&o, Service::Order);
    // The client's orders go to Order's database: it was refused and retried.
    assert!(
        o.entries.iter().any(|e| matches!(
            e.kind,
            EntryKind::Fault {
                kind: FaultKind::StoreOutage,
                ..
            }
        ) && e.text.contains("client found")),
        "the client never met Order's outage"
    );
    assert_eq!(applied(&o, Service::Order, in_window), 0);
}

#[test]
fn payments_database_slow_delays_payment_without_stopping_it() {
    let settings = SimSettings::default();
    let o = run(
        &with_outages(vec![payment(OutageMode::Slow { extra_ms: 100 })]),
        &settings,
    );
    assert_clean(&o);
    assert!(outage_count(&o) > 0, "{:?}", o.faults);
    assert_effects_only_at(&o, Service::Payment);
    assert!(
        applied(&o, Service::Payment, in_window) > 0,
        "a slow database is not a down one: Payment still commits"
    );
}

#[test]
fn heavy_and_swarm_plans_draw_outages_from_the_seed_deterministically() {
    let settings = SimSettings::default();
    let mut down = 0;
    let mut slow = 0;
    let mut seeds = Vec::new();
    for profile in [Profile::Heavy, Profile::Swarm] {
        for seed in 0..64 {
            let input = input_from_seed(seed, profile, 20, &settings);
            assert_eq!(
                input.plan,
                input_from_seed(seed, profile, 20, &settings).plan,
                "seed {seed}: the plan is drawn from the seed alone"
            );
            for outage in &input.plan.store_outages {
                assert!(outage.at_ms < input.plan.heal_at_ms);
                match outage.mode {
                    OutageMode::Down => down += 1,
                    OutageMode::Slow { .. } => slow += 1,
                }
            }
            if !input.plan.store_outages.is_empty() && seeds.len() < 3 {
                seeds.push((seed, profile));
            }
        }
    }
    assert!(down > 0 && slow > 0, "down {down}, slow {slow} over 128 plans");
    for profile in [Profile::None, Profile::Light] {
        for seed in 0..64 {
            assert!(input_from_seed(seed, profile, 20, &settings)
                .plan
                .store_outages
                .is_empty());
        }
    }
    let mut effects = 0;
    for (seed, profile) in seeds {
        let input = input_from_seed(seed, profile, 20, &settings);
        let a = run(&input, &settings);
        let b = run(&input, &settings);
        assert_eq!(a.lines, b.lines, "seed {seed}: same seed, different traces");
        assert!(a.violations.is_empty(), "seed {seed}: {:?}", a.violations);
        effects += outage_count(&a);
        let without = run(
            &SimInput {
                plan: input.plan.clone().without(FaultKind::StoreOutage),
                ..input.clone()
            },
            &settings,
        );
        assert_eq!(outage_count(&without), 0);
    }
    assert!(effects > 0, "no drawn outage took effect");
}
