//! `purchase-saga dlq list|replay` against the real Redis (a unique key
//! prefix): a malformed entry XADDed by hand and an event that cannot apply
//! (its order does not exist yet) are dead-lettered with their reasons by a
//! running Order consumer, which meanwhile handles the entry between them;
//! `dlq list` shows both; once the order exists, `dlq replay` of the second
//! gets it applied and removes it from the dead-letter stream.

mod common;
mod http_support;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestDb, TestRedis};
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::cli::seed::seed_rows;
use purchase_saga::domain::event::{Event, Payload, PaymentFailed};
use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::participants::order::PlaceOrder;
use purchase_saga::domain::rows::Order;
use purchase_saga::domain::{ItemId, OrderId, Row, RowKey, Service, Timestamp, UserId};
use purchase_saga::runtime::commands::{place_order, read_row};
use purchase_saga::runtime::memory::MemoryStore;
use purchase_saga::runtime::{consumer, Env, NoObserver, RuntimeConfig, Store, SystemClock};

const BOUND: Duration = Duration::from_secs(20);

/// The binary on `redis` (and `db`: `dlq` checks that the services'
/// schemas are migrated before it replays anything, issue 27).
fn cli(redis: &TestRedis, db: &TestDb, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_purchase-saga"))
        .env_remove("RUST_LOG")
        .args(["--redis-url", &redis.url, "--redis-prefix", &redis.prefix])
        .args(["--database-url", &db.url])
        .args(args)
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn listed(redis: &TestRedis, db: &TestDb) -> Vec<Vec<String>> {
    let out = cli(redis, db, &["dlq", "list", "--service", "order"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("service\tdead-id\tentry-id\tattempts\treason\tpayload"),
        "a header first"
    );
    lines
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn payment_failed(order: &str) -> String {
    Event::new(
        OrderId::parse(order).unwrap(),
        UserId::parse("alice").unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::PaymentFailed(PaymentFailed {
            reason: "card declined".into(),
            attempted_amount: 150,
            item_id: ItemId::parse("sword").unwrap(),
        }),
    )
    .encode()
}

async fn place(env: &Env, order: &str) {
    let cmd = PlaceOrder {
        order_id: OrderId::parse(order).unwrap(),
        user_id: UserId::parse("alice").unwrap(),
        item_id: ItemId::parse("sword").unwrap(),
        quantity: 1,
        payment_method: "WALLET".into(),
    };
    place_order(env, &cmd).await.expect("placing");
}

async fn order(env: &Env, id: &str) -> Order {
    match read_row(env, &RowKey::Order(OrderId::parse(id).unwrap()))
        .await
        .unwrap()
    {
        Some(Row::Order(o)) => o,
        other => panic!("order {id}: {other:?}"),
    }
}

/// Polls `done` until it holds, up to [`BOUND`].
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + BOUND;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_a_fixed_one_replays_and_applies() {
    let redis = TestRedis::create("dlq");
    let db = TestDb::create().await;
    let config = RedisConfig {
        prefix: redis.prefix.clone(),
        visibility_timeout: Duration::from_millis(200),
        block: Duration::from_millis(20),
        ..RedisConfig::default()
    };
    let bus = RedisBus::connect(&redis.url, config)
        .await
        .unwrap_or_else(|e| panic!("Redis at {}: {e}", redis.url));
    let store = MemoryStore::new();
    seed_rows(&store, &http_support::scenario().opening_rows())
        .await
        .unwrap();
    let env = Env {
        store: Arc::new(store) as Arc<dyn Store>,
        bus: Arc::new(bus.clone()),
        clock: Arc::new(SystemClock),
        gateway: Arc::new(SimulatedGateway::default()),
        observer: Arc::new(NoObserver),
        config: RuntimeConfig {
            deliveries_max: 2,
            ..http_support::fast_config()
        },
    };
    place(&env, "o-1").await;

    // By hand, as a foreign producer would: poison, a good entry, an orphan.
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stream = purchase_saga::adapters::redis::keys::stream(&redis.prefix, Service::Order);
    for payload in [
        "{not json".to_string(),
        payment_failed("o-1"),
        payment_failed("o-2"),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("payload")
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(consumer::run(
        env.clone(),
        Service::Order,
        "dlq-test-0".into(),
        shutdown,
    ));

    until("both poisons dead-lettered", || {
        let bus = bus.clone();
        async move { bus.dead_letter_count(Service::Order).await.unwrap() == 2 }
    })
    .await;
    let o1 = order(&env, "o-1").await;
    assert_eq!(
        (o1.status.as_str(), o1.failed_step.map(|s| s.as_str())),
        ("FAILED", Some("PAYMENT")),
        "the entry behind the poison was handled"
    );

    let rows = listed(&redis, &db);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.len() == 6 && r[0] == "order"),
        "service, ids, attempt, reason, payload: {rows:?}"
    );
    assert!(rows[0][4].contains("malformed JSON"), "{rows:?}");
    assert_eq!(rows[0][5], "{not json");
    assert!(rows[1][4].contains("after 2 deliveries"), "{rows:?}");
    assert!(rows[1][5].contains("o-2"), "{rows:?}");

    // The fix: the order now exists. Replay the orphan.
    place(&env, "o-2").await;
    let out = cli(
        &redis,
        &db,
        &["dlq", "replay", "--service", "order", "--id", &rows[1][1]],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("replayed {}", rows[1][1])),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    until("the replayed entry applied", || {
        let env = env.clone();
        async move { order(&env, "o-2").await.status.as_str() == "FAILED" }
    })
    .await;
    assert_eq!(
        order(&env, "o-2").await.failed_step.map(|s| s.as_str()),
        Some("PAYMENT")
    );
    let rows = listed(&redis, &db);
    assert_eq!(rows.len(), 1, "only the poison is left: {rows:?}");
    assert!(rows[0][4].contains("malformed JSON"), "{rows:?}");

    // Replaying what is not there says so.
    let missing = Command::new(env!("CARGO_BIN_EXE_purchase-saga"))
        .args(["--redis-url", &redis.url, "--redis-prefix", &redis.prefix])
        .args(["--database-url", &db.url])
        .args(["dlq", "replay", "--service", "order", "--id", "1-1"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter 1-1"));

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("the consumer stops")
        .unwrap();
}
