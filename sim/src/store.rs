//! `SimStore`: the in-memory store (Postgres's locking and visibility) under
//! a layer that makes every operation take simulated time, so transactions
//! of racing replicas interleave, and that injects the store's faults:
//! aborted transactions and the armed crash points (before a commit,
//! after a commit before its events are sent, between publish and
//! mark-published). It also checks the relay's rule
//! "mark only after publish" where a mark lands, against what the broker
//! received, and pulls the `lease-ended-mid-publish` steer's lever.
//!
//! The store lives outside the turmoil hosts: a crash drops the host's
//! tasks and with them every open transaction (rolled back by
//! `MemoryTx`'s drop), and nothing committed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use purchase_saga::domain::invariants::Snapshot;
use purchase_saga::domain::service::subscribers;
use purchase_saga::domain::{DurationMs, Event, EventId, OrderId, Row, RowKey, Service, Timestamp};
use purchase_saga::runtime::store::{
    one_at_a_time, outbox_due_by_claim, Claimed, OutboxEntry, Pruned, StoreResult,
};
use purchase_saga::runtime::{Mark, RedrivePolicy, Retention, Store, StoreError, StoreTx};

use crate::faults::{CrashPoint, FaultKind, Replica};
use crate::finding::{check, Finding};
use crate::world::{EntryKind, World};

/// Base latency of one store operation (a round trip to Postgres).
const BASE_LATENCY_MS_MAX: u64 = 3;

/// How long a transaction waits for a pool connection before `Unavailable`.
const POOL_ACQUIRE_TIMEOUT_MS: u64 = 60;
/// How often a waiting transaction looks for a free connection.
const POOL_POLL_MS: u64 = 5;

/// How far past the relay's lease the `lease-ended-mid-publish` steer
/// stalls its mark: enough to end the lease whatever the pass took before,
/// short so that a crash of the process in between seldom spoils it.
const MARK_STALL_PAST_LEASE_MS: u64 = 200;

/// See the module docs. One per host; `replica` is None for the client.
#[derive(Clone)]
pub struct SimStore {
    world: Arc<World>,
    replica: Option<Replica>,
}

impl SimStore {
    pub fn new(world: Arc<World>, replica: Option<Replica>) -> SimStore {
        SimStore { world, replica }
    }

    fn service(&self) -> Option<Service> {
        self.replica.map(|r| r.service)
    }

    async fn delay(&self) {
        let ms = 1 + self.world.up_to(BASE_LATENCY_MS_MAX - 1) + self.world.jitter_ms();
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// This host's name in the trace.
    fn who(&self) -> String {
        self.replica.map_or("client".to_string(), |r| r.to_string())
    }

    /// An `Unavailable` answer, as the Postgres adapter gives when the
    /// connection is refused or breaks: the runtime must back off and leave
    /// the work for later, never treat it as done or as bad data.
    fn maybe_unavailable(&self, op: &str) -> StoreResult<()> {
        if self.world.strikes(self.world.plan.unavailable_per_mille) {
            self.world.fault(
                FaultKind::Unavailable,
                self.service(),
                format!("{} store unreachable at {op}", self.who()),
            );
            return Err(StoreError::Unavailable(format!(
                "injected: store unreachable at {op}"
            )));
        }
        Ok(())
    }

    /// Waits for a free connection of this replica's pool (`pool_size`
    /// open transactions at most, until healing); past the acquire timeout
    /// the answer is `Unavailable`, as sqlx's `PoolTimedOut` maps to.
    async fn acquire(&self) -> StoreResult<()> {
        let (Some(replica), size) = (self.replica, self.world.plan.pool_size) else {
            return Ok(());
        };
        let mut waited = 0;
        while size > 0 && !self.world.healed() && self.world.open_tx(replica) >= size {
            if waited >= POOL_ACQUIRE_TIMEOUT_MS {
                self.world.fault(
                    FaultKind::PoolExhausted,
                    self.service(),
                    format!("{replica} waited {waited}ms for one of {size} connections"),
                );
                return Err(StoreError::Unavailable(format!(
                    "pool timed out: {size} connections busy"
                )));
            }
            tokio::time::sleep(Duration::from_millis(POOL_POLL_MS)).await;
            waited += POOL_POLL_MS;
        }
        Ok(())
    }

    fn maybe_abort(&self, op: &str) -> StoreResult<()> {
        if self.world.strikes(self.world.plan.abort_per_mille) {
            self.world.fault(
                FaultKind::StoreAbort,
                self.service(),
                format!("{} transaction aborted at {op}", self.who()),
            );
            return Err(StoreError::Conflict(format!("injected abort at {op}")));
        }
        Ok(())
    }

    /// Waits forever if `point` is armed for this replica: the driver
    /// crashes the host at its next step, so the code after never runs.
    async fn crash_point(&self, point: CrashPoint) {
        if let Some(r) = self.replica {
            if self.world.fire(r, point) {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl SimStore {
    /// The delivery rule "mark only after publish", checked where the mark
    /// lands: every publish the mark records (the entry's count after it)
    /// must have reached the broker, as the broker counts what it received
    /// (not as the relay reports what it sent). Correct relays publish,
    /// then mark; two relays may both publish an entry whose claim
    /// expired, which only adds publishes. An event nobody subscribes to
    /// is sent nowhere (by `SimBus` as by `RedisBus`), so there is nothing
    /// for the broker to have.
    fn check_marked_after_publish(&self, service: Service, marks: &[Mark]) {
        for mark in marks {
            let Some(entry) = self.world.store.outbox_entry(service, mark.seq) else {
                continue;
            };
            if subscribers(entry.event.event_type()).is_empty() {
                continue;
            }
            let received = self.world.receptions(service, entry.event.event_id);
            if received <= entry.published_count {
                self.world.found(Finding::new(
                    check::MARK_AFTER_PUBLISH,
                    format!("{service} outbox #{}", mark.seq),
                    format!(
                        "marked published for the {} time after the broker received {received} publishes of {}",
                        entry.published_count + 1,
                        entry.event.summary()
                    ),
                ));
            }
        }
    }

    /// The `lease-ended-mid-publish` steer: the first mark of a relay from
    /// its start stalls until the lease of the relay's claim has ended, so
    /// the entries are due to the other relays while this one's publish is
    /// in flight. Then counts the marks that came after their lease
    /// ([`FaultKind::LeaseEndedMidPublish`]), steered or not.
    async fn mark_after_stall(&self, service: Service, marks: &[Mark], now: Timestamp) {
        let Some(replica) = self.replica else {
            return;
        };
        // The relay's clock when the mark lands (its `now` was read before).
        let mut lands_at = now;
        if self.world.stall_mark() {
            let stall_ms = crate::run::runtime_config(&self.world.plan)
                .relay_lease
                .as_millis() as u64
                + MARK_STALL_PAST_LEASE_MS;
            self.world.log(
                EntryKind::Driver { at: Some(service) },
                format!("steer: {replica}'s mark stalls {stall_ms}ms, past its claim's lease"),
            );
            tokio::time::sleep(Duration::from_millis(stall_ms)).await;
            lands_at = now.plus(DurationMs(i64::try_from(stall_ms).expect("a stall fits i64")));
        }
        let seqs: Vec<i64> = marks.iter().map(|m| m.seq).collect();
        for _ in 0..self.world.marked_after_lease(replica, service, &seqs, lands_at) {
            self.world.count(FaultKind::LeaseEndedMidPublish);
        }
    }
}

struct SimTx {
    inner: Box<dyn StoreTx>,
    store: SimStore,
    /// Rows saved, handed to the safety check if the transaction commits.
    written: Vec<Row>,
    /// Events enqueued, handed to the publish and compensation checks if
    /// the transaction commits.
    enqueued: Vec<Event>,
    /// The service whose tables the transaction writes.
    service: Service,
    /// Outbox rows inserted claimed (send on commit): seq, claim end.
    claimed: Vec<(i64, Timestamp)>,
}

impl Drop for SimTx {
    fn drop(&mut self) {
        self.store.world.tx_closed(self.store.replica);
    }
}

#[async_trait]
impl StoreTx for SimTx {
    async fn record_processed(&mut self, event_id: EventId, now: Timestamp) -> StoreResult<bool> {
        self.store.delay().await;
        self.store.maybe_abort("inbox")?;
        self.inner.record_processed(event_id, now).await
    }

    async fn load_for_update(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        self.store.delay().await;
        self.store.maybe_abort("select for update")?;
        self.inner.load_for_update(key).await
    }

    async fn load(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        self.store.delay().await;
        self.inner.load(key).await
    }

    async fn save(&mut self, row: &Row) -> StoreResult<()> {
        self.store.delay().await;
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
        if let Some(until) = claimed_until {
            self.claimed.push((seq, until));
        }
        Ok(seq)
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        self.store.delay().await;
        self.store.maybe_abort("commit")?;
        self.store.maybe_unavailable("commit")?;
        self.store.crash_point(CrashPoint::BeforeCommit).await;
        let inner = std::mem::replace(&mut self.inner, Box::new(Committed));
        inner.commit().await?;
        self.store.world.rows_committed(std::mem::take(&mut self.written));
        self.store.world.outbox_committed(&self.enqueued);
        if let Some(replica) = self.store.replica {
            // Rows inserted claimed (send on commit): held like a relay's
            // claim, for the `lease-ended-mid-publish` count.
            for (seq, until) in std::mem::take(&mut self.claimed) {
                self.store.world.leased(replica, self.service, &[seq], until);
            }
        }
        // Committed, its events not yet sent (send on commit).
        if !self.enqueued.is_empty() {
            self.store.crash_point(CrashPoint::AfterCommit).await;
        }
        Ok(())
    }

    // One row at a time: each row meets its own delay and faults, as
    // the simulator always ran batches (its traces depend on it).
    async fn record_processed_many(
        &mut self,
        event_ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<Vec<bool>> {
        one_at_a_time::record_processed_many(self, event_ids, now).await
    }

    async fn load_for_update_many(&mut self, keys: &[RowKey]) -> StoreResult<Vec<Option<Row>>> {
        one_at_a_time::load_for_update_many(self, keys).await
    }

    async fn save_many(&mut self, rows: &[Row]) -> StoreResult<()> {
        one_at_a_time::save_many(self, rows).await
    }

    async fn enqueue_many(
        &mut self,
        events: &[Event],
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<Vec<i64>> {
        one_at_a_time::enqueue_many(self, events, now, claimed_until).await
    }
}

/// Stands in for the inner transaction once it was handed to `commit`.
struct Committed;

#[async_trait]
impl StoreTx for Committed {
    async fn record_processed(&mut self, _: EventId, _: Timestamp) -> StoreResult<bool> {
        unreachable!("used after commit")
    }
    async fn load_for_update(&mut self, _: &RowKey) -> StoreResult<Option<Row>> {
        unreachable!("used after commit")
    }
    async fn load(&mut self, _: &RowKey) -> StoreResult<Option<Row>> {
        unreachable!("used after commit")
    }
    async fn save(&mut self, _: &Row) -> StoreResult<()> {
        unreachable!("used after commit")
    }
    async fn enqueue(&mut self, _: &Event, _: Timestamp, _: Option<Timestamp>) -> StoreResult<i64> {
        unreachable!("used after commit")
    }
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        unreachable!("committed twice")
    }
    async fn record_processed_many(&mut self, _: &[EventId], _: Timestamp) -> StoreResult<Vec<bool>> {
        unreachable!("used after commit")
    }
    async fn load_for_update_many(&mut self, _: &[RowKey]) -> StoreResult<Vec<Option<Row>>> {
        unreachable!("used after commit")
    }
    async fn save_many(&mut self, _: &[Row]) -> StoreResult<()> {
        unreachable!("used after commit")
    }
    async fn enqueue_many(
        &mut self,
        _: &[Event],
        _: Timestamp,
        _: Option<Timestamp>,
    ) -> StoreResult<Vec<i64>> {
        unreachable!("used after commit")
    }
}

#[async_trait]
impl Store for SimStore {
    async fn begin(&self, service: Service) -> StoreResult<Box<dyn StoreTx>> {
        self.acquire().await?;
        self.delay().await;
        self.maybe_unavailable("begin")?;
        let inner = self.world.store.begin(service).await?;
        self.world.tx_opened(self.replica);
        Ok(Box::new(SimTx {
            inner,
            store: self.clone(),
            written: Vec::new(),
            enqueued: Vec::new(),
            service,
            claimed: Vec::new(),
        }))
    }

    async fn claim_due(
        &self,
        service: Service,
        now: Timestamp,
        lease: DurationMs,
        limit: usize,
    ) -> StoreResult<Claimed> {
        self.delay().await;
        self.maybe_unavailable("claim")?;
        let claimed = self.world.store.claim_due(service, now, lease, limit).await?;
        if let Some(replica) = self.replica {
            let seqs: Vec<i64> = claimed.entries.iter().map(|e| e.seq).collect();
            self.world.leased(replica, service, &seqs, now.plus(lease));
        }
        Ok(claimed)
    }

    async fn outbox_due(
        &self,
        service: Service,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        outbox_due_by_claim(self, service, now, limit).await
    }

    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()> {
        self.crash_point(CrashPoint::AfterPublish).await;
        self.mark_after_stall(service, marks, now).await;
        self.delay().await;
        self.maybe_unavailable("mark published")?;
        self.check_marked_after_publish(service, marks);
        self.world.store.mark_published(service, marks, now).await
    }

    async fn release(&self, service: Service, seqs: &[i64]) -> StoreResult<()> {
        self.delay().await;
        self.maybe_unavailable("release")?;
        self.world.store.release(service, seqs).await
    }

    async fn processed(&self, service: Service, event_id: EventId) -> StoreResult<bool> {
        self.delay().await;
        self.maybe_unavailable("processed")?;
        self.world.store.processed(service, event_id).await
    }

    async fn writable(&self, service: Service) -> StoreResult<()> {
        self.delay().await;
        self.world.store.writable(service).await
    }

    async fn overdue_sagas(&self, before: Timestamp) -> StoreResult<u64> {
        self.delay().await;
        self.world.store.overdue_sagas(before).await
    }

    async fn orders_past_deadline(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<OrderId>> {
        self.delay().await;
        self.maybe_unavailable("deadlines")?;
        self.world.store.orders_past_deadline(now, limit).await
    }

    async fn prune(
        &self,
        service: Service,
        now: Timestamp,
        retention: Retention,
        policy: RedrivePolicy,
    ) -> StoreResult<Pruned> {
        self.delay().await;
        self.maybe_unavailable("prune")?;
        let inbox_before = self.world.store.inbox_ids(service);
        let pruned = self.world.store.prune(service, now, retention, policy).await?;
        if pruned.inbox > 0 {
            // The ack check must tell an event pruned after its commit
            // from one never committed.
            for id in inbox_before {
                if !self.world.store.inbox_contains(service, id) {
                    self.world.inbox_pruned(service, id);
                }
            }
        }
        if pruned.inbox + pruned.outbox > 0 {
            self.world.fault(
                FaultKind::Prune,
                Some(service),
                format!(
                    "{} pruned {} inbox id(s), {} outbox entr(ies)",
                    self.who(),
                    pruned.inbox,
                    pruned.outbox
                ),
            );
        }
        Ok(pruned)
    }

    async fn snapshot(&self) -> StoreResult<Snapshot> {
        self.world.store.snapshot().await
    }
}
