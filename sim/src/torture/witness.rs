//! What torture sees between its fault layer (`boundary.rs`) and the
//! production adapters: [`CheckedStore`] wraps a replica's `PgStore` and
//! [`CheckedBus`] its `RedisBus`, below the faults, so they see exactly
//! what reached the servers. They inject nothing; they check:
//!
//! - **Safety on every commit.** Every transaction's written rows and
//!   enqueued events are kept; its commit runs under the seed's one commit
//!   lock ([`Witness`]), and once PostgreSQL said it committed, the rows
//!   are applied to the committed state the witness keeps (seeded from a
//!   snapshot of the opening rows) and `check_safety`/`check_transition`
//!   run on it (`world::check_committed_rows`, the simulator's own). A
//!   commit whose outcome is unknown (the connection broke) makes the
//!   witness read the database again under the lock, in one REPEATABLE
//!   READ snapshot that no commit can slip between (every commit waits
//!   for the lock), and check the step to it. In the split layout it reads
//!   the database of the transaction's service only (the one a commit of
//!   unknown outcome can have changed), so a database that went down does
//!   not stop the checks of the others' commits longer than that read. At the end the kept state
//!   must equal the database's ([`check::CHECKED_STATE`]): a write that
//!   bypassed the witness would otherwise go unchecked.
//! - **The compensation ledger** (`CompensationLedger`, the domain's) over
//!   the committed outbox rows in commit order: exactly once, only after
//!   its step, each refund the order's total.
//! - **Ack only after commit**, checked where the ack reaches Redis: the
//!   delivery's event (remembered from `receive`) must be in the service's
//!   inbox, read through a store of the witness's own. Only acks are
//!   checked: an undecodable or unsubscribed entry is dead-lettered (the
//!   script acks it), never acked, and a duplicate's event is in the inbox.
//!
//! The commit runs in a task of its own, so a replica crashed (aborted)
//! while committing does not leave the witness unsure whether PostgreSQL
//! committed: the commit completes or fails as if the crash came just
//! after it. Crashes before the commit (the `BeforeCommit` point, any
//! moment of the transaction) stay as they were.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use purchase_saga::adapters::postgres::{schema, Part, PgRoutes};
use purchase_saga::domain::invariants::{CompensationLedger, Snapshot};
use purchase_saga::domain::{DurationMs, Event, EventId, OrderId, Row, RowKey, Service, Timestamp};
use purchase_saga::runtime::bus::{Bus, BusError, Delivery, PartialPublish};
use purchase_saga::runtime::store::{Claimed, OutboxEntry, Pruned, StoreResult};
use purchase_saga::runtime::{Mark, RedrivePolicy, Retention, Store, StoreError, StoreTx};
use sqlx::Row as _;

use crate::faults::FaultKind;
use crate::finding::{check, Finding};
use crate::world::check_committed_rows;

use super::checks::SETUP;
use super::state::Shared;

/// How long the witness keeps trying to read the database (an ack's
/// inbox row, a resync snapshot) through torture's own faults before it
/// says it could not ([`SETUP`]): never a silent skip.
const READ_TRIES_MAX: u32 = 50;
const READ_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The committed state as the witness saw the commits land.
struct Committed {
    state: Snapshot,
    ledger: CompensationLedger,
    /// Every outbox row committed through the witness, by emitter.
    outbox: BTreeSet<(Service, EventId)>,
    /// Commits seen, and resyncs after a commit of unknown outcome.
    commits: u64,
    resyncs: u64,
}

/// See the module docs. One per seed, shared by every replica's
/// [`CheckedStore`] and [`CheckedBus`].
pub struct Witness {
    shared: Arc<Shared>,
    /// The witness's own reads (inbox lookups, resyncs), on pools that
    /// torture's boundary faults never touch: routes over every database
    /// of the seed.
    store: PgRoutes,
    /// Held across every commit and the check after it.
    committed: tokio::sync::Mutex<Committed>,
    /// The event of each entry a consumer received, by (service, entry id),
    /// for the ack check.
    delivered: Mutex<BTreeMap<(Service, String), EventId>>,
    acks_checked: std::sync::atomic::AtomicU64,
    /// Commits seen per service, in [`Service::ALL`] order (read without
    /// the commit lock: `db-down`'s effect).
    commits_by_service: [std::sync::atomic::AtomicU64; 6],
    /// Writes outside saga transactions that a replica's database took
    /// (relay claims, marks and releases, pruning), per service likewise.
    writes_by_service: [std::sync::atomic::AtomicU64; 6],
}

impl Witness {
    /// A witness starting from the database's state now (the opening rows).
    pub async fn new(shared: Arc<Shared>, store: PgRoutes) -> Result<Witness, String> {
        let state = store
            .snapshot()
            .await
            .map_err(|e| format!("the witness's first snapshot: {e}"))?;
        Ok(Witness {
            shared,
            store,
            committed: tokio::sync::Mutex::new(Committed {
                state,
                ledger: CompensationLedger::default(),
                outbox: BTreeSet::new(),
                commits: 0,
                resyncs: 0,
            }),
            delivered: Mutex::default(),
            acks_checked: std::sync::atomic::AtomicU64::new(0),
            commits_by_service: Default::default(),
            writes_by_service: Default::default(),
        })
    }

    /// What `services`' databases committed so far: the saga
    /// transactions seen committing, and the other writes the replicas'
    /// stores made (relay claims, marks, releases, pruning).
    pub fn commits_of(&self, services: &[Service]) -> (u64, u64) {
        let sum = |counts: &[std::sync::atomic::AtomicU64; 6]| -> u64 {
            services
                .iter()
                .map(|s| counts[service_index(*s)].load(std::sync::atomic::Ordering::SeqCst))
                .sum()
        };
        (sum(&self.commits_by_service), sum(&self.writes_by_service))
    }

    /// The services whose rows live in the database of `service` (every
    /// service in the single layout).
    fn database_of(&self, service: Service) -> Vec<Service> {
        self.store
            .databases()
            .find(|(_, parts)| parts.contains(&Part::Service(service)))
            .map(|(_, parts)| {
                parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Service(s) => Some(*s),
                        Part::Api => None,
                    })
                    .collect()
            })
            .unwrap_or_else(|| Service::ALL.to_vec())
    }

    fn found_all(&self, found: Vec<purchase_saga::domain::invariants::Violation>) {
        for v in found {
            self.shared.found(Finding::from(v));
        }
    }

    /// A transaction's commit, under the lock, and the checks once it is
    /// known to have committed.
    async fn commit(self: Arc<Self>, tx: CheckedTx) -> StoreResult<()> {
        let CheckedTx {
            inner,
            service,
            written,
            enqueued,
            ..
        } = tx;
        let mut committed = self.committed.lock().await;
        let outcome = inner.commit().await;
        match &outcome {
            Ok(()) => {
                committed.commits += 1;
                self.commits_by_service[service_index(service)]
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let found = check_committed_rows(&mut committed.state, written);
                self.found_all(found);
                for event in &enqueued {
                    committed.outbox.insert((event.emitter(), event.event_id));
                    let found = committed.ledger.record(event);
                    self.found_all(found);
                }
            }
            // A conflict is a commit PostgreSQL refused: nothing landed.
            Err(StoreError::Conflict(_)) => {}
            Err(e) => {
                self.shared.log(format!(
                    "witness: commit outcome unknown ({e}); reading the database"
                ));
                self.resync(&mut committed, service).await;
            }
        }
        outcome
    }

    /// Brings the kept state of the services in `service`'s database to
    /// the database's, under the commit lock (so no commit slips in),
    /// checking the step to it.
    async fn resync(&self, committed: &mut Committed, service: Service) {
        committed.resyncs += 1;
        let services = self.database_of(service);
        let mut tries = 0;
        let (now, events) = loop {
            match self.read_all(&services).await {
                Ok(read) => break read,
                Err(e) if tries < READ_TRIES_MAX => {
                    tries += 1;
                    tracing::debug!(error = %e, "witness resync, again");
                    tokio::time::sleep(READ_RETRY_PAUSE).await;
                }
                Err(e) => {
                    return self.shared.found(Finding::new(
                        SETUP,
                        "witness",
                        format!("could not read the database: {e}"),
                    ))
                }
            }
        };
        let rows = rows_of(&now);
        let found = check_committed_rows(&mut committed.state, rows);
        self.found_all(found);
        for event in events {
            if committed.outbox.insert((event.emitter(), event.event_id)) {
                let found = committed.ledger.record(&event);
                self.found_all(found);
            }
        }
    }

    /// One snapshot of `services`' rows (all in one database), and every
    /// outbox row's event of theirs (rows that do not decode, torture's
    /// injected ones, left out).
    async fn read_all(&self, services: &[Service]) -> Result<(Snapshot, Vec<Event>), String> {
        let store = self.store.of(services[0]).map_err(|e| e.to_string())?;
        let snapshot = store.snapshot_of(services).await.map_err(|e| e.to_string())?;
        let mut events = Vec::new();
        for service in services.iter().copied() {
            let payloads: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT payload FROM {}.outbox ORDER BY seq",
                schema(service)
            ))
            .fetch_all(store.pool())
            .await
            .map_err(|e| e.to_string())?;
            events.extend(payloads.iter().filter_map(|p| Event::decode(p.as_bytes()).ok()));
        }
        Ok((snapshot, events))
    }

    /// The witness's own store (reads only).
    pub fn store(&self) -> &PgRoutes {
        &self.store
    }

    /// At the end (replicas stopped): the database's last state, read
    /// under the commit lock (a commit still in its task lands before or
    /// after, not during); the kept state must be it, every outbox row
    /// must have been seen committing, and the ledger's quiescence rule
    /// holds over it.
    pub async fn final_snapshot(
        &self,
        injected: &BTreeMap<Service, BTreeSet<i64>>,
    ) -> Result<Snapshot, String> {
        let committed = self.committed.lock().await;
        let acks = self.acks_checked.load(std::sync::atomic::Ordering::SeqCst);
        self.shared.set_checked("commits", committed.commits);
        self.shared.set_checked("resyncs", committed.resyncs);
        self.shared.set_checked("acks", acks);
        let mut tries = 0;
        let last = loop {
            match self.store.snapshot().await {
                Ok(last) => break last,
                Err(e) if tries < READ_TRIES_MAX => {
                    tries += 1;
                    tracing::debug!(error = %e, "final snapshot, again");
                    tokio::time::sleep(READ_RETRY_PAUSE).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let last = &last;
        self.shared.log(format!(
            "witness: {} commits checked ({} resyncs), {} acks checked",
            committed.commits,
            committed.resyncs,
            self.acks_checked.load(std::sync::atomic::Ordering::SeqCst)
        ));
        if committed.state != *last {
            self.shared.found(Finding::new(
                check::CHECKED_STATE,
                "witness",
                format!(
                    "the state the per-commit checks kept differs from the database's: {}",
                    first_difference(&committed.state, last)
                ),
            ));
        }
        match self.outbox_rows(injected).await {
            Ok(rows) => {
                for (service, event_id) in rows {
                    if !committed.outbox.contains(&(service, event_id)) {
                        self.shared.found(Finding::new(
                            check::CHECKED_STATE,
                            format!("{service} outbox"),
                            format!("event {event_id} is in the outbox but no checked commit wrote it"),
                        ));
                    }
                }
            }
            Err(e) => self
                .shared
                .found(Finding::new(SETUP, "witness", format!("final outbox read: {e}"))),
        }
        self.found_all(committed.ledger.check_quiescent(last));
        Ok(last.clone())
    }

    /// Every outbox row's (emitter, event id), injected rows left out.
    async fn outbox_rows(
        &self,
        injected: &BTreeMap<Service, BTreeSet<i64>>,
    ) -> Result<Vec<(Service, EventId)>, String> {
        let mut all = Vec::new();
        for service in Service::ALL {
            let pool = self.store.of(service).map_err(|e| e.to_string())?.pool();
            let rows = sqlx::query(&format!("SELECT seq, event_id FROM {}.outbox", schema(service)))
                .fetch_all(pool)
                .await
                .map_err(|e| e.to_string())?;
            for r in rows {
                let seq: i64 = r.try_get("seq").map_err(|e| e.to_string())?;
                if injected.get(&service).is_some_and(|s| s.contains(&seq)) {
                    continue;
                }
                let id: sqlx::types::Uuid = r.try_get("event_id").map_err(|e| e.to_string())?;
                all.push((service, EventId(id)));
            }
        }
        Ok(all)
    }

    fn delivered(&self, service: Service, entry_id: &str, event_id: EventId) {
        self.delivered
            .lock()
            .expect("witness deliveries mutex")
            .insert((service, entry_id.to_string()), event_id);
    }

    /// The ack check (see the module docs), before the ack is forwarded.
    async fn check_ack(&self, service: Service, entry_id: &str) {
        let event_id = self
            .delivered
            .lock()
            .expect("witness deliveries mutex")
            .get(&(service, entry_id.to_string()))
            .copied();
        let Some(event_id) = event_id else {
            return self.shared.found(Finding::new(
                check::ACK_AFTER_COMMIT,
                format!("{service} entry {entry_id}"),
                "acknowledged an entry no consumer received as an event",
            ));
        };
        let mut tries = 0;
        let in_inbox = loop {
            match self.store.processed(service, event_id).await {
                Ok(found) => break found,
                Err(e) if tries < READ_TRIES_MAX => {
                    tries += 1;
                    tracing::debug!(error = %e, "witness inbox read, again");
                    tokio::time::sleep(READ_RETRY_PAUSE).await;
                }
                Err(e) => {
                    return self.shared.found(Finding::new(
                        SETUP,
                        format!("{service} entry {entry_id}"),
                        format!("the ack could not be checked: {e}"),
                    ))
                }
            }
        };
        self.acks_checked
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !in_inbox {
            self.shared.found(Finding::new(
                check::ACK_AFTER_COMMIT,
                format!("{service} entry {entry_id}"),
                format!("acknowledged event {event_id} before {service} committed it (not in its inbox)"),
            ));
        }
    }
}

fn service_index(service: Service) -> usize {
    Service::ALL
        .iter()
        .position(|s| *s == service)
        .expect("a service of Service::ALL")
}

/// Every row of `s`, for a resync.
fn rows_of(s: &Snapshot) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    rows.extend(s.orders.values().cloned().map(Row::Order));
    rows.extend(s.catalog.values().cloned().map(Row::Catalog));
    rows.extend(s.accounts.values().cloned().map(Row::Account));
    rows.extend(s.balance_holds.values().cloned().map(Row::BalanceHold));
    rows.extend(s.inventory_accounts.values().cloned().map(Row::InventoryAccount));
    rows.extend(s.slot_reservations.values().cloned().map(Row::SlotReservation));
    rows.extend(s.item_stocks.values().cloned().map(Row::ItemStock));
    rows.extend(s.stock_reservations.values().cloned().map(Row::StockReservation));
    rows.extend(s.payments.values().cloned().map(Row::Payment));
    rows.extend(s.notifications.values().cloned().map(Row::NotificationLog));
    rows
}

/// The first row that differs between two states, for the finding.
fn first_difference(kept: &Snapshot, db: &Snapshot) -> String {
    let (a, b) = (rows_of(kept), rows_of(db));
    for row in &a {
        if !b.contains(row) {
            return format!("kept {row:?}, not in the database");
        }
    }
    for row in &b {
        if !a.contains(row) {
            return format!("the database has {row:?}, not kept");
        }
    }
    "same rows, different keys".into()
}

/// A replica's (or the client's) store, below the faults.
pub struct CheckedStore {
    pub inner: Arc<dyn Store>,
    pub witness: Arc<Witness>,
}

impl CheckedStore {
    /// Counts `pool-exhausted` by its effect: PostgreSQL's pool answered
    /// that no connection came within the acquire timeout (the plan's
    /// `pool_size` caps the pool, `replicas.rs`).
    fn seen<T>(&self, result: StoreResult<T>) -> StoreResult<T> {
        if let Err(StoreError::Unavailable(why)) = &result {
            if why.contains(POOL_TIMED_OUT) {
                self.witness.shared.count(FaultKind::PoolExhausted);
            }
        }
        result
    }

    /// [`CheckedStore::seen`], and a write of `service`'s database counted
    /// when it succeeded.
    fn wrote<T>(&self, service: Service, result: StoreResult<T>) -> StoreResult<T> {
        if result.is_ok() {
            self.witness.writes_by_service[service_index(service)]
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.seen(result)
    }
}

/// How `PgStore` says its pool timed out (`adapters::postgres::errors`).
const POOL_TIMED_OUT: &str = "no connection available from the pool";

#[async_trait]
impl Store for CheckedStore {
    async fn begin(&self, service: Service) -> StoreResult<Box<dyn StoreTx>> {
        let inner = self.seen(self.inner.begin(service).await)?;
        Ok(Box::new(CheckedTx {
            inner,
            service,
            witness: self.witness.clone(),
            written: Vec::new(),
            enqueued: Vec::new(),
        }))
    }

    async fn claim_due(
        &self,
        service: Service,
        now: Timestamp,
        lease: DurationMs,
        limit: usize,
    ) -> StoreResult<Claimed> {
        self.wrote(service, self.inner.claim_due(service, now, lease, limit).await)
    }

    async fn outbox_due(
        &self,
        service: Service,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        self.wrote(service, self.inner.outbox_due(service, now, limit).await)
    }

    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()> {
        self.wrote(service, self.inner.mark_published(service, marks, now).await)
    }

    async fn release(&self, service: Service, seqs: &[i64]) -> StoreResult<()> {
        self.wrote(service, self.inner.release(service, seqs).await)
    }

    async fn processed(&self, service: Service, event_id: EventId) -> StoreResult<bool> {
        self.seen(self.inner.processed(service, event_id).await)
    }

    async fn writable(&self, service: Service) -> StoreResult<()> {
        self.seen(self.inner.writable(service).await)
    }

    async fn orders_past_deadline(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<OrderId>> {
        self.seen(self.inner.orders_past_deadline(now, limit).await)
    }

    async fn overdue_sagas(&self, before: Timestamp) -> StoreResult<u64> {
        self.seen(self.inner.overdue_sagas(before).await)
    }

    async fn prune(
        &self,
        service: Service,
        now: Timestamp,
        retention: Retention,
        policy: RedrivePolicy,
    ) -> StoreResult<Pruned> {
        self.wrote(service, self.inner.prune(service, now, retention, policy).await)
    }

    async fn snapshot(&self) -> StoreResult<Snapshot> {
        self.inner.snapshot().await
    }
}

/// A transaction whose writes the witness checks when it commits.
struct CheckedTx {
    inner: Box<dyn StoreTx>,
    service: Service,
    witness: Arc<Witness>,
    written: Vec<Row>,
    enqueued: Vec<Event>,
}

#[async_trait]
impl StoreTx for CheckedTx {
    async fn record_processed(&mut self, event_id: EventId, now: Timestamp) -> StoreResult<bool> {
        self.inner.record_processed(event_id, now).await
    }

    async fn load_for_update(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        self.inner.load_for_update(key).await
    }

    async fn load(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        self.inner.load(key).await
    }

    async fn save(&mut self, row: &Row) -> StoreResult<()> {
        self.inner.save(row).await?;
        self.written.push(row.clone());
        Ok(())
    }

    async fn enqueue(
        &mut self,
        event: &Event,
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<i64> {
        let seq = self.inner.enqueue(event, now, claimed_until).await?;
        self.enqueued.push(event.clone());
        Ok(seq)
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let witness = self.witness.clone();
        // A task of its own: see the module docs.
        tokio::spawn(witness.commit(*self))
            .await
            .unwrap_or_else(|e| Err(StoreError::Fatal(format!("the commit task failed: {e}"))))
    }

    async fn record_processed_many(
        &mut self,
        event_ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<Vec<bool>> {
        self.inner.record_processed_many(event_ids, now).await
    }

    async fn load_for_update_many(&mut self, keys: &[RowKey]) -> StoreResult<Vec<Option<Row>>> {
        self.inner.load_for_update_many(keys).await
    }

    async fn save_many(&mut self, rows: &[Row]) -> StoreResult<()> {
        self.inner.save_many(rows).await?;
        self.written.extend(rows.iter().cloned());
        Ok(())
    }

    async fn enqueue_many(
        &mut self,
        events: &[Event],
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<Vec<i64>> {
        let seqs = self.inner.enqueue_many(events, now, claimed_until).await?;
        self.enqueued.extend(events.iter().cloned());
        Ok(seqs)
    }
}

/// A replica's bus, below the faults: remembers each delivery's event and
/// checks each ack (see the module docs).
pub struct CheckedBus {
    pub inner: Arc<dyn Bus>,
    pub witness: Arc<Witness>,
}

#[async_trait]
impl Bus for CheckedBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        self.inner.publish(event).await
    }

    async fn publish_batch(&self, events: &[&Event]) -> Result<(), PartialPublish> {
        self.inner.publish_batch(events).await
    }

    async fn receive(&self, service: Service, consumer: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        let batch = self.inner.receive(service, consumer, max).await?;
        for d in &batch {
            if let Ok(event) = Event::decode(&d.payload) {
                self.witness.delivered(service, &d.entry_id, event.event_id);
            }
        }
        Ok(batch)
    }

    async fn ack(&self, service: Service, entry_id: &str) -> Result<(), BusError> {
        self.witness.check_ack(service, entry_id).await;
        self.inner.ack(service, entry_id).await
    }

    async fn dead_letter(&self, service: Service, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        self.inner.dead_letter(service, delivery, reason).await
    }
}
