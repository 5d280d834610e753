//! The PostgreSQL store: [`Store`] and [`StoreTx`](crate::runtime::StoreTx)
//! on a `sqlx::PgPool`, one schema per service (see `migrations/`).
//!
//! Files: `connect.rs` (pool, session timeouts, URL redaction),
//! `migrations.rs` (one migrator per service schema and the API's, the
//! upgrade of a one-database install, the schema check of every command),
//! `routing.rs` (`PgRoutes`: a store per service, each call routed to the
//! database of the service it names, and the reads that fan out), `tx.rs` (one transaction), `rows.rs` (Row <-> SQL),
//! `errors.rs` (sqlx errors -> conflict / unavailable / fatal), `outbox.rs`
//! (the relay's claim, quarantine, mark and release), `reads.rs` (seeding
//! and the read side of the HTTP API and the CLI). This file holds the
//! other store-wide queries: the sweeper's, the consumer's, pruning and
//! snapshots.
//!
//! Semantics are the in-memory store's (`runtime::memory::store`); the
//! conformance suite in `tests/store_conformance.rs` runs the same tests
//! against both.

/// `$query.$method(connection)` on a connection of `$store`'s pool, its
/// error classified by [`errors::classify_on`] on that very connection (so
/// a stale cached plan, 0A000, is dropped where it is cached): how every
/// autocommit statement of the store runs. Evaluates to a
/// `StoreResult` of what `$method` returns.
macro_rules! pooled {
    ($store:expr, $method:ident, $query:expr) => {{
        let store: &$crate::adapters::postgres::PgStore = $store;
        match store.pool.acquire().await {
            Err(e) => Err(store.err(e)),
            Ok(mut connection) => match $query.$method(&mut *connection).await {
                Ok(found) => Ok(found),
                Err(e) => {
                    Err(
                        $crate::adapters::postgres::errors::classify_on(&mut *connection, e, &store.target)
                            .await,
                    )
                }
            },
        }
    }};
}

mod batch;
mod connect;
mod errors;
mod migrations;
mod outbox;
mod reads;
mod routing;
mod rows;
mod statement;
mod tx;

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::PgPool;

use crate::domain::invariants::Snapshot;
use crate::domain::{DurationMs, EventId, OrderId, Service, Timestamp};
use crate::runtime::store::{
    outbox_due_by_claim, Claimed, Mark, OutboxEntry, Pruned, RedrivePolicy, Retention, Store, StoreResult,
    StoreTx,
};
use crate::runtime::StoreError;

pub use connect::{
    connect, create_database, drop_database_blocking, redact_url, with_database, ConnectError, PgConfig,
};
pub use errors::classify;
pub use migrations::{check as check_schema, migrate, migrate_parts, Part, LEGACY};
pub use outbox::{claim_sql, SetAsideRow};
pub use reads::{Activity, TimelineEntry};
pub use routing::{ForeignSchema, PgRoutes};
pub use statement::PgStatement;

use crate::adapters::coverage::StatementCounts;

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
    /// How often each statement ran, shared by clones (statement coverage).
    counts: StatementCounts<PgStatement>,
    /// The newest event `schemaVersion` this build reads: outbox rows
    /// above it are left for a build that reads them (see `outbox.rs`).
    schema_version_max: u32,
}

impl PgStore {
    /// A store on an open pool (see [`connect`]); the schema must be
    /// migrated (see [`migrate`]).
    pub fn new(pool: PgPool) -> PgStore {
        let target = connect::target_of(&pool.connect_options());
        PgStore {
            pool,
            target,
            counts: StatementCounts::new(),
            schema_version_max: crate::domain::event::SCHEMA_VERSION,
        }
    }

    /// How often each statement of the store port has run through this
    /// store and its clones, by [`PgStatement`] name (zeros included).
    pub fn statement_counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts.snapshot()
    }

    /// The counters themselves (shared with this store), for a harness
    /// that outlives the store (torture keeps a crashed replica's counts
    /// without keeping its connections).
    pub fn statement_counter(&self) -> StatementCounts<PgStatement> {
        self.counts.clone()
    }

    fn ran(&self, statement: PgStatement) {
        self.counts.ran(statement);
    }

    /// This store as a build that reads event `schemaVersion`s up to
    /// `newest` only: how tests play an older build beside this one in a
    /// rolling upgrade (a real build reads up to its `SCHEMA_VERSION`).
    pub fn reading_schema_versions_up_to(mut self, newest: u32) -> PgStore {
        assert!(
            newest <= crate::domain::event::SCHEMA_VERSION,
            "a build cannot read versions newer than its own"
        );
        self.schema_version_max = newest;
        self
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

/// `now - d` as a timestamp bound (saturating).
fn before(now: Timestamp, d: DurationMs) -> chrono::DateTime<chrono::Utc> {
    Timestamp(now.0.saturating_sub(d.0)).to_datetime()
}

#[async_trait]
impl Store for PgStore {
    async fn begin(&self, service: Service) -> StoreResult<Box<dyn StoreTx>> {
        self.ran(PgStatement::Begin);
        let tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        Ok(Box::new(tx::PgTx {
            tx,
            service,
            target: self.target.clone(),
            seen: BTreeMap::new(),
            counts: self.counts.clone(),
        }))
    }

    /// See [`outbox::claim_sql`].
    async fn claim_due(
        &self,
        service: Service,
        now: Timestamp,
        lease: DurationMs,
        limit: usize,
    ) -> StoreResult<Claimed> {
        outbox::claim(self, service, now, lease, limit).await
    }

    /// A claim with a zero lease (the claim statement; see [`outbox::claim_sql`]).
    async fn outbox_due(
        &self,
        service: Service,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        outbox_due_by_claim(self, service, now, limit).await
    }

    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()> {
        outbox::mark(self, service, marks, now).await
    }

    async fn release(&self, service: Service, seqs: &[i64]) -> StoreResult<()> {
        outbox::release(self, service, seqs).await
    }

    async fn processed(&self, service: Service, event_id: EventId) -> StoreResult<bool> {
        self.ran(PgStatement::InboxProcessed);
        pooled!(
            self,
            fetch_one,
            sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {}.inbox WHERE event_id = $1)",
                schema(service)
            ))
            .bind(event_id.0)
        )
    }

    /// Tries what a step does: one short transaction that inserts a row
    /// into the service's inbox, then rolls back. It fails as a step would
    /// on a read-only database or a hot standby (25006), a full disk or
    /// tablespace (53100: the insert cannot extend the table or its index),
    /// out of connections (53300) or memory (53200), all unavailable; a
    /// read of `transaction_read_only` said "writable" to a full disk, and
    /// the consumer spent its deliveries against it. The row never commits,
    /// so nothing is left behind but a dead tuple for vacuum.
    async fn writable(&self, service: Service) -> StoreResult<()> {
        self.ran(PgStatement::Writable);
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO {}.inbox (event_id, processed_at) VALUES (gen_random_uuid(), now())",
            schema(service)
        ))
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(errors::classify_on(&mut tx, e, &self.target).await);
        }
        tx.rollback().await.map_err(|e| self.err(e))
    }

    async fn overdue_sagas(&self, before: Timestamp) -> StoreResult<u64> {
        self.ran(PgStatement::OverdueSagas);
        let n: i64 = pooled!(
            self,
            fetch_one,
            sqlx::query_scalar(
                "SELECT count(*) FROM order_svc.orders WHERE status = 'PENDING' AND deadline_at <= $1",
            )
            .bind(before.to_datetime())
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn orders_past_deadline(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<OrderId>> {
        self.ran(PgStatement::OrdersPastDeadline);
        let ids: Vec<String> = pooled!(
            self,
            fetch_all,
            sqlx::query_scalar(
                "SELECT order_id FROM order_svc.orders
             WHERE status = 'PENDING' AND NOT deadline_signalled AND deadline_at <= $1
             ORDER BY deadline_at, order_id
             LIMIT $2",
            )
            .bind(now.to_datetime())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        )?;
        // An id that does not parse is that row's problem: the others are
        // still signalled (the sweep of the row itself fails and is logged).
        Ok(ids
            .into_iter()
            .filter_map(|id| match OrderId::parse(&id) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(order_id = id, error = %e, "order_svc.orders holds an unparseable order id");
                    None
                }
            })
            .collect())
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
        let (outbox_age, inbox_age) = (policy.horizon.max(retention.outbox), retention.inbox);
        // Planted bug (mutant PruneInsideHorizon): half the ages, so entries
        // still inside the re-drive horizon and ids inside their retention go.
        let (outbox_age, inbox_age) = if crate::mutant!(PruneInsideHorizon) {
            (DurationMs(outbox_age.0 / 2), DurationMs(inbox_age.0 / 2))
        } else {
            (outbox_age, inbox_age)
        };
        self.ran(PgStatement::PruneOutbox);
        let outbox = pooled!(
            self,
            execute,
            sqlx::query(&format!(
                "DELETE FROM {s}.outbox WHERE ctid IN (
                SELECT ctid FROM {s}.outbox WHERE published_count > 0 AND created_at <= $1 LIMIT $2)"
            ))
            .bind(before(now, outbox_age))
            .bind(batch)
        )?
        .rows_affected();
        self.ran(PgStatement::PruneInbox);
        let inbox = pooled!(self, execute, sqlx::query(&format!(
            "DELETE FROM {s}.inbox WHERE ctid IN (SELECT ctid FROM {s}.inbox WHERE processed_at <= $1 LIMIT $2)"
        ))
        .bind(before(now, inbox_age))
        .bind(batch))?
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
        self.snapshot_of(&Service::ALL).await
    }
}

impl PgStore {
    /// The tables of `services` read in one REPEATABLE READ transaction:
    /// one consistent moment across them (the others' tables are not read:
    /// with a database per service they are not here).
    pub async fn snapshot_of(&self, services: &[Service]) -> StoreResult<Snapshot> {
        self.ran(PgStatement::Snapshot);
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let isolated = sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await;
        if let Err(e) = isolated {
            return Err(errors::classify_on(&mut tx, e, &self.target).await);
        }
        let mut snapshot = Snapshot::default();
        for kind in rows::Kind::ALL
            .into_iter()
            .filter(|k| services.contains(&k.owner()))
        {
            let found = match sqlx::query(&kind.select_all_sql()).fetch_all(&mut *tx).await {
                Ok(found) => found,
                Err(e) => return Err(errors::classify_on(&mut tx, e, &self.target).await),
            };
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
