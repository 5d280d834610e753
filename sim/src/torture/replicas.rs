//! Replicas and the client of one torture seed.
//!
//! A replica is one "process" of a service: its own PostgreSQL pool (in
//! the split layout to its service's database only, `databases.rs`) and
//! Redis connections, behind the fault layer of `boundary.rs`, running the
//! library's own loops as tokio tasks: `consumer::run`, `relay::run_woken`
//! (woken by its own commits), `sweeper::run_pruner` for its service, and
//! on Order replicas `sweeper::run`. A crash aborts the replica's task
//! (`JoinHandle::abort`), which drops its loops wherever they are, open
//! transactions included; a restart starts it afresh with new
//! connections. A replica cut off the bus (a partition) also stops
//! refreshing its consumer's heartbeat (`RedisBus::pause_heartbeat_while`).
//! The client places the scenario's orders with
//! `commands::place_order` at their (scaled) arrival times.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use purchase_saga::adapters::postgres::{PgConfig, PgStore};
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::{DurationMs, Service, Timestamp};
use purchase_saga::runtime::commands::{place_order, PlaceError, Placed};
use purchase_saga::runtime::relay::RelayWake;
use purchase_saga::runtime::{
    consumer, relay, sweeper, Clock, Dispatch, Env, Fanout, Observer, RuntimeConfig, Store, SystemClock,
};
use purchase_saga::workload::OrderSpec;
use tokio::task::JoinHandle;

use crate::client::RequestLog;
use crate::client::{place_command, request_line, CLIENT_HOST};
use crate::faults::{FaultKind, Replica};
use crate::finding::{check, Finding};

use super::boundary::{FaultyBus, FaultyStore};
use super::databases::DbMap;
use super::state::Shared;
use super::witness::{CheckedBus, CheckedStore, Witness};
use super::TIME_DIVISOR;

/// What every replica of a seed connects to, and how.
#[derive(Clone)]
pub struct Wiring {
    pub shared: Arc<Shared>,
    pub observer: Arc<dyn Observer>,
    /// The seed's databases.
    pub dbs: DbMap,
    pub redis_url: String,
    pub redis: RedisConfig,
    /// The pool of a replica; the plan's `pool_size` caps it (see
    /// [`Wiring::pool`]).
    pub pg: PgConfig,
    pub config: RuntimeConfig,
    /// Below the faults of every replica and the client (`witness.rs`).
    pub witness: Arc<Witness>,
}

/// The wall clock plus a host's skew (the plan's `skew_ms`, scaled like
/// every plan time): a process whose clock is off by that much.
pub struct SkewedClock {
    pub skew_ms: i64,
}

impl Clock for SkewedClock {
    fn now(&self) -> Timestamp {
        SystemClock.now().plus(DurationMs(self.skew_ms))
    }
}

impl Wiring {
    /// The pool of a process while faults are on: the plan's `pool_size`
    /// connections (when it caps them), with an acquire timeout (25 ms)
    /// short enough that a busy pool is met (`pool-exhausted`; the
    /// simulator's is 60 ms). A process started after the heal gets
    /// the uncapped pool; one started before keeps its cap (an sqlx pool
    /// cannot grow), which costs only waits.
    fn pool(&self) -> PgConfig {
        let size = self.shared.plan.pool_size;
        if size == 0 || self.shared.healed() {
            return self.pg.clone();
        }
        PgConfig {
            connections_max: size,
            acquire_timeout: Duration::from_millis(25),
            ..self.pg.clone()
        }
    }

    /// The clock of `host`, skewed as the plan says (counted once per
    /// skewed process start).
    fn clock(&self, host: &str) -> Arc<dyn Clock> {
        let skew_ms = self.shared.plan.skew_ms.get(host).copied().unwrap_or(0) / TIME_DIVISOR as i64;
        if skew_ms == 0 {
            return Arc::new(SystemClock);
        }
        self.shared
            .fault(FaultKind::Skew, format!("{host}'s clock runs {skew_ms}ms off"));
        Arc::new(SkewedClock { skew_ms })
    }

    /// Connects a store (of `service`'s replica, the client's when None;
    /// see [`DbMap::replica_store`]) and a bus, retrying while a fault
    /// keeps the servers away (a restarting Redis, terminated backends, a
    /// database down), until `give_up`. Also returns the pool's own store
    /// (for the statement counts).
    async fn connect(
        &self,
        give_up: Instant,
        service: Option<Service>,
    ) -> Result<(Arc<dyn Store>, PgStore, RedisBus), String> {
        loop {
            let pool = self.dbs.replica_store(service, &self.pool()).await;
            let bus = RedisBus::connect(&self.redis_url, self.redis.clone()).await;
            match (pool, bus) {
                (Ok((store, pg)), Ok(bus)) => return Ok((store, pg, bus)),
                (pool, bus) => {
                    if Instant::now() >= give_up {
                        return Err(format!(
                            "could not connect: {:?} {:?}",
                            pool.err(),
                            bus.err().map(|e| e.to_string())
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Starts `replica`; abort the handle to crash it.
pub fn start(wiring: &Wiring, replica: Replica) -> JoinHandle<()> {
    let wiring = wiring.clone();
    tokio::spawn(async move {
        let give_up = Instant::now() + Duration::from_secs(30);
        let (store, pg, bus) = match wiring.connect(give_up, Some(replica.service)).await {
            Ok(c) => c,
            Err(e) => {
                wiring
                    .shared
                    .found(Finding::new(check::HOST_FAILED, replica.host(), e));
                return;
            }
        };
        wiring.shared.statements.register(&pg, &bus);
        // Cut off the bus, the replica stops its heartbeat too, as a
        // process cut off Redis would: the others take its entries.
        let cut = wiring.shared.clone();
        bus.pause_heartbeat_while(move || cut.is_cut(replica));
        // Commits wake the relay only in relay mode (send on commit: the
        // relay recovers, on its idle poll).
        let relay_mode = wiring.config.dispatch == Dispatch::Relay;
        let wake = relay_mode.then(|| Arc::new(RelayWake::default()));
        let observer: Arc<dyn Observer> = match &wake {
            Some(wake) => Arc::new(Fanout(vec![wiring.observer.clone(), wake.clone()])),
            None => wiring.observer.clone(),
        };
        let env = Env {
            store: Arc::new(FaultyStore {
                inner: Arc::new(CheckedStore {
                    inner: store,
                    witness: wiring.witness.clone(),
                }),
                shared: wiring.shared.clone(),
                replica: Some(replica),
            }),
            bus: Arc::new(FaultyBus {
                inner: Arc::new(CheckedBus {
                    inner: Arc::new(bus),
                    witness: wiring.witness.clone(),
                }),
                shared: wiring.shared.clone(),
                replica,
            }),
            clock: wiring.clock(&replica.host()),
            gateway: Arc::new(SimulatedGateway::default()),
            observer,
            config: wiring.config.clone(),
        };
        // Never signalled: a replica ends by being aborted.
        let (_keep_running, shutdown) = tokio::sync::watch::channel(false);
        let service = replica.service;
        let mut loops = tokio::task::JoinSet::new();
        loops.spawn(consumer::run(
            env.clone(),
            service,
            replica.host(),
            shutdown.clone(),
        ));
        loops.spawn(relay::run_woken(env.clone(), service, shutdown.clone(), wake));
        loops.spawn(sweeper::run_pruner(env.clone(), vec![service], shutdown.clone()));
        if service == Service::Order {
            loops.spawn(sweeper::run(env.clone(), shutdown.clone()));
        }
        // Dropping the set (when this task is aborted) aborts the loops.
        while let Some(ended) = loops.join_next().await {
            let why = match ended {
                Err(e) if e.is_panic() => format!("a loop panicked: {e}"),
                _ => "a loop ended without shutdown".to_string(),
            };
            wiring
                .shared
                .found(Finding::new(check::HOST_FAILED, replica.host(), why));
        }
    })
}

/// The client: places each order not yet answered at its arrival time
/// (plan ms scaled, from `start`), retrying store errors until `give_up`,
/// and records each request in `log` (`client::RequestLog`, the
/// simulator's): a retry after a store error is a re-send whose first
/// attempt may have committed, so "one request, one order" is checked as
/// in the simulator. A restarted client (after a `client-crash`) resumes
/// from the log. Sets `done` when finished.
pub fn client(
    wiring: &Wiring,
    orders: Vec<OrderSpec>,
    log: Arc<RequestLog>,
    start: tokio::time::Instant,
    give_up: Instant,
    done: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let wiring = wiring.clone();
    tokio::spawn(async move {
        let (store, pg, bus) = match wiring.connect(give_up, None).await {
            Ok(c) => c,
            Err(e) => {
                wiring.shared.found(Finding::new(check::HOST_FAILED, "client", e));
                done.store(true, Ordering::SeqCst);
                return;
            }
        };
        wiring.shared.statements.register(&pg, &bus);
        let env = Env {
            store: Arc::new(FaultyStore {
                inner: Arc::new(CheckedStore {
                    inner: store,
                    witness: wiring.witness.clone(),
                }),
                shared: wiring.shared.clone(),
                replica: None,
            }),
            bus: Arc::new(bus),
            clock: wiring.clock(CLIENT_HOST),
            gateway: Arc::new(SimulatedGateway::default()),
            observer: wiring.observer.clone(),
            config: wiring.config.clone(),
        };
        for (n, o) in orders.iter().enumerate() {
            if log.answered(n) {
                continue;
            }
            let at = Duration::from_millis(o.at.0.max(0) as u64 / TIME_DIVISOR);
            tokio::time::sleep_until(start + at).await;
            wiring.shared.log(request_line(o));
            loop {
                let (order_id, _) = log.send(n, o);
                let mut cmd = place_command(o);
                cmd.order_id = order_id;
                match place_order(&env, &cmd).await {
                    Ok(placed) => {
                        if log.fire() {
                            wiring.shared.fault(
                                FaultKind::ClientCrash,
                                format!(
                                    "client crashed after {} was placed, before it learned so",
                                    cmd.order_id
                                ),
                            );
                            // The driver aborts this task before the answer is kept.
                            std::future::pending::<()>().await;
                        }
                        log.record_answer(n, matches!(placed, Placed::Created));
                        break;
                    }
                    Err(PlaceError::Rejected(r)) => {
                        wiring
                            .shared
                            .log(format!("Order -> Client: rejected {}: {r}", cmd.order_id));
                        log.record_answer(n, false);
                        break;
                    }
                    Err(PlaceError::Store(e)) if Instant::now() < give_up => {
                        tracing::debug!(order = %o.id, error = %e, "placing again");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(PlaceError::Store(e)) => {
                        wiring.shared.found(Finding::new(
                            check::LIVENESS,
                            format!("order {}", o.id),
                            format!("could not be placed before the bound: {e}"),
                        ));
                        break;
                    }
                }
            }
        }
        done.store(true, Ordering::SeqCst);
    })
}
