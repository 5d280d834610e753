//! The servers one torture seed runs against, and the faults that reach
//! them directly:
//!
//! - [`SeedDb`]: a fresh database `torture_<seed>_<pid>_<n>` on
//!   `DATABASE_URL`'s server, migrated, dropped (`WITH (FORCE)`) when the
//!   guard drops, also after a failure or a panic. Its faults touch this
//!   database only: backends terminated by `datname`, `ALTER DATABASE`
//!   read-only, ADD COLUMN, outbox rows.
//! - the seed's Redis and the faults that reach it: `redis_target.rs`.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use purchase_saga::adapters::postgres::{self, redact_url, with_database, PgConfig};
use purchase_saga::domain::Service;
use sqlx::{Connection, PgConnection};

/// What to start or set when a server is missing.
pub const START_POSTGRES: &str = "start PostgreSQL (trust auth for `postgres` on 127.0.0.1:5432, e.g. \
     `service postgresql start`) or set DATABASE_URL to a server where the user may CREATE DATABASE";
pub const START_REDIS: &str = "install redis-server (torture starts a private one on a free port) or pass \
     --redis-url to a running Redis";

/// Whether torture can run at all: PostgreSQL answers at `database_url`,
/// and either `redis_url` answers PING or `redis-server` can be started.
/// The error says what to start.
pub async fn preflight(database_url: &str, redis_url: Option<&str>) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(database_url)).await {
        Ok(Ok(conn)) => drop(conn.close().await),
        Ok(Err(e)) => {
            return Err(format!(
                "no PostgreSQL at {} ({e}). To fix: {START_POSTGRES}",
                redact_url(database_url)
            ))
        }
        Err(_) => {
            return Err(format!(
                "PostgreSQL at {} does not answer within 5 s. To fix: {START_POSTGRES}",
                redact_url(database_url)
            ))
        }
    }
    match redis_url {
        Some(url) => {
            let client = redis::Client::open(url).map_err(|e| format!("--redis-url {url:?}: {e}"))?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("no Redis at {url} ({e}). To fix: {START_REDIS}"))?;
            let _: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("Redis at {url} does not answer PING ({e}). To fix: {START_REDIS}"))?;
        }
        None => {
            let version = Command::new("redis-server").arg("--version").output();
            if !matches!(&version, Ok(o) if o.status.success()) {
                return Err(format!(
                    "cannot run redis-server ({version:?}). To fix: {START_REDIS}"
                ));
            }
        }
    }
    Ok(())
}

/// A fresh, migrated database for one seed; dropped with the guard.
pub struct SeedDb {
    pub(super) admin_url: String,
    pub name: String,
    pub url: String,
}

impl SeedDb {
    pub async fn create(admin_url: &str, seed: u64) -> Result<SeedDb, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "torture_{seed}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = PgConnection::connect(admin_url).await.map_err(|e| {
            format!(
                "cannot connect to PostgreSQL at {}: {e}. To fix: {START_POSTGRES}",
                redact_url(admin_url)
            )
        })?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        let _ = admin.close().await;
        let db = SeedDb {
            admin_url: admin_url.to_string(),
            url: with_database(admin_url, &name),
            name,
        };
        let pool = postgres::connect(&db.url, &PgConfig::default())
            .await
            .map_err(|e| e.to_string())?;
        postgres::migrate(&pool).await.map_err(|e| e.to_string())?;
        pool.close().await;
        Ok(db)
    }

    async fn admin(&self) -> Result<PgConnection, String> {
        PgConnection::connect(&self.admin_url)
            .await
            .map_err(|e| format!("admin connection: {e}"))
    }

    /// A connection to the seed's database that writes even while the
    /// database defaults to read-only.
    pub(super) async fn writer(&self) -> Result<PgConnection, String> {
        let mut conn = PgConnection::connect(&self.url)
            .await
            .map_err(|e| format!("connection to {}: {e}", self.name))?;
        sqlx::query("SET default_transaction_read_only = off")
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }

    /// Terminates every backend of this database; returns how many
    /// `pg_terminate_backend` actually terminated (it answers false for a
    /// backend that was already gone).
    pub async fn terminate_backends(&self) -> Result<i64, String> {
        let mut admin = self.admin().await?;
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&mut admin)
        .await
        .map_err(|e| format!("pg_terminate_backend: {e}"))?;
        let _ = admin.close().await;
        Ok(killed)
    }

    /// Makes new transactions read-only (or writable again), then
    /// terminates the backends so that pooled connections reconnect with
    /// the new default.
    pub async fn set_read_only(&self, on: bool) -> Result<i64, String> {
        let mut admin = self.admin().await?;
        let value = if on { "on" } else { "off" };
        sqlx::query(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = {value}",
            self.name
        ))
        .execute(&mut admin)
        .await
        .map_err(|e| format!("ALTER DATABASE read-only {value}: {e}"))?;
        let _ = admin.close().await;
        self.terminate_backends().await
    }

    /// Whether a new connection to this database starts read-only: the
    /// effect of [`SeedDb::set_read_only`], seen as a replica sees it.
    pub async fn starts_read_only(&self) -> Result<bool, String> {
        let mut conn = PgConnection::connect(&self.url)
            .await
            .map_err(|e| format!("connection to {}: {e}", self.name))?;
        let on: String = sqlx::query_scalar("SHOW default_transaction_read_only")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.close().await;
        Ok(on == "on")
    }

    /// An additive migration: a nullable column on each of `service`'s
    /// tables. Returns the statements.
    pub async fn add_columns(&self, service: Service, n: u64) -> Result<Vec<String>, String> {
        let mut conn = self.writer().await?;
        let mut done = Vec::new();
        for table in tables(service) {
            let sql = format!("ALTER TABLE {table} ADD COLUMN torture_note_{n} text");
            sqlx::query(&sql)
                .execute(&mut conn)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
            done.push(sql);
        }
        let _ = conn.close().await;
        Ok(done)
    }

    /// Inserts an outbox row of `service` that does not decode: a copy of
    /// its newest row with `"schemaVersion":2` (when it has one and not
    /// `garbage`), else a payload that is not JSON. Returns its seq and
    /// what it is.
    pub async fn insert_bad_outbox_row(
        &self,
        service: Service,
        garbage: bool,
    ) -> Result<(i64, String), String> {
        let s = postgres::schema(service);
        let mut conn = self.writer().await?;
        let copied: Option<i64> = if garbage {
            None
        } else {
            sqlx::query_scalar(&format!(
                "INSERT INTO {s}.outbox (event_id, event_type, order_id, payload, created_at)
                 SELECT gen_random_uuid(), event_type, order_id,
                        replace(payload, '\"schemaVersion\":1', '\"schemaVersion\":2'), now()
                 FROM {s}.outbox WHERE payload LIKE '%\"schemaVersion\":1%' ORDER BY seq DESC LIMIT 1
                 RETURNING seq"
            ))
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| format!("{s}.outbox copy: {e}"))?
        };
        let made = match copied {
            Some(seq) => (seq, "a copy with \"schemaVersion\":2".to_string()),
            None => {
                let seq: i64 = sqlx::query_scalar(&format!(
                    "INSERT INTO {s}.outbox (event_id, event_type, order_id, payload, created_at)
                     VALUES (gen_random_uuid(), 'TORTURE_GARBAGE', 'torture-garbage', '{{not json', now())
                     RETURNING seq"
                ))
                .fetch_one(&mut conn)
                .await
                .map_err(|e| format!("{s}.outbox garbage: {e}"))?;
                (seq, "garbage".to_string())
            }
        };
        let _ = conn.close().await;
        Ok(made)
    }
}

/// The tables of `service`'s rows (not its inbox and outbox).
fn tables(service: Service) -> &'static [&'static str] {
    match service {
        Service::Order => &["order_svc.orders", "order_svc.catalog"],
        Service::User => &["user_svc.accounts", "user_svc.balance_holds"],
        Service::Inventory => &[
            "inventory_svc.inventory_accounts",
            "inventory_svc.slot_reservations",
        ],
        Service::Item => &["item_svc.item_stocks", "item_svc.stock_reservations"],
        Service::Payment => &["payment_svc.payments"],
        Service::Notification => &["notification_svc.notification_logs"],
    }
}

impl Drop for SeedDb {
    fn drop(&mut self) {
        if !purchase_saga::adapters::postgres::drop_database_blocking(&self.admin_url, &self.name) {
            eprintln!("torture: could not drop database {} (drop it by hand)", self.name);
        }
    }
}
