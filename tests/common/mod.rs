//! Connections to the real PostgreSQL and Redis for the integration tests,
//! each test isolated: a fresh database per test (`ps_test_<random>`,
//! created from the admin database, migrated, dropped at the end), a unique
//! Redis key prefix per test (its keys deleted at the end).
//!
//! Where the services are: `DATABASE_URL` / `REDIS_URL` when set; otherwise
//! the local defaults (`postgres://postgres@127.0.0.1:5432/postgres`,
//! `redis://127.0.0.1:6379`) when something listens there; otherwise a
//! testcontainers container. If none of that works the test fails with a
//! message saying what to start: a test never skips silently.
#![allow(dead_code)] // Each test file uses a different part of this module.

use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use purchase_saga::adapters::postgres::{self, PgConfig, PgStore};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

const START_POSTGRES: &str = "start PostgreSQL on 127.0.0.1:5432 with trust auth for user `postgres` \
     (e.g. `service postgresql start`), or set DATABASE_URL to a server where that user may CREATE DATABASE, \
     or make Docker available for the testcontainers fallback";
const START_REDIS: &str = "start Redis on 127.0.0.1:6379 (e.g. `redis-server --daemonize yes`), \
     or set REDIS_URL, or make Docker available for the testcontainers fallback";

fn listening(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("a literal socket address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// A container started by the fallback, kept alive for the whole test
/// process by a thread that owns it (and its runtime) and never returns.
fn container_url(what: &'static str, start: fn() -> Result<String, String>) -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("testcontainers-{what}"))
        .spawn(move || {
            let _ = tx.send(start());
            // Keeps the container (owned by `start`'s runtime thread) alive.
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv_timeout(Duration::from_secs(180))
        .map_err(|e| format!("testcontainers did not answer: {e}"))?
}

fn start_postgres_container() -> Result<String, String> {
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let started = async {
                let node = Postgres::default().start().await.map_err(|e| e.to_string())?;
                let port = node.get_host_port_ipv4(5432).await.map_err(|e| e.to_string())?;
                Ok::<_, String>((node, port))
            }
            .await;
            match started {
                Ok((node, port)) => {
                    let _ = tx.send(Ok(format!(
                        "postgres://postgres:postgres@127.0.0.1:{port}/postgres"
                    )));
                    let _keep = node;
                    std::future::pending::<()>().await;
                }
                Err(e) => drop(tx.send(Err(e))),
            }
        });
    });
    rx.recv().map_err(|e| e.to_string())?
}

fn start_redis_container() -> Result<String, String> {
    use testcontainers_modules::redis::{Redis, REDIS_PORT};
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let started = async {
                let node = Redis::default().start().await.map_err(|e| e.to_string())?;
                let port = node
                    .get_host_port_ipv4(REDIS_PORT)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((node, port))
            }
            .await;
            match started {
                Ok((node, port)) => {
                    let _ = tx.send(Ok(format!("redis://127.0.0.1:{port}")));
                    let _keep = node;
                    std::future::pending::<()>().await;
                }
                Err(e) => drop(tx.send(Err(e))),
            }
        });
    });
    rx.recv().map_err(|e| e.to_string())?
}

/// The admin URL of the PostgreSQL server the tests use (see module docs).
pub fn database_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        service_url(
            "PostgreSQL",
            "DATABASE_URL",
            "127.0.0.1:5432",
            DEFAULT_DATABASE_URL,
            || container_url("postgres", start_postgres_container),
            START_POSTGRES,
        )
    })
    .clone()
}

/// The URL of the Redis server the tests use (see module docs).
pub fn redis_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        service_url(
            "Redis",
            "REDIS_URL",
            "127.0.0.1:6379",
            DEFAULT_REDIS_URL,
            || container_url("redis", start_redis_container),
            START_REDIS,
        )
    })
    .clone()
}

/// The env var if set; else the local default if something listens there;
/// else a testcontainers container; else a panic that says what to start.
fn service_url(
    name: &str,
    env_var: &str,
    local: &str,
    default_url: &str,
    container: impl FnOnce() -> Result<String, String>,
    how_to_start: &str,
) -> String {
    if let Ok(url) = std::env::var(env_var) {
        return url;
    }
    if listening(local) {
        return default_url.to_string();
    }
    match container() {
        Ok(url) => url,
        Err(e) => panic!(
            "no {name} for the tests: {env_var} is unset, nothing listens on {local}, \
             and the testcontainers fallback failed ({e}). To fix: {how_to_start}."
        ),
    }
}

#[allow(unused_imports)] // Some of the test binaries that include this module use it.
pub use purchase_saga::adapters::postgres::with_database;

/// A random lower-case suffix for database names and key prefixes.
pub fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Pool settings of the tests: small pools (several test binaries share
/// the server), short timeouts so a stuck lock fails fast.
pub fn test_pg_config(connections_max: u32) -> PgConfig {
    PgConfig {
        connections_max,
        acquire_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(10),
        lock_timeout: Duration::from_secs(3),
        idle_in_transaction_timeout: Duration::from_secs(60),
    }
}

/// A fresh, migrated database, dropped (best effort) when this is dropped.
pub struct TestDb {
    pub store: PgStore,
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates `ps_test_<random>` with a pool of 10 connections.
    pub async fn create() -> TestDb {
        TestDb::create_with(test_pg_config(10)).await
    }

    pub async fn create_with(config: PgConfig) -> TestDb {
        let admin_url = database_url();
        let name = format!("ps_test_{}", random_suffix());
        let url = purchase_saga::adapters::postgres::create_database(&admin_url, &name)
            .await
            .unwrap_or_else(|e| panic!("{e}. To fix: {START_POSTGRES}."));
        // Migrated through a pool of the default configuration: a test's own
        // short statement or lock timeout is for its transactions, and a
        // migration on a loaded machine may take longer than it.
        let migrator = postgres::connect(&url, &PgConfig::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        postgres::migrate(&migrator)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        migrator.close().await;
        let pool = postgres::connect(&url, &config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        TestDb {
            store: PgStore::new(pool),
            url,
            name,
            admin_url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("PS_TEST_KEEP_DB").is_some() {
            eprintln!("keeping test database {} (PS_TEST_KEEP_DB is set)", self.name);
            return;
        }
        if !purchase_saga::adapters::postgres::drop_database_blocking(&self.admin_url, &self.name) {
            eprintln!("could not drop test database {} (best effort)", self.name);
        }
    }
}

/// A unique key prefix on the test Redis; its keys are deleted on drop.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    pub fn create(label: &str) -> TestRedis {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| panic!("REDIS_URL {url:?}: {e}"));
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("cannot connect to Redis at {url}: {e}. To fix: {START_REDIS}."));
        let _: String = redis::cmd("PING")
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("Redis at {url} does not answer PING: {e}. To fix: {START_REDIS}."));
        TestRedis {
            url,
            prefix: format!("ps_test:{label}:{}", random_suffix()),
        }
    }

    /// Every key under this test's prefix.
    pub fn keys(&self) -> Vec<String> {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return Vec::new();
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        // The test's own keys (`prefix:...`) and the bus's, whose hash tag
        // starts with the prefix (`{prefix:service}:...`).
        let patterns = [
            format!("{}:*", self.prefix),
            purchase_saga::adapters::redis::keys::scan_pattern(&self.prefix),
        ];
        for pattern in patterns {
            let mut cursor: u64 = 0;
            // Bounded: a test creates a handful of keys.
            for _ in 0..10_000 {
                let (next, batch): (u64, Vec<String>) = match redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut conn)
                {
                    Ok(r) => r,
                    Err(_) => break,
                };
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        keys
    }

    /// Deletes every key of this prefix: the test's own FLUSHALL.
    pub fn flush_prefix(&self) -> usize {
        let keys = self.keys();
        if keys.is_empty() {
            return 0;
        }
        let client = redis::Client::open(self.url.as_str()).expect("valid REDIS_URL");
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("Redis reachable");
        redis::cmd("DEL")
            .arg(&keys)
            .query::<usize>(&mut conn)
            .unwrap_or(0)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.flush_prefix();
    }
}
