//! What the hosts and the driver of one run share: the fault plan and its
//! random source, the fault counters, the trace, the crash requests of
//! armed crash points, the safety violations seen so far, and what the
//! delivery checks compare with (what the broker received, inbox ids the
//! pruners deleted, the relays' leases).
//!
//! One run is one thread: every draw from [`World::rng`] happens in an
//! order fixed by turmoil's host order and the seed, which is what makes a
//! replay identical. Nothing here iterates a hash-ordered collection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use purchase_saga::domain::invariants::{
    check_safety, check_transition, CompensationLedger, Snapshot, Violation,
};
use purchase_saga::domain::{Event, EventId, Row, Service, Timestamp};
use purchase_saga::runtime::memory::MemoryStore;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::clock::SimClock;
use crate::faults::{CrashPoint, FaultKind, FaultPlan, Replica, Steer};
use crate::finding::Finding;

/// One line of the trace, with what the Mermaid diagram needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    pub at_ms: i64,
    pub kind: EntryKind,
    /// The rendered line (without the time).
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// The client placed an order.
    Place { order: String },
    /// A service handed an event to the bus.
    Publish {
        from: Service,
        type_name: String,
        order: String,
    },
    /// A consumer handled a delivery; `note` says if it was not applied.
    Delivery {
        from: Option<Service>,
        to: Service,
        type_name: String,
        order: String,
        note: Option<String>,
    },
    /// A fault, at a service (a replica) or at the bus.
    Fault { kind: FaultKind, at: Option<Service> },
    /// The driver's own events: heal, restart, repair.
    Driver { at: Option<Service> },
}

/// See the module docs.
pub struct World {
    pub plan: FaultPlan,
    pub store: MemoryStore,
    pub clock: SimClock,
    rng: Mutex<ChaCha8Rng>,
    healed: AtomicBool,
    counts: Mutex<BTreeMap<FaultKind, u64>>,
    trace: Mutex<Vec<TraceEntry>>,
    armed: Mutex<BTreeMap<Replica, (CrashPoint, u64)>>,
    crash_requests: Mutex<BTreeMap<Replica, (CrashPoint, u64)>>,
    open_tx: Mutex<BTreeMap<Replica, u32>>,
    violations: Mutex<Vec<(i64, Finding)>>,
    /// The committed state as of the last safety check, kept up to date
    /// from the rows each commit wrote (see [`World::check_commit`]).
    last: Mutex<Snapshot>,
    /// Rows written by transactions that committed since the last check,
    /// in commit order.
    committed: Mutex<Vec<Row>>,
    /// Publish requests the broker received for each event, by emitter:
    /// what the "mark after publish" check compares marks with (the
    /// broker's own count, not the relay's report of what it sent).
    received: Mutex<BTreeMap<(Service, EventId), u32>>,
    /// Inbox ids the pruners deleted, by service: an ack of such an event
    /// follows a commit that is no longer in the inbox.
    inbox_pruned: Mutex<BTreeSet<(Service, EventId)>>,
    /// The lease end of each outbox entry a relay holds, by (replica,
    /// service, seq), on the relay's own clock: a mark after it counts
    /// [`FaultKind::LeaseEndedMidPublish`].
    leases: Mutex<BTreeMap<(Replica, Service, i64), Timestamp>>,
    /// Whether the [`FaultKind::LeaseEndedMidPublish`] steer has stalled
    /// its one mark.
    mark_stalled: AtomicBool,
    /// Every outbox row ever committed, by (emitter, event id), for the
    /// publish check; kept after the store prunes the row.
    outbox_committed: Mutex<BTreeSet<(Service, EventId)>>,
    /// Compensations counted from committed outbox rows.
    compensations: Mutex<CompensationLedger>,
    pub client_done: AtomicBool,
    /// The runtime's `deliveries_max` in this run (the broker's ack steer
    /// and the `applied-past-limit` count need it).
    pub deliveries_max: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("world mutex: a host panicked while holding it")
}

impl World {
    pub fn new(
        plan: FaultPlan,
        store: MemoryStore,
        clock: SimClock,
        rng: ChaCha8Rng,
        opening: Snapshot,
        deliveries_max: u32,
    ) -> World {
        World {
            plan,
            store,
            clock,
            rng: Mutex::new(rng),
            healed: AtomicBool::new(false),
            counts: Mutex::default(),
            trace: Mutex::default(),
            armed: Mutex::default(),
            crash_requests: Mutex::default(),
            open_tx: Mutex::default(),
            violations: Mutex::default(),
            last: Mutex::new(opening),
            committed: Mutex::default(),
            received: Mutex::default(),
            inbox_pruned: Mutex::default(),
            leases: Mutex::default(),
            mark_stalled: AtomicBool::new(false),
            outbox_committed: Mutex::default(),
            compensations: Mutex::default(),
            client_done: AtomicBool::new(false),
            deliveries_max,
        }
    }

    pub fn healed(&self) -> bool {
        self.healed.load(Ordering::SeqCst)
    }

    /// Ends every fault: no more draws, armed crash points disarmed.
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
        lock(&self.armed).clear();
    }

    /// Whether a fault with `per_mille` strikes now. Draws nothing when the
    /// fault is off, so turning one kind off leaves the others' draws alone
    /// only up to the first draw it skipped (plans are compared whole).
    pub fn strikes(&self, per_mille: u32) -> bool {
        per_mille > 0 && !self.healed() && lock(&self.rng).random_range(0..1000) < per_mille
    }

    /// A draw in `0..=max` (0 without drawing when `max` is 0).
    pub fn up_to(&self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            lock(&self.rng).random_range(0..=max)
        }
    }

    /// Extra latency for one operation, counted as a latency fault.
    pub fn jitter_ms(&self) -> u64 {
        if self.healed() {
            return 0;
        }
        let ms = self.up_to(self.plan.jitter_ms_max);
        if ms > 0 {
            self.count(FaultKind::Latency);
        }
        ms
    }

    pub fn count(&self, kind: FaultKind) {
        *lock(&self.counts).entry(kind).or_insert(0) += 1;
    }

    pub fn counts(&self) -> BTreeMap<FaultKind, u64> {
        lock(&self.counts).clone()
    }

    pub fn log(&self, kind: EntryKind, text: String) {
        let at_ms = self.clock.elapsed_ms();
        lock(&self.trace).push(TraceEntry { at_ms, kind, text });
    }

    /// A fault that happened: counted and traced.
    pub fn fault(&self, kind: FaultKind, at: Option<Service>, detail: String) {
        self.count(kind);
        self.log(EntryKind::Fault { kind, at }, format!("!! {kind}: {detail}"));
    }

    pub fn trace(&self) -> Vec<TraceEntry> {
        lock(&self.trace).clone()
    }

    pub fn arm(&self, replica: Replica, point: CrashPoint, down_ms: u64) {
        lock(&self.armed).insert(replica, (point, down_ms));
    }

    /// If `replica` is armed at `point`, disarms it and records the crash
    /// request; the caller then waits forever for the driver to crash it.
    pub fn fire(&self, replica: Replica, point: CrashPoint) -> bool {
        let mut armed = lock(&self.armed);
        if armed.get(&replica).map(|a| a.0) != Some(point) || self.healed() {
            return false;
        }
        let (point, down_ms) = armed.remove(&replica).expect("checked above");
        lock(&self.crash_requests).insert(replica, (point, down_ms));
        true
    }

    /// Crash requests since the last call: replica, point, downtime.
    pub fn take_crash_requests(&self) -> Vec<(Replica, CrashPoint, u64)> {
        std::mem::take(&mut *lock(&self.crash_requests))
            .into_iter()
            .map(|(r, (point, down_ms))| (r, point, down_ms))
            .collect()
    }

    pub fn tx_opened(&self, replica: Option<Replica>) {
        if let Some(r) = replica {
            *lock(&self.open_tx).entry(r).or_insert(0) += 1;
        }
    }

    pub fn tx_closed(&self, replica: Option<Replica>) {
        if let Some(r) = replica {
            let mut open = lock(&self.open_tx);
            let n = open.get_mut(&r).expect("a closed transaction was opened");
            assert!(*n > 0, "more transactions closed than opened on {r}");
            *n -= 1;
        }
    }

    pub fn open_tx(&self, replica: Replica) -> u32 {
        lock(&self.open_tx).get(&replica).copied().unwrap_or(0)
    }

    /// Called by `SimStore` when a transaction committed: the rows it wrote
    /// (in write order; the store keeps the last write of a key).
    pub fn rows_committed(&self, rows: Vec<Row>) {
        lock(&self.committed).extend(rows);
    }

    /// Safety after a commit: the invariants over the committed state, and
    /// the transition from the state after the previous commit. The first
    /// violation per (invariant, subject) is kept.
    ///
    /// The committed state is not copied out of the store: the snapshot of
    /// the previous check is brought up to date with the rows committed
    /// since (every row write goes through a `SimStore` transaction; `run`
    /// compares the result with the store's own state at the end of the
    /// run). `check_safety` runs over the whole of it, as before;
    /// `check_transition` over the rows that changed, the only ones whose
    /// before and after can differ (rows are never deleted).
    pub fn check_commit(&self) {
        let rows = std::mem::take(&mut *lock(&self.committed));
        let found = check_committed_rows(&mut lock(&self.last), rows);
        for v in found {
            self.found(v.into());
        }
    }

    /// The committed state as the safety checks saw it, with any rows
    /// committed since the last check applied.
    pub fn checked_state(&self) -> Snapshot {
        let rows = std::mem::take(&mut *lock(&self.committed));
        let mut last = lock(&self.last);
        for row in rows {
            last.insert(row);
        }
        last.clone()
    }

    /// Records a finding; the first per (check, subject) is kept.
    pub fn found(&self, finding: Finding) {
        let at = self.clock.elapsed_ms();
        let mut seen = lock(&self.violations);
        if seen
            .iter()
            .any(|(_, s)| s.check == finding.check && s.subject == finding.subject)
        {
            return;
        }
        seen.push((at, finding.clone()));
        drop(seen);
        self.log(EntryKind::Driver { at: None }, format!("VIOLATION {finding}"));
    }

    /// The broker received a publish of `event` (emitted by `service`).
    pub fn received(&self, service: Service, event: EventId) {
        *lock(&self.received).entry((service, event)).or_default() += 1;
    }

    /// Publishes of `event` (emitted by `service`) the broker received.
    pub fn receptions(&self, service: Service, event: EventId) -> u32 {
        lock(&self.received).get(&(service, event)).copied().unwrap_or(0)
    }

    /// A pruner deleted `event` from `service`'s inbox.
    pub fn inbox_pruned(&self, service: Service, event: EventId) {
        lock(&self.inbox_pruned).insert((service, event));
    }

    /// Whether `service` committed `event` as processed at some point: in
    /// its inbox now, or pruned from it.
    pub fn ever_processed(&self, service: Service, event: EventId) -> bool {
        self.store.inbox_contains(service, event) || lock(&self.inbox_pruned).contains(&(service, event))
    }

    /// The steer of this run, if it is `state` and due at `now_ms`.
    pub fn steered(&self, state: FaultKind, now_ms: i64) -> Option<Steer> {
        self.plan
            .steer
            .filter(|s| s.state == state && now_ms >= i64::try_from(s.at_ms).unwrap_or(i64::MAX))
    }

    /// `replica`'s relay claimed `seqs` of `service` until `lease_end`.
    pub fn leased(&self, replica: Replica, service: Service, seqs: &[i64], lease_end: Timestamp) {
        let mut leases = lock(&self.leases);
        for seq in seqs {
            leases.insert((replica, service, *seq), lease_end);
        }
    }

    /// `replica`'s relay marks `seqs` of `service` at `now` (its clock):
    /// how many of them it marks after the lease of its claim ended.
    pub fn marked_after_lease(
        &self,
        replica: Replica,
        service: Service,
        seqs: &[i64],
        now: Timestamp,
    ) -> u64 {
        let mut leases = lock(&self.leases);
        seqs.iter()
            .filter_map(|seq| leases.remove(&(replica, service, *seq)))
            .filter(|end| *end < now)
            .count() as u64
    }

    /// Whether a mark should stall now for the `lease-ended-mid-publish`
    /// steer (once per run).
    pub fn stall_mark(&self) -> bool {
        self.steered(FaultKind::LeaseEndedMidPublish, self.clock.elapsed_ms())
            .is_some()
            && !self.mark_stalled.swap(true, Ordering::SeqCst)
    }

    /// Called by `SimStore` when a transaction committed: the events it
    /// wrote to its outbox. Checks the compensations at once.
    pub fn outbox_committed(&self, events: &[Event]) {
        let mut found = Vec::new();
        {
            let mut committed = lock(&self.outbox_committed);
            let mut ledger = lock(&self.compensations);
            for event in events {
                committed.insert((event.emitter(), event.event_id));
                found.extend(ledger.record(event));
            }
        }
        for v in found {
            self.found(v.into());
        }
    }

    /// Whether `event` is a committed outbox row of its emitter.
    pub fn is_committed_outbox(&self, event: &Event) -> bool {
        lock(&self.outbox_committed).contains(&(event.emitter(), event.event_id))
    }

    /// The compensation invariants at quiescence over the committed state.
    pub fn check_compensations(&self, snapshot: &Snapshot) -> Vec<Finding> {
        lock(&self.compensations)
            .check_quiescent(snapshot)
            .into_iter()
            .map(Finding::from)
            .collect()
    }

    pub fn violations(&self) -> Vec<(i64, Finding)> {
        lock(&self.violations).clone()
    }
}

/// The safety checks of one commit (or of the commits since the last
/// check, in commit order): `rows` applied to `last`, the committed state
/// before them, then `check_safety` over the whole of it and
/// `check_transition` over the rows that changed, the only ones whose
/// before and after can differ (rows are never deleted). Shared by the
/// simulator ([`World::check_commit`]) and torture (`torture::witness`).
pub fn check_committed_rows(last: &mut Snapshot, rows: Vec<Row>) -> Vec<Violation> {
    let (mut before, mut after) = (Snapshot::default(), Snapshot::default());
    for row in rows {
        match &row {
            Row::Order(o) => {
                if let Some(old) = last.orders.get(&o.order_id) {
                    before
                        .orders
                        .entry(o.order_id.clone())
                        .or_insert_with(|| old.clone());
                }
                after.orders.insert(o.order_id.clone(), o.clone());
            }
            Row::Payment(p) => {
                if let Some(old) = last.payments.get(&p.order_id) {
                    before
                        .payments
                        .entry(p.order_id.clone())
                        .or_insert_with(|| old.clone());
                }
                after.payments.insert(p.order_id.clone(), p.clone());
            }
            _ => {}
        }
        last.insert(row);
    }
    let mut found = check_safety(last);
    found.extend(check_transition(&before, &after));
    found
}
