//! Order service: creates orders, settles them from the saga's outcome
//! events, and signals the saga deadline to the pivot.
//!
//! An order's terminal state is decided by the first outcome event that
//! reaches it and never changes; later outcome events are no-ops.

use crate::domain::event::{
    Event, FailedStep, OrderCompleted, OrderCreated, OrderFailed, Payload, SagaDeadlinePassed,
};
use crate::domain::ids::{ItemId, OrderId, UserId};
use crate::domain::rows::{CatalogEntry, Order, OrderStatus, Row, RowKey, Rows};
use crate::domain::time::{DurationMs, Timestamp};

use super::{reply, Step, StepContext, StepError};

/// Largest quantity one order may ask for.
pub const QUANTITY_MAX: i64 = 1_000;

/// A client's request to buy, after its ids were validated at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub item_id: ItemId,
    pub quantity: i64,
    pub payment_method: String,
}

/// Why an order request is refused before any saga starts ("basic
/// validation" of the founding document). Nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("quantity must be between 1 and {QUANTITY_MAX}, got {0}")]
    QuantityOutOfRange(i64),
    #[error("item {0} is not in the catalog")]
    UnknownItem(ItemId),
    #[error("total of {quantity} x {unit_price} overflows a 64-bit amount")]
    AmountOverflow { quantity: i64, unit_price: i64 },
    #[error("payment method must be 1 to 32 ASCII letters, digits or '_', got {0:?}")]
    BadPaymentMethod(String),
}

/// Rows [`place_order`] needs.
pub fn place_order_rows(cmd: &PlaceOrder) -> Vec<RowKey> {
    vec![
        RowKey::Order(cmd.order_id.clone()),
        RowKey::Catalog(cmd.item_id.clone()),
    ]
}

/// Validates a request and creates the order, emitting ORDER_CREATED. An
/// order that already exists (a retried request) is returned unchanged.
pub fn place_order(
    rows: &Rows,
    cmd: &PlaceOrder,
    now: Timestamp,
    deadline: DurationMs,
) -> Result<Step, Rejection> {
    if rows.order(&cmd.order_id).is_some() {
        return Ok(Step::nothing());
    }
    if !(1..=QUANTITY_MAX).contains(&cmd.quantity) {
        return Err(Rejection::QuantityOutOfRange(cmd.quantity));
    }
    let method_ok = (1..=32).contains(&cmd.payment_method.len())
        && cmd
            .payment_method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !method_ok {
        return Err(Rejection::BadPaymentMethod(cmd.payment_method.clone()));
    }
    let entry: &CatalogEntry = rows
        .catalog(&cmd.item_id)
        .ok_or_else(|| Rejection::UnknownItem(cmd.item_id.clone()))?;
    let total_amount = entry
        .unit_price
        .checked_mul(cmd.quantity)
        .ok_or(Rejection::AmountOverflow {
            quantity: cmd.quantity,
            unit_price: entry.unit_price,
        })?;
    let order = Order {
        order_id: cmd.order_id.clone(),
        user_id: cmd.user_id.clone(),
        item_id: cmd.item_id.clone(),
        item_name: entry.name.clone(),
        quantity: cmd.quantity,
        total_amount,
        payment_method: cmd.payment_method.clone(),
        status: OrderStatus::Pending,
        failed_step: None,
        failure_reason: None,
        created_at: now,
        deadline_at: now.plus(deadline),
        deadline_signalled: false,
        updated_at: now,
    };
    let created = Event::new(
        cmd.order_id.clone(),
        cmd.user_id.clone(),
        now,
        Payload::OrderCreated(OrderCreated {
            item_id: cmd.item_id.clone(),
            quantity: cmd.quantity,
            total_amount,
            payment_method: cmd.payment_method.clone(),
        }),
    );
    Ok(Step::nothing().write(Row::Order(order)).emit(created))
}

/// Rows [`deadline_passed`] needs.
pub fn deadline_rows(order_id: &OrderId) -> Vec<RowKey> {
    vec![RowKey::Order(order_id.clone())]
}

/// The sweeper found the order past its deadline: tell the pivot, once. The
/// order itself stays PENDING until Payment's answer arrives, so a payment
/// that already happened still completes the order.
pub fn deadline_passed(rows: &Rows, order_id: &OrderId, now: Timestamp) -> Step {
    let Some(order) = rows.order(order_id) else {
        return Step::nothing();
    };
    if order.status.is_terminal() || order.deadline_signalled || now < order.deadline_at {
        return Step::nothing();
    }
    if crate::mutant!(CancelAtOrder) {
        // Planted bug: Order decides the cancel itself, racing the pivot.
        let reason = "saga deadline passed".to_string();
        let failed = Event::new(
            order.order_id.clone(),
            order.user_id.clone(),
            now,
            Payload::OrderFailed(OrderFailed {
                reason: reason.clone(),
                failed_step: FailedStep::Payment,
            }),
        );
        let updated = Order {
            status: OrderStatus::Failed,
            failed_step: Some(FailedStep::Payment),
            failure_reason: Some(reason),
            deadline_signalled: true,
            updated_at: now,
            ..order.clone()
        };
        return Step::nothing().write(Row::Order(updated)).emit(failed);
    }
    let signal = Event::new(
        order.order_id.clone(),
        order.user_id.clone(),
        now,
        Payload::SagaDeadlinePassed(SagaDeadlinePassed {
            item_id: order.item_id.clone(),
            total_amount: order.total_amount,
            deadline: order.deadline_at,
        }),
    );
    let updated = Order {
        deadline_signalled: true,
        updated_at: now,
        ..order.clone()
    };
    Step::nothing().write(Row::Order(updated)).emit(signal)
}

pub fn rows_needed(event: &Event) -> Vec<RowKey> {
    vec![RowKey::Order(event.order_id.clone())]
}

pub fn step(rows: &Rows, event: &Event, ctx: &StepContext<'_>) -> Result<Step, StepError> {
    let order = rows.order(&event.order_id).ok_or_else(|| {
        StepError::NotYetApplicable(format!("order {} is unknown to Order", event.order_id))
    })?;
    let outcome = match &event.payload {
        Payload::PaymentProcessed(_) => Outcome::Completed,
        Payload::UserValidationFailed(p) => Outcome::Failed(FailedStep::UserValidation, p.reason.clone()),
        Payload::InventoryReservationFailed(p) => {
            Outcome::Failed(FailedStep::InventoryReservation, p.reason.clone())
        }
        Payload::ItemReservationFailed(p) => Outcome::Failed(FailedStep::ItemReservation, p.reason.clone()),
        Payload::PaymentFailed(p) => Outcome::Failed(FailedStep::Payment, p.reason.clone()),
        other => unreachable!("Order does not subscribe to {:?}", other.event_type()),
    };
    match (order.status, outcome) {
        (OrderStatus::Pending, Outcome::Completed) => {
            let updated = Order {
                status: OrderStatus::Completed,
                updated_at: ctx.now,
                ..order.clone()
            };
            let completed = reply(
                event,
                ctx,
                Payload::OrderCompleted(OrderCompleted {
                    item_name: order.item_name.clone(),
                    total_amount: order.total_amount,
                }),
            );
            Ok(Step::nothing().write(Row::Order(updated)).emit(completed))
        }
        (OrderStatus::Pending, Outcome::Failed(failed_step, reason)) => {
            let updated = Order {
                status: OrderStatus::Failed,
                failed_step: Some(failed_step),
                failure_reason: Some(reason.clone()),
                updated_at: ctx.now,
                ..order.clone()
            };
            let failed = reply(
                event,
                ctx,
                Payload::OrderFailed(OrderFailed { reason, failed_step }),
            );
            Ok(Step::nothing().write(Row::Order(updated)).emit(failed))
        }
        (OrderStatus::Completed, Outcome::Completed) | (OrderStatus::Failed, Outcome::Failed(..)) => {
            Ok(Step::nothing())
        }
        // A failure after completion is the cancel racing the payment: the
        // pivot already decided, so it cannot arrive. Completion after
        // failure would mean the pivot decided twice.
        (OrderStatus::Failed, Outcome::Completed) => Err(StepError::Contradiction(format!(
            "PAYMENT_PROCESSED for order {} that already FAILED",
            order.order_id
        ))),
        // Earlier steps cannot fail once payment succeeded.
        (OrderStatus::Completed, Outcome::Failed(step, _)) => Err(StepError::Contradiction(format!(
            "{} failure for order {} that already COMPLETED",
            step.as_str(),
            order.order_id
        ))),
    }
}

enum Outcome {
    Completed,
    Failed(FailedStep, String),
}
