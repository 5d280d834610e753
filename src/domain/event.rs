//! The saga's events: the sixteen of the founding document plus the saga
//! deadline, their payloads, their JSON form and its decoding.
//!
//! Wire form: one flat JSON object, camelCase fields, a SCREAMING_SNAKE
//! `type`, the founding document's `BaseEventData` (`orderId`, `userId`,
//! `timestamp`) plus `eventId` and `schemaVersion`. Payload fields are the
//! founding document's; fields it lacks but a subscriber needs (because each
//! service owns its data and cannot read another's) are marked *added*; they
//! replace the document's Redis reservation keys that handed data from one
//! step to the next. Decoding is pure and gives a reason for every rejection,
//! which is what a dead-letter entry carries.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ids::{EventId, ItemId, OrderId, UserId};
use super::service::Service;
use super::time::Timestamp;

/// The only schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest encoded event accepted from a bus, in bytes.
pub const EVENT_BYTES_MAX: usize = 16 * 1024;

macro_rules! event_types {
    ($($variant:ident => $wire:literal, $publisher:ident;)*) => {
        /// The type of an event, as in the founding document's table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum EventType { $($variant,)* }

        impl EventType {
            pub const ALL: [EventType; [$($wire),*].len()] = [$(EventType::$variant),*];

            /// The SCREAMING_SNAKE name used on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $wire,)* }
            }

            pub fn from_wire(s: &str) -> Option<EventType> {
                match s { $($wire => Some(EventType::$variant),)* _ => None }
            }

            /// The one service that publishes this type.
            pub fn publisher(self) -> Service {
                match self { $(EventType::$variant => Service::$publisher,)* }
            }
        }
    };
}

event_types! {
    OrderCreated => "ORDER_CREATED", Order;
    OrderCompleted => "ORDER_COMPLETED", Order;
    OrderFailed => "ORDER_FAILED", Order;
    UserValidated => "USER_VALIDATED", User;
    UserValidationFailed => "USER_VALIDATION_FAILED", User;
    PaymentReserved => "PAYMENT_RESERVED", User;
    PaymentProcessed => "PAYMENT_PROCESSED", Payment;
    PaymentFailed => "PAYMENT_FAILED", Payment;
    PaymentRollback => "PAYMENT_ROLLBACK", User;
    InventoryReserved => "INVENTORY_RESERVED", Inventory;
    InventoryReservationFailed => "INVENTORY_RESERVATION_FAILED", Inventory;
    InventoryRollback => "INVENTORY_ROLLBACK", Inventory;
    ItemReserved => "ITEM_RESERVED", Item;
    ItemReservationFailed => "ITEM_RESERVATION_FAILED", Item;
    ItemRestored => "ITEM_RESTORED", Item;
    NotificationSent => "NOTIFICATION_SENT", Notification;
    SagaDeadlinePassed => "SAGA_DEADLINE_PASSED", Order;
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The step at which a failed order failed (`OrderFailedEvent.failedStep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailedStep {
    UserValidation,
    InventoryReservation,
    ItemReservation,
    Payment,
}

impl FailedStep {
    pub const ALL: [FailedStep; 4] = [
        FailedStep::UserValidation,
        FailedStep::InventoryReservation,
        FailedStep::ItemReservation,
        FailedStep::Payment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailedStep::UserValidation => "USER_VALIDATION",
            FailedStep::InventoryReservation => "INVENTORY_RESERVATION",
            FailedStep::ItemReservation => "ITEM_RESERVATION",
            FailedStep::Payment => "PAYMENT",
        }
    }

    pub fn from_wire(s: &str) -> Option<FailedStep> {
        FailedStep::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// What a notification tells the player (`NotificationEvent.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotificationKind {
    /// On ORDER_COMPLETED.
    PurchaseCompleted,
    /// On ORDER_FAILED.
    PurchaseFailed,
    /// On PAYMENT_PROCESSED.
    PaymentCompleted,
    /// On PAYMENT_FAILED.
    PaymentFailed,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 4] = [
        NotificationKind::PurchaseCompleted,
        NotificationKind::PurchaseFailed,
        NotificationKind::PaymentCompleted,
        NotificationKind::PaymentFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::PurchaseCompleted => "PURCHASE_COMPLETED",
            NotificationKind::PurchaseFailed => "PURCHASE_FAILED",
            NotificationKind::PaymentCompleted => "PAYMENT_COMPLETED",
            NotificationKind::PaymentFailed => "PAYMENT_FAILED",
        }
    }

    pub fn from_wire(s: &str) -> Option<NotificationKind> {
        NotificationKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

// ---- payloads (founding document's "Event data structures") ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub item_id: ItemId,
    pub quantity: i64,
    pub total_amount: i64,
    /// Added: Payment needs it and cannot read Order's tables.
    pub payment_method: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCompleted {
    pub item_name: String,
    pub total_amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderFailed {
    pub reason: String,
    pub failed_step: FailedStep,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserValidated {
    pub user_balance: i64,
    pub required_amount: i64,
}

/// The founding document lists no payload; `reason` carries what failed,
/// including its state diagram's "PaymentReservationFailed" (insufficient
/// balance), which is not one of the sixteen events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserValidationFailed {
    pub reason: String,
    pub required_amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentReserved {
    pub reserved_amount: i64,
    pub remaining_balance: i64,
    /// Added: Inventory reserves slots for this item and quantity.
    pub item_id: ItemId,
    /// Added.
    pub quantity: i64,
    /// Added: carried forward to Payment.
    pub payment_method: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentProcessed {
    pub payment_amount: i64,
    pub payment_method: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailed {
    pub reason: String,
    pub attempted_amount: i64,
    /// Added: Item restores stock of this item without reading another table.
    pub item_id: ItemId,
}

/// The founding document lists no payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRollback {
    pub refunded_amount: i64,
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReserved {
    pub item_id: ItemId,
    pub reserved_slots: i64,
    pub available_slots: i64,
    /// Added: carried forward to Payment.
    pub total_amount: i64,
    /// Added: carried forward to Payment.
    pub payment_method: String,
}

/// The founding document lists no payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReservationFailed {
    pub reason: String,
    pub item_id: ItemId,
    pub requested_slots: i64,
    pub available_slots: i64,
}

/// The founding document lists no payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryRollback {
    pub released_slots: i64,
    pub available_slots: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemReserved {
    pub item_id: ItemId,
    pub reserved_quantity: i64,
    pub remaining_stock: i64,
    /// Added: the amount Payment charges.
    pub total_amount: i64,
    /// Added.
    pub payment_method: String,
}

/// The founding document lists no payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemReservationFailed {
    pub reason: String,
    pub item_id: ItemId,
    pub requested_quantity: i64,
    pub available_stock: i64,
}

/// The founding document lists no payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemRestored {
    pub item_id: ItemId,
    pub restored_quantity: i64,
    pub stock: i64,
}

/// `NotificationEvent`; its `type` field is renamed `notificationType`
/// because `type` is the event type of every event on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSent {
    pub message: String,
    pub notification_type: NotificationKind,
}

/// Added event (DESIGN.md "Timeouts without races"): Order tells the pivot,
/// Payment, that the order's deadline passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaDeadlinePassed {
    pub item_id: ItemId,
    pub total_amount: i64,
    pub deadline: Timestamp,
}

/// An event's type-specific fields; the `type` tag selects the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Payload {
    OrderCreated(OrderCreated),
    OrderCompleted(OrderCompleted),
    OrderFailed(OrderFailed),
    UserValidated(UserValidated),
    UserValidationFailed(UserValidationFailed),
    PaymentReserved(PaymentReserved),
    PaymentProcessed(PaymentProcessed),
    PaymentFailed(PaymentFailed),
    PaymentRollback(PaymentRollback),
    InventoryReserved(InventoryReserved),
    InventoryReservationFailed(InventoryReservationFailed),
    InventoryRollback(InventoryRollback),
    ItemReserved(ItemReserved),
    ItemReservationFailed(ItemReservationFailed),
    ItemRestored(ItemRestored),
    NotificationSent(NotificationSent),
    SagaDeadlinePassed(SagaDeadlinePassed),
}

impl Payload {
    pub fn event_type(&self) -> EventType {
        match self {
            Payload::OrderCreated(_) => EventType::OrderCreated,
            Payload::OrderCompleted(_) => EventType::OrderCompleted,
            Payload::OrderFailed(_) => EventType::OrderFailed,
            Payload::UserValidated(_) => EventType::UserValidated,
            Payload::UserValidationFailed(_) => EventType::UserValidationFailed,
            Payload::PaymentReserved(_) => EventType::PaymentReserved,
            Payload::PaymentProcessed(_) => EventType::PaymentProcessed,
            Payload::PaymentFailed(_) => EventType::PaymentFailed,
            Payload::PaymentRollback(_) => EventType::PaymentRollback,
            Payload::InventoryReserved(_) => EventType::InventoryReserved,
            Payload::InventoryReservationFailed(_) => EventType::InventoryReservationFailed,
            Payload::InventoryRollback(_) => EventType::InventoryRollback,
            Payload::ItemReserved(_) => EventType::ItemReserved,
            Payload::ItemReservationFailed(_) => EventType::ItemReservationFailed,
            Payload::ItemRestored(_) => EventType::ItemRestored,
            Payload::NotificationSent(_) => EventType::NotificationSent,
            Payload::SagaDeadlinePassed(_) => EventType::SagaDeadlinePassed,
        }
    }

    /// Distinguishes events of one type that one emitter sends several times
    /// for the same order; empty for every type but NOTIFICATION_SENT.
    fn id_qualifier(&self) -> &'static str {
        match self {
            Payload::NotificationSent(n) => n.notification_type.as_str(),
            _ => "",
        }
    }

    /// The key fields of a trace line, e.g. `item=sword qty=2 total=200`.
    fn key_fields(&self) -> String {
        match self {
            Payload::OrderCreated(p) => format!(
                "item={} qty={} total={} method={}",
                p.item_id, p.quantity, p.total_amount, p.payment_method
            ),
            Payload::OrderCompleted(p) => format!("item={:?} total={}", p.item_name, p.total_amount),
            Payload::OrderFailed(p) => format!("step={} reason={:?}", p.failed_step.as_str(), p.reason),
            Payload::UserValidated(p) => format!("balance={} required={}", p.user_balance, p.required_amount),
            Payload::UserValidationFailed(p) => {
                format!("required={} reason={:?}", p.required_amount, p.reason)
            }
            Payload::PaymentReserved(p) => format!(
                "reserved={} remaining={} item={} qty={}",
                p.reserved_amount, p.remaining_balance, p.item_id, p.quantity
            ),
            Payload::PaymentProcessed(p) => {
                format!("amount={} method={}", p.payment_amount, p.payment_method)
            }
            Payload::PaymentFailed(p) => format!("attempted={} reason={:?}", p.attempted_amount, p.reason),
            Payload::PaymentRollback(p) => format!("refunded={} balance={}", p.refunded_amount, p.balance),
            Payload::InventoryReserved(p) => format!(
                "item={} slots={} available={}",
                p.item_id, p.reserved_slots, p.available_slots
            ),
            Payload::InventoryReservationFailed(p) => format!(
                "requested={} available={} reason={:?}",
                p.requested_slots, p.available_slots, p.reason
            ),
            Payload::InventoryRollback(p) => {
                format!("released={} available={}", p.released_slots, p.available_slots)
            }
            Payload::ItemReserved(p) => format!(
                "item={} qty={} remaining={}",
                p.item_id, p.reserved_quantity, p.remaining_stock
            ),
            Payload::ItemReservationFailed(p) => format!(
                "item={} requested={} available={} reason={:?}",
                p.item_id, p.requested_quantity, p.available_stock, p.reason
            ),
            Payload::ItemRestored(p) => format!(
                "item={} restored={} stock={}",
                p.item_id, p.restored_quantity, p.stock
            ),
            Payload::NotificationSent(p) => format!("type={}", p.notification_type.as_str()),
            Payload::SagaDeadlinePassed(p) => format!("deadline={}", p.deadline),
        }
    }
}

/// One event: the founding document's `BaseEventData` plus identity and
/// version, and the type-specific payload flattened beside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event_id: EventId,
    pub schema_version: u32,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub timestamp: Timestamp,
    #[serde(flatten)]
    pub payload: Payload,
}

impl Event {
    /// Builds an event with its derived, stable id. The emitter is the
    /// payload type's publisher: a participant cannot emit another's event.
    pub fn new(order_id: OrderId, user_id: UserId, timestamp: Timestamp, payload: Payload) -> Event {
        let event_type = payload.event_type();
        let event_id = EventId::derive(
            &order_id,
            event_type.as_str(),
            event_type.publisher().name(),
            payload.id_qualifier(),
        );
        Event {
            event_id,
            schema_version: SCHEMA_VERSION,
            order_id,
            user_id,
            timestamp,
            payload,
        }
    }

    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }

    pub fn emitter(&self) -> Service {
        self.event_type().publisher()
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("an Event always serializes")
    }

    /// Decodes and checks one event from a bus; every rejection says why.
    pub fn decode(raw: &[u8]) -> Result<Event, DecodeError> {
        if raw.len() > EVENT_BYTES_MAX {
            return Err(DecodeError::TooLarge(raw.len()));
        }
        let value: serde_json::Value =
            serde_json::from_slice(raw).map_err(|e| DecodeError::MalformedJson(e.to_string()))?;
        let object = value.as_object().ok_or(DecodeError::NotAnObject)?;
        match object.get("schemaVersion") {
            None => return Err(DecodeError::MissingField("schemaVersion".into())),
            Some(v) if v.as_u64() != Some(u64::from(SCHEMA_VERSION)) => {
                return Err(DecodeError::UnsupportedSchemaVersion(v.to_string()))
            }
            Some(_) => {}
        }
        let type_name = object
            .get("type")
            .ok_or_else(|| DecodeError::MissingField("type".into()))?
            .as_str()
            .ok_or_else(|| DecodeError::InvalidField("type: not a string".into()))?;
        if EventType::from_wire(type_name).is_none() {
            return Err(DecodeError::UnknownType(type_name.to_string()));
        }
        let event: Event = serde_json::from_value(value).map_err(|e| {
            let message = e.to_string();
            match message.strip_prefix("missing field `") {
                Some(rest) => DecodeError::MissingField(rest.split('`').next().unwrap_or(rest).to_string()),
                None => DecodeError::InvalidField(message),
            }
        })?;
        let expected = Event::new(
            event.order_id.clone(),
            event.user_id.clone(),
            event.timestamp,
            event.payload.clone(),
        );
        if expected.event_id != event.event_id {
            return Err(DecodeError::ForeignEventId {
                found: event.event_id,
                expected: expected.event_id,
            });
        }
        Ok(event)
    }

    /// `TYPE {order=.. user=.. key fields}`: the body of a trace line.
    pub fn summary(&self) -> String {
        format!(
            "{} {{order={} user={} {}}}",
            self.event_type(),
            self.order_id,
            self.user_id,
            self.payload.key_fields()
        )
    }
}

/// Why bytes from a bus are not an event this build can handle. Each is
/// final: redelivering the same bytes cannot succeed, so the consumer
/// dead-letters the entry at once with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event of {0} bytes exceeds the limit of {EVENT_BYTES_MAX}")]
    TooLarge(usize),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("missing field `{0}`")]
    MissingField(String),
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unsupported schema version {0} (this build reads {SCHEMA_VERSION})")]
    UnsupportedSchemaVersion(String),
    #[error("eventId {found} is not the id of this event (expected {expected})")]
    ForeignEventId { found: EventId, expected: EventId },
}

impl DecodeError {
    /// The payload's `schemaVersion` when the rejection is that this build
    /// does not read it, and it is newer than the newest this build reads:
    /// a row a newer build wrote, which that build can still publish.
    pub fn newer_schema_version(&self) -> Option<u32> {
        match self {
            DecodeError::UnsupportedSchemaVersion(raw) => {
                raw.parse::<u32>().ok().filter(|v| *v > SCHEMA_VERSION)
            }
            _ => None,
        }
    }
}
