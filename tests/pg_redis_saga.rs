//! The whole saga on the production adapters: PgStore (a fresh database)
//! and RedisBus (a fresh key prefix), driven by the runtime's own loops
//! (`consumer::run`, `relay::run`, `sweeper::run`) with several replicas per
//! service, ending with the domain's quiescence invariants clean.
//!
//! Covers: every saga path; every event of finished sagas delivered again
//! out of order (changes nothing); Redis losing everything mid-run
//! (re-drive completes every order); 200 concurrent orders contending for
//! little stock and balance (no deadlock surfaces).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use purchase_saga::adapters::postgres::PgStore;
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::domain::gateway::{SimulatedGateway, DECLINING_METHOD, DEFAULT_METHOD};
use purchase_saga::domain::invariants::{self, Snapshot};
use purchase_saga::domain::participants::order::PlaceOrder;
use purchase_saga::domain::rows::OrderStatus;
use purchase_saga::domain::{DurationMs, Event, FailedStep, ItemId, OrderId, Service, UserId};
use purchase_saga::runtime::commands::{place_order, Placed};
use purchase_saga::runtime::observer::{Disposition, Observer, RuntimeEvent};
use purchase_saga::runtime::store::{RedrivePolicy, Store};
use purchase_saga::runtime::{consumer, relay, sweeper, Bus, Env, RuntimeConfig, SystemClock};
use purchase_saga::workload::{ItemSpec, OrderSpec, Scenario, UserSpec};
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

/// Counts what the runtime did, for assertions and the report.
#[derive(Default)]
struct Counters {
    conflicts_retried: AtomicU64,
    applied: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    republished: AtomicU64,
    /// Deliveries with attempt >= 2: taken over after the visibility timeout.
    redelivered: AtomicU64,
}

impl Observer for Counters {
    fn observe(&self, event: RuntimeEvent<'_>) {
        if let RuntimeEvent::Handled { attempt, .. } = &event {
            if *attempt >= 2 {
                self.redelivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        let counter = match event {
            RuntimeEvent::ConflictRetried { .. } => &self.conflicts_retried,
            RuntimeEvent::Handled { disposition, .. } => match disposition {
                Disposition::Applied { .. } | Disposition::Ignored => &self.applied,
                Disposition::Duplicate => &self.duplicates,
                Disposition::Retry { .. } => &self.retries,
                Disposition::DeadLettered { .. } => &self.dead_lettered,
            },
            RuntimeEvent::Published { republish, .. } if republish > 0 => &self.republished,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Counters {
    fn line(&self) -> String {
        format!(
            "applied={} duplicates={} retries={} dead_lettered={} conflicts_retried={} republished={} redelivered={}",
            self.applied.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.conflicts_retried.load(Ordering::Relaxed),
            self.republished.load(Ordering::Relaxed),
            self.redelivered.load(Ordering::Relaxed),
        )
    }
}

/// A database, a Redis prefix, and the runtime's environment over them.
struct Stack {
    db: common::TestDb,
    redis: common::TestRedis,
    store: PgStore,
    bus: RedisBus,
    env: Env,
    counters: Arc<Counters>,
    loops: JoinSet<()>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

fn config(redrive_after: DurationMs) -> RuntimeConfig {
    RuntimeConfig {
        batch_size: 16,
        idle_poll: Duration::from_millis(20),
        error_backoff: Duration::from_millis(100),
        saga_deadline: DurationMs::from_secs(120),
        redrive: RedrivePolicy {
            after: redrive_after,
            republish_max: 8,
            horizon: DurationMs::from_secs(600),
        },
        ..RuntimeConfig::default()
    }
}

impl Stack {
    async fn new(label: &str, scenario: &Scenario, config: RuntimeConfig, pool: u32) -> Stack {
        // Longer than the slowest handler: a transaction with its conflict
        // retries stays well under it.
        Stack::with_visibility(label, scenario, config, pool, Duration::from_secs(10)).await
    }

    async fn with_visibility(
        label: &str,
        scenario: &Scenario,
        config: RuntimeConfig,
        pool: u32,
        visibility_timeout: Duration,
    ) -> Stack {
        let db = common::TestDb::create_with(common::test_pg_config(pool)).await;
        let redis = common::TestRedis::create(label);
        let bus = RedisBus::connect(
            &redis.url,
            RedisConfig {
                prefix: redis.prefix.clone(),
                visibility_timeout,
                block: Duration::from_millis(50),
                ..RedisConfig::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let store = db.store.clone();
        store.seed_rows(&scenario.opening_rows()).await.expect("seed");
        let counters = Arc::new(Counters::default());
        let env = Env {
            store: Arc::new(store.clone()),
            bus: Arc::new(bus.clone()),
            clock: Arc::new(SystemClock),
            gateway: Arc::new(SimulatedGateway::default()),
            observer: counters.clone(),
            config,
        };
        Stack {
            db,
            redis,
            store,
            bus,
            env,
            counters,
            loops: JoinSet::new(),
            stop: None,
        }
    }

    /// Starts `replicas` consumers per service, one relay per service and
    /// the deadline sweeper.
    fn start(&mut self, replicas: usize) {
        self.start_except(replicas, None);
    }

    /// As `start`, without the consumers of `idle` (if any).
    fn start_except(&mut self, replicas: usize, idle: Option<Service>) {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        for service in Service::ALL {
            let replicas = if Some(service) == idle { 0 } else { replicas };
            for replica in 0..replicas {
                let name = format!("{}-{replica}", service.slug());
                self.loops
                    .spawn(consumer::run(self.env.clone(), service, name, shutdown.clone()));
            }
            self.loops
                .spawn(relay::run(self.env.clone(), service, shutdown.clone()));
        }
        self.loops.spawn(sweeper::run(self.env.clone(), shutdown));
        self.stop = Some(stop);
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(true).unwrap();
        }
        let bounded = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(joined) = self.loops.join_next().await {
                joined.expect("a runtime loop panicked");
            }
        });
        bounded.await.expect("the loops stop after shutdown");
    }

    async fn place(&self, o: &OrderSpec) {
        let placed = place_order(&self.env, &command(o)).await.expect("order accepted");
        assert_eq!(placed, Placed::Created);
    }

    /// Polls until every order is terminal, the quiescence invariants hold,
    /// every outbox is published and every group has acknowledged
    /// everything; panics with the violations at the deadline.
    async fn wait_quiescent(&self, within: Duration) -> Snapshot {
        let deadline = Instant::now() + within;
        loop {
            let snapshot = self.store.snapshot().await.expect("snapshot");
            let violations = invariants::check_quiescent(&snapshot);
            if violations.is_empty() && self.drained().await {
                return snapshot;
            }
            if Instant::now() >= deadline {
                let pending = snapshot
                    .orders
                    .values()
                    .filter(|o| !o.status.is_terminal())
                    .count();
                panic!(
                    "not quiescent after {within:?}: {pending} orders pending; {}\nviolations: {violations:#?}",
                    self.counters.line()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn drained(&self) -> bool {
        for service in Service::ALL {
            if self.store.outbox_backlog(service).await.unwrap() > 0
                || self.bus.pending_count(service).await.unwrap() > 0
            {
                return false;
            }
        }
        true
    }

    async fn dead_letters(&self) -> Vec<String> {
        let mut all = Vec::new();
        for service in Service::ALL {
            for d in self.bus.dead_letters(service, 100).await.unwrap() {
                all.push(format!("{service}: {}", d.letter.reason));
            }
        }
        all
    }
}

fn command(o: &OrderSpec) -> PlaceOrder {
    PlaceOrder {
        order_id: o.id.clone(),
        user_id: o.user.clone(),
        item_id: o.item.clone(),
        quantity: o.quantity,
        payment_method: o.method.clone(),
    }
}

fn user(id: &str, balance: i64, capacity: i64) -> UserSpec {
    UserSpec {
        id: UserId::parse(id).unwrap(),
        balance,
        capacity,
    }
}

fn item(id: &str, price: i64, stock: i64) -> ItemSpec {
    ItemSpec {
        id: ItemId::parse(id).unwrap(),
        name: format!("The {id}"),
        price,
        stock,
    }
}

fn order(id: &str, user: &str, item: &str, quantity: i64, method: &str) -> OrderSpec {
    OrderSpec {
        id: OrderId::parse(id).unwrap(),
        user: UserId::parse(user).unwrap(),
        item: ItemId::parse(item).unwrap(),
        quantity,
        method: method.into(),
        at: DurationMs(0),
    }
}

/// One order per saga path (the deadline paths need a controlled clock and
/// are covered by tests/saga_paths.rs on the same runtime).
fn every_path() -> (Scenario, Vec<(OrderSpec, OrderStatus, Option<FailedStep>)>) {
    let scenario = Scenario {
        users: vec![
            user("alice", 1000, 10),
            user("poor", 50, 10),
            user("cramped", 1000, 1),
        ],
        items: vec![item("sword", 150, 5), item("rare", 10, 1)],
        orders: vec![],
    };
    use OrderStatus::*;
    let cases = vec![
        (
            order("o-success", "alice", "sword", 2, DEFAULT_METHOD),
            Completed,
            None,
        ),
        (
            order("o-unknown-user", "mallory", "sword", 1, DEFAULT_METHOD),
            Failed,
            Some(FailedStep::UserValidation),
        ),
        (
            order("o-poor", "poor", "sword", 1, DEFAULT_METHOD),
            Failed,
            Some(FailedStep::UserValidation),
        ),
        (
            order("o-cramped", "cramped", "sword", 2, DEFAULT_METHOD),
            Failed,
            Some(FailedStep::InventoryReservation),
        ),
        (
            order("o-no-stock", "alice", "rare", 2, DEFAULT_METHOD),
            Failed,
            Some(FailedStep::ItemReservation),
        ),
        (
            order("o-declined", "alice", "sword", 1, DECLINING_METHOD),
            Failed,
            Some(FailedStep::Payment),
        ),
    ];
    (scenario, cases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_path_on_postgres_and_redis() {
    let (scenario, cases) = every_path();
    let mut stack = Stack::new("saga-paths", &scenario, config(DurationMs::from_secs(5)), 12).await;
    stack.start(2);
    for (o, _, _) in &cases {
        stack.place(o).await;
    }
    let snapshot = stack.wait_quiescent(Duration::from_secs(60)).await;
    stack.shutdown().await;
    for (o, status, step) in &cases {
        let got = &snapshot.orders[&o.id];
        assert_eq!((got.status, got.failed_step), (*status, *step), "order {}", o.id);
    }
    assert_eq!(stack.dead_letters().await, Vec::<String>::new());
    let timeline = stack
        .store
        .timeline(&OrderId::parse("o-success").unwrap())
        .await
        .unwrap();
    let types: Vec<&str> = timeline.iter().map(|t| t.event_type.as_str()).collect();
    assert_eq!(types.first(), Some(&"ORDER_CREATED"));
    assert!(
        types.contains(&"PAYMENT_PROCESSED") && types.contains(&"ORDER_COMPLETED"),
        "{types:?}"
    );
    assert!(timeline.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    eprintln!("every path: {}", stack.counters.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_delivered_again_out_of_order_changes_nothing() {
    let (scenario, cases) = every_path();
    let mut stack = Stack::new("saga-dup", &scenario, config(DurationMs::from_secs(60)), 12).await;
    stack.start(1);
    for (o, _, _) in &cases {
        stack.place(o).await;
    }
    let before = stack.wait_quiescent(Duration::from_secs(60)).await;
    stack.shutdown().await;

    // Every event of every order, XADDed again, newest first.
    let mut events: Vec<Event> = Vec::new();
    for (o, _, _) in &cases {
        for entry in stack.store.timeline(&o.id).await.unwrap() {
            events.push(Event::decode(entry.payload.as_bytes()).unwrap());
        }
    }
    events.reverse();
    let mut expected_deliveries = 0;
    for event in &events {
        stack.bus.publish(event).await.unwrap();
        expected_deliveries += purchase_saga::domain::service::subscribers(event.event_type()).len();
    }
    assert!(
        expected_deliveries > 30,
        "the sagas emitted a real number of events"
    );
    let sizes_before = table_sizes(&stack.store).await;

    let mut handled = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled < expected_deliveries {
        assert!(
            Instant::now() < deadline,
            "redelivered {handled} of {expected_deliveries}"
        );
        for service in Service::ALL {
            for delivery in stack.bus.receive(service, "replayer", 32).await.unwrap() {
                let disposition = consumer::handle_delivery(&stack.env, service, "replayer", &delivery).await;
                assert_eq!(
                    disposition,
                    Disposition::Duplicate,
                    "{service} entry {}",
                    delivery.entry_id
                );
                handled += 1;
            }
        }
    }
    assert_eq!(stack.store.snapshot().await.unwrap(), before, "no row changed");
    assert_eq!(
        table_sizes(&stack.store).await,
        sizes_before,
        "no outbox or inbox row added"
    );
    assert!(invariants::check_quiescent(&before).is_empty());
}

async fn table_sizes(store: &PgStore) -> Vec<(i64, i64)> {
    let mut sizes = Vec::new();
    for service in Service::ALL {
        sizes.push(store.table_sizes(service).await.unwrap());
    }
    sizes
}

fn contended_scenario(orders: usize, seed: u64) -> Scenario {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let users: Vec<UserSpec> = (0..8)
        .map(|u| {
            user(
                &format!("user-{u}"),
                rng.random_range(100..=600),
                rng.random_range(2..=8),
            )
        })
        .collect();
    let items: Vec<ItemSpec> = (0..3)
        .map(|i| {
            item(
                &format!("item-{i}"),
                rng.random_range(20..=80),
                rng.random_range(3..=10),
            )
        })
        .collect();
    let orders = (0..orders)
        .map(|n| {
            let buyer = if rng.random_ratio(1, 20) {
                "ghost".to_string()
            } else {
                users[rng.random_range(0..users.len())].id.to_string()
            };
            let method = if rng.random_ratio(1, 10) {
                DECLINING_METHOD
            } else {
                DEFAULT_METHOD
            };
            order(
                &format!("order-{n}"),
                &buyer,
                items[rng.random_range(0..items.len())].id.as_str(),
                rng.random_range(1..=3),
                method,
            )
        })
        .collect();
    Scenario { users, items, orders }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_losing_everything_mid_run_delays_but_never_strands_a_saga() {
    let scenario = contended_scenario(30, 7);
    let mut stack = Stack::new("saga-flush", &scenario, config(DurationMs::from_secs(1)), 16).await;
    // Payment's consumers are down: sagas pile up in its stream.
    stack.start_except(2, Some(Service::Payment));
    for o in &scenario.orders {
        stack.place(o).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting_at_payment = loop {
        assert!(
            Instant::now() < deadline,
            "sagas never reached Payment: {}",
            stack.counters.line()
        );
        let mut others_settled = true;
        for service in Service::ALL.into_iter().filter(|s| *s != Service::Payment) {
            others_settled &= stack.store.outbox_backlog(service).await.unwrap() == 0
                && stack.bus.pending_count(service).await.unwrap() == 0;
        }
        let waiting = stack.bus.stream_len(Service::Payment).await.unwrap();
        if others_settled && waiting > 0 {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pending = stack
        .store
        .snapshot()
        .await
        .unwrap()
        .orders
        .values()
        .filter(|o| !o.status.is_terminal())
        .count();
    assert!(pending > 0, "orders wait for Payment");
    // Redis restarts with nothing on disk (emulated on this test's keys):
    // the entries waiting for Payment are gone.
    assert!(stack.redis.flush_prefix() > 0);
    assert_eq!(stack.bus.stream_len(Service::Payment).await.unwrap(), 0);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let mut payment = JoinSet::new();
    for replica in 0..2 {
        let name = format!("payment-late-{replica}");
        payment.spawn(consumer::run(
            stack.env.clone(),
            Service::Payment,
            name,
            shutdown.clone(),
        ));
    }
    let snapshot = stack.wait_quiescent(Duration::from_secs(60)).await;
    payment.abort_all();
    stack.shutdown().await;
    assert_eq!(snapshot.orders.len(), scenario.orders.len());
    assert!(
        stack.counters.republished.load(Ordering::Relaxed) >= waiting_at_payment,
        "re-drive republished the {waiting_at_payment} lost events: {}",
        stack.counters.line()
    );
    eprintln!(
        "flush with {pending} orders pending, {waiting_at_payment} entries lost: {}",
        stack.counters.line()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_contending_for_little_stock_and_balance() {
    let scenario = contended_scenario(200, 42);
    let mut stack = Stack::new("saga-200", &scenario, config(DurationMs::from_secs(5)), 24).await;
    stack.start(3);
    let started = Instant::now();
    let mut placing = JoinSet::new();
    for o in scenario.orders.clone() {
        let env = stack.env.clone();
        placing.spawn(async move { place_order(&env, &command(&o)).await });
    }
    while let Some(placed) = placing.join_next().await {
        assert_eq!(placed.unwrap().expect("order accepted"), Placed::Created);
    }
    let placed_in = started.elapsed();
    let snapshot = stack.wait_quiescent(Duration::from_secs(50)).await;
    let settled_in = started.elapsed();
    stack.shutdown().await;
    assert_eq!(snapshot.orders.len(), 200);
    let completed = snapshot
        .orders
        .values()
        .filter(|o| o.status == OrderStatus::Completed)
        .count();
    assert!(
        completed > 0 && completed < 200,
        "contention made some fail and some succeed: {completed}"
    );
    assert_eq!(
        stack.dead_letters().await,
        Vec::<String>::new(),
        "no event gave up"
    );
    eprintln!(
        "200 orders: placed in {placed_in:?}, quiescent after {settled_in:?}; completed {completed}; {}",
        stack.counters.line()
    );
    drop(stack.db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stopped_mid_batch_is_taken_over_by_another_replica() {
    let (scenario, cases) = every_path();
    let visibility = Duration::from_millis(800);
    let mut stack = Stack::with_visibility(
        "saga-takeover",
        &scenario,
        config(DurationMs::from_secs(60)),
        12,
        visibility,
    )
    .await;
    // Everything runs but User's consumers.
    stack.start_except(2, Some(Service::User));
    for (o, _, _) in &cases {
        stack.place(o).await;
    }
    // A User replica takes a batch and dies without handling or acking it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut taken = Vec::new();
    while taken.len() < cases.len() {
        assert!(
            Instant::now() < deadline,
            "ORDER_CREATED reached User: {}",
            taken.len()
        );
        taken.extend(
            stack
                .bus
                .receive(Service::User, "user-crashed", 32)
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        stack.bus.pending_count(Service::User).await.unwrap(),
        cases.len() as u64
    );
    // Another replica starts; it must take the batch over.
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let survivor = tokio::spawn(consumer::run(
        stack.env.clone(),
        Service::User,
        "user-survivor".into(),
        shutdown,
    ));
    let snapshot = stack.wait_quiescent(Duration::from_secs(60)).await;
    survivor.abort();
    stack.shutdown().await;
    for (o, status, step) in &cases {
        let got = &snapshot.orders[&o.id];
        assert_eq!((got.status, got.failed_step), (*status, *step), "order {}", o.id);
    }
    assert!(
        stack.counters.redelivered.load(Ordering::Relaxed) >= cases.len() as u64,
        "the stopped consumer's entries were redelivered: {}",
        stack.counters.line()
    );
}
