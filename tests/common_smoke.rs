//! The test helpers themselves: a fresh database is migrated and isolated,
//! a Redis prefix is cleaned up.

mod common;

use purchase_saga::runtime::Store;

#[tokio::test]
async fn fresh_database_is_migrated_and_empty() {
    let db = common::TestDb::create().await;
    let snapshot = db.store.snapshot().await.expect("snapshot of an empty database");
    assert!(snapshot.orders.is_empty() && snapshot.accounts.is_empty());
    // Migrating again is a no-op.
    purchase_saga::adapters::postgres::migrate(db.store.pool())
        .await
        .expect("idempotent migrate");
    assert!(db.name.starts_with("ps_test_"));
}

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        common::with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
        "postgres://u:p@h:5432/x?sslmode=disable"
    );
    assert_eq!(common::with_database("postgres://h", "x"), "postgres://h/x");
}

#[test]
fn redis_prefix_is_cleaned_up() {
    let r = common::TestRedis::create("smoke");
    let client = redis::Client::open(r.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let key = format!("{}:k", r.prefix);
    redis::cmd("SET").arg(&key).arg(1).query::<()>(&mut conn).unwrap();
    assert_eq!(r.keys(), vec![key.clone()]);
    assert_eq!(r.flush_prefix(), 1);
    assert!(r.keys().is_empty());
}
