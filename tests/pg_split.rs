//! A database per service (issue 25) on the local server, one scratch
//! database per part of the layout:
//!
//! - the per-service baselines create exactly the schema the one-database
//!   migrations made (catalogs compared with `pg_dump --schema-only`), and
//!   a one-database install, finished or an upgrade behind, is adopted
//!   with its data; a schema with tables and no history is refused;
//! - in a split layout each database holds its own parts' schemas and no
//!   other, the schema check tells a part that is not migrated there;
//! - sagas run on `PgRoutes` over three databases: a snapshot read while
//!   they run (the databases in the audit order) never shows a violation,
//!   the system reaches quiescence clean, and a planted violation is found.

mod common;
mod split_support;

use split_support::{saga_config, three_databases, EmptyDb};

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use purchase_saga::adapters::http::ReadModel;
use purchase_saga::adapters::metrics::GaugeSources;
use purchase_saga::adapters::postgres::{check_schema, migrate, migrate_parts, Part, LEGACY};
use purchase_saga::cli::seed::demo_scenario;
use purchase_saga::cli::serve::Running;
use purchase_saga::domain::invariants::{self, Invariant};
use purchase_saga::domain::participants::order::PlaceOrder;
use purchase_saga::domain::rows::OrderStatus;
use purchase_saga::domain::{DurationMs, OrderId, Service};
use purchase_saga::runtime::commands::place_order;
use purchase_saga::runtime::memory::MemoryBus;
use purchase_saga::runtime::{Env, NoObserver, Store, SystemClock};

fn schema_of(part: Part) -> &'static str {
    part.schema()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_database_install_is_adopted_with_its_data_and_matches_a_fresh_one() {
    let legacy = EmptyDb::create("legacy").await;
    let store = legacy.store().await;
    LEGACY
        .run(store.pool())
        .await
        .expect("the one-database migrations");
    let rows = demo_scenario("adopt-").opening_rows();
    store.seed_rows(&rows).await.expect("seed");
    let before = store.snapshot().await.unwrap();
    // The new build refuses to run on it until it is migrated.
    let refused = check_schema(store.pool(), &Part::ALL).await.unwrap_err();
    assert!(refused.contains("run `purchase-saga migrate`"), "{refused}");

    migrate(store.pool()).await.expect("adoption");
    migrate(store.pool())
        .await
        .expect("a second migrate does nothing");
    check_schema(store.pool(), &Part::ALL).await.expect("migrated");
    assert_eq!(store.snapshot().await.unwrap(), before, "the data is kept");

    let fresh = EmptyDb::create("fresh").await;
    let fresh_store = fresh.store().await;
    migrate(fresh_store.pool()).await.expect("a fresh install");
    for part in Part::ALL {
        let s = schema_of(part);
        assert_eq!(
            legacy.dump_schema(s),
            fresh.dump_schema(s),
            "schema {s}: the adopted install and a fresh one differ"
        );
    }
    store.pool().close().await;
    fresh_store.pool().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_an_upgrade_behind_is_finished_then_adopted() {
    let db = EmptyDb::create("behind").await;
    let store = db.store().await;
    let older = sqlx::migrate::Migrator {
        migrations: Cow::Owned(LEGACY.migrations[..3].to_vec()),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    older.run(store.pool()).await.expect("the first three migrations");
    migrate(store.pool()).await.expect("finished and adopted");
    check_schema(store.pool(), &Part::ALL).await.expect("migrated");
    let fresh = EmptyDb::create("behind_fresh").await;
    let fresh_store = fresh.store().await;
    migrate(fresh_store.pool()).await.unwrap();
    assert_eq!(db.dump_schema("payment_svc"), fresh.dump_schema("payment_svc"));
    assert_eq!(db.dump_schema("api_auth"), fresh.dump_schema("api_auth"));
    store.pool().close().await;
    fresh_store.pool().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_with_tables_and_no_history_is_refused_and_nothing_changes() {
    let db = EmptyDb::create("stray").await;
    let store = db.store().await;
    sqlx::raw_sql("CREATE SCHEMA payment_svc; CREATE TABLE payment_svc.payments (x int)")
        .execute(store.pool())
        .await
        .unwrap();
    let parts = [Part::Service(Service::Order), Part::Service(Service::Payment)];
    let refused = migrate_parts(store.pool(), &parts).await.unwrap_err().to_string();
    assert!(
        refused.contains("schema payment_svc holds tables but no migration history"),
        "{refused}"
    );
    assert_eq!(
        db.schemas(&store).await,
        ["payment_svc"],
        "order_svc was not created"
    );
    store.pool().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_holds_its_own_schemas_and_the_check_tells_a_misroute() {
    let (dbs, routes) = three_databases().await;
    let refused = routes.check_schema().await.unwrap_err();
    assert!(refused.contains("run `purchase-saga migrate`"), "{refused}");
    routes
        .migrate()
        .await
        .expect("migrate each database with its parts");
    routes.migrate().await.expect("idempotent");
    routes.check_schema().await.expect("migrated");
    let held: Vec<(Vec<String>, Vec<Part>)> = {
        let mut held = Vec::new();
        for ((store, parts), db) in routes.databases().zip(&dbs) {
            held.push((db.schemas(store).await, parts.to_vec()));
        }
        held
    };
    for (schemas, parts) in &held {
        let mut expected: Vec<String> = parts.iter().map(|p| p.schema().to_string()).collect();
        expected.sort();
        assert_eq!(
            schemas, &expected,
            "each database holds its parts' schemas and no other"
        );
    }
    // Payment's schema is not in the first database: the check says so.
    let (first, _) = routes.databases().next().unwrap();
    let misrouted = check_schema(first.pool(), &[Part::Service(Service::Payment)])
        .await
        .unwrap_err();
    assert!(misrouted.contains("payment_svc"), "{misrouted}");
    // A call for a service these routes do not hold names it.
    let payment_only = routes.only(&[Service::Payment]);
    let refused = payment_only
        .begin(Service::Order)
        .await
        .err()
        .expect("no route to Order");
    assert!(
        refused.to_string().contains("no database for the order service"),
        "{refused}"
    );
    routes.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_across_databases_stay_clean_while_sagas_run_and_find_a_planted_violation() {
    let (_dbs, routes) = three_databases().await;
    routes.migrate().await.unwrap();
    let scenario = demo_scenario("split-");
    routes
        .seed_rows(&scenario.opening_rows())
        .await
        .expect("seed, one transaction per service");
    let store: Arc<dyn Store> = Arc::new(routes.clone());
    let env = Env {
        store: store.clone(),
        bus: Arc::new(MemoryBus::new(Arc::new(SystemClock), DurationMs(10_000))),
        clock: Arc::new(SystemClock),
        gateway: Arc::new(purchase_saga::domain::gateway::SimulatedGateway::default()),
        observer: Arc::new(NoObserver),
        config: saga_config(),
    };
    let running = Running::start(&env, &Service::ALL, 1);
    // Orders from every user for every item, more than the stock and the
    // balances allow: completed and failed sagas, compensations.
    let mut placed = Vec::new();
    let mut audits = 0;
    for (i, (user, item)) in scenario
        .users
        .iter()
        .flat_map(|u| scenario.items.iter().map(move |it| (u, it)))
        .enumerate()
        .take(60)
    {
        let cmd = PlaceOrder {
            order_id: OrderId::parse(format!("split-{i}")).unwrap(),
            user_id: user.id.clone(),
            item_id: item.id.clone(),
            quantity: 1 + (i as i64 % 3),
            payment_method: purchase_saga::domain::gateway::DEFAULT_METHOD.to_string(),
        };
        place_order(&env, &cmd).await.expect("placed");
        placed.push(cmd.order_id);
        if i % 3 == 0 {
            // An audit of the safety invariants while sagas are in flight.
            let snapshot = routes.snapshot().await.unwrap();
            let found = invariants::check_safety(&snapshot);
            assert!(found.is_empty(), "a running system audited dirty: {found:?}");
            audits += 1;
        }
    }
    let until = Instant::now() + Duration::from_secs(90);
    let snapshot = loop {
        let snapshot = routes.snapshot().await.unwrap();
        let found = invariants::check_safety(&snapshot);
        assert!(found.is_empty(), "a running system audited dirty: {found:?}");
        audits += 1;
        // Terminal orders may still have compensations and notifications
        // in flight: done once the quiescent invariants hold too.
        let terminal = placed
            .iter()
            .all(|id| snapshot.orders.get(id).is_some_and(|o| o.status.is_terminal()));
        if terminal && invariants::check_quiescent(&snapshot).is_empty() {
            break snapshot;
        }
        assert!(
            Instant::now() < until,
            "sagas did not finish clean within 90 s: {:?}",
            invariants::check_quiescent(&snapshot)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let unfinished = running.stop(Duration::from_secs(30)).await;
    assert!(unfinished.is_empty(), "{unfinished:?}");
    assert!(audits > 20, "{audits} audits while sagas ran");
    let completed: Vec<&OrderId> = placed
        .iter()
        .filter(|id| snapshot.orders[*id].status == OrderStatus::Completed)
        .collect();
    assert!(!completed.is_empty(), "some orders completed");

    // The API's reads fan out: an order's timeline from every service's
    // outbox, each on its own database, and when Payment processed them.
    let victim = completed[0];
    let events = ReadModel::order_events(&routes, victim).await.unwrap();
    let emitters: std::collections::BTreeSet<Service> = events.iter().map(|e| e.event.emitter()).collect();
    assert!(
        emitters.contains(&Service::Order) && emitters.contains(&Service::Payment) && emitters.len() >= 4,
        "{emitters:?}"
    );
    let ids: Vec<_> = events.iter().map(|e| e.event.event_id).collect();
    let processed = ReadModel::processed_at(&routes, Service::Payment, &ids)
        .await
        .unwrap();
    assert!(!processed.is_empty(), "Payment's inbox, on Payment's database");
    // The gauges of a process serving Payment read Payment's database only.
    let gauges = GaugeSources {
        postgres: Some(routes.only(&[Service::Payment])),
        redis: None,
    };
    assert!(gauges.read(Service::Order).await.outbox_backlog.is_none());
    assert!(matches!(
        gauges.read(Service::Payment).await.outbox_backlog,
        Some(Ok(_))
    ));

    // Planted: a completed order's payment row disappears from Payment's
    // database. Read last, it is found missing.
    let payment_db = routes.of(Service::Payment).unwrap();
    sqlx::query("DELETE FROM payment_svc.payments WHERE order_id = $1")
        .bind(victim.as_str())
        .execute(payment_db.pool())
        .await
        .unwrap();
    let found = invariants::check_safety(&routes.snapshot().await.unwrap());
    let kinds: Vec<Invariant> = found.iter().map(|v| v.invariant).collect();
    assert!(kinds.contains(&Invariant::CompletedOnlyWhenPaid), "{found:?}");
    assert!(kinds.contains(&Invariant::GrantOnlyWhenPaid), "{found:?}");
    routes.close().await;
}
