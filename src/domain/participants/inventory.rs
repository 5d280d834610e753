//! Inventory service: holds inventory slots for an order, turns them into the
//! granted item when payment succeeds, and releases them, once, when a later
//! step fails.

use crate::domain::event::{
    Event, InventoryReservationFailed, InventoryReserved, InventoryRollback, Payload,
};
use crate::domain::rows::{InventoryAccount, ReservationState, Row, RowKey, Rows, SlotReservation};

use super::{reply, Step, StepContext, StepError};

pub fn rows_needed(event: &Event) -> Vec<RowKey> {
    vec![
        RowKey::InventoryAccount(event.user_id.clone()),
        RowKey::SlotReservation(event.order_id.clone()),
    ]
}

pub fn step(rows: &Rows, event: &Event, ctx: &StepContext<'_>) -> Result<Step, StepError> {
    let reservation = rows.slot_reservation(&event.order_id);
    let account = rows.inventory_account(&event.user_id);
    match &event.payload {
        Payload::PaymentReserved(reserved) => {
            if reservation.is_some() {
                return Ok(Step::nothing());
            }
            let slots = reserved.quantity;
            let available = account.map_or(0, InventoryAccount::free_slots);
            let new_reservation = |state| SlotReservation {
                order_id: event.order_id.clone(),
                user_id: event.user_id.clone(),
                item_id: reserved.item_id.clone(),
                slots: if state == ReservationState::Held { slots } else { 0 },
                state,
                updated_at: ctx.now,
            };
            let refusal = match account {
                None => Some(format!("user {} has no inventory", event.user_id)),
                Some(_) if available < slots => Some(format!(
                    "not enough inventory space: {available} free, {slots} needed"
                )),
                Some(_) => None,
            };
            if let Some(reason) = refusal {
                let failed = reply(
                    event,
                    ctx,
                    Payload::InventoryReservationFailed(InventoryReservationFailed {
                        reason,
                        item_id: reserved.item_id.clone(),
                        requested_slots: slots,
                        available_slots: available,
                    }),
                );
                let rejected = new_reservation(ReservationState::Rejected);
                return Ok(Step::nothing().write(Row::SlotReservation(rejected)).emit(failed));
            }
            let account = account.expect("refusal covers the missing account");
            let updated = InventoryAccount {
                reserved_slots: account.reserved_slots + slots,
                ..account.clone()
            };
            let done = reply(
                event,
                ctx,
                Payload::InventoryReserved(InventoryReserved {
                    item_id: reserved.item_id.clone(),
                    reserved_slots: slots,
                    available_slots: updated.free_slots(),
                    total_amount: reserved.reserved_amount,
                    payment_method: reserved.payment_method.clone(),
                }),
            );
            Ok(Step::nothing()
                .write(Row::InventoryAccount(updated))
                .write(Row::SlotReservation(new_reservation(ReservationState::Held)))
                .emit(done))
        }
        Payload::PaymentProcessed(_) => grant(reservation, account, event, ctx),
        Payload::PaymentFailed(_) | Payload::ItemReservationFailed(_) => {
            release(reservation, account, event, ctx)
        }
        other => unreachable!("Inventory does not subscribe to {:?}", other.event_type()),
    }
}

/// Payment succeeded: the held slots become the item in the inventory.
fn grant(
    reservation: Option<&SlotReservation>,
    account: Option<&InventoryAccount>,
    event: &Event,
    ctx: &StepContext<'_>,
) -> Result<Step, StepError> {
    let reservation = reservation.ok_or_else(|| {
        StepError::Contradiction(format!(
            "PAYMENT_PROCESSED for order {} with no slot reservation",
            event.order_id
        ))
    })?;
    match reservation.state {
        ReservationState::Granted => Ok(Step::nothing()),
        ReservationState::Held => {
            let account = account.ok_or_else(|| {
                StepError::Contradiction(format!(
                    "reservation for order {} without inventory",
                    event.order_id
                ))
            })?;
            if crate::mutant!(GrantWithoutReservation) {
                // Planted bug: the item is added, the reservation is not consumed.
                let updated = InventoryAccount {
                    used_slots: account.used_slots + reservation.slots,
                    ..account.clone()
                };
                return Ok(Step::nothing().write(Row::InventoryAccount(updated)));
            }
            let updated = InventoryAccount {
                reserved_slots: account.reserved_slots - reservation.slots,
                used_slots: account.used_slots + reservation.slots,
                ..account.clone()
            };
            let granted = SlotReservation {
                state: ReservationState::Granted,
                updated_at: ctx.now,
                ..reservation.clone()
            };
            Ok(Step::nothing()
                .write(Row::InventoryAccount(updated))
                .write(Row::SlotReservation(granted)))
        }
        other => Err(StepError::Contradiction(format!(
            "PAYMENT_PROCESSED for order {} whose slot reservation is {}",
            event.order_id,
            other.as_str()
        ))),
    }
}

/// A later step failed: give the held slots back, once.
fn release(
    reservation: Option<&SlotReservation>,
    account: Option<&InventoryAccount>,
    event: &Event,
    ctx: &StepContext<'_>,
) -> Result<Step, StepError> {
    let Some(reservation) = reservation else {
        if crate::mutant!(NoTombstone) {
            return Ok(Step::nothing());
        }
        let tombstone = SlotReservation {
            order_id: event.order_id.clone(),
            user_id: event.user_id.clone(),
            item_id: match &event.payload {
                Payload::PaymentFailed(p) => p.item_id.clone(),
                Payload::ItemReservationFailed(p) => p.item_id.clone(),
                _ => unreachable!("release is only called for failure events"),
            },
            slots: 0,
            state: ReservationState::Tombstone,
            updated_at: ctx.now,
        };
        return Ok(Step::nothing().write(Row::SlotReservation(tombstone)));
    };
    match reservation.state {
        ReservationState::Held => {
            let account = account.ok_or_else(|| {
                StepError::Contradiction(format!(
                    "reservation for order {} without inventory",
                    event.order_id
                ))
            })?;
            let updated = InventoryAccount {
                reserved_slots: account.reserved_slots - reservation.slots,
                ..account.clone()
            };
            let released = SlotReservation {
                state: ReservationState::Released,
                updated_at: ctx.now,
                ..reservation.clone()
            };
            let rollback = reply(
                event,
                ctx,
                Payload::InventoryRollback(InventoryRollback {
                    released_slots: reservation.slots,
                    available_slots: updated.free_slots(),
                }),
            );
            Ok(Step::nothing()
                .write(Row::InventoryAccount(updated))
                .write(Row::SlotReservation(released))
                .emit(rollback))
        }
        ReservationState::Granted => Err(StepError::Contradiction(format!(
            "{} for order {} whose item was already granted",
            event.event_type(),
            event.order_id
        ))),
        ReservationState::Released | ReservationState::Rejected | ReservationState::Tombstone => {
            Ok(Step::nothing())
        }
    }
}
