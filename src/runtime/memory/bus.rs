//! An in-memory bus with Redis Streams' consumer-group semantics: one stream
//! per subscribing service, entries pending until acknowledged, redelivery
//! after a visibility timeout with a delivery counter, a dead-letter list.
//!
//! Besides the [`Bus`] port it offers the scheduler's levers: deliver a chosen
//! entry, duplicate one, lose one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::domain::service::subscribers;
use crate::domain::{DurationMs, Event, Service, Timestamp};
use crate::runtime::bus::{Bus, BusError, DeadLetter, Delivery};
use crate::runtime::Clock;

#[derive(Debug, Clone)]
struct Entry {
    payload: Arc<[u8]>,
    deliveries: u32,
    /// Consumer and time of the last delivery, while unacknowledged.
    pending_since: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<Service, BTreeMap<u64, Entry>>,
    next_id: u64,
    dead: Vec<DeadLetter>,
    published: u64,
}

/// See the module docs.
#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    visibility: DurationMs,
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

    /// Appends raw bytes to `service`'s stream (also: how tests inject
    /// malformed entries). Returns the entry id.
    pub fn inject(&self, service: Service, payload: &[u8]) -> u64 {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.streams.entry(service).or_default().insert(
            id,
            Entry {
                payload: payload.into(),
                deliveries: 0,
                pending_since: None,
            },
        );
        id
    }

    /// Entries of `service` that a consumer could receive now: never
    /// delivered, or delivered and not acknowledged within the visibility
    /// timeout. In id order.
    pub fn deliverable(&self, service: Service) -> Vec<u64> {
        let now = self.clock.now();
        let state = self.lock();
        state
            .streams
            .get(&service)
            .map(|s| {
                s.iter()
                    .filter(|(_, e)| match e.pending_since {
                        None => true,
                        // Planted bug: at-most-once, like Redis Pub/Sub.
                        Some(_) if crate::mutant!(AtMostOnceBus) => false,
                        Some(t) => now.since(t) >= self.visibility,
                    })
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every (service, entry) that is not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.lock().streams.values().map(BTreeMap::len).sum()
    }

    /// Delivers entry `id` of `service`, as `receive` would.
    pub fn deliver(&self, service: Service, id: u64) -> Option<Delivery> {
        let now = self.clock.now();
        let mut state = self.lock();
        let entry = state.streams.get_mut(&service)?.get_mut(&id)?;
        entry.deliveries += 1;
        entry.pending_since = Some(now);
        Some(Delivery {
            entry_id: id.to_string(),
            attempt: entry.deliveries,
            payload: entry.payload.to_vec(),
        })
    }

    /// Appends a copy of entry `id` as a new entry: the broker delivering
    /// one message twice.
    pub fn duplicate(&self, service: Service, id: u64) -> Option<u64> {
        let payload = self.lock().streams.get(&service)?.get(&id)?.payload.clone();
        Some(self.inject(service, &payload))
    }

    /// Loses entry `id`: the broker dropping a message.
    pub fn lose(&self, service: Service, id: u64) -> bool {
        self.lock()
            .streams
            .get_mut(&service)
            .is_some_and(|s| s.remove(&id).is_some())
    }

    /// Loses everything: a broker restarted with nothing on disk.
    pub fn flush(&self) {
        self.lock().streams.clear();
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead.clone()
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
        let payload = event.encode();
        for service in subscribers(event.event_type()) {
            self.inject(service, payload.as_bytes());
            self.lock().published += 1;
        }
        Ok(())
    }

    async fn receive(
        &self,
        service: Service,
        _consumer: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let ids = self.deliverable(service);
        Ok(ids
            .into_iter()
            .take(max)
            .filter_map(|id| self.deliver(service, id))
            .collect())
    }

    async fn ack(&self, service: Service, entry_id: &str) -> Result<(), BusError> {
        let id = Self::parse_id(entry_id);
        if let Some(stream) = self.lock().streams.get_mut(&service) {
            stream.remove(&id);
        }
        Ok(())
    }

    async fn dead_letter(&self, service: Service, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let id = Self::parse_id(&delivery.entry_id);
        let mut state = self.lock();
        if let Some(stream) = state.streams.get_mut(&service) {
            stream.remove(&id);
        }
        state.dead.push(DeadLetter {
            service,
            entry_id: delivery.entry_id.clone(),
            reason: reason.to_string(),
            payload: delivery.payload.clone(),
        });
        Ok(())
    }
}
