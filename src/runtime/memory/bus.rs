//! An in-memory bus with Redis Streams' consumer-group semantics, kept in
//! the one model of them ([`Streams`]): one stream per subscribing service,
//! entries pending until acknowledged, takeover after a visibility timeout
//! with a delivery counter, a dead-letter list. `receive` is
//! [`Streams::receive`], the model of `RedisBus::receive`; acknowledged
//! entries are trimmed as `RedisBus::trim` would.
//!
//! Besides the [`Bus`] port it offers the scheduler's levers: deliver a chosen
//! entry, duplicate one, lose one, lose everything.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::domain::service::subscribers;
use crate::domain::{DurationMs, Event, Service};
use crate::runtime::bus::{publish_one_at_a_time, Bus, BusError, DeadLetter, Delivery, PartialPublish};
use crate::runtime::Clock;

use super::streams::{Delivered, Streams};

/// The consumer name the levers deliver to.
const LEVER: &str = "scheduler";

#[derive(Debug, Default)]
struct State {
    streams: Streams<Arc<[u8]>>,
    published: u64,
}

/// See the module docs.
#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    visibility: DurationMs,
}

fn delivery(d: Delivered<Arc<[u8]>>) -> Delivery {
    Delivery {
        entry_id: d.id.to_string(),
        attempt: d.attempt,
        payload: d.payload.to_vec(),
    }
}

impl MemoryBus {
    /// A bus whose unacknowledged entries come back after `visibility`.
    pub fn new(clock: Arc<dyn Clock>, visibility: DurationMs) -> MemoryBus {
        MemoryBus {
            state: Arc::default(),
            clock,
            visibility,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("bus mutex")
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().0
    }

    /// Appends raw bytes to `service`'s stream (also: how tests inject
    /// malformed entries). Returns the entry id.
    pub fn inject(&self, service: Service, payload: &[u8]) -> u64 {
        self.lock().streams.append(service, payload.into())
    }

    /// Entries of `service` that a consumer could receive now: never
    /// delivered, or delivered and not acknowledged within the visibility
    /// timeout. In id order.
    pub fn deliverable(&self, service: Service) -> Vec<u64> {
        // Planted bug: at-most-once, like Redis Pub/Sub.
        let redeliver = !crate::mutant!(AtMostOnceBus);
        self.lock()
            .streams
            .deliverable(service, self.visibility.0, self.now_ms(), redeliver)
    }

    /// Every (service, entry) that is not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.lock().streams.unacknowledged()
    }

    /// Delivers entry `id` of `service`, as `receive` would.
    pub fn deliver(&self, service: Service, id: u64) -> Option<Delivery> {
        let now = self.now_ms();
        self.lock().streams.deliver(service, LEVER, id, now).map(delivery)
    }

    /// Appends a copy of entry `id` as a new entry: the broker delivering
    /// one message twice.
    pub fn duplicate(&self, service: Service, id: u64) -> Option<u64> {
        let mut state = self.lock();
        let payload = state.streams.payload(service, id)?.clone();
        Some(state.streams.append(service, payload))
    }

    /// Loses entry `id`: the broker dropping a message.
    pub fn lose(&self, service: Service, id: u64) -> bool {
        self.lock().streams.forget(service, id)
    }

    /// Loses everything: a broker restarted with nothing on disk.
    pub fn flush(&self) {
        self.lock().streams.lose_everything();
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock()
            .streams
            .all_dead_letters()
            .map(|(service, r)| DeadLetter {
                service,
                entry_id: r.entry_id.to_string(),
                reason: r.reason.clone(),
                payload: r.payload.to_vec(),
            })
            .collect()
    }

    /// Publishes so far (one per subscriber stream appended to).
    pub fn published(&self) -> u64 {
        self.lock().published
    }

    fn parse_id(entry_id: &str) -> u64 {
        entry_id
            .parse()
            .expect("memory bus entry ids are its own integers")
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let payload: Arc<[u8]> = event.encode().into_bytes().into();
        let mut state = self.lock();
        for service in subscribers(event.event_type()) {
            state.streams.append(service, payload.clone());
            state.published += 1;
        }
        Ok(())
    }

    async fn publish_batch(&self, events: &[&Event]) -> Result<(), PartialPublish> {
        publish_one_at_a_time(self, events).await
    }

    async fn receive(&self, service: Service, consumer: &str, max: usize) -> Result<Vec<Delivery>, BusError> {
        let now = self.now_ms();
        let mut state = self.lock();
        let batch = if crate::mutant!(AtMostOnceBus) {
            state.streams.read_new(service, consumer, max, now)
        } else {
            state
                .streams
                .receive(service, consumer, max, self.visibility.0, now, || {
                    Arc::from(&[][..])
                })
        };
        Ok(batch.into_iter().map(delivery).collect())
    }

    async fn ack(&self, service: Service, entry_id: &str) -> Result<(), BusError> {
        let id = Self::parse_id(entry_id);
        let mut state = self.lock();
        state.streams.ack(service, id);
        state.streams.trim(service);
        Ok(())
    }

    async fn dead_letter(&self, service: Service, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let id = Self::parse_id(&delivery.entry_id);
        let mut state = self.lock();
        state
            .streams
            .dead_letter(
                service,
                id,
                reason,
                delivery.payload.as_slice().into(),
                delivery.attempt,
            )
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        state.streams.trim(service);
        Ok(())
    }
}
