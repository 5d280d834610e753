//! Faults at the adapter boundary: [`FaultyStore`] and [`FaultyBus`] wrap
//! the production `PgStore` and `RedisBus` of one replica and inject what
//! the plan's rates say, until the heal:
//!
//! - store: delays (`latency`) at `begin` and before every statement of a
//!   transaction, transactions that fail to begin or commit with a conflict
//!   or "unavailable" (`store-abort`), relay and sweeper reads and marks
//!   that fail (`store-abort`); an armed `BeforeCommit` crash point stops
//!   the replica inside its next commit, an armed `AfterCommit` one right
//!   after its next commit that enqueued events (before they are sent);
//! - bus: publishes delayed, dropped (`drop-publish`) or made twice
//!   (`duplicate`), a batch publish that fails part of the way
//!   (`drop-publish`: the leading events go out, the relay is told the rest
//!   failed), deliveries taken and never handled (`drop-delivery`: Redis
//!   keeps them pending until another consumer claims them), a replica cut
//!   off the bus (`partition`: every call fails); an armed `AfterPublish`
//!   crash point stops the relay between its publish and its mark. A
//!   service asked to swallow a delivery (for an XDEL) takes one out of the
//!   next batch and reports its entry id.
//!
//! Every method of the ports is forwarded to the same method of the inner
//! adapter, the batch ones included (the port traits have no default
//! bodies, so the compiler holds this file to it): torture runs PgStore's
//! batched statements and RedisBus's multi-event pipeline, the very paths
//! `serve` runs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use purchase_saga::domain::invariants::Snapshot;
use purchase_saga::domain::{DurationMs, Event, EventId, OrderId, Row, RowKey, Service, Timestamp};
use purchase_saga::runtime::bus::{Bus, BusError, Delivery, PartialPublish};
use purchase_saga::runtime::store::{Claimed, OutboxEntry, Pruned, StoreResult};
use purchase_saga::runtime::{Mark, RedrivePolicy, Retention, Store, StoreError, StoreTx};

use crate::faults::{CrashPoint, FaultKind, Replica};

use super::state::{Shared, Swallowed};
use super::TIME_DIVISOR;

/// Sleeps a random part of the plan's jitter (scaled), counting it.
async fn jitter(shared: &Shared) {
    let max = shared.plan.jitter_ms_max / TIME_DIVISOR;
    if max == 0 || shared.healed() {
        return;
    }
    let ms = shared.below(max + 1);
    if ms > 0 {
        shared.count(FaultKind::Latency);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Waits to be crashed: the driver aborts the replica's tasks.
async fn hang_until_crashed() -> ! {
    std::future::pending::<()>().await;
    unreachable!("a pending future never completes")
}

/// A store error as the plan draws it: half conflicts, half outages.
fn store_fault(shared: &Shared, what: &str) -> StoreError {
    shared.count(FaultKind::StoreAbort);
    if shared.below(2) == 0 {
        StoreError::Conflict(format!("torture: injected conflict at {what}"))
    } else {
        StoreError::Unavailable(format!("torture: injected outage at {what}"))
    }
}

/// The plan's `unavailable`: the store answers as a refused or broken
/// connection does.
fn unavailable(shared: &Shared, what: &str) -> StoreResult<()> {
    if shared.strikes(shared.plan.unavailable_per_mille) {
        shared.count(FaultKind::Unavailable);
        return Err(StoreError::Unavailable(format!(
            "torture: store unreachable at {what}"
        )));
    }
    Ok(())
}

/// One replica's (or the client's) store.
pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    pub shared: Arc<Shared>,
    pub replica: Option<Replica>,
}

impl FaultyStore {
    fn strike(&self, what: &str) -> StoreResult<()> {
        if self.shared.strikes(self.shared.plan.abort_per_mille) {
            return Err(store_fault(&self.shared, what));
        }
        unavailable(&self.shared, what)
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn begin(&self, service: Service) -> StoreResult<Box<dyn StoreTx>> {
        jitter(&self.shared).await;
        self.strike("begin")?;
        let inner = self.inner.begin(service).await?;
        self.shared.tx_opened(self.replica);
        Ok(Box::new(FaultyTx {
            inner: Some(inner),
            shared: self.shared.clone(),
            replica: self.replica,
            enqueued: false,
        }))
    }

    async fn claim_due(
        &self,
        service: Service,
        now: Timestamp,
        lease: DurationMs,
        limit: usize,
    ) -> StoreResult<Claimed> {
        self.strike("claim_due")?;
        self.inner.claim_due(service, now, lease, limit).await
    }

    async fn outbox_due(
        &self,
        service: Service,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        self.strike("outbox_due")?;
        self.inner.outbox_due(service, now, limit).await
    }

    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()> {
        self.strike("mark_published")?;
        self.inner.mark_published(service, marks, now).await
    }

    async fn release(&self, service: Service, seqs: &[i64]) -> StoreResult<()> {
        self.strike("release")?;
        self.inner.release(service, seqs).await
    }

    async fn processed(&self, service: Service, event_id: EventId) -> StoreResult<bool> {
        self.strike("processed")?;
        self.inner.processed(service, event_id).await
    }

    async fn writable(&self, service: Service) -> StoreResult<()> {
        self.inner.writable(service).await
    }

    async fn overdue_sagas(&self, before: Timestamp) -> StoreResult<u64> {
        self.strike("overdue_sagas")?;
        self.inner.overdue_sagas(before).await
    }

    async fn orders_past_deadline(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<OrderId>> {
        self.strike("orders_past_deadline")?;
        self.inner.orders_past_deadline(now, limit).await
    }

    async fn prune(
        &self,
        service: Service,
        now: Timestamp,
        retention: Retention,
        policy: RedrivePolicy,
    ) -> StoreResult<Pruned> {
        self.inner.prune(service, now, retention, policy).await
    }

    async fn snapshot(&self) -> StoreResult<Snapshot> {
        self.inner.snapshot().await
    }
}

/// A transaction that may abort at commit or hang there for a crash.
struct FaultyTx {
    /// None once committed.
    inner: Option<Box<dyn StoreTx>>,
    shared: Arc<Shared>,
    replica: Option<Replica>,
    /// Whether it enqueued events (an armed `AfterCommit` point fires only
    /// at such a commit: between it and the send on commit).
    enqueued: bool,
}

impl FaultyTx {
    fn tx(&mut self) -> &mut Box<dyn StoreTx> {
        self.inner
            .as_mut()
            .expect("a transaction is used only before commit")
    }
}

impl Drop for FaultyTx {
    fn drop(&mut self) {
        self.shared.tx_closed(self.replica);
    }
}

/// Each statement of a transaction, single-row or batched, first waits a
/// drawn delay (while its earlier statements' row locks are held, which
/// widens the windows two replicas race in); begin and commit carry the
/// aborts and the crash point.
#[async_trait]
impl StoreTx for FaultyTx {
    async fn record_processed(&mut self, event_id: EventId, now: Timestamp) -> StoreResult<bool> {
        jitter(&self.shared).await;
        self.tx().record_processed(event_id, now).await
    }

    async fn load_for_update(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        jitter(&self.shared).await;
        self.tx().load_for_update(key).await
    }

    async fn load(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        jitter(&self.shared).await;
        self.tx().load(key).await
    }

    async fn save(&mut self, row: &Row) -> StoreResult<()> {
        jitter(&self.shared).await;
        self.tx().save(row).await
    }

    async fn enqueue(
        &mut self,
        event: &Event,
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<i64> {
        jitter(&self.shared).await;
        let seq = self.tx().enqueue(event, now, claimed_until).await?;
        self.enqueued = true;
        Ok(seq)
    }

    async fn record_processed_many(
        &mut self,
        event_ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<Vec<bool>> {
        jitter(&self.shared).await;
        self.tx().record_processed_many(event_ids, now).await
    }

    async fn load_for_update_many(&mut self, keys: &[RowKey]) -> StoreResult<Vec<Option<Row>>> {
        jitter(&self.shared).await;
        self.tx().load_for_update_many(keys).await
    }

    async fn save_many(&mut self, rows: &[Row]) -> StoreResult<()> {
        jitter(&self.shared).await;
        self.tx().save_many(rows).await
    }

    async fn enqueue_many(
        &mut self,
        events: &[Event],
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<Vec<i64>> {
        jitter(&self.shared).await;
        let seqs = self.tx().enqueue_many(events, now, claimed_until).await?;
        self.enqueued |= !seqs.is_empty();
        Ok(seqs)
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        if let Some(r) = self.replica {
            if self.shared.fire(r, CrashPoint::BeforeCommit) {
                hang_until_crashed().await;
            }
        }
        if self.shared.strikes(self.shared.plan.abort_per_mille) {
            // Dropping the transaction rolls it back.
            self.inner = None;
            return Err(store_fault(&self.shared, "commit"));
        }
        if let Err(e) = unavailable(&self.shared, "commit") {
            self.inner = None;
            return Err(e);
        }
        let inner = self.inner.take().expect("committed once");
        inner.commit().await?;
        if let Some(r) = self.replica.filter(|_| self.enqueued) {
            // Committed, its events not yet sent (send on commit).
            if self.shared.fire(r, CrashPoint::AfterCommit) {
                self.shared.count(FaultKind::CrashAfterCommit);
                hang_until_crashed().await;
            }
        }
        Ok(())
    }
}

/// One replica's (or the client's) bus.
pub struct FaultyBus {
    pub inner: Arc<dyn Bus>,
    pub shared: Arc<Shared>,
    pub replica: Replica,
}

impl FaultyBus {
    fn reachable(&self) -> Result<(), BusError> {
        if self.shared.is_cut(self.replica) {
            return Err(BusError::Unavailable(format!(
                "torture: {} cut off the bus",
                self.replica
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for FaultyBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        self.publish_batch(&[event])
            .await
            .map_err(|partial| partial.error)
    }

    /// One forwarded `publish_batch` (one pipeline on Redis) of the events
    /// that survive their drawn drops, with the drawn duplicates beside
    /// their originals. A drawn failure part of the way (a batch of two or
    /// more) sends the leading events only and reports the rest as failed.
    async fn publish_batch(&self, events: &[&Event]) -> Result<(), PartialPublish> {
        jitter(&self.shared).await;
        self.reachable()
            .map_err(|error| PartialPublish { published: 0, error })?;
        let plan = &self.shared.plan;
        let cut = (events.len() > 1 && self.shared.strikes(plan.drop_publish_per_mille))
            .then(|| 1 + self.shared.below(events.len() as u64 - 1) as usize);
        let attempted = &events[..cut.unwrap_or(events.len())];
        // What goes to Redis, and for each attempted event how much of it
        // must be out for that event to be out.
        let mut sent: Vec<&Event> = Vec::with_capacity(attempted.len());
        let mut out_after: Vec<usize> = Vec::with_capacity(attempted.len());
        for event in attempted {
            if self.shared.strikes(plan.drop_publish_per_mille) {
                self.shared.publish_dropped(event.event_id);
                self.shared.fault(
                    FaultKind::DropPublish,
                    format!("{} publish of {} lost", self.replica, event.summary()),
                );
            } else {
                sent.push(event);
                if self.shared.strikes(plan.duplicate_per_mille) {
                    self.shared.count(FaultKind::Duplicate);
                    sent.push(event);
                }
            }
            out_after.push(sent.len());
        }
        if let Err(partial) = self.inner.publish_batch(&sent).await {
            let published = out_after
                .iter()
                .take_while(|needed| **needed <= partial.published)
                .count();
            return Err(PartialPublish {
                published,
                error: partial.error,
            });
        }
        if let Some(cut) = cut {
            self.shared.fault(
                FaultKind::DropPublish,
                format!(
                    "{} batch publish failed after {cut} of {} events",
                    self.replica,
                    events.len()
                ),
            );
            return Err(PartialPublish {
                published: cut,
                error: BusError::Unavailable(format!(
                    "torture: injected failure after {cut} of {} events",
                    events.len()
                )),
            });
        }
        if self.shared.fire(self.replica, CrashPoint::AfterPublish) {
            self.shared.count(FaultKind::CrashAfterPublish);
            hang_until_crashed().await;
        }
        Ok(())
    }

    async fn receive(&self, service: Service, consumer: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        self.reachable()?;
        let mut batch = self.inner.receive(service, consumer, max).await?;
        if !batch.is_empty() && self.shared.take_swallow(service) {
            let taken = batch.remove(0);
            self.shared.swallowed(Swallowed {
                service,
                deliveries: u64::from(taken.attempt),
                entry_id: taken.entry_id,
                consumer: consumer.to_string(),
            });
        }
        let plan = &self.shared.plan;
        batch.retain(|d| {
            let dropped = self.shared.strikes(plan.drop_delivery_per_mille);
            if dropped {
                self.shared.fault(
                    FaultKind::DropDelivery,
                    format!("{consumer} never got entry {}", d.entry_id),
                );
            }
            !dropped
        });
        Ok(batch)
    }

    async fn ack(&self, service: Service, entry_id: &str) -> Result<(), BusError> {
        self.reachable()?;
        self.inner.ack(service, entry_id).await
    }

    async fn dead_letter(&self, service: Service, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        self.reachable()?;
        self.inner.dead_letter(service, delivery, reason).await
    }
}
