//! `GET /orders/{id}/diagram`: a live order's saga as a Mermaid sequence
//! diagram, drawn by the same renderer as `saga-sim replay --mermaid`
//! (`runtime::mermaid`), so an operator sees a production saga the way the
//! simulator shows a seed.
//!
//! What it draws, from the services' own tables: the create-order request;
//! each event of the order's timeline as `Emitter ->> Bus` (from the
//! emitter's outbox; dashed with a note when it is not published yet or was
//! re-driven); each subscriber's handling as `Bus ->> Subscriber` at the
//! time its inbox recorded it (dashed, "not processed yet", when it has not
//! been); and a closing note with the outcome. Times are milliseconds since
//! the order was created. Outbox and inbox rows are pruned after their
//! retention, so an old order's picture is shorter. Same access rules as
//! `GET /orders/{id}` (owner or admin).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::domain::rows::{Order, OrderStatus};
use crate::domain::service::subscribers;
use crate::domain::{EventId, Service, Timestamp};
use crate::runtime::mermaid::{render, DiagramEntry, Lane, Step};
use crate::runtime::OutboxEntry;

use super::error::ApiError;
use super::orders::owned_order;
use super::AppState;

/// The `Content-Type` of the diagram: Mermaid source is plain text.
pub const CONTENT_TYPE_DIAGRAM: &str = "text/plain; charset=utf-8";

/// The diagram entries of `order`, given its timeline (`events`, oldest
/// first) and when each subscriber processed each event (`processed`).
pub fn saga_entries(
    order: &Order,
    events: &[OutboxEntry],
    processed: &BTreeMap<(Service, EventId), Timestamp>,
) -> Vec<DiagramEntry> {
    let id = order.order_id.to_string();
    let ms = |t: Timestamp| t.since(order.created_at).0;
    let message = |from, to, what: &str, note: Option<String>| Step::Message {
        from,
        to,
        what: what.to_string(),
        order: id.clone(),
        note,
    };
    // (when, then the order they were found in): an unprocessed delivery
    // has no time and goes last.
    let mut keyed: Vec<(i64, DiagramEntry)> = vec![(
        0,
        DiagramEntry {
            at_ms: 0,
            step: message(
                Lane::Client,
                Lane::Service(Service::Order),
                "create-order request",
                None,
            ),
        },
    )];
    for e in events {
        let event_type = e.event.event_type();
        let published = match e.published_count {
            0 => Some("not published yet".to_string()),
            1 => None,
            n => Some(format!("published {n} times")),
        };
        let at = ms(e.event.timestamp);
        let from = Lane::Service(e.event.emitter());
        keyed.push((
            at,
            DiagramEntry {
                at_ms: at,
                step: message(from, Lane::Bus, event_type.as_str(), published),
            },
        ));
        for subscriber in subscribers(event_type) {
            let to = Lane::Service(subscriber);
            let (key, at_ms, note) = match processed.get(&(subscriber, e.event.event_id)) {
                Some(t) => (ms(*t), ms(*t), None),
                None => (i64::MAX, at, Some("not processed yet".to_string())),
            };
            let step = message(Lane::Bus, to, event_type.as_str(), note);
            keyed.push((key, DiagramEntry { at_ms, step }));
        }
    }
    if order.status.is_terminal() {
        let outcome = match (order.status, order.failed_step, &order.failure_reason) {
            (OrderStatus::Failed, Some(step), Some(reason)) => {
                format!("FAILED at {}: {reason}", step.as_str())
            }
            (OrderStatus::Failed, Some(step), None) => format!("FAILED at {}", step.as_str()),
            (status, _, _) => status.as_str().to_string(),
        };
        let at = ms(order.updated_at);
        keyed.push((
            at,
            DiagramEntry {
                at_ms: at,
                step: Step::Note {
                    over: Lane::Service(Service::Order),
                    text: outcome,
                },
            },
        ));
    }
    // Stable: entries at the same moment keep the order they were found in.
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// An order's saga as a Mermaid sequence diagram (owner or admin).
///
/// Every event of the order from its emitter to each subscriber, with
/// when each processed it; 404 alike for an order that does not exist and
/// one of another user.
#[utoipa::path(
    get,
    path = "/orders/{id}/diagram",
    operation_id = "getOrderDiagram",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id: 1 to 64 characters of `[A-Za-z0-9._:-]`", pattern = r"^[A-Za-z0-9._:-]{1,64}$")),
    responses(
        (status = 200, description = "The order's saga as a Mermaid sequence diagram (the style of `saga-sim replay --mermaid`)", body = String, content_type = "text/plain"),
        (status = 400, description = "Invalid order id", body = super::openapi::ErrorBody),
        (status = 401, description = "Missing, malformed, unknown, revoked or expired bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such order, or another user's", body = super::openapi::ErrorBody),
        (status = 500, description = "The store failed", body = super::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = super::openapi::ErrorBody),
    )
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let order = owned_order(&state, &headers, id).await?;
    let events = state.read.order_events(&order.order_id).await?;
    let mut processed = BTreeMap::new();
    for service in Service::ALL {
        let ids: Vec<EventId> = events
            .iter()
            .filter(|e| service.subscribes_to(e.event.event_type()))
            .map(|e| e.event.event_id)
            .collect();
        for (id, at) in state.read.processed_at(service, &ids).await? {
            processed.insert((service, id), at);
        }
    }
    let drawn = render(&saga_entries(&order, &events, &processed));
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE_DIAGRAM)], drawn).into_response())
}
