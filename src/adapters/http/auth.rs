//! Who is calling: the `Authorization: Bearer <token>` header, checked
//! against the token store (see `adapters::tokens`), and the access rules of
//! the routes.
//!
//! - 401 `unauthorized` (field `Authorization`): no header, not a bearer
//!   token, or a token that is malformed, unknown, revoked or wrong. All
//!   alike, so the answer tells an attacker nothing about which. A token
//!   whose secret matched but whose `expires_at` has passed (by the API's
//!   clock, checked on every request) gets the reason `token expired at
//!   <time>`: only its holder can see that.
//! - 403 `forbidden`: a valid token that may not do this (another user's
//!   order or account, an admin endpoint with a user token).
//!
//! Authentication runs before anything else of a request (body, query,
//! content type), so an anonymous caller learns nothing about the input
//! rules either, and a refused request writes nothing.

use axum::http::{header, HeaderMap, StatusCode};

use crate::adapters::tokens::{check, Principal, Verdict};
use crate::domain::UserId;

use super::error::ApiError;
use super::AppState;

const FIELD: &str = "Authorization";

fn unauthorized(reason: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", Some(FIELD), reason)
}

/// 403 about `field`.
pub fn forbidden(field: &str, reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", Some(field), reason)
}

/// The caller of a request; 401 unless it carries a valid token.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("missing; expected `Authorization: Bearer <token>`"));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("expected `Bearer <token>`"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(unauthorized("expected `Bearer <token>`")),
    };
    match check(state.tokens.as_ref(), token, state.env.clock.now()).await? {
        Verdict::Valid(principal) => Ok(principal),
        Verdict::Expired(at) => Err(unauthorized(&format!(
            "token expired at {at}; issue a new one (`purchase-saga token issue`)"
        ))),
        Verdict::Invalid => Err(unauthorized("invalid or revoked token")),
    }
}

/// 403 unless `principal` is `user` or an admin.
pub fn require_user(principal: &Principal, user: &UserId, field: &str) -> Result<(), ApiError> {
    match principal {
        Principal::Admin => Ok(()),
        Principal::User(u) if u == user => Ok(()),
        Principal::User(_) => Err(forbidden(field, "this token belongs to another user")),
    }
}

/// 403 unless `principal` is an admin.
pub fn require_admin(principal: &Principal) -> Result<(), ApiError> {
    match principal {
        Principal::Admin => Ok(()),
        Principal::User(_) => Err(forbidden(FIELD, "an admin token is required")),
    }
}
