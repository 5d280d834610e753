//! `GET /openapi.json`: the document lists every route of the API with its
//! status codes, and every documented route is one the router serves (a
//! route the document names but the router lacks would answer the
//! `no_route` fallback).

mod http_support;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use http_support::TestApp;

/// Every route and the status codes it documents.
fn expected() -> BTreeMap<(&'static str, &'static str), Vec<&'static str>> {
    let store = vec!["500", "503"];
    let with = |codes: &[&'static str]| {
        let mut v: Vec<&'static str> = codes.to_vec();
        v.extend(&store);
        v.sort();
        v
    };
    BTreeMap::from([
        (
            ("post", "/orders"),
            with(&["200", "202", "400", "401", "403", "409", "413", "415", "422"]),
        ),
        (("get", "/orders/{id}"), with(&["200", "400", "401", "404"])),
        (("get", "/users/{id}"), with(&["200", "400", "401", "403", "404"])),
        (
            ("get", "/orders/{id}/diagram"),
            with(&["200", "400", "401", "404"]),
        ),
        (("get", "/users/{id}/orders"), with(&["200", "400", "401", "403"])),
        (
            ("get", "/admin/dead-letters"),
            vec!["200", "400", "401", "403", "503"],
        ),
        (("get", "/items"), with(&["200"])),
        (("get", "/items/{id}"), with(&["200", "400", "404"])),
        (("get", "/healthz"), vec!["200"]),
        (("get", "/readyz"), vec!["200", "503"]),
        (("get", "/metrics"), vec!["200"]),
    ])
}

async fn document(app: &TestApp) -> Value {
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

#[tokio::test]
async fn the_document_lists_every_route_with_its_status_codes() {
    let (app, _) = TestApp::memory(false).await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document: {}",
        doc["openapi"]
    );
    let mut found: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let mut codes: Vec<String> = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} has no responses"))
                .keys()
                .cloned()
                .collect();
            codes.sort();
            found.insert((method.clone(), path.clone()), codes);
        }
    }
    let expected: BTreeMap<(String, String), Vec<String>> = expected()
        .into_iter()
        .map(|((m, p), codes)| {
            (
                (m.to_string(), p.to_string()),
                codes.into_iter().map(String::from).collect(),
            )
        })
        .collect();
    assert_eq!(found, expected);

    // The views are schemas the operations reference.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in [
        "OrderRequest",
        "OrderSummary",
        "OrderView",
        "TimelineEntry",
        "UserView",
        "ItemView",
        "ErrorBody",
    ] {
        assert!(
            schemas.contains_key(name),
            "schema {name} missing: {:?}",
            schemas.keys()
        );
    }
    let summary = &schemas["OrderSummary"]["properties"];
    for field in ["orderId", "status", "failedStep", "failureReason", "totalAmount"] {
        assert!(summary.get(field).is_some(), "OrderSummary.{field}: {summary}");
    }
    assert_eq!(
        schemas["OrderRequest"]["additionalProperties"], false,
        "POST /orders refuses unknown fields"
    );
    let place = &doc["paths"]["/orders"]["post"];
    assert_eq!(
        place["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/OrderRequest"
    );
    let params: Vec<&str> = place["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, ["wait", "Idempotency-Key"]);
    // The protected operations name the bearer scheme the document declares.
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for (path, method) in [
        ("/orders", "post"),
        ("/orders/{id}", "get"),
        ("/users/{id}", "get"),
        ("/admin/dead-letters", "get"),
    ] {
        assert!(
            doc["paths"][path][method]["security"][0].get("bearer").is_some(),
            "{method} {path} does not require the bearer token"
        );
    }
}

/// The dead-letter listing's parameters carry the bounds the handler
/// enforces, so generated requests (schemathesis) are the valid ones.
#[tokio::test]
async fn the_dead_letter_parameters_state_the_handlers_bounds() {
    use purchase_saga::adapters::http::admin::DEAD_LETTERS_MAX;
    use purchase_saga::domain::Service;
    let (app, _) = TestApp::memory(false).await;
    let doc = document(&app).await;
    let params = doc["paths"]["/admin/dead-letters"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .clone();
    let schema = |name: &str| {
        params
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("parameter {name}"))["schema"]
            .clone()
    };
    assert_eq!(schema("count")["minimum"], 1);
    assert_eq!(schema("count")["maximum"], DEAD_LETTERS_MAX);
    let pattern = schema("service")["pattern"]
        .as_str()
        .expect("a pattern")
        .to_string();
    for service in Service::ALL {
        assert!(
            pattern.contains(&format!("|{}|", service.slug()))
                || pattern.contains(&format!("({}|", service.slug()))
                || pattern.contains(&format!("|{})", service.slug())),
            "{pattern} lists {}",
            service.slug()
        );
    }
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let (app, _) = TestApp::memory(false).await;
    let doc = document(&app).await;
    let metrics = purchase_saga::adapters::metrics::router(std::sync::Arc::new(
        purchase_saga::adapters::metrics::Metrics::new(Default::default()),
    ));
    let served = app.router.clone().merge(metrics);
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            let uri = path.replace("{id}", "no-such-id");
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let response = served.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            let body = String::from_utf8_lossy(&bytes);
            assert!(
                !body.contains("\"no_route\"") && !body.contains("\"method_not_allowed\""),
                "{method} {uri}: documented but not served ({status}: {body})"
            );
            let documented: Vec<&String> = item[method]["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented.iter().any(|c| *c == status.as_str()),
                "{method} {uri} answered {status}, which it does not document ({documented:?})"
            );
        }
    }
}

/// Every operation of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            ops.push((method.clone(), path.clone(), op.clone()));
        }
    }
    ops
}

/// Issue 27: two operations shared the operationId `get` (code generators
/// break) and summaries said "see the module docs". Every operation has its
/// own id and a summary of its own.
#[tokio::test]
async fn operation_ids_are_unique_and_summaries_say_what_an_operation_does() {
    let (app, _) = TestApp::memory(false).await;
    let doc = document(&app).await;
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"))
            .to_string();
        if let Some(other) = ids.insert(id.clone(), format!("{method} {path}")) {
            panic!("operationId {id:?} of {method} {path} is also {other}'s");
        }
        let summary = op["summary"].as_str().unwrap_or_default();
        assert!(
            summary.len() >= 10 && !summary.contains("module docs") && !summary.starts_with('`'),
            "{method} {path}: summary {summary:?}"
        );
    }
}

/// Issue 27: the document said `paymentMethod` defaults to `CARD` while
/// orders got `WALLET`. An order placed without a method gets the default
/// the document states.
#[tokio::test]
async fn the_documented_payment_method_default_is_the_one_orders_get() {
    let (app, _) = TestApp::memory(false).await;
    let doc = document(&app).await;
    let default = doc["components"]["schemas"]["OrderRequest"]["properties"]["paymentMethod"]["default"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "no default documented: {}",
                doc["components"]["schemas"]["OrderRequest"]
            )
        })
        .to_string();
    let body = serde_json::json!({ "userId": "alice", "itemId": "sword", "quantity": 1 });
    let (status, placed) = app.post_order(&body, None, "").await;
    assert!(status.is_success(), "{placed}");
    let (status, order) = app
        .get(&format!("/orders/{}", placed["orderId"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["paymentMethod"], default.as_str(), "{order}");
    let described = doc["components"]["schemas"]["OrderRequest"]["properties"]["paymentMethod"]
        ["description"]
        .as_str()
        .unwrap_or_default();
    assert!(!described.contains("CARD") || default == "CARD", "{described}");
}

/// Issue 27: `/admin/dead-letters` said "newest first" while it and `dlq
/// list` list oldest first. The document says oldest first and the answer's
/// body is documented.
#[tokio::test]
async fn the_dead_letter_listing_is_documented_oldest_first() {
    let (app, _) = TestApp::memory(false).await;
    let doc = document(&app).await;
    let op = &doc["paths"]["/admin/dead-letters"]["get"];
    let text = op.to_string();
    assert!(
        text.contains("oldest first") && !text.contains("newest first"),
        "{text}"
    );
    assert!(
        op["responses"]["200"]["content"]["application/json"]["schema"].is_object(),
        "{op}"
    );
}

/// Issue 27: there was no way to list items. `GET /items` lists the
/// catalog sorted by id, each item as `GET /items/{id}` shows it.
#[tokio::test]
async fn get_items_lists_the_catalog() {
    let (app, _) = TestApp::memory(false).await;
    let (status, items) = app.get_as(None, "/items").await;
    assert_eq!(status, StatusCode::OK, "{items}");
    let items = items.as_array().expect("an array").clone();
    assert!(items.len() >= 2, "{items:?}");
    let ids: Vec<&str> = items.iter().map(|i| i["itemId"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "sorted by id");
    for item in &items {
        let (status, one) = app
            .get_as(None, &format!("/items/{}", item["itemId"].as_str().unwrap()))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&one, item, "the list shows each item as GET /items/{{id}} does");
    }
}
