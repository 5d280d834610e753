//! The six participants as state machines: one file each, the same two entry
//! points in each (`rows_needed`, `step`), dispatched here by service.
//!
//! A step is a pure function of the participant's own rows for the order, the
//! event and a [`StepContext`] (the caller's clock reading and payment
//! provider). It returns whole rows to write and events to emit; the runtime
//! commits both in one transaction together with the event's id in the inbox.
//! A step that has nothing left to do (its rows say the event was already
//! applied, or the order is past it) returns [`Step::nothing`].

pub mod inventory;
pub mod item;
pub mod notification;
pub mod order;
pub mod payment;
pub mod user;

use super::event::Event;
use super::gateway::PaymentGateway;
use super::rows::{Row, RowKey, Rows};
use super::service::Service;
use super::time::Timestamp;

/// What a step may read besides its rows and the event.
pub struct StepContext<'a> {
    /// The caller's clock: stamps emitted events and written rows.
    pub now: Timestamp,
    pub gateway: &'a dyn PaymentGateway,
}

/// The result of one step: rows to write (whole, upserted) and events to emit
/// through the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    pub writes: Vec<Row>,
    pub emit: Vec<Event>,
}

impl Step {
    /// The event needs nothing more: already applied, or the order is past it.
    pub fn nothing() -> Step {
        Step::default()
    }

    pub fn write(mut self, row: Row) -> Step {
        self.writes.push(row);
        self
    }

    pub fn emit(mut self, event: Event) -> Step {
        self.emit.push(event);
        self
    }

    pub fn is_nothing(&self) -> bool {
        self.writes.is_empty() && self.emit.is_empty()
    }
}

/// Why a step cannot apply an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The service does not subscribe to this type: a routing error upstream.
    #[error("{service} does not subscribe to {event_type}")]
    NotSubscribed { service: Service, event_type: String },
    /// The rows the event refers to do not exist yet; a later delivery may
    /// succeed. The runtime retries and, past its bound, dead-letters.
    #[error("not yet applicable: {0}")]
    NotYetApplicable(String),
    /// The event contradicts this service's state in a way the protocol
    /// rules out; never retried, dead-lettered with this reason.
    #[error("contradicts the saga protocol: {0}")]
    Contradiction(String),
}

/// The keys of the rows `service` needs to apply `event`, known from the
/// event alone so that the runtime can lock them before the step runs.
pub fn rows_needed(service: Service, event: &Event) -> Vec<RowKey> {
    let mut keys = match service {
        Service::Order => order::rows_needed(event),
        Service::User => user::rows_needed(event),
        Service::Inventory => inventory::rows_needed(event),
        Service::Item => item::rows_needed(event),
        Service::Payment => payment::rows_needed(event),
        Service::Notification => notification::rows_needed(event),
    };
    keys.sort();
    keys.dedup();
    debug_assert!(
        keys.iter().all(|k| k.owner() == service),
        "{service} may only read its own rows: {keys:?}"
    );
    keys
}

/// Applies `event` to `service`'s rows.
pub fn step(service: Service, rows: &Rows, event: &Event, ctx: &StepContext<'_>) -> Result<Step, StepError> {
    if !service.subscribes_to(event.event_type()) {
        return Err(StepError::NotSubscribed {
            service,
            event_type: event.event_type().to_string(),
        });
    }
    let step = match service {
        Service::Order => order::step(rows, event, ctx),
        Service::User => user::step(rows, event, ctx),
        Service::Inventory => inventory::step(rows, event, ctx),
        Service::Item => item::step(rows, event, ctx),
        Service::Payment => payment::step(rows, event, ctx),
        Service::Notification => notification::step(rows, event, ctx),
    }?;
    debug_assert!(
        step.writes.iter().all(|r| r.key().owner() == service),
        "{service} wrote a foreign row"
    );
    debug_assert!(
        step.emit.iter().all(|e| e.emitter() == service),
        "{service} emitted a foreign event"
    );
    debug_assert!(
        step.emit.iter().all(|e| e.order_id == event.order_id),
        "events stay within their order"
    );
    Ok(step)
}

/// Shorthand for an event of the same order and user as `cause`.
pub(crate) fn reply(cause: &Event, ctx: &StepContext<'_>, payload: super::event::Payload) -> Event {
    Event::new(cause.order_id.clone(), cause.user_id.clone(), ctx.now, payload)
}
