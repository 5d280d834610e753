//! Maps sqlx errors onto the store port's three kinds, so the runtime
//! retries what can succeed on retry and stops on what cannot.
//!
//! - Conflict (retry the transaction at once): serialization failure
//!   (40001), deadlock (40P01), unique violation (23505: two transactions
//!   inserted the same new key), lock not available (55P03: `lock_timeout`),
//!   query cancelled (57014: `statement_timeout`), a cached plan whose result
//!   type a migration changed (0A000). sqlx does NOT prepare such a statement
//!   again by itself: the connection keeps the stale prepared statement and
//!   fails the same way on every use until its statement cache is cleared or
//!   the connection closes. [`classify_on`] is the one place that clears it,
//!   and every statement of the store reports its error through it (pooled
//!   statements through `pooled!` in `mod.rs`, transactions through
//!   `tx.rs`), so the retry prepares the statement again. The store's own
//!   statements name their columns, so an additive migration does not
//!   cause 0A000; a type change does.
//! - Unavailable (retry later): the pool timed out, the connection broke or
//!   was refused, the server is shutting down, out of connections, memory or
//!   disk (every code of class 53: 53100 a full disk), read-only (25006: a
//!   standby, or `default_transaction_read_only`), or the server ended the
//!   session for sitting idle (25P03 `idle_in_transaction_session_timeout`:
//!   this process was frozen mid-transaction; 57P05 `idle_session_timeout`),
//!   or the database refused a new connection (55000 at severity FATAL:
//!   `ALTER DATABASE ... ALLOW_CONNECTIONS false`, an operator taking one
//!   service's database away; found by torture's `db-down`, under which it
//!   was Fatal and spent the events' delivery budgets). 55000 from a
//!   statement (severity ERROR) stays Fatal.
//! - Fatal: anything else (a CHECK constraint, a bug, corrupt data).

use sqlx::postgres::{PgDatabaseError, PgSeverity};
use sqlx::PgConnection;

use crate::runtime::StoreError;

/// SQLSTATEs after which the same transaction, run again, may succeed.
const CONFLICT_CODES: [&str; 6] = ["40001", "40P01", "23505", "55P03", "57014", "0A000"];

/// SQLSTATE classes and codes that mean the server is not reachable or not
/// serving: connection exceptions (08), operator intervention (57P01..57P03),
/// insufficient resources (53), read-only transaction (25006), a session
/// ended for idling (25P03, 57P05).
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "57P05" | "25006" | "25P03")
}

/// A new connection refused by its database (`database "x" is not
/// currently accepting connections`): SQLSTATE 55000 at severity FATAL,
/// which the server sends only while starting a session.
fn refused_connection(error: &dyn sqlx::error::DatabaseError, code: &str) -> bool {
    code == "55000"
        && error
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|e| e.severity() == PgSeverity::Fatal)
}

/// Whether `error` is SQLSTATE 0A000, "cached plan must not change result
/// type": a migration changed the type of a column that a statement cached
/// on this connection returns.
pub fn is_stale_plan(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("0A000"))
}

/// [`classify`] for an error that `connection` returned: after a stale plan
/// (0A000) it first drops the connection's statement cache, so that the next
/// statement on it (the retry, or anyone's) prepares again instead of
/// failing the same way for as long as the connection lives.
pub async fn classify_on(connection: &mut PgConnection, error: sqlx::Error, target: &str) -> StoreError {
    if is_stale_plan(&error) {
        if let Err(e) = sqlx::Connection::clear_cached_statements(connection).await {
            tracing::warn!(error = %e, "could not clear the statement cache after SQLSTATE 0A000");
        }
    }
    classify(error, target)
}

/// Classifies `error`; `target` (host, port and database, no password) names
/// where an unavailable store was.
pub fn classify(error: sqlx::Error, target: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            if CONFLICT_CODES.contains(&code.as_str()) {
                StoreError::Conflict(format!("SQLSTATE {code}: {}", db.message()))
            } else if is_unavailable_code(&code) || refused_connection(db.as_ref(), &code) {
                StoreError::Unavailable(format!(
                    "PostgreSQL at {target}: SQLSTATE {code}: {}",
                    db.message()
                ))
            } else {
                StoreError::Fatal(format!("SQLSTATE {code}: {}", db.message()))
            }
        }
        sqlx::Error::PoolTimedOut => StoreError::Unavailable(format!(
            "PostgreSQL at {target}: no connection available from the pool within the acquire timeout"
        )),
        sqlx::Error::PoolClosed => {
            StoreError::Unavailable(format!("PostgreSQL at {target}: the pool is closed"))
        }
        sqlx::Error::Io(e) => StoreError::Unavailable(format!("PostgreSQL at {target}: {e}")),
        sqlx::Error::Tls(e) => StoreError::Unavailable(format!("PostgreSQL at {target}: TLS: {e}")),
        sqlx::Error::Protocol(e) => StoreError::Unavailable(format!("PostgreSQL at {target}: protocol: {e}")),
        sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable(format!("PostgreSQL at {target}: connection worker crashed"))
        }
        _ => StoreError::Fatal(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_io_failures_are_unavailable_and_name_the_target() {
        let e = classify(sqlx::Error::PoolTimedOut, "127.0.0.1:5432/db");
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("127.0.0.1:5432/db")),
            "{e:?}"
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = classify(sqlx::Error::Io(io), "h:1/d");
        assert!(matches!(&e, StoreError::Unavailable(m) if m.contains("refused") && m.contains("h:1/d")));
        assert!(matches!(
            classify(sqlx::Error::RowNotFound, "x"),
            StoreError::Fatal(_)
        ));
    }

    #[test]
    fn unavailable_codes() {
        assert!(is_unavailable_code("08006"));
        assert!(is_unavailable_code("57P01"));
        assert!(is_unavailable_code("53300"));
        assert!(is_unavailable_code("53100"), "disk full");
        assert!(is_unavailable_code("25006"), "read-only");
        assert!(is_unavailable_code("53200"), "out of memory");
        assert!(
            is_unavailable_code("25P03"),
            "ended by idle_in_transaction_session_timeout"
        );
        assert!(
            CONFLICT_CODES.contains(&"0A000"),
            "cached plan must not change result type"
        );
        assert!(!is_unavailable_code("23505"));
        assert!(!is_unavailable_code("57014"));
    }
}
