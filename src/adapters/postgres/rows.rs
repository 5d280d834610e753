//! Row <-> SQL: which table holds each row type, its primary key, its
//! columns, and the decoding of a result row back into a [`Row`].
//!
//! Column names are the field names of `domain::rows`; enum values are their
//! `as_str()` spellings; timestamps are `timestamptz` (millisecond precision
//! round-trips exactly). Statements are built from these static descriptions,
//! so each row type has exactly one INSERT, one UPDATE and one SELECT shape.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row as _};

use crate::domain::rows::{
    Account, BalanceHold, CatalogEntry, InventoryAccount, ItemStock, NotificationLog, Order, OrderStatus,
    Payment, PaymentState, ReservationState, SlotReservation, StockReservation,
};
use crate::domain::{FailedStep, ItemId, NotificationKind, OrderId, Row, RowKey, Service, Timestamp, UserId};

/// A row type: its table and primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Order,
    Catalog,
    Account,
    BalanceHold,
    InventoryAccount,
    SlotReservation,
    ItemStock,
    StockReservation,
    Payment,
    NotificationLog,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Order,
        Kind::Catalog,
        Kind::Account,
        Kind::BalanceHold,
        Kind::InventoryAccount,
        Kind::SlotReservation,
        Kind::ItemStock,
        Kind::StockReservation,
        Kind::Payment,
        Kind::NotificationLog,
    ];

    pub fn of_key(key: &RowKey) -> Kind {
        match key {
            RowKey::Order(_) => Kind::Order,
            RowKey::Catalog(_) => Kind::Catalog,
            RowKey::Account(_) => Kind::Account,
            RowKey::BalanceHold(_) => Kind::BalanceHold,
            RowKey::InventoryAccount(_) => Kind::InventoryAccount,
            RowKey::SlotReservation(_) => Kind::SlotReservation,
            RowKey::ItemStock(_) => Kind::ItemStock,
            RowKey::StockReservation(_) => Kind::StockReservation,
            RowKey::Payment(_) => Kind::Payment,
            RowKey::NotificationLog(..) => Kind::NotificationLog,
        }
    }

    /// The service whose schema holds the table.
    pub fn owner(self) -> Service {
        match self {
            Kind::Order | Kind::Catalog => Service::Order,
            Kind::Account | Kind::BalanceHold => Service::User,
            Kind::InventoryAccount | Kind::SlotReservation => Service::Inventory,
            Kind::ItemStock | Kind::StockReservation => Service::Item,
            Kind::Payment => Service::Payment,
            Kind::NotificationLog => Service::Notification,
        }
    }

    /// Schema-qualified table name.
    pub fn table(self) -> &'static str {
        match self {
            Kind::Order => "order_svc.orders",
            Kind::Catalog => "order_svc.catalog",
            Kind::Account => "user_svc.accounts",
            Kind::BalanceHold => "user_svc.balance_holds",
            Kind::InventoryAccount => "inventory_svc.inventory_accounts",
            Kind::SlotReservation => "inventory_svc.slot_reservations",
            Kind::ItemStock => "item_svc.item_stocks",
            Kind::StockReservation => "item_svc.stock_reservations",
            Kind::Payment => "payment_svc.payments",
            Kind::NotificationLog => "notification_svc.notification_logs",
        }
    }

    /// Primary-key columns, in the order [`key_values`] gives them.
    pub fn primary_key(self) -> &'static [&'static str] {
        match self {
            Kind::Order
            | Kind::BalanceHold
            | Kind::SlotReservation
            | Kind::StockReservation
            | Kind::Payment => &["order_id"],
            Kind::Catalog | Kind::ItemStock => &["item_id"],
            Kind::Account | Kind::InventoryAccount => &["user_id"],
            Kind::NotificationLog => &["order_id", "kind"],
        }
    }

    /// `pk1 = $1 AND pk2 = $2`.
    fn key_predicate(self, first_placeholder: usize) -> String {
        self.primary_key()
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ${}", first_placeholder + i))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The columns a row of this kind is read from and written to, key
    /// columns included, in [`columns`] order. Statements name them instead
    /// of `*`: a prepared `SELECT *` that sqlx caches per connection fails
    /// with SQLSTATE 0A000 ("cached plan must not change result type") on
    /// every pooled connection once a migration adds a column.
    pub fn column_names(self) -> &'static [&'static str] {
        match self {
            Kind::Order => &[
                "order_id",
                "user_id",
                "item_id",
                "item_name",
                "quantity",
                "total_amount",
                "payment_method",
                "status",
                "failed_step",
                "failure_reason",
                "created_at",
                "deadline_at",
                "deadline_signalled",
                "updated_at",
            ],
            Kind::Catalog => &["item_id", "name", "unit_price"],
            Kind::Account => &["user_id", "balance", "opening_balance"],
            Kind::BalanceHold => &["order_id", "user_id", "amount", "state", "updated_at"],
            Kind::InventoryAccount => &["user_id", "capacity", "used_slots", "reserved_slots"],
            Kind::SlotReservation => &["order_id", "user_id", "item_id", "slots", "state", "updated_at"],
            Kind::ItemStock => &["item_id", "stock", "opening_stock"],
            Kind::StockReservation => &["order_id", "item_id", "quantity", "state", "updated_at"],
            Kind::Payment => &[
                "order_id",
                "user_id",
                "amount",
                "method",
                "state",
                "reason",
                "updated_at",
            ],
            Kind::NotificationLog => &[
                "order_id",
                "user_id",
                "kind",
                "message",
                "sent_count",
                "last_sent_at",
            ],
        }
    }

    /// `SELECT <columns> FROM <table>`: the start of every read of this kind.
    pub fn select_from(self) -> String {
        format!("SELECT {} FROM {}", self.column_names().join(", "), self.table())
    }

    /// `SELECT <columns> ... WHERE <key>` (with `FOR UPDATE` when `lock`).
    pub fn select_sql(self, lock: bool) -> String {
        format!(
            "{} WHERE {}{}",
            self.select_from(),
            self.key_predicate(1),
            if lock { " FOR UPDATE" } else { "" }
        )
    }

    /// Every row of the table, in key order (snapshots).
    pub fn select_all_sql(self) -> String {
        format!(
            "{} ORDER BY {}",
            self.select_from(),
            self.primary_key().join(", ")
        )
    }
}

/// The primary-key values of `key`, in [`Kind::primary_key`] order.
pub fn key_values(key: &RowKey) -> Vec<String> {
    match key {
        RowKey::Order(o)
        | RowKey::BalanceHold(o)
        | RowKey::SlotReservation(o)
        | RowKey::StockReservation(o)
        | RowKey::Payment(o) => vec![o.to_string()],
        RowKey::Catalog(i) | RowKey::ItemStock(i) => vec![i.to_string()],
        RowKey::Account(u) | RowKey::InventoryAccount(u) => vec![u.to_string()],
        RowKey::NotificationLog(o, k) => vec![o.to_string(), k.as_str().to_string()],
    }
}

/// Binds the key values of `key` to `query`.
pub fn bind_key<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    key: &RowKey,
) -> Query<'q, Postgres, PgArguments> {
    for value in key_values(key) {
        query = query.bind(value);
    }
    query
}

/// One column value.
#[derive(Debug, Clone)]
pub enum Value {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Bool(bool),
    Time(DateTime<Utc>),
}

fn time(t: Timestamp) -> Value {
    Value::Time(t.to_datetime())
}

/// A row as (column, value) pairs, key columns included.
pub fn columns(row: &Row) -> Vec<(&'static str, Value)> {
    use Value::*;
    match row {
        Row::Order(r) => vec![
            ("order_id", Text(r.order_id.to_string())),
            ("user_id", Text(r.user_id.to_string())),
            ("item_id", Text(r.item_id.to_string())),
            ("item_name", Text(r.item_name.clone())),
            ("quantity", Int(r.quantity)),
            ("total_amount", Int(r.total_amount)),
            ("payment_method", Text(r.payment_method.clone())),
            ("status", Text(r.status.as_str().into())),
            ("failed_step", OptText(r.failed_step.map(|s| s.as_str().into()))),
            ("failure_reason", OptText(r.failure_reason.clone())),
            ("created_at", time(r.created_at)),
            ("deadline_at", time(r.deadline_at)),
            ("deadline_signalled", Bool(r.deadline_signalled)),
            ("updated_at", time(r.updated_at)),
        ],
        Row::Catalog(r) => vec![
            ("item_id", Text(r.item_id.to_string())),
            ("name", Text(r.name.clone())),
            ("unit_price", Int(r.unit_price)),
        ],
        Row::Account(r) => vec![
            ("user_id", Text(r.user_id.to_string())),
            ("balance", Int(r.balance)),
            ("opening_balance", Int(r.opening_balance)),
        ],
        Row::BalanceHold(r) => vec![
            ("order_id", Text(r.order_id.to_string())),
            ("user_id", Text(r.user_id.to_string())),
            ("amount", Int(r.amount)),
            ("state", Text(r.state.as_str().into())),
            ("updated_at", time(r.updated_at)),
        ],
        Row::InventoryAccount(r) => vec![
            ("user_id", Text(r.user_id.to_string())),
            ("capacity", Int(r.capacity)),
            ("used_slots", Int(r.used_slots)),
            ("reserved_slots", Int(r.reserved_slots)),
        ],
        Row::SlotReservation(r) => vec![
            ("order_id", Text(r.order_id.to_string())),
            ("user_id", Text(r.user_id.to_string())),
            ("item_id", Text(r.item_id.to_string())),
            ("slots", Int(r.slots)),
            ("state", Text(r.state.as_str().into())),
            ("updated_at", time(r.updated_at)),
        ],
        Row::ItemStock(r) => vec![
            ("item_id", Text(r.item_id.to_string())),
            ("stock", Int(r.stock)),
            ("opening_stock", Int(r.opening_stock)),
        ],
        Row::StockReservation(r) => vec![
            ("order_id", Text(r.order_id.to_string())),
            ("item_id", Text(r.item_id.to_string())),
            ("quantity", Int(r.quantity)),
            ("state", Text(r.state.as_str().into())),
            ("updated_at", time(r.updated_at)),
        ],
        Row::Payment(r) => vec![
            ("order_id", Text(r.order_id.to_string())),
            ("user_id", Text(r.user_id.to_string())),
            ("amount", Int(r.amount)),
            ("method", Text(r.method.clone())),
            ("state", Text(r.state.as_str().into())),
            ("reason", OptText(r.reason.clone())),
            ("updated_at", time(r.updated_at)),
        ],
        Row::NotificationLog(r) => vec![
            ("order_id", Text(r.order_id.to_string())),
            ("user_id", Text(r.user_id.to_string())),
            ("kind", Text(r.kind.as_str().into())),
            ("message", Text(r.message.clone())),
            ("sent_count", Int(r.sent_count)),
            ("last_sent_at", time(r.last_sent_at)),
        ],
    }
}

/// How `save` writes a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The key was read as absent under a lock: a plain INSERT, so a
    /// concurrent insert of the same key is a unique violation (a conflict).
    Insert,
    /// The row existed: UPDATE by key.
    Update,
    /// The key was never read in this transaction: insert or overwrite.
    Upsert,
}

/// The statement writing `row` in `mode`, with its values in placeholder
/// order.
pub fn write_sql(row: &Row, mode: WriteMode) -> (String, Vec<Value>) {
    let kind = Kind::of_key(&row.key());
    let cols = columns(row);
    let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
    debug_assert_eq!(
        names,
        kind.column_names(),
        "reads and writes name the same columns"
    );
    let pk = kind.primary_key();
    match mode {
        WriteMode::Insert | WriteMode::Upsert => {
            let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
            let mut sql = format!(
                "INSERT INTO {} ({}) VALUES ({})",
                kind.table(),
                names.join(", "),
                placeholders.join(", ")
            );
            if mode == WriteMode::Upsert {
                let updates: Vec<String> = names
                    .iter()
                    .filter(|c| !pk.contains(c))
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect();
                sql.push_str(&format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    pk.join(", "),
                    updates.join(", ")
                ));
            }
            (sql, cols.into_iter().map(|(_, v)| v).collect())
        }
        WriteMode::Update => {
            let (keys, rest): (Vec<_>, Vec<_>) = cols.into_iter().partition(|(c, _)| pk.contains(c));
            let sets: Vec<String> = rest
                .iter()
                .enumerate()
                .map(|(i, (c, _))| format!("{c} = ${}", i + 1))
                .collect();
            let sql = format!(
                "UPDATE {} SET {} WHERE {}",
                kind.table(),
                sets.join(", "),
                kind.key_predicate(rest.len() + 1)
            );
            // The key values in primary-key order, after the other columns.
            let mut values: Vec<Value> = rest.into_iter().map(|(_, v)| v).collect();
            for name in pk {
                let (_, v) = keys
                    .iter()
                    .find(|(c, _)| c == name)
                    .expect("every key column is a column");
                values.push(v.clone());
            }
            (sql, values)
        }
    }
}

/// Binds `values` to `query` in order.
pub fn bind_values<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    values: Vec<Value>,
) -> Query<'q, Postgres, PgArguments> {
    for value in values {
        query = match value {
            Value::Text(s) => query.bind(s),
            Value::OptText(s) => query.bind(s),
            Value::Int(i) => query.bind(i),
            Value::Bool(b) => query.bind(b),
            Value::Time(t) => query.bind(t),
        };
    }
    query
}

/// Why a stored row does not decode (a column of a wrong type or value).
pub type DecodeResult<T> = Result<T, String>;

fn text(r: &PgRow, col: &str) -> DecodeResult<String> {
    r.try_get::<String, _>(col)
        .map_err(|e| format!("column {col}: {e}"))
}
fn opt_text(r: &PgRow, col: &str) -> DecodeResult<Option<String>> {
    r.try_get::<Option<String>, _>(col)
        .map_err(|e| format!("column {col}: {e}"))
}
fn int(r: &PgRow, col: &str) -> DecodeResult<i64> {
    r.try_get::<i64, _>(col).map_err(|e| format!("column {col}: {e}"))
}
fn ts(r: &PgRow, col: &str) -> DecodeResult<Timestamp> {
    r.try_get::<DateTime<Utc>, _>(col)
        .map(Timestamp::from_datetime)
        .map_err(|e| format!("column {col}: {e}"))
}
fn order_id(r: &PgRow, col: &str) -> DecodeResult<OrderId> {
    OrderId::parse(text(r, col)?).map_err(|e| format!("column {col}: {e}"))
}
fn user_id(r: &PgRow, col: &str) -> DecodeResult<UserId> {
    UserId::parse(text(r, col)?).map_err(|e| format!("column {col}: {e}"))
}
fn item_id(r: &PgRow, col: &str) -> DecodeResult<ItemId> {
    ItemId::parse(text(r, col)?).map_err(|e| format!("column {col}: {e}"))
}
fn parsed<T>(r: &PgRow, col: &str, parse: fn(&str) -> Option<T>) -> DecodeResult<T> {
    let raw = text(r, col)?;
    parse(&raw).ok_or_else(|| format!("column {col}: unknown value {raw:?}"))
}

/// Decodes one result row of `kind`'s table.
pub fn decode(kind: Kind, r: &PgRow) -> DecodeResult<Row> {
    Ok(match kind {
        Kind::Order => Row::Order(Order {
            order_id: order_id(r, "order_id")?,
            user_id: user_id(r, "user_id")?,
            item_id: item_id(r, "item_id")?,
            item_name: text(r, "item_name")?,
            quantity: int(r, "quantity")?,
            total_amount: int(r, "total_amount")?,
            payment_method: text(r, "payment_method")?,
            status: parsed(r, "status", OrderStatus::from_wire)?,
            failed_step: match opt_text(r, "failed_step")? {
                None => None,
                Some(s) => {
                    Some(FailedStep::from_wire(&s).ok_or_else(|| format!("unknown failed_step {s:?}"))?)
                }
            },
            failure_reason: opt_text(r, "failure_reason")?,
            created_at: ts(r, "created_at")?,
            deadline_at: ts(r, "deadline_at")?,
            deadline_signalled: r
                .try_get::<bool, _>("deadline_signalled")
                .map_err(|e| format!("column deadline_signalled: {e}"))?,
            updated_at: ts(r, "updated_at")?,
        }),
        Kind::Catalog => Row::Catalog(CatalogEntry {
            item_id: item_id(r, "item_id")?,
            name: text(r, "name")?,
            unit_price: int(r, "unit_price")?,
        }),
        Kind::Account => Row::Account(Account {
            user_id: user_id(r, "user_id")?,
            balance: int(r, "balance")?,
            opening_balance: int(r, "opening_balance")?,
        }),
        Kind::BalanceHold => Row::BalanceHold(BalanceHold {
            order_id: order_id(r, "order_id")?,
            user_id: user_id(r, "user_id")?,
            amount: int(r, "amount")?,
            state: parsed(r, "state", ReservationState::from_wire)?,
            updated_at: ts(r, "updated_at")?,
        }),
        Kind::InventoryAccount => Row::InventoryAccount(InventoryAccount {
            user_id: user_id(r, "user_id")?,
            capacity: int(r, "capacity")?,
            used_slots: int(r, "used_slots")?,
            reserved_slots: int(r, "reserved_slots")?,
        }),
        Kind::SlotReservation => Row::SlotReservation(SlotReservation {
            order_id: order_id(r, "order_id")?,
            user_id: user_id(r, "user_id")?,
            item_id: item_id(r, "item_id")?,
            slots: int(r, "slots")?,
            state: parsed(r, "state", ReservationState::from_wire)?,
            updated_at: ts(r, "updated_at")?,
        }),
        Kind::ItemStock => Row::ItemStock(ItemStock {
            item_id: item_id(r, "item_id")?,
            stock: int(r, "stock")?,
            opening_stock: int(r, "opening_stock")?,
        }),
        Kind::StockReservation => Row::StockReservation(StockReservation {
            order_id: order_id(r, "order_id")?,
            item_id: item_id(r, "item_id")?,
            quantity: int(r, "quantity")?,
            state: parsed(r, "state", ReservationState::from_wire)?,
            updated_at: ts(r, "updated_at")?,
        }),
        Kind::Payment => Row::Payment(Payment {
            order_id: order_id(r, "order_id")?,
            user_id: user_id(r, "user_id")?,
            amount: int(r, "amount")?,
            method: text(r, "method")?,
            state: parsed(r, "state", PaymentState::from_wire)?,
            reason: opt_text(r, "reason")?,
            updated_at: ts(r, "updated_at")?,
        }),
        Kind::NotificationLog => Row::NotificationLog(NotificationLog {
            order_id: order_id(r, "order_id")?,
            user_id: user_id(r, "user_id")?,
            kind: parsed(r, "kind", NotificationKind::from_wire)?,
            message: text(r, "message")?,
            sent_count: int(r, "sent_count")?,
            last_sent_at: ts(r, "last_sent_at")?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_binds_key_columns_last_in_key_order() {
        let row = Row::NotificationLog(NotificationLog {
            order_id: OrderId::parse("o1").unwrap(),
            user_id: UserId::parse("u1").unwrap(),
            kind: NotificationKind::PaymentFailed,
            message: "m".into(),
            sent_count: 1,
            last_sent_at: Timestamp::SIM_EPOCH,
        });
        let (sql, values) = write_sql(&row, WriteMode::Update);
        assert_eq!(
            sql,
            "UPDATE notification_svc.notification_logs SET user_id = $1, message = $2, sent_count = $3, \
             last_sent_at = $4 WHERE order_id = $5 AND kind = $6"
        );
        assert!(matches!(&values[4], Value::Text(s) if s == "o1"));
        assert!(matches!(&values[5], Value::Text(s) if s == "PAYMENT_FAILED"));
        let (upsert, _) = write_sql(&row, WriteMode::Upsert);
        assert!(upsert.ends_with(
            "ON CONFLICT (order_id, kind) DO UPDATE SET user_id = EXCLUDED.user_id, message = EXCLUDED.message, \
             sent_count = EXCLUDED.sent_count, last_sent_at = EXCLUDED.last_sent_at"
        ));
    }
}
