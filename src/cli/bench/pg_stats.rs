//! The database's work over a bench window, from PostgreSQL's statistics
//! views: commits (`pg_stat_database.xact_commit`) and rows written per
//! schema (`pg_stat_user_tables` `n_tup_ins` / `n_tup_upd` / `n_tup_del`),
//! read before and after the window; [`DbStats::since`] is the difference.
//!
//! PostgreSQL's backends report their counters when they go idle (at most
//! once a second, or up to ten seconds later) and when they exit, so a
//! reading is exact only once every backend of the window's pool has
//! exited: the bench closes the pool and [`settle`]s before it reads. The
//! reading's own connection adds its own one or two commits to the next
//! window (noise of a few commits against thousands).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

/// Rows a table (or a sum of tables) had inserted, updated and deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
}

impl Writes {
    /// Every row version written: inserts, updates and deletes.
    pub fn total(&self) -> i64 {
        self.inserted + self.updated + self.deleted
    }

    fn add(&mut self, other: Writes) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.deleted += other.deleted;
    }

    /// `self - before`, never negative (a counter reset reads as zero).
    fn since(&self, before: Writes) -> Writes {
        Writes {
            inserted: (self.inserted - before.inserted).max(0),
            updated: (self.updated - before.updated).max(0),
            deleted: (self.deleted - before.deleted).max(0),
        }
    }
}

/// One reading of the counters, or the difference of two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbStats {
    /// Committed transactions (every autocommit statement is one).
    pub commits: i64,
    pub rollbacks: i64,
    /// Writes per schema (`public`, the bench's ceiling tables, left out).
    pub schemas: BTreeMap<String, Writes>,
    /// Writes of the outboxes of every schema together.
    pub outbox: Writes,
}

impl DbStats {
    /// Builds a reading from the per-table rows `(schema, table, writes)`.
    pub fn from_tables(
        commits: i64,
        rollbacks: i64,
        tables: impl IntoIterator<Item = (String, String, Writes)>,
    ) -> DbStats {
        let mut stats = DbStats {
            commits,
            rollbacks,
            ..DbStats::default()
        };
        for (schema, table, writes) in tables {
            if schema == "public" {
                continue;
            }
            if table == "outbox" {
                stats.outbox.add(writes);
            }
            stats.schemas.entry(schema).or_default().add(writes);
        }
        stats
    }

    /// What happened between `before` and this reading.
    pub fn since(&self, before: &DbStats) -> DbStats {
        DbStats {
            commits: (self.commits - before.commits).max(0),
            rollbacks: (self.rollbacks - before.rollbacks).max(0),
            schemas: self
                .schemas
                .iter()
                .map(|(schema, after)| {
                    let was = before.schemas.get(schema).copied().unwrap_or_default();
                    (schema.clone(), after.since(was))
                })
                .collect(),
            outbox: self.outbox.since(before.outbox),
        }
    }

    /// The sum of two windows' differences.
    pub fn plus(&self, other: &DbStats) -> DbStats {
        let mut sum = self.clone();
        sum.commits += other.commits;
        sum.rollbacks += other.rollbacks;
        for (schema, writes) in &other.schemas {
            sum.schemas.entry(schema.clone()).or_default().add(*writes);
        }
        sum.outbox.add(other.outbox);
        sum
    }

    /// Rows written in every schema together.
    pub fn writes(&self) -> Writes {
        let mut total = Writes::default();
        for writes in self.schemas.values() {
            total.add(*writes);
        }
        total
    }
}

/// Waits until no client backend but the caller's is connected to
/// `database` (autovacuum workers may stay), at most `bound`: then every
/// counter of the closed pools has been reported.
/// Returns whether it got there.
pub async fn settle(conn: &mut PgConnection, database: &str, bound: Duration) -> Result<bool, String> {
    let until = Instant::now() + bound;
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .bind(database)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| format!("reading pg_stat_activity: {e}"))?;
        if others == 0 {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the counters of `database` over a connection of its own (the
/// table view is per database), after [`settle`] (a warning if backends
/// stayed connected: the reading may then miss some of their work).
pub async fn read(url: &str, database: &str) -> Result<DbStats, String> {
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(|e| format!("connecting to {database} for its statistics: {e}"))?;
    if !settle(&mut conn, database, Duration::from_secs(10)).await? {
        eprintln!("warning: backends of {database} stayed connected; its statistics may lag");
    }
    let (commits, rollbacks): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(xact_commit), 0)::int8, coalesce(sum(xact_rollback), 0)::int8
           FROM pg_stat_database WHERE datname = $1",
    )
    .bind(database)
    .fetch_one(&mut conn)
    .await
    .map_err(|e| format!("reading pg_stat_database: {e}"))?;
    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT schemaname::text, relname::text, n_tup_ins, n_tup_upd, n_tup_del
           FROM pg_stat_user_tables ORDER BY schemaname, relname",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(|e| format!("reading pg_stat_user_tables: {e}"))?;
    let _ = conn.close().await;
    Ok(DbStats::from_tables(
        commits,
        rollbacks,
        rows.into_iter()
            .map(|(schema, table, inserted, updated, deleted)| {
                (
                    schema,
                    table,
                    Writes {
                        inserted,
                        updated,
                        deleted,
                    },
                )
            }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(inserted: i64, updated: i64, deleted: i64) -> Writes {
        Writes {
            inserted,
            updated,
            deleted,
        }
    }

    fn reading(commits: i64, tables: &[(&str, &str, Writes)]) -> DbStats {
        DbStats::from_tables(
            commits,
            0,
            tables.iter().map(|(s, t, w)| (s.to_string(), t.to_string(), *w)),
        )
    }

    #[test]
    fn a_reading_sums_tables_per_schema_and_outboxes_apart_and_leaves_public_out() {
        let stats = reading(
            10,
            &[
                ("order_svc", "orders", w(1, 2, 0)),
                ("order_svc", "outbox", w(3, 6, 0)),
                ("user_svc", "outbox", w(2, 4, 1)),
                ("public", "bench_ceiling", w(1000, 50_000, 0)),
            ],
        );
        assert_eq!(stats.schemas["order_svc"], w(4, 8, 0));
        assert_eq!(stats.schemas["user_svc"], w(2, 4, 1));
        assert!(!stats.schemas.contains_key("public"));
        assert_eq!(stats.outbox, w(5, 10, 1));
        assert_eq!(stats.writes(), w(6, 12, 1));
        assert_eq!(stats.writes().total(), 19);
    }

    #[test]
    fn a_window_is_the_difference_of_its_readings_and_windows_add_up() {
        let before = reading(100, &[("order_svc", "outbox", w(10, 20, 0))]);
        let after = reading(
            160,
            &[
                ("order_svc", "outbox", w(15, 30, 0)),
                ("item_svc", "item_stocks", w(0, 7, 0)),
            ],
        );
        let window = after.since(&before);
        assert_eq!(window.commits, 60);
        assert_eq!(window.outbox, w(5, 10, 0));
        assert_eq!(window.schemas["order_svc"], w(5, 10, 0));
        assert_eq!(
            window.schemas["item_svc"],
            w(0, 7, 0),
            "a schema new in the window counts whole"
        );
        let twice = window.plus(&window);
        assert_eq!((twice.commits, twice.outbox), (120, w(10, 20, 0)));
        assert_eq!(twice.schemas["item_svc"], w(0, 14, 0));
        // A counter that went backwards (statistics reset) reads as zero.
        assert_eq!(before.since(&after).commits, 0);
        assert_eq!(before.since(&after).outbox, Writes::default());
    }
}
