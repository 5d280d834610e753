//! The JSON answers of the API (camelCase, money in minor units, times in
//! RFC 3339 UTC).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::rows::{Order, OrderStatus};
use crate::domain::{EventId, EventType, FailedStep, OrderId, Service, Timestamp};
use crate::runtime::OutboxEntry;

/// The answer of `POST /orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummary {
    #[schema(value_type = String)]
    pub order_id: OrderId,
    /// PENDING, COMPLETED or FAILED.
    #[schema(value_type = String, example = "COMPLETED")]
    pub status: OrderStatus,
    /// USER_VALIDATION, INVENTORY_RESERVATION, ITEM_RESERVATION or PAYMENT.
    #[schema(value_type = Option<String>)]
    pub failed_step: Option<FailedStep>,
    pub failure_reason: Option<String>,
    pub total_amount: i64,
}

impl From<&Order> for OrderSummary {
    fn from(o: &Order) -> OrderSummary {
        OrderSummary {
            order_id: o.order_id.clone(),
            status: o.status,
            failed_step: o.failed_step,
            failure_reason: o.failure_reason.clone(),
            total_amount: o.total_amount,
        }
    }
}

/// One event of an order's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "ORDER_CREATED")]
    pub event_type: EventType,
    /// The service that emitted it.
    #[schema(value_type = String)]
    pub service: Service,
    #[schema(value_type = String, format = "uuid")]
    pub event_id: EventId,
    /// When the emitting step ran.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Times the relay handed it to the bus (more than 1: re-driven).
    pub published_count: u32,
}

impl From<&OutboxEntry> for TimelineEntry {
    fn from(e: &OutboxEntry) -> TimelineEntry {
        TimelineEntry {
            event_type: e.event.event_type(),
            service: e.event.emitter(),
            event_id: e.event.event_id,
            at: e.event.timestamp,
            published_count: e.published_count,
        }
    }
}

/// The answer of `GET /orders/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    #[schema(value_type = String)]
    pub order_id: OrderId,
    pub user_id: String,
    pub item_id: String,
    pub item_name: String,
    pub quantity: i64,
    pub unit_price: i64,
    pub total_amount: i64,
    pub payment_method: String,
    /// PENDING, COMPLETED or FAILED.
    #[schema(value_type = String, example = "COMPLETED")]
    pub status: OrderStatus,
    /// USER_VALIDATION, INVENTORY_RESERVATION, ITEM_RESERVATION or PAYMENT.
    #[schema(value_type = Option<String>)]
    pub failed_step: Option<FailedStep>,
    pub failure_reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub deadline_at: Timestamp,
    pub timeline: Vec<TimelineEntry>,
}

impl OrderView {
    pub fn new(o: &Order, events: &[OutboxEntry]) -> OrderView {
        debug_assert!(o.quantity > 0, "orders are created with a positive quantity");
        OrderView {
            order_id: o.order_id.clone(),
            user_id: o.user_id.to_string(),
            item_id: o.item_id.to_string(),
            item_name: o.item_name.clone(),
            quantity: o.quantity,
            unit_price: o.total_amount / o.quantity,
            total_amount: o.total_amount,
            payment_method: o.payment_method.clone(),
            status: o.status,
            failed_step: o.failed_step,
            failure_reason: o.failure_reason.clone(),
            created_at: o.created_at,
            updated_at: o.updated_at,
            deadline_at: o.deadline_at,
            timeline: events.iter().map(TimelineEntry::from).collect(),
        }
    }
}

/// A user's inventory, from the Inventory service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryView {
    pub capacity: i64,
    pub used: i64,
    pub reserved: i64,
    pub free: i64,
}

/// One granted item (one per completed order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantedItem {
    #[schema(value_type = String)]
    pub order_id: OrderId,
    pub item_id: String,
    pub quantity: i64,
}

/// The answer of `GET /users/{id}`; a part is null when its service has no
/// row for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub user_id: String,
    pub balance: Option<i64>,
    pub inventory: Option<InventoryView>,
    pub items: Vec<GrantedItem>,
}

/// The answer of `GET /items/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemView {
    pub item_id: String,
    pub name: Option<String>,
    pub price: Option<i64>,
    pub stock: Option<i64>,
}

/// One order of `GET /users/{id}/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserOrder {
    #[schema(value_type = String)]
    pub order_id: OrderId,
    pub item_id: String,
    pub item_name: String,
    pub quantity: i64,
    pub total_amount: i64,
    /// PENDING, COMPLETED or FAILED.
    #[schema(value_type = String, example = "COMPLETED")]
    pub status: OrderStatus,
    /// USER_VALIDATION, INVENTORY_RESERVATION, ITEM_RESERVATION or PAYMENT.
    #[schema(value_type = Option<String>)]
    pub failed_step: Option<FailedStep>,
    pub failure_reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<&Order> for UserOrder {
    fn from(o: &Order) -> UserOrder {
        UserOrder {
            order_id: o.order_id.clone(),
            item_id: o.item_id.to_string(),
            item_name: o.item_name.clone(),
            quantity: o.quantity,
            total_amount: o.total_amount,
            status: o.status,
            failed_step: o.failed_step,
            failure_reason: o.failure_reason.clone(),
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// The answer of `GET /users/{id}/orders`: one page, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserOrders {
    pub user_id: String,
    pub orders: Vec<UserOrder>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}
