//! The consumer: takes deliveries from the service's consumer group, applies
//! each in one transaction, and acknowledges only what is committed or can
//! never succeed (dead-lettered with its reason).
//!
//! Never acknowledge an event that could not be applied: a transient failure
//! leaves the entry pending, the bus redelivers it, and after
//! `deliveries_max` deliveries it is dead-lettered, not dropped.

use std::collections::BTreeMap;

use futures::StreamExt;
use tracing::Instrument;

use crate::domain::participants::StepError;
use crate::domain::{DecodeError, Event, OrderId, Service};

use super::bus::Delivery;
use super::observer::{Disposition, RuntimeEvent};
use super::transaction::{apply_event, Committed, TransactError};
use super::{sleep_or_stop, Env, Shutdown};

/// Handles one delivery to `service` and settles it on the bus (ack, or
/// dead-letter, or leave pending). Returns what happened.
pub async fn handle_delivery(
    env: &Env,
    service: Service,
    consumer: &str,
    delivery: &Delivery,
) -> Disposition {
    let decoded = Event::decode(&delivery.payload);
    handle_decoded(env, service, consumer, delivery, decoded).await
}

/// [`handle_delivery`] for a payload already decoded.
async fn handle_decoded(
    env: &Env,
    service: Service,
    consumer: &str,
    delivery: &Delivery,
    decoded: Result<Event, DecodeError>,
) -> Disposition {
    let started = tokio::time::Instant::now();
    let disposition = match &decoded {
        Err(e) => Disposition::DeadLettered {
            reason: format!("undecodable: {e}"),
        },
        Ok(event) if !service.subscribes_to(event.event_type()) => Disposition::DeadLettered {
            reason: format!("{service} does not subscribe to {}", event.event_type()),
        },
        Ok(_) if delivery.attempt > env.config.deliveries_max => Disposition::DeadLettered {
            reason: format!(
                "not applied after {} deliveries",
                delivery.attempt.saturating_sub(1)
            ),
        },
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
            apply(env, service, event).instrument(span).await
        }
    };
    match &disposition {
        Disposition::DeadLettered { reason } => {
            tracing::warn!(%service, entry = %delivery.entry_id, %reason, "dead-lettered")
        }
        Disposition::Retry { reason } => {
            tracing::debug!(%service, entry = %delivery.entry_id, %reason, "left for redelivery")
        }
        _ => {}
    }
    env.observer.observe(RuntimeEvent::Handled {
        service,
        consumer,
        event: decoded.as_ref().ok(),
        attempt: delivery.attempt,
        disposition: &disposition,
        duration: started.elapsed(),
    });
    let settled = match &disposition {
        Disposition::DeadLettered { reason } => env.bus.dead_letter(service, delivery, reason).await,
        Disposition::Retry { .. } => Ok(()),
        _ => env.bus.ack(service, &delivery.entry_id).await,
    };
    if let Err(e) = settled {
        // The entry stays pending and comes back; the inbox makes the second
        // application a no-op.
        tracing::warn!(%service, entry = %delivery.entry_id, error = %e, "could not settle delivery");
    }
    disposition
}

/// Applies a decoded event and says what to do with its delivery.
async fn apply(env: &Env, service: Service, event: &Event) -> Disposition {
    match apply_event(env, service, event).await {
        Ok(Committed::Duplicate) => Disposition::Duplicate,
        Ok(Committed::Applied {
            writes: 0,
            emitted: 0,
        }) => Disposition::Ignored,
        Ok(Committed::Applied { emitted, .. }) => Disposition::Applied { emitted },
        Err(TransactError::Step(StepError::NotYetApplicable(reason))) => Disposition::Retry { reason },
        Err(TransactError::Step(e)) => Disposition::DeadLettered {
            reason: e.to_string(),
        },
        Err(TransactError::Store(e)) => Disposition::Retry {
            reason: e.to_string(),
        },
    }
}

/// Receives and handles deliveries until shutdown. Finishes the batch in
/// hand before it stops.
pub async fn run(env: Env, service: Service, consumer: String, mut shutdown: Shutdown) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let asked = tokio::time::Instant::now();
        let batch = match env.bus.receive(service, &consumer, env.config.batch_size).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(%service, error = %e, "receive failed");
                if sleep_or_stop(&mut shutdown, env.config.error_backoff).await {
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
        handle_batch(&env, service, &consumer, &batch).await;
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
    let lanes = lanes_by_order(batch);
    let concurrency = env.config.handle_concurrency.max(1);
    futures::stream::iter(lanes)
        .for_each_concurrent(concurrency, |lane| async move {
            for (delivery, decoded) in lane {
                handle_decoded(env, service, consumer, delivery, decoded).await;
            }
        })
        .await;
}

/// One lane per order id, in order of first appearance, each keeping the
/// batch's order; an undecodable delivery gets a lane of its own.
fn lanes_by_order(batch: &[Delivery]) -> Vec<Vec<(&Delivery, Result<Event, DecodeError>)>> {
    let mut lanes: Vec<Vec<(&Delivery, Result<Event, DecodeError>)>> = Vec::new();
    let mut lane_of: BTreeMap<OrderId, usize> = BTreeMap::new();
    for delivery in batch {
        let decoded = Event::decode(&delivery.payload);
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
    debug_assert_eq!(lanes.iter().map(Vec::len).sum::<usize>(), batch.len());
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
        let lanes: Vec<Vec<&str>> = lanes_by_order(&batch)
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
