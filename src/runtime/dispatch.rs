//! Send on commit (DESIGN.md "Send on commit"): the task that commits a
//! step publishes the events it just enqueued, right after the commit, with
//! one [`Bus::publish_batch`](super::Bus) (one pipelined round trip on
//! Redis), then records the publish with one
//! [`Store::mark_published`](super::Store). The outbox rows were inserted
//! already claimed by this process (`claimed_until` = commit time + the
//! relay lease, in the step's own transaction), so no relay publishes them
//! meanwhile; a process that dies between the commit and the publish, or
//! between the publish and the mark, leaves them to the relays once the
//! lease ends (a duplicate at worst, which the inboxes absorb).
//!
//! The crash-window rule of the relay holds here too: a row is marked only
//! after the bus has it. Nothing here fails the step: the step committed,
//! and what could not be published or marked is the relay's
//! ([`relay`](super::relay) is recovery in this mode: rows whose lease
//! ended, and re-drive rounds). A publish that fails part of the way
//! releases the rest at once, as the relay does.
//!
//! [`Dispatch::Relay`] keeps the old path (rows due to the relay at once,
//! the relay woken by the commit): the control of the benchmark.

use crate::domain::{DurationMs, Event, Service, Timestamp};

use super::observer::RuntimeEvent;
use super::store::{Mark, OutboxEntry};
use super::Env;

/// Who publishes the events a step commits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dispatch {
    /// Only the relay: it claims the rows after the commit (an UPDATE),
    /// publishes and marks them.
    Relay,
    /// The committing task, right after its commit; the relay recovers.
    #[default]
    Commit,
}

impl Dispatch {
    pub const ALL: [Dispatch; 2] = [Dispatch::Relay, Dispatch::Commit];

    /// The name on the command line (`--dispatch`).
    pub fn name(self) -> &'static str {
        match self {
            Dispatch::Relay => "relay",
            Dispatch::Commit => "commit",
        }
    }
}

impl std::fmt::Display for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Dispatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Dispatch, String> {
        Dispatch::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dispatch {s:?}: expected relay or commit"))
    }
}

/// The claim a transaction committing at `now` inserts its outbox rows
/// with: until `now` + the relay lease when it sends them itself, none
/// (due to the relays at once) in relay mode.
pub fn claimed_until(env: &Env, now: Timestamp) -> Option<Timestamp> {
    match env.config.dispatch {
        Dispatch::Relay => None,
        Dispatch::Commit => {
            let lease = i64::try_from(env.config.relay_lease.as_millis()).unwrap_or(i64::MAX);
            Some(now.plus(DurationMs(lease)))
        }
    }
}

/// The outbox rows a transaction enqueued at `now` (`events` with the
/// `seqs` the store gave them), as the entries [`send`] publishes.
pub fn entries(events: &[Event], seqs: &[i64], now: Timestamp) -> Vec<OutboxEntry> {
    assert_eq!(events.len(), seqs.len(), "one seq per enqueued event");
    events
        .iter()
        .zip(seqs)
        .map(|(event, seq)| OutboxEntry {
            seq: *seq,
            event: event.clone(),
            created_at: now,
            published_count: 0,
            last_published_at: None,
            next_publish_at: None,
        })
        .collect()
}

/// Publishes `entries` (committed rows of `service`'s outbox, claimed by
/// this process at their insert) and marks what the bus took; see the
/// module docs. Never fails: the relay takes over what is left.
pub async fn send(env: &Env, service: Service, entries: &[OutboxEntry]) {
    if entries.is_empty() {
        return;
    }
    let events: Vec<&Event> = entries.iter().map(|entry| &entry.event).collect();
    let (published, failure) = if crate::mutant!(MarkWithoutPublish) {
        // Planted bug: the rows are recorded as published and never are;
        // they wait for their first re-drive round, if they have one.
        (entries.len(), None)
    } else {
        match env.bus.publish_batch(&events).await {
            Ok(()) => (entries.len(), None),
            Err(partial) => (partial.published, Some(partial.error.to_string())),
        }
    };
    assert!(published <= entries.len(), "a batch publishes at most its events");
    if !crate::mutant!(MarkWithoutPublish) {
        for entry in &entries[..published] {
            env.observer.observe(RuntimeEvent::Published {
                service,
                event: &entry.event,
                republish: 0,
            });
        }
    }
    if published > 0 {
        let now = env.clock.now();
        let marks: Vec<Mark> = entries[..published]
            .iter()
            .map(|entry| env.config.redrive.mark(entry, now))
            .collect();
        if let Err(e) = env.store.mark_published(service, &marks, now).await {
            // Published, not marked: a relay publishes them again after
            // the lease (a duplicate the inboxes absorb).
            tracing::warn!(%service, error = %e, "could not mark sent events; the relay sends them again after the lease");
        }
    }
    if let Some(cause) = failure {
        tracing::warn!(%service, published, of = entries.len(), %cause, "send on commit failed; the relay takes the rest");
        // Due to the relays at once, not after the lease.
        let unpublished: Vec<i64> = entries[published..].iter().map(|e| e.seq).collect();
        if let Err(e) = env.store.release(service, &unpublished).await {
            tracing::warn!(%service, error = %e, "could not release unsent events; due after the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::domain::gateway::SimulatedGateway;
    use crate::domain::participants::order::PlaceOrder;
    use crate::domain::rows::CatalogEntry;
    use crate::domain::{ItemId, OrderId, Row, UserId};
    use crate::runtime::bus::{Bus, BusError, Delivery, PartialPublish};
    use crate::runtime::commands::place_order;
    use crate::runtime::memory::{MemoryBus, MemoryStore};
    use crate::runtime::{relay, ManualClock, NoObserver, RuntimeConfig, Store};

    const T0: Timestamp = Timestamp::SIM_EPOCH;

    fn env(dispatch: Dispatch, bus: Arc<dyn Bus>, store: &MemoryStore, clock: Arc<ManualClock>) -> Env {
        store.seed(vec![Row::Catalog(CatalogEntry {
            item_id: ItemId::parse("sword").unwrap(),
            name: "sword".into(),
            unit_price: 100,
        })]);
        Env {
            store: Arc::new(store.clone()),
            bus,
            clock,
            gateway: Arc::new(SimulatedGateway::default()),
            observer: Arc::new(NoObserver),
            config: RuntimeConfig {
                dispatch,
                relay_lease: Duration::from_secs(3),
                ..RuntimeConfig::default()
            },
        }
    }

    fn order(id: &str) -> PlaceOrder {
        PlaceOrder {
            order_id: OrderId::parse(id).unwrap(),
            user_id: UserId::parse("alice").unwrap(),
            item_id: ItemId::parse("sword").unwrap(),
            quantity: 1,
            payment_method: "WALLET".into(),
        }
    }

    #[tokio::test]
    async fn the_committer_publishes_and_marks_and_leaves_the_relay_nothing() {
        let clock = Arc::new(ManualClock::starting_at(T0));
        let store = MemoryStore::new();
        let bus = MemoryBus::new(clock.clone(), DurationMs(60_000));
        let env = env(Dispatch::Commit, Arc::new(bus.clone()), &store, clock.clone());
        place_order(&env, &order("o1")).await.unwrap();
        assert_eq!(bus.published(), 1, "ORDER_CREATED left with the commit");
        let rows = store.outbox();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].published_count, 1, "marked after the publish");
        assert_eq!(rows[0].last_published_at, Some(T0));
        assert_eq!(
            relay::relay_once(&env, Service::Order).await.unwrap(),
            0,
            "the relay has nothing to recover"
        );
        assert_eq!(bus.published(), 1);
    }

    #[tokio::test]
    async fn in_relay_mode_the_relay_publishes() {
        let clock = Arc::new(ManualClock::starting_at(T0));
        let store = MemoryStore::new();
        let bus = MemoryBus::new(clock.clone(), DurationMs(60_000));
        let env = env(Dispatch::Relay, Arc::new(bus.clone()), &store, clock.clone());
        place_order(&env, &order("o1")).await.unwrap();
        assert_eq!(bus.published(), 0, "the commit publishes nothing");
        assert_eq!(store.outbox()[0].published_count, 0);
        assert_eq!(relay::relay_once(&env, Service::Order).await.unwrap(), 1);
        assert_eq!(bus.published(), 1);
        assert_eq!(store.outbox()[0].published_count, 1);
    }

    /// A bus that is down: every publish fails.
    struct DownBus;

    #[async_trait]
    impl Bus for DownBus {
        async fn publish(&self, _: &Event) -> Result<(), BusError> {
            Err(BusError::Unavailable("down".into()))
        }
        async fn publish_batch(&self, _: &[&Event]) -> Result<(), PartialPublish> {
            Err(PartialPublish {
                published: 0,
                error: BusError::Unavailable("down".into()),
            })
        }
        async fn receive(&self, _: Service, _: &str, _: usize) -> Result<Vec<Delivery>, BusError> {
            Err(BusError::Unavailable("down".into()))
        }
        async fn ack(&self, _: Service, _: &str) -> Result<(), BusError> {
            Err(BusError::Unavailable("down".into()))
        }
        async fn dead_letter(&self, _: Service, _: &Delivery, _: &str) -> Result<(), BusError> {
            Err(BusError::Unavailable("down".into()))
        }
    }

    #[tokio::test]
    async fn a_failed_send_leaves_the_rows_unmarked_and_due_to_the_relay_at_once() {
        let clock = Arc::new(ManualClock::starting_at(T0));
        let store = MemoryStore::new();
        let env = env(Dispatch::Commit, Arc::new(DownBus), &store, clock.clone());
        place_order(&env, &order("o1"))
            .await
            .expect("the step commits whatever the bus does");
        assert_eq!(
            store.outbox()[0].published_count,
            0,
            "not marked: the bus never had it"
        );
        let due = store
            .claim_due(Service::Order, T0, DurationMs(1000), 10)
            .await
            .unwrap();
        assert_eq!(due.entries.len(), 1, "released: the relay takes it at once");
    }

    #[tokio::test]
    async fn a_committer_that_dies_before_sending_leaves_its_rows_to_the_relay_after_the_lease() {
        let clock = Arc::new(ManualClock::starting_at(T0));
        let store = MemoryStore::new();
        let bus = MemoryBus::new(clock.clone(), DurationMs(60_000));
        let env = env(Dispatch::Commit, Arc::new(bus.clone()), &store, clock.clone());
        // The step's transaction as `transact` writes it, and no send: the
        // process died after the commit.
        let event = Event::new(
            OrderId::parse("o1").unwrap(),
            UserId::parse("alice").unwrap(),
            T0,
            crate::domain::Payload::OrderCreated(crate::domain::event::OrderCreated {
                item_id: ItemId::parse("sword").unwrap(),
                quantity: 1,
                total_amount: 100,
                payment_method: "WALLET".into(),
            }),
        );
        let mut tx = store.begin(Service::Order).await.unwrap();
        tx.enqueue(&event, T0, claimed_until(&env, T0)).await.unwrap();
        tx.commit().await.unwrap();
        clock.advance(DurationMs(2_999));
        assert_eq!(
            relay::relay_once(&env, Service::Order).await.unwrap(),
            0,
            "held by the committer"
        );
        clock.advance(DurationMs(1));
        assert_eq!(
            relay::relay_once(&env, Service::Order).await.unwrap(),
            1,
            "recovered"
        );
        assert_eq!(bus.published(), 1);
    }
}
