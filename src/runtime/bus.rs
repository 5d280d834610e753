//! The bus port: at-least-once delivery with consumer groups, one group per
//! service, redelivery of unacknowledged entries and a dead-letter list.
//!
//! Adapters: `memory::MemoryBus` (tests and the seeded scheduler), the Redis
//! Streams bus of the production binary and the simulator's broker host. The
//! bus carries bytes: decoding is the consumer's, so a malformed entry can be
//! dead-lettered with its reason instead of being lost in the adapter.

use async_trait::async_trait;

use crate::domain::{Event, Service};

/// A bus operation that did not succeed. Always retryable: the entry stays
/// where it was (unpublished in the outbox, or pending in the group).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// One delivery of one bus entry to one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The bus's id of the entry (a stream id on Redis), opaque here.
    pub entry_id: String,
    /// 1 for the first delivery; counts redeliveries of an unacknowledged
    /// entry (XPENDING's delivery counter on Redis).
    pub attempt: u32,
    pub payload: Vec<u8>,
}

/// An entry moved aside, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub service: Service,
    pub entry_id: String,
    pub reason: String,
    pub payload: Vec<u8>,
}

/// A batch publish that failed part of the way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("publish failed after {published} of the batch: {error}")]
pub struct PartialPublish {
    /// The leading events of the batch known to be published.
    pub published: usize,
    pub error: BusError,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends the event to the stream of every service that subscribes to
    /// its type (none for the types nobody consumes).
    async fn publish(&self, event: &Event) -> Result<(), BusError>;

    /// Publishes `events` in order, as [`Bus::publish`] does each. An adapter
    /// with a round trip per command sends the batch in one (the Redis bus:
    /// one pipeline of XADDs); one without publishes one event at a time
    /// with [`publish_one_at_a_time`], which keeps the in-memory and
    /// simulated buses' semantics per event. No default body, so a wrapper
    /// cannot forget to forward it (`tests/architecture.rs`).
    ///
    /// On failure, [`PartialPublish::published`] counts the leading events
    /// known to be published; the others may or may not be (a duplicate
    /// the inboxes absorb, never a loss, once they are published again).
    async fn publish_batch(&self, events: &[&Event]) -> Result<(), PartialPublish>;

    /// Up to `max` deliveries for `consumer` of `service`'s group: entries
    /// whose delivery to a consumer was not acknowledged within the
    /// visibility timeout first (taken over from a crashed replica), then new
    /// ones. May wait a short while for entries to arrive.
    async fn receive(&self, service: Service, consumer: &str, max: usize) -> Result<Vec<Delivery>, BusError>;

    /// Acknowledges a delivery: the entry is done for `service`.
    async fn ack(&self, service: Service, entry_id: &str) -> Result<(), BusError>;

    /// Moves the entry to `service`'s dead-letter list with `reason`, and
    /// acknowledges it.
    async fn dead_letter(&self, service: Service, delivery: &Delivery, reason: &str) -> Result<(), BusError>;
}

/// [`Bus::publish_batch`] for a bus without a batched command: each event
/// with [`Bus::publish`] in turn, stopping at the first failure.
pub async fn publish_one_at_a_time<B: Bus + ?Sized>(
    bus: &B,
    events: &[&Event],
) -> Result<(), PartialPublish> {
    for (published, event) in events.iter().enumerate() {
        bus.publish(event)
            .await
            .map_err(|error| PartialPublish { published, error })?;
    }
    Ok(())
}
