//! Which store and bus a command runs on: Postgres + Redis (the default) or
//! the in-memory adapters (`--in-memory`), and the `Env` built over them.

use std::process::ExitCode;
use std::sync::Arc;

use crate::adapters::http::probe::{InProcess, RedisProbe, StoreProbe};
use crate::adapters::http::{DeadLetterSource, Probe, ReadModel};
use crate::adapters::metrics::{GaugeSources, Metrics, MetricsObserver};
use crate::adapters::postgres::{self, PgConfig, PgStore};
use crate::adapters::redis::DeadLetterEntry;
use crate::adapters::redis::{RedisBus, RedisConfig};
use crate::adapters::tokens::{MemoryTokens, TokenStore};
use crate::domain::gateway::SimulatedGateway;
use crate::domain::DurationMs;
use crate::domain::Service;
use crate::runtime::bus::publish_one_at_a_time;
use crate::runtime::memory::{MemoryBus, MemoryStore};
use crate::runtime::{Bus, BusError, Delivery, Env, Fanout, Observer, PartialPublish, Store, SystemClock};

use super::logging::TracingObserver;
use super::GlobalArgs;

/// Visibility timeout of the in-memory bus: longer than any handler takes.
const MEMORY_VISIBILITY: DurationMs = DurationMs(30_000);

/// What a command needs besides the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// `migrate`, `seed-demo`, `audit`: Postgres only, so they work while
    /// Redis is down.
    StoreOnly,
    StoreAndBus,
}

/// The bus of a command that does not use one: every call fails, saying so.
struct NoBus;

#[async_trait::async_trait]
impl Bus for NoBus {
    async fn publish(&self, _: &crate::domain::Event) -> Result<(), BusError> {
        Err(NoBus::refuse())
    }
    async fn publish_batch(&self, events: &[&crate::domain::Event]) -> Result<(), PartialPublish> {
        publish_one_at_a_time(self, events).await
    }
    async fn receive(&self, _: Service, _: &str, _: usize) -> Result<Vec<Delivery>, BusError> {
        Err(NoBus::refuse())
    }
    async fn ack(&self, _: Service, _: &str) -> Result<(), BusError> {
        Err(NoBus::refuse())
    }
    async fn dead_letter(&self, _: Service, _: &Delivery, _: &str) -> Result<(), BusError> {
        Err(NoBus::refuse())
    }
}

#[async_trait::async_trait]
impl DeadLetterSource for NoBus {
    async fn dead_letters(&self, _: Service, _: usize) -> Result<Vec<DeadLetterEntry>, BusError> {
        Err(NoBus::refuse())
    }
}

impl NoBus {
    fn refuse() -> BusError {
        BusError::Unavailable("this command runs without a bus".into())
    }
}

/// The adapters a command runs on.
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub read: Arc<dyn ReadModel>,
    pub probes: Vec<Arc<dyn Probe>>,
    /// The API tokens (Postgres `api_auth.tokens`, or memory).
    pub tokens: Arc<dyn TokenStore>,
    /// The dead letters the admin API lists.
    pub dead_letters: Arc<dyn DeadLetterSource>,
    /// Where the data lives, for messages.
    pub describe: String,
    /// The Postgres store, for migrations (None in memory).
    pg: Option<PgStore>,
    /// The Redis bus, for its maintenance loop (None in memory or when the
    /// command needs no bus).
    pub redis: Option<RedisBus>,
}

impl Backend {
    /// Opens the backend the flags select, with a pool of `connections`
    /// Postgres connections; the error says what was tried and why it failed.
    pub async fn open(global: &GlobalArgs, connections: u32, needs: Needs) -> Result<Backend, String> {
        if global.in_memory {
            return Ok(Backend::memory());
        }
        let config = PgConfig {
            connections_max: connections.clamp(2, 128),
            idle_in_transaction_timeout: std::time::Duration::from_secs(u64::from(
                global.pg_idle_in_transaction_timeout,
            )),
            ..PgConfig::default()
        };
        let pool = postgres::connect(&global.database_url, &config)
            .await
            .map_err(|e| e.to_string())?;
        let store = PgStore::new(pool);
        let store_arc: Arc<dyn Store> = Arc::new(store.clone());
        let mut probes: Vec<Arc<dyn Probe>> = vec![Arc::new(StoreProbe(store_arc.clone()))];
        let mut redis = None;
        let mut dead_letters: Arc<dyn DeadLetterSource> = Arc::new(NoBus);
        let (bus, describe): (Arc<dyn Bus>, String) = match needs {
            Needs::StoreOnly => (Arc::new(NoBus), format!("PostgreSQL {}", store.target())),
            Needs::StoreAndBus => {
                let bus = connect_redis(global).await?;
                probes.push(Arc::new(RedisProbe::of(&global.redis_url, global.redis_cluster)?));
                redis = Some(bus.clone());
                dead_letters = Arc::new(bus.clone());
                let describe = format!(
                    "PostgreSQL {} and Redis {} (prefix {:?})",
                    store.target(),
                    postgres::redact_url(&global.redis_url),
                    global.redis_prefix
                );
                (Arc::new(bus), describe)
            }
        };
        Ok(Backend {
            probes,
            describe,
            store: store_arc,
            bus,
            read: Arc::new(store.clone()),
            tokens: Arc::new(store.clone()),
            dead_letters,
            pg: Some(store),
            redis,
        })
    }

    /// Fresh in-memory store and bus.
    pub fn memory() -> Backend {
        let store = MemoryStore::new();
        let bus = MemoryBus::new(Arc::new(SystemClock), MEMORY_VISIBILITY);
        let store_arc: Arc<dyn Store> = Arc::new(store.clone());
        Backend {
            probes: vec![
                Arc::new(StoreProbe(store_arc.clone())),
                Arc::new(InProcess("bus")),
            ],
            store: store_arc,
            bus: Arc::new(bus.clone()),
            read: Arc::new(store),
            tokens: Arc::new(MemoryTokens::new()),
            dead_letters: Arc::new(bus),
            describe: "in-memory store and bus".to_string(),
            pg: None,
            redis: None,
        }
    }

    /// Creates or updates the schemas (nothing to do in memory).
    pub async fn migrate(&self) -> Result<(), String> {
        match &self.pg {
            Some(pg) => postgres::migrate(pg.pool()).await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// The PostgreSQL store (None in memory).
    pub fn postgres(&self) -> Option<&PgStore> {
        self.pg.as_ref()
    }

    /// Where the `/metrics` gauges of this backend come from.
    pub fn gauge_sources(&self) -> GaugeSources {
        GaugeSources {
            postgres: self.pg.clone(),
            redis: self.redis.clone(),
        }
    }

    /// The runtime's environment over this backend, observed by logs and
    /// by the returned metrics.
    pub fn observed_env(&self, global: &GlobalArgs) -> (Env, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(self.gauge_sources()));
        let observer: Arc<dyn Observer> = Arc::new(Fanout(vec![
            Arc::new(TracingObserver),
            Arc::new(MetricsObserver(metrics.clone())),
        ]));
        let env = Env {
            observer,
            ..self.env(global)
        };
        (env, metrics)
    }

    /// The runtime's environment over this backend.
    pub fn env(&self, global: &GlobalArgs) -> Env {
        Env {
            store: self.store.clone(),
            bus: self.bus.clone(),
            clock: Arc::new(SystemClock),
            gateway: Arc::new(SimulatedGateway::default()),
            observer: Arc::new(TracingObserver),
            config: global.runtime_config(),
        }
    }
}

/// The Redis bus the flags name (URL, prefix), with the default settings;
/// the error says what was tried and why it failed.
pub async fn connect_redis(global: &GlobalArgs) -> Result<RedisBus, String> {
    let config = RedisConfig {
        prefix: global.redis_prefix.clone(),
        cluster: global.redis_cluster,
        ..RedisConfig::default()
    };
    RedisBus::connect(&global.redis_url, config)
        .await
        .map_err(|e| e.to_string())
}

/// `purchase-saga migrate`.
pub async fn run_migrate(global: &GlobalArgs) -> Result<ExitCode, String> {
    let backend = Backend::open(global, 2, Needs::StoreOnly).await?;
    backend.migrate().await?;
    tracing::info!(backend = %backend.describe, "migrations applied");
    Ok(ExitCode::SUCCESS)
}
