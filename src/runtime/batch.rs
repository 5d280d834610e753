//! Batched apply (DESIGN.md "Batched apply"): the events of one consumer
//! batch in ONE store transaction. The inbox ids of the whole batch are
//! recorded with one call, the rows of all its events locked with one call
//! in one global key order, the steps run in bus order over the rows as the
//! earlier steps of the batch left them, the writes and outbox rows go with
//! one call each, then one commit. PostgreSQL makes each call one statement
//! per table (`unnest` arrays); the in-memory store runs them row by row.
//!
//! Any error (a conflict, a constraint violation, a step refusing or not yet
//! applicable, the store failing) aborts the whole transaction and is
//! returned: the consumer then applies the batch one transaction per event,
//! so a bad event costs only itself and the unit of atomicity stays "an
//! event and everything it causes" (here: the batch is all or nothing, and
//! each event inside it is too).

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::participants::{self, StepContext, StepError};
use crate::domain::{Event, EventId, Row, RowKey, Rows, Service};

use super::dispatch;
use super::store::StoreTx;
use super::transaction::{commit_and_send, Committed, TransactError};
use super::Env;

/// Applies `events` (distinct ids, in bus order) to `service` in one
/// transaction. On success, what each event came to, in the order given:
/// `Duplicate` for one already in the inbox, else `Applied`. On any error
/// nothing is committed.
pub async fn apply_batch(
    env: &Env,
    service: Service,
    events: &[&Event],
) -> Result<Vec<Committed>, TransactError<StepError>> {
    let distinct: BTreeSet<EventId> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(distinct.len(), events.len(), "a batch holds each event once");
    let now = env.clock.now();
    let mut tx: Box<dyn StoreTx> = env.store.begin(service).await?;
    let fresh = record_inbox(tx.as_mut(), &distinct, events, now).await?;
    let keys: Vec<RowKey> = events
        .iter()
        .zip(&fresh)
        .filter(|(_, fresh)| **fresh)
        .flat_map(|(event, _)| participants::rows_needed(service, event))
        .collect::<BTreeSet<RowKey>>()
        .into_iter()
        .collect();
    let mut overlay = lock_rows(tx.as_mut(), &keys).await?;

    // The steps, in bus order, each over its own keys as the batch's
    // earlier steps left them.
    let mut written: BTreeMap<RowKey, Row> = BTreeMap::new();
    let mut emitted: Vec<Event> = Vec::new();
    let mut outcomes = Vec::with_capacity(events.len());
    for (event, fresh) in events.iter().zip(&fresh) {
        if !fresh {
            outcomes.push(Committed::Duplicate);
            continue;
        }
        let needed = participants::rows_needed(service, event);
        let rows = Rows(
            needed
                .iter()
                .filter_map(|k| Some((k.clone(), overlay.0.get(k)?.clone())))
                .collect(),
        );
        let ctx = StepContext {
            now: env.clock.now(),
            gateway: env.gateway.as_ref(),
        };
        let out = participants::step(service, &rows, event, &ctx).map_err(TransactError::Step)?;
        for row in &out.writes {
            let key = row.key();
            assert!(
                needed.contains(&key),
                "a step writes only rows it locked: {key:?} by {}",
                event.summary()
            );
            overlay.0.insert(key.clone(), row.clone());
            written.insert(key, row.clone());
        }
        emitted.extend(out.emit.iter().cloned());
        outcomes.push(Committed::Applied {
            writes: out.writes.len(),
            emitted: out.emit.len(),
        });
    }
    let first_applied = events
        .iter()
        .zip(&fresh)
        .find(|(_, fresh)| **fresh)
        .map(|(e, _)| e.event_id);
    let Some(first_applied) = first_applied else {
        // Every event was a duplicate: nothing to write (dropping rolls back).
        return Ok(outcomes);
    };

    // The last version of each row, one call per kind of write.
    let rows: Vec<Row> = written.into_values().collect();
    tx.save_many(&rows).await?;
    let claimed_until = dispatch::claimed_until(env, now);
    let (enqueued, seqs) = if crate::mutant!(EmitOutsideTx) {
        // Planted bug (as in `transaction`): events leave before commit.
        for event in &emitted {
            let _ = env.bus.publish(event).await;
        }
        (Vec::new(), Vec::new())
    } else {
        let seqs = tx.enqueue_many(&emitted, now, claimed_until).await?;
        (emitted, seqs)
    };
    // One commit, observed once: the batch is one transaction; its events
    // leave with one publish (send on commit).
    let outgoing = claimed_until.map(|_| (&enqueued[..], &seqs[..], now));
    commit_and_send(env, service, tx, Some(first_applied), outgoing).await?;
    debug_assert_eq!(outcomes.len(), events.len());
    Ok(outcomes)
}

/// Records the batch's ids in the inbox, in ascending id order; returns for
/// each event of `events` whether it is new.
async fn record_inbox(
    tx: &mut dyn StoreTx,
    distinct: &BTreeSet<EventId>,
    events: &[&Event],
    now: crate::domain::Timestamp,
) -> Result<Vec<bool>, TransactError<StepError>> {
    if crate::mutant!(SkipInboxDedupe) {
        // Planted bug (as in `transaction`): every delivery is applied.
        return Ok(vec![true; events.len()]);
    }
    let ids: Vec<EventId> = distinct.iter().copied().collect();
    let recorded = tx.record_processed_many(&ids, now).await?;
    assert_eq!(recorded.len(), ids.len(), "one answer per inbox id");
    if crate::mutant!(BatchApplyRecordedDuplicate) {
        // Planted bug: the inbox has every id now, and every event is
        // applied whatever it answered.
        return Ok(vec![true; events.len()]);
    }
    let new: BTreeSet<EventId> = ids
        .iter()
        .zip(recorded)
        .filter(|(_, new)| *new)
        .map(|(id, _)| *id)
        .collect();
    Ok(events.iter().map(|e| new.contains(&e.event_id)).collect())
}

/// Locks and reads `keys` (ascending, distinct): the rows found, by key.
async fn lock_rows(tx: &mut dyn StoreTx, keys: &[RowKey]) -> Result<Rows, TransactError<StepError>> {
    let mut rows = Rows::default();
    let (unlocked, locked): (Vec<RowKey>, Vec<RowKey>) = keys
        .iter()
        .cloned()
        .partition(|key| crate::mutant!(UnlockedStockCheck) && matches!(key, RowKey::ItemStock(_)));
    let loaded = tx.load_for_update_many(&locked).await?;
    assert_eq!(loaded.len(), locked.len(), "one answer per locked key");
    let mut found: Vec<(RowKey, Option<Row>)> = locked.into_iter().zip(loaded).collect();
    for key in unlocked {
        // Planted bug (as in `transaction`): stock read without its lock.
        let row = tx.load(&key).await?;
        found.push((key, row));
    }
    for (key, row) in found {
        if let Some(row) = row {
            assert_eq!(row.key(), key, "store returned a row under a foreign key");
            rows.0.insert(key, row);
        }
    }
    Ok(rows)
}
