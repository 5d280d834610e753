//! A test app: the API router over a store and bus, optionally with every
//! service's runtime loops running in-process, and helpers to call it
//! without a socket (`tower::ServiceExt::oneshot`).
#![allow(dead_code)] // Each test file uses a different part of this module.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use purchase_saga::adapters::http::probe::{InProcess, StoreProbe};
use purchase_saga::adapters::http::{router, AppState, Limits, Probe, ReadModel};
use purchase_saga::cli::seed::seed_rows;
use purchase_saga::cli::serve::Running;
use purchase_saga::domain::gateway::SimulatedGateway;
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
}

impl TestApp {
    /// The API over `store` and `bus`, seeded with `scenario`; with `loops`,
    /// every service runs in-process (two consumers each).
    pub async fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        read: Arc<dyn ReadModel>,
        probes: Vec<Arc<dyn Probe>>,
        scenario: &Scenario,
        loops: bool,
    ) -> TestApp {
        seed_rows(store.as_ref(), &scenario.opening_rows())
            .await
            .expect("seeding");
        let env = Env {
            store,
            bus,
            clock: Arc::new(SystemClock),
            gateway: Arc::new(SimulatedGateway::default()),
            observer: Arc::new(NoObserver),
            config: fast_config(),
        };
        let state = Arc::new(AppState {
            env: env.clone(),
            read,
            probes,
            limits: Limits {
                wait_poll: Duration::from_millis(5),
                ..Limits::default()
            },
        });
        let running = loops.then(|| Running::start(&env, &Service::ALL, 2));
        TestApp {
            router: router(state),
            env,
            running,
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
        let app = TestApp::new(
            store_dyn,
            Arc::new(bus),
            Arc::new(store.clone()),
            probes,
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

    /// `POST /orders{query}` with a JSON body and an optional key.
    pub async fn post_order(&self, body: &Value, key: Option<&str>, query: &str) -> (StatusCode, Value) {
        let mut request = Request::post(format!("/orders{query}")).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        self.call(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Request::get(path).body(Body::empty()).unwrap()).await
    }

    pub async fn snapshot(&self) -> Snapshot {
        self.env.store.snapshot().await.expect("snapshot")
    }

    /// Polls until every quiescence invariant holds, up to [`SETTLE_BOUND`];
    /// returns the violations left (empty when it settled).
    pub async fn settle(&self) -> Vec<Violation> {
        let until = tokio::time::Instant::now() + SETTLE_BOUND;
        loop {
            let found = invariants::check_quiescent(&self.snapshot().await);
            if found.is_empty() || tokio::time::Instant::now() >= until {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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
