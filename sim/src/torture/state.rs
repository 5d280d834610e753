//! What one torture seed's tasks share: the plan's rates, the heal switch,
//! the randomness, armed crash points, partitions, fault counts, the trace
//! and the findings (each with the moment it was found).
//!
//! Torture is not deterministic (real servers, a multi-threaded runtime, the
//! wall clock): the seed fixes the scenario and the plan, not the
//! interleaving. Times are milliseconds since the seed started.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use purchase_saga::domain::invariants::Snapshot;
use purchase_saga::domain::{EventId, Service};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::faults::{CrashPoint, FaultKind, FaultPlan, Replica};
use crate::finding::Finding;

use super::coverage::StatementCoverage;
use super::plan::Kind;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An entry left pending for an XDEL (taken by torture's own consumer, or
/// a delivery swallowed before its consumer saw it): whose pending entry
/// it is and how often it had been delivered then. The XDEL deletes it
/// only if both are unchanged, i.e. no consumer was handed it since (see
/// `RedisTarget::xdel_if_untouched`).
#[derive(Debug, Clone)]
pub struct Swallowed {
    pub service: Service,
    pub entry_id: String,
    pub consumer: String,
    pub deliveries: u64,
}

/// See the module docs.
pub struct Shared {
    pub plan: FaultPlan,
    started: Instant,
    healed: AtomicBool,
    rng: Mutex<ChaCha8Rng>,
    lines: Mutex<Vec<String>>,
    findings: Mutex<Vec<(u64, Finding)>>,
    sim_counts: Mutex<BTreeMap<FaultKind, u64>>,
    kind_counts: Mutex<BTreeMap<Kind, u64>>,
    /// Effects of faults that are no fault kind of their own, by name
    /// (e.g. `partition-takeover`).
    effects: Mutex<BTreeMap<&'static str, u64>>,
    /// Crash points armed by the plan, per replica, with the downtime.
    armed: Mutex<BTreeMap<Replica, (CrashPoint, u64)>>,
    /// Replicas that reached their armed point and wait to be crashed, with
    /// their downtime (plan ms).
    crash_requests: Mutex<Vec<(Replica, u64)>>,
    /// Replicas cut off the bus.
    cut: Mutex<BTreeSet<Replica>>,
    /// Services whose next delivery is to be swallowed (left pending, never
    /// handled) for an XDEL.
    swallow: Mutex<BTreeSet<Service>>,
    /// A swallow waited too long for its service: any service's next
    /// delivery will do.
    swallow_widened: AtomicBool,
    swallowed: Mutex<Vec<Swallowed>>,
    open_tx: Mutex<BTreeMap<Replica, u32>>,
    /// Publishes per event id, by the relays (not the bus's duplicates).
    publishes: Mutex<BTreeMap<String, u32>>,
    /// Publishes the fault layer answered OK and dropped (`drop-publish`),
    /// per event: the mark check counts them as received.
    dropped: Mutex<BTreeMap<EventId, u32>>,
    /// What the checker looked at, by name (`commits`, `acks`, ...).
    checked: Mutex<BTreeMap<&'static str, u64>>,
    /// The last snapshot, taken after the replicas stopped.
    last: Mutex<Option<Snapshot>>,
    dead_letters: AtomicU64,
    /// The statements the replicas' adapters ran, split at the heal.
    pub statements: StatementCoverage,
}

impl Shared {
    pub fn new(plan: FaultPlan, rng: ChaCha8Rng) -> Shared {
        Shared {
            plan,
            started: Instant::now(),
            healed: AtomicBool::new(false),
            rng: Mutex::new(rng),
            lines: Mutex::default(),
            findings: Mutex::default(),
            sim_counts: Mutex::default(),
            kind_counts: Mutex::default(),
            effects: Mutex::default(),
            armed: Mutex::default(),
            crash_requests: Mutex::default(),
            cut: Mutex::default(),
            swallow: Mutex::default(),
            swallow_widened: AtomicBool::new(false),
            swallowed: Mutex::default(),
            open_tx: Mutex::default(),
            publishes: Mutex::default(),
            dropped: Mutex::default(),
            checked: Mutex::default(),
            last: Mutex::default(),
            dead_letters: AtomicU64::new(0),
            statements: StatementCoverage::default(),
        }
    }

    /// Milliseconds since the seed started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn healed(&self) -> bool {
        self.healed.load(Ordering::SeqCst)
    }

    /// No fault from here on.
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
        self.statements.heal();
        lock(&self.armed).clear();
        lock(&self.cut).clear();
        lock(&self.swallow).clear();
        self.log("== healed: no more faults ==");
    }

    /// Whether a fault of `per_mille` strikes now (never once healed).
    pub fn strikes(&self, per_mille: u32) -> bool {
        per_mille > 0 && !self.healed() && lock(&self.rng).random_range(0..1000) < per_mille
    }

    /// A uniform draw in `0..n` (n > 0).
    pub fn below(&self, n: u64) -> u64 {
        lock(&self.rng).random_range(0..n.max(1))
    }

    pub fn log(&self, text: impl AsRef<str>) {
        let line = format!("{:>7} {}", self.now_ms(), text.as_ref());
        lock(&self.lines).push(line);
    }

    pub fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }

    /// Records a finding (once per check and subject) and traces it.
    pub fn found(&self, finding: Finding) {
        let at = self.now_ms();
        {
            let mut all = lock(&self.findings);
            if all
                .iter()
                .any(|(_, f)| f.check == finding.check && f.subject == finding.subject)
            {
                return;
            }
            all.push((at, finding.clone()));
        }
        self.log(format!("VIOLATION {finding}"));
    }

    pub fn has_findings(&self) -> bool {
        !lock(&self.findings).is_empty()
    }

    /// Findings with the ms they were found at, in that order.
    pub fn findings(&self) -> Vec<(u64, Finding)> {
        let mut all = lock(&self.findings).clone();
        all.sort_by_key(|(at, _)| *at);
        all
    }

    pub fn count(&self, kind: FaultKind) {
        *lock(&self.sim_counts).entry(kind).or_insert(0) += 1;
    }

    pub fn count_kind(&self, kind: Kind) {
        *lock(&self.kind_counts).entry(kind).or_insert(0) += 1;
    }

    /// Counts and traces a fault of the simulator's kinds.
    pub fn fault(&self, kind: FaultKind, detail: impl AsRef<str>) {
        self.count(kind);
        self.log(format!("FAULT {kind}: {}", detail.as_ref()));
    }

    /// Counts and traces one of torture's own faults.
    pub fn fault_kind(&self, kind: Kind, detail: impl AsRef<str>) {
        self.count_kind(kind);
        self.log(format!("FAULT {kind}: {}", detail.as_ref()));
    }

    /// Counts and traces an effect of a fault (see `effects`).
    pub fn effect(&self, name: &'static str, detail: impl AsRef<str>) {
        *lock(&self.effects).entry(name).or_insert(0) += 1;
        self.log(format!("EFFECT {name}: {}", detail.as_ref()));
    }

    pub fn effects(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.effects).clone()
    }

    pub fn sim_counts(&self) -> BTreeMap<FaultKind, u64> {
        lock(&self.sim_counts).clone()
    }

    pub fn kind_counts(&self) -> BTreeMap<Kind, u64> {
        lock(&self.kind_counts).clone()
    }

    pub fn arm(&self, replica: Replica, point: CrashPoint, down_ms: u64) {
        if !self.healed() {
            lock(&self.armed).insert(replica, (point, down_ms));
        }
    }

    /// Whether `replica` is armed to crash at `point`; if so, disarms it
    /// and asks the driver to crash it.
    pub fn fire(&self, replica: Replica, point: CrashPoint) -> bool {
        let mut armed = lock(&self.armed);
        let Some(&(armed_at, down_ms)) = armed.get(&replica) else {
            return false;
        };
        if armed_at != point {
            return false;
        }
        armed.remove(&replica);
        lock(&self.crash_requests).push((replica, down_ms));
        true
    }

    pub fn take_crash_requests(&self) -> Vec<(Replica, u64)> {
        std::mem::take(&mut *lock(&self.crash_requests))
    }

    pub fn set_cut(&self, replica: Replica, cut: bool) {
        let mut all = lock(&self.cut);
        if cut && !self.healed() {
            all.insert(replica);
        } else {
            all.remove(&replica);
        }
    }

    pub fn is_cut(&self, replica: Replica) -> bool {
        lock(&self.cut).contains(&replica)
    }

    pub fn request_swallow(&self, service: Service) {
        lock(&self.swallow).insert(service);
    }

    /// The services still waiting to have a delivery swallowed.
    pub fn swallows_pending(&self) -> Vec<Service> {
        lock(&self.swallow).iter().copied().collect()
    }

    /// Takes back a swallow of `service` (its entry was found another
    /// way); returns whether one was waiting.
    pub fn cancel_swallow(&self, service: Service) -> bool {
        lock(&self.swallow).remove(&service)
    }

    /// Whether waiting swallows may take any service's delivery.
    pub fn swallows_widened(&self) -> bool {
        self.swallow_widened.load(Ordering::SeqCst)
    }

    /// Lets the waiting swallows take any service's next delivery (the
    /// driver widens them when their own service has had none for a
    /// while).
    pub fn widen_swallows(&self) {
        self.swallow_widened.store(true, Ordering::SeqCst);
    }

    /// Whether the next delivery of `service` is to be swallowed (once).
    pub fn take_swallow(&self, service: Service) -> bool {
        let mut waiting = lock(&self.swallow);
        if waiting.remove(&service) {
            return true;
        }
        if self.swallow_widened.load(Ordering::SeqCst) {
            if let Some(first) = waiting.iter().next().copied() {
                waiting.remove(&first);
                if waiting.is_empty() {
                    self.swallow_widened.store(false, Ordering::SeqCst);
                }
                return true;
            }
        }
        false
    }

    /// Whether an xdel is under way: a swallow waiting for a delivery, or
    /// an entry swallowed or taken and not yet deleted.
    pub fn xdel_waiting(&self) -> bool {
        !lock(&self.swallow).is_empty() || !lock(&self.swallowed).is_empty()
    }

    pub fn swallowed(&self, entry: Swallowed) {
        lock(&self.swallowed).push(entry);
    }

    pub fn take_swallowed(&self) -> Vec<Swallowed> {
        std::mem::take(&mut *lock(&self.swallowed))
    }

    pub fn tx_opened(&self, replica: Option<Replica>) {
        if let Some(r) = replica {
            *lock(&self.open_tx).entry(r).or_insert(0) += 1;
        }
    }

    pub fn tx_closed(&self, replica: Option<Replica>) {
        if let Some(r) = replica {
            let mut open = lock(&self.open_tx);
            let n = open.entry(r).or_insert(0);
            *n = n.saturating_sub(1);
        }
    }

    /// Open transactions of `replica`, reset to 0 (it is being crashed).
    pub fn take_open_tx(&self, replica: Replica) -> u32 {
        lock(&self.open_tx).remove(&replica).unwrap_or(0)
    }

    /// Counts a relay's publish of `event_id`; returns the count so far.
    pub fn published(&self, event_id: String) -> u32 {
        let mut all = lock(&self.publishes);
        let n = all.entry(event_id).or_insert(0);
        *n += 1;
        *n
    }

    /// The fault layer dropped a publish of `event_id` (and said OK).
    pub fn publish_dropped(&self, event_id: EventId) {
        *lock(&self.dropped).entry(event_id).or_insert(0) += 1;
    }

    /// Publishes of `event_id` the fault layer dropped.
    pub fn publishes_dropped(&self, event_id: EventId) -> u32 {
        lock(&self.dropped).get(&event_id).copied().unwrap_or(0)
    }

    /// Records how many of `what` the checker looked at.
    pub fn set_checked(&self, what: &'static str, n: u64) {
        lock(&self.checked).insert(what, n);
    }

    pub fn checked(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.checked).clone()
    }

    pub fn set_final(&self, last: Snapshot) {
        *lock(&self.last) = Some(last);
    }

    pub fn final_snapshot(&self) -> Option<Snapshot> {
        lock(&self.last).clone()
    }

    pub fn set_dead_letters(&self, n: u64) {
        self.dead_letters.store(n, Ordering::SeqCst);
    }

    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::SeqCst)
    }
}
