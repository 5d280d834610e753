//! User service: validates the buyer and holds the order's amount from their
//! balance; gives it back, once, when a later step fails.
//!
//! The founding document has User also check inventory space; that data is
//! Inventory's, so User checks only what it owns (the account and balance),
//! and Inventory checks space in its own step.

use crate::domain::event::{
    Event, Payload, PaymentReserved, PaymentRollback, UserValidated, UserValidationFailed,
};
use crate::domain::rows::{Account, BalanceHold, ReservationState, Row, RowKey, Rows};

use super::{reply, Step, StepContext, StepError};

pub fn rows_needed(event: &Event) -> Vec<RowKey> {
    vec![
        RowKey::Account(event.user_id.clone()),
        RowKey::BalanceHold(event.order_id.clone()),
    ]
}

pub fn step(rows: &Rows, event: &Event, ctx: &StepContext<'_>) -> Result<Step, StepError> {
    let hold = rows.balance_hold(&event.order_id);
    let account = rows.account(&event.user_id);
    match &event.payload {
        Payload::OrderCreated(created) => {
            if hold.is_some() {
                // Already validated, refused, or compensated before it came.
                return Ok(Step::nothing());
            }
            let required = created.total_amount;
            let refuse = |reason: String| {
                let hold = new_hold(event, ctx, 0, ReservationState::Rejected);
                let failed = reply(
                    event,
                    ctx,
                    Payload::UserValidationFailed(UserValidationFailed {
                        reason,
                        required_amount: required,
                    }),
                );
                Ok(Step::nothing().write(Row::BalanceHold(hold)).emit(failed))
            };
            let Some(account) = account else {
                return refuse(format!("unknown user {}", event.user_id));
            };
            if account.balance < required {
                return refuse(format!(
                    "insufficient balance: has {}, needs {required}",
                    account.balance
                ));
            }
            let remaining = account.balance - required;
            let updated = Account {
                balance: remaining,
                ..account.clone()
            };
            let validated = reply(
                event,
                ctx,
                Payload::UserValidated(UserValidated {
                    user_balance: account.balance,
                    required_amount: required,
                }),
            );
            let reserved = reply(
                event,
                ctx,
                Payload::PaymentReserved(PaymentReserved {
                    reserved_amount: required,
                    remaining_balance: remaining,
                    item_id: created.item_id.clone(),
                    quantity: created.quantity,
                    payment_method: created.payment_method.clone(),
                }),
            );
            Ok(Step::nothing()
                .write(Row::Account(updated))
                .write(Row::BalanceHold(new_hold(
                    event,
                    ctx,
                    required,
                    ReservationState::Held,
                )))
                .emit(validated)
                .emit(reserved))
        }
        Payload::InventoryReservationFailed(_)
        | Payload::ItemReservationFailed(_)
        | Payload::PaymentFailed(_) => roll_back(hold, account, event, ctx),
        other => unreachable!("User does not subscribe to {:?}", other.event_type()),
    }
}

/// Any later failure gives the held amount back exactly once.
fn roll_back(
    hold: Option<&BalanceHold>,
    account: Option<&Account>,
    event: &Event,
    ctx: &StepContext<'_>,
) -> Result<Step, StepError> {
    let Some(hold) = hold else {
        if crate::mutant!(NoTombstone) {
            return Ok(Step::nothing());
        }
        // Compensation before the order reached User: refuse it for good.
        let tombstone = new_hold(event, ctx, 0, ReservationState::Tombstone);
        return Ok(Step::nothing().write(Row::BalanceHold(tombstone)));
    };
    let refund_again = crate::mutant!(DoubleRefund) && hold.state == ReservationState::Released;
    if hold.state != ReservationState::Held && !refund_again {
        return Ok(Step::nothing());
    }
    let account = account.ok_or_else(|| {
        StepError::Contradiction(format!(
            "hold for order {} but no account {}",
            hold.order_id, hold.user_id
        ))
    })?;
    // Planted bug (mutants feature): the refund is one short.
    let refund = hold.amount - i64::from(crate::mutant!(RefundWrongAmount));
    let refunded = Account {
        balance: account.balance + refund,
        ..account.clone()
    };
    let released = BalanceHold {
        state: ReservationState::Released,
        updated_at: ctx.now,
        ..hold.clone()
    };
    let rollback = reply(
        event,
        ctx,
        Payload::PaymentRollback(PaymentRollback {
            refunded_amount: refund,
            balance: refunded.balance,
        }),
    );
    let step = Step::nothing()
        .write(Row::Account(refunded))
        .write(Row::BalanceHold(released));
    // Planted bug (mutants feature): the compensation is emitted twice.
    if crate::mutant!(CompensateTwice) {
        return Ok(step.emit(rollback.clone()).emit(rollback));
    }
    Ok(step.emit(rollback))
}

fn new_hold(event: &Event, ctx: &StepContext<'_>, amount: i64, state: ReservationState) -> BalanceHold {
    BalanceHold {
        order_id: event.order_id.clone(),
        user_id: event.user_id.clone(),
        amount,
        state,
        updated_at: ctx.now,
    }
}
