//! `GET /users/{id}` (token), `GET /items/{id}`, `/healthz` and `/readyz`
//! (public: the catalog and the probes reveal nothing about users).
//!
//! Reads go to each owning service's tables (committed state), so a user's
//! balance comes from User and their inventory from Inventory; the API is
//! the one place that shows them side by side.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::domain::{ItemId, Row, RowKey, UserId};
use crate::runtime::commands::read_row;

use super::auth::{authenticate, require_user};
use super::error::ApiError;
use super::probe::run_probe;
use super::views::{GrantedItem, InventoryView, ItemView, UserView};
use super::AppState;

/// Read a user: balance, inventory capacity and use, granted items.
///
/// For that user or an admin (403 for anyone else, before any read:
/// whether the user exists is not told); 404 when no service knows the
/// user.
#[utoipa::path(
    get,
    path = "/users/{id}",
    operation_id = "getUser",
    tag = "reads",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The user id: 1 to 64 characters of `[A-Za-z0-9._:-]`", pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    responses(
        (status = 200, description = "Balance (User), inventory (Inventory) and granted items", body = UserView),
        (status = 401, description = "Missing, malformed, unknown or revoked bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token's user is not allowed here", body = super::openapi::ErrorBody),
        (status = 400, description = "Invalid user id", body = super::openapi::ErrorBody),
        (status = 404, description = "No service knows the user", body = super::openapi::ErrorBody),
        (status = 500, description = "The store failed", body = super::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = super::openapi::ErrorBody),
    )
)]
pub async fn user(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<UserView>, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    let id = UserId::parse(id).map_err(|e| ApiError::bad_field("invalid_id", "userId", e.to_string()))?;
    require_user(&principal, &id, "userId")?;
    let balance = match read_row(&state.env, &RowKey::Account(id.clone())).await? {
        Some(Row::Account(a)) => Some(a.balance),
        _ => None,
    };
    let inventory = match read_row(&state.env, &RowKey::InventoryAccount(id.clone())).await? {
        Some(Row::InventoryAccount(a)) => Some(InventoryView {
            capacity: a.capacity,
            used: a.used_slots,
            reserved: a.reserved_slots,
            free: a.free_slots(),
        }),
        _ => None,
    };
    if balance.is_none() && inventory.is_none() {
        return Err(ApiError::not_found("userId", format!("no user {id}")));
    }
    let items = state
        .read
        .granted_items(&id)
        .await?
        .into_iter()
        .map(|r| GrantedItem {
            order_id: r.order_id,
            item_id: r.item_id.to_string(),
            quantity: r.slots,
        })
        .collect();
    Ok(Json(UserView {
        user_id: id.to_string(),
        balance,
        inventory,
        items,
    }))
}

/// Read an item: name and price (Order's catalog), stock (Item).
///
/// 404 when neither service knows the item.
#[utoipa::path(
    get,
    path = "/items/{id}",
    operation_id = "getItem",
    tag = "reads",
    params(("id" = String, Path, description = "The item id: 1 to 64 characters of `[A-Za-z0-9._:-]`", pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    responses(
        (status = 200, description = "Name and price (Order's catalog), stock (Item)", body = ItemView),
        (status = 400, description = "Invalid item id", body = super::openapi::ErrorBody),
        (status = 404, description = "Neither service knows the item", body = super::openapi::ErrorBody),
        (status = 500, description = "The store failed", body = super::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = super::openapi::ErrorBody),
    )
)]
pub async fn item(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ItemView>, ApiError> {
    let id = ItemId::parse(id).map_err(|e| ApiError::bad_field("invalid_id", "itemId", e.to_string()))?;
    let (name, price) = match read_row(&state.env, &RowKey::Catalog(id.clone())).await? {
        Some(Row::Catalog(c)) => (Some(c.name), Some(c.unit_price)),
        _ => (None, None),
    };
    let stock = match read_row(&state.env, &RowKey::ItemStock(id.clone())).await? {
        Some(Row::ItemStock(s)) => Some(s.stock),
        _ => None,
    };
    if name.is_none() && stock.is_none() {
        return Err(ApiError::not_found("itemId", format!("no item {id}")));
    }
    Ok(Json(ItemView {
        item_id: id.to_string(),
        name,
        price,
        stock,
    }))
}

/// Liveness: 200 while the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "The process runs: `{\"status\": \"ok\"}`", body = Object))
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: 200 when store and bus answer; 503 naming the first that does not.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Store and bus answer: `{\"status\": \"ready\", \"checks\": {...}}`", body = Object),
        (status = 503, description = "A dependency is down: the error body with `checks`", body = Object),
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut failure: Option<String> = None;
    for probe in &state.probes {
        match run_probe(probe.as_ref()).await {
            Ok(()) => drop(checks.insert(probe.name().to_string(), json!("ok"))),
            Err(e) => {
                failure.get_or_insert_with(|| format!("{} is down: {e}", probe.name()));
                checks.insert(probe.name().to_string(), json!(e));
            }
        }
    }
    match failure {
        None => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "checks": checks })),
        )
            .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "not_ready", "field": null, "reason": reason, "checks": checks })),
        )
            .into_response(),
    }
}

/// Any path the API does not have.
pub async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", None, "no such endpoint")
}

/// A known path with the wrong method.
pub async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
        "method not allowed on this path",
    )
}
