//! `GET /metrics` read over HTTP from a served API while orders run: the
//! saga counters must match the outcomes the store records (in memory),
//! and the scrape-time gauges must match the state of Postgres and Redis
//! that the test sets up step by step (outbox backlog, consumer pending
//! and lag, dead-letter stream size).

mod common;
mod http_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;

use common::{test_pg_config, TestDb, TestRedis};
use http_support::{fast_config, order, scenario};
use purchase_saga::adapters::http::probe::{InProcess, StoreProbe};
use purchase_saga::adapters::http::{AppState, Limits, Probe, ReadModel};
use purchase_saga::adapters::metrics::{GaugeSources, Metrics, MetricsObserver, CONTENT_TYPE_OPENMETRICS};
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::adapters::tokens::{self, MemoryTokens, Principal};
use purchase_saga::cli::client;
use purchase_saga::cli::seed::seed_rows;
use purchase_saga::cli::serve::Running;
use purchase_saga::domain::gateway::{SimulatedGateway, DECLINING_METHOD};
use purchase_saga::domain::invariants;
use purchase_saga::domain::rows::OrderStatus;
use purchase_saga::domain::{DurationMs, Service};
use purchase_saga::runtime::memory::{MemoryBus, MemoryStore};
use purchase_saga::runtime::{relay, Bus, Env, Store, SystemClock};

const TIMEOUT: Duration = Duration::from_secs(15);

/// The samples of an OpenMetrics text: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {l:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {l:?}: {e}"));
            (key.to_string(), value)
        })
        .collect()
}

/// `GET /metrics` over TCP: checks the status and content type, returns
/// the samples.
async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let response = client::request(addr, "GET", "/metrics", &[], b"", TIMEOUT)
        .await
        .expect("GET /metrics answers");
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.text();
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics document: {text}");
    samples(&text)
}

fn get(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have {:#?}", samples.keys().collect::<Vec<_>>()))
}

/// Sum of every sample whose key starts with `prefix`.
fn sum(samples: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// The API and `/metrics` served on a local port over `env`.
/// Also issues the admin token that places the test's orders on behalf of
/// their users: the API takes the buyer from a bearer token.
async fn serve(
    env: &Env,
    read: Arc<dyn ReadModel>,
    probes: Vec<Arc<dyn Probe>>,
    metrics: Arc<Metrics>,
    running: &mut Running,
) -> (SocketAddr, String) {
    let token_store = Arc::new(MemoryTokens::new());
    let admin = tokens::issue(token_store.as_ref(), Principal::Admin)
        .await
        .expect("an admin token");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a local port");
    let addr = listener.local_addr().expect("bound");
    let state = Arc::new(AppState {
        env: env.clone(),
        read,
        probes,
        limits: Limits {
            wait_poll: Duration::from_millis(5),
            ..Limits::default()
        },
        tokens: token_store,
        dead_letters: Arc::new(MemoryBus::new(Arc::new(SystemClock), DurationMs(30_000))),
    });
    running.spawn_http_with_metrics(listener, state, metrics);
    (addr, admin)
}

async fn post(addr: SocketAddr, admin: &str, body: &Value) -> (u16, Value) {
    let bearer = format!("Bearer {admin}");
    let r = client::request(
        addr,
        "POST",
        "/orders",
        &[("Content-Type", "application/json"), ("Authorization", &bearer)],
        body.to_string().as_bytes(),
        TIMEOUT,
    )
    .await
    .expect("POST /orders answers");
    (r.status, r.json().expect("a JSON answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_counters_match_the_outcomes_in_memory() {
    let store = MemoryStore::new();
    let store_dyn: Arc<dyn Store> = Arc::new(store.clone());
    seed_rows(store_dyn.as_ref(), &scenario().opening_rows())
        .await
        .expect("seeding");
    let metrics = Arc::new(Metrics::new(GaugeSources::default()));
    let env = Env {
        store: store_dyn.clone(),
        bus: Arc::new(MemoryBus::new(Arc::new(SystemClock), DurationMs(30_000))),
        clock: Arc::new(SystemClock),
        gateway: Arc::new(SimulatedGateway::default()),
        observer: Arc::new(MetricsObserver(metrics.clone())),
        config: fast_config(),
    };
    let mut running = Running::start(&env, &Service::ALL, 2);
    let probes: Vec<Arc<dyn Probe>> = vec![
        Arc::new(StoreProbe(store_dyn.clone())),
        Arc::new(InProcess("bus")),
    ];
    let (addr, admin) = serve(&env, Arc::new(store.clone()), probes, metrics, &mut running).await;

    let before = scrape(addr).await;
    assert_eq!(get(&before, "saga_started_total"), 0.0);
    assert_eq!(get(&before, "saga_completed_total"), 0.0);

    // Three successes and each failure step, some of them twice.
    let mut declined = order("alice", "sword", 1);
    declined["paymentMethod"] = json!(DECLINING_METHOD);
    let bodies = [
        order("alice", "sword", 1),
        order("whale", "sword", 1),
        order("whale", "sword", 2),
        order("ghost", "sword", 1),
        order("poor", "sword", 1),
        order("cramped", "sword", 2),
        order("alice", "rare", 2),
        declined.clone(),
        declined,
    ];
    for body in &bodies {
        let (status, json) = post(addr, &admin, body).await;
        assert_eq!(status, 202, "{json}");
    }

    // The store says how each order ended ...
    let until = tokio::time::Instant::now() + http_support::SETTLE_BOUND;
    let snapshot = loop {
        let snapshot = store_dyn.snapshot().await.expect("snapshot");
        if invariants::check_quiescent(&snapshot).is_empty() || tokio::time::Instant::now() >= until {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(invariants::check_quiescent(&snapshot), vec![], "the saga settled");
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for o in snapshot.orders.values() {
        let key = match (o.status, o.failed_step) {
            (OrderStatus::Completed, None) => "saga_completed_total".to_string(),
            (OrderStatus::Failed, Some(step)) => format!("saga_failed_total{{step=\"{}\"}}", step.as_str()),
            other => panic!("not terminal after settling: {other:?}"),
        };
        *expected.entry(key).or_default() += 1.0;
    }
    assert_eq!(snapshot.orders.len(), bodies.len());
    assert_eq!(
        expected.len(),
        5,
        "success and all four failure steps happened: {expected:?}"
    );

    // ... and the metrics, counted from what the loops reported, agree.
    let after = scrape(addr).await;
    assert_eq!(get(&after, "saga_started_total"), bodies.len() as f64);
    for (key, n) in &expected {
        assert_eq!(get(&after, key), *n, "{key}");
    }
    assert_eq!(
        get(&after, "saga_completed_total") + sum(&after, "saga_failed_total{"),
        bodies.len() as f64,
        "every saga counted once"
    );
    assert_eq!(sum(&after, "saga_dead_letters_total"), 0.0);
    assert_eq!(
        sum(&after, "saga_outbox_republished_total"),
        0.0,
        "nothing is re-driven within a minute"
    );
    // Issue 27: HTTP requests by route and status, saga end-to-end
    // latency, build info.
    let posts = "{method=\"POST\",route=\"/orders\",status=\"202\"}";
    assert_eq!(
        get(&after, &format!("http_requests_total{posts}")),
        bodies.len() as f64
    );
    assert_eq!(
        get(&after, &format!("http_request_duration_seconds_count{posts}")),
        bodies.len() as f64
    );
    assert_eq!(
        get(
            &after,
            "http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}"
        ),
        1.0,
        "the first scrape, counted once answered"
    );
    assert_eq!(
        sum(&after, "saga_duration_seconds_count{"),
        bodies.len() as f64,
        "every saga's duration, from its start to its end"
    );
    assert_eq!(
        get(&after, "saga_duration_seconds_count{outcome=\"completed\"}"),
        get(&after, "saga_completed_total")
    );
    let build = after
        .iter()
        .find(|(k, _)| k.starts_with("saga_build_info{"))
        .unwrap_or_else(|| panic!("no saga_build_info"));
    assert_eq!(*build.1, 1.0);
    assert!(
        build
            .0
            .contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.0.contains("commit=\""),
        "{}",
        build.0
    );
    // Every delivery is in the latency histogram of its service.
    for service in Service::ALL {
        let slug = service.slug();
        let deliveries = sum(&after, &format!("saga_deliveries_total{{service=\"{slug}\","));
        let observed = after
            .get(&format!(
                "saga_handle_duration_seconds_count{{service=\"{slug}\"}}"
            ))
            .copied()
            .unwrap_or(0.0);
        assert_eq!(deliveries, observed, "{slug}: deliveries vs histogram count");
        if !service.subscriptions().is_empty() {
            assert!(deliveries >= 1.0, "{slug} handled something");
        }
    }
    // The order service applies ORDER_CREATED's outcome for every order at least.
    assert!(
        get(
            &after,
            "saga_deliveries_total{service=\"order\",disposition=\"applied\"}"
        ) >= bodies.len() as f64
    );

    let unfinished = running.stop(Duration::from_secs(10)).await;
    assert!(unfinished.is_empty(), "{unfinished:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_read_postgres_and_redis_at_scrape_time() {
    let db = TestDb::create_with(test_pg_config(10)).await;
    let redis = TestRedis::create("metrics");
    let bus = RedisBus::connect(
        &redis.url,
        RedisConfig {
            prefix: redis.prefix.clone(),
            block: Duration::from_millis(20),
            ..RedisConfig::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("Redis at {}: {e}", redis.url));
    let store: Arc<dyn Store> = Arc::new(db.store.clone());
    seed_rows(store.as_ref(), &scenario().opening_rows())
        .await
        .expect("seeding");
    let metrics = Arc::new(Metrics::new(GaugeSources {
        postgres: Some(db.store.clone().into()),
        redis: Some(bus.clone()),
    }));
    let env = Env {
        store: store.clone(),
        bus: Arc::new(bus.clone()),
        clock: Arc::new(SystemClock),
        gateway: Arc::new(SimulatedGateway::default()),
        observer: Arc::new(MetricsObserver(metrics.clone())),
        // Relay mode: the backlog stays in the outbox until the test relays
        // it (send on commit would publish it with each request).
        config: purchase_saga::runtime::RuntimeConfig {
            dispatch: purchase_saga::runtime::Dispatch::Relay,
            ..fast_config()
        },
    };
    // No runtime loop: the test moves every entry itself.
    let mut running = Running::start(&env, &[], 1);
    let (addr, admin) = serve(&env, Arc::new(db.store.clone()), vec![], metrics, &mut running).await;

    let order_backlog = "saga_outbox_backlog{service=\"order\"}";
    let user_pending = "saga_consumer_pending{service=\"user\"}";
    let m = scrape(addr).await;
    assert_eq!(get(&m, order_backlog), 0.0);
    assert_eq!(get(&m, user_pending), 0.0, "no group yet: nothing pending");
    assert_eq!(get(&m, "saga_dead_letter_stream_size{service=\"user\"}"), 0.0);
    assert_eq!(get(&m, "saga_redis_out_of_memory"), 0.0, "read from INFO memory");

    for user in ["alice", "whale", "poor"] {
        let (status, json) = post(addr, &admin, &order(user, "sword", 1)).await;
        assert_eq!(status, 202, "{json}");
    }
    let m = scrape(addr).await;
    assert_eq!(get(&m, order_backlog), 3.0, "three ORDER_CREATED not yet relayed");
    assert_eq!(
        get(&m, "saga_started_total"),
        0.0,
        "a saga starts when ORDER_CREATED is published"
    );

    assert_eq!(relay::relay_once(&env, Service::Order).await, Ok(3));
    let taken = bus.receive(Service::User, "probe", 1).await.expect("receive");
    assert_eq!(taken.len(), 1);
    let m = scrape(addr).await;
    assert_eq!(get(&m, order_backlog), 0.0);
    assert_eq!(get(&m, "saga_started_total"), 3.0);
    assert_eq!(get(&m, user_pending), 1.0, "one delivered, not acknowledged");
    assert_eq!(
        get(&m, "saga_consumer_lag{service=\"user\"}"),
        2.0,
        "two not yet delivered"
    );

    bus.dead_letter(Service::User, &taken[0], "test")
        .await
        .expect("dead-letter");
    let m = scrape(addr).await;
    assert_eq!(get(&m, user_pending), 0.0, "dead-lettering acknowledges");
    assert_eq!(get(&m, "saga_dead_letter_stream_size{service=\"user\"}"), 1.0);
    assert_eq!(sum(&m, "saga_metrics_scrape_errors_total"), 0.0);

    let unfinished = running.stop(Duration::from_secs(10)).await;
    assert!(unfinished.is_empty(), "{unfinished:?}");
}

#[tokio::test]
async fn metrics_answer_with_the_openmetrics_content_type() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let metrics = Arc::new(Metrics::new(GaugeSources::default()));
    let response = purchase_saga::adapters::metrics::router(metrics)
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], CONTENT_TYPE_OPENMETRICS);
}

/// Statement coverage on `/metrics`: each statement or script the store and
/// the bus send shows up under its name, batched ones and the multi-event
/// publish pipeline included (issue 23), and the counters are the
/// adapters' own (`statement_counts`, `command_counts`), shared by clones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_and_command_counts_show_on_metrics() {
    use purchase_saga::domain::event::PaymentReserved;
    use purchase_saga::domain::{Event, ItemId, OrderId, Payload, Timestamp, UserId};

    let db = TestDb::create_with(test_pg_config(4)).await;
    let redis = TestRedis::create("metrics-statements");
    let bus = RedisBus::connect(
        &redis.url,
        RedisConfig {
            prefix: redis.prefix.clone(),
            ..RedisConfig::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("Redis at {}: {e}", redis.url));
    let metrics = Metrics::new(GaugeSources {
        postgres: Some(db.store.clone().into()),
        redis: Some(bus.clone()),
    });
    let inbox_many = "saga_store_statements_total{statement=\"inbox_insert_many\"}";
    let commit = "saga_store_statements_total{statement=\"commit\"}";
    let multi = "saga_bus_commands_total{command=\"xadd_pipeline_multi_event\"}";
    let m = samples(&metrics.render().await);
    assert_eq!(get(&m, inbox_many), 0.0, "listed before it ever ran");
    assert_eq!(get(&m, multi), 0.0);

    let now = Timestamp::SIM_EPOCH;
    let event = |order: &str| {
        Event::new(
            OrderId::parse(order).unwrap(),
            UserId::parse("alice").unwrap(),
            now,
            Payload::PaymentReserved(PaymentReserved {
                reserved_amount: 1,
                remaining_balance: 1,
                item_id: ItemId::parse("sword").unwrap(),
                quantity: 1,
                payment_method: "WALLET".into(),
            }),
        )
    };
    let (a, b) = (event("o1"), event("o2"));
    let mut ids = vec![a.event_id, b.event_id];
    ids.sort();
    let mut tx = db.store.begin(Service::Payment).await.expect("begin");
    let fresh = tx.record_processed_many(&ids, now).await.expect("inbox");
    assert_eq!(fresh, [true, true]);
    tx.commit().await.expect("commit");

    bus.publish_batch(&[&a, &b])
        .await
        .expect("one pipeline of two events");
    bus.publish(&a).await.expect("one pipeline of one event");

    let m = samples(&metrics.render().await);
    assert_eq!(get(&m, inbox_many), 1.0, "{m:?}");
    assert_eq!(get(&m, commit), 1.0);
    assert_eq!(
        get(&m, "saga_store_statements_total{statement=\"inbox_insert\"}"),
        0.0
    );
    assert_eq!(get(&m, "saga_bus_commands_total{command=\"xadd_pipeline\"}"), 2.0);
    assert_eq!(get(&m, multi), 1.0, "only the pipeline of two events");
    assert_eq!(db.store.statement_counts()["inbox_insert_many"], 1);
    assert_eq!(bus.clone().command_counts()["xadd_pipeline_multi_event"], 1);
    redis.flush_prefix();
}
