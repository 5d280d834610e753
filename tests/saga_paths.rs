//! Every saga path of the founding document, driven step by step on the
//! in-memory runtime, with the full trace pinned by an insta snapshot and the
//! invariants checked at quiescence.

use std::sync::Arc;

use purchase_saga::domain::gateway::{SimulatedGateway, DECLINING_METHOD, DEFAULT_METHOD};
use purchase_saga::domain::rows::OrderStatus;
use purchase_saga::domain::{DurationMs, FailedStep, ItemId, OrderId, Service, UserId};
use purchase_saga::runtime::memory::{harness_config, Harness};
use purchase_saga::runtime::RuntimeConfig;
use purchase_saga::workload::{ItemSpec, OrderSpec, Scenario, UserSpec};

fn scenario(balance: i64, capacity: i64, stock: i64) -> Scenario {
    Scenario {
        users: vec![UserSpec {
            id: UserId::parse("alice").unwrap(),
            balance,
            capacity,
        }],
        items: vec![ItemSpec {
            id: ItemId::parse("sword").unwrap(),
            name: "Iron Sword".into(),
            price: 150,
            stock,
        }],
        orders: vec![],
    }
}

fn order(user: &str, quantity: i64, method: &str) -> OrderSpec {
    OrderSpec {
        id: OrderId::parse("order-1").unwrap(),
        user: UserId::parse(user).unwrap(),
        item: ItemId::parse("sword").unwrap(),
        quantity,
        method: method.into(),
        at: DurationMs(0),
    }
}

/// The harness's settings with re-drive pushed past the deadline, so the
/// traces show each path's own deliveries and no republished copies.
fn config() -> RuntimeConfig {
    let mut config = harness_config();
    config.redrive.after = DurationMs::from_secs(60);
    config
}

fn harness(s: &Scenario) -> Harness {
    Harness::new(s, config(), Arc::new(SimulatedGateway::default()))
}

/// Places the order, drains the saga FIFO, checks every invariant, and
/// returns the trace and the order's outcome.
async fn run_fifo(s: Scenario, o: OrderSpec) -> (String, OrderStatus, Option<FailedStep>) {
    let mut h = harness(&s);
    h.place(&o).await.expect("order accepted");
    h.drain(|_| true).await;
    finish(h, &o).await
}

async fn finish(h: Harness, o: &OrderSpec) -> (String, OrderStatus, Option<FailedStep>) {
    let violations = h.final_violations().await;
    assert!(
        violations.is_empty(),
        "violations: {violations:#?}\ntrace:\n{}",
        h.trace.lines().join("\n")
    );
    let snapshot = h.snapshot().await;
    let order = &snapshot.orders[&o.id];
    (h.trace.lines().join("\n"), order.status, order.failed_step)
}

#[tokio::test]
async fn success() {
    let (trace, status, _) = run_fifo(scenario(1000, 10, 5), order("alice", 2, DEFAULT_METHOD)).await;
    assert_eq!(status, OrderStatus::Completed);
    insta::assert_snapshot!(trace);
}

#[tokio::test]
async fn user_validation_fails_for_unknown_user() {
    let (trace, status, step) = run_fifo(scenario(1000, 10, 5), order("mallory", 1, DEFAULT_METHOD)).await;
    assert_eq!(
        (status, step),
        (OrderStatus::Failed, Some(FailedStep::UserValidation))
    );
    insta::assert_snapshot!(trace);
}

#[tokio::test]
async fn user_validation_fails_for_insufficient_balance() {
    let (trace, status, step) = run_fifo(scenario(299, 10, 5), order("alice", 2, DEFAULT_METHOD)).await;
    assert_eq!(
        (status, step),
        (OrderStatus::Failed, Some(FailedStep::UserValidation))
    );
    insta::assert_snapshot!(trace);
}

#[tokio::test]
async fn inventory_reservation_fails() {
    let (trace, status, step) = run_fifo(scenario(1000, 1, 5), order("alice", 2, DEFAULT_METHOD)).await;
    assert_eq!(
        (status, step),
        (OrderStatus::Failed, Some(FailedStep::InventoryReservation))
    );
    insta::assert_snapshot!(trace);
}

#[tokio::test]
async fn item_reservation_fails() {
    let (trace, status, step) = run_fifo(scenario(1000, 10, 1), order("alice", 2, DEFAULT_METHOD)).await;
    assert_eq!(
        (status, step),
        (OrderStatus::Failed, Some(FailedStep::ItemReservation))
    );
    insta::assert_snapshot!(trace);
}

#[tokio::test]
async fn payment_fails() {
    let (trace, status, step) = run_fifo(scenario(1000, 10, 5), order("alice", 2, DECLINING_METHOD)).await;
    assert_eq!((status, step), (OrderStatus::Failed, Some(FailedStep::Payment)));
    insta::assert_snapshot!(trace);
}

/// The deadline reaches Payment while ITEM_RESERVED waits in its stream:
/// the pivot cancels, the compensation chain runs, the late ITEM_RESERVED is
/// a no-op.
#[tokio::test]
async fn deadline_passes_before_payment() {
    let s = scenario(1000, 10, 5);
    let o = order("alice", 2, DEFAULT_METHOD);
    let mut h = harness(&s);
    h.place(&o).await.unwrap();
    h.drain(|s| s != Service::Payment).await;
    let item_reserved = *h
        .bus
        .deliverable(Service::Payment)
        .first()
        .expect("ITEM_RESERVED waits");
    h.advance(config().saga_deadline);
    assert_eq!(h.sweep().await, 1, "one deadline signalled");
    h.relay(Service::Order).await;
    let deadline = *h.bus.deliverable(Service::Payment).last().unwrap();
    assert_ne!(deadline, item_reserved);
    h.deliver(Service::Payment, deadline).await;
    h.drain(|_| true).await;
    let (trace, status, step) = finish(h, &o).await;
    assert_eq!((status, step), (OrderStatus::Failed, Some(FailedStep::Payment)));
    insta::assert_snapshot!(trace);
}

/// The deadline passes after Payment processed the order but before Order
/// heard of it: the pivot ignores the cancel and the order completes.
#[tokio::test]
async fn deadline_passes_after_payment() {
    let s = scenario(1000, 10, 5);
    let o = order("alice", 2, DEFAULT_METHOD);
    let mut h = harness(&s);
    h.place(&o).await.unwrap();
    h.drain(|s| s != Service::Order).await;
    h.advance(config().saga_deadline);
    assert_eq!(h.sweep().await, 1, "the order is still PENDING at Order");
    h.drain(|s| s != Service::Order).await;
    h.drain(|_| true).await;
    let (trace, status, _) = finish(h, &o).await;
    assert_eq!(status, OrderStatus::Completed);
    insta::assert_snapshot!(trace);
}
