//! How the Postgres adapter reports trouble: a wrong DATABASE_URL names the
//! URL (password redacted) and the cause; every pooled connection carries
//! the configured timeouts; a lock wait past `lock_timeout` and a statement
//! past `statement_timeout` are conflicts (retried), a broken CHECK is fatal,
//! an unreachable server is unavailable, and so is a database that refuses
//! new connections.

mod common;

use std::time::Duration;

use purchase_saga::adapters::postgres::{self, classify, ConnectError, PgConfig, PgStore};
use purchase_saga::domain::rows::Account;
use purchase_saga::domain::{Row, RowKey, Service, UserId};
use purchase_saga::runtime::store::{Store, StoreError};

fn alice(balance: i64) -> Row {
    Row::Account(Account {
        user_id: UserId::parse("alice").unwrap(),
        balance,
        opening_balance: 100,
    })
}

#[tokio::test]
async fn wrong_database_url_says_what_it_tried_and_why() {
    let config = PgConfig {
        acquire_timeout: Duration::from_secs(3),
        ..PgConfig::default()
    };
    let refused = postgres::connect("postgres://app:s3cret@127.0.0.1:1/saga", &config)
        .await
        .expect_err("nothing listens on port 1");
    let message = refused.to_string();
    assert!(matches!(refused, ConnectError::Unreachable { .. }), "{message}");
    assert!(
        message.contains("postgres://app:***@127.0.0.1:1/saga"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    assert!(
        message.to_lowercase().contains("refused"),
        "the cause is named: {message}"
    );

    let missing = common::with_database(&common::database_url(), "ps_test_no_such_database");
    let message = postgres::connect(&missing, &config)
        .await
        .expect_err("no such database")
        .to_string();
    assert!(
        message.contains("ps_test_no_such_database") && message.contains("does not exist"),
        "{message}"
    );

    let message = postgres::connect("mysql://h/d", &config)
        .await
        .expect_err("not postgres")
        .to_string();
    assert!(message.contains("not a valid PostgreSQL URL"), "{message}");
}

#[tokio::test]
async fn every_connection_carries_the_configured_timeouts() {
    let db = common::TestDb::create_with(PgConfig {
        connections_max: 3,
        statement_timeout: Duration::from_millis(1500),
        lock_timeout: Duration::from_millis(700),
        ..PgConfig::default()
    })
    .await;
    for _ in 0..3 {
        let mut conn = db.store.pool().acquire().await.unwrap();
        let lock: String = sqlx::query_scalar("SHOW lock_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let statement: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!((lock.as_str(), statement.as_str()), ("700ms", "1500ms"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_statement_timeouts_are_conflicts() {
    let db = common::TestDb::create_with(PgConfig {
        connections_max: 4,
        statement_timeout: Duration::from_millis(500),
        lock_timeout: Duration::from_millis(300),
        ..PgConfig::default()
    })
    .await;
    db.store.seed_rows(&[alice(100)]).await.unwrap();
    let key = RowKey::Account(UserId::parse("alice").unwrap());
    let mut holder = db.store.begin(Service::User).await.unwrap();
    holder.load_for_update(&key).await.unwrap();
    let mut waiter = db.store.begin(Service::User).await.unwrap();
    let err = waiter.load_for_update(&key).await.expect_err("the lock is held");
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("55P03")),
        "{err:?}"
    );
    drop((holder, waiter));

    let slow = sqlx::query("SELECT pg_sleep(2)")
        .execute(db.store.pool())
        .await
        .expect_err("cancelled");
    let err = classify(slow, "x");
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("57014")),
        "{err:?}"
    );
}

#[tokio::test]
async fn broken_check_is_fatal_and_leaves_the_row() {
    let db = common::TestDb::create().await;
    db.store.seed_rows(&[alice(100)]).await.unwrap();
    let key = RowKey::Account(UserId::parse("alice").unwrap());
    let mut tx = db.store.begin(Service::User).await.unwrap();
    tx.load_for_update(&key).await.unwrap();
    let err = tx.save(&alice(-1)).await.expect_err("balance >= 0");
    assert!(
        matches!(&err, StoreError::Fatal(m) if m.contains("23514")),
        "{err:?}"
    );
    drop(tx);
    assert_eq!(db.store.row(&key).await.unwrap(), Some(alice(100)));
}

#[tokio::test]
async fn unreachable_server_is_unavailable_and_named() {
    let options: sqlx::postgres::PgConnectOptions = "postgres://postgres@127.0.0.1:1/gone".parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options);
    let store = PgStore::new(pool);
    let err = store
        .begin(Service::Order)
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("127.0.0.1:1/gone")),
        "{err:?}"
    );
    let err = store.snapshot().await.expect_err("unreachable");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn a_database_that_refuses_connections_is_unavailable() {
    use sqlx::Connection;
    let db = common::TestDb::create_with(PgConfig {
        acquire_timeout: Duration::from_secs(2),
        ..common::test_pg_config(2)
    })
    .await;
    let mut admin = sqlx::PgConnection::connect(&common::database_url())
        .await
        .unwrap();
    for sql in [
        format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.name),
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            db.name
        ),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    let err = db
        .store
        .begin(Service::Order)
        .await
        .err()
        .expect("the database refuses connections");
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("55000")),
        "{err:?}"
    );
    // From a statement, 55000 stays fatal (currval before nextval).
    let mut conn = sqlx::PgConnection::connect(&common::database_url())
        .await
        .unwrap();
    sqlx::query("CREATE TEMP SEQUENCE refused_s")
        .execute(&mut conn)
        .await
        .unwrap();
    let e = sqlx::query("SELECT currval('refused_s')")
        .execute(&mut conn)
        .await
        .expect_err("currval before nextval");
    assert!(
        matches!(classify(e, "x"), StoreError::Fatal(ref m) if m.contains("55000")),
        "a statement's 55000 stays fatal"
    );
    sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name))
        .execute(&mut admin)
        .await
        .unwrap();
}
