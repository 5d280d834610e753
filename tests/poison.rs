//! Poison entries on the bus: each kind is dead-lettered with its reason and
//! the consumer goes on with the next entry; an event that cannot be applied
//! yet is retried and dead-lettered only after the delivery bound.

use std::sync::Arc;

use purchase_saga::domain::event::{Event, ItemReserved, Payload, PaymentFailed};
use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::{ItemId, OrderId, Service, Timestamp, UserId};
use purchase_saga::runtime::memory::{harness_config, Harness};
use purchase_saga::runtime::Disposition;
use purchase_saga::workload::{OrderSpec, Scenario, ScenarioSize};
use rand::SeedableRng;

fn harness() -> (Harness, Scenario) {
    let scenario = Scenario::generate(
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
        ScenarioSize::default(),
    );
    (
        Harness::new(&scenario, harness_config(), Arc::new(SimulatedGateway::default())),
        scenario,
    )
}

fn a_valid_order_created(h_scenario: &Scenario) -> OrderSpec {
    h_scenario.orders[0].clone()
}

#[tokio::test]
async fn each_kind_of_poison_is_dead_lettered_with_its_reason_and_the_consumer_goes_on() {
    let (mut h, scenario) = harness();
    h.place(&a_valid_order_created(&scenario)).await.unwrap();
    h.relay(Service::Order).await;
    let good = *h
        .bus
        .deliverable(Service::User)
        .first()
        .expect("ORDER_CREATED for User");
    let valid: serde_json::Value =
        serde_json::from_slice(&h.bus.deliver(Service::User, good).unwrap().payload).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut v = valid.clone();
        f(v.as_object_mut().unwrap());
        v.to_string()
    };
    let poisons = [
        ("{not json".to_string(), "malformed JSON"),
        (
            edit(&|m| drop(m.insert("type".into(), "ORDER_EXPLODED".into()))),
            "unknown event type",
        ),
        (
            edit(&|m| drop(m.remove("totalAmount"))),
            "missing field `totalAmount`",
        ),
        (
            edit(&|m| drop(m.insert("schemaVersion".into(), 9.into()))),
            "unsupported schema version 9",
        ),
        // A well-formed event of a type User does not consume.
        (
            Event::new(
                OrderId::parse("o-x").unwrap(),
                UserId::parse("u-x").unwrap(),
                Timestamp::SIM_EPOCH,
                Payload::ItemReserved(ItemReserved {
                    item_id: ItemId::parse("i").unwrap(),
                    reserved_quantity: 1,
                    remaining_stock: 0,
                    total_amount: 1,
                    payment_method: "WALLET".into(),
                }),
            )
            .encode(),
            "User does not subscribe to ITEM_RESERVED",
        ),
    ];
    let mut ids = Vec::new();
    for (payload, _) in &poisons {
        ids.push(h.bus.inject(Service::User, payload.as_bytes()));
    }
    for (id, (_, reason)) in ids.iter().zip(&poisons) {
        let d = h.deliver(Service::User, *id).await.unwrap();
        match d {
            Disposition::DeadLettered { reason: got } => {
                assert!(got.contains(reason), "{got:?} lacks {reason:?}")
            }
            other => panic!("poison {reason:?} was not dead-lettered: {other:?}"),
        }
    }
    assert_eq!(h.bus.dead_letters().len(), poisons.len());
    // The good entry behind them is still handled normally.
    let d = h.deliver(Service::User, good).await.unwrap();
    assert!(matches!(d, Disposition::Applied { .. }), "{d:?}");
    let snapshot = h.snapshot().await;
    assert!(snapshot.balance_holds.contains_key(&scenario.orders[0].id));
    // Poison changed nothing: the only hold is the good order's.
    assert_eq!(snapshot.balance_holds.len(), 1);
}

#[tokio::test]
async fn an_event_that_cannot_apply_yet_is_retried_then_dead_lettered() {
    let (mut h, _) = harness();
    // PAYMENT_FAILED for an order Order has never seen: not yet applicable.
    let orphan = Event::new(
        OrderId::parse("never-placed").unwrap(),
        UserId::parse("user-0").unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::PaymentFailed(PaymentFailed {
            reason: "r".into(),
            attempted_amount: 1,
            item_id: ItemId::parse("item-0").unwrap(),
        }),
    );
    let id = h.bus.inject(Service::Order, orphan.encode().as_bytes());
    let max = harness_config().deliveries_max;
    for attempt in 1..=max {
        let d = h.deliver(Service::Order, id).await.unwrap();
        assert!(matches!(d, Disposition::Retry { .. }), "attempt {attempt}: {d:?}");
        assert!(h.bus.dead_letters().is_empty(), "not acknowledged, not dropped");
    }
    let d = h.deliver(Service::Order, id).await.unwrap();
    assert!(
        matches!(&d, Disposition::DeadLettered { reason } if reason.contains(&format!("after {max} deliveries"))),
        "{d:?}"
    );
    assert_eq!(h.bus.dead_letters().len(), 1);
    assert!(h.snapshot().await.orders.is_empty(), "nothing was written");
}
