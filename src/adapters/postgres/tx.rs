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

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use sqlx::{Postgres, Transaction};

use crate::domain::{Event, EventId, Row, RowKey, Service, Timestamp};
use crate::runtime::store::{StoreResult, StoreTx};
use crate::runtime::StoreError;

use super::batch;
use super::errors::{self, classify};
use super::rows::{self, Kind, WriteMode};
use super::schema;
use super::statement::PgStatement;
use crate::adapters::coverage::StatementCounts;

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
    /// The store's statement counters.
    pub(super) counts: StatementCounts<PgStatement>,
}

impl PgTx {
    /// [`errors::classify_on`] on this transaction's connection: after a
    /// stale cached plan (0A000) the connection's statement cache is
    /// dropped, so the retry prepares its statements again.
    async fn err_uncached(&mut self, e: sqlx::Error) -> StoreError {
        errors::classify_on(&mut self.tx, e, &self.target).await
    }

    /// `result` of a statement on this transaction, its error through
    /// [`err_uncached`](Self::err_uncached).
    async fn checked<T>(&mut self, result: Result<T, sqlx::Error>) -> StoreResult<T> {
        match result {
            Ok(found) => Ok(found),
            Err(e) => Err(self.err_uncached(e).await),
        }
    }

    async fn read(&mut self, key: &RowKey, lock: bool) -> StoreResult<Option<Row>> {
        let kind = Kind::of_key(key);
        // Planted bug (mutant PgNoRowLock): the row is read without its lock.
        let sql = kind.select_sql(lock && !crate::mutant!(PgNoRowLock));
        self.counts.ran(if lock {
            PgStatement::SelectForUpdate
        } else {
            PgStatement::Select
        });
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
        self.note_seen(key, row.is_some());
        Ok(row)
    }

    /// Remembers whether `key` was read present (a key seen present stays
    /// present: rows are never deleted).
    fn note_seen(&mut self, key: &RowKey, present: bool) {
        let seen = if present { Seen::Present } else { Seen::Absent };
        self.seen
            .entry(key.clone())
            .and_modify(|s| {
                if seen == Seen::Present {
                    *s = Seen::Present
                }
            })
            .or_insert(seen);
    }

    /// How `save` writes `key`: by what this transaction read of it.
    fn write_mode(&self, key: &RowKey) -> WriteMode {
        match self.seen.get(key) {
            Some(Seen::Present) => WriteMode::Update,
            Some(Seen::Absent) => WriteMode::Insert,
            None => WriteMode::Upsert,
        }
    }
}

#[async_trait]
impl StoreTx for PgTx {
    async fn record_processed(&mut self, event_id: EventId, now: Timestamp) -> StoreResult<bool> {
        let sql = format!(
            "INSERT INTO {}.inbox (event_id, processed_at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
            schema(self.service)
        );
        self.counts.ran(PgStatement::InboxInsert);
        let found = sqlx::query(&sql)
            .bind(event_id.0)
            .bind(now.to_datetime())
            .execute(&mut *self.tx)
            .await;
        let done = self.checked(found).await?;
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
        let mode = self.write_mode(&key);
        let (sql, values) = rows::write_sql(row, mode);
        self.counts.ran(match mode {
            WriteMode::Insert => PgStatement::RowInsert,
            WriteMode::Update => PgStatement::RowUpdate,
            WriteMode::Upsert => PgStatement::RowUpsert,
        });
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

    async fn enqueue(
        &mut self,
        event: &Event,
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<i64> {
        assert_eq!(
            event.emitter(),
            self.service,
            "a service enqueues only its own events"
        );
        let sql = format!(
            "INSERT INTO {}.outbox (event_id, event_type, order_id, payload, created_at, claimed_until) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
            schema(self.service)
        );
        self.counts.ran(PgStatement::OutboxInsert);
        let found = sqlx::query_scalar::<_, i64>(&sql)
            .bind(event.event_id.0)
            .bind(event.event_type().as_str())
            .bind(event.order_id.as_str())
            .bind(event.encode())
            .bind(now.to_datetime())
            .bind(claimed_until.map(Timestamp::to_datetime))
            .fetch_one(&mut *self.tx)
            .await;
        self.checked(found).await
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let target = self.target.clone();
        self.counts.ran(PgStatement::Commit);
        self.tx.commit().await.map_err(|e| classify(e, &target))
    }

    /// One INSERT of every id, in the ascending order given (inbox rows are
    /// inserted, so locked, in one global order).
    async fn record_processed_many(
        &mut self,
        event_ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<Vec<bool>> {
        crate::runtime::store::assert_inbox_order(event_ids);
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "INSERT INTO {}.inbox (event_id, processed_at) \
             SELECT id, $2 FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n) ORDER BY n \
             ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            schema(self.service)
        );
        let ids: Vec<uuid::Uuid> = event_ids.iter().map(|id| id.0).collect();
        self.counts.ran(PgStatement::InboxInsertMany);
        let found = sqlx::query(&sql)
            .bind(&ids)
            .bind(now.to_datetime())
            .fetch_all(&mut *self.tx)
            .await;
        let inserted = self.checked(found).await?;
        let new = inserted
            .iter()
            .map(|r| sqlx::Row::try_get::<uuid::Uuid, _>(r, "event_id"))
            .collect::<Result<BTreeSet<uuid::Uuid>, _>>()
            .map_err(|e| StoreError::Fatal(format!("inbox event_id: {e}")))?;
        assert!(new.len() <= ids.len(), "one inbox row per event id");
        Ok(ids.iter().map(|id| new.contains(id)).collect())
    }

    /// One `SELECT ... FOR UPDATE` per table, the tables in key order.
    async fn load_for_update_many(&mut self, keys: &[RowKey]) -> StoreResult<Vec<Option<Row>>> {
        crate::runtime::store::assert_lock_order(keys);
        let mut out = Vec::with_capacity(keys.len());
        for group in keys.chunk_by(|a, b| Kind::of_key(a) == Kind::of_key(b)) {
            let kind = Kind::of_key(&group[0]);
            assert!(
                group.iter().all(|k| k.owner() == self.service),
                "a service reads only its own rows"
            );
            // Planted bugs (mutants PgNoRowLock, PgBatchNoRowLock): the rows
            // are read unlocked. (An array, not `||`: without the mutants
            // feature both are the constant `false`, which clippy refuses
            // as `false || false`.)
            let unlocked = [crate::mutant!(PgNoRowLock), crate::mutant!(PgBatchNoRowLock)]
                .into_iter()
                .any(|on| on);
            let sql = batch::select_many_sql(kind, !unlocked);
            self.counts.ran(PgStatement::SelectForUpdateMany);
            let mut query = sqlx::query(&sql);
            for column in 0..kind.primary_key().len() {
                let values: Vec<String> = group
                    .iter()
                    .map(|k| rows::key_values(k).swap_remove(column))
                    .collect();
                query = query.bind(values);
            }
            let found = match query.fetch_all(&mut *self.tx).await {
                Ok(found) => found,
                Err(e) => return Err(self.err_uncached(e).await),
            };
            let mut by_key = BTreeMap::new();
            for r in &found {
                let row =
                    rows::decode(kind, r).map_err(|e| StoreError::Fatal(format!("{}: {e}", kind.table())))?;
                by_key.insert(row.key(), row);
            }
            assert!(by_key.len() <= group.len(), "no row outside the keys asked");
            for key in group {
                let row = by_key.remove(key);
                self.note_seen(key, row.is_some());
                out.push(row);
            }
            assert!(by_key.is_empty(), "every row found was asked for");
        }
        Ok(out)
    }

    /// One statement per table and write mode.
    async fn save_many(&mut self, rows_: &[Row]) -> StoreResult<()> {
        let mut groups: BTreeMap<(usize, u8), Vec<&Row>> = BTreeMap::new();
        let mut keys = BTreeSet::new();
        for row in rows_ {
            let key = row.key();
            assert_eq!(key.owner(), self.service, "a service writes only its own rows");
            assert!(keys.insert(key.clone()), "a batch writes each row once: {key:?}");
            let kind = Kind::ALL
                .iter()
                .position(|k| *k == Kind::of_key(&key))
                .expect("every kind is in ALL");
            let mode = match self.write_mode(&key) {
                WriteMode::Insert => 0,
                WriteMode::Update => 1,
                WriteMode::Upsert => 2,
            };
            groups.entry((kind, mode)).or_default().push(row);
        }
        for ((kind, mode), group) in groups {
            let kind = Kind::ALL[kind];
            let columns = batch::columns_of(kind, &group);
            let (sql, statement) = match mode {
                0 => (
                    batch::insert_many_sql(kind, &columns, false),
                    PgStatement::RowInsertMany,
                ),
                1 => (batch::update_many_sql(kind, &columns), PgStatement::RowUpdateMany),
                _ => (
                    batch::insert_many_sql(kind, &columns, true),
                    PgStatement::RowUpsertMany,
                ),
            };
            self.counts.ran(statement);
            let done = match batch::bind_columns(sqlx::query(&sql), columns)
                .execute(&mut *self.tx)
                .await
            {
                Ok(done) => done,
                Err(e) => return Err(self.err_uncached(e).await),
            };
            if done.rows_affected() != group.len() as u64 {
                return Err(StoreError::Fatal(format!(
                    "batched write of {} {} rows wrote {}",
                    group.len(),
                    kind.table(),
                    done.rows_affected()
                )));
            }
            for row in group {
                self.seen.insert(row.key(), Seen::Present);
            }
        }
        Ok(())
    }

    /// One INSERT of every event, numbered in the order given.
    async fn enqueue_many(
        &mut self,
        events: &[Event],
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<Vec<i64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        assert!(
            events.iter().all(|e| e.emitter() == self.service),
            "a service enqueues only its own events"
        );
        let sql = format!(
            "INSERT INTO {}.outbox (event_id, event_type, order_id, payload, created_at, claimed_until) \
             SELECT e, t, o, p, $5, $6 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) \
             WITH ORDINALITY AS u(e, t, o, p, n) ORDER BY n RETURNING seq",
            schema(self.service)
        );
        self.counts.ran(PgStatement::OutboxInsertMany);
        let found = sqlx::query_scalar::<_, i64>(&sql)
            .bind(events.iter().map(|e| e.event_id.0).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.event_type().as_str()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.order_id.as_str()).collect::<Vec<_>>())
            .bind(events.iter().map(Event::encode).collect::<Vec<_>>())
            .bind(now.to_datetime())
            .bind(claimed_until.map(Timestamp::to_datetime))
            .fetch_all(&mut *self.tx)
            .await;
        let mut seqs: Vec<i64> = self.checked(found).await?;
        if seqs.len() != events.len() {
            return Err(StoreError::Fatal(format!(
                "outbox insert of {} events returned {} seqs",
                events.len(),
                seqs.len()
            )));
        }
        // The rows take their seqs in the insert's order (`ORDER BY n`), so
        // ascending seqs are the events' order.
        seqs.sort_unstable();
        Ok(seqs)
    }
}
