//! A database per service (issue 25): [`PgRoutes`] holds one [`PgStore`]
//! per distinct database and routes every call by the service it names:
//! a service's transactions, its outbox and inbox to its own database, the
//! Order-only calls (the sweeper's deadlines, overdue sagas) to Order's, the
//! tokens to the API's. A process holds routes only for the services it
//! serves (plus what its HTTP API reads): a call for another service fails
//! (Fatal, naming it) instead of reaching a database it was never given.
//! With one `DATABASE_URL` every part shares one store and one pool, and
//! the store behaves exactly as one `PgStore` (the snapshot is its one
//! REPEATABLE READ transaction).
//!
//! Reads that span services fan out: one statement (or transaction) per
//! service, on its own database. The snapshot cannot be one moment across
//! databases; [`PgRoutes::snapshot`] reads the databases in
//! [`AUDIT_ORDER`], each in one REPEATABLE READ transaction, which keeps
//! every safety invariant sound (ARCHITECTURE.md "Auditing a database per
//! service").

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::domain::invariants::Snapshot;
use crate::domain::rows::{Order, OrderStatus};
use crate::domain::{DurationMs, Event, EventId, OrderId, Row, Service, Timestamp};
use crate::runtime::store::{
    Claimed, Mark, OutboxEntry, Pruned, RedrivePolicy, Retention, Store, StoreResult,
};
use crate::runtime::{StoreError, StoreTx};

use super::connect::ConnectError;
use super::migrations::{self, Part};
use super::reads::{sort_timeline, Activity, TimelineEntry};
use super::PgStore;

/// The order in which a snapshot across databases reads the services (see
/// ARCHITECTURE.md "Auditing a database per service"): a service's rows
/// that a cross-service safety check requires of another service are read
/// before that other service. Inventory's GRANTED slots and Order's
/// COMPLETED orders require Payment's PROCESSED row, which is written once
/// and never changes and committed before the event that leads to them:
/// Payment is read last. Order's amounts never change after creation, and
/// a reservation exists only after its order: what the amount checks see
/// is sound in any order; reading Order before the reservations only leaves
/// the newest orders for the next audit.
pub const AUDIT_ORDER: [Service; 6] = [
    Service::Inventory,
    Service::Order,
    Service::User,
    Service::Item,
    Service::Notification,
    Service::Payment,
];

/// A part's schema found in a database the part is not routed to: a
/// leftover of a move (README, "One database or one per service"), never
/// read by this process (every call goes to the part's own database), and
/// stale rows a process still pointed there would read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignSchema {
    pub part: Part,
    /// The database holding the leftover (`host:port/db`).
    pub found_in: String,
    /// The part's database now.
    pub routed_to: String,
}

impl ForeignSchema {
    /// What to run, on [`found_in`](Self::found_in), once its rows are safe.
    pub fn drop_statement(&self) -> String {
        format!("DROP SCHEMA {} CASCADE", self.part.schema())
    }
}

/// One database and the parts it holds.
#[derive(Debug, Clone)]
struct Database {
    store: PgStore,
    parts: Vec<Part>,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct PgRoutes {
    databases: Vec<Database>,
}

impl From<PgStore> for PgRoutes {
    /// Every part on one store: the one-database layout.
    fn from(store: PgStore) -> PgRoutes {
        PgRoutes::new(vec![(store, Part::ALL.to_vec())])
    }
}

impl PgRoutes {
    /// Routes over `databases`: each store (one pool, one database) with
    /// the parts it holds. A part held twice is a bug of the caller.
    pub fn new(databases: Vec<(PgStore, Vec<Part>)>) -> PgRoutes {
        let mut seen = Vec::new();
        for (_, parts) in &databases {
            for part in parts {
                assert!(!seen.contains(part), "{part} is routed to two databases");
                seen.push(*part);
            }
        }
        PgRoutes {
            databases: databases
                .into_iter()
                .filter(|(_, parts)| !parts.is_empty())
                .map(|(store, mut parts)| {
                    parts.sort();
                    Database { store, parts }
                })
                .collect(),
        }
    }

    /// These routes for `services` only (the same pools): what a process
    /// reads of the services it serves.
    pub fn only(&self, services: &[Service]) -> PgRoutes {
        PgRoutes::new(
            self.databases
                .iter()
                .map(|d| {
                    let parts = d
                        .parts
                        .iter()
                        .copied()
                        .filter(|p| matches!(p, Part::Service(s) if services.contains(s)))
                        .collect();
                    (d.store.clone(), parts)
                })
                .collect(),
        )
    }

    /// The services routed, in [`Service::ALL`] order.
    pub fn services(&self) -> Vec<Service> {
        Service::ALL.into_iter().filter(|s| self.serves(*s)).collect()
    }

    /// Whether `service` has a database here.
    pub fn serves(&self, service: Service) -> bool {
        self.holding(Part::Service(service)).is_some()
    }

    fn holding(&self, part: Part) -> Option<&PgStore> {
        self.databases
            .iter()
            .find(|d| d.parts.contains(&part))
            .map(|d| &d.store)
    }

    /// The store of `service`'s database.
    pub fn of(&self, service: Service) -> StoreResult<&PgStore> {
        self.holding(Part::Service(service)).ok_or_else(|| {
            StoreError::Fatal(format!(
                "this process has no database for the {} service (it serves {})",
                service.slug(),
                self.describe_parts()
            ))
        })
    }

    /// The store of the API's database (tokens).
    pub fn api(&self) -> StoreResult<&PgStore> {
        self.holding(Part::Api).ok_or_else(|| {
            StoreError::Fatal(format!(
                "this process has no database for the API's tokens (it has {})",
                self.describe_parts()
            ))
        })
    }

    /// Each database with the parts it holds.
    pub fn databases(&self) -> impl Iterator<Item = (&PgStore, &[Part])> {
        self.databases.iter().map(|d| (&d.store, d.parts.as_slice()))
    }

    fn describe_parts(&self) -> String {
        let parts: Vec<String> = self
            .databases
            .iter()
            .flat_map(|d| d.parts.iter().map(|p| p.to_string()))
            .collect();
        parts.join(", ")
    }

    /// Where the data lives: `host:port/db` (one database) or each
    /// database with its parts.
    pub fn describe(&self) -> String {
        match self.databases.as_slice() {
            [only] if only.parts.len() == Part::ALL.len() => only.store.target().to_string(),
            many => many
                .iter()
                .map(|d| {
                    let parts: Vec<String> = d.parts.iter().map(|p| p.to_string()).collect();
                    format!("{} ({})", d.store.target(), parts.join(","))
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The schemas of parts routed elsewhere that a database of these routes
    /// holds (see [`ForeignSchema`]); only parts these routes know of (a
    /// part they do not route has no database to name).
    pub async fn foreign_schemas(&self) -> Result<Vec<ForeignSchema>, String> {
        let mut found = Vec::new();
        for d in &self.databases {
            let names: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace")
                .fetch_all(d.store.pool())
                .await
                .map_err(|e| format!("cannot list the schemas of {}: {e}", d.store.target()))?;
            for other in self
                .databases
                .iter()
                .filter(|o| o.store.target() != d.store.target())
            {
                for part in other.parts.iter().filter(|p| !d.parts.contains(p)) {
                    if names.iter().any(|n| n == part.schema()) {
                        found.push(ForeignSchema {
                            part: *part,
                            found_in: d.store.target().to_string(),
                            routed_to: other.store.target().to_string(),
                        });
                    }
                }
            }
        }
        Ok(found)
    }

    /// Migrates each database with the parts it holds.
    pub async fn migrate(&self) -> Result<(), ConnectError> {
        for d in &self.databases {
            migrations::migrate_parts(d.store.pool(), &d.parts).await?;
        }
        Ok(())
    }

    /// Ok if every database has every migration of this build for the
    /// parts it holds; else "run `purchase-saga migrate`".
    pub async fn check_schema(&self) -> Result<(), String> {
        for d in &self.databases {
            migrations::check(d.store.pool(), &d.parts).await?;
        }
        Ok(())
    }

    /// How often each statement ran, summed over the databases' stores
    /// (statement coverage, `/metrics`).
    pub fn statement_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut total = BTreeMap::new();
        for d in &self.databases {
            for (name, n) in d.store.statement_counts() {
                *total.entry(name).or_insert(0) += n;
            }
        }
        total
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for d in &self.databases {
            d.store.pool().close().await;
        }
    }

    /// Writes `rows` (insert or overwrite): one transaction per service,
    /// each in its own database (see [`PgStore::seed_rows`]).
    pub async fn seed_rows(&self, rows: &[Row]) -> StoreResult<()> {
        let mut by_service: BTreeMap<Service, Vec<Row>> = BTreeMap::new();
        for row in rows {
            by_service.entry(row.key().owner()).or_default().push(row.clone());
        }
        for (service, rows) in by_service {
            self.of(service)?.seed_rows(&rows).await?;
        }
        Ok(())
    }

    /// `service`'s [`Activity`], from its database.
    pub async fn activity(&self, service: Service) -> StoreResult<Activity> {
        self.of(service)?.activity(service).await
    }

    /// `service`'s unpublished outbox rows, from its database.
    pub async fn outbox_backlog(&self, service: Service) -> StoreResult<i64> {
        self.of(service)?.outbox_backlog(service).await
    }

    /// Every event still in the outboxes of the routed services, and how
    /// many rows did not decode (see [`PgStore::outbox_events`]).
    pub async fn outbox_events(&self) -> StoreResult<(Vec<Event>, usize)> {
        let mut events = Vec::new();
        let mut undecodable = 0;
        for service in self.services() {
            let (found, bad) = self.of(service)?.outbox_events_of(service).await?;
            events.extend(found);
            undecodable += bad;
        }
        Ok((events, undecodable))
    }

    /// Every event of `order` in the routed services' outboxes, in commit
    /// order (see [`PgStore::timeline`]).
    pub async fn timeline(&self, order: &OrderId) -> StoreResult<Vec<TimelineEntry>> {
        let mut entries = Vec::new();
        for service in self.services() {
            entries.extend(self.of(service)?.timeline_of(service, order).await?);
        }
        sort_timeline(&mut entries);
        Ok(entries)
    }

    /// Orders by status, from Order's database.
    pub async fn orders_by_status(&self) -> StoreResult<Vec<(OrderStatus, i64)>> {
        self.of(Service::Order)?.orders_by_status().await
    }

    /// The oldest PENDING order, from Order's database.
    pub async fn oldest_pending_order(&self) -> StoreResult<Option<Order>> {
        self.of(Service::Order)?.oldest_pending_order().await
    }

    /// Every routed service's rows. One database: its one REPEATABLE READ
    /// transaction, one moment across all services. Several: each database
    /// read in one REPEATABLE READ transaction, the databases in
    /// [`AUDIT_ORDER`] of the last service each holds, so that each
    /// service's own rows are one moment and every cross-service safety
    /// check is sound (module docs).
    pub async fn snapshot_in_audit_order(&self) -> StoreResult<Snapshot> {
        let position = |s: &Service| AUDIT_ORDER.iter().position(|x| x == s).unwrap_or(0);
        let mut reads: Vec<(usize, &PgStore, Vec<Service>)> = self
            .databases
            .iter()
            .filter_map(|d| {
                let services: Vec<Service> = d
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Service(s) => Some(*s),
                        Part::Api => None,
                    })
                    .collect();
                let last = services.iter().map(position).max()?;
                Some((last, &d.store, services))
            })
            .collect();
        reads.sort_by_key(|(last, _, _)| *last);
        let mut snapshot = Snapshot::default();
        for (_, store, services) in reads {
            merge(&mut snapshot, store.snapshot_of(&services).await?);
        }
        Ok(snapshot)
    }
}

/// Adds `part`'s rows to `into` (the services of two databases hold
/// disjoint tables).
fn merge(into: &mut Snapshot, part: Snapshot) {
    let Snapshot {
        orders,
        catalog,
        accounts,
        balance_holds,
        inventory_accounts,
        slot_reservations,
        item_stocks,
        stock_reservations,
        payments,
        notifications,
    } = part;
    into.orders.extend(orders);
    into.catalog.extend(catalog);
    into.accounts.extend(accounts);
    into.balance_holds.extend(balance_holds);
    into.inventory_accounts.extend(inventory_accounts);
    into.slot_reservations.extend(slot_reservations);
    into.item_stocks.extend(item_stocks);
    into.stock_reservations.extend(stock_reservations);
    into.payments.extend(payments);
    into.notifications.extend(notifications);
}

#[async_trait]
impl Store for PgRoutes {
    async fn begin(&self, service: Service) -> StoreResult<Box<dyn StoreTx>> {
        self.of(service)?.begin(service).await
    }

    async fn claim_due(
        &self,
        service: Service,
        now: Timestamp,
        lease: DurationMs,
        limit: usize,
    ) -> StoreResult<Claimed> {
        self.of(service)?.claim_due(service, now, lease, limit).await
    }

    async fn outbox_due(
        &self,
        service: Service,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        self.of(service)?.outbox_due(service, now, limit).await
    }

    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()> {
        self.of(service)?.mark_published(service, marks, now).await
    }

    async fn release(&self, service: Service, seqs: &[i64]) -> StoreResult<()> {
        self.of(service)?.release(service, seqs).await
    }

    async fn processed(&self, service: Service, event_id: EventId) -> StoreResult<bool> {
        self.of(service)?.processed(service, event_id).await
    }

    async fn writable(&self, service: Service) -> StoreResult<()> {
        self.of(service)?.writable(service).await
    }

    /// Order's table: Order's database.
    async fn orders_past_deadline(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<OrderId>> {
        self.of(Service::Order)?.orders_past_deadline(now, limit).await
    }

    /// Order's table: Order's database.
    async fn overdue_sagas(&self, before: Timestamp) -> StoreResult<u64> {
        self.of(Service::Order)?.overdue_sagas(before).await
    }

    async fn prune(
        &self,
        service: Service,
        now: Timestamp,
        retention: Retention,
        policy: RedrivePolicy,
    ) -> StoreResult<Pruned> {
        self.of(service)?.prune(service, now, retention, policy).await
    }

    /// See [`PgRoutes::snapshot_in_audit_order`].
    async fn snapshot(&self) -> StoreResult<Snapshot> {
        self.snapshot_in_audit_order().await
    }
}
