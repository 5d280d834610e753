//! Connecting to PostgreSQL (the migrations are in `migrations.rs`).
//!
//! Every pooled connection starts with the configured `statement_timeout`,
//! `lock_timeout` and `idle_in_transaction_session_timeout` (sent as startup
//! parameters, so no connection ever runs without them): a transaction stuck
//! behind a lock fails as a conflict and is retried instead of hanging a
//! consumer, and a process that stops mid-transaction (frozen, paused,
//! partitioned) has its session ended by the server, which releases its
//! locks, instead of holding them until it resumes. A connection failure names the
//! URL it tried, with the password redacted, and the cause.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Pool and session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// Connections in the pool: at least the consumers, relays and the
    /// sweeper that run concurrently in one process.
    pub connections_max: u32,
    /// How long `begin` waits for a pooled connection before the store is
    /// reported unavailable.
    pub acquire_timeout: Duration,
    /// Longest statement; a longer one is cancelled (a conflict, retried).
    pub statement_timeout: Duration,
    /// Longest wait for a row lock; then the transaction conflicts and is
    /// retried with backoff.
    pub lock_timeout: Duration,
    /// Longest a session may sit idle inside an open transaction before the
    /// server ends it (PostgreSQL's `idle_in_transaction_session_timeout`),
    /// releasing its row locks. A live process is idle in a transaction only
    /// between two statements of a step (milliseconds; a gateway call at
    /// most seconds); a frozen one would otherwise hold its locks for as long
    /// as it is frozen, and every event of those rows would meet 55P03 on
    /// another replica. Must be shorter than the delivery budget's span
    /// (deliveries_max x the bus's visibility timeout: 10 x 30 s = 300 s by
    /// default) so the locks come free while the events can still be
    /// delivered; the default, 60 s, is a fifth of it and six times the
    /// statement timeout.
    pub idle_in_transaction_timeout: Duration,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            connections_max: 16,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(2),
            idle_in_transaction_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DATABASE_URL {url:?} is not a valid PostgreSQL URL: {cause}")]
    BadUrl { url: String, cause: String },
    #[error("cannot connect to PostgreSQL at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("migrating PostgreSQL at {url} failed: {cause}")]
    Migrate { url: String, cause: String },
}

/// `url` with its database (the path) replaced by `database`, query kept:
/// how the tests and the bench reach the fresh databases they create.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Creates the empty database `name` through a connection to `admin_url`
/// and returns its URL: the fresh databases of the tests, the bench and
/// torture. The error names the server (password redacted) or the
/// statement that failed.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String, String> {
    use sqlx::Connection;
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "a scratch database name is a plain identifier, not {name:?}"
    );
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL at {}: {e}", redact_url(admin_url)))?;
    let created = sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .map_err(|e| format!("CREATE DATABASE {name} on {}: {e}", redact_url(admin_url)));
    let _ = admin.close().await;
    created.map(|_| with_database(admin_url, name))
}

/// Drops database `name` (`WITH (FORCE)`, ending its sessions) through a
/// connection to `admin_url`, from a thread with a runtime of its own, so
/// that a `Drop` running inside a tokio runtime can block on it without
/// stalling that runtime. Returns whether the database is gone.
pub fn drop_database_blocking(admin_url: &str, name: &str) -> bool {
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "a scratch database name is a plain identifier, not {name:?}"
    );
    let (admin_url, sql) = (
        admin_url.to_string(),
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
            sqlx::query(&sql).execute(&mut admin).await.ok()?;
            Some(())
        })
    })
    .join();
    matches!(dropped, Ok(Some(())))
}

/// `url` with its password replaced by `***` (for messages and logs).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// `host:port/database` of `url`: where a store is, for error messages.
pub fn target_of(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    )
}

/// Opens a pool on `url` and checks that one connection works.
pub async fn connect(url: &str, config: &PgConfig) -> Result<PgPool, ConnectError> {
    assert!(config.connections_max > 0, "a pool needs at least one connection");
    let redacted = redact_url(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConnectError::BadUrl {
            url: redacted,
            cause: "the scheme must be postgres:// or postgresql://".into(),
        });
    }
    let options = PgConnectOptions::from_str(url).map_err(|e| ConnectError::BadUrl {
        url: redacted.clone(),
        cause: e.to_string(),
    })?;
    let options = options.options([
        (
            "statement_timeout",
            format!("{}", config.statement_timeout.as_millis()),
        ),
        ("lock_timeout", format!("{}", config.lock_timeout.as_millis())),
        (
            "idle_in_transaction_session_timeout",
            format!("{}", config.idle_in_transaction_timeout.as_millis()),
        ),
    ]);
    // One direct connection first: the pool would retry until its acquire
    // timeout and report only "timed out", hiding the cause (refused,
    // unknown host, bad password, no such database).
    match tokio::time::timeout(config.acquire_timeout, PgConnection::connect_with(&options)).await {
        Err(_) => {
            return Err(ConnectError::Unreachable {
                url: redacted,
                cause: format!("no answer within {:?}", config.acquire_timeout),
            })
        }
        Ok(Err(e)) => {
            return Err(ConnectError::Unreachable {
                url: redacted,
                cause: describe(&e),
            })
        }
        Ok(Ok(probe)) => {
            let _ = probe.close().await;
        }
    }
    PgPoolOptions::new()
        .max_connections(config.connections_max)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: redacted,
            cause: describe(&e),
        })
}

/// A cause worth reading: the server's message for a database error, the OS
/// error for I/O.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("53300") => format!(
            "{} (SQLSTATE 53300): the server's max_connections is reached; lower the pools of the \
             processes sharing it (`--pg-pool-max` / PG_POOL_MAX, connections per pool) or raise \
             max_connections",
            db.message()
        ),
        sqlx::Error::Database(db) => {
            format!("{} (SQLSTATE {})", db.message(), db.code().unwrap_or_default())
        }
        sqlx::Error::PoolTimedOut => {
            "timed out waiting for a connection (is the server up and reachable?)".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/saga?sslmode=disable"),
            "postgres://app:***@db:5432/saga?sslmode=disable"
        );
        assert_eq!(redact_url("postgres://app@db/saga"), "postgres://app@db/saga");
        assert_eq!(redact_url("postgres://db/saga"), "postgres://db/saga");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
