//! Payment service: the saga's pivot. It decides each order exactly once,
//! either by the provider's answer to ITEM_RESERVED or by the saga deadline,
//! whichever reaches it first; after that the other is ignored.

use crate::domain::event::{Event, Payload, PaymentFailed, PaymentProcessed};
use crate::domain::gateway::{PaymentDecision, PaymentRequest};
use crate::domain::rows::{Payment, PaymentState, Row, RowKey, Rows};

use super::{reply, Step, StepContext, StepError};

/// The reason PAYMENT_FAILED carries when the deadline cancelled the order.
pub const DEADLINE_REASON: &str = "saga deadline passed before payment";

pub fn rows_needed(event: &Event) -> Vec<RowKey> {
    vec![RowKey::Payment(event.order_id.clone())]
}

pub fn step(rows: &Rows, event: &Event, ctx: &StepContext<'_>) -> Result<Step, StepError> {
    if rows.payment(&event.order_id).is_some() {
        // Decided already: by the provider (forward only) or by the deadline.
        return Ok(Step::nothing());
    }
    let record = |amount, method: &str, state, reason: Option<String>| Payment {
        order_id: event.order_id.clone(),
        user_id: event.user_id.clone(),
        amount,
        method: method.to_string(),
        state,
        reason,
        updated_at: ctx.now,
    };
    match &event.payload {
        Payload::ItemReserved(reserved) => {
            let request = PaymentRequest {
                order_id: &event.order_id,
                user_id: &event.user_id,
                amount: reserved.total_amount,
                method: &reserved.payment_method,
            };
            match ctx.gateway.authorize(&request) {
                PaymentDecision::Approved => {
                    let processed = reply(
                        event,
                        ctx,
                        Payload::PaymentProcessed(PaymentProcessed {
                            payment_amount: reserved.total_amount,
                            payment_method: reserved.payment_method.clone(),
                        }),
                    );
                    let row = record(
                        reserved.total_amount,
                        &reserved.payment_method,
                        PaymentState::Processed,
                        None,
                    );
                    Ok(Step::nothing().write(Row::Payment(row)).emit(processed))
                }
                PaymentDecision::Declined { reason } => {
                    let failed = reply(
                        event,
                        ctx,
                        Payload::PaymentFailed(PaymentFailed {
                            reason: reason.clone(),
                            attempted_amount: reserved.total_amount,
                            item_id: reserved.item_id.clone(),
                        }),
                    );
                    let row = record(
                        reserved.total_amount,
                        &reserved.payment_method,
                        PaymentState::Declined,
                        Some(reason),
                    );
                    Ok(Step::nothing().write(Row::Payment(row)).emit(failed))
                }
            }
        }
        Payload::SagaDeadlinePassed(deadline) => {
            let failed = reply(
                event,
                ctx,
                Payload::PaymentFailed(PaymentFailed {
                    reason: DEADLINE_REASON.to_string(),
                    attempted_amount: deadline.total_amount,
                    item_id: deadline.item_id.clone(),
                }),
            );
            let row = record(
                deadline.total_amount,
                "",
                PaymentState::Cancelled,
                Some(DEADLINE_REASON.to_string()),
            );
            Ok(Step::nothing().write(Row::Payment(row)).emit(failed))
        }
        other => unreachable!("Payment does not subscribe to {:?}", other.event_type()),
    }
}
