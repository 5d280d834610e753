//! The servers one torture seed runs against, and the faults that reach
//! them directly:
//!
//! - the seed's databases (one, or three in the split layout): see
//!   [`super::databases`], with their faults.
//! - the seed's Redis (a private redis-server, a private three-node
//!   cluster, or a shared server under a prefix) and the faults that reach
//!   it: [`super::redis_target`].

use std::process::Command;
use std::time::Duration;

use purchase_saga::adapters::postgres::redact_url;
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
