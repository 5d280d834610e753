//! The relay's statements on a service's outbox: the claim of due rows
//! (shared by the relays of a service), the quarantine of rows that do not
//! decode, the mark after publishing and the release of unpublished claims;
//! and the operator's: the list of rows set aside and their release
//! (`purchase-saga outbox quarantined`, `outbox release`).
//!
//! A row whose `schemaVersion` is newer than the newest this build reads is
//! not quarantined: a rolling upgrade writes such rows while old relays still
//! run. The claim gives it back with the version it needs
//! (`needs_schema_version`), and only builds that read that version claim
//! it again; a row that no version explains (bad JSON, a wrong event id, an
//! unknown type) is quarantined for good, until an operator releases it.
//!
//! Each is one autocommit statement. The SQL text comes from one function
//! per statement, so the plan tests (`tests/pg_defects.rs`) explain the
//! exact query the store runs.

use sqlx::postgres::PgRow;
use sqlx::Row as _;

use crate::domain::{DecodeError, DurationMs, Event, Service, Timestamp};
use crate::runtime::store::{Claimed, Mark, OutboxEntry, Quarantined, StoreResult};
use crate::runtime::StoreError;

use super::{schema, PgStatement, PgStore};

/// The outbox columns an [`OutboxEntry`] is read from.
const OUTBOX_COLUMNS: &str = "seq, payload, created_at, published_count, last_published_at, next_publish_at";

/// The claim: `$1` now, `$2` the end of the lease, `$3` the batch size,
/// `$4` the newest `schemaVersion` the claiming build reads.
///
/// Two index-bound halves, each locked with `SKIP LOCKED` so that two
/// relays claiming at once take different rows: never-published rows by
/// `seq` (partial index `outbox_unpublished`), then rows whose re-drive
/// round has come by `(next_publish_at, seq)` (partial index
/// `outbox_next_publish_at`). Ordering the re-drives by their due time,
/// not by `seq`, is what keeps the planner on that index when `now` is
/// past most rows: by `seq` it walked the primary key and filtered the
/// whole table. A row claimed by another relay is due again once its lease
/// ends. Rows left for a newer build (`needs_schema_version` above `$4`)
/// are skipped; a build that reads them takes them and clears the mark.
/// Rows come back in any order; [`claim`] sorts them.
pub fn claim_sql(service: Service) -> String {
    let s = schema(service);
    format!(
        "WITH fresh AS (
            SELECT seq FROM {s}.outbox
            WHERE last_published_at IS NULL AND quarantined_at IS NULL
              AND (claimed_until IS NULL OR claimed_until <= $1)
              AND (needs_schema_version IS NULL OR needs_schema_version <= $4)
            ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED
        ), redrive AS (
            SELECT seq, next_publish_at FROM {s}.outbox
            WHERE next_publish_at <= $1 AND (claimed_until IS NULL OR claimed_until <= $1)
              AND (needs_schema_version IS NULL OR needs_schema_version <= $4)
            ORDER BY next_publish_at, seq LIMIT $3 FOR UPDATE SKIP LOCKED
        ), due AS (
            SELECT seq FROM (
                SELECT seq, false AS redrive, NULL::timestamptz AS at FROM fresh
                UNION ALL
                SELECT seq, true, next_publish_at FROM redrive
            ) AS d ORDER BY redrive, at, seq LIMIT $3
        )
        UPDATE {s}.outbox AS o SET claimed_until = $2, needs_schema_version = NULL
        FROM due WHERE o.seq = due.seq
        RETURNING {columns}",
        columns = OUTBOX_COLUMNS
            .split(", ")
            .map(|c| format!("o.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// A claimed row this build does not publish.
enum SetAside {
    /// No build decodes it: quarantined for good.
    Quarantined(Quarantined),
    /// Written by a newer build: given back for a build that reads
    /// `needs` (see [`leave_for_newer`]).
    Newer { left: Quarantined, needs: u32 },
}

/// A claimed row: its entry, or why this build sets it aside.
type Decoded = Result<OutboxEntry, SetAside>;

/// The `schemaVersion` of a payload that `newest` does not read because it
/// is newer, if that is why: what [`Event::decode`] rejects as an unsupported
/// version above `newest`, or an event it decodes whose version a build that
/// reads only up to `newest` would not (how a test plays an older build).
fn newer_version(decoded: &Result<Event, DecodeError>, newest: u32) -> Option<u32> {
    let version = match decoded {
        Ok(event) => event.schema_version,
        Err(e) => e.newer_schema_version()?,
    };
    (version > newest).then_some(version)
}

/// Decodes one outbox row. A payload that does not decode is the row's own
/// problem (set aside); a column of the wrong type is the table's, and
/// fails the claim.
fn decode(service: Service, r: &PgRow, newest: u32) -> StoreResult<Decoded> {
    let column = |e: sqlx::Error| StoreError::Fatal(format!("{} outbox: {e}", schema(service)));
    let seq: i64 = r.try_get("seq").map_err(column)?;
    let payload: String = r.try_get("payload").map_err(column)?;
    let decoded = Event::decode(payload.as_bytes());
    if let Some(needs) = newer_version(&decoded, newest) {
        return Ok(Err(SetAside::Newer {
            left: Quarantined {
                seq,
                reason: format!("schema version {needs} is newer than this build reads ({newest})"),
            },
            needs,
        }));
    }
    let event = match decoded {
        Ok(event) => event,
        Err(e) => {
            return Ok(Err(SetAside::Quarantined(Quarantined {
                seq,
                reason: format!("undecodable event: {e}"),
            })))
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
/// not decode, gives back those a newer build reads, and returns the rest
/// in the relay's order.
pub(super) async fn claim(
    store: &PgStore,
    service: Service,
    now: Timestamp,
    lease: DurationMs,
    limit: usize,
) -> StoreResult<Claimed> {
    assert!(lease.0 >= 0, "a lease is not negative");
    store.ran(PgStatement::OutboxClaim);
    let newest = store.schema_version_max;
    let rows = pooled!(
        store,
        fetch_all,
        sqlx::query(&claim_sql(service))
            .bind(now.to_datetime())
            .bind(now.plus(lease).to_datetime())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(i32::try_from(newest).unwrap_or(i32::MAX))
    )?;
    debug_assert!(rows.len() <= limit, "LIMIT bounds the claim");
    let mut claimed = Claimed::default();
    let mut needs = Vec::new();
    for r in &rows {
        match decode(service, r, newest)? {
            Ok(entry) => claimed.entries.push(entry),
            Err(SetAside::Quarantined(bad)) => claimed.quarantined.push(bad),
            Err(SetAside::Newer { left, needs: version }) => {
                needs.push(version);
                claimed.left_for_newer.push(left);
            }
        }
    }
    claimed
        .entries
        .sort_by_key(|e| (e.last_published_at.is_some(), e.next_publish_at, e.seq));
    quarantine(store, service, now, &claimed.quarantined).await?;
    leave_for_newer(store, service, &claimed.left_for_newer, &needs).await?;
    Ok(claimed)
}

/// Gives `rows` back, each marked with the schema version it `needs`: due
/// as before for a build that reads it, skipped by this one's claims.
async fn leave_for_newer(
    store: &PgStore,
    service: Service,
    rows: &[Quarantined],
    needs: &[u32],
) -> StoreResult<()> {
    assert_eq!(rows.len(), needs.len(), "one version per row");
    if rows.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = rows.iter().map(|q| q.seq).collect();
    let versions: Vec<i32> = needs
        .iter()
        .map(|v| i32::try_from(*v).unwrap_or(i32::MAX))
        .collect();
    pooled!(
        store,
        execute,
        sqlx::query(&format!(
            "UPDATE {}.outbox AS o SET needs_schema_version = n.version, claimed_until = NULL
             FROM unnest($1::bigint[], $2::int[]) AS n(seq, version)
             WHERE o.seq = n.seq",
            schema(service)
        ))
        .bind(seqs)
        .bind(versions)
    )?;
    Ok(())
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
    pooled!(
        store,
        execute,
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
    )?;
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
    pooled!(
        store,
        execute,
        sqlx::query(&sql).bind(now.to_datetime()).bind(seqs).bind(next)
    )?;
    Ok(())
}

/// Ends the claims of `seqs` (claimed, not published).
pub(super) async fn release(store: &PgStore, service: Service, seqs: &[i64]) -> StoreResult<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    store.ran(PgStatement::OutboxRelease);
    pooled!(
        store,
        execute,
        sqlx::query(&format!(
            "UPDATE {}.outbox SET claimed_until = NULL WHERE seq = ANY($1)",
            schema(service)
        ))
        .bind(seqs)
    )?;
    Ok(())
}

/// An outbox row set aside: quarantined, or left for a newer build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SetAsideRow {
    pub service: Service,
    pub seq: i64,
    pub event_type: String,
    pub order_id: String,
    /// When it was quarantined (None: left for a newer build).
    pub quarantined_at: Option<Timestamp>,
    /// Why it was quarantined.
    pub reason: Option<String>,
    /// The schema version a build must read to publish it.
    pub needs_schema_version: Option<u32>,
}

impl PgStore {
    /// `service`'s outbox rows that no relay publishes as things stand:
    /// quarantined, or left for a build that reads a newer schema version;
    /// by `seq`, at most `limit`.
    pub async fn set_aside(&self, service: Service, limit: usize) -> StoreResult<Vec<SetAsideRow>> {
        let found = pooled!(
            self,
            fetch_all,
            sqlx::query(&format!(
                "SELECT seq, event_type, order_id, quarantined_at, quarantine_reason, needs_schema_version
                 FROM {}.outbox WHERE quarantined_at IS NOT NULL OR needs_schema_version IS NOT NULL
                 ORDER BY seq LIMIT $1",
                schema(service)
            ))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        )?;
        let column = |e: sqlx::Error| StoreError::Fatal(format!("{} outbox: {e}", schema(service)));
        found
            .iter()
            .map(|r| {
                Ok(SetAsideRow {
                    service,
                    seq: r.try_get("seq").map_err(column)?,
                    event_type: r.try_get("event_type").map_err(column)?,
                    order_id: r.try_get("order_id").map_err(column)?,
                    quarantined_at: r
                        .try_get::<Option<chrono::DateTime<chrono::Utc>>, _>("quarantined_at")
                        .map_err(column)?
                        .map(Timestamp::from_datetime),
                    reason: r.try_get("quarantine_reason").map_err(column)?,
                    needs_schema_version: r
                        .try_get::<Option<i32>, _>("needs_schema_version")
                        .map_err(column)?
                        .and_then(|v| u32::try_from(v).ok()),
                })
            })
            .collect()
    }

    /// Makes set-aside rows of `service` due again at `now` (`seqs`, or
    /// every one with None): quarantine and version mark cleared, claims
    /// ended, a published row's next re-drive round set to `now`. Run it
    /// once the cause is gone (the build that reads the row is deployed, the
    /// payload repaired); a row that still does not decode is set aside
    /// again by the next claim. Returns how many rows it released.
    pub async fn release_set_aside(
        &self,
        service: Service,
        seqs: Option<&[i64]>,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let done = pooled!(
            self,
            execute,
            sqlx::query(&format!(
                "UPDATE {}.outbox
                 SET quarantined_at = NULL, quarantine_reason = NULL, needs_schema_version = NULL,
                     claimed_until = NULL,
                     next_publish_at = CASE WHEN last_published_at IS NULL THEN NULL ELSE $1 END
                 WHERE (quarantined_at IS NOT NULL OR needs_schema_version IS NOT NULL)
                   AND ($2::bigint[] IS NULL OR seq = ANY($2))",
                schema(service)
            ))
            .bind(now.to_datetime())
            .bind(seqs.map(<[i64]>::to_vec))
        )?;
        Ok(done.rows_affected())
    }
}
