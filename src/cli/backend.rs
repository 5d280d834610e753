//! Which store and bus a command runs on: Postgres + Redis (the default) or
//! the in-memory adapters (`--in-memory`), and the `Env` built over them.

use std::process::ExitCode;
use std::sync::Arc;

use crate::adapters::http::probe::{InProcess, RedisProbe, StoreProbe};
use crate::adapters::http::{DeadLetterSource, Probe, ReadModel};
use crate::adapters::metrics::{GaugeSources, Metrics, MetricsObserver};
use crate::adapters::postgres::{self, Part, PgConfig, PgRoutes, PgStore};
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
    /// The Postgres databases, for migrations and reads (None in memory).
    pg: Option<PgRoutes>,
    /// The Redis bus, for its maintenance loop (None in memory or when the
    /// command needs no bus).
    pub redis: Option<RedisBus>,
    /// The services whose gauges `/metrics` reads (None: every one).
    gauged: Option<Vec<Service>>,
}

impl Backend {
    /// Opens the backend the flags select for a command that reads every
    /// service and the tokens, with pools of up to `connections` Postgres
    /// connections each, after checking that each database is migrated
    /// (issue 27: only `migrate` and `demo` change the schema); the error
    /// says what was tried and why it failed.
    pub async fn open(global: &GlobalArgs, connections: u32, needs: Needs) -> Result<Backend, String> {
        Backend::open_for(global, connections, needs, &Part::ALL).await
    }

    /// [`open`](Self::open) for the `parts` a command uses: pools only for
    /// their databases (a process serving Payment alone never connects to
    /// Order's database).
    pub async fn open_for(
        global: &GlobalArgs,
        connections: u32,
        needs: Needs,
        parts: &[Part],
    ) -> Result<Backend, String> {
        let backend = Backend::open_unchecked(global, connections, needs, parts).await?;
        if let Some(routes) = &backend.pg {
            routes.check_schema().await?;
        }
        Ok(backend)
    }

    /// Every part, without the schema check: for `migrate` and `demo`,
    /// which migrate next.
    pub async fn open_to_migrate(
        global: &GlobalArgs,
        connections: u32,
        needs: Needs,
    ) -> Result<Backend, String> {
        Backend::open_unchecked(global, connections, needs, &Part::ALL).await
    }

    async fn open_unchecked(
        global: &GlobalArgs,
        connections: u32,
        needs: Needs,
        parts: &[Part],
    ) -> Result<Backend, String> {
        if global.in_memory {
            return Ok(Backend::memory());
        }
        let routes = open_routes(global, connections, parts).await?;
        let store_arc: Arc<dyn Store> = Arc::new(routes.clone());
        let mut probes: Vec<Arc<dyn Probe>> = vec![Arc::new(StoreProbe(store_arc.clone()))];
        let mut redis = None;
        let mut dead_letters: Arc<dyn DeadLetterSource> = Arc::new(NoBus);
        let (bus, describe): (Arc<dyn Bus>, String) = match needs {
            Needs::StoreOnly => (Arc::new(NoBus), format!("PostgreSQL {}", routes.describe())),
            Needs::StoreAndBus => {
                let bus = connect_redis(global).await?;
                probes.push(Arc::new(RedisProbe::of(&global.redis_url, global.redis_cluster)?));
                redis = Some(bus.clone());
                dead_letters = Arc::new(bus.clone());
                let describe = format!(
                    "PostgreSQL {} and Redis {} (prefix {:?})",
                    routes.describe(),
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
            read: Arc::new(routes.clone()),
            tokens: Arc::new(routes.clone()),
            dead_letters,
            pg: Some(routes),
            redis,
            gauged: None,
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
            gauged: None,
        }
    }

    /// Creates or updates the schemas (nothing to do in memory).
    pub async fn migrate(&self) -> Result<(), String> {
        match &self.pg {
            Some(pg) => pg.migrate().await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// The PostgreSQL databases (None in memory).
    pub fn postgres(&self) -> Option<&PgRoutes> {
        self.pg.as_ref()
    }

    /// This backend with `/metrics` gauges for `services` only (what a
    /// `serve` process serves).
    pub fn gauging(mut self, services: &[Service]) -> Backend {
        self.gauged = Some(services.to_vec());
        self
    }

    /// Where the `/metrics` gauges of this backend come from.
    pub fn gauge_sources(&self) -> GaugeSources {
        GaugeSources {
            postgres: self.pg.as_ref().map(|pg| match &self.gauged {
                Some(services) => pg.only(services),
                None => pg.clone(),
            }),
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
    let backend = Backend::open_to_migrate(global, 2, Needs::StoreOnly).await?;
    backend.migrate().await?;
    tracing::info!(backend = %backend.describe, "migrations applied");
    if let Some(pg) = backend.postgres() {
        for leftover in pg.foreign_schemas().await? {
            warn_foreign(&leftover);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The warning `migrate` gives for a schema left in a database its part
/// was moved away from (issue 25): no command reads it, but a process
/// still pointed at that database would read stale rows.
fn warn_foreign(leftover: &postgres::ForeignSchema) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "migrate: warning: the database at {found} holds schema {schema} ({part}), whose database is \
         now {routed}: a leftover of a move, which no command reads. Once its rows are safe \
         (copied, or no longer wanted), drop it on {found}: {drop};",
        found = leftover.found_in,
        schema = leftover.part.schema(),
        part = leftover.part,
        routed = leftover.routed_to,
        drop = leftover.drop_statement(),
    );
}

/// One pool to open: a distinct database URL, the parts it holds, and its
/// most connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPlan<'a> {
    pub url: &'a str,
    pub parts: Vec<Part>,
    /// The largest of the parts' sizes ([`GlobalArgs::pool_max_of`]:
    /// `--pg-pool-max-<part>`, else `--pg-pool-max`).
    pub pool_max: u32,
}

/// The pools of `parts`: one per distinct URL among their databases
/// (`DATABASE_URL_<PART>`, else `DATABASE_URL`), in the order of their
/// first part, each sized by the largest of its parts' sizes (a pool
/// shared by parts serves all of them, so it gets what the most demanding
/// one was given).
pub fn pool_plan<'a>(global: &'a GlobalArgs, parts: &[Part]) -> Vec<PoolPlan<'a>> {
    let mut plan: Vec<PoolPlan<'a>> = Vec::new();
    for part in Part::ALL.into_iter().filter(|p| parts.contains(p)) {
        let url = global.database_url_of(part);
        let size = global.pool_max_of(part);
        match plan.iter_mut().find(|p| p.url == url) {
            Some(pool) => {
                pool.parts.push(part);
                pool.pool_max = pool.pool_max.max(size);
            }
            None => plan.push(PoolPlan {
                url,
                parts: vec![part],
                pool_max: size,
            }),
        }
    }
    plan
}

/// The smallest pool among those that hold `services` (what a process
/// serving them must fit its handling lanes into); `--pg-pool-max` when
/// none does.
pub fn smallest_pool_of(global: &GlobalArgs, services: &[Service], parts: &[Part]) -> u32 {
    pool_plan(global, parts)
        .iter()
        .filter(|p| {
            p.parts
                .iter()
                .any(|part| matches!(part, Part::Service(s) if services.contains(s)))
        })
        .map(|p| p.pool_max)
        .min()
        .unwrap_or(global.pg_pool_max)
}

/// The pools of `parts` as [`pool_plan`] lays them out, each of up to
/// `connections` clamped to its size; an error names the URL and the
/// parts it was to hold.
pub async fn open_routes(global: &GlobalArgs, connections: u32, parts: &[Part]) -> Result<PgRoutes, String> {
    let config = PgConfig {
        idle_in_transaction_timeout: std::time::Duration::from_secs(u64::from(
            global.pg_idle_in_transaction_timeout,
        )),
        ..PgConfig::default()
    };
    let plan = pool_plan(global, parts);
    let mut databases = Vec::with_capacity(plan.len());
    for PoolPlan {
        url,
        parts: held,
        pool_max,
    } in plan
    {
        let config = PgConfig {
            connections_max: connections.clamp(2, pool_max.max(2)),
            ..config.clone()
        };
        let pool = postgres::connect(url, &config).await.map_err(|e| {
            let names: Vec<String> = held.iter().map(|p| p.to_string()).collect();
            format!("{e} (the database of {})", names.join(", "))
        })?;
        databases.push((PgStore::new(pool), held));
    }
    Ok(PgRoutes::new(databases))
}

/// The parts a `serve` process uses: its services' databases, and with the
/// HTTP API every service's (its reads span them: an order's timeline and
/// diagram read every outbox and inbox) and the tokens'.
pub fn serving_parts(services: &[Service], http: bool) -> Vec<Part> {
    Part::ALL
        .into_iter()
        .filter(|p| match p {
            Part::Service(s) => http || services.contains(s),
            Part::Api => http,
        })
        .collect()
}

/// Checks that the databases of `parts` are migrated for this build (issue
/// 27), for a command that does not otherwise use PostgreSQL.
pub async fn check_schema(global: &GlobalArgs, parts: &[Part]) -> Result<(), String> {
    let routes = open_routes(global, 2, parts).await?;
    let checked = routes.check_schema().await;
    routes.close().await;
    checked
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn global(args: &[&str]) -> GlobalArgs {
        let mut all = vec!["purchase-saga", "--database-url", "postgres://a/one"];
        all.extend_from_slice(args);
        all.push("status");
        super::super::Cli::try_parse_from(all)
            .expect("valid flags")
            .global
    }

    #[test]
    fn each_pool_gets_the_largest_size_of_the_parts_it_holds() {
        let payment = Part::Service(Service::Payment);
        // One database: one pool, sized by the largest part.
        let one = global(&[
            "--pg-pool-max",
            "10",
            "--pg-pool-max-payment",
            "30",
            "--pg-pool-max-api",
            "4",
        ]);
        let plan = pool_plan(&one, &Part::ALL);
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].parts.len(), plan[0].pool_max), (7, 30));
        // Payment on its own database: its size there, the default (or a
        // larger part's) on the other.
        let split = global(&[
            "--database-url-payment",
            "postgres://b/pay",
            "--pg-pool-max",
            "10",
            "--pg-pool-max-payment",
            "30",
            "--pg-pool-max-order",
            "12",
        ]);
        let plan = pool_plan(&split, &Part::ALL);
        let sizes: Vec<(&str, u32)> = plan.iter().map(|p| (p.url, p.pool_max)).collect();
        assert_eq!(sizes, [("postgres://a/one", 12), ("postgres://b/pay", 30)]);
        assert_eq!(plan[1].parts, [payment]);
        // Only the parts asked for: without Order, the default.
        let plan = pool_plan(&split, &[Part::Service(Service::User), payment]);
        assert_eq!(plan[0].pool_max, 10);
        // A process serving Payment and User fits its lanes into the smaller.
        assert_eq!(
            smallest_pool_of(&split, &[Service::Payment, Service::User], &Part::ALL),
            12
        );
        assert_eq!(smallest_pool_of(&split, &[Service::Payment], &Part::ALL), 30);
        // Unset: every part has --pg-pool-max.
        assert_eq!(pool_plan(&global(&[]), &Part::ALL)[0].pool_max, 80);
    }
}
