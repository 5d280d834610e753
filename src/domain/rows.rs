//! The rows each service owns, and the keys they are stored and locked by.
//!
//! Every service keeps its state in a few row types; a participant step reads
//! some of them (named by [`RowKey`]s derived from the event alone, so the
//! runtime can lock them before the step runs, in key order) and writes whole
//! rows back. The adapters map each row type to a table in the service's own
//! schema; the simulator and the in-memory store keep them in ordered maps.

use serde::{Deserialize, Serialize};

use super::event::{FailedStep, NotificationKind};
use super::ids::{ItemId, OrderId, UserId};
use super::service::Service;
use super::time::Timestamp;

/// Where an order is in its life. Terminal states never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Completed,
    Failed,
}

impl OrderStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, OrderStatus::Pending)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Failed => "FAILED",
        }
    }
    pub fn from_wire(s: &str) -> Option<OrderStatus> {
        [OrderStatus::Pending, OrderStatus::Completed, OrderStatus::Failed]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// Order service: one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub item_id: ItemId,
    /// Copied from the catalog at creation so ORDER_COMPLETED needs no lookup.
    pub item_name: String,
    pub quantity: i64,
    pub total_amount: i64,
    pub payment_method: String,
    pub status: OrderStatus,
    pub failed_step: Option<FailedStep>,
    pub failure_reason: Option<String>,
    pub created_at: Timestamp,
    pub deadline_at: Timestamp,
    /// Set when SAGA_DEADLINE_PASSED was emitted, so the sweeper emits it once.
    pub deadline_signalled: bool,
    pub updated_at: Timestamp,
}

/// Order service: the catalog (name and unit price) it prices orders from.
/// Order owns a copy because it cannot read Item's tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub item_id: ItemId,
    pub name: String,
    pub unit_price: i64,
}

/// User service: a player's balance in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user_id: UserId,
    pub balance: i64,
    /// Balance before any order: the base of balance conservation. Credits
    /// (an admin top-up) raise both in one transaction.
    pub opening_balance: i64,
}

/// State of one service's reservation for one order. The same four-state
/// shape serves balance holds, slot reservations and stock reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationState {
    /// Resources are held for the order.
    Held,
    /// Inventory only: the held slots became the granted item.
    Granted,
    /// Compensated: the resources went back.
    Released,
    /// The service refused the order (its failure event was emitted).
    Rejected,
    /// A compensation arrived before any reservation: a late forward event
    /// for this order is refused (DESIGN.md "Timeouts without races").
    Tombstone,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Held => "HELD",
            ReservationState::Granted => "GRANTED",
            ReservationState::Released => "RELEASED",
            ReservationState::Rejected => "REJECTED",
            ReservationState::Tombstone => "TOMBSTONE",
        }
    }
    pub fn from_wire(s: &str) -> Option<ReservationState> {
        use ReservationState::*;
        [Held, Granted, Released, Rejected, Tombstone]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// User service: the balance taken for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceHold {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub amount: i64,
    pub state: ReservationState,
    pub updated_at: Timestamp,
}

/// Inventory service: a player's inventory capacity and its use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryAccount {
    pub user_id: UserId,
    pub capacity: i64,
    /// Slots filled by granted items.
    pub used_slots: i64,
    /// Slots held for orders in flight.
    pub reserved_slots: i64,
}

impl InventoryAccount {
    pub fn free_slots(&self) -> i64 {
        self.capacity - self.used_slots - self.reserved_slots
    }
}

/// Inventory service: the slots held for one order; once GRANTED it is the
/// item in the player's inventory (one entry per order, so a grant is
/// counted exactly once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReservation {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub item_id: ItemId,
    pub slots: i64,
    pub state: ReservationState,
    pub updated_at: Timestamp,
}

/// Item service: stock of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemStock {
    pub item_id: ItemId,
    pub stock: i64,
    /// Stock before any order: the base of stock conservation.
    pub opening_stock: i64,
}

/// Item service: the stock taken for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReservation {
    pub order_id: OrderId,
    pub item_id: ItemId,
    pub quantity: i64,
    pub state: ReservationState,
    pub updated_at: Timestamp,
}

/// Outcome of the payment step for one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentState {
    Processed,
    Declined,
    /// The deadline reached the pivot first: a tombstone for ITEM_RESERVED.
    Cancelled,
}

impl PaymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Processed => "PROCESSED",
            PaymentState::Declined => "DECLINED",
            PaymentState::Cancelled => "CANCELLED",
        }
    }
    pub fn from_wire(s: &str) -> Option<PaymentState> {
        use PaymentState::*;
        [Processed, Declined, Cancelled]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// Payment service: the pivot's decision for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub amount: i64,
    pub method: String,
    pub state: PaymentState,
    pub reason: Option<String>,
    pub updated_at: Timestamp,
}

/// Notification service: the log of one kind of notification for one
/// order. `sent_count` counts sends: the provider is not idempotent, the
/// inbox is what keeps it at one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationLog {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub kind: NotificationKind,
    pub message: String,
    pub sent_count: i64,
    pub last_sent_at: Timestamp,
}

/// The key a row is stored and locked by. Ordered, so every transaction
/// locks in the same order and two never wait on each other in a cycle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RowKey {
    Order(OrderId),
    Catalog(ItemId),
    Account(UserId),
    BalanceHold(OrderId),
    InventoryAccount(UserId),
    SlotReservation(OrderId),
    ItemStock(ItemId),
    StockReservation(OrderId),
    Payment(OrderId),
    NotificationLog(OrderId, NotificationKind),
}

impl RowKey {
    /// The service whose tables hold this row.
    pub fn owner(&self) -> Service {
        match self {
            RowKey::Order(_) | RowKey::Catalog(_) => Service::Order,
            RowKey::Account(_) | RowKey::BalanceHold(_) => Service::User,
            RowKey::InventoryAccount(_) | RowKey::SlotReservation(_) => Service::Inventory,
            RowKey::ItemStock(_) | RowKey::StockReservation(_) => Service::Item,
            RowKey::Payment(_) => Service::Payment,
            RowKey::NotificationLog(..) => Service::Notification,
        }
    }
}

/// One row of any service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Row {
    Order(Order),
    Catalog(CatalogEntry),
    Account(Account),
    BalanceHold(BalanceHold),
    InventoryAccount(InventoryAccount),
    SlotReservation(SlotReservation),
    ItemStock(ItemStock),
    StockReservation(StockReservation),
    Payment(Payment),
    NotificationLog(NotificationLog),
}

impl Row {
    pub fn key(&self) -> RowKey {
        match self {
            Row::Order(r) => RowKey::Order(r.order_id.clone()),
            Row::Catalog(r) => RowKey::Catalog(r.item_id.clone()),
            Row::Account(r) => RowKey::Account(r.user_id.clone()),
            Row::BalanceHold(r) => RowKey::BalanceHold(r.order_id.clone()),
            Row::InventoryAccount(r) => RowKey::InventoryAccount(r.user_id.clone()),
            Row::SlotReservation(r) => RowKey::SlotReservation(r.order_id.clone()),
            Row::ItemStock(r) => RowKey::ItemStock(r.item_id.clone()),
            Row::StockReservation(r) => RowKey::StockReservation(r.order_id.clone()),
            Row::Payment(r) => RowKey::Payment(r.order_id.clone()),
            Row::NotificationLog(r) => RowKey::NotificationLog(r.order_id.clone(), r.kind),
        }
    }
}

/// The rows a step was given, by key. A step reads them through the typed
/// accessors; a key it was not given reads as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows(pub std::collections::BTreeMap<RowKey, Row>);

macro_rules! row_accessor {
    ($fn:ident, $variant:ident, $ty:ty, $key:ty) => {
        pub fn $fn(&self, id: &$key) -> Option<&$ty> {
            match self.0.get(&RowKey::$variant(id.clone())) {
                Some(Row::$variant(r)) => Some(r),
                Some(other) => unreachable!(
                    "key {:?} holds a foreign row {other:?}",
                    stringify!($variant)
                ),
                None => None,
            }
        }
    };
}

impl Rows {
    pub fn from_rows(rows: impl IntoIterator<Item = Row>) -> Rows {
        Rows(rows.into_iter().map(|r| (r.key(), r)).collect())
    }

    row_accessor!(order, Order, Order, OrderId);
    row_accessor!(catalog, Catalog, CatalogEntry, ItemId);
    row_accessor!(account, Account, Account, UserId);
    row_accessor!(balance_hold, BalanceHold, BalanceHold, OrderId);
    row_accessor!(inventory_account, InventoryAccount, InventoryAccount, UserId);
    row_accessor!(slot_reservation, SlotReservation, SlotReservation, OrderId);
    row_accessor!(item_stock, ItemStock, ItemStock, ItemId);
    row_accessor!(stock_reservation, StockReservation, StockReservation, OrderId);
    row_accessor!(payment, Payment, Payment, OrderId);

    pub fn notification_log(&self, order: &OrderId, kind: NotificationKind) -> Option<&NotificationLog> {
        match self.0.get(&RowKey::NotificationLog(order.clone(), kind)) {
            Some(Row::NotificationLog(r)) => Some(r),
            Some(other) => unreachable!("notification key holds a foreign row {other:?}"),
            None => None,
        }
    }
}
