//! Planted bugs, for proving that the simulator and the property tests catch
//! what they claim to (issue "Prove the checker").
//!
//! Compiled only with the `mutants` cargo feature: without it the
//! [`mutant!`](crate::mutant) checks are the constant `false` and this module
//! does not exist, so the production binary contains none of this code.
//! With it, a mutant is switched on per thread (each simulated or scheduled
//! run is single-threaded), so parallel runs can carry different mutants.

use std::cell::Cell;

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
}

impl Mutant {
    pub const ALL: [Mutant; 9] = [
        Mutant::SkipInboxDedupe,
        Mutant::AckBeforeCommit,
        Mutant::EmitOutsideTx,
        Mutant::NoTombstone,
        Mutant::CancelAtOrder,
        Mutant::AtMostOnceBus,
        Mutant::DoubleRefund,
        Mutant::GrantWithoutReservation,
        Mutant::UnlockedStockCheck,
    ];

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

/// The mutant active on the current thread.
pub fn active() -> Option<Mutant> {
    ACTIVE.with(Cell::get)
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
