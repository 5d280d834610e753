//! Item service: takes stock for an order under the stock row's lock, and
//! restores it, once, when payment fails.

use crate::domain::event::{Event, ItemReservationFailed, ItemReserved, ItemRestored, Payload};
use crate::domain::ids::ItemId;
use crate::domain::rows::{ItemStock, ReservationState, Row, RowKey, Rows, StockReservation};

use super::{reply, Step, StepContext, StepError};

pub fn rows_needed(event: &Event) -> Vec<RowKey> {
    let item = match &event.payload {
        Payload::InventoryReserved(p) => &p.item_id,
        Payload::PaymentFailed(p) => &p.item_id,
        // Not subscribed: `step` refuses it; lock only the reservation.
        _ => return vec![RowKey::StockReservation(event.order_id.clone())],
    };
    vec![
        RowKey::ItemStock(item.clone()),
        RowKey::StockReservation(event.order_id.clone()),
    ]
}

pub fn step(rows: &Rows, event: &Event, ctx: &StepContext<'_>) -> Result<Step, StepError> {
    let reservation = rows.stock_reservation(&event.order_id);
    match &event.payload {
        Payload::InventoryReserved(reserved) => {
            if reservation.is_some() {
                return Ok(Step::nothing());
            }
            let quantity = reserved.reserved_slots;
            let stock = rows.item_stock(&reserved.item_id);
            let available = stock.map_or(0, |s| s.stock);
            let refusal = match stock {
                None => Some(format!("unknown item {}", reserved.item_id)),
                Some(_) if available < quantity => {
                    Some(format!("out of stock: {available} left, {quantity} needed"))
                }
                Some(_) => None,
            };
            if let Some(reason) = refusal {
                let failed = reply(
                    event,
                    ctx,
                    Payload::ItemReservationFailed(ItemReservationFailed {
                        reason,
                        item_id: reserved.item_id.clone(),
                        requested_quantity: quantity,
                        available_stock: available,
                    }),
                );
                let rejected = new_reservation(event, ctx, &reserved.item_id, 0, ReservationState::Rejected);
                return Ok(Step::nothing()
                    .write(Row::StockReservation(rejected))
                    .emit(failed));
            }
            let stock = stock.expect("refusal covers the missing item");
            let updated = ItemStock {
                stock: stock.stock - quantity,
                ..stock.clone()
            };
            let done = reply(
                event,
                ctx,
                Payload::ItemReserved(ItemReserved {
                    item_id: reserved.item_id.clone(),
                    reserved_quantity: quantity,
                    remaining_stock: updated.stock,
                    total_amount: reserved.total_amount,
                    payment_method: reserved.payment_method.clone(),
                }),
            );
            let held = new_reservation(event, ctx, &reserved.item_id, quantity, ReservationState::Held);
            Ok(Step::nothing()
                .write(Row::ItemStock(updated))
                .write(Row::StockReservation(held))
                .emit(done))
        }
        Payload::PaymentFailed(failed) => {
            let Some(reservation) = reservation else {
                if crate::mutant!(NoTombstone) {
                    return Ok(Step::nothing());
                }
                let tombstone = new_reservation(event, ctx, &failed.item_id, 0, ReservationState::Tombstone);
                return Ok(Step::nothing().write(Row::StockReservation(tombstone)));
            };
            if reservation.state != ReservationState::Held {
                return Ok(Step::nothing());
            }
            let stock = rows.item_stock(&reservation.item_id).ok_or_else(|| {
                StepError::Contradiction(format!(
                    "reservation for order {} of unknown item",
                    event.order_id
                ))
            })?;
            let updated = ItemStock {
                stock: stock.stock + reservation.quantity,
                ..stock.clone()
            };
            let restored = StockReservation {
                state: ReservationState::Released,
                updated_at: ctx.now,
                ..reservation.clone()
            };
            let event_out = reply(
                event,
                ctx,
                Payload::ItemRestored(ItemRestored {
                    item_id: reservation.item_id.clone(),
                    restored_quantity: reservation.quantity,
                    stock: updated.stock,
                }),
            );
            Ok(Step::nothing()
                .write(Row::ItemStock(updated))
                .write(Row::StockReservation(restored))
                .emit(event_out))
        }
        other => unreachable!("Item does not subscribe to {:?}", other.event_type()),
    }
}

fn new_reservation(
    event: &Event,
    ctx: &StepContext<'_>,
    item: &ItemId,
    quantity: i64,
    state: ReservationState,
) -> StockReservation {
    StockReservation {
        order_id: event.order_id.clone(),
        item_id: item.clone(),
        quantity,
        state,
        updated_at: ctx.now,
    }
}
