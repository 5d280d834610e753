//! `GET /users/{id}/orders?limit=N&cursor=C`: a user's orders, newest
//! first, a page at a time (owner or admin; 403 for another user's token,
//! before any read). A user no order names has an empty list.
//!
//! Paging is by key, not offset: `nextCursor` is the key (creation time in
//! milliseconds, order id) of the last order of the page, and the next page
//! starts strictly after it, so orders placed meanwhile neither repeat nor
//! shift a page. `nextCursor` is null on the last page.
//!
//! Bad input is a 400 naming the parameter: `limit` outside 1 to
//! [`LIMIT_MAX`], a malformed `cursor`, an unknown or repeated parameter.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;

use crate::domain::{OrderId, Timestamp, UserId};

use super::auth::{authenticate, require_user};
use super::error::ApiError;
use super::read_model::order_key;
use super::views::{UserOrder, UserOrders};
use super::AppState;

/// Orders per page unless `limit` says otherwise.
pub const LIMIT_DEFAULT: usize = 20;
/// Largest `limit`.
pub const LIMIT_MAX: usize = 100;

/// One page's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    /// Start strictly after this key.
    pub after: Option<(Timestamp, OrderId)>,
}

fn bad(field: &str, reason: impl Into<String>) -> ApiError {
    ApiError::bad_field("invalid_parameter", field, reason)
}

/// The cursor of the order with key `(at, id)`: `<milliseconds>.<orderId>`.
pub fn cursor_of(key: &(Timestamp, OrderId)) -> String {
    format!("{}.{}", key.0.millis(), key.1)
}

/// Parses a cursor made by [`cursor_of`].
pub fn parse_cursor(raw: &str) -> Result<(Timestamp, OrderId), ApiError> {
    let malformed = || {
        bad(
            "cursor",
            format!("expected a `nextCursor` of an earlier page, got {raw:?}"),
        )
    };
    let (ms, id) = raw.split_once('.').ok_or_else(malformed)?;
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let ms: i64 = ms.parse().map_err(|_| malformed())?;
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).ok_or_else(malformed)?;
    let id = OrderId::parse(id).map_err(|_| malformed())?;
    Ok((Timestamp(ms), id))
}

/// Parses the query's `(name, value)` pairs (already percent-decoded).
pub fn page_request(pairs: &[(String, String)]) -> Result<PageRequest, ApiError> {
    let mut limit = None;
    let mut after = None;
    for (name, value) in pairs {
        match name.as_str() {
            "limit" if limit.is_none() => {
                let n: usize = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=LIMIT_MAX).contains(n))
                    .ok_or_else(|| bad("limit", format!("expected 1 to {LIMIT_MAX}, got {value:?}")))?;
                limit = Some(n);
            }
            "cursor" if after.is_none() => after = Some(parse_cursor(value)?),
            "limit" | "cursor" => return Err(bad(name, "given more than once")),
            _ => {
                return Err(ApiError::bad_field(
                    "unknown_parameter",
                    name,
                    "the query parameters are `limit` and `cursor`",
                ))
            }
        }
    }
    Ok(PageRequest {
        limit: limit.unwrap_or(LIMIT_DEFAULT),
        after,
    })
}

/// List a user's orders, newest first, by page (that user or admin).
///
/// `limit` orders per page; `cursor` is the `nextCursor` of the previous
/// page.
#[utoipa::path(
    get,
    path = "/users/{id}/orders",
    operation_id = "listUserOrders",
    tag = "reads",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The user id: 1 to 64 characters of `[A-Za-z0-9._:-]`", pattern = r"^[A-Za-z0-9._:-]{1,64}$"),
        ("limit" = Option<u32>, Query, description = "Orders per page, 1 to 100 (default 20)", minimum = 1, maximum = 100),
        ("cursor" = Option<String>, Query, description = "The `nextCursor` of the previous page", pattern = r"^[0-9]{1,15}\.[A-Za-z0-9._:-]{1,64}$"),
    ),
    responses(
        (status = 200, description = "The user's orders, newest first, and the cursor of the next page", body = UserOrders),
        (status = 400, description = "Invalid user id, limit or cursor, or an unknown parameter", body = super::openapi::ErrorBody),
        (status = 401, description = "Missing, malformed, unknown, revoked or expired bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token's user is not allowed here", body = super::openapi::ErrorBody),
        (status = 500, description = "The store failed", body = super::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = super::openapi::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<UserOrders>, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    let id = UserId::parse(id).map_err(|e| ApiError::bad_field("invalid_id", "userId", e.to_string()))?;
    require_user(&principal, &id, "userId")?;
    let Query(pairs) = query.map_err(|e| ApiError::bad_field("invalid_query", "query", e.body_text()))?;
    let page = page_request(&pairs)?;
    // One more than the page: whether there is a next page.
    let mut orders = state
        .read
        .user_orders(&id, page.after.as_ref(), page.limit + 1)
        .await?;
    let more = orders.len() > page.limit;
    orders.truncate(page.limit);
    debug_assert!(
        orders.windows(2).all(|w| order_key(&w[0]) > order_key(&w[1])),
        "newest first, no key twice"
    );
    let next_cursor = more
        .then(|| orders.last().map(|o| cursor_of(&order_key(o))))
        .flatten();
    Ok(Json(UserOrders {
        user_id: id.to_string(),
        orders: orders.iter().map(UserOrder::from).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_name_the_parameter() {
        let key = (Timestamp(1_767_225_600_123), OrderId::parse("a.b:c-1").unwrap());
        assert_eq!(parse_cursor(&cursor_of(&key)).unwrap(), key);
        for raw in [
            "",
            ".",
            "12",
            "x.o-1",
            "-5.o-1",
            "1.",
            "1.bad id",
            "99999999999999999999.o",
        ] {
            let e = parse_cursor(raw).unwrap_err();
            assert_eq!(
                (e.error, e.field.as_deref()),
                ("invalid_parameter", Some("cursor")),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn limits_are_bounded_and_parameters_known() {
        assert_eq!(page_request(&[]).unwrap().limit, LIMIT_DEFAULT);
        assert_eq!(page_request(&pairs(&[("limit", "100")])).unwrap().limit, 100);
        for bad_limit in ["0", "101", "-1", "x", ""] {
            let e = page_request(&pairs(&[("limit", bad_limit)])).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("limit"), "{bad_limit:?}");
        }
        let e = page_request(&pairs(&[("limit", "1"), ("limit", "2")])).unwrap_err();
        assert_eq!(e.reason, "given more than once");
        let e = page_request(&pairs(&[("offset", "1")])).unwrap_err();
        assert_eq!(
            (e.error, e.field.as_deref()),
            ("unknown_parameter", Some("offset"))
        );
    }
}
