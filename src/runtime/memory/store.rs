//! An in-memory store that refuses what Postgres refuses.
//!
//! - Read committed: a transaction sees committed rows and its own writes.
//! - `load_for_update` takes a row lock (also on an absent key, like a
//!   unique index does for a concurrent insert) held until commit or drop;
//!   others wait, up to a lock timeout, then conflict.
//! - `record_processed` locks the inbox key the same way, so two replicas
//!   handling the same event serialize and the second sees a duplicate.
//! - Writes are buffered and become visible at commit, all at once. A
//!   dropped transaction (abort, crashed task) leaves no trace.
//! - A write of a key this transaction did not lock, inserted by another
//!   transaction meanwhile, conflicts at commit (a unique violation).
//!
//! The simulator wraps it with latency and faults; its semantics stay these.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::domain::invariants::Snapshot;
use crate::domain::rows::OrderStatus;
use crate::domain::{Event, EventId, OrderId, Row, RowKey, Service, Timestamp};
use crate::runtime::store::{
    Mark, OutboxEntry, Pruned, RedrivePolicy, Retention, Store, StoreError, StoreResult, StoreTx,
};

/// What a transaction can lock.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum LockKey {
    Row(RowKey),
    Inbox(Service, EventId),
}

#[derive(Debug, Default)]
struct State {
    rows: BTreeMap<RowKey, Row>,
    inbox: BTreeMap<(Service, EventId), Timestamp>,
    outbox: BTreeMap<(Service, i64), OutboxEntry>,
    next_seq: i64,
    locks: BTreeMap<LockKey, u64>,
    next_tx: u64,
    commits: u64,
}

/// The shared state behind a [`MemoryStore`] and its transactions.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    unlocked: Notify,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    lock_timeout: Duration,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            shared: Arc::default(),
            lock_timeout: Duration::from_secs(5),
        }
    }

    /// A lock wait longer than this fails the transaction with a conflict
    /// (Postgres's `lock_timeout`).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> MemoryStore {
        self.lock_timeout = timeout;
        self
    }

    /// Writes rows directly, outside any transaction: seeding reference data.
    pub fn seed(&self, rows: impl IntoIterator<Item = Row>) {
        let mut state = self.shared.state.lock().expect("store mutex");
        for row in rows {
            state.rows.insert(row.key(), row);
        }
    }

    /// Committed transactions so far.
    pub fn commits(&self) -> u64 {
        self.shared.state.lock().expect("store mutex").commits
    }

    /// Open row or inbox locks (0 when no transaction is in flight).
    pub fn locks_held(&self) -> usize {
        self.shared.state.lock().expect("store mutex").locks.len()
    }

    /// Outbox size and inbox size of `service`.
    pub fn table_sizes(&self, service: Service) -> (usize, usize) {
        let state = self.shared.state.lock().expect("store mutex");
        let outbox = state.outbox.keys().filter(|(s, _)| *s == service).count();
        let inbox = state.inbox.keys().filter(|(s, _)| *s == service).count();
        (outbox, inbox)
    }

    /// Every outbox entry of every service, in (service, seq) order.
    pub fn outbox(&self) -> Vec<OutboxEntry> {
        self.shared
            .state
            .lock()
            .expect("store mutex")
            .outbox
            .values()
            .cloned()
            .collect()
    }

    /// The committed rows of every service, read synchronously: the
    /// simulator checks safety from inside its observer, between two polls.
    pub fn snapshot_now(&self) -> Snapshot {
        let state = self.shared.state.lock().expect("store mutex");
        Snapshot::from_rows(state.rows.values().cloned())
    }

    /// Whether `service` has committed `event_id` as processed: the
    /// simulator's "every published event reached every subscriber" check.
    pub fn inbox_contains(&self, service: Service, event_id: EventId) -> bool {
        let state = self.shared.state.lock().expect("store mutex");
        state.inbox.contains_key(&(service, event_id))
    }

    /// When `service` committed `event_id` as processed, if it has (the
    /// API's saga diagram).
    pub fn processed_at(&self, service: Service, event_id: EventId) -> Option<Timestamp> {
        let state = self.shared.state.lock().expect("store mutex");
        state.inbox.get(&(service, event_id)).copied()
    }
}

struct MemoryTx {
    shared: Arc<Shared>,
    id: u64,
    service: Service,
    lock_timeout: Duration,
    held: BTreeSet<LockKey>,
    writes: BTreeMap<RowKey, Row>,
    /// Event ids to record as processed, with the time they were.
    inbox: Vec<(EventId, Timestamp)>,
    outbox: Vec<(Event, Timestamp)>,
}

impl MemoryTx {
    async fn lock(&mut self, key: LockKey) -> StoreResult<()> {
        if self.held.contains(&key) {
            return Ok(());
        }
        let shared = self.shared.clone();
        let id = self.id;
        let wait = async {
            loop {
                let unlocked = shared.unlocked.notified();
                tokio::pin!(unlocked);
                unlocked.as_mut().enable();
                {
                    let mut state = shared.state.lock().expect("store mutex");
                    match state.locks.get(&key) {
                        None => {
                            state.locks.insert(key.clone(), id);
                            return;
                        }
                        Some(owner) => debug_assert_ne!(*owner, id, "held locks are tracked"),
                    }
                }
                unlocked.await;
            }
        };
        match tokio::time::timeout(self.lock_timeout, wait).await {
            Ok(()) => {
                self.held.insert(key);
                Ok(())
            }
            Err(_) => Err(StoreError::Conflict(format!(
                "lock timeout after {:?} on {key:?}",
                self.lock_timeout
            ))),
        }
    }

    fn release(&mut self, state: &mut State) {
        for key in std::mem::take(&mut self.held) {
            let owner = state.locks.remove(&key);
            debug_assert_eq!(
                owner,
                Some(self.id),
                "released a lock this transaction did not hold"
            );
        }
    }

    fn read(&self, key: &RowKey) -> Option<Row> {
        if let Some(row) = self.writes.get(key) {
            return Some(row.clone());
        }
        self.shared
            .state
            .lock()
            .expect("store mutex")
            .rows
            .get(key)
            .cloned()
    }
}

impl Drop for MemoryTx {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        // Rollback (abort, error, or the owning task was dropped by a crash).
        let shared = self.shared.clone();
        let mut state = shared.state.lock().expect("store mutex");
        self.release(&mut state);
        drop(state);
        shared.unlocked.notify_waiters();
    }
}

#[async_trait]
impl StoreTx for MemoryTx {
    async fn record_processed(&mut self, event_id: EventId, now: Timestamp) -> StoreResult<bool> {
        self.lock(LockKey::Inbox(self.service, event_id)).await?;
        let seen = self
            .shared
            .state
            .lock()
            .expect("store mutex")
            .inbox
            .contains_key(&(self.service, event_id));
        if seen || self.inbox.iter().any(|(id, _)| *id == event_id) {
            return Ok(false);
        }
        self.inbox.push((event_id, now));
        Ok(true)
    }

    async fn load_for_update(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        assert_eq!(key.owner(), self.service, "a service reads only its own rows");
        self.lock(LockKey::Row(key.clone())).await?;
        Ok(self.read(key))
    }

    async fn load(&mut self, key: &RowKey) -> StoreResult<Option<Row>> {
        Ok(self.read(key))
    }

    async fn save(&mut self, row: &Row) -> StoreResult<()> {
        let key = row.key();
        assert_eq!(key.owner(), self.service, "a service writes only its own rows");
        self.writes.insert(key, row.clone());
        Ok(())
    }

    async fn enqueue(&mut self, event: &Event, now: Timestamp) -> StoreResult<()> {
        assert_eq!(
            event.emitter(),
            self.service,
            "a service enqueues only its own events"
        );
        self.outbox.push((event.clone(), now));
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        let shared = self.shared.clone();
        let mut state = shared.state.lock().expect("store mutex");
        // An unlocked write of a key another open transaction holds: a
        // unique violation or a lock conflict on Postgres. (An unlocked
        // update of a row nobody holds silently wins: the lost update
        // Postgres allows too.)
        let contested = self.writes.keys().find(|key| {
            let lock = LockKey::Row((*key).clone());
            !self.held.contains(&lock) && state.locks.get(&lock).is_some_and(|owner| *owner != self.id)
        });
        if let Some(key) = contested.cloned() {
            self.release(&mut state);
            drop(state);
            shared.unlocked.notify_waiters();
            return Err(StoreError::Conflict(format!(
                "{key:?} is locked by another transaction"
            )));
        }
        for (key, row) in std::mem::take(&mut self.writes) {
            state.rows.insert(key, row);
        }
        for (id, at) in std::mem::take(&mut self.inbox) {
            let first = state.inbox.insert((self.service, id), at).is_none();
            assert!(
                first,
                "inbox id {id} committed twice: its lock should have prevented it"
            );
        }
        for (event, now) in std::mem::take(&mut self.outbox) {
            state.next_seq += 1;
            let seq = state.next_seq;
            state.outbox.insert(
                (self.service, seq),
                OutboxEntry {
                    seq,
                    event,
                    created_at: now,
                    published_count: 0,
                    last_published_at: None,
                    next_publish_at: None,
                },
            );
        }
        state.commits += 1;
        self.release(&mut state);
        drop(state);
        shared.unlocked.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn begin(&self, service: Service) -> StoreResult<Box<dyn StoreTx>> {
        let id = {
            let mut state = self.shared.state.lock().expect("store mutex");
            state.next_tx += 1;
            state.next_tx
        };
        Ok(Box::new(MemoryTx {
            shared: self.shared.clone(),
            id,
            service,
            lock_timeout: self.lock_timeout,
            held: BTreeSet::new(),
            writes: BTreeMap::new(),
            inbox: Vec::new(),
            outbox: Vec::new(),
        }))
    }

    async fn outbox_due(
        &self,
        service: Service,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let state = self.shared.state.lock().expect("store mutex");
        let entries = || {
            state
                .outbox
                .range((service, i64::MIN)..=(service, i64::MAX))
                .map(|(_, e)| e)
        };
        let fresh = entries().filter(|e| e.last_published_at.is_none());
        let redrive = entries().filter(|e| e.next_publish_at.is_some_and(|at| at <= now));
        Ok(fresh.chain(redrive).take(limit).cloned().collect())
    }

    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()> {
        let mut state = self.shared.state.lock().expect("store mutex");
        for mark in marks {
            if let Some(entry) = state.outbox.get_mut(&(service, mark.seq)) {
                entry.published_count += 1;
                entry.last_published_at = Some(now);
                entry.next_publish_at = mark.next_publish_at;
            }
        }
        Ok(())
    }

    async fn orders_past_deadline(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<OrderId>> {
        let state = self.shared.state.lock().expect("store mutex");
        Ok(state
            .rows
            .values()
            .filter_map(|row| match row {
                Row::Order(o)
                    if o.status == OrderStatus::Pending && !o.deadline_signalled && o.deadline_at <= now =>
                {
                    Some(o.order_id.clone())
                }
                _ => None,
            })
            .take(limit)
            .collect())
    }

    async fn prune(
        &self,
        service: Service,
        now: Timestamp,
        retention: Retention,
        policy: RedrivePolicy,
    ) -> StoreResult<Pruned> {
        let mut state = self.shared.state.lock().expect("store mutex");
        let expired_outbox: Vec<(Service, i64)> = state
            .outbox
            .range((service, i64::MIN)..=(service, i64::MAX))
            .filter(|(_, e)| {
                e.published_count > 0 && now.since(e.created_at) >= policy.horizon.max(retention.outbox)
            })
            .map(|(k, _)| *k)
            .take(retention.batch)
            .collect();
        for key in &expired_outbox {
            state.outbox.remove(key);
        }
        let expired_inbox: Vec<(Service, EventId)> = state
            .inbox
            .iter()
            .filter(|((s, _), at)| *s == service && now.since(**at) >= retention.inbox)
            .map(|(k, _)| *k)
            .take(retention.batch)
            .collect();
        for key in &expired_inbox {
            state.inbox.remove(key);
        }
        Ok(Pruned {
            inbox: expired_inbox.len() as u64,
            outbox: expired_outbox.len() as u64,
        })
    }

    async fn snapshot(&self) -> StoreResult<Snapshot> {
        Ok(self.snapshot_now())
    }
}
