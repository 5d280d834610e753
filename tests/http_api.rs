//! The HTTP API on the in-memory adapters: every validation error with its
//! JSON body and nothing written, idempotency, the read endpoints, and
//! every saga path placed through the API with the runtime loops running
//! in-process.

mod http_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use http_support::{assert_error, TestApp};
use purchase_saga::domain::gateway::DECLINING_METHOD;

fn order(user: &str, item: &str, quantity: i64) -> Value {
    json!({ "userId": user, "itemId": item, "quantity": quantity })
}

/// One bad request: what to send and the answer it must get.
struct Case {
    name: &'static str,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    query: &'static str,
    body: String,
    status: StatusCode,
    error: &'static str,
    field: Option<&'static str>,
}

fn case(
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

#[tokio::test]
async fn every_bad_request_names_its_problem_and_writes_nothing() {
    use StatusCode as S;
    let (app, store) = TestApp::memory(false).await;
    let before = app.snapshot().await;
    let commits = store.commits();
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

    for c in &cases {
        let mut request = Request::post(format!("/orders{}", c.query));
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

/// One saga path: the request and where it must end.
struct Path {
    name: &'static str,
    body: Value,
    status: &'static str,
    failed_step: Option<&'static str>,
    /// An event type the timeline must show.
    shows: &'static str,
}

#[tokio::test]
async fn every_saga_path_through_the_api() {
    let (app, _store) = TestApp::memory(true).await;
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
    app.stop().await;
}

#[tokio::test]
async fn concurrent_orders_on_scarce_stock_sell_exactly_the_stock() {
    let (app, _store) = TestApp::memory(true).await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..12 {
        let router = app.router.clone();
        tasks.spawn(async move {
            let request = Request::post("/orders?wait=15")
                .header("content-type", "application/json")
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
