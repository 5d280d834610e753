//! Scratch databases for the tests of a database per service
//! (`tests/pg_split.rs`, `tests/cli_split.rs`).

#![allow(dead_code)]

use std::time::Duration;

use purchase_saga::adapters::postgres::{self, drop_database_blocking, Part, PgRoutes, PgStore};
use purchase_saga::domain::{DurationMs, Service};
use purchase_saga::runtime::RuntimeConfig;

use crate::common;

/// An empty scratch database, dropped (best effort) when this is dropped.
pub struct EmptyDb {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl EmptyDb {
    pub async fn create(label: &str) -> EmptyDb {
        let admin_url = common::database_url();
        let name = format!("ps_split_{label}_{}", common::random_suffix());
        let url = purchase_saga::adapters::postgres::create_database(&admin_url, &name)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        EmptyDb { url, name, admin_url }
    }

    pub async fn store(&self) -> PgStore {
        let pool = postgres::connect(&self.url, &common::test_pg_config(8))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        PgStore::new(pool)
    }

    /// The schemas of the database that are ours (services' and the API's).
    pub async fn schemas(&self, store: &PgStore) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace
             WHERE nspname LIKE '%\\_svc' OR nspname = 'api_auth' ORDER BY nspname",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    }

    /// `pg_dump --schema-only` of one schema, without the dump's random
    /// `\restrict` keys.
    pub fn dump_schema(&self, schema: &str) -> String {
        let out = std::process::Command::new("pg_dump")
            .args(["--schema-only", "--no-owner", "-n", schema, &self.url])
            .output()
            .expect("pg_dump runs (PostgreSQL's client tools are installed)");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EmptyDb {
    fn drop(&mut self) {
        drop_database_blocking(&self.admin_url, &self.name);
    }
}

/// The parts of the three-database layout of the tests.
pub const GROUPS: [&[Part]; 3] = [
    &[Part::Service(Service::Order), Part::Api],
    &[
        Part::Service(Service::User),
        Part::Service(Service::Inventory),
        Part::Service(Service::Item),
    ],
    &[
        Part::Service(Service::Payment),
        Part::Service(Service::Notification),
    ],
];

/// Order and the API; User, Inventory and Item; Payment and Notification.
pub async fn three_databases() -> (Vec<EmptyDb>, PgRoutes) {
    let mut dbs = Vec::new();
    let mut databases = Vec::new();
    for (i, parts) in GROUPS.iter().enumerate() {
        let db = EmptyDb::create(&format!("g{i}")).await;
        databases.push((db.store().await, parts.to_vec()));
        dbs.push(db);
    }
    (dbs, PgRoutes::new(databases))
}

pub fn saga_config() -> RuntimeConfig {
    RuntimeConfig {
        batch_size: 16,
        idle_poll: Duration::from_millis(20),
        error_backoff: Duration::from_millis(100),
        saga_deadline: DurationMs::from_secs(120),
        ..RuntimeConfig::default()
    }
}

/// Runs every service over `store` (an in-memory bus), places `orders`
/// orders of the demo scenario's users and items and waits until they are
/// all terminal; returns their ids.
pub async fn run_sagas(
    store: std::sync::Arc<dyn purchase_saga::runtime::Store>,
    scenario: &purchase_saga::workload::Scenario,
    tag: &str,
    orders: usize,
) -> Vec<purchase_saga::domain::OrderId> {
    use purchase_saga::domain::participants::order::PlaceOrder;
    use purchase_saga::domain::OrderId;
    use purchase_saga::runtime::{memory::MemoryBus, Env, NoObserver, SystemClock};
    use std::sync::Arc;
    let env = Env {
        store: store.clone(),
        bus: Arc::new(MemoryBus::new(Arc::new(SystemClock), DurationMs(10_000))),
        clock: Arc::new(SystemClock),
        gateway: Arc::new(purchase_saga::domain::gateway::SimulatedGateway::default()),
        observer: Arc::new(NoObserver),
        config: saga_config(),
    };
    let running = purchase_saga::cli::serve::Running::start(&env, &Service::ALL, 1);
    let mut placed = Vec::new();
    let pairs = scenario
        .users
        .iter()
        .flat_map(|u| scenario.items.iter().map(move |it| (u, it)));
    for (i, (user, item)) in pairs.enumerate().take(orders) {
        let cmd = PlaceOrder {
            order_id: OrderId::parse(format!("{tag}-{i}")).unwrap(),
            user_id: user.id.clone(),
            item_id: item.id.clone(),
            quantity: 1,
            payment_method: purchase_saga::domain::gateway::DEFAULT_METHOD.to_string(),
        };
        purchase_saga::runtime::commands::place_order(&env, &cmd)
            .await
            .expect("placed");
        placed.push(cmd.order_id);
    }
    let until = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let snapshot = store.snapshot().await.unwrap();
        if placed
            .iter()
            .all(|id| snapshot.orders.get(id).is_some_and(|o| o.status.is_terminal()))
            && purchase_saga::domain::invariants::check_quiescent(&snapshot).is_empty()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "sagas did not finish within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unfinished = running.stop(Duration::from_secs(30)).await;
    assert!(unfinished.is_empty(), "{unfinished:?}");
    placed
}
