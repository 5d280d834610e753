//! The outbox relay: publishes committed outbox entries, then records that
//! it did. A crash between the two publishes the entry again (a duplicate
//! the inbox absorbs), never loses it. The same pass re-publishes entries
//! that [`RedrivePolicy`](super::RedrivePolicy) says are due, so a bus that
//! lost its data delays a saga but cannot strand it.

use crate::domain::Service;

use super::observer::RuntimeEvent;
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
    let due = env
        .store
        .outbox_due(service, now, env.config.redrive, env.config.batch_size)
        .await?;
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
        published.push(entry.seq);
    }
    if !published.is_empty() {
        env.store
            .mark_published(service, &published, env.clock.now())
            .await?;
    }
    match failure {
        Some(cause) => Err(RelayError::Bus {
            published: published.len(),
            cause,
        }),
        None => Ok(published.len()),
    }
}

/// Relays `service`'s outbox until shutdown.
pub async fn run(env: Env, service: Service, mut shutdown: Shutdown) {
    loop {
        let pause = match relay_once(&env, service).await {
            Ok(n) if n == env.config.batch_size => continue,
            Ok(_) => env.config.idle_poll,
            Err(e) => {
                tracing::warn!(%service, error = %e, "relay pass failed");
                env.config.error_backoff
            }
        };
        if sleep_or_stop(&mut shutdown, pause).await {
            return;
        }
    }
}
