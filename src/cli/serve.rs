//! Process wiring: the runtime loops of the selected services, the HTTP
//! API, and graceful shutdown.
//!
//! Per service: `--replicas` consumers (one consumer group, distinct
//! consumer names) and one outbox relay; with the Order service also the
//! deadline sweeper; one pruner over the selected services; on Redis, the
//! bus upkeep (trim acknowledged entries, drop idle consumers). On SIGTERM or
//! Ctrl-C the shutdown channel flips: consumers stop reading and finish the
//! batch in hand, the HTTP server stops accepting and finishes open
//! requests, and the process waits for all of it up to a bound.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::adapters::http::{router, AppState, Limits};
use crate::adapters::metrics::{self, Metrics};
use crate::adapters::redis::RedisBus;
use crate::domain::Service;
use crate::runtime::relay::RelayWake;
use crate::runtime::{consumer, relay, sweeper, Dispatch, Env, Fanout, Shutdown};

use super::backend::Backend;
use super::seed::{demo_scenario, issue_demo_tokens, print_tokens, seed_rows};
use super::{GlobalArgs, ServeArgs, SHUTDOWN_GRACE};

/// The tasks of a running process and the switch that stops them.
pub struct Running {
    /// The environment the loops run with: the caller's, with the relays'
    /// wake-up added to its observer.
    env: Env,
    stop: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<()>)>,
}

impl Running {
    /// Spawns the loops of `services`: see the module docs.
    pub fn start(env: &Env, services: &[Service], replicas: u16) -> Running {
        Running::start_with(env, services, replicas, true)
    }

    /// As [`Running::start`]; without `relay_wake` the relays only poll
    /// (what `bench --no-relay-wake` compares against).
    pub fn start_with(env: &Env, services: &[Service], replicas: u16, relay_wake: bool) -> Running {
        assert!(replicas >= 1, "a service runs at least one consumer");
        let (stop, shutdown) = watch::channel(false);
        let mut tasks = Vec::new();
        let wake = Arc::new(RelayWake::default());
        let env = &Env {
            observer: Arc::new(Fanout(vec![env.observer.clone(), wake.clone()])),
            ..env.clone()
        };
        let instance = ProcessInstance::current();
        for &service in services {
            for replica in 0..replicas {
                let name = instance.consumer_name(service, replica);
                let handle = tokio::spawn(consumer::run(
                    env.clone(),
                    service,
                    name.clone(),
                    shutdown.clone(),
                ));
                tasks.push((format!("consumer {name}"), handle));
            }
            // Send on commit publishes what commits: the relay only
            // recovers, on its idle poll; a commit wakes it in relay mode.
            let woken = relay_wake && env.config.dispatch == Dispatch::Relay;
            let wake = woken.then(|| wake.clone());
            let relay = relay::run_woken(env.clone(), service, shutdown.clone(), wake);
            let handle = tokio::spawn(relay);
            tasks.push((format!("relay {}", service.slug()), handle));
        }
        if services.contains(&Service::Order) {
            tasks.push((
                "sweeper".into(),
                tokio::spawn(sweeper::run(env.clone(), shutdown.clone())),
            ));
        }
        if !services.is_empty() {
            let pruner = sweeper::run_pruner(env.clone(), services.to_vec(), shutdown.clone());
            tasks.push(("pruner".into(), tokio::spawn(pruner)));
        }
        Running {
            env: env.clone(),
            stop,
            tasks,
        }
    }

    /// The environment of the loops: transactions run with it (e.g. the
    /// API's) wake the relays at once.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// Runs `task` until it ends; [`Running::stop`] waits for it too. The
    /// task must watch [`Running::shutdown`].
    pub fn spawn(&mut self, name: &str, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push((name.to_string(), tokio::spawn(task)));
    }

    /// The Redis bus's upkeep for `services`, when the backend has one.
    pub fn spawn_bus_maintenance(&mut self, backend: &Backend, services: &[Service]) {
        if let Some(bus) = backend.redis.clone() {
            let task = bus_maintenance(bus, services.to_vec(), self.shutdown());
            self.spawn("redis maintenance", task);
        }
    }

    /// A receiver of this process's shutdown signal.
    pub fn shutdown(&self) -> Shutdown {
        self.stop.subscribe()
    }

    /// Serves the API on `listener` until shutdown.
    pub fn spawn_http(&mut self, listener: TcpListener, state: Arc<AppState>) {
        self.spawn_http_app(listener, router(state));
    }

    /// Serves the API of `state` and `GET /metrics` on `listener` until
    /// shutdown.
    pub fn spawn_http_with_metrics(
        &mut self,
        listener: TcpListener,
        state: Arc<AppState>,
        metrics: Arc<Metrics>,
    ) {
        self.spawn_http_app(listener, metrics::http::instrument(router(state), metrics));
    }

    /// Serves `app` on `listener` until shutdown.
    pub fn spawn_http_app(&mut self, listener: TcpListener, app: axum::Router) {
        let mut shutdown = self.shutdown();
        let handle = tokio::spawn(async move {
            let stopped = async move {
                // Err means the sender is gone: stop as well.
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        self.tasks.push(("http".into(), handle));
    }

    /// Signals shutdown and waits up to `grace` for every task; returns the
    /// names of those that did not finish (they are aborted).
    pub async fn stop(self, grace: Duration) -> Vec<String> {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        let mut unfinished = Vec::new();
        for (name, mut handle) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(task = %name, error = %e, "task failed");
                    unfinished.push(name);
                }
                Err(_) => {
                    handle.abort();
                    unfinished.push(name);
                }
            }
        }
        unfinished
    }
}

/// Who this process is among the replicas sharing a consumer group: what
/// its consumer names are made of, `{service}-{pid}-{instance}-{replica}`
/// (e.g. `user-1-3f9a0c6e-0`, at most 40 characters).
///
/// The pid alone does not tell processes apart: replicas in separate
/// containers all run as PID 1, so two would share a name, the live one's
/// heartbeat would keep a crashed one "alive", and the crashed one's
/// entries would be the live one's own, which no claim takes: they would
/// wait for the visibility timeout instead of the heartbeat TTL. The
/// instance is 8 hex digits of a v4 UUID drawn when the process starts
/// its loops (two instances collide with odds of 1 in 2^32). A process
/// that starts again gets new names; the old ones, once nothing is
/// pending on them, go with the idle-consumer cleanup
/// ([`RedisBus::remove_idle_consumers`]), whatever their form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInstance {
    pid: u32,
    instance: String,
}

impl ProcessInstance {
    /// This process, with an instance drawn now.
    pub fn current() -> ProcessInstance {
        ProcessInstance::with_pid(std::process::id())
    }

    /// A process whose id is `pid`, with an instance drawn now (tests stand
    /// for containers with it).
    pub fn with_pid(pid: u32) -> ProcessInstance {
        let mut instance = uuid::Uuid::new_v4().simple().to_string();
        instance.truncate(8);
        ProcessInstance { pid, instance }
    }

    /// The consumer name of `service`'s `replica`-th consumer in this
    /// process.
    pub fn consumer_name(&self, service: Service, replica: u16) -> String {
        let name = format!("{}-{}-{}-{replica}", service.slug(), self.pid, self.instance);
        debug_assert!(name.len() <= 40, "consumer names stay short: {name}");
        name
    }
}

/// Period of the Redis upkeep.
const BUS_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// A consumer idle this long with nothing pending is a replica that is gone.
const CONSUMER_IDLE_MIN: Duration = Duration::from_secs(600);

/// Every [`BUS_MAINTENANCE_INTERVAL`] until shutdown: trims the entries of
/// `services`' streams that every group acknowledged (bounded stream
/// length) and removes consumers of gone replicas that hold nothing.
async fn bus_maintenance(bus: RedisBus, services: Vec<Service>, mut shutdown: Shutdown) {
    loop {
        for &service in &services {
            match bus.trim(service).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(%service, trimmed = n, "trimmed acknowledged entries"),
                Err(e) => tracing::warn!(%service, error = %e, "trim failed"),
            }
            match bus.remove_idle_consumers(service, CONSUMER_IDLE_MIN).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(%service, removed = n, "removed idle consumers"),
                Err(e) => tracing::warn!(%service, error = %e, "removing idle consumers failed"),
            }
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(BUS_MAINTENANCE_INTERVAL) => {}
        }
    }
}

/// The API state over `backend`.
pub fn app_state(backend: &Backend, env: &Env) -> Arc<AppState> {
    Arc::new(AppState {
        env: env.clone(),
        read: backend.read.clone(),
        probes: backend.probes.clone(),
        limits: Limits::default(),
        tokens: backend.tokens.clone(),
        dead_letters: backend.dead_letters.clone(),
    })
}

/// Postgres connections a process needs: one per transaction a consumer may
/// have in flight (`handle_concurrency` each), one per relay, the sweeper and
/// the pruner, plus `extra` (the API's reads, bench clients). Capped at
/// [`POOL_MAX`] (see [`pool_size_within`]).
pub fn pool_size(services: usize, replicas: u16, handle_concurrency: usize, extra: usize) -> u32 {
    pool_size_within(services, replicas, handle_concurrency, extra, POOL_MAX)
}

/// [`pool_size`] capped at `pool_max` (`--pg-pool-max`, per pool): past
/// it, handlers queue for a connection (for at most the acquire timeout)
/// instead of the server refusing connections.
pub fn pool_size_within(
    services: usize,
    replicas: u16,
    handle_concurrency: usize,
    extra: usize,
    pool_max: u32,
) -> u32 {
    let consumers = services * usize::from(replicas) * handle_concurrency.max(1);
    let loops = consumers + services + 2;
    u32::try_from(loops + extra).unwrap_or(u32::MAX).min(pool_max)
}

/// The handling lanes per consumer that fit a pool of `pool_max`:
/// `handle_concurrency`, or fewer when services x replicas x lanes plus
/// the loops and `extra` would need more connections (6 services x 2
/// replicas x 8 lanes = 96 did against 80), so that every lane has a
/// connection and none waits out the acquire timeout. At least 1.
pub fn lanes_within_pool(
    services: usize,
    replicas: u16,
    handle_concurrency: usize,
    extra: usize,
    pool_max: u32,
) -> usize {
    let consumers = (services * usize::from(replicas)).max(1);
    let fixed = services + 2 + extra;
    let room = (pool_max as usize).saturating_sub(fixed) / consumers;
    handle_concurrency.max(1).min(room.max(1))
}

/// The default of `--pg-pool-max` (connections per pool): PostgreSQL's
/// default `max_connections` is 100, and the tests and tools need some too.
pub const POOL_MAX: u32 = 80;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => drop(s.recv().await),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        biased;
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `purchase-saga serve`.
pub async fn run_serve(global: &GlobalArgs, args: &ServeArgs) -> Result<ExitCode, String> {
    let services = args.services();
    let extra = if args.http.is_some() { 16 } else { 0 };
    let requested = usize::from(global.handle_concurrency);
    let parts = super::backend::serving_parts(&services, args.http.is_some());
    // Every lane of every service needs a connection of its service's
    // pool: the lanes fit the smallest of them.
    let pool_max = super::backend::smallest_pool_of(global, &services, &parts);
    let lanes = lanes_within_pool(services.len(), args.replicas, requested, extra, pool_max);
    let mut global = global.clone();
    if lanes < requested {
        tracing::warn!(
            requested,
            lanes,
            pool_max,
            "handle concurrency lowered so that every lane has a database connection"
        );
        global.handle_concurrency = u16::try_from(lanes).expect("lanes only ever shrink");
    }
    let global = &global;
    // Pools for the databases of the services served (and, with the HTTP
    // API, the ones its reads span): nothing else is connected to.
    // What the process needs; each pool is capped at its own size.
    let backend = Backend::open_for(
        global,
        pool_size_within(services.len(), args.replicas, lanes, extra, u32::MAX),
        super::backend::Needs::StoreAndBus,
        &parts,
    )
    .await?
    .gauging(&services);
    if global.in_memory {
        // Nothing outlives this process: give it something to sell, and
        // tokens to buy it with (printed, as `seed-demo` does).
        let scenario = demo_scenario("demo-");
        seed_rows(backend.store.as_ref(), &scenario.opening_rows())
            .await
            .map_err(|e| e.to_string())?;
        let issued = issue_demo_tokens(backend.tokens.as_ref(), &scenario)
            .await
            .map_err(|e| e.to_string())?;
        print_tokens(&issued);
    }
    let (env, metrics) = backend.observed_env(global);
    let mut running = Running::start(&env, &services, args.replicas);
    running.spawn_bus_maintenance(&backend, &services);
    if let Some(addr) = args.http {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        tracing::info!(%addr, "HTTP API listening");
        let state = app_state(&backend, running.env());
        running.spawn_http_with_metrics(listener, state, metrics);
    }
    let names: Vec<&str> = services.iter().map(|s| s.slug()).collect();
    tracing::info!(services = %names.join(","), replicas = args.replicas, backend = %backend.describe, "serving");
    termination_signal().await;
    tracing::info!("shutdown requested: finishing in-flight work");
    let unfinished = running.stop(SHUTDOWN_GRACE).await;
    if unfinished.is_empty() {
        tracing::info!("stopped cleanly");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(format!(
            "tasks did not stop within {SHUTDOWN_GRACE:?}: {}",
            unfinished.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_tell_twins_with_one_pid_apart_and_stay_short() {
        let (a, b) = (ProcessInstance::with_pid(1), ProcessInstance::with_pid(1));
        assert_ne!(
            a.consumer_name(Service::User, 0),
            b.consumer_name(Service::User, 0)
        );
        assert_eq!(
            a.consumer_name(Service::User, 0),
            a.consumer_name(Service::User, 0),
            "drawn once per instance"
        );
        let longest = ProcessInstance::with_pid(u32::MAX).consumer_name(Service::Notification, u16::MAX);
        assert!(longest.len() <= 40, "{longest}");
        let parts: Vec<&str> = longest.split('-').collect();
        assert_eq!(parts[..2], ["notification", "4294967295"]);
        assert!(parts[2].len() == 8 && parts[2].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(parts[3], "65535");
    }

    #[test]
    fn lanes_are_bounded_so_that_each_has_a_connection() {
        // 6 services x 2 replicas x 8 lanes = 96 transactions in flight.
        let lanes = lanes_within_pool(6, 2, 8, 16, POOL_MAX);
        assert!(lanes < 8);
        let need = 6 * 2 * lanes + 6 + 2 + 16;
        assert!(need <= POOL_MAX as usize, "{need} connections needed");
        assert_eq!(
            pool_size(6, 2, lanes, 16) as usize,
            need,
            "the pool holds every lane"
        );
        // What fits is left alone.
        assert_eq!(lanes_within_pool(6, 1, 8, 0, POOL_MAX), 8);
        assert_eq!(lanes_within_pool(1, 1, 0, 0, POOL_MAX), 1);
        // Even past any room, one lane each.
        assert_eq!(lanes_within_pool(6, 20, 8, 16, POOL_MAX), 1);
        // A larger pool (`--pg-pool-max 200`) leaves them alone.
        assert_eq!(lanes_within_pool(6, 2, 8, 16, 200), 8);
    }
}
