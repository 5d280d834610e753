//! An in-memory store that refuses what Postgres refuses.
//!
//! - Read committed: a transaction sees committed rows and its own writes.
//! - `load_for_update` takes a row lock (also on an absent key, like a
//!   unique index does for a concurrent insert) held until commit or drop;
//!   others wait, up to a lock timeout, then conflict.
//! - `record_processed` of an id not committed yet locks the inbox key the
//!   same way, so two replicas handling the same event serialize and the
//!   second sees a duplicate; an id already committed is a duplicate at
//!   once, with no lock.
//! - Writes are buffered and become visible at commit, all at once. A
//!   dropped transaction (abort, crashed task) leaves no trace.
//! - A write of a key this transaction did not lock, inserted by another
//!   transaction meanwhile, conflicts at commit (a unique violation).
//!
//! The simulator wraps it with latency and faults; its semantics stay these.
//!
//! # Where this model differs from PostgreSQL, and why the runtime cannot tell
//!
//! `tests/store_model_vs_postgres.rs` runs generated concurrent schedules on
//! this store and on `PgStore` and requires the same waits, the same results
//! and the same committed rows, inbox and outbox, up to these differences
//! (each normalised there under its name):
//!
//! - **D1 absent key.** `load_for_update` of an absent key locks it here;
//!   Postgres has no row to lock, so a second locker reads `None` at once and
//!   one of the two INSERTs later fails with a unique violation (23505, a
//!   Conflict). The runtime sees a wait then the other's row here, a
//!   Conflict then a retry that reads the other's row there: the same end.
//! - **D2 unlocked write.** A `save` of a key this transaction did not lock
//!   is buffered here and fails the commit if another open transaction holds
//!   the key; Postgres's UPDATE or INSERT waits for the holder instead. The
//!   runtime never writes a row it did not lock (`transact` locks
//!   `participants::rows_needed` first; commands only read), so the schedules
//!   do not either.
//! - **D3 wake-up order.** Which waiter gets a released lock: first come for
//!   a Postgres row lock, any of them for an inbox id re-inserted after a
//!   rollback; here whichever waiting task runs first. Every order is a
//!   legal serialisation.
//! - **D4 deadlock.** Postgres's detector fails one waiter of a cycle after
//!   `deadlock_timeout` (40P01); this store has no detector and the waiters
//!   fail at the lock timeout. A Conflict either way, retried; the runtime
//!   locks in key order, so it deadlocks only with foreign writers.
//! - **D5 after an error.** Postgres aborts the transaction at its first
//!   error (later statements fail with 25P02); this store's stays usable.
//!   The runtime drops a transaction at its first error.
//! - **D6 outbox seq.** Postgres numbers entries per service (`bigserial`);
//!   this store with one counter for all services. Both number them when
//!   they are enqueued (so a transaction knows the seqs it publishes on
//!   commit), with gaps after rollbacks. A seq is only a handle for
//!   `mark_published` and an order; both keep each transaction's events in
//!   order, and concurrent transactions' events have no order to keep.
//! - **D7 prune batch.** When more rows are expired than a batch, this store
//!   deletes the lowest seq / event id first, Postgres any `batch` of them.
//!   Every pruned row is past its retention, and the sweeper prunes again.
//! - **D8 rollback on drop.** Here a dropped transaction's locks go at once;
//!   sqlx sends the ROLLBACK when the connection returns to its pool, on a
//!   spawned task, so Postgres frees them a round trip later: a latency, not
//!   an outcome.
//! - **D9 a call dropped while it waits** (a cancelled task): here the wait
//!   and the transaction end at once; the Postgres server is not told, so
//!   its backend keeps waiting, holding the transaction's other locks, until
//!   sqlx gets the statement's reply and rolls back or closes the
//!   connection. Only a crash or a shutdown drops a call in flight; the
//!   schedules do not (not exercised).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::domain::invariants::Snapshot;
use crate::domain::rows::OrderStatus;
use crate::domain::{DecodeError, DurationMs, Event, EventId, OrderId, Row, RowKey, Service, Timestamp};
use crate::runtime::store::{
    one_at_a_time, outbox_due_by_claim, Claimed, Mark, OutboxEntry, Pruned, Quarantined, RedrivePolicy,
    Retention, Store, StoreError, StoreResult, StoreTx,
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
    outbox: BTreeMap<(Service, i64), Slot>,
    next_seq: i64,
    locks: BTreeMap<LockKey, u64>,
    next_tx: u64,
    commits: u64,
}

/// An outbox row as the store holds it: like a row of the Postgres outbox,
/// its payload may not decode (a newer build wrote it), and it carries the
/// relay's claim and the quarantine of an undecodable payload.
#[derive(Debug, Clone)]
struct Slot {
    seq: i64,
    /// The decoded payload, or why it does not decode.
    event: Result<Event, String>,
    created_at: Timestamp,
    published_count: u32,
    last_published_at: Option<Timestamp>,
    next_publish_at: Option<Timestamp>,
    /// Held by a relay until then.
    claimed_until: Option<Timestamp>,
    /// Set aside for good, with the reason.
    quarantined: Option<String>,
    /// Written by a newer build (its `schemaVersion`): claimed once, given
    /// back, and skipped by this build from then on.
    newer: Option<u32>,
    /// Given back for a newer build.
    left_for_newer: bool,
}

impl Slot {
    fn new(seq: i64, event: Result<Event, String>, created_at: Timestamp) -> Slot {
        Slot {
            seq,
            event,
            created_at,
            published_count: 0,
            last_published_at: None,
            next_publish_at: None,
            claimed_until: None,
            quarantined: None,
            newer: None,
            left_for_newer: false,
        }
    }

    /// The entry, if its payload decodes.
    fn entry(&self) -> Option<OutboxEntry> {
        Some(OutboxEntry {
            seq: self.seq,
            event: self.event.as_ref().ok()?.clone(),
            created_at: self.created_at,
            published_count: self.published_count,
            last_published_at: self.last_published_at,
            next_publish_at: self.next_publish_at,
        })
    }

    /// Due at `now` and free to claim (Postgres: the claim's WHERE).
    fn fresh(&self, now: Timestamp) -> bool {
        self.last_published_at.is_none() && self.claimable(now)
    }

    fn redrive_due(&self, now: Timestamp) -> bool {
        self.next_publish_at.is_some_and(|at| at <= now) && self.claimable(now)
    }

    fn claimable(&self, now: Timestamp) -> bool {
        self.quarantined.is_none()
            && !self.left_for_newer
            && self.claimed_until.is_none_or(|until| until <= now)
    }
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

    /// Every outbox entry of every service, in (service, seq) order (rows
    /// that do not decode left out).
    pub fn outbox(&self) -> Vec<OutboxEntry> {
        self.shared
            .state
            .lock()
            .expect("store mutex")
            .outbox
            .values()
            .filter_map(Slot::entry)
            .collect()
    }

    /// `service`'s outbox entry `seq`, if it is there and decodes.
    pub fn outbox_entry(&self, service: Service, seq: i64) -> Option<OutboxEntry> {
        let state = self.shared.state.lock().expect("store mutex");
        state.outbox.get(&(service, seq)).and_then(Slot::entry)
    }

    /// Adds a raw payload to `service`'s outbox as committed, outside any
    /// transaction: what a build with another event schema may have written
    /// (the Postgres tests INSERT such a row). Returns its seq.
    pub fn enqueue_raw(&self, service: Service, payload: &[u8], now: Timestamp) -> i64 {
        let decoded = Event::decode(payload);
        let newer = decoded.as_ref().err().and_then(DecodeError::newer_schema_version);
        let event = decoded.map_err(|e| e.to_string());
        let mut state = self.shared.state.lock().expect("store mutex");
        state.next_seq += 1;
        let seq = state.next_seq;
        let mut slot = Slot::new(seq, event, now);
        slot.newer = newer;
        state.outbox.insert((service, seq), slot);
        seq
    }

    /// The reasons of `service`'s quarantined outbox rows, by seq.
    pub fn quarantined(&self, service: Service) -> Vec<(i64, String)> {
        let state = self.shared.state.lock().expect("store mutex");
        state
            .outbox
            .range((service, i64::MIN)..=(service, i64::MAX))
            .filter_map(|(_, slot)| Some((slot.seq, slot.quarantined.clone()?)))
            .collect()
    }

    /// The committed rows of every service, read synchronously: the
    /// simulator checks safety from inside its observer, between two polls.
    pub fn snapshot_now(&self) -> Snapshot {
        let state = self.shared.state.lock().expect("store mutex");
        Snapshot::from_rows(state.rows.values().cloned())
    }

    /// The event ids in `service`'s inbox, ascending (the simulator tells
    /// which ones a prune deleted).
    pub fn inbox_ids(&self, service: Service) -> Vec<EventId> {
        let state = self.shared.state.lock().expect("store mutex");
        state
            .inbox
            .range((service, EventId(uuid::Uuid::nil()))..)
            .take_while(|((s, _), _)| *s == service)
            .map(|((_, id), _)| *id)
            .collect()
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
    /// Enqueued rows: seq, event, created at, claimed until.
    outbox: Vec<(i64, Event, Timestamp, Option<Timestamp>)>,
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

    /// Releases one lock before the transaction ends.
    fn unlock(&mut self, key: &LockKey) {
        let held = self.held.remove(key);
        debug_assert!(held, "unlocked a lock this transaction did not hold");
        let owner = self.shared.state.lock().expect("store mutex").locks.remove(key);
        debug_assert_eq!(owner, Some(self.id), "the lock was this transaction's");
        self.shared.unlocked.notify_waiters();
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
        let committed = |tx: &Self| {
            tx.shared
                .state
                .lock()
                .expect("store mutex")
                .inbox
                .contains_key(&(tx.service, event_id))
        };
        // A committed id is a duplicate at once, and locks nothing: Postgres's
        // `INSERT .. ON CONFLICT DO NOTHING` waits only for an uncommitted
        // insert of the id.
        if self.inbox.iter().any(|(id, _)| *id == event_id) || committed(self) {
            return Ok(false);
        }
        let key = LockKey::Inbox(self.service, event_id);
        self.lock(key.clone()).await?;
        // The holder we waited for committed it: a duplicate, and the lock
        // goes at once, as other waiters on Postgres all see the committed
        // id together.
        if committed(self) {
            self.unlock(&key);
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
        // Numbered at the insert, as `bigserial` does (a rollback leaves a
        // gap), so the transaction knows the seqs it will publish.
        let seq = {
            let mut state = self.shared.state.lock().expect("store mutex");
            state.next_seq += 1;
            state.next_seq
        };
        self.outbox.push((seq, event.clone(), now, claimed_until));
        Ok(seq)
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
        for (seq, event, now, claimed_until) in std::mem::take(&mut self.outbox) {
            let mut slot = Slot::new(seq, Ok(event), now);
            slot.claimed_until = claimed_until;
            state.outbox.insert((self.service, seq), slot);
        }
        state.commits += 1;
        self.release(&mut state);
        drop(state);
        shared.unlocked.notify_waiters();
        Ok(())
    }

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
        outbox_due_by_claim(self, service, now, limit).await
    }

    async fn claim_due(
        &self,
        service: Service,
        now: Timestamp,
        lease: DurationMs,
        limit: usize,
    ) -> StoreResult<Claimed> {
        assert!(lease.0 >= 0, "a lease is not negative");
        let mut state = self.shared.state.lock().expect("store mutex");
        let slots = || {
            state
                .outbox
                .range((service, i64::MIN)..=(service, i64::MAX))
                .map(|(_, slot)| slot)
        };
        let fresh: Vec<i64> = slots()
            .filter(|s| s.fresh(now))
            .map(|s| s.seq)
            .take(limit)
            .collect();
        let mut redrive: Vec<(Timestamp, i64)> = slots()
            .filter(|s| s.redrive_due(now))
            .map(|s| (s.next_publish_at.expect("due re-drives have a time"), s.seq))
            .collect();
        redrive.sort_unstable();
        let due: Vec<i64> = fresh
            .into_iter()
            .chain(redrive.into_iter().map(|(_, seq)| seq))
            .take(limit)
            .collect();
        let mut claimed = Claimed::default();
        for seq in due {
            let slot = state
                .outbox
                .get_mut(&(service, seq))
                .expect("a due seq is in the outbox");
            match &slot.event {
                Ok(_) => {
                    slot.claimed_until = Some(now.plus(lease));
                    claimed.entries.push(slot.entry().expect("decodes"));
                }
                Err(_) if slot.newer.is_some() => {
                    let needs = slot.newer.expect("just checked");
                    slot.left_for_newer = true;
                    slot.claimed_until = None;
                    claimed.left_for_newer.push(Quarantined {
                        seq,
                        reason: format!(
                            "schema version {needs} is newer than this build reads ({})",
                            crate::domain::event::SCHEMA_VERSION
                        ),
                    });
                }
                Err(reason) => {
                    let reason = format!("undecodable event: {reason}");
                    slot.quarantined = Some(reason.clone());
                    slot.next_publish_at = None;
                    slot.claimed_until = None;
                    claimed.quarantined.push(Quarantined { seq, reason });
                }
            }
        }
        debug_assert!(
            claimed.entries.len() + claimed.quarantined.len() + claimed.left_for_newer.len() <= limit
        );
        Ok(claimed)
    }

    async fn mark_published(&self, service: Service, marks: &[Mark], now: Timestamp) -> StoreResult<()> {
        let mut state = self.shared.state.lock().expect("store mutex");
        for mark in marks {
            if let Some(slot) = state.outbox.get_mut(&(service, mark.seq)) {
                slot.published_count += 1;
                slot.last_published_at = Some(now);
                slot.next_publish_at = mark.next_publish_at;
                slot.claimed_until = None;
            }
        }
        Ok(())
    }

    async fn release(&self, service: Service, seqs: &[i64]) -> StoreResult<()> {
        let mut state = self.shared.state.lock().expect("store mutex");
        for seq in seqs {
            if let Some(slot) = state.outbox.get_mut(&(service, *seq)) {
                slot.claimed_until = None;
            }
        }
        Ok(())
    }

    async fn processed(&self, service: Service, event_id: EventId) -> StoreResult<bool> {
        Ok(self.inbox_contains(service, event_id))
    }

    async fn writable(&self, _: Service) -> StoreResult<()> {
        Ok(())
    }

    async fn overdue_sagas(&self, before: Timestamp) -> StoreResult<u64> {
        let state = self.shared.state.lock().expect("store mutex");
        Ok(state
            .rows
            .values()
            .filter(|row| matches!(row, Row::Order(o) if o.status == OrderStatus::Pending && o.deadline_at <= before))
            .count() as u64)
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
            .filter(|(_, slot)| {
                slot.published_count > 0 && now.since(slot.created_at) >= policy.horizon.max(retention.outbox)
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
