//! Migrations per service (issue 25): each service's database holds that
//! service's schema and no other, and the API's database holds `api_auth`.
//!
//! One migrator per [`Part`] (`migrations/<part>/`), run on one connection
//! with `search_path` set to the part's schema, so that sqlx's history
//! table is `<schema>._sqlx_migrations`: a schema carries its own history,
//! and `pg_dump -n <schema>` moves both to another server.
//!
//! **Upgrade of a one-database install.** Before issue 25, one migrator
//! (`migrations/*.sql`, history in `public._sqlx_migrations`) created every
//! schema in one database. Each part's first migration (`..._baseline`)
//! is exactly the state those migrations leave (`tests/pg_split.rs`
//! compares the two catalogs). On a database whose legacy history exists,
//! `migrate` first finishes the legacy migrations (an install an upgrade
//! behind), then *adopts* each part whose schema already holds tables: it
//! records the baseline as applied in the schema's history without
//! running it, and runs the part's later migrations. A schema with tables
//! and no history, in a database with no complete legacy history, is not
//! ours to guess about: `migrate` refuses and changes nothing.
//!
//! **The rule of issue 27.** Only `migrate` and `demo` change the schema;
//! every other command calls [`check`] first, which fails with "run
//! `purchase-saga migrate`" when a part it uses lacks a migration of this
//! build (a newer build's extra migrations are fine: they are additive).

use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Connection, PgConnection, PgPool};

use crate::domain::Service;

use super::connect::{target_of, ConnectError};
use super::schema;

/// The one-database migrations of the installs made before issue 25
/// (`migrations/*.sql`, history in `public._sqlx_migrations`): run only to
/// finish an old install before its schemas are adopted.
pub static LEGACY: Migrator = sqlx::migrate!("./migrations");

static ORDER: Migrator = sqlx::migrate!("./migrations/order");
static USER: Migrator = sqlx::migrate!("./migrations/user");
static INVENTORY: Migrator = sqlx::migrate!("./migrations/inventory");
static ITEM: Migrator = sqlx::migrate!("./migrations/item");
static PAYMENT: Migrator = sqlx::migrate!("./migrations/payment");
static NOTIFICATION: Migrator = sqlx::migrate!("./migrations/notification");
static API: Migrator = sqlx::migrate!("./migrations/api");

/// The version of every part's baseline: what a one-database install at
/// the last legacy migration already has.
const BASELINE: i64 = 20261207000001;

/// Serializes two `migrate` runs on one database (sqlx's own lock covers
/// one migrator run, not the adoption around it).
const MIGRATE_LOCK: i64 = 0x7073_6167_615f_6d67; // "psaga_mg"

/// What a database holds: a service's schema, or the API's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Service(Service),
    Api,
}

impl Part {
    /// Every part: the six services, then the API.
    pub const ALL: [Part; 7] = [
        Part::Service(Service::Order),
        Part::Service(Service::User),
        Part::Service(Service::Inventory),
        Part::Service(Service::Item),
        Part::Service(Service::Payment),
        Part::Service(Service::Notification),
        Part::Api,
    ];

    /// The six services' parts.
    pub const SERVICES: [Part; 6] = [
        Part::Service(Service::Order),
        Part::Service(Service::User),
        Part::Service(Service::Inventory),
        Part::Service(Service::Item),
        Part::Service(Service::Payment),
        Part::Service(Service::Notification),
    ];

    /// The part's schema.
    pub fn schema(self) -> &'static str {
        match self {
            Part::Service(s) => schema(s),
            Part::Api => "api_auth",
        }
    }

    fn migrator(self) -> &'static Migrator {
        match self {
            Part::Service(Service::Order) => &ORDER,
            Part::Service(Service::User) => &USER,
            Part::Service(Service::Inventory) => &INVENTORY,
            Part::Service(Service::Item) => &ITEM,
            Part::Service(Service::Payment) => &PAYMENT,
            Part::Service(Service::Notification) => &NOTIFICATION,
            Part::Api => &API,
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Service(s) => write!(f, "{}", s.slug()),
            Part::Api => f.write_str("api"),
        }
    }
}

/// Every part in the one database of `pool` (the one-database layout: tests,
/// the simulator's torture, a single `DATABASE_URL`).
pub async fn migrate(pool: &PgPool) -> Result<(), ConnectError> {
    migrate_parts(pool, &Part::ALL).await
}

/// Creates or updates `parts`' schemas in the database of `pool`, adopting
/// a one-database install's schemas (see the module docs). Idempotent.
pub async fn migrate_parts(pool: &PgPool, parts: &[Part]) -> Result<(), ConnectError> {
    let url = target_of(&pool.connect_options());
    let fail = |cause: String| ConnectError::Migrate {
        url: url.clone(),
        cause,
    };
    // A connection of its own: `search_path` changes must not reach the pool.
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(|e| fail(e.to_string()))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut conn)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let result = migrate_locked(&mut conn, parts).await.map_err(fail);
    let _ = conn.close().await;
    result
}

async fn migrate_locked(conn: &mut PgConnection, parts: &[Part]) -> Result<(), String> {
    let legacy = legacy_complete(conn).await?;
    // Check every part before changing anything.
    let mut adopt = Vec::new();
    for part in parts {
        let s = part.schema();
        let history = exists(conn, &format!("{s}._sqlx_migrations")).await?;
        let tables: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename <> '_sqlx_migrations')",
        )
        .bind(s)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
        if history || !tables {
            continue;
        }
        match legacy {
            Some(_) => adopt.push(*part),
            None => {
                return Err(format!(
                    "schema {s} holds tables but no migration history ({s}._sqlx_migrations), and this \
                     database has no history of the one-database migrations (public._sqlx_migrations): \
                     it was not made by `purchase-saga migrate`, or was restored without its history \
                     (move a schema with `pg_dump -n {s}`, which keeps it); nothing was changed"
                ))
            }
        }
    }
    if legacy == Some(false) {
        // An install an upgrade behind: finish its own migrations first, so
        // that what is adopted is exactly the baseline.
        sqlx::query("RESET search_path")
            .execute(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        LEGACY
            .run(&mut *conn)
            .await
            .map_err(|e| format!("finishing the one-database migrations: {e}"))?;
    }
    for part in parts {
        let s = part.schema();
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))
            .execute(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(&format!("SET search_path TO {s}"))
            .execute(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        if adopt.contains(part) {
            adopt_baseline(conn, *part).await?;
            tracing::info!(schema = s, "adopted the one-database install's schema");
        }
        part.migrator()
            .run(&mut *conn)
            .await
            .map_err(|e| format!("schema {s}: {e}"))?;
    }
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Records `part`'s baseline as applied in its schema's history (the
/// connection's `search_path` is the schema), without running it.
async fn adopt_baseline(conn: &mut PgConnection, part: Part) -> Result<(), String> {
    conn.ensure_migrations_table().await.map_err(|e| e.to_string())?;
    let baseline = part
        .migrator()
        .iter()
        .find(|m| m.version == BASELINE)
        .expect("every part starts with the baseline");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, $2, TRUE, $3, 0)",
    )
    .bind(baseline.version)
    .bind(&*baseline.description)
    .bind(&*baseline.checksum)
    .execute(&mut *conn)
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Whether the database has the legacy history: None without one,
/// Some(complete) with one.
async fn legacy_complete(conn: &mut PgConnection) -> Result<Option<bool>, String> {
    if !exists(conn, "public._sqlx_migrations").await? {
        return Ok(None);
    }
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM public._sqlx_migrations WHERE success")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(LEGACY.iter().all(|m| applied.contains(&m.version))))
}

async fn exists(conn: &mut PgConnection, relation: &str) -> Result<bool, String> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(relation)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())
}

/// Ok if every part of `parts` in the database of `pool` has every
/// migration of this build; else what is missing, and "run `purchase-saga
/// migrate`".
pub async fn check(pool: &PgPool, parts: &[Part]) -> Result<(), String> {
    let target = target_of(&pool.connect_options());
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| format!("cannot check the schema of PostgreSQL at {target}: {e}"))?;
    for part in parts {
        let s = part.schema();
        let history = format!("{s}._sqlx_migrations");
        let applied: Vec<i64> = if exists(&mut conn, &history).await? {
            sqlx::query_scalar(&format!("SELECT version FROM {history} WHERE success"))
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        let missing: Vec<String> = part
            .migrator()
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the database at {target} is not migrated for this build: schema {s} ({part}) lacks \
                 migration(s) {}: run `purchase-saga migrate`",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}
