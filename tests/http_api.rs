//! The HTTP API on the in-memory adapters: every validation error with its
//! JSON body and nothing written, idempotency, the read endpoints, and
//! every saga path placed through the API with the runtime loops running
//! in-process; 401/403 on every protected route with nothing written.

mod http_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use http_support::{assert_error, check_every_saga_path, order, send_bad_requests, TestApp};
use purchase_saga::domain::gateway::DECLINING_METHOD;

#[tokio::test]
async fn every_bad_request_names_its_problem_and_writes_nothing() {
    let (app, store) = TestApp::memory(false).await;
    let before = app.snapshot().await;
    let commits = store.commits();
    send_bad_requests(&app).await;
    assert_eq!(
        store.commits(),
        commits,
        "a rejected request committed a transaction"
    );
    assert!(store.outbox().is_empty(), "a rejected request enqueued an event");
    assert_eq!(app.snapshot().await, before, "a rejected request changed a row");

    // The same store takes a good order: the refusals above were the input's fault.
    let (status, json) = app.post_order(&order("alice", "sword", 1), None, "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(store.commits(), commits + 1);
}

/// 401 without or with a bad token and 403 with another user's, on every
/// protected route; none of them writes anything.
#[tokio::test]
async fn unauthenticated_and_unauthorized_requests_are_refused_and_write_nothing() {
    let (app, store) = TestApp::memory(false).await;
    let whale_order = http_support::place_whale_order(&app).await;
    let (before, commits, outbox) = (app.snapshot().await, store.commits(), store.outbox().len());
    http_support::send_refused_requests(&app, &whale_order).await;
    assert_eq!(
        store.commits(),
        commits,
        "a refused request committed a transaction"
    );
    assert_eq!(
        store.outbox().len(),
        outbox,
        "a refused request enqueued an event"
    );
    assert_eq!(app.snapshot().await, before, "a refused request changed a row");
    http_support::check_rightful_tokens(&app, &whale_order).await;
    let response = tower::ServiceExt::oneshot(
        app.router.clone(),
        Request::get("/users/alice").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer", "RFC 6750");
}

#[tokio::test]
async fn idempotency_key_returns_the_same_order_or_a_conflict() {
    let (app, store) = TestApp::memory(false).await;
    let body = order("alice", "sword", 2);
    let (status, first) = app.post_order(&body, Some("key-1"), "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["status"], "PENDING");
    assert_eq!(first["totalAmount"], 300);
    let before = (app.snapshot().await, store.outbox());

    let (status, again) = app.post_order(&body, Some("key-1"), "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(
        again["orderId"], first["orderId"],
        "same key and body: same order"
    );
    assert_eq!(
        (app.snapshot().await, store.outbox()),
        before,
        "a replay writes nothing"
    );

    let (status, conflict) = app
        .post_order(&order("alice", "sword", 3), Some("key-1"), "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_error(
        &conflict,
        "idempotency_key_reused",
        Some("Idempotency-Key"),
        "other body",
    );
    let mut declined = body.clone();
    declined["paymentMethod"] = json!(DECLINING_METHOD);
    let (status, _) = app.post_order(&declined, Some("key-1"), "").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "another payment method is another body"
    );
    assert_eq!(
        (app.snapshot().await, store.outbox()),
        before,
        "a conflict writes nothing"
    );

    let (status, other_user) = app
        .post_order(&order("poor", "sword", 2), Some("key-1"), "")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(other_user["orderId"], first["orderId"], "keys are per user");
    let (_, fresh_a) = app.post_order(&body, None, "").await;
    let (_, fresh_b) = app.post_order(&body, None, "").await;
    assert_ne!(
        fresh_a["orderId"], fresh_b["orderId"],
        "without a key every request is a new order"
    );
    assert_eq!(app.snapshot().await.orders.len(), 4);
}

#[tokio::test]
async fn read_endpoints_answer_and_refuse_with_json() {
    let (app, _store) = TestApp::memory(false).await;
    let (status, json) = app.get("/healthz").await;
    assert_eq!((status, json), (StatusCode::OK, json!({ "status": "ok" })));
    let (status, json) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["checks"], json!({ "store": "ok", "bus": "ok" }));

    let (status, user) = app.get("/users/alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        user,
        json!({ "userId": "alice", "balance": 1000, "inventory": { "capacity": 10, "used": 0, "reserved": 0, "free": 10 }, "items": [] })
    );
    let (status, item) = app.get("/items/sword").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        item,
        json!({ "itemId": "sword", "name": "sword", "price": 150, "stock": 5 })
    );

    let (_, placed) = app.post_order(&order("alice", "sword", 2), None, "").await;
    let (status, view) = app
        .get(&format!("/orders/{}", placed["orderId"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "PENDING");
    assert_eq!(
        (
            view["quantity"].clone(),
            view["unitPrice"].clone(),
            view["totalAmount"].clone()
        ),
        (json!(2), json!(150), json!(300))
    );
    let types: Vec<&str> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ORDER_CREATED"]);

    let not_found = [
        ("/orders/no-such-order", "orderId"),
        ("/users/nobody", "userId"),
        ("/items/nothing", "itemId"),
    ];
    for (path, field) in not_found {
        let (status, json) = app.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_error(&json, "not_found", Some(field), path);
    }
    for (path, field) in [
        ("/orders/a%20b", "orderId"),
        ("/users/a%20b", "userId"),
        ("/items/a%20b", "itemId"),
    ] {
        let (status, json) = app.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_error(&json, "invalid_id", Some(field), path);
    }
    let (status, json) = app.get("/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&json, "no_route", None, "unknown path");
    let (status, json) = app
        .call(Request::delete("/orders").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&json, "method_not_allowed", None, "DELETE /orders");
}

#[tokio::test]
async fn every_saga_path_through_the_api() {
    let (app, _store) = TestApp::memory(true).await;
    check_every_saga_path(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn concurrent_orders_on_scarce_stock_sell_exactly_the_stock() {
    let (app, _store) = TestApp::memory(true).await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..12 {
        let router = app.router.clone();
        let auth = http_support::bearer(app.token_for(Some("whale")));
        tasks.spawn(async move {
            let request = Request::post("/orders?wait=15")
                .header("content-type", "application/json")
                .header("authorization", auth)
                .header("idempotency-key", format!("race-{n}"))
                .body(Body::from(order("whale", "sword", 1).to_string()))
                .unwrap();
            let response = tower::ServiceExt::oneshot(router, request).await.unwrap();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        });
    }
    let mut completed = 0;
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.unwrap();
        match answer["status"].as_str() {
            Some("COMPLETED") => completed += 1,
            Some("FAILED") => assert_eq!(answer["failedStep"], "ITEM_RESERVATION", "{answer}"),
            other => panic!("not terminal: {other:?} {answer}"),
        }
    }
    assert_eq!(completed, 5, "the stock of 5 is sold exactly");
    let left = app.settle().await;
    assert!(left.is_empty(), "{left:#?}");
    app.stop().await;
}

#[tokio::test]
async fn readyz_is_503_with_the_reason_when_a_dependency_is_down() {
    use purchase_saga::adapters::http::probe::{RedisProbe, StoreProbe};
    use purchase_saga::adapters::http::Probe;
    use std::sync::Arc;
    let (up, store) = TestApp::memory(false).await;
    // Nothing listens on port 1: the bus probe fails fast.
    let down: Arc<dyn Probe> = Arc::new(RedisProbe::new("redis://127.0.0.1:1").unwrap());
    let store: Arc<dyn purchase_saga::runtime::Store> = Arc::new(store);
    let probes: Vec<Arc<dyn Probe>> = vec![Arc::new(StoreProbe(store.clone())), down];
    let state = purchase_saga::adapters::http::AppState {
        env: up.env.clone(),
        read: Arc::new(purchase_saga::runtime::memory::MemoryStore::new()),
        probes,
        limits: Default::default(),
        tokens: up.tokens.clone(),
        dead_letters: Arc::new(purchase_saga::runtime::memory::MemoryBus::new(
            Arc::new(purchase_saga::runtime::SystemClock),
            purchase_saga::domain::DurationMs(1_000),
        )),
    };
    let router = purchase_saga::adapters::http::router(Arc::new(state));
    let response = tower::ServiceExt::oneshot(router, Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    let json: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["error"], "not_ready", "{json}");
    assert!(
        json["reason"].as_str().unwrap().starts_with("bus is down"),
        "{json}"
    );
    assert_eq!(json["checks"]["store"], "ok", "{json}");
    // /healthz does not depend on anything.
    let (status, _) = up.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

/// The deadline reaches the pivot before ITEM_RESERVED does (the broker
/// lost it): see [`http_support::check_deadline_before_payment`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_before_payment_through_the_api() {
    use purchase_saga::adapters::http::probe::StoreProbe;
    use purchase_saga::adapters::http::Probe;
    use purchase_saga::domain::{DurationMs, Service};
    use purchase_saga::runtime::memory::{MemoryBus, MemoryStore};
    use purchase_saga::runtime::{Store, SystemClock};
    use std::sync::Arc;

    let store = MemoryStore::new();
    let bus = MemoryBus::new(Arc::new(SystemClock), DurationMs(30_000));
    let store_dyn: Arc<dyn Store> = Arc::new(store.clone());
    let probes: Vec<Arc<dyn Probe>> = vec![Arc::new(StoreProbe(store_dyn.clone()))];
    let app = TestApp::build(
        store_dyn,
        Arc::new(bus.clone()),
        Arc::new(store.clone()),
        probes,
        http_support::Edge {
            tokens: Arc::new(purchase_saga::adapters::tokens::MemoryTokens::new()),
            dead_letters: Arc::new(bus.clone()),
        },
        &http_support::scenario(),
        http_support::deadline_config(),
        &http_support::all_but_payment(),
    )
    .await;
    let stream = |lose: bool| {
        let entries = bus.deliverable(Service::Payment);
        match entries.first() {
            Some(first) if lose => usize::from(bus.lose(Service::Payment, *first)),
            _ => entries.len(),
        }
    };
    http_support::check_deadline_before_payment(&app, stream).await;
}

/// Issue 16: `GET /users/{id}/orders` on the in-memory read side.
#[tokio::test]
async fn a_user_lists_their_own_orders_newest_first_by_page() {
    let (app, _store) = TestApp::memory(false).await;
    http_support::check_user_orders(&app).await;
}

/// Issue 16: the diagram of a settled saga, and of one whose events
/// nothing has published or processed yet (no loops run): dashed arrows
/// saying so, no outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_drawn_as_a_mermaid_sequence_diagram() {
    let (idle, _store) = TestApp::memory(false).await;
    let (status, placed) = idle.post_order(&order("alice", "sword", 1), None, "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{placed}");
    let id = placed["orderId"].as_str().unwrap();
    let (status, _, diagram) = idle
        .get_text_as(Some(&idle.admin), &format!("/orders/{id}/diagram"))
        .await;
    assert_eq!(status, StatusCode::OK, "{diagram}");
    let tail: Vec<&str> = diagram.lines().skip(9).collect();
    assert_eq!(
        tail,
        [
            format!("    Client->>Order: create-order request ({id})"),
            // Sent on commit (the default dispatch): published by the
            // request itself, though no loop runs.
            format!("    Order->>Bus: ORDER_CREATED ({id})"),
            format!("    Bus-->>User: ORDER_CREATED ({id}) [not processed yet]"),
        ],
        "{diagram}"
    );
    let (app, _store) = TestApp::memory(true).await;
    http_support::check_settled_diagram(&app).await;
    app.stop().await;
}

/// Issue 16: an expired token is refused with the reason.
#[tokio::test]
async fn an_expired_token_gets_401_with_the_reason() {
    let (app, _store) = TestApp::memory(false).await;
    http_support::check_expired_tokens(&app).await;
}
