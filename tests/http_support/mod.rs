//! A test app: the API router over a store and bus, optionally with every
//! service's runtime loops running in-process, and helpers to call it
//! without a socket (`tower::ServiceExt::oneshot`).
#![allow(dead_code)] // Each test file uses a different part of this module.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use purchase_saga::adapters::http::probe::{InProcess, StoreProbe};
use purchase_saga::adapters::http::{router, AppState, DeadLetterSource, Limits, Probe, ReadModel};
use purchase_saga::adapters::tokens::{self, MemoryTokens, Principal, TokenStore};
use purchase_saga::cli::seed::seed_rows;
use purchase_saga::cli::serve::Running;
use purchase_saga::domain::gateway::{SimulatedGateway, DECLINING_METHOD};
use purchase_saga::domain::invariants::{self, Snapshot, Violation};
use purchase_saga::domain::{DurationMs, ItemId, Service, UserId};
use purchase_saga::runtime::memory::{MemoryBus, MemoryStore};
use purchase_saga::runtime::{Bus, Env, NoObserver, RuntimeConfig, Store, SystemClock};
use purchase_saga::workload::{ItemSpec, Scenario, UserSpec};

/// Longest a test waits for the saga to settle.
pub const SETTLE_BOUND: Duration = Duration::from_secs(20);

/// Price of `gold-bar`: three of them overflow an i64 total.
pub const GOLD_PRICE: i64 = i64::MAX / 2;

/// Users and items for every path: `alice` (rich, roomy), `poor` (10 of
/// balance), `cramped` (one slot), `whale` (rich, for races); `sword` (150, stock 5), `rare` (stock
/// 1), `gold-bar` (price overflows at quantity 3).
pub fn scenario() -> Scenario {
    let user = |id: &str, balance, capacity| UserSpec {
        id: UserId::parse(id).unwrap(),
        balance,
        capacity,
    };
    let item = |id: &str, price, stock| ItemSpec {
        id: ItemId::parse(id).unwrap(),
        name: id.to_string(),
        price,
        stock,
    };
    Scenario {
        users: vec![
            user("alice", 1_000, 10),
            user("poor", 10, 10),
            user("cramped", 1_000, 1),
            user("whale", 100_000, 100),
        ],
        items: vec![
            item("sword", 150, 5),
            item("rare", 100, 1),
            item("gold-bar", GOLD_PRICE, 10),
        ],
        orders: vec![],
    }
}

/// Fast loops: short idle polls so a saga settles in milliseconds.
pub fn fast_config() -> RuntimeConfig {
    RuntimeConfig {
        idle_poll: Duration::from_millis(5),
        error_backoff: Duration::from_millis(50),
        ..RuntimeConfig::default()
    }
}

pub struct TestApp {
    pub router: Router,
    pub env: Env,
    pub running: Option<Running>,
    pub tokens: Arc<dyn TokenStore>,
    /// An admin token.
    pub admin: String,
    /// A token per user of the scenario, by user id.
    pub user_tokens: BTreeMap<String, String>,
}

/// Where the API keeps its tokens and finds its dead letters.
#[derive(Clone)]
pub struct Edge {
    pub tokens: Arc<dyn TokenStore>,
    pub dead_letters: Arc<dyn DeadLetterSource>,
}

/// `Authorization` header value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

impl TestApp {
    /// The API over `store` and `bus`, seeded with `scenario`; with `loops`,
    /// every service runs in-process (two consumers each).
    pub async fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        read: Arc<dyn ReadModel>,
        probes: Vec<Arc<dyn Probe>>,
        edge: Edge,
        scenario: &Scenario,
        loops: bool,
    ) -> TestApp {
        let services: &[Service] = if loops { &Service::ALL } else { &[] };
        TestApp::build(store, bus, read, probes, edge, scenario, fast_config(), services).await
    }

    /// As [`TestApp::new`], with `config` and only `services` running.
    #[allow(clippy::too_many_arguments)]
    pub async fn build(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        read: Arc<dyn ReadModel>,
        probes: Vec<Arc<dyn Probe>>,
        edge: Edge,
        scenario: &Scenario,
        config: RuntimeConfig,
        services: &[Service],
    ) -> TestApp {
        seed_rows(store.as_ref(), &scenario.opening_rows())
            .await
            .expect("seeding");
        let admin = tokens::issue(edge.tokens.as_ref(), Principal::Admin)
            .await
            .expect("issuing the admin token");
        let mut user_tokens = BTreeMap::new();
        for user in &scenario.users {
            let token = tokens::issue(edge.tokens.as_ref(), Principal::User(user.id.clone()))
                .await
                .expect("issuing a user token");
            user_tokens.insert(user.id.to_string(), token);
        }
        let env = Env {
            store,
            bus,
            clock: Arc::new(SystemClock),
            gateway: Arc::new(SimulatedGateway::default()),
            observer: Arc::new(NoObserver),
            config,
        };
        let state = Arc::new(AppState {
            env: env.clone(),
            read,
            probes,
            limits: Limits {
                wait_poll: Duration::from_millis(5),
                ..Limits::default()
            },
            tokens: edge.tokens.clone(),
            dead_letters: edge.dead_letters.clone(),
        });
        let running = (!services.is_empty()).then(|| Running::start(&env, services, 2));
        TestApp {
            router: router(state),
            env,
            running,
            tokens: edge.tokens,
            admin,
            user_tokens,
        }
    }

    /// The API over a fresh in-memory store and bus.
    pub async fn memory(loops: bool) -> (TestApp, MemoryStore) {
        let store = MemoryStore::new();
        let bus = MemoryBus::new(Arc::new(SystemClock), DurationMs(30_000));
        let store_dyn: Arc<dyn Store> = Arc::new(store.clone());
        let probes: Vec<Arc<dyn Probe>> = vec![
            Arc::new(StoreProbe(store_dyn.clone())),
            Arc::new(InProcess("bus")),
        ];
        let edge = Edge {
            tokens: Arc::new(MemoryTokens::new()),
            dead_letters: Arc::new(bus.clone()),
        };
        let app = TestApp::new(
            store_dyn,
            Arc::new(bus),
            Arc::new(store.clone()),
            probes,
            edge,
            &scenario(),
            loops,
        )
        .await;
        (app, store)
    }

    pub async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a readable body");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status} answer is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, json)
    }

    /// The token a client of `user` sends: theirs for a scenario user, an
    /// admin's (ordering on their behalf) for anyone else.
    pub fn token_for(&self, user: Option<&str>) -> &str {
        user.and_then(|u| self.user_tokens.get(u)).unwrap_or(&self.admin)
    }

    /// `POST /orders{query}` with a JSON body and an optional key, with
    /// the token of the body's `userId` (see [`TestApp::token_for`]).
    pub async fn post_order(&self, body: &Value, key: Option<&str>, query: &str) -> (StatusCode, Value) {
        let token = self.token_for(body["userId"].as_str()).to_string();
        self.post_order_as(Some(&token), body, key, query).await
    }

    /// `POST /orders{query}` with `token` (None: no `Authorization`).
    pub async fn post_order_as(
        &self,
        token: Option<&str>,
        body: &Value,
        key: Option<&str>,
        query: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::post(format!("/orders{query}")).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(token) = token {
            request = request.header("authorization", bearer(token));
        }
        self.call(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    /// `GET path` with the admin token.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let admin = self.admin.clone();
        self.get_as(Some(&admin), path).await
    }

    /// `GET path` with `token` (None: no `Authorization`).
    pub async fn get_as(&self, token: Option<&str>, path: &str) -> (StatusCode, Value) {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header("authorization", bearer(token));
        }
        self.call(request.body(Body::empty()).unwrap()).await
    }

    pub async fn snapshot(&self) -> Snapshot {
        self.env.store.snapshot().await.expect("snapshot")
    }

    /// Polls until every quiescence invariant holds, up to [`SETTLE_BOUND`];
    /// returns the violations left (empty when it settled).
    pub async fn settle(&self) -> Vec<Violation> {
        self.settle_within(SETTLE_BOUND).await
    }

    /// As [`TestApp::settle`], up to `bound`.
    pub async fn settle_within(&self, bound: Duration) -> Vec<Violation> {
        let until = tokio::time::Instant::now() + bound;
        loop {
            let found = invariants::check_quiescent(&self.snapshot().await);
            if found.is_empty() || tokio::time::Instant::now() >= until {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            let unfinished = running.stop(Duration::from_secs(10)).await;
            assert!(unfinished.is_empty(), "tasks did not stop: {unfinished:?}");
        }
    }
}

/// Asserts the error shape: exactly `error`, `field`, `reason`, with the
/// expected code and field and a non-empty reason.
pub fn assert_error(json: &Value, error: &str, field: Option<&str>, context: &str) {
    let object = json
        .as_object()
        .unwrap_or_else(|| panic!("{context}: error body is not an object: {json}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["error", "field", "reason"], "{context}: {json}");
    assert_eq!(json["error"], error, "{context}: {json}");
    assert_eq!(json["field"].as_str(), field, "{context}: {json}");
    assert!(
        json["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{context}: empty reason {json}"
    );
}

pub fn order(user: &str, item: &str, quantity: i64) -> Value {
    json!({ "userId": user, "itemId": item, "quantity": quantity })
}

/// One bad request: what to send and the answer it must get.
pub struct Case {
    pub name: &'static str,
    pub content_type: Option<&'static str>,
    pub headers: Vec<(&'static str, String)>,
    pub query: &'static str,
    pub body: String,
    pub status: StatusCode,
    pub error: &'static str,
    pub field: Option<&'static str>,
}

pub fn case(
    name: &'static str,
    body: impl Into<String>,
    status: StatusCode,
    error: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        content_type: Some("application/json"),
        headers: vec![],
        query: "",
        body: body.into(),
        status,
        error,
        field,
    }
}

/// Every bad `POST /orders` request and the answer it must get.
pub fn bad_requests() -> Vec<Case> {
    use StatusCode as S;
    let ok = order("alice", "sword", 1).to_string();
    let with = |mut v: Value, field: &str, value: Value| {
        v[field] = value;
        v.to_string()
    };
    let without = |field: &str| {
        let mut v = order("alice", "sword", 1);
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    };
    let base = || order("alice", "sword", 1);
    let mut cases = vec![
        case(
            "malformed JSON",
            r#"{"userId": "alice","#,
            S::BAD_REQUEST,
            "malformed_json",
            None,
        ),
        case("empty body", "", S::BAD_REQUEST, "malformed_json", None),
        case("not an object", "[1,2]", S::BAD_REQUEST, "wrong_type", None),
        case(
            "missing userId",
            without("userId"),
            S::BAD_REQUEST,
            "missing_field",
            Some("userId"),
        ),
        case(
            "missing itemId",
            without("itemId"),
            S::BAD_REQUEST,
            "missing_field",
            Some("itemId"),
        ),
        case(
            "missing quantity",
            without("quantity"),
            S::BAD_REQUEST,
            "missing_field",
            Some("quantity"),
        ),
        case(
            "null userId",
            with(base(), "userId", Value::Null),
            S::BAD_REQUEST,
            "missing_field",
            Some("userId"),
        ),
        case(
            "userId a number",
            with(base(), "userId", json!(7)),
            S::BAD_REQUEST,
            "wrong_type",
            Some("userId"),
        ),
        case(
            "itemId an array",
            with(base(), "itemId", json!(["sword"])),
            S::BAD_REQUEST,
            "wrong_type",
            Some("itemId"),
        ),
        case(
            "quantity a string",
            with(base(), "quantity", json!("2")),
            S::BAD_REQUEST,
            "wrong_type",
            Some("quantity"),
        ),
        case(
            "quantity a fraction",
            with(base(), "quantity", json!(1.5)),
            S::BAD_REQUEST,
            "wrong_type",
            Some("quantity"),
        ),
        case(
            "quantity zero",
            with(base(), "quantity", json!(0)),
            S::UNPROCESSABLE_ENTITY,
            "quantity_out_of_range",
            Some("quantity"),
        ),
        case(
            "quantity negative",
            with(base(), "quantity", json!(-3)),
            S::UNPROCESSABLE_ENTITY,
            "quantity_out_of_range",
            Some("quantity"),
        ),
        case(
            "quantity too large",
            with(base(), "quantity", json!(1001)),
            S::UNPROCESSABLE_ENTITY,
            "quantity_out_of_range",
            Some("quantity"),
        ),
        case(
            "quantity beyond i64",
            r#"{"userId":"alice","itemId":"sword","quantity":18446744073709551615}"#,
            S::UNPROCESSABLE_ENTITY,
            "quantity_out_of_range",
            Some("quantity"),
        ),
        case(
            "quantity beyond u64",
            r#"{"userId":"alice","itemId":"sword","quantity":1e30}"#,
            S::UNPROCESSABLE_ENTITY,
            "quantity_out_of_range",
            Some("quantity"),
        ),
        case(
            "invalid userId",
            with(base(), "userId", json!("a b")),
            S::BAD_REQUEST,
            "invalid_id",
            Some("userId"),
        ),
        case(
            "empty userId",
            with(base(), "userId", json!("")),
            S::BAD_REQUEST,
            "invalid_id",
            Some("userId"),
        ),
        case(
            "too long itemId",
            with(base(), "itemId", json!("x".repeat(65))),
            S::BAD_REQUEST,
            "invalid_id",
            Some("itemId"),
        ),
        case(
            "unknown field",
            with(base(), "qty", json!(1)),
            S::BAD_REQUEST,
            "unknown_field",
            Some("qty"),
        ),
        case(
            "unknown item",
            with(base(), "itemId", json!("no-such-item")),
            S::UNPROCESSABLE_ENTITY,
            "unknown_item",
            Some("itemId"),
        ),
        case(
            "total overflows i64",
            order("alice", "gold-bar", 3).to_string(),
            S::UNPROCESSABLE_ENTITY,
            "amount_overflow",
            Some("quantity"),
        ),
        case(
            "payment method with spaces",
            with(base(), "paymentMethod", json!("my card")),
            S::UNPROCESSABLE_ENTITY,
            "invalid_payment_method",
            Some("paymentMethod"),
        ),
        case(
            "payment method a number",
            with(base(), "paymentMethod", json!(5)),
            S::BAD_REQUEST,
            "wrong_type",
            Some("paymentMethod"),
        ),
        case(
            "oversized body",
            format!(
                r#"{{"userId":"alice","itemId":"sword","quantity":1,"pad":"{}"}}"#,
                "x".repeat(8_000)
            ),
            S::PAYLOAD_TOO_LARGE,
            "body_too_large",
            None,
        ),
    ];
    let mut wrong_type = case(
        "text/plain",
        ok.clone(),
        S::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        Some("Content-Type"),
    );
    wrong_type.content_type = Some("text/plain");
    let mut no_type = case(
        "no content type",
        ok.clone(),
        S::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        Some("Content-Type"),
    );
    no_type.content_type = None;
    let mut long_key = case(
        "overlong Idempotency-Key",
        ok.clone(),
        S::BAD_REQUEST,
        "invalid_header",
        Some("Idempotency-Key"),
    );
    long_key.headers = vec![("idempotency-key", "k".repeat(129))];
    let mut empty_key = case(
        "empty Idempotency-Key",
        ok.clone(),
        S::BAD_REQUEST,
        "invalid_header",
        Some("Idempotency-Key"),
    );
    empty_key.headers = vec![("idempotency-key", String::new())];
    let mut long_wait = case(
        "wait above the bound",
        ok.clone(),
        S::BAD_REQUEST,
        "invalid_parameter",
        Some("wait"),
    );
    long_wait.query = "?wait=31";
    let mut bad_wait = case(
        "wait not a number",
        ok.clone(),
        S::BAD_REQUEST,
        "invalid_parameter",
        Some("wait"),
    );
    bad_wait.query = "?wait=soon";
    let mut other_param = case(
        "unknown query parameter",
        ok.clone(),
        S::BAD_REQUEST,
        "unknown_parameter",
        Some("nap"),
    );
    other_param.query = "?nap=1";
    cases.extend([
        wrong_type,
        no_type,
        long_key,
        empty_key,
        long_wait,
        bad_wait,
        other_param,
    ]);

    cases
}

/// Sends every bad request and checks each answer.
pub async fn send_bad_requests(app: &TestApp) {
    let cases = bad_requests();
    for c in &cases {
        // The admin token: with it `userId` is required, so a body without
        // one is still a bad request.
        let mut request =
            Request::post(format!("/orders{}", c.query)).header("authorization", bearer(&app.admin));
        if let Some(t) = c.content_type {
            request = request.header("content-type", t);
        }
        for (name, value) in &c.headers {
            request = request.header(*name, value.as_str());
        }
        let (status, json) = app.call(request.body(Body::from(c.body.clone())).unwrap()).await;
        assert_eq!(status, c.status, "{}: {json}", c.name);
        assert_error(&json, c.error, c.field, c.name);
    }
}

/// One saga path: the request and where it must end.
pub struct Path {
    pub name: &'static str,
    pub body: Value,
    pub status: &'static str,
    pub failed_step: Option<&'static str>,
    /// An event type the timeline must show.
    pub shows: &'static str,
}

/// Places one order per saga path through the API (loops must be
/// running), checks each outcome, timeline and the reads, and that the
/// run settles with every invariant holding.
pub async fn check_every_saga_path(app: &TestApp) {
    let mut declined = order("alice", "sword", 1);
    declined["paymentMethod"] = json!(DECLINING_METHOD);
    let paths = [
        Path {
            name: "success",
            body: order("alice", "sword", 2),
            status: "COMPLETED",
            failed_step: None,
            shows: "NOTIFICATION_SENT",
        },
        Path {
            name: "unknown user",
            body: order("ghost", "sword", 1),
            status: "FAILED",
            failed_step: Some("USER_VALIDATION"),
            shows: "USER_VALIDATION_FAILED",
        },
        Path {
            name: "insufficient balance",
            body: order("poor", "sword", 1),
            status: "FAILED",
            failed_step: Some("USER_VALIDATION"),
            shows: "USER_VALIDATION_FAILED",
        },
        Path {
            name: "inventory full",
            body: order("cramped", "sword", 2),
            status: "FAILED",
            failed_step: Some("INVENTORY_RESERVATION"),
            shows: "PAYMENT_ROLLBACK",
        },
        Path {
            name: "out of stock",
            body: order("alice", "rare", 2),
            status: "FAILED",
            failed_step: Some("ITEM_RESERVATION"),
            shows: "ITEM_RESERVATION_FAILED",
        },
        Path {
            name: "payment declined",
            body: declined,
            status: "FAILED",
            failed_step: Some("PAYMENT"),
            shows: "ITEM_RESTORED",
        },
    ];
    let mut ids = Vec::new();
    for p in &paths {
        let (status, json) = app.post_order(&p.body, None, "?wait=10").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}: terminal within the wait: {json}",
            p.name
        );
        assert_eq!(json["status"], p.status, "{}: {json}", p.name);
        assert_eq!(json["failedStep"].as_str(), p.failed_step, "{}: {json}", p.name);
        assert_eq!(
            json["failureReason"].is_string(),
            p.failed_step.is_some(),
            "{}: {json}",
            p.name
        );
        ids.push(json["orderId"].as_str().unwrap().to_string());
    }
    let left = app.settle().await;
    assert!(left.is_empty(), "not quiescent: {left:#?}");
    for (p, id) in paths.iter().zip(&ids) {
        let (status, view) = app.get(&format!("/orders/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        let timeline = view["timeline"].as_array().unwrap();
        let types: Vec<&str> = timeline.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types.first(), Some(&"ORDER_CREATED"), "{}: {types:?}", p.name);
        assert!(
            types.contains(&p.shows),
            "{}: timeline {types:?} lacks {}",
            p.name,
            p.shows
        );
        let outcome = if p.status == "COMPLETED" {
            "ORDER_COMPLETED"
        } else {
            "ORDER_FAILED"
        };
        assert!(types.contains(&outcome), "{}: {types:?}", p.name);
        let times: Vec<&str> = timeline.iter().map(|e| e["at"].as_str().unwrap()).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{}: timeline out of order {times:?}",
            p.name
        );
    }
    // Only the successful order moved money, slots and stock.
    let (_, alice) = app.get("/users/alice").await;
    assert_eq!(alice["balance"], 1000 - 300);
    assert_eq!(
        alice["inventory"],
        json!({ "capacity": 10, "used": 2, "reserved": 0, "free": 8 })
    );
    assert_eq!(
        alice["items"],
        json!([{ "orderId": ids[0], "itemId": "sword", "quantity": 2 }])
    );
    let (_, sword) = app.get("/items/sword").await;
    assert_eq!(sword["stock"], 3);
    let (_, rare) = app.get("/items/rare").await;
    assert_eq!(rare["stock"], 1);
    let (_, poor) = app.get("/users/poor").await;
    assert_eq!(poor["balance"], 10);
}

/// Settings for the deadline path: a one-second saga deadline.
pub fn deadline_config() -> RuntimeConfig {
    RuntimeConfig {
        saga_deadline: DurationMs(1_000),
        ..fast_config()
    }
}

/// Every service but the pivot.
pub fn all_but_payment() -> Vec<Service> {
    Service::ALL
        .into_iter()
        .filter(|s| *s != Service::Payment)
        .collect()
}

/// The deadline reaches the pivot before ITEM_RESERVED does (the broker
/// lost it): Payment cancels, the compensation chain runs, and the API
/// shows the order FAILED at PAYMENT with the deadline in its timeline.
///
/// `app` runs every service but Payment, with [`deadline_config`].
/// `payment_stream(false)` counts the entries waiting in Payment's stream;
/// `payment_stream(true)` drops the oldest (returns 1 if it did).
pub async fn check_deadline_before_payment(app: &TestApp, payment_stream: impl Fn(bool) -> usize) {
    use purchase_saga::domain::Service;
    let (status, placed) = app.post_order(&order("alice", "sword", 1), None, "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{placed}");
    let id = placed["orderId"].as_str().unwrap().to_string();
    let bound = std::time::Instant::now() + SETTLE_BOUND;
    while payment_stream(false) == 0 {
        assert!(
            std::time::Instant::now() < bound,
            "ITEM_RESERVED never reached Payment's stream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(payment_stream(true), 1, "the broker drops ITEM_RESERVED");
    while payment_stream(false) == 0 {
        assert!(
            std::time::Instant::now() < bound,
            "the deadline was never signalled to Payment"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let payment = Running::start(&app.env, &[Service::Payment], 1);
    let view = loop {
        let (_, view) = app.get(&format!("/orders/{id}")).await;
        if view["status"] != "PENDING" {
            break view;
        }
        assert!(std::time::Instant::now() < bound, "order never terminal: {view}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(
        (view["status"].as_str(), view["failedStep"].as_str()),
        (Some("FAILED"), Some("PAYMENT")),
        "{view}"
    );
    // The order is terminal; the compensations finish on their own.
    let left = app.settle().await;
    assert!(left.is_empty(), "{left:#?}");
    let (_, view) = app.get(&format!("/orders/{id}")).await;
    let types: Vec<&str> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for expected in [
        "SAGA_DEADLINE_PASSED",
        "PAYMENT_FAILED",
        "ITEM_RESTORED",
        "PAYMENT_ROLLBACK",
        "ORDER_FAILED",
    ] {
        assert!(types.contains(&expected), "{expected} missing from {types:?}");
    }
    assert!(!types.contains(&"PAYMENT_PROCESSED"), "{types:?}");
    let (_, alice) = app.get("/users/alice").await;
    assert_eq!(alice["balance"], 1000, "refunded");
    assert!(payment.stop(Duration::from_secs(10)).await.is_empty());
}

/// One request that must be refused by authentication or authorization.
pub struct Refused {
    pub name: String,
    pub method: &'static str,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Value>,
    pub status: StatusCode,
    pub error: &'static str,
    pub field: &'static str,
}

/// Every protected route without a token, with bad tokens (401) and with
/// another user's token (403). `whale_order` is an order of `whale`.
pub async fn refused_requests(app: &TestApp, whale_order: &str) -> Vec<Refused> {
    let alice = app.user_tokens["alice"].clone();
    // Same id as alice's token, another secret: found, digest differs.
    let mut forged = alice.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let revoked = tokens::issue(
        app.tokens.as_ref(),
        Principal::User(UserId::parse("alice").unwrap()),
    )
    .await
    .unwrap();
    let id = tokens::token_id_of(&revoked).unwrap();
    assert!(app.tokens.revoke(&id).await.unwrap());
    let routes: [(&str, String, Option<Value>); 4] = [
        ("POST", "/orders".to_string(), Some(order("alice", "sword", 1))),
        ("GET", format!("/orders/{whale_order}"), None),
        ("GET", "/users/whale".to_string(), None),
        ("GET", "/admin/dead-letters?service=payment".to_string(), None),
    ];
    let bad_tokens: [(&str, Option<String>); 6] = [
        ("no token", None),
        ("not a bearer token", Some(format!("Basic {alice}"))),
        ("garbage token", Some("Bearer garbage".to_string())),
        ("empty bearer", Some("Bearer ".to_string())),
        ("forged secret", Some(bearer(&forged))),
        ("revoked token", Some(bearer(&revoked))),
    ];
    let mut refused = Vec::new();
    for (method, path, body) in &routes {
        for (what, header) in &bad_tokens {
            refused.push(Refused {
                name: format!("{method} {path}: {what}"),
                method,
                path: path.clone(),
                token: header.clone(),
                body: body.clone(),
                status: StatusCode::UNAUTHORIZED,
                error: "unauthorized",
                field: "Authorization",
            });
        }
    }
    // alice's valid token where it does not reach.
    let forbidden = [
        (
            "POST",
            "/orders".to_string(),
            Some(order("whale", "sword", 1)),
            "userId",
        ),
        ("GET", "/users/whale".to_string(), None, "userId"),
        (
            "GET",
            "/admin/dead-letters?service=payment".to_string(),
            None,
            "Authorization",
        ),
    ];
    for (method, path, body, field) in forbidden {
        refused.push(Refused {
            name: format!("{method} {path}: another user's token"),
            method,
            path,
            token: Some(bearer(&alice)),
            body,
            status: StatusCode::FORBIDDEN,
            error: "forbidden",
            field,
        });
    }
    // Issue 27: another user's order is the 404 of a missing one (a 403
    // would tell that the id exists), on the order and its sub-routes.
    for path in [
        format!("/orders/{whale_order}"),
        format!("/orders/{whale_order}/diagram"),
    ] {
        refused.push(Refused {
            name: format!("GET {path}: another user's token"),
            method: "GET",
            path,
            token: Some(bearer(&alice)),
            body: None,
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            field: "orderId",
        });
    }
    refused
}

/// Places an order of `whale` with whale's token; returns its id.
pub async fn place_whale_order(app: &TestApp) -> String {
    let (status, placed) = app.post_order(&order("whale", "sword", 1), None, "").await;
    assert!(status.is_success(), "{placed}");
    placed["orderId"].as_str().unwrap().to_string()
}

/// Sends every [`refused_requests`] request and checks each answer (the
/// caller checks that nothing was written).
pub async fn send_refused_requests(app: &TestApp, whale_order: &str) {
    for r in refused_requests(app, whale_order).await {
        let mut request = Request::builder().method(r.method).uri(&r.path);
        if let Some(value) = &r.token {
            request = request.header("authorization", value.as_str());
        }
        let body = match &r.body {
            Some(b) => {
                request = request.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let (status, json) = app.call(request.body(body).unwrap()).await;
        assert_eq!(status, r.status, "{}: {json}", r.name);
        assert_error(&json, r.error, Some(r.field), &r.name);
    }
}

/// The rightful tokens pass where [`send_refused_requests`] was refused, so
/// the refusals were about the token, not the request; and a user token
/// places an order for its own user without naming them.
pub async fn check_rightful_tokens(app: &TestApp, whale_order: &str) {
    let whale = app.user_tokens["whale"].clone();
    let (status, view) = app.get_as(Some(&whale), &format!("/orders/{whale_order}")).await;
    assert_eq!(status, StatusCode::OK, "the owner reads their order: {view}");
    let (status, _) = app.get_as(Some(&whale), "/users/whale").await;
    assert_eq!(status, StatusCode::OK, "a user reads their account");
    let (status, letters) = app.get("/admin/dead-letters?service=payment").await;
    assert_eq!(status, StatusCode::OK, "an admin lists dead letters: {letters}");
    assert!(letters.is_array(), "{letters}");
    let (status, _) = app.get_as(None, "/items/sword").await;
    assert_eq!(status, StatusCode::OK, "the catalog is public");
    let anonymous_body = json!({ "itemId": "sword", "quantity": 1 });
    let (status, placed) = app.post_order_as(Some(&whale), &anonymous_body, None, "").await;
    assert!(status.is_success(), "{placed}");
    let own = format!("/orders/{}", placed["orderId"].as_str().unwrap());
    let (status, _) = app.get_as(Some(&whale), &own).await;
    assert_eq!(status, StatusCode::OK, "the token named the buyer: whale owns it");
    let alice = app.user_tokens["alice"].clone();
    let (status, theirs) = app.get_as(Some(&alice), &own).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "and alice does not: {theirs}");
    let missing = own.replace(placed["orderId"].as_str().unwrap(), "no-such-order");
    let (_, none) = app.get_as(Some(&alice), &missing).await;
    let without_id = |v: &Value, id: &str| v.to_string().replace(id, "ID");
    assert_eq!(
        without_id(&theirs, placed["orderId"].as_str().unwrap()),
        without_id(&none, "no-such-order"),
        "another user's order and a missing one answer alike"
    );
    let (status, json) = app
        .post_order_as(Some(&app.admin), &anonymous_body, None, "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_error(&json, "missing_field", Some("userId"), "admin without userId");
}

impl TestApp {
    /// `GET path` with `token`: status, `Content-Type` and the body as text
    /// (for answers that are not JSON).
    pub async fn get_text_as(&self, token: Option<&str>, path: &str) -> (StatusCode, String, String) {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header("authorization", bearer(token));
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .expect("the router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a readable body");
        (status, content_type, String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Issue 16, `GET /users/{id}/orders`: alice's orders page by page, newest
/// first by (creation time, order id) as the store has them, nobody
/// else's; another user's token 403, none 401; bad parameters 400 naming
/// the parameter; a user without orders an empty last page.
pub async fn check_user_orders(app: &TestApp) {
    for _ in 0..5 {
        let (status, json) = app.post_order(&order("alice", "sword", 1), None, "").await;
        assert!(status.is_success(), "{json}");
    }
    let (status, json) = app.post_order(&order("whale", "sword", 1), None, "").await;
    assert!(status.is_success(), "{json}");
    let mut expected: Vec<_> = app
        .snapshot()
        .await
        .orders
        .into_values()
        .filter(|o| o.user_id.as_str() == "alice")
        .map(|o| (o.created_at, o.order_id.to_string()))
        .collect();
    expected.sort();
    expected.reverse();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(expected.len(), 5);

    let alice = app.token_for(Some("alice")).to_string();
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/users/alice/orders?limit=2".to_string();
    for _ in 0..10 {
        let (status, page) = app.get_as(Some(&alice), &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert_eq!(page["userId"], "alice");
        let orders = page["orders"].as_array().expect("orders");
        sizes.push(orders.len());
        for o in orders {
            assert_eq!(o["itemId"], "sword", "{o}");
            seen.push(o["orderId"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/users/alice/orders?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(seen, expected, "newest first, every order once");
    let (status, all) = app.get("/users/alice/orders").await;
    assert_eq!(status, StatusCode::OK, "admin: {all}");
    assert_eq!(all["orders"].as_array().unwrap().len(), 5);
    assert_eq!(all["nextCursor"], Value::Null);

    let whale = app.token_for(Some("whale")).to_string();
    let (status, json) = app.get_as(Some(&whale), "/users/alice/orders").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{json}");
    assert_error(&json, "forbidden", Some("userId"), "another user's orders");
    let (status, json) = app.get_as(None, "/users/alice/orders").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    for (query, error, field) in [
        ("?limit=0", "invalid_parameter", "limit"),
        ("?limit=101", "invalid_parameter", "limit"),
        ("?cursor=bogus", "invalid_parameter", "cursor"),
        ("?cursor=12.a%20b", "invalid_parameter", "cursor"),
        ("?page=2", "unknown_parameter", "page"),
    ] {
        let (status, json) = app
            .get_as(Some(&alice), &format!("/users/alice/orders{query}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {json}");
        assert_error(&json, error, Some(field), query);
    }
    let (status, json) = app.get("/users/a%20b/orders").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_error(&json, "invalid_id", Some("userId"), "bad user id");
    let (status, json) = app.get("/users/nobody/orders").await;
    assert_eq!(
        (status, json),
        (
            StatusCode::OK,
            json!({ "userId": "nobody", "orders": [], "nextCursor": null })
        )
    );
}

/// Issue 16, `GET /orders/{id}/diagram` of a settled saga: the Mermaid
/// diagram has the create-order request, every event of the order's
/// timeline (from `GET /orders/{id}`) published once and processed by every
/// subscriber (by the domain's publisher/subscriber table), and the
/// order's outcome; same access rules as the order.
pub async fn check_settled_diagram(app: &TestApp) {
    let (status, placed) = app
        .post_order(&order("alice", "sword", 1), None, "?wait=10")
        .await;
    assert_eq!(status, StatusCode::OK, "{placed}");
    assert!(app.settle().await.is_empty(), "the saga settles");
    let id = placed["orderId"].as_str().unwrap();
    let alice = app.token_for(Some("alice")).to_string();
    let path = format!("/orders/{id}/diagram");
    let (status, content_type, diagram) = app.get_text_as(Some(&alice), &path).await;
    assert_eq!(status, StatusCode::OK, "{diagram}");
    assert_eq!(content_type, "text/plain; charset=utf-8");
    assert!(
        diagram.starts_with("sequenceDiagram\n    participant Client\n    participant Order\n"),
        "{diagram}"
    );
    assert!(
        diagram.contains(&format!("    Client->>Order: create-order request ({id})\n")),
        "{diagram}"
    );
    let (_, view) = app.get_as(Some(&alice), &format!("/orders/{id}")).await;
    let timeline = view["timeline"].as_array().expect("a timeline");
    assert!(timeline.len() >= 5, "{view}");
    for event in timeline {
        let (t, emitter) = (
            event["type"].as_str().unwrap(),
            event["service"].as_str().unwrap(),
        );
        let emitter = Service::from_slug(&emitter.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("service {emitter}"))
            .name();
        assert!(
            diagram.contains(&format!("    {emitter}->>Bus: {t} ({id})\n")),
            "{t}: {diagram}"
        );
        let event_type = purchase_saga::domain::EventType::from_wire(t).unwrap();
        for subscriber in purchase_saga::domain::service::subscribers(event_type) {
            let line = format!("    Bus->>{}: {t} ({id})\n", subscriber.name());
            assert!(diagram.contains(&line), "{line:?} missing: {diagram}");
        }
    }
    assert!(
        !diagram.contains("not processed yet") && !diagram.contains("not published yet"),
        "{diagram}"
    );
    // The outcome the order has (COMPLETED, or FAILED when an earlier check
    // of the same app sold the stock out).
    let outcome = match (view["status"].as_str(), view["failedStep"].as_str()) {
        (Some("FAILED"), Some(step)) => format!(" ms FAILED at {step}: "),
        (Some(status), _) => format!(" ms {status}\n"),
        other => panic!("no status: {other:?}"),
    };
    assert!(
        diagram.contains("    Note over Order: ") && diagram.contains(&outcome),
        "{outcome:?}: {diagram}"
    );

    let whale = app.token_for(Some("whale")).to_string();
    let (status, _, body) = app.get_text_as(Some(&whale), &path).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another user's order is not found: {body}"
    );
    let (status, _, body) = app.get_text_as(None, &path).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, json) = app.get("/orders/no-such-order/diagram").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&json, "not_found", Some("orderId"), "unknown order");
}

/// Issue 16, token expiry: a token past its `expires_at` gets 401 with the
/// reason "token expired at ..."; one still valid works.
pub async fn check_expired_tokens(app: &TestApp) {
    use purchase_saga::adapters::tokens::issue_at;
    use purchase_saga::runtime::Clock;
    let alice = Principal::User(UserId::parse("alice").unwrap());
    let now = SystemClock.now();
    let hour = DurationMs(3_600_000);
    let two_hours_ago = purchase_saga::domain::Timestamp(now.0 - 2 * hour.0);
    let expired = issue_at(app.tokens.as_ref(), alice.clone(), two_hours_ago, Some(hour))
        .await
        .unwrap();
    let valid = issue_at(app.tokens.as_ref(), alice, now, Some(hour))
        .await
        .unwrap();
    let (status, json) = app.get_as(Some(&expired), "/users/alice").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert_error(&json, "unauthorized", Some("Authorization"), "expired token");
    let expected = format!("token expired at {}", two_hours_ago.plus(hour));
    assert!(json["reason"].as_str().unwrap().starts_with(&expected), "{json}");
    let (status, json) = app.get_as(Some(&valid), "/users/alice").await;
    assert_eq!(status, StatusCode::OK, "{json}");
}
