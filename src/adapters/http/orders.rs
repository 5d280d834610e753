//! `POST /orders` and `GET /orders/{id}`.
//!
//! Placing an order is one Order-service transaction (`commands::place_order`):
//! the order row and ORDER_CREATED commit together, or nothing is written.
//! The answer is 202 while the order is PENDING and 200 once it is terminal
//! (with `?wait=SECONDS`, the handler polls until then or until the wait
//! runs out). Unknown users are not refused here: Order cannot read the User
//! service's tables, so an unknown user fails the saga at USER_VALIDATION,
//! as in the founding document. Unknown items are refused with 422 (the
//! catalog is Order's own).
//!
//! Authentication (see `auth.rs`): the buyer is the token's user. A body
//! `userId` is optional and, if given, must name that same user (403
//! otherwise: a client cannot spend another user's balance by naming them).
//! An admin token places orders on behalf of the user its body names
//! (`userId` then required): operators and the demo use it, including for
//! users no service knows, which fail at USER_VALIDATION as designed.
//! `GET /orders/{id}` answers its owner and admins; another user gets 403,
//! an unknown id 404. 403 rather than 404 for someone else's order because
//! order ids are unguessable (random, or derived from the owner's id and
//! their own key), so existence is no secret worth hiding, while a 403
//! tells a client with the wrong token what is wrong.
//!
//! Idempotency: with an `Idempotency-Key`, the order id is a UUID v5 of
//! (user, key), so a retried request finds the order it created; the same
//! body answers with that order, a different body is a 409.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use uuid::Uuid;

use crate::domain::participants::order::{PlaceOrder, Rejection};
use crate::domain::rows::Order;
use crate::domain::{OrderId, UserId};
use crate::runtime::commands::{place_order, PlaceError, Placed};

use crate::adapters::tokens::Principal;

use super::auth::{authenticate, forbidden, require_user};
use super::body::{parse_order_body, require_json, OrderBody};
use super::error::ApiError;
use super::views::{OrderSummary, OrderView};
use super::AppState;

/// Header that makes `POST /orders` idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Longest accepted idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Namespace of order ids derived from idempotency keys (fixed forever: a
/// new value would give a retried request a new order).
const ORDER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x8d3e_51a0_7c42_4f19_b6e2_0a9d_3f75_c1e4);

/// The order id for `user`'s request with idempotency key `key`.
pub fn order_id_for_key(user: &UserId, key: &str) -> OrderId {
    // '\n' cannot occur in a user id, so (user, key) pairs never collide.
    let id = Uuid::new_v5(&ORDER_ID_NAMESPACE, format!("{user}\n{key}").as_bytes());
    OrderId::parse(id.to_string()).expect("a UUID is a valid order id")
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = |reason: &str| ApiError::bad_field("invalid_header", "Idempotency-Key", reason.to_string());
    let key = raw.to_str().map_err(|_| bad("must be visible ASCII"))?;
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(bad(&format!(
            "must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes, got {}",
            key.len()
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must be visible ASCII without spaces"));
    }
    Ok(Some(key.to_string()))
}

/// Parses `?wait=SECONDS` (the only query parameter `POST /orders` takes).
fn wait_param(query: Option<&str>, max: Duration) -> Result<Duration, ApiError> {
    let mut wait = Duration::ZERO;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "wait" {
            return Err(ApiError::bad_field(
                "unknown_parameter",
                name,
                "the only query parameter is `wait`",
            ));
        }
        let seconds: u64 = value.parse().map_err(|_| {
            ApiError::bad_field(
                "invalid_parameter",
                "wait",
                format!("expected whole seconds, got {value:?}"),
            )
        })?;
        if Duration::from_secs(seconds) > max {
            return Err(ApiError::bad_field(
                "invalid_parameter",
                "wait",
                format!("at most {} seconds, got {seconds}", max.as_secs()),
            ));
        }
        wait = Duration::from_secs(seconds);
    }
    Ok(wait)
}

fn rejection(r: Rejection) -> ApiError {
    let reason = r.to_string();
    match r {
        Rejection::QuantityOutOfRange(_) => {
            ApiError::unprocessable("quantity_out_of_range", "quantity", reason)
        }
        Rejection::UnknownItem(_) => ApiError::unprocessable("unknown_item", "itemId", reason),
        Rejection::AmountOverflow { .. } => ApiError::unprocessable("amount_overflow", "quantity", reason),
        Rejection::BadPaymentMethod(_) => {
            ApiError::unprocessable("invalid_payment_method", "paymentMethod", reason)
        }
    }
}

/// The buyer: the token's user, or for an admin the body's `userId`.
fn buyer(principal: &Principal, body: &OrderBody) -> Result<UserId, ApiError> {
    match (principal, &body.user_id) {
        (Principal::User(u), Some(named)) if named != u => Err(forbidden(
            "userId",
            "userId must be the token's own user (or be left out)",
        )),
        (Principal::User(u), _) => Ok(u.clone()),
        (Principal::Admin, Some(named)) => Ok(named.clone()),
        (Principal::Admin, None) => Err(ApiError::bad_field(
            "missing_field",
            "userId",
            "`userId` is required with an admin token",
        )),
    }
}

fn same_request(order: &Order, user: &UserId, body: &OrderBody) -> bool {
    &order.user_id == user
        && order.item_id == body.item_id
        && order.quantity == body.quantity
        && order.payment_method == body.payment_method
}

/// Reads the body up to the configured limit: 413 beyond it.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                None,
                format!("body exceeds {limit} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", None, e.to_string())
        }
    })
}

/// Place an order (start a purchase saga).
///
/// 202 while the saga is PENDING, 200 once it is terminal (with `?wait=`);
/// an `Idempotency-Key` makes a retry find the order it created.
#[utoipa::path(
    post,
    path = "/orders",
    operation_id = "placeOrder",
    tag = "orders",
    security(("bearer" = [])),
    request_body(content = super::openapi::OrderRequest, content_type = "application/json"),
    params(
        ("wait" = Option<u64>, Query, description = "Seconds to wait for the order to be terminal (at most 30)", maximum = 30),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request find the order it created (1 to 128 visible ASCII bytes)", pattern = r"^[!-~]{1,128}$"),
    ),
    responses(
        (status = 200, description = "The order is terminal (COMPLETED or FAILED)", body = OrderSummary),
        (status = 202, description = "The order is placed and still PENDING", body = OrderSummary),
        (status = 400, description = "Malformed JSON, a missing, unknown or mistyped field, an invalid id, header or query parameter", body = super::openapi::ErrorBody),
        (status = 401, description = "Missing, malformed, unknown or revoked bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "A user token buying for another user", body = super::openapi::ErrorBody),
        (status = 409, description = "The Idempotency-Key already placed another order", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = super::openapi::ErrorBody),
        (status = 415, description = "The Content-Type is not application/json", body = super::openapi::ErrorBody),
        (status = 422, description = "Quantity out of range, unknown item, total overflow or invalid payment method", body = super::openapi::ErrorBody),
        (status = 500, description = "The store failed", body = super::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = super::openapi::ErrorBody),
    )
)]
pub async fn place(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    require_json(&headers)?;
    let wait = wait_param(query.as_deref(), state.limits.wait_max)?;
    let key = idempotency_key(&headers)?;
    let raw = read_body(body, state.limits.body_bytes_max).await?;
    let body = parse_order_body(&raw)?;
    let user = buyer(&principal, &body)?;
    let order_id = match &key {
        Some(key) => order_id_for_key(&user, key),
        None => OrderId::parse(Uuid::new_v4().to_string()).expect("a UUID is a valid order id"),
    };
    let cmd = PlaceOrder {
        order_id: order_id.clone(),
        user_id: user.clone(),
        item_id: body.item_id.clone(),
        quantity: body.quantity,
        payment_method: body.payment_method.clone(),
    };
    let order = match place_order(&state.env, &cmd).await {
        Ok(Placed::Created) => load_order(&state, &order_id).await?.ok_or_else(|| {
            ApiError::from(crate::runtime::StoreError::Fatal(
                "created order not found".into(),
            ))
        })?,
        Ok(Placed::Existing(order)) if same_request(&order, &user, &body) => *order,
        Ok(Placed::Existing(order)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                Some("Idempotency-Key"),
                format!(
                    "this key already placed order {} for item {} x {} ({}); a retry must send the same body",
                    order.order_id, order.item_id, order.quantity, order.payment_method
                ),
            ))
        }
        Err(PlaceError::Rejected(r)) => return Err(rejection(r)),
        Err(PlaceError::Store(e)) => return Err(e.into()),
    };
    let order = if wait.is_zero() {
        order
    } else {
        wait_terminal(&state, order, wait).await?
    };
    Ok(summary_response(&order))
}

/// Polls the order until it is terminal or `wait` ran out; returns the
/// last state read.
async fn wait_terminal(state: &AppState, mut order: Order, wait: Duration) -> Result<Order, ApiError> {
    let until = tokio::time::Instant::now() + wait;
    while !order.status.is_terminal() && tokio::time::Instant::now() < until {
        tokio::time::sleep(state.limits.wait_poll).await;
        order = load_order(state, &order.order_id).await?.unwrap_or(order);
    }
    Ok(order)
}

fn summary_response(order: &Order) -> Response {
    let status = if order.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = (status, Json(OrderSummary::from(order))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{}", order.order_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

async fn load_order(state: &AppState, id: &OrderId) -> Result<Option<Order>, ApiError> {
    Ok(state.read.order(id).await?)
}

/// Read an order with its failure step and reason and its event timeline.
///
/// For its owner or an admin; 404 alike for an order that does not exist
/// and one of another user (whether it exists is not told).
#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "getOrder",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id: 1 to 64 characters of `[A-Za-z0-9._:-]`", pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    responses(
        (status = 200, description = "The order with its event timeline", body = OrderView),
        (status = 401, description = "Missing, malformed, unknown or revoked bearer token", body = super::openapi::ErrorBody),
        (status = 400, description = "Invalid order id", body = super::openapi::ErrorBody),
        (status = 404, description = "No such order, or another user's", body = super::openapi::ErrorBody),
        (status = 500, description = "The store failed", body = super::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = super::openapi::ErrorBody),
    )
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<OrderView>, ApiError> {
    let order = owned_order(&state, &headers, id).await?;
    let events = state.read.order_events(&order.order_id).await?;
    Ok(Json(OrderView::new(&order, &events)))
}

/// The order `raw_id` names, for its owner or an admin: 401 without a
/// valid token, 400 for a malformed id, and the same 404 for no such order
/// and for someone else's (a 403 would tell that the id exists, as
/// `GET /users/{id}` avoids telling too).
pub async fn owned_order(state: &AppState, headers: &HeaderMap, raw_id: String) -> Result<Order, ApiError> {
    let principal = authenticate(state, headers).await?;
    let id =
        OrderId::parse(raw_id).map_err(|e| ApiError::bad_field("invalid_id", "orderId", e.to_string()))?;
    let not_found = || ApiError::not_found("orderId", format!("no order {id}"));
    let order = load_order(state, &id).await?.ok_or_else(not_found)?;
    if require_user(&principal, &order.user_id, "orderId").is_err() {
        return Err(not_found());
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_derived_ids_depend_on_user_and_key() {
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        assert_eq!(order_id_for_key(&a, "k1"), order_id_for_key(&a, "k1"));
        assert_ne!(order_id_for_key(&a, "k1"), order_id_for_key(&a, "k2"));
        assert_ne!(order_id_for_key(&a, "k1"), order_id_for_key(&b, "k1"));
    }

    #[test]
    fn wait_is_bounded() {
        let max = Duration::from_secs(30);
        assert_eq!(wait_param(None, max).unwrap(), Duration::ZERO);
        assert_eq!(wait_param(Some("wait=5"), max).unwrap(), Duration::from_secs(5));
        assert_eq!(
            wait_param(Some("wait=31"), max).unwrap_err().field.as_deref(),
            Some("wait")
        );
        assert_eq!(
            wait_param(Some("wait=-1"), max).unwrap_err().field.as_deref(),
            Some("wait")
        );
        assert_eq!(
            wait_param(Some("nap=1"), max).unwrap_err().error,
            "unknown_parameter"
        );
    }
}
