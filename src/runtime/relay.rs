//! The outbox relay: publishes committed outbox entries, then records that
//! it did. A crash between the two publishes the entry again (a duplicate
//! the inbox absorbs), never loses it. The same pass re-publishes entries
//! that [`RedrivePolicy`](super::RedrivePolicy) says are due, so a bus that
//! lost its data delays a saga but cannot strand it.

use tokio::sync::Notify;

use crate::domain::Service;

use super::observer::{Observer, RuntimeEvent};
use super::store::Mark;
use super::{sleep_or_stop, Env, Shutdown, StoreError};

/// Why a relay pass stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publish failed after {published} of the batch: {cause}")]
    Bus { published: usize, cause: String },
}

/// Publishes up to one batch of due entries of `service`; returns how many.
pub async fn relay_once(env: &Env, service: Service) -> Result<usize, RelayError> {
    let now = env.clock.now();
    let due = env.store.outbox_due(service, now, env.config.batch_size).await?;
    let mut published = Vec::with_capacity(due.len());
    let mut failure = None;
    for entry in &due {
        debug_assert_eq!(
            entry.event.emitter(),
            service,
            "an outbox holds only its service's events"
        );
        if let Err(e) = env.bus.publish(&entry.event).await {
            failure = Some(e.to_string());
            break;
        }
        env.observer.observe(RuntimeEvent::Published {
            service,
            event: &entry.event,
            republish: entry.published_count,
        });
        published.push(entry);
    }
    if !published.is_empty() {
        let now = env.clock.now();
        let marks: Vec<Mark> = published
            .iter()
            .map(|entry| env.config.redrive.mark(entry, now))
            .collect();
        env.store.mark_published(service, &marks, now).await?;
    }
    match failure {
        Some(cause) => Err(RelayError::Bus {
            published: published.len(),
            cause,
        }),
        None => Ok(published.len()),
    }
}

/// Wakes a service's relay when a transaction of that service commits, so
/// its events leave the outbox at once instead of at the next idle poll
/// (which, per hop of the saga, added half an idle poll on average to every
/// order's latency). An [`Observer`]: put it in the fan-out of the
/// environment the loops run with. Wakes coalesce: a commit during a pass
/// leaves one permit, so the relay makes one more pass and misses nothing.
#[derive(Debug, Default)]
pub struct RelayWake {
    /// One per service, in [`Service::ALL`] order.
    notify: [Notify; Service::ALL.len()],
}

impl RelayWake {
    fn of(&self, service: Service) -> &Notify {
        let index = Service::ALL
            .iter()
            .position(|s| *s == service)
            .expect("every service is in Service::ALL");
        &self.notify[index]
    }
}

impl Observer for RelayWake {
    fn observe(&self, event: RuntimeEvent<'_>) {
        if let RuntimeEvent::Committed { service, .. } = event {
            self.of(service).notify_one();
        }
    }
}

/// Relays `service`'s outbox until shutdown, polling every idle poll.
pub async fn run(env: Env, service: Service, shutdown: Shutdown) {
    run_woken(env, service, shutdown, None).await
}

/// As [`run`]; with `wake`, an idle relay also starts a pass as soon as a
/// transaction of `service` commits in this process.
pub async fn run_woken(
    env: Env,
    service: Service,
    mut shutdown: Shutdown,
    wake: Option<std::sync::Arc<RelayWake>>,
) {
    loop {
        let pause = match relay_once(&env, service).await {
            Ok(n) if n == env.config.batch_size => continue,
            Ok(_) => env.config.idle_poll,
            Err(e) => {
                tracing::warn!(%service, error = %e, "relay pass failed");
                env.config.error_backoff
            }
        };
        // After a failure, back off in full: waking on every commit would
        // hammer a bus that is down.
        let woken = wake.as_ref().filter(|_| pause == env.config.idle_poll);
        let stop = match woken {
            None => sleep_or_stop(&mut shutdown, pause).await,
            Some(wake) => {
                if *shutdown.borrow() {
                    return;
                }
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => true,
                    _ = wake.of(service).notified() => *shutdown.borrow(),
                    _ = tokio::time::sleep(pause) => *shutdown.borrow(),
                }
            }
        };
        if stop {
            return;
        }
    }
}
