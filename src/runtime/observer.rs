//! What the runtime reports as it works: the simulator builds its trace and
//! checks invariants from it, production turns it into logs and metrics.

use crate::domain::{Event, EventId, Service};

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The step ran and committed; it emitted this many events.
    Applied { emitted: usize },
    /// The inbox had the event id: nothing changed.
    Duplicate,
    /// The step had nothing to do (its rows say the order is past it).
    Ignored,
    /// Not applied; left unacknowledged for redelivery.
    Retry { reason: String },
    /// Moved to the dead-letter list; the consumer went on.
    DeadLettered { reason: String },
}

impl Disposition {
    /// Whether the consumer acknowledges the entry.
    pub fn acknowledges(&self) -> bool {
        !matches!(self, Disposition::Retry { .. })
    }
}

/// One thing the runtime did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent<'a> {
    /// A consumer of `service` handled a delivery of `event` (None when the
    /// payload could not be decoded).
    Handled {
        service: Service,
        consumer: &'a str,
        event: Option<&'a Event>,
        attempt: u32,
        disposition: &'a Disposition,
        /// From taking up the delivery to its disposition (decode, the
        /// transaction with its conflict retries), before settling it on the
        /// bus. `tokio::time`, so simulated under turmoil.
        duration: std::time::Duration,
    },
    /// A transaction of `service` committed (after a delivery, a command or a
    /// deadline signal).
    Committed {
        service: Service,
        cause: Option<EventId>,
    },
    /// The relay of `service` handed an event to the bus (`republish` counts
    /// earlier publishes of the same outbox entry).
    Published {
        service: Service,
        event: &'a Event,
        republish: u32,
    },
    /// A relay of `service` woke because a commit rang its
    /// [`RelayWake`](super::relay::RelayWake) (not its idle poll) and ran a
    /// pass: what the wake is for, seen where it takes effect.
    RelayWoken { service: Service },
    /// A store conflict was retried.
    ConflictRetried { service: Service, attempt: u32 },
    /// The relay of `service` found outbox entry `seq` undecodable and the
    /// store set it aside for good: its event is never published, and an
    /// operator has to look (it stays in the outbox with the reason).
    Quarantined {
        service: Service,
        seq: i64,
        reason: &'a str,
    },
}

/// Receives [`RuntimeEvent`]s. Must not block: it runs inside the runtime's
/// loops.
pub trait Observer: Send + Sync {
    fn observe(&self, event: RuntimeEvent<'_>);
}

/// Observes nothing.
pub struct NoObserver;

impl Observer for NoObserver {
    fn observe(&self, _: RuntimeEvent<'_>) {}
}

/// Passes every event to each of its observers, in order: e.g. logs and
/// metrics.
pub struct Fanout(pub Vec<std::sync::Arc<dyn Observer>>);

impl Observer for Fanout {
    fn observe(&self, event: RuntimeEvent<'_>) {
        for observer in &self.0 {
            observer.observe(event.clone());
        }
    }
}
