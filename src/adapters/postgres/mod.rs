//! The PostgreSQL store: [`Store`] and [`StoreTx`](crate::runtime::StoreTx)
//! on a `sqlx::PgPool`, one schema per service (see `migrations/`).
//!
//! Files: `connect.rs` (pool, session timeouts, migrations, URL
//! redaction), `tx.rs` (one transaction), `rows.rs` (Row <-> SQL),
//! `errors.rs` (sqlx errors -> conflict / unavailable / fatal), `reads.rs`
//! (seeding and the read side of the HTTP API and the CLI). This file holds
//! the store-wide queries: the relay's, the sweeper's, pruning and snapshots.
//!
//! Semantics are the in-memory store's (`runtime::memory::store`); the
//! conformance suite in `tests/store_conformance.rs` runs the same tests
//! against both.

mod connect;
mod errors;
mod reads;
mod rows;
mod tx;

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row as _};

use crate::domain::invariants::Snapshot;
use crate::domain::{DurationMs, Event, OrderId, Service, Timestamp};
use crate::runtime::store::{
    Mark, OutboxEntry, Pruned, RedrivePolicy, Retention, Store, StoreResult, StoreTx,
};
use crate::runtime::StoreError;

pub use connect::{connect, migrate, redact_url, with_database, ConnectError, PgConfig, MIGRATOR};
pub use errors::classify;
pub use reads::{Activity, TimelineEntry};

/// The schema that holds `service`'s tables. Suffixed so that none needs
/// quoting (`order` and `user` are reserved words).
pub fn schema(service: Service) -> &'static str {
    match service {
        Service::Order => "order_svc",
        Service::User => "user_svc",
        Service::Inventory => "inventory_svc",
        Service::Item => "item_svc",
        Service::Payment => "payment_svc",
        Service::Notification => "notification_svc",
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// `host:port/database`, named in every "unavailable" error.
    target: String,
}

impl PgStore {
    /// A store on an open pool (see [`connect`]); the schema must be
    /// migrated (see [`migrate`]).
    pub fn new(pool: PgPool) -> PgStore {
        let target = connect::target_of(&pool.connect_options());
        PgStore { pool, target }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `host:port/database` of the store.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn err(&self, e: sqlx::Error) -> StoreError {
        classify(e, &self.target)
    }
}

/// The outbox columns an [`OutboxEntry`] is read from.
const OUTBOX_COLUMNS: &str = "seq, payload, created_at, published_count, last_published_at, next_publish_at";

fn outbox_entry(service: Service, r: &PgRow) -> StoreResult<OutboxEntry> {
    let column = |e: sqlx::Error| StoreError::Fatal(format!("{} outbox: {e}", schema(service)));
    let seq: i64 = r.try_get("seq").map_err(column)?;
    let payload: String = r.try_get("payload").map_err(column)?;
    let event = Event::decode(payload.as_bytes()).map_err(|e| {
        StoreError::Fatal(format!(
            "{} outbox seq {seq} holds an undecodable event: {e}",
            schema(service)
        ))
    })?;
    let published_count: i32 = r.try_get("published_count").map_err(column)?;
    Ok(OutboxEntry {
        seq,
        event,
        created_at: Timestamp::from_datetime(r.try_get("created_at").map_err(column)?),
        published_count: u32::try_from(published_count).map_err(|_| {
            StoreError::Fatal(format!(
                "outbox seq {seq}: negative published_count {published_count}"
            ))
        })?,
        last_published_at: r
            .try_get::<Option<chrono::DateTime<chrono::Utc>>, _>("last_published_at")
            .map_err(column)?
            .map(Timestamp::from_datetime),
        next_publish_at: r
            .try_get::<Option<chrono::DateTime<chrono::Utc>>, _>("next_publish_at")
            .map_err(column)?
            .map(Timestamp::from_datetime),
    })
}

/// `now - d` as a timestamp bound (saturating).
fn before(now: Timestamp, d: DurationMs) -> chrono::DateTime<chrono::Utc> {
    Timestamp(now.0.saturating_sub(d.0)).to_datetime()
}

#[async_trait]
impl Store for PgStore {
    async fn begin(&self, service: Service) -> StoreResult<Box<dyn StoreTx>> {
        let tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        Ok(Box::new(tx::PgTx {
            tx,
            service,
            target: self.target.clone(),
            seen: BTreeMap::new(),
        }))
    }

    /// Two index-bound halves: never-published entries (partial index on
    /// `seq`), then entries whose next re-drive round has come (partial
    /// index on `next_publish_at`).
    async fn outbox_due(
        &self,
        service: Service,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let sql = format!(
            "SELECT * FROM (
                (SELECT {columns} FROM {schema}.outbox WHERE last_published_at IS NULL ORDER BY seq LIMIT $2)
                UNION ALL
                (SELECT {columns} FROM {schema}.outbox WHERE next_publish_at <= $1 ORDER BY seq LIMIT $2)
             ) AS due ORDER BY last_published_at IS NOT NULL, seq LIMIT $2",
            columns = OUTBOX_COLUMNS,
            schema = schema(service),
        );
        let rows = sqlx::query(&sql)
            .bind(now.to_datetime())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let entries = rows
            .iter()
            .map(|r| outbox_entry(service, r))
            .collect::<StoreResult<Vec<_>>>()?;
        debug_assert!(entries.len() <= limit, "LIMIT bounds the batch");
        debug_assert!(
            entries.windows(2).all(|w| {
                let key = |e: &OutboxEntry| (e.last_published_at.is_some(), e.seq);
                key(&w[0]) < key(&w[1])
            }),
            "never-published first, then re-drives, each oldest first"
        );
        Ok(entries)
    }

    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()> {
        if marks.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = marks.iter().map(|m| m.seq).collect();
        let next: Vec<Option<chrono::DateTime<chrono::Utc>>> = marks
            .iter()
            .map(|m| m.next_publish_at.map(Timestamp::to_datetime))
            .collect();
        // `set_config(.., true)` is SET LOCAL for this statement's own
        // transaction: its commit does not wait for the WAL flush. A mark
        // lost in a server crash only makes the relay publish the entry
        // again, which the consumers' inboxes absorb, so the relay does not
        // pay an fsync per pass the way a state change must.
        let sql = format!(
            "UPDATE {}.outbox AS o
             SET published_count = o.published_count + 1, last_published_at = $1, next_publish_at = m.next
             FROM unnest($2::bigint[], $3::timestamptz[]) AS m(seq, next),
                  (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
             WHERE o.seq = m.seq",
            schema(service)
        );
        sqlx::query(&sql)
            .bind(now.to_datetime())
            .bind(seqs)
            .bind(next)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn orders_past_deadline(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<OrderId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT order_id FROM order_svc.orders
             WHERE status = 'PENDING' AND NOT deadline_signalled AND deadline_at <= $1
             ORDER BY deadline_at, order_id
             LIMIT $2",
        )
        .bind(now.to_datetime())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        ids.into_iter()
            .map(|id| {
                OrderId::parse(&id)
                    .map_err(|e| StoreError::Fatal(format!("order id {id:?} in the store: {e}")))
            })
            .collect()
    }

    /// One bounded batch per table: `DELETE ... WHERE ctid IN (SELECT ...
    /// LIMIT batch)`, so no pass holds many row locks or runs long.
    async fn prune(
        &self,
        service: Service,
        now: Timestamp,
        retention: Retention,
        policy: RedrivePolicy,
    ) -> StoreResult<Pruned> {
        assert!(retention.batch > 0, "a prune batch deletes at least one row");
        let batch = i64::try_from(retention.batch).unwrap_or(i64::MAX);
        let s = schema(service);
        let outbox = sqlx::query(&format!(
            "DELETE FROM {s}.outbox WHERE ctid IN (
                SELECT ctid FROM {s}.outbox WHERE published_count > 0 AND created_at <= $1 LIMIT $2)"
        ))
        .bind(before(now, policy.horizon.max(retention.outbox)))
        .bind(batch)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?
        .rows_affected();
        let inbox = sqlx::query(&format!(
            "DELETE FROM {s}.inbox WHERE ctid IN (SELECT ctid FROM {s}.inbox WHERE processed_at <= $1 LIMIT $2)"
        ))
        .bind(before(now, retention.inbox))
        .bind(batch)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?
        .rows_affected();
        debug_assert!(
            inbox <= batch as u64 && outbox <= batch as u64,
            "each delete is bounded by the batch"
        );
        Ok(Pruned { inbox, outbox })
    }

    /// Every table read in one REPEATABLE READ transaction: one consistent
    /// moment across all services.
    async fn snapshot(&self) -> StoreResult<Snapshot> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let mut snapshot = Snapshot::default();
        for kind in rows::Kind::ALL {
            let found = sqlx::query(&kind.select_all_sql())
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            for r in &found {
                let row =
                    rows::decode(kind, r).map_err(|e| StoreError::Fatal(format!("{}: {e}", kind.table())))?;
                snapshot.insert(row);
            }
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(snapshot)
    }
}
