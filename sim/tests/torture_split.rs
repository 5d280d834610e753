//! `saga-sim torture --layout split` (issue 25): the seed's service data in
//! three databases grouped as the cluster proof groups them, each holding
//! only its services' schemas, a replica of a service connected to its
//! service's database only, and `db-down` (one service's database refusing
//! connections while the others serve).
//!
//! Needs PostgreSQL (`DATABASE_URL`) and `redis-server`, as `torture.rs`.

mod torture_support;

use purchase_saga::adapters::postgres::Part;
use purchase_saga::domain::Service;
use purchase_saga_sim::torture::databases::SeedDbs;
use purchase_saga_sim::torture::{self, checks, Kind, Layout};
use sqlx::{Connection, PgConnection};
use torture_support::{assert_clean_with_every_order_on_a_path, database_url, light, require_services};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The schemas of our parts present in the database at `url`.
async fn our_schemas(url: &str) -> Vec<String> {
    let mut conn = PgConnection::connect(url).await.expect("a connection");
    let present: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace ORDER BY 1")
        .fetch_all(&mut conn)
        .await
        .expect("pg_namespace");
    let _ = conn.close().await;
    present
        .into_iter()
        .filter(|s| Part::ALL.iter().any(|p| p.schema() == s))
        .collect()
}

#[test]
fn split_databases_hold_only_their_own_schemas_and_a_replica_reaches_only_its_own() {
    require_services();
    runtime().block_on(async {
        let dbs = SeedDbs::create(&database_url(), 0, Layout::Split, None)
            .await
            .expect("three databases");
        assert_eq!(dbs.all().len(), 3);
        for db in dbs.all() {
            let mut want: Vec<String> = db.parts.iter().map(|p| p.schema().to_string()).collect();
            want.sort();
            assert_eq!(our_schemas(&db.url).await, want, "{}", db.name);
        }
        // A statement sent to the wrong database fails loudly.
        let mut conn = PgConnection::connect(&dbs.of(Service::Payment).url)
            .await
            .expect("a connection");
        let e = sqlx::query("SELECT count(*) FROM order_svc.orders")
            .fetch_one(&mut conn)
            .await
            .expect_err("Order's table is not in Payment's database");
        assert!(e.to_string().contains("order_svc"), "{e}");
        let _ = conn.close().await;
        // A replica's store routes its own service only.
        let map = dbs.map();
        let (store, _) = map
            .replica_store(Some(Service::Payment), &Default::default())
            .await
            .expect("Payment's store");
        assert!(store.begin(Service::Payment).await.is_ok());
        let other = store
            .begin(Service::Order)
            .await
            .err()
            .expect("no route to Order");
        assert!(
            other.to_string().contains("no database for the order service"),
            "{other}"
        );
        // The single layout keeps one database with every schema.
        let single = SeedDbs::create(&database_url(), 0, Layout::Single, None)
            .await
            .expect("one database");
        let mut all: Vec<String> = Part::ALL.iter().map(|p| p.schema().to_string()).collect();
        all.sort();
        assert_eq!(our_schemas(&single.all()[0].url).await, all);
    });
}

#[test]
fn split_seeds_pass_with_one_database_down_while_the_others_serve() {
    require_services();
    let mut settings = light();
    settings.layout = Layout::Split;
    for seed in 0..2 {
        let o = torture::run_seed(&settings, seed);
        assert_clean_with_every_order_on_a_path(&o);
        // Counted only by its effect: new connections refused AND another
        // database committed meanwhile.
        assert!(
            o.kinds.get(&Kind::DbDown).copied().unwrap_or(0) > 0,
            "seed {seed}: db-down took effect: {:?}",
            o.kinds
        );
        // The routing check saw the replicas' connections (each on its
        // service's database, or it would have found `misrouted-connection`).
        assert!(
            o.checked.get("replica-connections").copied().unwrap_or(0) > 0,
            "seed {seed}: {:?}",
            o.checked
        );
        for what in ["commits", "acks", "stream-entries"] {
            assert!(
                o.checked.get(what).copied().unwrap_or(0) > 0,
                "{what}: {:?}",
                o.checked
            );
        }
    }
}

/// A planted routing error: Payment's replicas get the Item+Notification
/// database. The run must fail, first of all on the routing check.
#[test]
fn a_replica_routed_to_another_services_database_is_caught() {
    require_services();
    let mut settings = light();
    settings.layout = Layout::Split;
    settings.misroute = Some(Service::Payment);
    settings.stop_at_first_finding = true;
    let o = torture::run_seed(&settings, 0);
    assert!(
        o.findings.iter().any(|(_, f)| f.check == checks::MISROUTED),
        "a misrouted replica is found: {:?}",
        o.findings
    );
}
