//! Seeding and reads outside the saga's transactions: the opening rows of
//! `seed-demo` and the tests, and the read side of the HTTP API and the CLI
//! (an order, a player, an item, an order's timeline, backlog metrics).
//! Reads see committed state only and lock nothing.

use sqlx::Row as _;

use crate::domain::rows::{
    Account, CatalogEntry, InventoryAccount, ItemStock, Order, OrderStatus, SlotReservation,
};
use crate::domain::{EventId, EventType, ItemId, OrderId, Row, RowKey, Service, Timestamp, UserId};
use crate::runtime::store::StoreResult;
use crate::runtime::StoreError;

use super::rows::{self, Kind, WriteMode};
use super::{schema, PgStore};

/// The columns of `order_svc.orders` that [`rows::decode`] reads.
const ORDER_COLUMNS: &str = "order_id, user_id, item_id, item_name, quantity, total_amount, payment_method, \
     status, failed_step, failure_reason, created_at, deadline_at, deadline_signalled, updated_at";

/// What a service's own tables say about work in flight and progress
/// (`audit` compares two readings to tell a quiet system from a busy one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activity {
    /// Outbox entries never published (the relay's backlog).
    pub unpublished: i64,
    /// The highest outbox sequence: grows with every emitted event.
    pub outbox_seq_max: i64,
    /// Inbox rows: grows with every applied event (a step that emits
    /// nothing included); shrinks only when the pruner runs.
    pub inbox_rows: i64,
}

/// One event of an order, from the emitting service's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub service: Service,
    /// Position in the service's outbox.
    pub seq: i64,
    pub event_id: EventId,
    pub event_type: EventType,
    /// When the emitting transaction committed it.
    pub created_at: Timestamp,
    pub published_count: u32,
    pub last_published_at: Option<Timestamp>,
    /// The encoded event, as published.
    pub payload: String,
}

impl PgStore {
    /// Writes `rows` (insert or overwrite) in one transaction: reference
    /// data and opening balances. Each row goes to its owner's schema.
    ///
    /// Overwriting an account or a stock that orders have already used
    /// breaks conservation (its opening value no longer matches its holds):
    /// seed before the first order, or seed only new keys.
    pub async fn seed_rows(&self, seed: &[Row]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        for row in seed {
            let (sql, values) = rows::write_sql(row, WriteMode::Upsert);
            rows::bind_values(sqlx::query(&sql), values)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// The committed row under `key`, if any.
    pub async fn row(&self, key: &RowKey) -> StoreResult<Option<Row>> {
        let kind = Kind::of_key(key);
        let sql = kind.select_sql(false);
        let found = pooled!(self, fetch_optional, rows::bind_key(sqlx::query(&sql), key))?;
        found
            .map(|r| {
                rows::decode(kind, &r)
                    .map_err(|e| StoreError::Fatal(format!("{} {key:?}: {e}", kind.table())))
            })
            .transpose()
    }

    pub async fn order(&self, id: &OrderId) -> StoreResult<Option<Order>> {
        Ok(match self.row(&RowKey::Order(id.clone())).await? {
            Some(Row::Order(o)) => Some(o),
            _ => None,
        })
    }

    pub async fn account(&self, user: &UserId) -> StoreResult<Option<Account>> {
        Ok(match self.row(&RowKey::Account(user.clone())).await? {
            Some(Row::Account(a)) => Some(a),
            _ => None,
        })
    }

    pub async fn inventory_account(&self, user: &UserId) -> StoreResult<Option<InventoryAccount>> {
        Ok(match self.row(&RowKey::InventoryAccount(user.clone())).await? {
            Some(Row::InventoryAccount(a)) => Some(a),
            _ => None,
        })
    }

    /// The items granted to `user` (one slot reservation per COMPLETED
    /// order), oldest first, at most `limit`.
    pub async fn granted_items(&self, user: &UserId, limit: usize) -> StoreResult<Vec<SlotReservation>> {
        let found = pooled!(
            self,
            fetch_all,
            sqlx::query(&format!(
                "{} WHERE user_id = $1 AND state = 'GRANTED' ORDER BY updated_at, order_id LIMIT $2",
                Kind::SlotReservation.select_from()
            ))
            .bind(user.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        )?;
        found
            .iter()
            .map(|r| match rows::decode(Kind::SlotReservation, r) {
                Ok(Row::SlotReservation(s)) => Ok(s),
                Ok(other) => unreachable!("slot_reservations decoded as {other:?}"),
                Err(e) => Err(StoreError::Fatal(format!("slot_reservations: {e}"))),
            })
            .collect()
    }

    /// Order's catalog entry (name, unit price) of `item`.
    pub async fn catalog_entry(&self, item: &ItemId) -> StoreResult<Option<CatalogEntry>> {
        Ok(match self.row(&RowKey::Catalog(item.clone())).await? {
            Some(Row::Catalog(c)) => Some(c),
            _ => None,
        })
    }

    /// Item's stock of `item`.
    pub async fn item_stock(&self, item: &ItemId) -> StoreResult<Option<ItemStock>> {
        Ok(match self.row(&RowKey::ItemStock(item.clone())).await? {
            Some(Row::ItemStock(s)) => Some(s),
            _ => None,
        })
    }

    /// Every event emitted for `order` by any service, in commit order
    /// (outbox creation time, then service, then sequence). Entries pruned
    /// after the retention are gone.
    pub async fn timeline(&self, order: &OrderId) -> StoreResult<Vec<TimelineEntry>> {
        let mut entries = Vec::new();
        for service in Service::ALL {
            entries.extend(self.timeline_of(service, order).await?);
        }
        sort_timeline(&mut entries);
        Ok(entries)
    }

    /// The events `service` emitted for `order`, in its outbox order.
    pub async fn timeline_of(&self, service: Service, order: &OrderId) -> StoreResult<Vec<TimelineEntry>> {
        let found = pooled!(
            self,
            fetch_all,
            sqlx::query(&format!(
                "SELECT seq, event_id, event_type, payload, created_at, published_count, last_published_at
                 FROM {}.outbox WHERE order_id = $1 ORDER BY seq",
                schema(service)
            ))
            .bind(order.as_str())
        )?;
        let mut entries = Vec::with_capacity(found.len());
        for r in &found {
            let fatal = |e: sqlx::Error| StoreError::Fatal(format!("{} outbox: {e}", schema(service)));
            let event_type: String = r.try_get("event_type").map_err(fatal)?;
            let published_count: i32 = r.try_get("published_count").map_err(fatal)?;
            entries.push(TimelineEntry {
                service,
                seq: r.try_get("seq").map_err(fatal)?,
                event_id: EventId(r.try_get("event_id").map_err(fatal)?),
                event_type: EventType::from_wire(&event_type)
                    .ok_or_else(|| StoreError::Fatal(format!("unknown event type {event_type:?}")))?,
                created_at: Timestamp::from_datetime(r.try_get("created_at").map_err(fatal)?),
                published_count: u32::try_from(published_count).unwrap_or(0),
                last_published_at: r
                    .try_get::<Option<chrono::DateTime<chrono::Utc>>, _>("last_published_at")
                    .map_err(fatal)?
                    .map(Timestamp::from_datetime),
                payload: r.try_get("payload").map_err(fatal)?,
            });
        }
        Ok(entries)
    }

    /// Every event still in any service's outbox (rows are pruned past the
    /// re-drive horizon), for `audit`'s compensation checks, and how many
    /// rows did not decode (quarantined rows; not events).
    pub async fn outbox_events(&self) -> StoreResult<(Vec<crate::domain::Event>, usize)> {
        let mut events = Vec::new();
        let mut undecodable = 0;
        for service in Service::ALL {
            let (found, bad) = self.outbox_events_of(service).await?;
            events.extend(found);
            undecodable += bad;
        }
        Ok((events, undecodable))
    }

    /// [`outbox_events`](Self::outbox_events) of one service.
    pub async fn outbox_events_of(
        &self,
        service: Service,
    ) -> StoreResult<(Vec<crate::domain::Event>, usize)> {
        let payloads: Vec<String> = pooled!(
            self,
            fetch_all,
            sqlx::query_scalar(&format!(
                "SELECT payload FROM {}.outbox ORDER BY seq",
                schema(service)
            ))
        )?;
        let mut events = Vec::with_capacity(payloads.len());
        let mut undecodable = 0;
        for payload in payloads {
            match crate::domain::Event::decode(payload.as_bytes()) {
                Ok(event) => events.push(event),
                Err(_) => undecodable += 1,
            }
        }
        Ok((events, undecodable))
    }

    /// Outbox entries of `service` never published yet (the relay's backlog).
    pub async fn outbox_backlog(&self, service: Service) -> StoreResult<i64> {
        pooled!(
            self,
            fetch_one,
            sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {}.outbox WHERE last_published_at IS NULL",
                schema(service)
            ))
        )
    }

    /// Rows in `service`'s (outbox, inbox).
    pub async fn table_sizes(&self, service: Service) -> StoreResult<(i64, i64)> {
        let s = schema(service);
        let row = pooled!(
            self,
            fetch_one,
            sqlx::query(&format!(
            "SELECT (SELECT count(*) FROM {s}.outbox) AS outbox, (SELECT count(*) FROM {s}.inbox) AS inbox"
        ))
        )?;
        let get = |c: &str| {
            row.try_get::<i64, _>(c)
                .map_err(|e| StoreError::Fatal(e.to_string()))
        };
        Ok((get("outbox")?, get("inbox")?))
    }

    /// `service`'s [`Activity`], read in one statement.
    pub async fn activity(&self, service: Service) -> StoreResult<Activity> {
        let s = schema(service);
        let row = pooled!(
            self,
            fetch_one,
            sqlx::query(&format!(
                "SELECT (SELECT count(*) FROM {s}.outbox WHERE last_published_at IS NULL) AS unpublished, \
                    (SELECT coalesce(max(seq), 0) FROM {s}.outbox) AS seq_max, \
                    (SELECT count(*) FROM {s}.inbox) AS inbox"
            ))
        )?;
        let get = |c: &str| {
            row.try_get::<i64, _>(c)
                .map_err(|e| StoreError::Fatal(format!("{s} activity: {e}")))
        };
        Ok(Activity {
            unpublished: get("unpublished")?,
            outbox_seq_max: get("seq_max")?,
            inbox_rows: get("inbox")?,
        })
    }

    /// How many orders are in each status, in [`OrderStatus`] order,
    /// statuses without orders left out.
    pub async fn orders_by_status(&self) -> StoreResult<Vec<(OrderStatus, i64)>> {
        let found = pooled!(
            self,
            fetch_all,
            sqlx::query("SELECT status, count(*) AS n FROM order_svc.orders GROUP BY status")
        )?;
        let mut counts = Vec::new();
        for r in &found {
            let fatal = |e: sqlx::Error| StoreError::Fatal(format!("order_svc.orders: {e}"));
            let status: String = r.try_get("status").map_err(fatal)?;
            let status = OrderStatus::from_wire(&status)
                .ok_or_else(|| StoreError::Fatal(format!("unknown order status {status:?}")))?;
            counts.push((status, r.try_get::<i64, _>("n").map_err(fatal)?));
        }
        counts.sort();
        Ok(counts)
    }

    /// The PENDING order created first, if any.
    pub async fn oldest_pending_order(&self) -> StoreResult<Option<Order>> {
        let found = pooled!(
            self,
            fetch_optional,
            sqlx::query(&format!(
                "SELECT {ORDER_COLUMNS} FROM order_svc.orders WHERE status = 'PENDING' \
             ORDER BY created_at, order_id LIMIT 1"
            ))
        )?;
        found.map(|r| decode_order(&r)).transpose()
    }

    /// Up to `limit` orders of `user`, newest first (by creation time, then
    /// order id, descending), strictly after `after` in that order: the key
    /// of the last order of the previous page.
    pub async fn user_orders(
        &self,
        user: &UserId,
        after: Option<&(Timestamp, OrderId)>,
        limit: usize,
    ) -> StoreResult<Vec<Order>> {
        let (at, id) = match after {
            Some((at, id)) => (Some(at.to_datetime()), Some(id.as_str())),
            None => (None, None),
        };
        let found = pooled!(
            self,
            fetch_all,
            sqlx::query(&format!(
                "SELECT {ORDER_COLUMNS} FROM order_svc.orders WHERE user_id = $1 \
               AND ($2::timestamptz IS NULL OR (created_at, order_id) < ($2, $3::text)) \
             ORDER BY created_at DESC, order_id DESC LIMIT $4"
            ))
            .bind(user.as_str())
            .bind(at)
            .bind(id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        )?;
        found.iter().map(decode_order).collect()
    }

    /// When `service` processed each of `events` it has processed (its
    /// inbox), in no particular order; pruned inbox rows are gone.
    pub async fn processed_at(
        &self,
        service: Service,
        events: &[EventId],
    ) -> StoreResult<Vec<(EventId, Timestamp)>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.0).collect();
        let found = pooled!(
            self,
            fetch_all,
            sqlx::query(&format!(
                "SELECT event_id, processed_at FROM {}.inbox WHERE event_id = ANY($1)",
                schema(service)
            ))
            .bind(ids)
        )?;
        found
            .iter()
            .map(|r| {
                let fatal = |e: sqlx::Error| StoreError::Fatal(format!("{} inbox: {e}", schema(service)));
                Ok((
                    EventId(r.try_get("event_id").map_err(fatal)?),
                    Timestamp::from_datetime(r.try_get("processed_at").map_err(fatal)?),
                ))
            })
            .collect()
    }
}

/// Commit order across services: outbox creation time, then service, then
/// sequence.
pub fn sort_timeline(entries: &mut [TimelineEntry]) {
    entries.sort_by_key(|e| (e.created_at, e.service, e.seq));
}

fn decode_order(r: &sqlx::postgres::PgRow) -> StoreResult<Order> {
    match rows::decode(Kind::Order, r) {
        Ok(Row::Order(o)) => Ok(o),
        Ok(other) => unreachable!("orders decoded as {other:?}"),
        Err(e) => Err(StoreError::Fatal(format!("order_svc.orders: {e}"))),
    }
}
