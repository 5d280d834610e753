//! The store port: one transaction per handled event, with the inbox
//! (processed event ids) and the outbox (events to publish) in the same
//! transaction as the service's rows.
//!
//! Adapters: `memory::MemoryStore` (tests, fuzzing, and the simulator's store
//! underneath its fault layer) and the Postgres store of the production
//! binary. Both must refuse what Postgres refuses: a second insert of a key,
//! a lock held by another transaction, a commit after an abort.

use async_trait::async_trait;

use crate::domain::invariants::Snapshot;
use crate::domain::service::subscribers;
use crate::domain::{DurationMs, Event, EventId, EventType, OrderId, Row, RowKey, Service, Timestamp};

/// A store operation that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Serialization failure, deadlock, unique-key race, lock timeout: the
    /// whole transaction can be retried at once and may succeed.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// The store cannot be reached or refused the connection; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (bad data, a bug): not retried by the runtime.
    #[error("store error: {0}")]
    Fatal(String),
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }

    /// Whether the store as a whole is out of service (down, read-only,
    /// full): every transaction would fail alike, so loops back off instead
    /// of trying the next item.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One transaction in one service's tables. Dropping it without `commit`
/// rolls it back: nothing it wrote becomes visible and its locks are freed.
#[async_trait]
pub trait StoreTx: Send {
    /// Records `event_id` as processed by this transaction's service. Returns
    /// false if it already was (the event is a duplicate). Blocks while
    /// another open transaction is recording the same id.
    async fn record_processed(&mut self, event_id: EventId, now: Timestamp) -> StoreResult<bool>;

    /// Reads a row and locks its key until the transaction ends
    /// (`SELECT ... FOR UPDATE`). An absent row reads as `None`; a concurrent
    /// insert of that key makes one of the two transactions conflict.
    async fn load_for_update(&mut self, key: &RowKey) -> StoreResult<Option<Row>>;

    /// Reads the last committed version of a row (or this transaction's own
    /// write) without locking it. Correct code does not use it for a row it
    /// writes: that loses updates exactly as it would on Postgres.
    async fn load(&mut self, key: &RowKey) -> StoreResult<Option<Row>>;

    /// Writes a whole row (insert or update).
    async fn save(&mut self, row: &Row) -> StoreResult<()>;

    /// Adds an event to this service's outbox; returns the row's `seq`.
    /// With `claimed_until`, the row is inserted already claimed until then
    /// (send on commit, `runtime::dispatch`: the committing process
    /// publishes it right after the commit, and no relay claims it before
    /// the lease ends); without, it is due to the relays at once.
    async fn enqueue(
        &mut self,
        event: &Event,
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<i64>;

    /// Makes every write of the transaction visible at once.
    async fn commit(self: Box<Self>) -> StoreResult<()>;

    // Batched apply (DESIGN.md "Batched apply"): the same operations for a
    // whole batch of events, one statement per table on PostgreSQL. No
    // default bodies: every store and every wrapper chooses, so a fault
    // layer cannot fall back to the single-row path by forgetting a method
    // (`tests/architecture.rs` keeps it so). A store without batched
    // statements runs the single-row operations in turn with the
    // [`one_at_a_time`] helpers, which is exactly the batch semantics.

    /// [`record_processed`](Self::record_processed) for distinct ids in
    /// ascending order (one global order, so two batches sharing ids cannot
    /// deadlock on the inbox); for each id, whether it was new.
    async fn record_processed_many(
        &mut self,
        event_ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<Vec<bool>>;

    /// [`load_for_update`](Self::load_for_update) for distinct keys in
    /// ascending order (the global lock order); the rows in the same order.
    async fn load_for_update_many(&mut self, keys: &[RowKey]) -> StoreResult<Vec<Option<Row>>>;

    /// [`save`](Self::save) for rows of distinct keys.
    async fn save_many(&mut self, rows: &[Row]) -> StoreResult<()>;

    /// [`enqueue`](Self::enqueue) for events in the order given (their
    /// outbox order); their seqs, in the same order.
    async fn enqueue_many(
        &mut self,
        events: &[Event],
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<Vec<i64>>;
}

/// The batch operations of [`StoreTx`] for a store without batched
/// statements: each runs the single-row operation in
/// turn (so each row meets whatever the store does per row: its locks, the
/// simulator's faults), which is the batch semantics. One copy, shared by
/// every such store.
pub mod one_at_a_time {
    use super::*;

    /// [`StoreTx::record_processed_many`], one id at a time.
    pub async fn record_processed_many<T: StoreTx + ?Sized>(
        tx: &mut T,
        event_ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<Vec<bool>> {
        assert_inbox_order(event_ids);
        let mut fresh = Vec::with_capacity(event_ids.len());
        for id in event_ids {
            fresh.push(tx.record_processed(*id, now).await?);
        }
        Ok(fresh)
    }

    /// [`StoreTx::load_for_update_many`], one key at a time.
    pub async fn load_for_update_many<T: StoreTx + ?Sized>(
        tx: &mut T,
        keys: &[RowKey],
    ) -> StoreResult<Vec<Option<Row>>> {
        assert_lock_order(keys);
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            rows.push(tx.load_for_update(key).await?);
        }
        Ok(rows)
    }

    /// [`StoreTx::save_many`], one row at a time.
    pub async fn save_many<T: StoreTx + ?Sized>(tx: &mut T, rows: &[Row]) -> StoreResult<()> {
        for row in rows {
            tx.save(row).await?;
        }
        Ok(())
    }

    /// [`StoreTx::enqueue_many`], one event at a time.
    pub async fn enqueue_many<T: StoreTx + ?Sized>(
        tx: &mut T,
        events: &[Event],
        now: Timestamp,
        claimed_until: Option<Timestamp>,
    ) -> StoreResult<Vec<i64>> {
        let mut seqs = Vec::with_capacity(events.len());
        for event in events {
            seqs.push(tx.enqueue(event, now, claimed_until).await?);
        }
        Ok(seqs)
    }
}

/// [`Store::outbox_due`] as a claim with a zero lease (every store's
/// choice so far: the claim is the one query of what is due).
pub async fn outbox_due_by_claim<S: Store + ?Sized>(
    store: &S,
    service: Service,
    now: Timestamp,
    limit: usize,
) -> StoreResult<Vec<OutboxEntry>> {
    Ok(store.claim_due(service, now, DurationMs(0), limit).await?.entries)
}

/// The precondition of [`StoreTx::load_for_update_many`] on every store:
/// distinct keys in ascending order (the global lock order).
pub fn assert_lock_order(keys: &[RowKey]) {
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys are locked distinct and in ascending order"
    );
}

/// The precondition of [`StoreTx::record_processed_many`] on every store:
/// distinct ids in ascending order (one global order, so two batches that
/// share ids cannot deadlock on the inbox).
pub fn assert_inbox_order(event_ids: &[EventId]) {
    assert!(
        event_ids.windows(2).all(|w| w[0] < w[1]),
        "inbox ids are recorded distinct and in ascending order"
    );
}

/// An outbox row: an event committed by its service, with its publishing
/// history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the service's outbox; publishing goes in this order.
    pub seq: i64,
    pub event: Event,
    pub created_at: Timestamp,
    pub published_count: u32,
    pub last_published_at: Option<Timestamp>,
    /// When the entry is due for its next re-drive round, as the relay
    /// recorded at its last publish (see [`RedrivePolicy::mark`]); None when
    /// never published or never again.
    pub next_publish_at: Option<Timestamp>,
}

/// An outbox row this build does not publish, set aside by
/// [`Store::claim_due`] so that the rows after it keep flowing: one that
/// does not decode (quarantined: never due again until an operator
/// releases it), or one a newer build wrote (left for that build).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub seq: i64,
    /// Why it does not decode.
    pub reason: String,
}

/// What one claim took: the entries now held by the claiming relay, the
/// rows it found undecodable and quarantined instead, and the rows written
/// by a newer build (a higher `schemaVersion`) that it gave back for a
/// build that reads them (PostgreSQL; the in-memory store runs one build).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    pub entries: Vec<OutboxEntry>,
    pub quarantined: Vec<Quarantined>,
    pub left_for_newer: Vec<Quarantined>,
}

/// What the relay records of an entry it has just published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub seq: i64,
    /// Start of the next re-drive round, or None for never again.
    pub next_publish_at: Option<Timestamp>,
}

/// When the relay publishes an outbox entry again (DESIGN.md "Re-drive").
///
/// The bus is at-least-once only while it keeps its data; Redis here keeps
/// nothing on disk, and the simulator's broker drops messages. So an entry is
/// published again in rounds fixed by its creation time: round `k` (1 to
/// `republish_max`) starts at `created_at + after * (2^k - 1)`, i.e. at
/// `after`, `3*after`, `7*after`, ...; after round `republish_max` the gap
/// stops doubling and the rounds repeat every `after * 2^(republish_max-1)`
/// until the `horizon`, which no round starts at or past. There is no last
/// round before the horizon, so an event lost at any time inside it is
/// re-driven within one capped gap (no liveness cliff; ARCHITECTURE.md
/// "Re-drive until the horizon"). An entry is due when a round has started
/// since its last publish. Rounds, not publish counts, are the budget: two relay replicas
/// that both publish in one round spend one round, and a long fault window
/// cannot use the budget up faster than time passes. Consumers are
/// idempotent, so a needless republish costs one inbox lookup per subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedrivePolicy {
    pub after: DurationMs,
    pub republish_max: u32,
    pub horizon: DurationMs,
}

impl RedrivePolicy {
    /// Longest schedule supported: `2^k` must not overflow.
    pub const ROUNDS_MAX: u32 = 30;

    /// Whether the relay should publish `entry` now: never published, or a
    /// re-drive round started since its last publish.
    pub fn is_due(&self, entry: &OutboxEntry, now: Timestamp) -> bool {
        entry.last_published_at.is_none() || self.next_republish(entry).is_some_and(|at| at <= now)
    }

    /// Start of the first round after the entry's last publish; None when
    /// it was never published (it is due at once), when no round is left, or
    /// when nobody consumes its type (no consumer waits for a lost copy).
    pub fn next_republish(&self, entry: &OutboxEntry) -> Option<Timestamp> {
        let last = entry.last_published_at?;
        self.next_round_after(entry, last)
    }

    /// What to record of `entry` once it has been published at `now`: the
    /// start of the first round after `now`, so that the store finds the
    /// entry due again with an index lookup (`next_publish_at <= now`)
    /// instead of evaluating the rounds of every entry it holds.
    pub fn mark(&self, entry: &OutboxEntry, now: Timestamp) -> Mark {
        Mark {
            seq: entry.seq,
            next_publish_at: self.next_round_after(entry, now),
        }
    }

    /// Start of the first round of `entry` after `last`; None when no round
    /// is left or nobody consumes its type.
    fn next_round_after(&self, entry: &OutboxEntry, last: Timestamp) -> Option<Timestamp> {
        if !Self::worth_republishing(entry.event.event_type()) {
            return None;
        }
        let created = entry.created_at;
        let inside = |start: &Timestamp| start.since(created) < self.horizon;
        if crate::mutant!(RedriveStopsEarly) {
            // Planted bug: only the first round is ever scheduled.
            return Some(self.round_start(created, 1)).filter(|s| inside(s) && *s > last);
        }
        let doubling = self.republish_max.clamp(1, Self::ROUNDS_MAX);
        if let Some(start) = (1..=doubling)
            .map(|k| self.round_start(created, k))
            .take_while(inside)
            .find(|start| *start > last)
        {
            return Some(start);
        }
        // Past the doubling rounds: one round every capped gap.
        let base = self.round_start(created, doubling);
        let gap = self.gap_max().0.max(1);
        let behind = last.since(base).0.max(0);
        let start = base.plus(DurationMs((behind / gap + 1).saturating_mul(gap)));
        debug_assert!(start > last, "the next round starts after the last publish");
        Some(start).filter(inside)
    }

    /// The longest gap between two rounds: the gap before round
    /// `republish_max`, repeated after it until the horizon.
    pub fn gap_max(&self) -> DurationMs {
        let doubling = self.republish_max.clamp(1, Self::ROUNDS_MAX);
        DurationMs(self.after.0.saturating_mul(1i64 << (doubling - 1)))
    }

    /// Rounds that start inside the horizon (for bounds on publishes).
    pub fn rounds_within_horizon(&self) -> u32 {
        let gap = self.gap_max().0.max(1);
        let doubling = self.republish_max.clamp(1, Self::ROUNDS_MAX);
        let created = Timestamp::SIM_EPOCH;
        let doubled = (1..=doubling)
            .take_while(|k| self.round_start(created, *k).since(created) < self.horizon)
            .count() as i64;
        let base = self.round_start(created, doubling).since(created).0;
        let repeated = if doubled == i64::from(doubling) && self.horizon.0 > base {
            (self.horizon.0 - base - 1) / gap
        } else {
            0
        };
        u32::try_from(doubled + repeated).unwrap_or(u32::MAX)
    }

    /// Start of round `k` of an entry created at `created`.
    pub fn round_start(&self, created: Timestamp, k: u32) -> Timestamp {
        assert!((1..=Self::ROUNDS_MAX).contains(&k), "round {k} out of range");
        created.plus(DurationMs(self.after.0.saturating_mul((1i64 << k) - 1)))
    }

    /// Whether any service consumes `event_type`, so a lost copy matters.
    pub fn worth_republishing(event_type: EventType) -> bool {
        !subscribers(event_type).is_empty()
    }
}

/// How long the stores keep what they need only for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Processed event ids are kept this long: longer than any redelivery or
    /// republish can come after the first delivery.
    pub inbox: DurationMs,
    /// Outbox entries past their re-drive horizon are deleted after this.
    pub outbox: DurationMs,
    /// Rows deleted per statement, so pruning never holds long locks.
    pub batch: usize,
}

/// What one prune pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub inbox: u64,
    pub outbox: u64,
}

/// The store of all six services (one database, one schema each). A service
/// only ever opens transactions on its own tables.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn begin(&self, service: Service) -> StoreResult<Box<dyn StoreTx>>;

    /// Claims up to `limit` outbox entries of `service` that are due and
    /// not claimed by another relay (or whose claim expired), holding each
    /// until `now + lease`, so the relays of a service share the work and a
    /// crashed relay's entries are due again after the lease. Due: every
    /// never-published entry first, in `seq` order, then those whose
    /// `next_publish_at` has come, in `(next_publish_at, seq)` order, so a
    /// backlog of re-drives never delays a new event. A claimed row that
    /// does not decode is quarantined (never due again, kept for an
    /// operator) and reported, not returned; it counts against `limit`.
    /// A claim is a write: a store that cannot record it fails here,
    /// before anything is published.
    async fn claim_due(
        &self,
        service: Service,
        now: Timestamp,
        lease: DurationMs,
        limit: usize,
    ) -> StoreResult<Claimed>;

    /// What a relay would claim now, without holding it (a claim with a
    /// zero lease): tests and tools; the relay uses [`Store::claim_due`].
    /// Stores without a cheaper read use [`outbox_due_by_claim`].
    async fn outbox_due(
        &self,
        service: Service,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>>;

    /// Records that the entries were handed to the bus at `now`, with when
    /// each is due again, and ends their claims; in one statement.
    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()>;

    /// Ends the claims of entries a relay claimed and did not publish (the
    /// bus failed), so they are due again at once instead of after the lease.
    async fn release(&self, service: Service, seqs: &[i64]) -> StoreResult<()>;

    /// Whether `service` has recorded `event_id` as processed (a read; locks
    /// nothing). The consumer asks it before dead-lettering an entry past
    /// its deliveries limit: an applied event is acknowledged instead.
    async fn processed(&self, service: Service, event_id: EventId) -> StoreResult<bool>;

    /// Ok if a transaction of `service` could commit now, else the error a
    /// write would meet (Unavailable when the store is down, read-only or
    /// full). Tries a write where the store can (PostgreSQL: an inbox insert
    /// rolled back): a read says nothing about a full disk. Commits nothing:
    /// the consumer asks it, after the store was unavailable, before it
    /// takes more deliveries whose budget a failing store would spend.
    async fn writable(&self, service: Service) -> StoreResult<()>;

    /// PENDING orders past their deadline whose deadline was not signalled.
    async fn orders_past_deadline(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<OrderId>>;

    /// PENDING orders whose deadline passed at or before `before`: with
    /// `before` = now minus a grace period, the sagas that should have
    /// ended and did not (a lost event, a stuck service).
    async fn overdue_sagas(&self, before: Timestamp) -> StoreResult<u64>;

    /// Deletes expired inbox ids and outbox entries, in bounded batches.
    async fn prune(
        &self,
        service: Service,
        now: Timestamp,
        retention: Retention,
        policy: RedrivePolicy,
    ) -> StoreResult<Pruned>;

    /// Every row of every service (committed state), for invariant checks.
    async fn snapshot(&self) -> StoreResult<Snapshot>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::PaymentReserved;
    use crate::domain::{ItemId, OrderId, Payload, UserId};

    fn entry(created: Timestamp) -> OutboxEntry {
        let event = Event::new(
            OrderId::parse("o1").unwrap(),
            UserId::parse("alice").unwrap(),
            created,
            // Inventory consumes it, so a lost copy matters and it is re-driven.
            Payload::PaymentReserved(PaymentReserved {
                reserved_amount: 1,
                remaining_balance: 1,
                item_id: ItemId::parse("sword").unwrap(),
                quantity: 1,
                payment_method: "WALLET".into(),
            }),
        );
        assert!(RedrivePolicy::worth_republishing(event.event_type()));
        OutboxEntry {
            seq: 1,
            event,
            created_at: created,
            published_count: 1,
            last_published_at: None,
            next_publish_at: None,
        }
    }

    const POLICY: RedrivePolicy = RedrivePolicy {
        after: DurationMs(1000),
        republish_max: 3,
        horizon: DurationMs(20_000),
    };

    #[test]
    fn rounds_double_then_repeat_at_the_capped_gap_until_the_horizon() {
        let t0 = Timestamp::SIM_EPOCH;
        let e = entry(t0);
        let mut starts = Vec::new();
        let mut last = t0;
        while let Some(next) = POLICY.next_round_after(&e, last) {
            starts.push(next.since(t0).0);
            last = next;
        }
        assert_eq!(
            starts,
            [1000, 3000, 7000, 11_000, 15_000, 19_000],
            "doubling to the 4000 gap, then every 4000 until 20000"
        );
        assert_eq!(POLICY.gap_max(), DurationMs(4000));
        assert_eq!(POLICY.rounds_within_horizon() as usize, starts.len());
    }

    #[test]
    fn an_entry_last_published_late_still_has_a_round_within_one_gap() {
        let t0 = Timestamp::SIM_EPOCH;
        let e = entry(t0);
        for at in [7_000, 9_999, 12_345, 15_000] {
            let last = t0.plus(DurationMs(at));
            let next = POLICY.next_round_after(&e, last).expect("a round is left");
            assert!(
                next > last && next.since(last) <= POLICY.gap_max(),
                "after {at}: {next:?}"
            );
        }
        assert_eq!(POLICY.next_round_after(&e, t0.plus(DurationMs(19_000))), None);
    }
}
