//! Admin endpoints (admin token only): `GET /admin/dead-letters?service=S&count=N`
//! lists a service's dead letters with their reasons, oldest first.
//!
//! The dead letters come from a [`DeadLetterSource`]: the Redis bus's
//! dead-letter streams, or the in-memory bus's list.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;

use crate::adapters::redis::DeadLetterEntry;
use crate::adapters::redis::RedisBus;
use crate::domain::Service;
use crate::runtime::memory::MemoryBus;
use crate::runtime::BusError;

use super::auth::{authenticate, require_admin};
use super::error::ApiError;
use super::AppState;

/// Most dead letters one request lists.
pub const DEAD_LETTERS_MAX: usize = 1_000;
/// Dead letters listed without `count`.
const DEAD_LETTERS_DEFAULT: usize = 100;

/// Where the dead letters are.
#[async_trait]
pub trait DeadLetterSource: Send + Sync + 'static {
    /// Up to `count` dead letters of `service`, oldest first.
    async fn dead_letters(&self, service: Service, count: usize) -> Result<Vec<DeadLetterEntry>, BusError>;
}

#[async_trait]
impl DeadLetterSource for RedisBus {
    async fn dead_letters(&self, service: Service, count: usize) -> Result<Vec<DeadLetterEntry>, BusError> {
        RedisBus::dead_letters(self, service, count).await
    }
}

#[async_trait]
impl DeadLetterSource for MemoryBus {
    async fn dead_letters(&self, service: Service, count: usize) -> Result<Vec<DeadLetterEntry>, BusError> {
        Ok(MemoryBus::dead_letters(self)
            .into_iter()
            .enumerate()
            .filter(|(_, d)| d.service == service)
            .take(count)
            .map(|(i, letter)| DeadLetterEntry {
                dead_id: i.to_string(),
                letter,
                attempt: 0,
            })
            .collect())
    }
}

#[async_trait]
impl<T: DeadLetterSource + ?Sized> DeadLetterSource for Arc<T> {
    async fn dead_letters(&self, service: Service, count: usize) -> Result<Vec<DeadLetterEntry>, BusError> {
        (**self).dead_letters(service, count).await
    }
}

/// One dead letter in the answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    pub dead_id: String,
    pub entry_id: String,
    pub reason: String,
    pub attempt: u32,
    /// The entry's bytes as text (lossy: a poison entry need not be UTF-8).
    pub payload: String,
}

fn query(raw: Option<&str>) -> Result<(Service, usize), ApiError> {
    let mut service = None;
    let mut count = DEAD_LETTERS_DEFAULT;
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "service" => {
                service = Some(Service::from_slug(value).ok_or_else(|| {
                    ApiError::bad_field(
                        "invalid_parameter",
                        "service",
                        format!("unknown service {value:?}"),
                    )
                })?)
            }
            "count" => {
                count = value
                    .parse()
                    .ok()
                    .filter(|c| (1..=DEAD_LETTERS_MAX).contains(c))
                    .ok_or_else(|| {
                        ApiError::bad_field(
                            "invalid_parameter",
                            "count",
                            format!("expected 1 to {DEAD_LETTERS_MAX}, got {value:?}"),
                        )
                    })?
            }
            other => {
                return Err(ApiError::bad_field(
                    "unknown_parameter",
                    other,
                    "parameters are `service` and `count`",
                ))
            }
        }
    }
    let service = service
        .ok_or_else(|| ApiError::bad_field("missing_parameter", "service", "`service` is required"))?;
    Ok((service, count))
}

/// List a service's dead letters, oldest first (admin).
///
/// The same entries, in the same order, as `purchase-saga dlq list`.
#[utoipa::path(
    get,
    path = "/admin/dead-letters",
    operation_id = "listDeadLetters",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("service" = String, Query, pattern = "^(order|user|inventory|item|payment|notification)$",
         description = "The service whose dead letters to list: order, user, inventory, item, payment or notification"),
        ("count" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "At most this many, oldest first (1 to 1000; 100 when left out)"),
    ),
    responses(
        (status = 200, description = "The dead letters, oldest first: ids, reason, attempts and payload", body = [DeadLetterView]),
        (status = 400, description = "A missing, unknown or invalid query parameter", body = super::openapi::ErrorBody),
        (status = 401, description = "Missing, malformed, unknown or revoked bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "Not an admin token", body = super::openapi::ErrorBody),
        (status = 503, description = "The bus is unavailable; retry", body = super::openapi::ErrorBody),
    )
)]
pub async fn dead_letters(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    require_admin(&authenticate(&state, &headers).await?)?;
    let (service, count) = query(raw.as_deref())?;
    let letters = state
        .dead_letters
        .dead_letters(service, count)
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "bus_unavailable",
                None,
                e.to_string(),
            )
        })?;
    Ok(Json(
        letters
            .into_iter()
            .map(|d| DeadLetterView {
                dead_id: d.dead_id,
                entry_id: d.letter.entry_id,
                reason: d.letter.reason,
                attempt: d.attempt,
                payload: String::from_utf8_lossy(&d.letter.payload).into_owned(),
            })
            .collect(),
    ))
}
