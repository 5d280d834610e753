//! A [`Store`] that counts the relays' claims and passes everything on:
//! how many relay passes claimed outbox rows during a bench window (a claim
//! is an `UPDATE ... RETURNING` and its commit on PostgreSQL, on the
//! critical path of every hop it publishes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::invariants::Snapshot;
use crate::domain::{DurationMs, EventId, OrderId, Service, Timestamp};
use crate::runtime::store::{Claimed, Pruned, StoreResult};
use crate::runtime::{Mark, OutboxEntry, RedrivePolicy, Retention, Store, StoreTx};

/// Claims counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimCounts {
    /// Claims that took at least one row.
    pub took_rows: u64,
    /// Every claim, the empty ones (a relay's idle poll) included.
    pub calls: u64,
}

/// Wraps a store; see the module docs.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    took_rows: AtomicU64,
    calls: AtomicU64,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> CountingStore {
        CountingStore {
            inner,
            took_rows: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    pub fn counts(&self) -> ClaimCounts {
        ClaimCounts {
            took_rows: self.took_rows.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn begin(&self, service: Service) -> StoreResult<Box<dyn StoreTx>> {
        self.inner.begin(service).await
    }

    async fn claim_due(
        &self,
        service: Service,
        now: Timestamp,
        lease: DurationMs,
        limit: usize,
    ) -> StoreResult<Claimed> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let claimed = self.inner.claim_due(service, now, lease, limit).await?;
        let taken = claimed.entries.len() + claimed.quarantined.len() + claimed.left_for_newer.len();
        if taken > 0 {
            self.took_rows.fetch_add(1, Ordering::Relaxed);
        }
        Ok(claimed)
    }

    async fn outbox_due(
        &self,
        service: Service,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        self.inner.outbox_due(service, now, limit).await
    }

    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()> {
        self.inner.mark_published(service, marks, now).await
    }

    async fn release(&self, service: Service, seqs: &[i64]) -> StoreResult<()> {
        self.inner.release(service, seqs).await
    }

    async fn processed(&self, service: Service, event_id: EventId) -> StoreResult<bool> {
        self.inner.processed(service, event_id).await
    }

    async fn writable(&self, service: Service) -> StoreResult<()> {
        self.inner.writable(service).await
    }

    async fn orders_past_deadline(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<OrderId>> {
        self.inner.orders_past_deadline(now, limit).await
    }

    async fn overdue_sagas(&self, before: Timestamp) -> StoreResult<u64> {
        self.inner.overdue_sagas(before).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Payload, PaymentFailed};
    use crate::domain::{Event, ItemId, UserId};
    use crate::runtime::memory::MemoryStore;

    #[tokio::test]
    async fn only_claims_that_took_rows_count_as_such_and_every_claim_is_a_call() {
        let store = CountingStore::new(Arc::new(MemoryStore::default()));
        let now = Timestamp(1_000);
        let lease = DurationMs(3_000);
        assert!(store
            .claim_due(Service::Payment, now, lease, 8)
            .await
            .unwrap()
            .entries
            .is_empty());
        let event = Event::new(
            OrderId::parse("o1").unwrap(),
            UserId::parse("u1").unwrap(),
            now,
            Payload::PaymentFailed(PaymentFailed {
                reason: "declined".into(),
                attempted_amount: 1,
                item_id: ItemId::parse("sword").unwrap(),
            }),
        );
        let mut tx = store.begin(Service::Payment).await.unwrap();
        tx.enqueue(&event, now, None).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            store
                .claim_due(Service::Payment, now, lease, 8)
                .await
                .unwrap()
                .entries
                .len(),
            1
        );
        // Held by the lease: the next claim finds nothing.
        assert!(store
            .claim_due(Service::Payment, now, lease, 8)
            .await
            .unwrap()
            .entries
            .is_empty());
        assert_eq!(
            store.counts(),
            ClaimCounts {
                took_rows: 1,
                calls: 3
            }
        );
    }
}
