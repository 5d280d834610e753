//! The HTTP API end to end on the real PostgreSQL and Redis (a fresh
//! database and a unique Redis key prefix per test): every saga path with
//! the runtime loops running in-process, bad input and refused tokens
//! writing nothing to the database, idempotency, readiness, the deadline path, and 200 concurrent orders
//! contending for scarce stock and balance.

mod common;
mod http_support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;

use common::{test_pg_config, TestDb, TestRedis};
use http_support::{assert_error, check_every_saga_path, order, scenario, send_bad_requests, TestApp};
use purchase_saga::adapters::http::probe::{RedisProbe, StoreProbe};
use purchase_saga::adapters::http::Probe;
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::domain::Service;
use purchase_saga::runtime::{RuntimeConfig, Store};

/// Rows of a few tables, counted in SQL: what "nothing written" means.
async fn written(db: &TestDb) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "order_svc.orders",
        "order_svc.outbox",
        "user_svc.balance_holds",
        "user_svc.inbox",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        counts.push(n);
    }
    counts
}

async fn app(label: &str, loops: bool) -> (TestApp, TestDb, TestRedis) {
    let services: &[Service] = if loops { &Service::ALL } else { &[] };
    app_with(label, http_support::fast_config(), services).await
}

async fn app_with(
    label: &str,
    runtime_config: RuntimeConfig,
    services: &[Service],
) -> (TestApp, TestDb, TestRedis) {
    let db = TestDb::create_with(test_pg_config(40)).await;
    let redis = TestRedis::create(label);
    let config = RedisConfig {
        prefix: redis.prefix.clone(),
        block: Duration::from_millis(20),
        ..RedisConfig::default()
    };
    let bus = RedisBus::connect(&redis.url, config)
        .await
        .unwrap_or_else(|e| panic!("Redis at {}: {e}", redis.url));
    let store: Arc<dyn Store> = Arc::new(db.store.clone());
    let probes: Vec<Arc<dyn Probe>> = vec![
        Arc::new(StoreProbe(store.clone())),
        Arc::new(RedisProbe::new(&redis.url).unwrap()),
    ];
    let read = Arc::new(db.store.clone());
    let edge = http_support::Edge {
        tokens: Arc::new(db.store.clone()),
        dead_letters: Arc::new(bus.clone()),
    };
    let app = TestApp::build(
        store,
        Arc::new(bus),
        read,
        probes,
        edge,
        &scenario(),
        runtime_config,
        services,
    )
    .await;
    (app, db, redis)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_saga_path_on_postgres_and_redis() {
    let (app, _db, _redis) = app("http-paths", true).await;
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    check_every_saga_path(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_write_nothing_to_the_database() {
    let (app, db, _redis) = app("http-bad", false).await;
    let before = (written(&db).await, app.snapshot().await);
    send_bad_requests(&app).await;
    assert_eq!(
        (written(&db).await, app.snapshot().await),
        before,
        "a rejected request wrote"
    );
    assert_eq!(before.0, vec![0, 0, 0, 0]);
    let (status, json) = app.post_order(&order("alice", "sword", 1), None, "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(
        written(&db).await[..2],
        [1, 1],
        "a good order writes its row and ORDER_CREATED"
    );
}

/// Authentication on Postgres (tokens in `api_auth.tokens`): 401 and 403
/// on every protected route, nothing written by any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_write_nothing_to_the_database() {
    let (app, db, _redis) = app("http-auth", false).await;
    let whale_order = http_support::place_whale_order(&app).await;
    let before = written(&db).await;
    http_support::send_refused_requests(&app, &whale_order).await;
    assert_eq!(
        written(&db).await,
        before,
        "a refused request wrote to the database"
    );
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret_sha256 FROM api_auth.tokens")
        .fetch_all(db.store.pool())
        .await
        .unwrap();
    assert!(
        stored.len() > 4 && stored.iter().all(|h| h.len() == 32),
        "tokens are stored as 32-byte digests"
    );
    let secret = app.admin.rsplit('_').next().unwrap().to_string();
    let plain: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_auth.tokens WHERE encode(secret_sha256, 'hex') = $1")
            .bind(&secret)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(plain, 0, "no secret is stored in plain");
    http_support::check_rightful_tokens(&app, &whale_order).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_on_postgres() {
    let (app, db, _redis) = app("http-idem", false).await;
    let body = order("alice", "sword", 2);
    let (s1, first) = app.post_order(&body, Some("k"), "").await;
    let (s2, again) = app.post_order(&body, Some("k"), "").await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first["orderId"], again["orderId"]);
    let (s3, conflict) = app.post_order(&order("alice", "sword", 1), Some("k"), "").await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_error(
        &conflict,
        "idempotency_key_reused",
        Some("Idempotency-Key"),
        "other body",
    );
    assert_eq!(written(&db).await[..2], [1, 1], "one order, one ORDER_CREATED");
}

/// 200 orders at once from four users on an item with stock 5: balance
/// (alice affords six, poor none), slots (cramped has one) and stock all
/// contended. No conflict surfaces, every order ends terminal, exactly the
/// stock is sold, and the audit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_contending_for_stock_and_balance() {
    let (app, _db, _redis) = app("http-race", true).await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200 {
        let router = app.router.clone();
        let user = ["whale", "alice", "cramped", "poor"][n % 4];
        let auth = http_support::bearer(app.token_for(Some(user)));
        tasks.spawn(async move {
            let request = Request::post("/orders")
                .header("content-type", "application/json")
                .header("authorization", auth)
                .header("idempotency-key", format!("race-{n}"))
                .body(Body::from(order(user, "sword", 1).to_string()))
                .unwrap();
            let response = tower::ServiceExt::oneshot(router, request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (status, answer) = joined.unwrap();
        assert!(
            status == StatusCode::ACCEPTED || status == StatusCode::OK,
            "{status}: {answer}"
        );
        ids.push(answer["orderId"].as_str().unwrap().to_string());
    }
    let left = app.settle_within(Duration::from_secs(90)).await;
    assert!(left.is_empty(), "not quiescent: {left:#?}");
    let snapshot = app.snapshot().await;
    assert_eq!(snapshot.orders.len(), 200);
    let completed: Vec<_> = snapshot
        .orders
        .values()
        .filter(|o| o.status.as_str() == "COMPLETED")
        .collect();
    assert_eq!(completed.len(), 5, "the stock of 5 is sold exactly");
    assert!(
        completed.iter().all(|o| o.user_id.as_str() != "poor"),
        "poor cannot pay"
    );
    let (_, sword) = app.get("/items/sword").await;
    assert_eq!(sword["stock"], 0);
    let (_, cramped) = app.get("/users/cramped").await;
    assert!(cramped["inventory"]["used"].as_i64().unwrap() <= 1, "{cramped}");
    app.stop().await;
}

/// The deadline path on Redis: Payment's consumer starts late, after
/// ITEM_RESERVED was deleted from its stream (XDEL: the broker lost it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadline_before_payment_on_postgres_and_redis() {
    let (app, _db, redis) = app_with(
        "http-deadline",
        http_support::deadline_config(),
        &http_support::all_but_payment(),
    )
    .await;
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let stream_key = purchase_saga::adapters::redis::keys::stream(&redis.prefix, Service::Payment);
    let stream = move |lose: bool| -> usize {
        let ids: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&stream_key)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap_or_default();
        match ids.first() {
            Some((first, _)) if lose => redis::cmd("XDEL")
                .arg(&stream_key)
                .arg(first)
                .query(&mut conn)
                .unwrap(),
            _ => ids.len(),
        }
    };
    let stream = std::sync::Mutex::new(stream);
    http_support::check_deadline_before_payment(&app, |lose| (stream.lock().unwrap())(lose)).await;
    app.stop().await;
}

/// Issue 16 on PostgreSQL and Redis: a user's orders by page (the
/// `orders_by_user` index), an order's saga diagram from the outboxes and
/// inboxes, and token expiry on `api_auth.tokens.expires_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_orders_diagram_and_token_expiry_on_postgres_and_redis() {
    let (app, _db, _redis) = app("operator-view", true).await;
    http_support::check_user_orders(&app).await;
    http_support::check_settled_diagram(&app).await;
    http_support::check_expired_tokens(&app).await;
    app.stop().await;
}
