//! The one shape of every state change: in ONE store transaction, dedupe by
//! event id, lock the rows the step needs (in key order), run the pure step,
//! write its rows and its events to the outbox, commit. Conflicts are
//! retried with backoff, never surfaced as a failed order.

use std::time::Duration;

use crate::domain::participants::{self, StepContext, StepError};
use crate::domain::{Event, EventId, RowKey, Rows, Service, Timestamp};

use super::observer::RuntimeEvent;
use super::store::{StoreError, StoreTx};
use super::{dispatch, Env};

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The step's writes and events are committed.
    Applied { writes: usize, emitted: usize },
    /// The dedupe key was already recorded; nothing was written.
    Duplicate,
}

/// Why a transaction did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactError<E> {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("step refused: {0}")]
    Step(E),
}

/// Runs `step` over the rows `keys` of `service` in one transaction, retrying
/// conflicts. With `dedupe`, the id is recorded in the inbox in the same
/// transaction and a second call with it writes nothing.
pub async fn transact<E>(
    env: &Env,
    service: Service,
    dedupe: Option<EventId>,
    keys: &[RowKey],
    mut step: impl FnMut(&Rows) -> Result<participants::Step, E>,
) -> Result<Committed, TransactError<E>> {
    debug_assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys are locked in strictly ascending order"
    );
    let mut attempt = 0;
    loop {
        match transact_once(env, service, dedupe, keys, &mut step).await {
            Err(TransactError::Store(e)) if e.is_conflict() && attempt < env.config.conflict_retries_max => {
                attempt += 1;
                env.observer
                    .observe(RuntimeEvent::ConflictRetried { service, attempt });
                tokio::time::sleep(conflict_backoff(env.config.conflict_backoff, attempt, dedupe)).await;
            }
            other => return other,
        }
    }
}

async fn transact_once<E>(
    env: &Env,
    service: Service,
    dedupe: Option<EventId>,
    keys: &[RowKey],
    step: &mut impl FnMut(&Rows) -> Result<participants::Step, E>,
) -> Result<Committed, TransactError<E>> {
    let now = env.clock.now();
    let mut tx: Box<dyn StoreTx> = env.store.begin(service).await?;
    if let Some(id) = dedupe.filter(|_| !crate::mutant!(SkipInboxDedupe)) {
        let fresh = tx.record_processed(id, now).await?;
        // Planted bug (mutants feature): the inbox already had the id, and
        // the step is applied again anyway.
        if !fresh && !crate::mutant!(ApplyRecordedDuplicate) {
            return Ok(Committed::Duplicate);
        }
    }
    let mut rows = Rows::default();
    for key in keys {
        let unlocked = crate::mutant!(UnlockedStockCheck) && matches!(key, RowKey::ItemStock(_));
        let loaded = if unlocked {
            tx.load(key).await?
        } else {
            tx.load_for_update(key).await?
        };
        if let Some(row) = loaded {
            assert_eq!(&row.key(), key, "store returned a row under a foreign key");
            rows.0.insert(key.clone(), row);
        }
    }
    let out = step(&rows).map_err(TransactError::Step)?;
    for row in &out.writes {
        tx.save(row).await?;
    }
    let claimed_until = dispatch::claimed_until(env, now);
    let mut enqueued = Vec::with_capacity(out.emit.len());
    let mut seqs = Vec::with_capacity(out.emit.len());
    for event in &out.emit {
        if crate::mutant!(EmitOutsideTx) {
            // Planted bug: the event leaves before the state that caused it
            // is committed, and is lost if publishing fails.
            let _ = env.bus.publish(event).await;
        } else {
            seqs.push(tx.enqueue(event, now, claimed_until).await?);
            enqueued.push(event.clone());
        }
    }
    commit_and_send(
        env,
        service,
        tx,
        dedupe,
        claimed_until.map(|_| (&enqueued[..], &seqs[..], now)),
    )
    .await?;
    Ok(Committed::Applied {
        writes: out.writes.len(),
        emitted: out.emit.len(),
    })
}

/// Commits `tx`, reports it, then (send on commit, when `outgoing` holds
/// the events the transaction enqueued claimed, their seqs and its `now`)
/// publishes and marks them: the one tail of the single-event and the
/// batched transaction.
pub(crate) async fn commit_and_send(
    env: &Env,
    service: Service,
    tx: Box<dyn StoreTx>,
    cause: Option<EventId>,
    outgoing: Option<(&[Event], &[i64], Timestamp)>,
) -> Result<(), StoreError> {
    let entries = outgoing.map_or_else(Vec::new, |(events, seqs, now)| {
        dispatch::entries(events, seqs, now)
    });
    let early = crate::mutant!(PublishBeforeCommit);
    if early {
        // Planted bug: the events leave before the transaction that wrote
        // them commits; a commit that then fails leaves them on the bus
        // with no state behind them.
        dispatch::send(env, service, &entries).await;
    }
    tx.commit().await?;
    env.observer.observe(RuntimeEvent::Committed { service, cause });
    if !early {
        dispatch::send(env, service, &entries).await;
    }
    Ok(())
}

/// Exponential backoff with a jitter drawn from the event id, so replicas
/// that collided do not collide again in step, and a replay is identical.
fn conflict_backoff(base: Duration, attempt: u32, dedupe: Option<EventId>) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(10));
    let salt =
        dedupe.map_or(0, |id| id.0.as_u128() as u64) ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let jitter_ppm = salt % 1_000_000;
    exp + exp.mul_f64(jitter_ppm as f64 / 1_000_000.0)
}

/// Applies `event` to `service`: the consumer's transaction.
pub async fn apply_event(
    env: &Env,
    service: Service,
    event: &Event,
) -> Result<Committed, TransactError<StepError>> {
    let keys = participants::rows_needed(service, event);
    transact(env, service, Some(event.event_id), &keys, |rows| {
        let ctx = StepContext {
            now: env.clock.now(),
            gateway: env.gateway.as_ref(),
        };
        participants::step(service, rows, event, &ctx)
    })
    .await
}
