//! The simulator's delivery checks do not trust the code under test:
//! "mark only after publish" compares a mark with what the broker
//! received, so a relay that reports a publish the broker never got is
//! caught at its mark (issue 23). The check used to count the relay's own
//! `RuntimeEvent::Published` reports, which this test's first mark would
//! have passed.

use std::sync::Arc;

use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::invariants::Snapshot;
use purchase_saga::domain::service::subscribers;
use purchase_saga::domain::{DurationMs, Service};
use purchase_saga::runtime::memory::{MemoryBus, MemoryStore};
use purchase_saga::runtime::{commands, Clock, Env, Mark, RuntimeEvent, Store};
use purchase_saga_sim::broker::{Broker, Request};
use purchase_saga_sim::client::place_command;
use purchase_saga_sim::clock::SimClock;
use purchase_saga_sim::config::runtime_config;
use purchase_saga_sim::faults::Replica;
use purchase_saga_sim::observer::SimObserver;
use purchase_saga_sim::world::World;
use purchase_saga_sim::{input_from_seed, FaultPlan, Profile, SimSettings};
use rand::SeedableRng;

#[tokio::test]
async fn a_mark_is_checked_against_what_the_broker_received_not_the_relays_report() {
    let input = input_from_seed(1, Profile::None, 20, &SimSettings::default());
    let plan = FaultPlan::none();
    let store = MemoryStore::new();
    store.seed(input.scenario.opening_rows());
    let clock = SimClock::default();
    let world = Arc::new(World::new(
        plan.clone(),
        store,
        clock.clone(),
        rand_chacha::ChaCha8Rng::seed_from_u64(1),
        Snapshot::from_rows(input.scenario.opening_rows()),
        runtime_config(&plan).deliveries_max,
    ));
    let order = Service::Order;
    let relay_store = purchase_saga_sim::store::SimStore::new(
        world.clone(),
        Some(Replica {
            service: order,
            index: 0,
        }),
    );
    let env = Env {
        store: Arc::new(relay_store.clone()),
        bus: Arc::new(MemoryBus::new(Arc::new(clock.clone()), DurationMs(1_500))),
        clock: Arc::new(clock.clone()),
        gateway: Arc::new(SimulatedGateway::default()),
        observer: Arc::new(SimObserver { world: world.clone() }),
        // The relay publishes (the committer would send the rows itself,
        // leased, and the relay would find none due).
        config: purchase_saga::runtime::RuntimeConfig {
            dispatch: purchase_saga::runtime::Dispatch::Relay,
            ..runtime_config(&plan)
        },
    };
    for o in &input.scenario.orders[..2] {
        commands::place_order(&env, &place_command(o))
            .await
            .expect("placed");
    }
    let claimed = relay_store
        .claim_due(order, clock.now(), DurationMs(1_000), 8)
        .await
        .expect("claimed");
    let sent: Vec<_> = claimed
        .entries
        .iter()
        .filter(|e| !subscribers(e.event.event_type()).is_empty())
        .collect();
    assert!(
        sent.len() >= 2,
        "two placed orders, two events to send: {claimed:?}"
    );
    let mark = |seq| Mark {
        seq,
        next_publish_at: None,
    };
    let marks_found = || {
        world
            .violations()
            .into_iter()
            .filter(|(_, f)| f.check == "mark-only-after-publish")
            .count()
    };

    // The relay says it published the first event; the broker never got it.
    env.observer.observe(RuntimeEvent::Published {
        service: order,
        event: &sent[0].event,
        republish: 0,
    });
    relay_store
        .mark_published(order, &[mark(sent[0].seq)], clock.now())
        .await
        .expect("marked");
    assert_eq!(marks_found(), 1, "{:#?}", world.violations());

    // The second reaches the broker, then is marked: no finding.
    Broker::new(world.clone()).handle(Request::Publish {
        streams: subscribers(sent[1].event.event_type()),
        payload: sent[1].event.encode(),
    });
    relay_store
        .mark_published(order, &[mark(sent[1].seq)], clock.now())
        .await
        .expect("marked");
    assert_eq!(marks_found(), 1, "{:#?}", world.violations());
}
