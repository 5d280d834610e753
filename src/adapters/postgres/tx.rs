//! One store transaction on PostgreSQL: [`StoreTx`] over a
//! `sqlx::Transaction`.
//!
//! - `record_processed` inserts into the service's inbox with
//!   `ON CONFLICT DO NOTHING`: a second replica handling the same event waits
//!   on the primary key until the first commits, then inserts nothing.
//! - `load_for_update` is `SELECT ... FOR UPDATE`; an absent key locks
//!   nothing in Postgres, so the transaction remembers it and `save` INSERTs
//!   it: a concurrent insert of the same key then fails with a unique
//!   violation, a conflict the runtime retries. Rows that existed are
//!   UPDATEd by key.
//! - Dropping the transaction without `commit` rolls it back (sqlx issues
//!   the ROLLBACK when the connection returns to the pool).

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::{Postgres, Transaction};

use crate::domain::{Event, EventId, Row, RowKey, Service, Timestamp};
use crate::runtime::store::{StoreResult, StoreTx};
use crate::runtime::StoreError;

use super::errors::classify;
use super::rows::{self, Kind, WriteMode};
use super::schema;

/// What this transaction knows about a key it has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    Present,
    Absent,
}

pub(super) struct PgTx {
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) service: Service,
    /// Where the store is, for error messages.
    pub(super) target: String,
    /// Keys read in this transaction, and whether the row was there.
    pub(super) seen: BTreeMap<RowKey, Seen>,
}

impl PgTx {
    fn err(&self, e: sqlx::Error) -> StoreError {
        classify(e, &self.target)
    }

    /// As [`err`](Self::err); after SQLSTATE 0A000 ("cached plan must not
    /// change result type": a migration changed a column this connection's
    /// cached statements return) it also drops the connection's statement
    /// cache, so the retry prepares them again instead of failing the same
    /// way on this connection forever.
    async fn err_uncached(&mut self, e: sqlx::Error) -> StoreError {
        let stale_plan = matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("0A000"));
        if stale_plan {
            if let Err(close) = sqlx::Connection::clear_cached_statements(&mut *self.tx).await {
                tracing::warn!(error = %close, "could not clear the statement cache after SQLSTATE 0A000");
            }
        }
        self.err(e)
    }

    async fn read(&mut self, key: &RowKey, lock: bool) -> StoreResult<Option<Row>> {
        let kind = Kind::of_key(key);
        // Planted bug (mutant PgNoRowLock): the row is read without its lock.
        let sql = kind.select_sql(lock && !crate::mutant!(PgNoRowLock));
        let found = match rows::bind_key(sqlx::query(&sql), key)
            .fetch_optional(&mut *self.tx)
            .await
        {
            Ok(found) => found,
            Err(e) => return Err(self.err_uncached(e).await),
        };
        let row = match found {
            None => None,
            Some(r) => Some(
                rows::decode(kind, &r)
                    .map_err(|e| StoreError::Fatal(format!("{} {key:?}: {e}", kind.table())))?,
            ),
        };
        // A key seen present stays present: rows are never deleted.
        let seen = if row.is_some() {
            Seen::Present
        } else {
            Seen::Absent
        };
        self.seen
            .entry(key.clone())
            .and_modify(|s| {
                if seen == Seen::Present {
                    *s = Seen::Present
                }
            })
            .or_insert(seen);
        Ok(row)
    }
}

#[async_trait]
impl StoreTx for PgTx {
    async fn record_processed(&mut self, event_id: EventId, now: Timestamp) -> StoreResult<bool> {
        let sql = format!(
            "INSERT INTO {}.inbox (event_id, processed_at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
            schema(self.service)
        );
        let done = sqlx::query(&sql)
            .bind(event_id.0)
            .bind(now.to_datetime())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| self.err(e))?;
        debug_assert!(done.rows_affected() <= 1, "one inbox row per event id");
        Ok(done.rows_affected() == 1)
    }

    async fn load_for_update(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        assert_eq!(key.owner(), self.service, "a service reads only its own rows");
        self.read(key, true).await
    }

    async fn load(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        self.read(key, false).await
    }

    async fn save(&mut self, row: &Row) -> StoreResult<()> {
        let key = row.key();
        assert_eq!(key.owner(), self.service, "a service writes only its own rows");
        let mode = match self.seen.get(&key) {
            Some(Seen::Present) => WriteMode::Update,
            Some(Seen::Absent) => WriteMode::Insert,
            None => WriteMode::Upsert,
        };
        let (sql, values) = rows::write_sql(row, mode);
        let done = match rows::bind_values(sqlx::query(&sql), values)
            .execute(&mut *self.tx)
            .await
        {
            Ok(done) => done,
            Err(e) => return Err(self.err_uncached(e).await),
        };
        if done.rows_affected() != 1 {
            return Err(StoreError::Fatal(format!(
                "{mode:?} of {key:?} wrote {} rows, expected 1",
                done.rows_affected()
            )));
        }
        self.seen.insert(key, Seen::Present);
        Ok(())
    }

    async fn enqueue(&mut self, event: &Event, now: Timestamp) -> StoreResult<()> {
        assert_eq!(
            event.emitter(),
            self.service,
            "a service enqueues only its own events"
        );
        let sql = format!(
            "INSERT INTO {}.outbox (event_id, event_type, order_id, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
            schema(self.service)
        );
        sqlx::query(&sql)
            .bind(event.event_id.0)
            .bind(event.event_type().as_str())
            .bind(event.order_id.as_str())
            .bind(event.encode())
            .bind(now.to_datetime())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let target = self.target.clone();
        self.tx.commit().await.map_err(|e| classify(e, &target))
    }
}
