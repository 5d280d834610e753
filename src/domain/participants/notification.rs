//! Notification service: tells the player what happened to their order and
//! logs every send.
//!
//! Sending is not idempotent (a real provider would deliver a second message),
//! so this participant, unlike the others, keeps no state guard of its own:
//! the inbox's dedupe by event id is what makes each notification go out once,
//! and `sent_count` shows it.

use crate::domain::event::{Event, NotificationKind, NotificationSent, Payload};
use crate::domain::rows::{NotificationLog, Row, RowKey, Rows};

use super::{reply, Step, StepContext, StepError};

/// Which notification an incoming event asks for, and its text.
fn notification_for(event: &Event) -> (NotificationKind, String) {
    match &event.payload {
        Payload::OrderCompleted(p) => (
            NotificationKind::PurchaseCompleted,
            format!("Your purchase of {} is complete.", p.item_name),
        ),
        Payload::OrderFailed(p) => (
            NotificationKind::PurchaseFailed,
            format!("Your purchase failed at {}: {}", p.failed_step.as_str(), p.reason),
        ),
        Payload::PaymentProcessed(p) => (
            NotificationKind::PaymentCompleted,
            format!(
                "Payment of {} by {} received.",
                p.payment_amount, p.payment_method
            ),
        ),
        Payload::PaymentFailed(p) => (
            NotificationKind::PaymentFailed,
            format!("Payment of {} failed: {}", p.attempted_amount, p.reason),
        ),
        other => unreachable!("Notification does not subscribe to {:?}", other.event_type()),
    }
}

pub fn rows_needed(event: &Event) -> Vec<RowKey> {
    match &event.payload {
        Payload::OrderCompleted(_)
        | Payload::OrderFailed(_)
        | Payload::PaymentProcessed(_)
        | Payload::PaymentFailed(_) => {
            vec![RowKey::NotificationLog(
                event.order_id.clone(),
                notification_for(event).0,
            )]
        }
        _ => Vec::new(),
    }
}

pub fn step(rows: &Rows, event: &Event, ctx: &StepContext<'_>) -> Result<Step, StepError> {
    let (kind, message) = notification_for(event);
    let sent_count = rows
        .notification_log(&event.order_id, kind)
        .map_or(0, |l| l.sent_count)
        + 1;
    let log = NotificationLog {
        order_id: event.order_id.clone(),
        user_id: event.user_id.clone(),
        kind,
        message: message.clone(),
        sent_count,
        last_sent_at: ctx.now,
    };
    let sent = reply(
        event,
        ctx,
        Payload::NotificationSent(NotificationSent {
            message,
            notification_type: kind,
        }),
    );
    Ok(Step::nothing().write(Row::NotificationLog(log)).emit(sent))
}
