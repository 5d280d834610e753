//! What a run found wrong: a broken saga invariant from
//! `domain::invariants`, or one of the simulator's own checks of the
//! delivery rules and of liveness (DESIGN.md "Delivery and storage rules").

use std::fmt;

use purchase_saga::domain::invariants::Violation;

/// The simulator's own checks, beside the domain's invariants.
pub mod check {
    /// Every order terminal and every queue drained within the bound after
    /// healing.
    pub const LIVENESS: &str = "liveness";
    /// A consumer acknowledged an entry whose event its service had not
    /// committed as processed: "ack only after the store transaction
    /// commits".
    pub const ACK_AFTER_COMMIT: &str = "ack-only-after-commit";
    /// A relay recorded an outbox entry as published more times than it
    /// had handed it to the bus: "mark only after publish" (a crash between
    /// the two would lose the event).
    pub const MARK_AFTER_PUBLISH: &str = "mark-only-after-publish";
    /// A host's software failed (a panic in the runtime).
    pub const HOST_FAILED: &str = "host-failed";
    /// The state the safety checks kept up to date from each commit's rows
    /// differs from the store's at the end of the run: some row changed
    /// outside a `SimStore` transaction, so the checks saw a wrong state.
    pub const CHECKED_STATE: &str = "checked-state";
    /// The broker was handed an event that is no committed outbox row of
    /// its emitter: "state change and emitted events commit in one
    /// transaction", checked on every publish.
    pub const PUBLISH_FROM_OUTBOX: &str = "publish-from-outbox";
    /// An event was dead-lettered in a run that injected no poison: every
    /// event the simulator's services emit is good, so a dead letter is a
    /// good event given up on.
    pub const NO_DEAD_LETTER: &str = "no-dead-letter";
    /// One client request placed more than one order, or an order exists
    /// that no request asked for (a client re-sending after its crash must
    /// use the request's own order id; `client.rs`).
    pub const ONE_ORDER_PER_REQUEST: &str = "one-order-per-request";
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// The invariant's or check's name.
    pub check: String,
    /// The entity, e.g. `order order-7`.
    pub subject: String,
    pub detail: String,
}

impl Finding {
    pub fn new(check: &str, subject: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            subject: subject.into(),
            detail: detail.into(),
        }
    }
}

impl From<Violation> for Finding {
    fn from(v: Violation) -> Finding {
        Finding {
            check: v.invariant.name().to_string(),
            subject: v.subject,
            detail: v.detail,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.check, self.subject, self.detail)
    }
}
