//! Planted bugs, for proving that the simulator and the property tests catch
//! what they claim to (issue "Prove the checker").
//!
//! Compiled only with the `mutants` cargo feature: without it the
//! [`mutant!`](crate::mutant) checks are the constant `false` and this module
//! does not exist, so the production binary contains none of this code.
//! With it, a mutant is switched on per thread (each simulated or scheduled
//! run is single-threaded), so parallel runs can carry different mutants.
//! Code that runs on several threads (a multi-threaded tokio runtime, the
//! production adapters under `saga-sim torture`) uses the process-wide
//! switch instead: [`activate_process`], or the environment variable
//! `PURCHASE_SAGA_MUTANT=<name>` read once. A thread's own switch wins.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A named planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutant {
    /// A redelivered event is applied again: the inbox check is skipped.
    SkipInboxDedupe,
    /// The bus entry is acknowledged before the store commits.
    AckBeforeCommit,
    /// Events are published directly, not through the outbox in the same
    /// transaction.
    EmitOutsideTx,
    /// A compensation for a never-reserved order records nothing, so a late
    /// forward event reserves for a dead order.
    NoTombstone,
    /// The deadline fails the order at Order instead of through Payment.
    CancelAtOrder,
    /// The bus never redelivers an unacknowledged entry (Pub/Sub).
    AtMostOnceBus,
    /// The balance is rolled back on every failure event, not once.
    DoubleRefund,
    /// Inventory adds the item on PAYMENT_PROCESSED without consuming the
    /// order's slot reservation.
    GrantWithoutReservation,
    /// Item reads stock without the row lock (lost update under races).
    UnlockedStockCheck,
    /// PgStore reads a row without `FOR UPDATE` (adapter).
    PgNoRowLock,
    /// PgStore's batched lock (`load_for_update_many`, one `SELECT` per
    /// table) reads its rows without `FOR UPDATE`; the single-row lock is
    /// right (adapter: only the batched statement, which torture did not
    /// run before issue 23, is wrong).
    PgBatchNoRowLock,
    /// RedisBus's claim asks XPENDING for as many entries as it claimed, in
    /// the claimed id range, for this consumer: an entry the consumer already
    /// held in that range fills the reply and a claimed one is dropped
    /// (adapter; the claim as it was before the fix).
    ClaimDropsEntries,
    /// RedisBus::trim trims by MINID past the oldest pending entry (adapter).
    TrimBelowPending,
    /// The relay marks entries published before it publishes them.
    RelayMarkBeforePublish,
    /// Re-drive stops after its first round.
    RedriveStopsEarly,
    /// Pruning deletes outbox entries inside the re-drive horizon and inbox
    /// ids inside their retention (adapter: PgStore's prune).
    PruneInsideHorizon,
    /// The pruner loop keeps inbox ids only as long as the first re-drive
    /// round, not past the last republish and redelivery: a redelivered
    /// event whose id was pruned is applied twice (runtime: caught by the
    /// simulator, which runs the pruner).
    PruneLiveInbox,
    /// User emits its PAYMENT_ROLLBACK twice (two outbox rows) for one
    /// refund: a compensation emitted twice.
    CompensateTwice,
    /// A consumer dead-letters an event whose transaction the store could
    /// not take (unavailable, pool timed out) instead of leaving it for
    /// redelivery.
    DeadLetterGoodEvent,
    /// User refunds one less than it held.
    RefundWrongAmount,
    /// Batched apply: when a batch's transaction fails, its deliveries are
    /// acknowledged before the fallback (one transaction per event) has
    /// committed them, or whether it can.
    BatchAcksUncommitted,
    /// The simulator's bus, on NOGROUP, does not forget the group it knew
    /// and create it again (as `RedisBus::receive` does): after the broker
    /// lost its state the service never receives again (planted in
    /// `SimBus`, whose receive mirrors `RedisBus::receive` step for step;
    /// caught only with the `broker-loss` fault).
    NoGroupRecreate,
    /// The simulator's client, restarted after a crash, re-sends a request
    /// it cannot prove was answered under a fresh order id instead of the
    /// request's own: one request, two orders (caught only with the
    /// `client-crash` fault).
    ClientRetryNewId,
    /// The single-row transaction records the event id in the inbox, finds
    /// it already there, and applies the step anyway: a duplicate applied
    /// twice with the inbox looking right (caught by an effect check: a
    /// notification sent twice, money or stock moved twice).
    ApplyRecordedDuplicate,
    /// As [`Mutant::ApplyRecordedDuplicate`], in batched apply: the batch's
    /// ids are recorded with `record_processed_many` and every event is
    /// applied whatever the inbox answered.
    BatchApplyRecordedDuplicate,
    /// A consumer dead-letters an entry past `deliveries_max` without
    /// asking the inbox, so an event that was applied (its acks lost) is
    /// given up on as if it never was (caught only when a run reaches that
    /// state: the `applied-past-limit` steering).
    PastLimitDeadLettersApplied,
    /// Send on commit publishes a step's events before its transaction
    /// commits (caught where an event reaches the bus: it is no committed
    /// outbox row yet, and stays one with no state behind it if the commit
    /// fails).
    PublishBeforeCommit,
    /// Send on commit marks a step's events published without publishing
    /// them (caught by "mark only after publish").
    MarkWithoutPublish,
}

impl Mutant {
    pub const ALL: [Mutant; 28] = [
        Mutant::SkipInboxDedupe,
        Mutant::AckBeforeCommit,
        Mutant::EmitOutsideTx,
        Mutant::NoTombstone,
        Mutant::CancelAtOrder,
        Mutant::AtMostOnceBus,
        Mutant::DoubleRefund,
        Mutant::GrantWithoutReservation,
        Mutant::UnlockedStockCheck,
        Mutant::PgNoRowLock,
        Mutant::PgBatchNoRowLock,
        Mutant::ClaimDropsEntries,
        Mutant::TrimBelowPending,
        Mutant::RelayMarkBeforePublish,
        Mutant::RedriveStopsEarly,
        Mutant::PruneInsideHorizon,
        Mutant::PruneLiveInbox,
        Mutant::CompensateTwice,
        Mutant::DeadLetterGoodEvent,
        Mutant::RefundWrongAmount,
        Mutant::BatchAcksUncommitted,
        Mutant::NoGroupRecreate,
        Mutant::ClientRetryNewId,
        Mutant::ApplyRecordedDuplicate,
        Mutant::BatchApplyRecordedDuplicate,
        Mutant::PastLimitDeadLettersApplied,
        Mutant::PublishBeforeCommit,
        Mutant::MarkWithoutPublish,
    ];

    /// Whether the bug lives in a production adapter (PostgreSQL or Redis
    /// code), which the simulator does not run: torture and the
    /// differential tests are the engines that can see it.
    pub fn in_adapter(self) -> bool {
        matches!(
            self,
            Mutant::PgNoRowLock
                | Mutant::PgBatchNoRowLock
                | Mutant::ClaimDropsEntries
                | Mutant::TrimBelowPending
                | Mutant::PruneInsideHorizon
        )
    }

    /// Whether the simulator's hunt includes it: planted in code the
    /// simulator runs, where one of its checks sees it (the relay's two by
    /// the "mark only after publish" check and by liveness).
    pub fn simulated(self) -> bool {
        !self.in_adapter()
    }

    /// The switch's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::SkipInboxDedupe => "skip-inbox-dedupe",
            Mutant::AckBeforeCommit => "ack-before-commit",
            Mutant::EmitOutsideTx => "emit-outside-tx",
            Mutant::NoTombstone => "no-tombstone",
            Mutant::CancelAtOrder => "cancel-at-order",
            Mutant::AtMostOnceBus => "at-most-once-bus",
            Mutant::DoubleRefund => "double-refund",
            Mutant::GrantWithoutReservation => "grant-without-reservation",
            Mutant::UnlockedStockCheck => "unlocked-stock-check",
            Mutant::PgNoRowLock => "pg-no-row-lock",
            Mutant::PgBatchNoRowLock => "pg-batch-no-row-lock",
            Mutant::ClaimDropsEntries => "claim-drops-entries",
            Mutant::TrimBelowPending => "trim-below-pending",
            Mutant::RelayMarkBeforePublish => "relay-mark-before-publish",
            Mutant::RedriveStopsEarly => "redrive-stops-early",
            Mutant::PruneInsideHorizon => "prune-inside-horizon",
            Mutant::PruneLiveInbox => "prune-live-inbox",
            Mutant::CompensateTwice => "compensate-twice",
            Mutant::DeadLetterGoodEvent => "dead-letter-good-event",
            Mutant::RefundWrongAmount => "refund-wrong-amount",
            Mutant::BatchAcksUncommitted => "batch-acks-uncommitted",
            Mutant::NoGroupRecreate => "no-group-recreate",
            Mutant::ClientRetryNewId => "client-retry-new-id",
            Mutant::ApplyRecordedDuplicate => "apply-recorded-duplicate",
            Mutant::BatchApplyRecordedDuplicate => "batch-apply-recorded-duplicate",
            Mutant::PastLimitDeadLettersApplied => "past-limit-dead-letters-applied",
            Mutant::PublishBeforeCommit => "publish-before-commit",
            Mutant::MarkWithoutPublish => "mark-without-publish",
        }
    }

    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name)
    }
}

thread_local! {
    static ACTIVE: Cell<Option<Mutant>> = const { Cell::new(None) };
}

/// Switches `mutant` on (or all off) for the current thread.
pub fn activate(mutant: Option<Mutant>) {
    ACTIVE.with(|a| a.set(mutant));
}

/// The process-wide mutant: 0 for none, else its index in [`Mutant::ALL`] + 1.
static PROCESS: AtomicUsize = AtomicUsize::new(0);

/// `PURCHASE_SAGA_MUTANT`, read once; an unknown name is a panic, not a
/// silently clean run.
fn from_environment() -> Option<Mutant> {
    static FROM_ENV: OnceLock<Option<Mutant>> = OnceLock::new();
    *FROM_ENV.get_or_init(|| {
        let name = std::env::var("PURCHASE_SAGA_MUTANT").ok()?;
        let known: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
        Some(Mutant::from_name(&name).unwrap_or_else(|| {
            panic!(
                "PURCHASE_SAGA_MUTANT={name:?} names no mutant; known: {}",
                known.join(", ")
            )
        }))
    })
}

/// Switches `mutant` on (or all off) for every thread of the process that
/// has no switch of its own.
pub fn activate_process(mutant: Option<Mutant>) {
    let index = mutant.map_or(0, |m| {
        Mutant::ALL
            .iter()
            .position(|x| *x == m)
            .expect("every mutant is in ALL")
            + 1
    });
    PROCESS.store(index, Ordering::SeqCst);
}

/// The mutant active on the current thread: its own switch, else the
/// process's, else the environment's.
pub fn active() -> Option<Mutant> {
    ACTIVE
        .with(Cell::get)
        .or_else(|| match PROCESS.load(Ordering::SeqCst) {
            0 => from_environment(),
            i => Some(Mutant::ALL[i - 1]),
        })
}

/// Whether `mutant` is active on the current thread.
pub fn is(mutant: Mutant) -> bool {
    active() == Some(mutant)
}

/// Runs `f` with `mutant` active, restoring the previous state after.
pub fn with<T>(mutant: Option<Mutant>, f: impl FnOnce() -> T) -> T {
    let before = active();
    activate(mutant);
    let out = f();
    activate(before);
    out
}
