//! The outbox relay: claims due outbox entries, publishes them, then
//! records that it did. A crash between publish and mark publishes the
//! entry again once the claim's lease ends (a duplicate the inbox absorbs),
//! never loses it. The same pass re-publishes entries that
//! [`RedrivePolicy`](super::RedrivePolicy) says are due, so a bus that lost
//! its data delays a saga but cannot strand it.
//!
//! A pass publishes its claim with one [`Bus::publish_batch`](super::Bus)
//! (one pipelined round trip on Redis) and marks the published entries
//! with one [`Store::mark_published`](super::Store) (one statement on
//! PostgreSQL).
//!
//! The claim comes first and is a write: the relays of one service share
//! the work (each entry is held by one of them for the lease), and a store
//! that cannot record anything (read-only, full) fails the claim before
//! anything is published, instead of letting the same batch out again on
//! every pass. An entry that no longer decodes is quarantined by the claim
//! and reported ([`RuntimeEvent::Quarantined`]); one written by a newer
//! build (a higher `schemaVersion`, mid rolling upgrade) is given back for
//! that build's relays and logged; the rest keep flowing.
//!
//! With send on commit ([`Dispatch::Commit`](super::Dispatch), the
//! default; [`dispatch`](super::dispatch)) the committing task publishes
//! and marks its own events, and its rows are inserted claimed until the
//! lease ends, so the relay is recovery: it claims only rows whose lease
//! ended (their committer died or could not publish) and rows whose
//! re-drive round came. It then polls every [`recovery_poll`] (a quarter
//! of the lease, so a dead committer's rows wait the lease plus at most a
//! quarter of it) instead of every idle poll, and needs no wake-up: its
//! idle cost is one claim that finds nothing per service per poll.

use tokio::sync::Notify;

use crate::domain::{DurationMs, Event, Service};

use super::backoff;
use super::observer::{Observer, RuntimeEvent};
use super::store::{Mark, OutboxEntry};
use super::{sleep_or_stop, Env, Shutdown, StoreError};

/// Why a relay pass stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publish failed after {published} of the batch: {cause}")]
    Bus { published: usize, cause: String },
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pass {
    /// Rows the claim took (published or quarantined): a full batch means
    /// more may be due.
    taken: usize,
    published: usize,
}

/// Publishes up to one batch of due entries of `service`; returns how many.
pub async fn relay_once(env: &Env, service: Service) -> Result<usize, RelayError> {
    relay_pass(env, service).await.map(|pass| pass.published)
}

async fn relay_pass(env: &Env, service: Service) -> Result<Pass, RelayError> {
    let lease = DurationMs(i64::try_from(env.config.relay_lease.as_millis()).unwrap_or(i64::MAX));
    let claimed = env
        .store
        .claim_due(service, env.clock.now(), lease, env.config.batch_size)
        .await?;
    for bad in &claimed.quarantined {
        tracing::warn!(%service, seq = bad.seq, reason = %bad.reason, "outbox entry quarantined: it is never published");
        env.observer.observe(RuntimeEvent::Quarantined {
            service,
            seq: bad.seq,
            reason: &bad.reason,
        });
    }
    for newer in &claimed.left_for_newer {
        tracing::info!(%service, seq = newer.seq, reason = %newer.reason, "outbox entry left for a newer build");
    }
    let due = &claimed.entries;
    let taken = due.len() + claimed.quarantined.len() + claimed.left_for_newer.len();
    debug_assert!(taken <= env.config.batch_size, "a claim is bounded by the batch");
    let mark_first = crate::mutant!(RelayMarkBeforePublish);
    if mark_first {
        // Planted bug: the entries are recorded as published before they
        // are; a crash or a bus failure in between loses them until their
        // next re-drive round, if they have one.
        mark(env, service, due).await?;
    }
    for entry in due {
        debug_assert_eq!(
            entry.event.emitter(),
            service,
            "an outbox holds only its service's events"
        );
    }
    // The whole claim in one publish: one round trip on a pipelining bus.
    let events: Vec<&Event> = due.iter().map(|entry| &entry.event).collect();
    let (published, failure) = match env.bus.publish_batch(&events).await {
        Ok(()) => (due.len(), None),
        Err(partial) => (partial.published, Some(partial.error.to_string())),
    };
    assert!(published <= due.len(), "a batch publishes at most its events");
    for entry in &due[..published] {
        env.observer.observe(RuntimeEvent::Published {
            service,
            event: &entry.event,
            republish: entry.published_count,
        });
    }
    if !mark_first {
        mark(env, service, &due[..published]).await?;
    }
    match failure {
        Some(cause) => {
            // Due again at once, not after the lease: the next pass (after
            // the backoff) tries them first.
            let unpublished: Vec<i64> = due[published..].iter().map(|e| e.seq).collect();
            if let Err(e) = env.store.release(service, &unpublished).await {
                tracing::warn!(%service, error = %e, "could not release unpublished claims; due after the lease");
            }
            Err(RelayError::Bus { published, cause })
        }
        None => Ok(Pass { taken, published }),
    }
}

/// Records `entries` as published now, each with its next re-drive round.
async fn mark(env: &Env, service: Service, entries: &[OutboxEntry]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let now = env.clock.now();
    let marks: Vec<Mark> = entries
        .iter()
        .map(|entry| env.config.redrive.mark(entry, now))
        .collect();
    env.store.mark_published(service, &marks, now).await
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

/// How long an idle relay waits before its next pass: the idle poll in
/// relay mode; in send-on-commit mode, where it only recovers, a quarter
/// of the lease (at least the idle poll).
pub fn recovery_poll(config: &super::RuntimeConfig) -> std::time::Duration {
    match config.dispatch {
        super::Dispatch::Relay => config.idle_poll,
        super::Dispatch::Commit => (config.relay_lease / 4).max(config.idle_poll),
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
    let mut failures: u32 = 0;
    // Whether the wait before this pass ended by the wake.
    let mut woken_by_commit = false;
    loop {
        let passed = relay_pass(&env, service).await;
        if std::mem::take(&mut woken_by_commit) {
            env.observer.observe(RuntimeEvent::RelayWoken { service });
        }
        let pause = match passed {
            Ok(pass) if pass.taken == env.config.batch_size => {
                failures = 0;
                continue;
            }
            Ok(_) => {
                failures = 0;
                recovery_poll(&env.config)
            }
            Err(e) => {
                // Growing, bounded: a store that refuses the claim or the
                // mark for minutes is asked a few times a minute.
                failures = failures.saturating_add(1);
                tracing::warn!(%service, error = %e, failures, "relay pass failed");
                backoff::after_failures(env.config.error_backoff, env.config.error_backoff_max, failures)
            }
        };
        // After a failure, back off in full: waking on every commit would
        // hammer a bus that is down.
        let woken = wake.as_ref().filter(|_| failures == 0);
        let stop = match woken {
            None => sleep_or_stop(&mut shutdown, pause).await,
            Some(wake) => {
                if *shutdown.borrow() {
                    return;
                }
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => true,
                    _ = wake.of(service).notified() => {
                        woken_by_commit = true;
                        *shutdown.borrow()
                    }
                    _ = tokio::time::sleep(pause) => *shutdown.borrow(),
                }
            }
        };
        if stop {
            return;
        }
    }
}
