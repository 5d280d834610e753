//! The consumer: takes deliveries from the service's consumer group, applies
//! each in one transaction, and acknowledges only what is committed or can
//! never succeed (dead-lettered with its reason).
//!
//! Never acknowledge an event that could not be applied: a transient failure
//! leaves the entry pending, the bus redelivers it, and after
//! `deliveries_max` deliveries it is dead-lettered, not dropped, with the
//! last error it met (see [`LastErrors`] for where that is kept and why).
//! Before that, the inbox is asked: an entry whose event was applied (a
//! crash between commit and ack, then store trouble) is acknowledged, not
//! dead-lettered. While the store is unavailable (down,
//! read-only, full) the consumer takes no deliveries at all and backs off,
//! so a few minutes of database trouble do not spend the delivery budget
//! of what is in flight; and a delivery past the limit whose last failure
//! was an unavailable store is applied again, not dead-lettered. A
//! conflict does count: each is bounded (lock, statement and
//! idle-in-transaction timeouts, the last one ending a frozen lock holder's
//! session well inside the budget's span), so one that lasts the whole
//! budget is the event's own trouble, named in its dead letter.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use futures::StreamExt;
use tracing::Instrument;

use crate::domain::participants::StepError;
use crate::domain::{DecodeError, Event, EventId, OrderId, Service};

use super::backoff;
use super::batch::apply_batch;
use super::bus::Delivery;
use super::observer::{Disposition, RuntimeEvent};
use super::transaction::{apply_event, Committed, TransactError};
use super::{sleep_or_stop, Env, Shutdown, StoreError};

/// Entries whose last error a consumer remembers: more than a few batches
/// of deliveries left pending at once.
const LAST_ERRORS_MAX: usize = 1024;

/// The last error of each entry left for redelivery, so its dead letter can
/// say why it was never applied. Bounded: the oldest entry is forgotten
/// first.
///
/// Kept in the consumer's memory, keyed by bus entry, on purpose. The
/// store cannot keep it: the errors that matter most (pool timeout, store
/// down or read-only) are the ones under which nothing can be written
/// there. The bus could (a hash beside the stream, written on each failed
/// delivery, deleted with the ack or the dead letter; it would survive a
/// consumer's restart and a takeover by another replica, and be lost with
/// the entry itself when Redis loses its data), at the price of a write
/// per failed delivery and a bus port method that the Redis adapter, its
/// model and the simulator's broker must all implement alike. In memory it
/// is right whenever the same consumer took the entry's deliveries, which
/// is the common case of one replica per service; when it did not, the
/// dead letter says that the cause is unknown to it (see
/// [`past_the_limit`]) rather than leaving the reason silently short, and
/// each failed delivery is logged where it failed.
#[derive(Debug, Default)]
pub struct LastErrors {
    by_entry: BTreeMap<String, LastError>,
    /// Entry ids in the order first remembered.
    order: VecDeque<String>,
}

/// An entry's last failure.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LastError {
    text: String,
    /// The store's fault, not the event's: see [`StoreTrouble`].
    store: StoreTrouble,
}

impl LastErrors {
    fn remember(&mut self, entry_id: &str, error: &str, store: StoreTrouble) {
        let last = LastError {
            text: error.to_string(),
            store,
        };
        if self.by_entry.insert(entry_id.to_string(), last).is_none() {
            self.order.push_back(entry_id.to_string());
        }
        while self.order.len() > LAST_ERRORS_MAX {
            let oldest = self.order.pop_front().expect("longer than the bound");
            self.by_entry.remove(&oldest);
        }
        debug_assert_eq!(self.order.len(), self.by_entry.len());
    }

    fn forget(&mut self, entry_id: &str) -> Option<String> {
        let error = self.by_entry.remove(entry_id)?;
        self.order.retain(|id| id != entry_id);
        Some(error.text)
    }

    /// Whether the entry's last failure was an unavailable store: its
    /// deliveries since then do not count toward the limit.
    fn last_was_unavailable(&self, entry_id: &str) -> bool {
        self.by_entry
            .get(entry_id)
            .is_some_and(|last| last.store == StoreTrouble::Unavailable)
    }
}

/// Whose failure a delivery that is left for redelivery met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum StoreTrouble {
    /// None of the store's: a step not yet applicable, or a store error
    /// that says the data is wrong (Fatal: a CHECK, a corrupt row); these
    /// count toward the deliveries limit.
    #[default]
    None,
    /// A conflict (lock timeout, serialization, deadlock, stale plan):
    /// retried; counts toward the limit, since every conflict is bounded
    /// by a timeout far shorter than the budget's span.
    Conflict,
    /// The store cannot take writes now (down, read-only, full, out of
    /// connections): the consumer pauses.
    Unavailable,
}

impl StoreTrouble {
    fn of(error: &StoreError) -> StoreTrouble {
        if error.is_unavailable() {
            StoreTrouble::Unavailable
        } else if error.is_conflict() {
            StoreTrouble::Conflict
        } else {
            StoreTrouble::None
        }
    }
}

/// Whether `delivery` is past its deliveries limit: more deliveries than
/// `deliveries_max`, and the last failure this consumer met on it was not
/// an unavailable store (which never spends an event's budget; a failure
/// met by another replica or before a restart is unknown here and counts).
fn past_the_budget(env: &Env, delivery: &Delivery, last_errors: &Mutex<LastErrors>) -> bool {
    delivery.attempt > env.config.deliveries_max
        && !lock(last_errors).last_was_unavailable(&delivery.entry_id)
}

/// The dead-letter reason of an entry not applied after `deliveries`:
/// the last error this consumer met on it, or, said as such, that it met
/// none (another replica did, or a process before a restart, or the entry
/// was forgotten past [`LAST_ERRORS_MAX`]); the operator then finds the
/// cause in that process's log ("left for redelivery").
fn past_the_limit(deliveries: u32, last_error: Option<&str>) -> String {
    match last_error {
        Some(e) => format!("not applied after {deliveries} deliveries; last error: {e}"),
        None => format!(
            "not applied after {deliveries} deliveries; last error unknown to this consumer \
             (met by another replica or before a restart: see their \"left for redelivery\" logs)"
        ),
    }
}

/// What one delivery came to.
struct Handled {
    disposition: Disposition,
    /// The store was unavailable: every other delivery would fail alike.
    store_unavailable: bool,
}

/// Handles one delivery to `service` and settles it on the bus (ack, or
/// dead-letter, or leave pending). Returns what happened.
pub async fn handle_delivery(
    env: &Env,
    service: Service,
    consumer: &str,
    delivery: &Delivery,
) -> Disposition {
    let decoded = Event::decode(&delivery.payload);
    let last_errors = Mutex::default();
    handle_decoded(env, service, consumer, delivery, decoded, &last_errors)
        .await
        .disposition
}

/// [`handle_delivery`] for a payload already decoded.
async fn handle_decoded(
    env: &Env,
    service: Service,
    consumer: &str,
    delivery: &Delivery,
    decoded: Result<Event, DecodeError>,
    last_errors: &Mutex<LastErrors>,
) -> Handled {
    let started = tokio::time::Instant::now();
    let mut trouble = StoreTrouble::None;
    let disposition = match &decoded {
        Err(e) => Disposition::DeadLettered {
            reason: format!("undecodable: {e}"),
        },
        Ok(event) if !service.subscribes_to(event.event_type()) => Disposition::DeadLettered {
            reason: format!("{service} does not subscribe to {}", event.event_type()),
        },
        // Planted bug (mutants feature): past the limit without asking the
        // inbox, so an applied event whose acks were lost is given up on.
        Ok(_)
            if crate::mutant!(PastLimitDeadLettersApplied) && past_the_budget(env, delivery, last_errors) =>
        {
            let last = lock(last_errors).forget(&delivery.entry_id);
            Disposition::DeadLettered {
                reason: past_the_limit(delivery.attempt.saturating_sub(1), last.as_deref()),
            }
        }
        Ok(event) if past_the_budget(env, delivery, last_errors) => {
            // Applied already (its ack was lost)? Then it is done.
            match env.store.processed(service, event.event_id).await {
                Ok(true) => Disposition::Duplicate,
                Ok(false) => {
                    let last = lock(last_errors).forget(&delivery.entry_id);
                    Disposition::DeadLettered {
                        reason: past_the_limit(delivery.attempt.saturating_sub(1), last.as_deref()),
                    }
                }
                Err(e) => {
                    trouble = StoreTrouble::of(&e);
                    Disposition::Retry {
                        reason: format!("inbox not readable past the deliveries limit: {e}"),
                    }
                }
            }
        }
        Ok(event) => {
            if crate::mutant!(AckBeforeCommit) {
                // Planted bug: the entry is gone from the bus before the
                // store has the change.
                let _ = env.bus.ack(service, &delivery.entry_id).await;
            }
            let span = tracing::info_span!(
                "handle",
                service = service.name(),
                consumer,
                order_id = %event.order_id,
                event_id = %event.event_id,
                event_type = event.event_type().as_str(),
                attempt = delivery.attempt,
            );
            let (disposition, met) = apply(env, service, event).instrument(span).await;
            trouble = met;
            disposition
        }
    };
    settle(
        env,
        service,
        consumer,
        delivery,
        decoded.as_ref().ok(),
        &disposition,
        trouble,
        started,
        last_errors,
    )
    .await;
    Handled {
        disposition,
        store_unavailable: trouble == StoreTrouble::Unavailable,
    }
}

/// Logs and observes what a delivery came to, then settles it on the bus:
/// ack, dead-letter, or leave pending (remembering whether the failure was
/// the store's, `trouble`).
#[allow(clippy::too_many_arguments)]
async fn settle(
    env: &Env,
    service: Service,
    consumer: &str,
    delivery: &Delivery,
    event: Option<&Event>,
    disposition: &Disposition,
    trouble: StoreTrouble,
    started: tokio::time::Instant,
    last_errors: &Mutex<LastErrors>,
) {
    match disposition {
        Disposition::DeadLettered { reason } => {
            tracing::warn!(%service, entry = %delivery.entry_id, %reason, "dead-lettered")
        }
        Disposition::Retry { reason } => {
            lock(last_errors).remember(&delivery.entry_id, reason, trouble);
            tracing::debug!(%service, entry = %delivery.entry_id, %reason, "left for redelivery")
        }
        _ => {}
    }
    env.observer.observe(RuntimeEvent::Handled {
        service,
        consumer,
        event,
        attempt: delivery.attempt,
        disposition,
        duration: started.elapsed(),
    });
    let settled = match disposition {
        Disposition::DeadLettered { reason } => env.bus.dead_letter(service, delivery, reason).await,
        Disposition::Retry { .. } => Ok(()),
        _ => env.bus.ack(service, &delivery.entry_id).await,
    };
    if disposition.acknowledges() {
        lock(last_errors).forget(&delivery.entry_id);
    }
    if let Err(e) = settled {
        // The entry stays pending and comes back; the inbox makes the second
        // application a no-op.
        tracing::warn!(%service, entry = %delivery.entry_id, error = %e, "could not settle delivery");
    }
}

fn lock(last_errors: &Mutex<LastErrors>) -> std::sync::MutexGuard<'_, LastErrors> {
    last_errors.lock().expect("last-errors mutex")
}

/// Applies a decoded event and says what to do with its delivery, and
/// what trouble of the store's it met.
async fn apply(env: &Env, service: Service, event: &Event) -> (Disposition, StoreTrouble) {
    let disposition = match apply_event(env, service, event).await {
        Ok(committed) => disposition_of(committed),
        Err(TransactError::Step(StepError::NotYetApplicable(reason))) => Disposition::Retry { reason },
        Err(TransactError::Step(e)) => Disposition::DeadLettered {
            reason: e.to_string(),
        },
        // Planted bug (mutants feature): a store that could not take the
        // event right now (unavailable, pool timed out) is taken as the
        // event's fault, and the event is given up.
        Err(TransactError::Store(e)) if e.is_unavailable() && crate::mutant!(DeadLetterGoodEvent) => {
            Disposition::DeadLettered {
                reason: e.to_string(),
            }
        }
        Err(TransactError::Store(e)) => {
            return (
                Disposition::Retry {
                    reason: e.to_string(),
                },
                StoreTrouble::of(&e),
            )
        }
    };
    (disposition, StoreTrouble::None)
}

/// What a committed (or duplicate) event's delivery came to.
fn disposition_of(committed: Committed) -> Disposition {
    match committed {
        Committed::Duplicate => Disposition::Duplicate,
        Committed::Applied {
            writes: 0,
            emitted: 0,
        } => Disposition::Ignored,
        Committed::Applied { emitted, .. } => Disposition::Applied { emitted },
    }
}

/// Receives and handles deliveries until shutdown. Finishes the batch in
/// hand before it stops. After a batch met an unavailable store, it takes
/// no more deliveries until the store says it can commit again
/// ([`Store::writable`](super::Store::writable)), backing off longer with
/// each refusal.
pub async fn run(env: Env, service: Service, consumer: String, mut shutdown: Shutdown) {
    let last_errors = Mutex::default();
    // Failures in a row of the store (then of the bus), for the backoff.
    let mut store_failures: u32 = 0;
    let mut bus_failures: u32 = 0;
    let pause =
        |failures| backoff::after_failures(env.config.error_backoff, env.config.error_backoff_max, failures);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if store_failures > 0 {
            if let Err(e) = env.store.writable(service).await {
                store_failures = store_failures.saturating_add(1);
                tracing::warn!(%service, error = %e, failures = store_failures, "store unavailable; not receiving");
                if sleep_or_stop(&mut shutdown, pause(store_failures)).await {
                    return;
                }
                continue;
            }
        }
        let asked = tokio::time::Instant::now();
        let batch = match env.bus.receive(service, &consumer, env.config.batch_size).await {
            Ok(batch) => {
                bus_failures = 0;
                batch
            }
            Err(e) => {
                bus_failures = bus_failures.saturating_add(1);
                tracing::warn!(%service, error = %e, failures = bus_failures, "receive failed");
                if sleep_or_stop(&mut shutdown, pause(bus_failures)).await {
                    return;
                }
                continue;
            }
        };
        if batch.is_empty() {
            // An idle consumer asks at most once per idle poll. A bus whose
            // receive blocks (Redis: XREADGROUP BLOCK) has already waited
            // that long, so it asks again at once: sleeping on top of the
            // block left every replica of a service deaf for a moment,
            // and a saga crossing eight hops often met one such moment.
            let pause = env.config.idle_poll.saturating_sub(asked.elapsed());
            if !pause.is_zero() && sleep_or_stop(&mut shutdown, pause).await {
                return;
            }
            continue;
        }
        if handle_batch_remembering(&env, service, &consumer, &batch, &last_errors).await {
            store_failures = store_failures.saturating_add(1);
            tracing::warn!(%service, failures = store_failures, "store unavailable; backing off before receiving again");
            if sleep_or_stop(&mut shutdown, pause(store_failures)).await {
                return;
            }
        } else {
            store_failures = 0;
        }
    }
}

/// Handles a batch: the deliveries of one order one after another, in the
/// order the bus gave them, and up to `handle_concurrency` orders at once.
///
/// Order matters within an order (a compensation should not overtake the
/// step it undoes, though the participants tolerate it), and across orders
/// nothing is shared but the rows that the transactions lock, so handling
/// orders concurrently is what the replicas of a service already do. The
/// handlers are polled by this task (no spawn), so the simulator's runtime
/// stays deterministic.
pub async fn handle_batch(env: &Env, service: Service, consumer: &str, batch: &[Delivery]) {
    handle_batch_remembering(env, service, consumer, batch, &Mutex::default()).await;
}

/// [`handle_batch`], remembering each retried entry's last error in
/// `last_errors`; returns whether the store was unavailable to any
/// delivery. A lane stops at the first such delivery: the rest of its
/// deliveries are not tried against a store that would fail them alike;
/// they stay pending and come back after the visibility timeout.
async fn handle_batch_remembering(
    env: &Env,
    service: Service,
    consumer: &str,
    batch: &[Delivery],
    last_errors: &Mutex<LastErrors>,
) -> bool {
    let decoded: Vec<Decoded<'_>> = batch.iter().map(|d| (d, Event::decode(&d.payload))).collect();
    if env.config.batch_apply {
        handle_applied_together(env, service, consumer, decoded, last_errors).await
    } else {
        handle_lanes(env, service, consumer, decoded, last_errors).await
    }
}

/// A delivery with its decoded payload.
type Decoded<'a> = (&'a Delivery, Result<Event, DecodeError>);

/// Batched apply: the deliveries that can be applied (decoded, subscribed
/// to, within the deliveries limit) go in one transaction
/// ([`apply_batch`]), the others (dead letters to be) by
/// [`handle_lanes`]. An event delivered twice in the batch is applied once;
/// its second delivery is a duplicate. The acks follow the commit. If the
/// batch's transaction fails for any reason, its deliveries are handled one
/// transaction per event, as with batched apply off.
async fn handle_applied_together(
    env: &Env,
    service: Service,
    consumer: &str,
    decoded: Vec<Decoded<'_>>,
    last_errors: &Mutex<LastErrors>,
) -> bool {
    let applicable = |(delivery, event): &Decoded<'_>| {
        event.as_ref().is_ok_and(|e| {
            service.subscribes_to(e.event_type()) && !past_the_budget(env, delivery, last_errors)
        })
    };
    let (together, apart): (Vec<Decoded<'_>>, Vec<Decoded<'_>>) = decoded.into_iter().partition(applicable);
    let events: Vec<&Event> = {
        let mut seen = std::collections::BTreeSet::new();
        together
            .iter()
            .filter_map(|(_, e)| e.as_ref().ok())
            .filter(|e| seen.insert(e.event_id))
            .collect()
    };
    if events.len() < 2 {
        // Nothing to share a transaction with.
        let mut all = together;
        all.extend(apart);
        return handle_lanes(env, service, consumer, all, last_errors).await;
    }
    if crate::mutant!(AckBeforeCommit) {
        // Planted bug (as in `handle_decoded`): acks before the commit.
        for (delivery, _) in &together {
            let _ = env.bus.ack(service, &delivery.entry_id).await;
        }
    }
    let started = tokio::time::Instant::now();
    let span = tracing::info_span!(
        "apply_batch",
        service = service.name(),
        consumer,
        events = events.len()
    );
    let applied = apply_batch(env, service, &events).instrument(span).await;
    let mut unavailable = false;
    match applied {
        Ok(outcomes) => {
            let mut first: BTreeMap<EventId, Committed> =
                events.iter().map(|e| e.event_id).zip(outcomes).collect();
            for (delivery, event) in &together {
                let event = event.as_ref().expect("only decoded events are applied together");
                // The first delivery of an event gets its outcome; a second
                // one in the same batch is a duplicate.
                let committed = first.remove(&event.event_id).unwrap_or(Committed::Duplicate);
                let disposition = disposition_of(committed);
                settle(
                    env,
                    service,
                    consumer,
                    delivery,
                    Some(event),
                    &disposition,
                    StoreTrouble::None,
                    started,
                    last_errors,
                )
                .await;
            }
            debug_assert!(first.is_empty(), "every event of the batch was settled");
        }
        Err(e) => {
            tracing::debug!(%service, error = %e, events = events.len(), "batch not applied; one transaction per event");
            if crate::mutant!(BatchAcksUncommitted) {
                // Planted bug: the batch's deliveries are acknowledged as
                // if it had committed, before the fallback applies them
                // (and whether or not it can).
                for (delivery, _) in &together {
                    let _ = env.bus.ack(service, &delivery.entry_id).await;
                }
            }
            unavailable |= handle_lanes(env, service, consumer, together, last_errors).await;
        }
    }
    if !apart.is_empty() {
        unavailable |= handle_lanes(env, service, consumer, apart, last_errors).await;
    }
    unavailable
}

/// One transaction per event: the deliveries of one order one after
/// another, in bus order, and up to `handle_concurrency` orders at once;
/// returns whether the store was unavailable to any delivery.
async fn handle_lanes(
    env: &Env,
    service: Service,
    consumer: &str,
    decoded: Vec<Decoded<'_>>,
    last_errors: &Mutex<LastErrors>,
) -> bool {
    let lanes = lanes_by_order(decoded);
    let concurrency = env.config.handle_concurrency.max(1);
    let unavailable = std::sync::atomic::AtomicBool::new(false);
    futures::stream::iter(lanes)
        .for_each_concurrent(concurrency, |lane| {
            let unavailable = &unavailable;
            async move {
                for (delivery, decoded) in lane {
                    if unavailable.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let handled =
                        handle_decoded(env, service, consumer, delivery, decoded, last_errors).await;
                    if handled.store_unavailable {
                        unavailable.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    unavailable.into_inner()
}

/// One lane per order id, in order of first appearance, each keeping the
/// batch's order; an undecodable delivery gets a lane of its own.
fn lanes_by_order(batch: Vec<Decoded<'_>>) -> Vec<Vec<Decoded<'_>>> {
    let count = batch.len();
    let mut lanes: Vec<Vec<Decoded<'_>>> = Vec::new();
    let mut lane_of: BTreeMap<OrderId, usize> = BTreeMap::new();
    for (delivery, decoded) in batch {
        let order = decoded.as_ref().ok().map(|e| e.order_id.clone());
        match order.as_ref().and_then(|o| lane_of.get(o)) {
            Some(&lane) => lanes[lane].push((delivery, decoded)),
            None => {
                if let Some(order) = order {
                    lane_of.insert(order, lanes.len());
                }
                lanes.push(vec![(delivery, decoded)]);
            }
        }
    }
    debug_assert_eq!(lanes.iter().map(Vec::len).sum::<usize>(), count);
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{OrderCreated, Payload};
    use crate::domain::{ItemId, Timestamp, UserId};

    fn delivery(entry: &str, payload: Vec<u8>) -> Delivery {
        Delivery {
            entry_id: entry.into(),
            attempt: 1,
            payload,
        }
    }

    fn created(order: &str, quantity: i64) -> Vec<u8> {
        Event::new(
            OrderId::parse(order).unwrap(),
            UserId::parse("alice").unwrap(),
            Timestamp::SIM_EPOCH,
            Payload::OrderCreated(OrderCreated {
                item_id: ItemId::parse("sword").unwrap(),
                quantity,
                total_amount: 100 * quantity,
                payment_method: "WALLET".into(),
            }),
        )
        .encode()
        .into_bytes()
    }

    #[test]
    fn last_errors_keep_the_latest_per_entry_and_forget_the_oldest_past_the_bound() {
        let mut last = LastErrors::default();
        last.remember("1-0", "first", StoreTrouble::None);
        last.remember("1-0", "second", StoreTrouble::None);
        assert_eq!(last.order.len(), 1, "one slot per entry");
        for n in 0..LAST_ERRORS_MAX {
            last.remember(&format!("2-{n}"), "other", StoreTrouble::None);
        }
        assert_eq!(last.by_entry.len(), LAST_ERRORS_MAX, "bounded");
        assert_eq!(last.forget("1-0"), None, "the oldest entry went first");
        assert_eq!(last.forget("2-0"), Some("other".to_string()));
        assert_eq!(last.forget("2-0"), None, "forgotten once settled");
        last.remember("3-0", "latest", StoreTrouble::Conflict);
        assert!(!last.last_was_unavailable("3-0"), "a conflict counts");
        last.remember("3-0", "latest", StoreTrouble::Unavailable);
        assert!(last.last_was_unavailable("3-0"), "an unavailable store does not");
        assert_eq!(last.forget("3-0"), Some("latest".to_string()));
    }

    #[test]
    fn a_dead_letter_names_its_last_error_or_says_it_is_unknown_here() {
        assert_eq!(
            past_the_limit(3, Some("SQLSTATE 55P03: lock timeout")),
            "not applied after 3 deliveries; last error: SQLSTATE 55P03: lock timeout"
        );
        let unknown = past_the_limit(3, None);
        assert!(
            unknown.starts_with("not applied after 3 deliveries; last error unknown to this consumer"),
            "{unknown}"
        );
    }

    #[test]
    fn lanes_group_by_order_and_keep_the_bus_order() {
        let batch = [
            delivery("1", created("o-a", 1)),
            delivery("2", created("o-b", 1)),
            delivery("3", b"{not json".to_vec()),
            delivery("4", created("o-a", 2)),
            delivery("5", b"{not json either".to_vec()),
            delivery("6", created("o-b", 2)),
            delivery("7", created("o-a", 3)),
        ];
        let decoded = batch.iter().map(|d| (d, Event::decode(&d.payload))).collect();
        let lanes: Vec<Vec<&str>> = lanes_by_order(decoded)
            .iter()
            .map(|lane| lane.iter().map(|(d, _)| d.entry_id.as_str()).collect())
            .collect();
        assert_eq!(
            lanes,
            [vec!["1", "4", "7"], vec!["2", "6"], vec!["3"], vec!["5"]],
            "one lane per order in order of first appearance, each in bus order; \
             an undecodable entry alone"
        );
    }
}
