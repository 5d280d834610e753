//! Issue 13: a delivery that keeps failing the same way is dead-lettered
//! with the error that kept failing it, on the in-memory store and on
//! PostgreSQL. The test holds the row lock the User step needs (the
//! account), so every apply meets the lock timeout; the consumer retries
//! the conflict, leaves the entry for redelivery, and past
//! `deliveries_max` dead-letters it naming the lock timeout. A consumer
//! that never met the entry's error says so instead of a silent gap.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{test_pg_config, TestDb};
use purchase_saga::adapters::postgres::PgConfig;
use purchase_saga::cli::seed::seed_rows;
use purchase_saga::domain::event::{Event, OrderCreated, Payload};
use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::{DurationMs, ItemId, OrderId, RowKey, Service, Timestamp, UserId};
use purchase_saga::runtime::bus::Delivery;
use purchase_saga::runtime::memory::{MemoryBus, MemoryStore};
use purchase_saga::runtime::{
    consumer, Bus, Disposition, Env, NoObserver, RuntimeConfig, Store, SystemClock,
};
use purchase_saga::workload::{ItemSpec, Scenario, UserSpec};

const DELIVERIES_MAX: u32 = 3;

fn config() -> RuntimeConfig {
    RuntimeConfig {
        deliveries_max: DELIVERIES_MAX,
        conflict_retries_max: 1,
        conflict_backoff: Duration::from_millis(1),
        idle_poll: Duration::from_millis(5),
        error_backoff: Duration::from_millis(10),
        ..RuntimeConfig::default()
    }
}

fn opening_rows() -> Vec<purchase_saga::domain::Row> {
    Scenario {
        users: vec![UserSpec {
            id: UserId::parse("alice").unwrap(),
            balance: 1_000,
            capacity: 10,
        }],
        items: vec![ItemSpec {
            id: ItemId::parse("sword").unwrap(),
            name: "Sword".into(),
            price: 150,
            stock: 5,
        }],
        orders: vec![],
    }
    .opening_rows()
}

fn order_created() -> Event {
    Event::new(
        OrderId::parse("o-locked").unwrap(),
        UserId::parse("alice").unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::OrderCreated(OrderCreated {
            item_id: ItemId::parse("sword").unwrap(),
            quantity: 1,
            total_amount: 150,
            payment_method: "WALLET".into(),
        }),
    )
}

fn env(store: Arc<dyn Store>, bus: &MemoryBus) -> Env {
    Env {
        store,
        bus: Arc::new(bus.clone()) as Arc<dyn Bus>,
        clock: Arc::new(SystemClock),
        gateway: Arc::new(SimulatedGateway::default()),
        observer: Arc::new(NoObserver),
        config: config(),
    }
}

/// Runs User's consumer until one entry is dead-lettered (bounded); its
/// reason.
async fn dead_letter_reason(env: &Env, bus: &MemoryBus) -> String {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(consumer::run(env.clone(), Service::User, "c1".into(), shutdown));
    let deadline = Instant::now() + Duration::from_secs(60);
    while bus.dead_letters().is_empty() {
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    consumer.await.unwrap();
    let letters = bus.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    letters[0].reason.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_a_dead_letter_names_the_lock_timeout_that_kept_failing_it() {
    let store = MemoryStore::new().with_lock_timeout(Duration::from_millis(20));
    store.seed(opening_rows());
    let mut held = store.begin(Service::User).await.unwrap();
    held.load_for_update(&RowKey::Account(UserId::parse("alice").unwrap()))
        .await
        .unwrap();
    let bus = MemoryBus::new(Arc::new(SystemClock), DurationMs(50));
    bus.publish(&order_created()).await.unwrap();
    let reason = dead_letter_reason(&env(Arc::new(store), &bus), &bus).await;
    assert!(
        reason.starts_with(&format!(
            "not applied after {DELIVERIES_MAX} deliveries; last error: transaction conflict: lock timeout"
        )),
        "{reason}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_dead_letter_names_the_lock_timeout_that_kept_failing_it() {
    let db = TestDb::create_with(PgConfig {
        lock_timeout: Duration::from_millis(50),
        ..test_pg_config(4)
    })
    .await;
    seed_rows(&db.store, &opening_rows()).await.unwrap();
    let mut held = db.store.pool().begin().await.unwrap();
    sqlx::query("SELECT balance FROM user_svc.accounts WHERE user_id = 'alice' FOR UPDATE")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    let bus = MemoryBus::new(Arc::new(SystemClock), DurationMs(200));
    bus.publish(&order_created()).await.unwrap();
    let reason = dead_letter_reason(&env(Arc::new(db.store.clone()), &bus), &bus).await;
    assert!(
        reason.starts_with(&format!(
            "not applied after {DELIVERIES_MAX} deliveries; last error: "
        )) && reason.contains("55P03")
            && reason.contains("lock timeout"),
        "{reason}"
    );
    held.rollback().await.unwrap();
}

/// A consumer that never met the entry's failures (another replica did,
/// or a process before a restart) says the cause is unknown to it.
#[tokio::test]
async fn a_consumer_that_never_saw_the_error_says_so() {
    let store = MemoryStore::new();
    store.seed(opening_rows());
    let bus = MemoryBus::new(Arc::new(SystemClock), DurationMs(50));
    let env = env(Arc::new(store), &bus);
    bus.publish(&order_created()).await.unwrap();
    let received = bus.receive(Service::User, "c2", 1).await.unwrap();
    // Its earlier deliveries went to another consumer (or process).
    let delivery = Delivery {
        attempt: DELIVERIES_MAX + 1,
        ..received[0].clone()
    };
    let disposition = consumer::handle_delivery(&env, Service::User, "c2", &delivery).await;
    let Disposition::DeadLettered { reason } = disposition else {
        panic!("past the limit and not applied: {disposition:?}")
    };
    assert!(
        reason.starts_with(&format!(
            "not applied after {DELIVERIES_MAX} deliveries; last error unknown to this consumer"
        )),
        "{reason}"
    );
}
