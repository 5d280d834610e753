//! How a consumer handles one batch (`consumer::handle_batch`): the orders of
//! a batch concurrently, so one order stuck behind a row lock does not hold
//! up the others, and the events of one order one after another, in the
//! bus's order.
//!
//! Both are shown with a blocking transaction that holds a row lock of one
//! order while the batch runs; every wait is bounded, none is a sleep.
//! Those tests run with batched apply off (one transaction per event); the
//! batched path (one transaction for the batch, acks after its commit, an
//! event twice in a batch applied once, a bad event falling back to one
//! transaction per event) has its own tests below.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use purchase_saga::domain::event::{InventoryReservationFailed, Payload};
use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::{Event, EventType, ItemId, OrderId, RowKey, Service, UserId};
use purchase_saga::runtime::consumer::handle_batch;
use purchase_saga::runtime::memory::{harness_config, Harness};
use purchase_saga::runtime::{Delivery, Dispatch, Disposition, Env, Observer, RuntimeEvent, Store, StoreTx};
use purchase_saga::workload::{ItemSpec, OrderSpec, Scenario, UserSpec};
use tokio::sync::mpsc;

/// (order id, event type, disposition) of every handled delivery, in the
/// order they were handled.
type Handled = (String, EventType, Disposition);

struct Recorder(Mutex<mpsc::UnboundedSender<Handled>>);

impl Observer for Recorder {
    fn observe(&self, event: RuntimeEvent<'_>) {
        if let RuntimeEvent::Handled {
            event: Some(event),
            disposition,
            ..
        } = event
        {
            let sender = self.0.lock().expect("recorder mutex");
            let _ = sender.send((
                event.order_id.to_string(),
                event.event_type(),
                disposition.clone(),
            ));
        }
    }
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn scenario() -> Scenario {
    let item = ItemId::parse("sword").unwrap();
    let order = |id: &str, user: &str| OrderSpec {
        id: OrderId::parse(id).unwrap(),
        user: uid(user),
        item: item.clone(),
        quantity: 1,
        method: "WALLET".into(),
        at: Default::default(),
    };
    Scenario {
        users: ["alice", "bob"]
            .into_iter()
            .map(|u| UserSpec {
                id: uid(u),
                balance: 1_000,
                capacity: 10,
            })
            .collect(),
        items: vec![ItemSpec {
            id: item.clone(),
            name: "Sword".into(),
            price: 100,
            stock: 10,
        }],
        orders: vec![order("o-alice", "alice"), order("o-bob", "bob")],
    }
}

/// A harness whose two orders are placed and whose ORDER_CREATED events
/// wait in User's stream; the env reports handled deliveries on a channel.
async fn placed(concurrency: usize) -> (Harness, Env, mpsc::UnboundedReceiver<Handled>) {
    placed_with(concurrency, false).await
}

async fn placed_with(
    concurrency: usize,
    batch_apply: bool,
) -> (Harness, Env, mpsc::UnboundedReceiver<Handled>) {
    let s = scenario();
    let mut config = harness_config();
    config.handle_concurrency = concurrency;
    config.batch_apply = batch_apply;
    // The relay publishes, at the test's say: the bus then holds only the
    // deliveries under test (send on commit would add the replies).
    config.dispatch = Dispatch::Relay;
    let mut h = Harness::new(&s, config, Arc::new(SimulatedGateway::default()));
    for order in &s.orders {
        h.place(order).await.expect("order accepted");
    }
    assert_eq!(h.relay(Service::Order).await, 2, "both ORDER_CREATED published");
    let (tx, rx) = mpsc::unbounded_channel();
    let env = Env {
        observer: Arc::new(Recorder(Mutex::new(tx))),
        ..h.env.clone()
    };
    (h, env, rx)
}

fn deliveries(h: &Harness, service: Service) -> Vec<Delivery> {
    h.bus
        .deliverable(service)
        .into_iter()
        .map(|id| h.bus.deliver(service, id).expect("deliverable"))
        .collect()
}

/// Another transaction holding `user`'s account row lock until dropped.
async fn lock_account(h: &Harness, user: &str) -> Box<dyn StoreTx> {
    let mut blocker = h.store.begin(Service::User).await.unwrap();
    blocker
        .load_for_update(&RowKey::Account(uid(user)))
        .await
        .unwrap();
    blocker
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Handled>) -> Handled {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a delivery is handled within 5 s")
        .expect("the recorder lives")
}

#[tokio::test]
async fn an_order_behind_a_lock_does_not_hold_up_the_others() {
    let (h, env, mut rx) = placed(8).await;
    let batch = deliveries(&h, Service::User);
    assert_eq!(batch.len(), 2);
    // Alice's account is locked by another transaction; her order is first
    // in the batch.
    let blocker = lock_account(&h, "alice").await;
    let running = tokio::spawn(async move { handle_batch(&env, Service::User, "c1", &batch).await });

    let first = next(&mut rx).await;
    assert_eq!(
        (first.0.as_str(), &first.2),
        ("o-bob", &Disposition::Applied { emitted: 2 }),
        "bob's order is handled while alice's waits for the lock"
    );
    drop(blocker);
    let second = next(&mut rx).await;
    assert_eq!(
        (second.0.as_str(), &second.2),
        ("o-alice", &Disposition::Applied { emitted: 2 }),
        "alice's order goes on once the lock is free"
    );
    running.await.unwrap();
    assert_eq!(h.bus.unacknowledged(), 0, "both deliveries are acknowledged");
}

/// The grouping itself is unit-tested in `runtime::consumer`; this shows a
/// compensation and the step it undoes, of one order, in one batch behind a
/// lock, both applied in the bus's order.
#[tokio::test]
async fn one_orders_events_are_handled_in_the_bus_order() {
    let (h, env, mut rx) = placed(8).await;
    let mut batch = deliveries(&h, Service::User);
    // A compensation for alice's order, after her ORDER_CREATED in the
    // batch: handled before it, it would find nothing to release.
    let created = Event::decode(&batch[0].payload).unwrap();
    assert_eq!(created.order_id.as_str(), "o-alice");
    let compensation = Event::new(
        created.order_id.clone(),
        created.user_id.clone(),
        created.timestamp,
        Payload::InventoryReservationFailed(InventoryReservationFailed {
            reason: "no slot".into(),
            item_id: ItemId::parse("sword").unwrap(),
            requested_slots: 1,
            available_slots: 0,
        }),
    );
    let id = h.bus.inject(Service::User, compensation.encode().as_bytes());
    batch.push(h.bus.deliver(Service::User, id).expect("injected"));
    let blocker = lock_account(&h, "alice").await;
    let running = tokio::spawn(async move { handle_batch(&env, Service::User, "c1", &batch).await });
    assert_eq!(next(&mut rx).await.0, "o-bob");
    drop(blocker);
    let handled = [next(&mut rx).await, next(&mut rx).await];
    assert_eq!(
        handled.map(|(order, t, d)| (order, t, d)),
        [
            (
                "o-alice".to_string(),
                EventType::OrderCreated,
                Disposition::Applied { emitted: 2 }
            ),
            (
                "o-alice".to_string(),
                EventType::InventoryReservationFailed,
                Disposition::Applied { emitted: 1 }
            ),
        ],
        "the compensation follows the step it undoes"
    );
    running.await.unwrap();
}

#[tokio::test]
async fn with_concurrency_one_the_batch_is_handled_in_order() {
    let (h, env, mut rx) = placed(1).await;
    let batch = deliveries(&h, Service::User);
    let running = tokio::spawn(async move { handle_batch(&env, Service::User, "c1", &batch).await });
    let order: Vec<String> = vec![next(&mut rx).await.0, next(&mut rx).await.0];
    assert_eq!(order, ["o-alice", "o-bob"]);
    running.await.unwrap();
}

/// Every delivery handled so far, in order (the batch has returned).
fn drain(rx: &mut mpsc::UnboundedReceiver<Handled>) -> Vec<Handled> {
    let mut out = Vec::new();
    while let Ok(handled) = rx.try_recv() {
        out.push(handled);
    }
    out
}

#[tokio::test]
async fn a_batch_is_applied_in_one_commit_and_acknowledged_after_it() {
    let (h, env, mut rx) = placed_with(8, true).await;
    let batch = deliveries(&h, Service::User);
    assert_eq!(batch.len(), 2);
    let (commits, (outbox, inbox)) = (h.store.commits(), h.store.table_sizes(Service::User));
    handle_batch(&env, Service::User, "c1", &batch).await;
    assert_eq!(h.store.commits(), commits + 1, "one transaction for the batch");
    assert_eq!(
        h.store.table_sizes(Service::User),
        (outbox + 4, inbox + 2),
        "both events recorded, each with its two replies"
    );
    let handled: Vec<(String, Disposition)> = drain(&mut rx).into_iter().map(|(o, _, d)| (o, d)).collect();
    assert_eq!(
        handled,
        [
            ("o-alice".to_string(), Disposition::Applied { emitted: 2 }),
            ("o-bob".to_string(), Disposition::Applied { emitted: 2 }),
        ]
    );
    assert_eq!(
        h.bus.unacknowledged(),
        0,
        "both deliveries are acknowledged after the commit"
    );
}

#[tokio::test]
async fn an_event_twice_in_a_batch_is_applied_once() {
    let (h, env, mut rx) = placed_with(8, true).await;
    let mut batch = deliveries(&h, Service::User);
    let again = h.bus.inject(Service::User, &batch[0].payload);
    batch.push(h.bus.deliver(Service::User, again).expect("injected"));
    let (commits, (outbox, inbox)) = (h.store.commits(), h.store.table_sizes(Service::User));
    handle_batch(&env, Service::User, "c1", &batch).await;
    assert_eq!(h.store.commits(), commits + 1);
    assert_eq!(
        h.store.table_sizes(Service::User),
        (outbox + 4, inbox + 2),
        "the second copy wrote nothing"
    );
    let dispositions: Vec<Disposition> = drain(&mut rx).into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(
        dispositions,
        [
            Disposition::Applied { emitted: 2 },
            Disposition::Applied { emitted: 2 },
            Disposition::Duplicate,
        ]
    );
    assert_eq!(h.bus.unacknowledged(), 0, "all three deliveries are acknowledged");
}

/// A batch for Order of two applicable events and one for an order Order
/// does not know (not yet applicable): the batch's transaction fails and
/// each event gets its own. Returns (commits made, Order deliveries left
/// unacknowledged, the dispositions).
async fn batch_with_a_bad_event() -> (u64, usize, Vec<(String, Disposition)>) {
    let (h, env, mut rx) = placed_with(8, true).await;
    let failed = |order: &str, user: &str| {
        Event::new(
            OrderId::parse(order).unwrap(),
            uid(user),
            purchase_saga::domain::Timestamp::SIM_EPOCH,
            Payload::UserValidationFailed(purchase_saga::domain::event::UserValidationFailed {
                reason: "test".into(),
                required_amount: 100,
            }),
        )
    };
    let events = [
        failed("o-alice", "alice"),
        failed("o-ghost", "alice"),
        failed("o-bob", "bob"),
    ];
    let batch: Vec<Delivery> = events
        .iter()
        .map(|e| {
            let id = h.bus.inject(Service::Order, e.encode().as_bytes());
            h.bus.deliver(Service::Order, id).expect("injected")
        })
        .collect();
    let unacked = h.bus.unacknowledged();
    let commits = h.store.commits();
    handle_batch(&env, Service::Order, "c1", &batch).await;
    let handled = drain(&mut rx).into_iter().map(|(o, _, d)| (o, d)).collect();
    (
        h.store.commits() - commits,
        h.bus.unacknowledged() + events.len() - unacked,
        handled,
    )
}

#[tokio::test]
async fn a_bad_event_makes_the_batch_fall_back_and_costs_only_itself() {
    let (commits, unacked, handled) = batch_with_a_bad_event().await;
    assert_eq!(commits, 2, "one transaction per applicable event");
    assert_eq!(unacked, 1, "only the inapplicable event is left for redelivery");
    assert_eq!(handled.len(), 3);
    assert!(handled.contains(&("o-alice".into(), Disposition::Applied { emitted: 1 })));
    assert!(handled.contains(&("o-bob".into(), Disposition::Applied { emitted: 1 })));
    assert!(matches!(
        handled.iter().find(|(o, _)| o == "o-ghost"),
        Some((_, Disposition::Retry { .. }))
    ));
}

/// The planted bug in the batched path is caught by the test above: its
/// fallback's uncommitted delivery is acknowledged.
#[cfg(feature = "mutants")]
#[tokio::test]
async fn mutant_batch_acks_uncommitted_is_caught() {
    use purchase_saga::mutants::{self, Mutant};
    mutants::activate(Some(Mutant::BatchAcksUncommitted));
    let (_, unacked, _) = batch_with_a_bad_event().await;
    mutants::activate(None);
    assert_eq!(unacked, 0, "the mutant acknowledged the event nobody committed");
}
