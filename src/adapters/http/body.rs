//! Decoding and validating the body of `POST /orders`, by hand rather than
//! by serde derive, so that every refusal names its field and its problem.
//!
//! Status codes: 415 wrong or missing content type; 400 malformed JSON, a
//! body that is not an object, unknown, missing or mistyped fields, invalid
//! ids; 422 a well-typed quantity outside `1..=QUANTITY_MAX` (also beyond
//! i64). The domain's own checks (`order::place_order`: unknown item, total
//! overflowing i64, payment method shape) map to 422 in `orders.rs`; 413
//! (body over the limit) is `orders.rs`'s too.

use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::domain::gateway::DEFAULT_METHOD;
use crate::domain::ids::ID_LENGTH_MAX;
use crate::domain::participants::order::QUANTITY_MAX;
use crate::domain::{ItemId, UserId};

use super::error::ApiError;

/// A request to buy, validated at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBody {
    /// Optional: the buyer is the token's user (`orders.rs` checks that a
    /// given `userId` names them); with an admin token it is required.
    pub user_id: Option<UserId>,
    pub item_id: ItemId,
    pub quantity: i64,
    pub payment_method: String,
}

/// The fields `POST /orders` accepts; anything else is refused, so a typo
/// (`qty`) is an error instead of a silently ignored field.
pub const ORDER_FIELDS: [&str; 4] = ["userId", "itemId", "quantity", "paymentMethod"];

/// 415 unless the request says it is JSON (`application/json`, any
/// parameters such as `charset`).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = |reason: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            Some("Content-Type"),
            reason,
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("missing; expected application/json".into()));
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported("not visible ASCII; expected application/json".into()))?;
    let essence = value.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(unsupported(format!("{value:?}; expected application/json")));
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Value, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(ApiError::bad_field(
            "missing_field",
            field,
            format!("`{field}` is required"),
        )),
        Some(v) => Ok(v),
    }
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    v.as_str().ok_or_else(|| {
        ApiError::bad_field("wrong_type", field, format!("expected a string, got {}", kind(v)))
    })
}

/// Parses and validates the body; see the module docs for the codes.
pub fn parse_order_body(raw: &[u8]) -> Result<OrderBody, ApiError> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            None,
            format!("body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(object) = &value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "wrong_type",
            None,
            format!("body must be a JSON object, got {}", kind(&value)),
        ));
    };
    if let Some(unknown) = object.keys().find(|k| !ORDER_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_field(
            "unknown_field",
            unknown,
            format!("unknown field; accepted fields are {}", ORDER_FIELDS.join(", ")),
        ));
    }
    let user_id = match object.get("userId") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            UserId::parse(string(v, "userId")?)
                .map_err(|e| ApiError::bad_field("invalid_id", "userId", e.to_string()))?,
        ),
    };
    let item_id = ItemId::parse(string(required(object, "itemId")?, "itemId")?)
        .map_err(|e| ApiError::bad_field("invalid_id", "itemId", e.to_string()))?;
    let quantity = parse_quantity(required(object, "quantity")?)?;
    let payment_method = match object.get("paymentMethod") {
        None | Some(Value::Null) => DEFAULT_METHOD.to_string(),
        Some(v) => string(v, "paymentMethod")?.to_string(),
    };
    Ok(OrderBody {
        user_id,
        item_id,
        quantity,
        payment_method,
    })
}

/// [`parse_order_body`] with its documented limits asserted (the fuzz
/// target `order_body` and `tests/fuzz_corpus.rs` run it on arbitrary
/// bytes): an accepted body has ids within [`ID_LENGTH_MAX`] that parse
/// again, a quantity in `1..=QUANTITY_MAX`, a payment method, and came from
/// a JSON object with only [`ORDER_FIELDS`]; a refusal is a 400 or 422 with
/// a code and a reason. Panics on a violation.
pub fn parse_order_body_checked(raw: &[u8]) -> Result<OrderBody, ApiError> {
    let parsed = parse_order_body(raw);
    match &parsed {
        Ok(body) => {
            assert!(
                (1..=QUANTITY_MAX).contains(&body.quantity),
                "quantity {}",
                body.quantity
            );
            assert!(body.item_id.as_str().len() <= ID_LENGTH_MAX, "item id length");
            assert_eq!(ItemId::parse(body.item_id.as_str()).as_ref(), Ok(&body.item_id));
            if let Some(user) = &body.user_id {
                assert!(user.as_str().len() <= ID_LENGTH_MAX, "user id length");
                assert_eq!(UserId::parse(user.as_str()).as_ref(), Ok(user));
            }
            let value: Value = serde_json::from_slice(raw).expect("an accepted body is JSON");
            let object = value.as_object().expect("an accepted body is an object");
            assert!(
                object.keys().all(|k| ORDER_FIELDS.contains(&k.as_str())),
                "accepted an unknown field"
            );
        }
        Err(e) => {
            assert!(
                e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::UNPROCESSABLE_ENTITY,
                "a body is refused with 400 or 422, got {}",
                e.status
            );
            assert!(!e.error.is_empty() && !e.reason.is_empty(), "{e:?}");
        }
    }
    parsed
}

fn parse_quantity(v: &Value) -> Result<i64, ApiError> {
    const FIELD: &str = "quantity";
    let out_of_range = |shown: String| {
        ApiError::unprocessable(
            "quantity_out_of_range",
            FIELD,
            format!("must be between 1 and {QUANTITY_MAX}, got {shown}"),
        )
    };
    let Value::Number(n) = v else {
        return Err(ApiError::bad_field(
            "wrong_type",
            FIELD,
            format!("expected an integer, got {}", kind(v)),
        ));
    };
    if let Some(q) = n.as_i64() {
        return if (1..=QUANTITY_MAX).contains(&q) {
            Ok(q)
        } else {
            Err(out_of_range(q.to_string()))
        };
    }
    // Above i64::MAX (read as u64, or as a float once past u64): an
    // integer, just absurdly large.
    let huge_float = n
        .as_f64()
        .is_some_and(|f| f.fract() == 0.0 && f.abs() >= i64::MAX as f64);
    if n.is_u64() || huge_float {
        return Err(out_of_range(n.to_string()));
    }
    Err(ApiError::bad_field(
        "wrong_type",
        FIELD,
        format!("expected an integer, got {n}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(raw: &str) -> ApiError {
        parse_order_body(raw.as_bytes()).expect_err(raw)
    }

    #[test]
    fn accepts_a_minimal_body_with_the_default_method() {
        let body = parse_order_body(br#"{"userId":"u1","itemId":"i1","quantity":2}"#).unwrap();
        assert_eq!(body.quantity, 2);
        assert_eq!(body.payment_method, DEFAULT_METHOD);
        assert_eq!(body.user_id, Some(UserId::parse("u1").unwrap()));
        let anonymous = parse_order_body(br#"{"itemId":"i1","quantity":2}"#).unwrap();
        assert_eq!(anonymous.user_id, None, "the token names the buyer");
    }

    #[test]
    fn names_the_field_and_the_problem() {
        let cases: [(&str, StatusCode, &str, Option<&str>); 10] = [
            ("{", StatusCode::BAD_REQUEST, "malformed_json", None),
            ("[1]", StatusCode::BAD_REQUEST, "wrong_type", None),
            (
                r#"{"userId":"u","quantity":1}"#,
                StatusCode::BAD_REQUEST,
                "missing_field",
                Some("itemId"),
            ),
            (
                r#"{"userId":7,"itemId":"i","quantity":1}"#,
                StatusCode::BAD_REQUEST,
                "wrong_type",
                Some("userId"),
            ),
            (
                r#"{"userId":"a b","itemId":"i","quantity":1}"#,
                StatusCode::BAD_REQUEST,
                "invalid_id",
                Some("userId"),
            ),
            (
                r#"{"userId":"u","itemId":"i","quantity":"2"}"#,
                StatusCode::BAD_REQUEST,
                "wrong_type",
                Some("quantity"),
            ),
            (
                r#"{"userId":"u","itemId":"i","quantity":1.5}"#,
                StatusCode::BAD_REQUEST,
                "wrong_type",
                Some("quantity"),
            ),
            (
                r#"{"userId":"u","itemId":"i","quantity":0}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "quantity_out_of_range",
                Some("quantity"),
            ),
            (
                r#"{"userId":"u","itemId":"i","quantity":99999999999999999999}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "quantity_out_of_range",
                Some("quantity"),
            ),
            (
                r#"{"userId":"u","itemId":"i","quantity":1,"qty":1}"#,
                StatusCode::BAD_REQUEST,
                "unknown_field",
                Some("qty"),
            ),
        ];
        for (raw, status, code, field) in cases {
            let e = err(raw);
            assert_eq!(
                (e.status, e.error, e.field.as_deref()),
                (status, code, field),
                "{raw}: {}",
                e.reason
            );
        }
    }
}
