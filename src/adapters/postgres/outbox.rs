//! The relay's statements on a service's outbox: the claim of due rows
//! (shared by the relays of a service), the quarantine of rows that do not
//! decode, the mark after publishing and the release of unpublished claims.
//!
//! Each is one autocommit statement. The SQL text comes from one function
//! per statement, so the plan tests (`tests/pg_defects.rs`) explain the
//! exact query the store runs.

use sqlx::postgres::PgRow;
use sqlx::Row as _;

use crate::domain::{DurationMs, Event, Service, Timestamp};
use crate::runtime::store::{Claimed, Mark, OutboxEntry, Quarantined, StoreResult};
use crate::runtime::StoreError;

use super::{schema, PgStatement, PgStore};

/// The outbox columns an [`OutboxEntry`] is read from.
const OUTBOX_COLUMNS: &str = "seq, payload, created_at, published_count, last_published_at, next_publish_at";

/// The claim: `$1` now, `$2` the end of the lease, `$3` the batch size.
///
/// Two index-bound halves, each locked with `SKIP LOCKED` so that two
/// relays claiming at once take different rows: never-published rows by
/// `seq` (partial index `outbox_unpublished`), then rows whose re-drive
/// round has come by `(next_publish_at, seq)` (partial index
/// `outbox_next_publish_at`). Ordering the re-drives by their due time,
/// not by `seq`, is what keeps the planner on that index when `now` is
/// past most rows: by `seq` it walked the primary key and filtered the
/// whole table. A row claimed by another relay is due again once its lease
/// ends. Rows come back in any order; [`claim`] sorts them.
pub fn claim_sql(service: Service) -> String {
    let s = schema(service);
    format!(
        "WITH fresh AS (
            SELECT seq FROM {s}.outbox
            WHERE last_published_at IS NULL AND quarantined_at IS NULL
              AND (claimed_until IS NULL OR claimed_until <= $1)
            ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED
        ), redrive AS (
            SELECT seq, next_publish_at FROM {s}.outbox
            WHERE next_publish_at <= $1 AND (claimed_until IS NULL OR claimed_until <= $1)
            ORDER BY next_publish_at, seq LIMIT $3 FOR UPDATE SKIP LOCKED
        ), due AS (
            SELECT seq FROM (
                SELECT seq, false AS redrive, NULL::timestamptz AS at FROM fresh
                UNION ALL
                SELECT seq, true, next_publish_at FROM redrive
            ) AS d ORDER BY redrive, at, seq LIMIT $3
        )
        UPDATE {s}.outbox AS o SET claimed_until = $2 FROM due WHERE o.seq = due.seq
        RETURNING {columns}",
        columns = OUTBOX_COLUMNS
            .split(", ")
            .map(|c| format!("o.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// A claimed row: its entry, or why its payload does not decode.
type Decoded = Result<OutboxEntry, Quarantined>;

/// Decodes one outbox row. A payload that does not decode is the row's own
/// problem (quarantined); a column of the wrong type is the table's, and
/// fails the claim.
fn decode(service: Service, r: &PgRow) -> StoreResult<Decoded> {
    let column = |e: sqlx::Error| StoreError::Fatal(format!("{} outbox: {e}", schema(service)));
    let seq: i64 = r.try_get("seq").map_err(column)?;
    let payload: String = r.try_get("payload").map_err(column)?;
    let event = match Event::decode(payload.as_bytes()) {
        Ok(event) => event,
        Err(e) => {
            return Ok(Err(Quarantined {
                seq,
                reason: format!("undecodable event: {e}"),
            }))
        }
    };
    let published_count: i32 = r.try_get("published_count").map_err(column)?;
    let time = |c: &str| {
        r.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(c)
            .map(|t| t.map(Timestamp::from_datetime))
            .map_err(column)
    };
    Ok(Ok(OutboxEntry {
        seq,
        event,
        created_at: Timestamp::from_datetime(r.try_get("created_at").map_err(column)?),
        published_count: u32::try_from(published_count).map_err(|_| {
            StoreError::Fatal(format!(
                "outbox seq {seq}: negative published_count {published_count}"
            ))
        })?,
        last_published_at: time("last_published_at")?,
        next_publish_at: time("next_publish_at")?,
    }))
}

/// Runs the claim (see [`claim_sql`]), quarantines the claimed rows that do
/// not decode, and returns the rest in the relay's order.
pub(super) async fn claim(
    store: &PgStore,
    service: Service,
    now: Timestamp,
    lease: DurationMs,
    limit: usize,
) -> StoreResult<Claimed> {
    assert!(lease.0 >= 0, "a lease is not negative");
    store.ran(PgStatement::OutboxClaim);
    let rows = sqlx::query(&claim_sql(service))
        .bind(now.to_datetime())
        .bind(now.plus(lease).to_datetime())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&store.pool)
        .await
        .map_err(|e| store.err(e))?;
    debug_assert!(rows.len() <= limit, "LIMIT bounds the claim");
    let mut claimed = Claimed::default();
    for r in &rows {
        match decode(service, r)? {
            Ok(entry) => claimed.entries.push(entry),
            Err(bad) => claimed.quarantined.push(bad),
        }
    }
    claimed
        .entries
        .sort_by_key(|e| (e.last_published_at.is_some(), e.next_publish_at, e.seq));
    quarantine(store, service, now, &claimed.quarantined).await?;
    Ok(claimed)
}

/// Sets `rows` aside for good: never due again, kept with the reason.
async fn quarantine(
    store: &PgStore,
    service: Service,
    now: Timestamp,
    rows: &[Quarantined],
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = rows.iter().map(|q| q.seq).collect();
    let reasons: Vec<&str> = rows.iter().map(|q| q.reason.as_str()).collect();
    store.ran(PgStatement::OutboxQuarantine);
    sqlx::query(&format!(
        "UPDATE {}.outbox AS o
         SET quarantined_at = $1, quarantine_reason = q.reason, claimed_until = NULL, next_publish_at = NULL
         FROM unnest($2::bigint[], $3::text[]) AS q(seq, reason)
         WHERE o.seq = q.seq",
        schema(service)
    ))
    .bind(now.to_datetime())
    .bind(seqs)
    .bind(reasons)
    .execute(&store.pool)
    .await
    .map_err(|e| store.err(e))?;
    Ok(())
}

/// Records the publish of `marks` at `now` and ends their claims.
pub(super) async fn mark(
    store: &PgStore,
    service: Service,
    marks: &[Mark],
    now: Timestamp,
) -> StoreResult<()> {
    if marks.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = marks.iter().map(|m| m.seq).collect();
    let next: Vec<Option<chrono::DateTime<chrono::Utc>>> = marks
        .iter()
        .map(|m| m.next_publish_at.map(Timestamp::to_datetime))
        .collect();
    // `set_config(.., true)` is SET LOCAL for this statement's own
    // transaction: its commit does not wait for the WAL flush. A mark lost
    // in a server crash only makes a relay publish the entry again (after
    // its lease), which the consumers' inboxes absorb, so the relay does
    // not pay an fsync per pass the way a state change must.
    let sql = format!(
        "UPDATE {}.outbox AS o
         SET published_count = o.published_count + 1, last_published_at = $1, next_publish_at = m.next,
             claimed_until = NULL
         FROM unnest($2::bigint[], $3::timestamptz[]) AS m(seq, next),
              (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
         WHERE o.seq = m.seq",
        schema(service)
    );
    store.ran(PgStatement::OutboxMark);
    sqlx::query(&sql)
        .bind(now.to_datetime())
        .bind(seqs)
        .bind(next)
        .execute(&store.pool)
        .await
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Ends the claims of `seqs` (claimed, not published).
pub(super) async fn release(store: &PgStore, service: Service, seqs: &[i64]) -> StoreResult<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    store.ran(PgStatement::OutboxRelease);
    sqlx::query(&format!(
        "UPDATE {}.outbox SET claimed_until = NULL WHERE seq = ANY($1)",
        schema(service)
    ))
    .bind(seqs)
    .execute(&store.pool)
    .await
    .map_err(|e| store.err(e))?;
    Ok(())
}
