//! `purchase-saga bench`: saga throughput and order-to-terminal latency on
//! the local PostgreSQL and Redis, next to the machine's own ceiling
//! measured in the same run on the same database.
//!
//! Per scale (users and items multiplied by each `--scales` factor): a
//! fresh database (`ps_bench_<tag>_x<scale>`, dropped at the end unless
//! `--keep`) and a fresh Redis prefix (its streams deleted at the end).
//! 1. Ceiling: `BEGIN; UPDATE one row; COMMIT` from as many concurrent
//!    clients as the concurrency level, through the same pool, for
//!    `--ceiling-seconds`; the best level's rate is the ceiling in
//!    transactions/s. Beside it, the same for a step-shaped transaction
//!    (the statements of a two-row saga step on bench tables), which shows
//!    how much of the gap is the saga's database work and how much the
//!    runtime's (bus, relay, consumers).
//! 2. Every service's loops run in-process (`--replicas` consumers each).
//!    For each concurrency level, that many closed-loop clients place
//!    `--orders` orders in total (through `runtime::commands`, not HTTP),
//!    each waiting for its order's terminal event to be published: the
//!    latency is from placing to that publish.
//! 3. Commits per saga: every committed transaction (observer `Committed`)
//!    over every saga, counted once the run is quiet. The ceiling in sagas/s
//!    is the ceiling in transactions/s divided by it.
//! 4. The database's own count of the work: per mode, `pg_stat_database`
//!    commits and `pg_stat_user_tables` rows written per schema, read
//!    before and after the mode ([`pg_stats`]), per saga; the outboxes'
//!    writes per published event; the relays' claims per saga (counted by
//!    a [`claims::CountingStore`] around the store).
//! 5. An open-loop level per mode ([`open_loop`]): Poisson arrivals at
//!    half the scale's best closed-loop rate, latency from each order's
//!    intended send time; p50, p99, p99.9.
//!
//! The modes: by default each scale runs send on commit (`--dispatch
//! commit`) and its control, the relay's dispatch, one after the other on
//! the same database after the same ceiling, each with its own pool and
//! loops, so that the ratios of one run compare them (`--apply-control`
//! adds one transaction per event, issue 14's control).
//!
//! Every user is rich and roomy and every item plentiful, so every saga
//! completes: the full path, the most transactions per saga.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::Connection;

use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::adapters::postgres::{self, PgConfig, PgStore};
use crate::adapters::redis::{RedisBus, RedisConfig};
use crate::domain::gateway::{SimulatedGateway, DEFAULT_METHOD};
use crate::domain::participants::order::PlaceOrder;
use crate::domain::{ItemId, OrderId, Payload, Service, UserId};
use crate::runtime::commands::{place_order, Placed};
use crate::runtime::{Clock, Dispatch, Env, Observer, RuntimeEvent, Store, SystemClock};
use crate::workload::{ItemSpec, Scenario, UserSpec};

use super::hops::{percentile, permille, HopSummary, Hops};

mod claims;
mod open_loop;
mod pg_stats;

use super::serve::Running;
use super::{GlobalArgs, OnOff, SHUTDOWN_GRACE};
use claims::{ClaimCounts, CountingStore};
use open_loop::{run_open, OpenResult};
use pg_stats::DbStats;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Concurrency levels (closed-loop clients), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,48")]
    pub levels: Vec<u16>,
    /// Orders per concurrency level.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub orders: u32,
    /// Users and items multipliers, comma-separated: 1 = 100 users and 20
    /// items, 10 = 1000 and 200.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    pub scales: Vec<u16>,
    /// Consumers per service.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub replicas: u16,
    /// Seconds of the ceiling measurement per concurrency level.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub ceiling_seconds: u32,
    /// Idle poll of the runtime loops (relay, sweeper) in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub idle_poll_ms: u32,
    /// Relays only poll (every idle poll) instead of also waking on their
    /// service's commits: the behaviour before the wake-up, for comparison.
    #[arg(long)]
    pub no_relay_wake: bool,
    /// Skip the control: by default each scale runs its levels twice, with
    /// send on commit (`--dispatch commit`) and then with the relay's
    /// dispatch (`--dispatch relay`), on the same database after the same
    /// ceiling. Only the global `--dispatch` and `--batch-apply` run.
    #[arg(long)]
    pub no_control: bool,
    /// Also run the levels with one transaction per event (`--batch-apply
    /// off`, issue 14's control), which gives the naive bound its commits
    /// per saga as counted (else the success path's 9).
    #[arg(long)]
    pub apply_control: bool,
    /// The open-loop level's rate as a share of the scale's best
    /// closed-loop sagas/s (over every mode of the run); 0 skips it.
    #[arg(long, default_value_t = 0.5)]
    pub open_fraction: f64,
    /// The open-loop level's rate in orders/s, instead of
    /// `--open-fraction` of the measured maximum.
    #[arg(long)]
    pub open_rate: Option<f64>,
    /// Orders of the open-loop level (default: `--orders`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub open_orders: Option<u32>,
    /// Keep the bench databases (their names are printed).
    #[arg(long)]
    pub keep: bool,
    /// Seed of who buys what.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Longest a client waits for its order's terminal event.
const TERMINAL_WAIT: Duration = Duration::from_secs(60);
/// Rows the ceiling's updates spread over.
const CEILING_ROWS: i32 = 1_000;
/// Commits of one saga on the success path with one transaction per event:
/// the order's placement and the eight participant steps.
const SUCCESS_PATH_COMMITS: f64 = 9.0;
/// Base users and items at scale 1.
const BASE_USERS: usize = 100;
const BASE_ITEMS: usize = 20;

/// Observes the run: counts commits and hands each terminal publish to the
/// client waiting for it.
#[derive(Default)]
struct BenchObserver {
    commits: AtomicU64,
    terminal: AtomicU64,
    /// Events published for the first time.
    published: AtomicU64,
    /// Publishes again of an entry already marked published: re-drive
    /// rounds, or a publish whose mark was lost.
    republished: AtomicU64,
    waiters: Mutex<BTreeMap<OrderId, oneshot::Sender<Instant>>>,
    hops: Hops,
}

impl Observer for BenchObserver {
    fn observe(&self, event: RuntimeEvent<'_>) {
        match &event {
            RuntimeEvent::Published {
                event, republish: 0, ..
            } => self.hops.published(event, SystemClock.now().0),
            RuntimeEvent::Handled {
                service,
                event: Some(event),
                attempt: 1,
                duration,
                ..
            } => self.hops.handled(*service, event.event_id, *duration),
            _ => {}
        }
        match &event {
            RuntimeEvent::Committed { .. } => {
                self.commits.fetch_add(1, Ordering::Relaxed);
            }
            RuntimeEvent::Published { republish: 0, .. } => {
                self.published.fetch_add(1, Ordering::Relaxed);
            }
            RuntimeEvent::Published { .. } => {
                self.republished.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        match event {
            RuntimeEvent::Published {
                event, republish: 0, ..
            } if matches!(
                event.payload,
                Payload::OrderCompleted(_) | Payload::OrderFailed(_)
            ) =>
            {
                self.terminal.fetch_add(1, Ordering::Relaxed);
                let waiter = self
                    .waiters
                    .lock()
                    .expect("waiters mutex")
                    .remove(&event.order_id);
                if let Some(tx) = waiter {
                    let _ = tx.send(Instant::now());
                }
            }
            _ => {}
        }
    }
}

/// What one concurrency level measured.
#[derive(Debug, Clone)]
struct LevelResult {
    concurrency: u16,
    sagas: usize,
    failed: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    ceiling_tps: f64,
    step_ceiling_tps: f64,
    hops: HopSummary,
}

impl LevelResult {
    fn sagas_per_s(&self) -> f64 {
        self.sagas as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

fn scenario(scale: u16) -> Scenario {
    let users = BASE_USERS * usize::from(scale);
    let items = BASE_ITEMS * usize::from(scale);
    Scenario {
        users: (0..users)
            .map(|i| UserSpec {
                id: UserId::parse(format!("bench-user-{i}")).expect("valid id"),
                balance: 1_000_000_000_000,
                capacity: 1_000_000,
            })
            .collect(),
        items: (0..items)
            .map(|i| ItemSpec {
                id: ItemId::parse(format!("bench-item-{i}")).expect("valid id"),
                name: format!("Item {i}"),
                price: 10 + i as i64 % 90,
                stock: 1_000_000,
            })
            .collect(),
        orders: Vec::new(),
    }
}

/// A fresh database and Redis prefix for one scale, dropped by [`Fresh::drop_all`].
struct Fresh {
    admin_url: String,
    name: String,
    /// The bench database's URL.
    url: String,
    config: PgConfig,
    bus: RedisBus,
    redis_url: String,
}

impl Fresh {
    /// Creates and migrates the database; returns it with the pool that
    /// did, for the seeding and the ceilings (closed before the modes).
    async fn create(
        global: &GlobalArgs,
        tag: &str,
        scale: u16,
        pool: u32,
    ) -> Result<(Fresh, PgPool), String> {
        let name = format!("ps_bench_{tag}_x{scale}");
        let url = postgres::create_database(&global.database_url, &name).await?;
        let config = PgConfig {
            connections_max: pool,
            ..PgConfig::default()
        };
        let bus = RedisBus::connect(
            &global.redis_url,
            RedisConfig {
                prefix: format!("ps-bench:{tag}:x{scale}"),
                ..RedisConfig::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let fresh = Fresh {
            admin_url: global.database_url.clone(),
            name,
            url,
            config,
            bus,
            redis_url: global.redis_url.clone(),
        };
        let pg = fresh.pool().await?;
        postgres::migrate(&pg).await.map_err(|e| e.to_string())?;
        Ok((fresh, pg))
    }

    /// A new pool on the bench database.
    async fn pool(&self) -> Result<PgPool, String> {
        postgres::connect(&self.url, &self.config)
            .await
            .map_err(|e| e.to_string())
    }

    /// The statistics counters of the bench database, once no other
    /// backend is connected to it (see [`pg_stats`]).
    async fn stats(&self) -> Result<DbStats, String> {
        pg_stats::read(&self.url, &self.name).await
    }

    async fn drop_all(self, keep: bool) {
        if let Ok(client) = redis::Client::open(self.redis_url.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = Service::ALL
                    .iter()
                    .flat_map(|&s| [self.bus.stream_key(s), self.bus.dead_key(s)])
                    .collect();
                let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
            }
        }
        if keep {
            println!("kept database {}", self.name);
            return;
        }
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .execute(&mut admin)
                .await;
        }
    }
}

/// The transaction a ceiling client repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `BEGIN; UPDATE one row; COMMIT`: the issue's yardstick.
    SingleRow,
    /// The statements of a two-row saga step, on bench tables: inbox
    /// insert, two `SELECT ... FOR UPDATE`, two updates, one outbox insert
    /// of a saga-sized payload. What the database alone can do of the
    /// saga's work, without bus, relay or runtime.
    Step,
}

/// Transactions of `shape` per second from `clients` concurrent clients
/// over `pool` for `span`.
async fn ceiling(pool: &sqlx::PgPool, clients: u16, span: Duration, shape: Shape) -> Result<f64, String> {
    let until = Instant::now() + span;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(u64::from(client));
            let mut done = 0u64;
            while Instant::now() < until {
                let mut tx = pool.begin().await?;
                match shape {
                    Shape::SingleRow => {
                        sqlx::query("UPDATE public.bench_ceiling SET n = n + 1 WHERE id = $1")
                            .bind(rng.random_range(0..CEILING_ROWS))
                            .execute(&mut *tx)
                            .await?;
                    }
                    Shape::Step => step_shaped(&mut tx, &mut rng).await?,
                }
                tx.commit().await?;
                done += 1;
            }
            Ok::<u64, sqlx::Error>(done)
        });
    }
    let started = Instant::now();
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        total += joined.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The body of a [`Shape::Step`] transaction (rows locked in key order, as
/// the runtime does).
async fn step_shaped(tx: &mut sqlx::PgConnection, rng: &mut ChaCha8Rng) -> Result<(), sqlx::Error> {
    let a = rng.random_range(0..CEILING_ROWS - 1);
    let b = rng.random_range(a + 1..CEILING_ROWS);
    sqlx::query(
        "INSERT INTO public.bench_inbox (event_id, processed_at) VALUES ($1, now()) ON CONFLICT DO NOTHING",
    )
    .bind(uuid::Uuid::from_u128(rng.random()))
    .execute(&mut *tx)
    .await?;
    for id in [a, b] {
        sqlx::query("SELECT n FROM public.bench_ceiling WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    }
    for id in [a, b] {
        sqlx::query("UPDATE public.bench_ceiling SET n = n + 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("INSERT INTO public.bench_outbox (payload, created_at) VALUES ($1, now())")
        .bind(STEP_PAYLOAD)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// An encoded event's size (USER_VALIDATED is about 330 bytes).
const STEP_PAYLOAD: &str = concat!(
    r#"{"type":"BENCH","schemaVersion":1,"eventId":"00000000-0000-0000-0000-000000000000","#,
    r#""orderId":"bench-order-0000000000","userId":"bench-user-0000","timestamp":0,"#,
    r#""itemId":"bench-item-0000","quantity":1,"totalAmount":100,"paymentMethod":"WALLET","#,
    r#""reservedAmount":100,"remainingBalance":900,"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#
);

/// What every client of a mode's window shares.
#[derive(Clone)]
struct Rig {
    env: Env,
    observer: Arc<BenchObserver>,
    scenario: Arc<Scenario>,
    seed: u64,
}

/// Places order `order_id` for user `user` and item `item` (indices into
/// the scenario) and waits for its terminal event to be published: when it
/// was, or None if the order was not created or not terminal in time.
async fn place_and_wait(rig: &Rig, order_id: &str, user: usize, item: usize) -> Option<Instant> {
    let cmd = PlaceOrder {
        order_id: OrderId::parse(order_id).expect("valid id"),
        user_id: rig.scenario.users[user].id.clone(),
        item_id: rig.scenario.items[item].id.clone(),
        quantity: 1,
        payment_method: DEFAULT_METHOD.to_string(),
    };
    let (tx, rx) = oneshot::channel();
    rig.observer
        .waiters
        .lock()
        .expect("waiters mutex")
        .insert(cmd.order_id.clone(), tx);
    match place_order(&rig.env, &cmd).await {
        Ok(Placed::Created) => {}
        Ok(Placed::Existing(_)) | Err(_) => {
            rig.observer
                .waiters
                .lock()
                .expect("waiters mutex")
                .remove(&cmd.order_id);
            return None;
        }
    }
    match tokio::time::timeout(TERMINAL_WAIT, rx).await {
        Ok(Ok(at)) => Some(at),
        _ => None,
    }
}

/// Places `orders` orders with `clients` closed-loop clients, each waiting
/// for its order's terminal publish; returns latencies and failures.
async fn run_level(
    rig: &Rig,
    tag: &str,
    clients: u16,
    orders: u32,
    bar: &ProgressBar,
) -> (Vec<Duration>, usize, Duration) {
    let seed = rig.seed;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (rig, next, bar) = (rig.clone(), next.clone(), bar.clone());
        let tag = format!("{tag}-c{clients}");
        tasks.spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(clients) << 32) ^ u64::from(client));
            let mut latencies = Vec::new();
            let mut failed = 0;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= u64::from(orders) {
                    return (latencies, failed);
                }
                let user = rng.random_range(0..rig.scenario.users.len());
                let item = rng.random_range(0..rig.scenario.items.len());
                let placed_at = Instant::now();
                match place_and_wait(&rig, &format!("{tag}-{n}"), user, item).await {
                    Some(at) => latencies.push(at.saturating_duration_since(placed_at)),
                    None => failed += 1,
                }
                bar.inc(1);
            }
        });
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (l, f) = joined.expect("a bench client does not panic");
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    (latencies, failed, elapsed)
}

/// Waits until no transaction has committed for `quiet`, at most `bound`.
async fn await_quiet(observer: &BenchObserver, quiet: Duration, bound: Duration) {
    let until = Instant::now() + bound;
    let mut last = observer.commits.load(Ordering::Relaxed);
    while Instant::now() < until {
        tokio::time::sleep(quiet).await;
        let now = observer.commits.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

/// How a mode runs the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// Who publishes a step's events (`--dispatch`).
    dispatch: Dispatch,
    /// Batched apply (`--batch-apply on`) or one transaction per event.
    batch_apply: bool,
}

impl Mode {
    fn dispatch_name(&self) -> &'static str {
        self.dispatch.name()
    }

    fn apply_name(&self) -> &'static str {
        if self.batch_apply {
            "batch"
        } else {
            "event"
        }
    }

    fn name(&self) -> String {
        format!("{}/{}", self.dispatch_name(), self.apply_name())
    }
}

/// The work a window (a mode's loops from start to stop) did, by the
/// runtime's count and by the database's.
#[derive(Debug, Clone, Default)]
struct WindowCounts {
    /// Commits the observer saw (`Committed`).
    commits_observed: u64,
    /// Sagas whose terminal event was published.
    terminal: u64,
    /// Events published for the first time.
    published: u64,
    /// Publishes of entries already marked published (re-drive rounds).
    republished: u64,
    claims: ClaimCounts,
    db: DbStats,
}

impl WindowCounts {
    fn plus(&self, other: &WindowCounts) -> WindowCounts {
        WindowCounts {
            commits_observed: self.commits_observed + other.commits_observed,
            terminal: self.terminal + other.terminal,
            published: self.published + other.published,
            republished: self.republished + other.republished,
            claims: ClaimCounts {
                took_rows: self.claims.took_rows + other.claims.took_rows,
                calls: self.claims.calls + other.claims.calls,
            },
            db: self.db.plus(&other.db),
        }
    }

    /// `count` per saga.
    fn per_saga(&self, count: f64) -> f64 {
        count / self.terminal.max(1) as f64
    }

    /// Outbox rows written (insert, claim, mark...) per event published.
    fn outbox_writes_per_event(&self) -> f64 {
        self.db.outbox.total() as f64 / self.published.max(1) as f64
    }
}

/// One mode's loops on their own pool, from start to stop.
struct Window {
    running: Running,
    rig: Rig,
    store: Arc<CountingStore>,
    pool: PgPool,
    before: DbStats,
}

impl Window {
    async fn open(
        global: &GlobalArgs,
        args: &BenchArgs,
        fresh: &Fresh,
        scenario: &Arc<Scenario>,
        mode: Mode,
    ) -> Result<Window, String> {
        let before = fresh.stats().await?;
        let pool = fresh.pool().await?;
        let store = Arc::new(CountingStore::new(Arc::new(PgStore::new(pool.clone()))));
        let observer = Arc::new(BenchObserver::default());
        let mut config = global.runtime_config();
        config.idle_poll = Duration::from_millis(u64::from(args.idle_poll_ms));
        config.batch_apply = mode.batch_apply;
        config.dispatch = mode.dispatch;
        let env = Env {
            store: store.clone() as Arc<dyn Store>,
            bus: Arc::new(fresh.bus.clone()),
            clock: Arc::new(SystemClock),
            gateway: Arc::new(SimulatedGateway::default()),
            observer: observer.clone(),
            config,
        };
        let running = Running::start_with(&env, &Service::ALL, args.replicas, !args.no_relay_wake);
        let rig = Rig {
            env: running.env().clone(),
            observer,
            scenario: scenario.clone(),
            seed: args.seed,
        };
        Ok(Window {
            running,
            rig,
            store,
            pool,
            before,
        })
    }

    /// Stops the loops, closes the pool and reads what the window did.
    async fn close(self, fresh: &Fresh) -> Result<WindowCounts, String> {
        await_quiet(
            &self.rig.observer,
            Duration::from_millis(300),
            Duration::from_secs(30),
        )
        .await;
        let unfinished = self.running.stop(SHUTDOWN_GRACE).await;
        if !unfinished.is_empty() {
            return Err(format!("tasks did not stop: {}", unfinished.join(", ")));
        }
        self.pool.close().await;
        let after = fresh.stats().await?;
        let observer = &self.rig.observer;
        Ok(WindowCounts {
            commits_observed: observer.commits.load(Ordering::Relaxed),
            terminal: observer.terminal.load(Ordering::Relaxed),
            published: observer.published.load(Ordering::Relaxed),
            republished: observer.republished.load(Ordering::Relaxed),
            claims: self.store.counts(),
            db: after.since(&self.before),
        })
    }
}

/// What one mode measured at every level of a scale.
struct ModeResult {
    mode: Mode,
    levels: Vec<LevelResult>,
    /// Observed commits per saga over the closed-loop levels.
    commits_per_saga: f64,
    open: Option<OpenResult>,
    /// The closed-loop window and the open-loop one together.
    counts: WindowCounts,
}

/// What one scale measured.
struct ScaleResult {
    scale: u16,
    users: usize,
    items: usize,
    modes: Vec<ModeResult>,
}

impl ScaleResult {
    /// Commits per saga with one transaction per event (the control's as
    /// counted, or without it the success path's [`SUCCESS_PATH_COMMITS`]):
    /// what the naive bound divides the ceiling by. A batched run's own
    /// count would divide by fewer commits and inflate the bound it is
    /// measured against.
    fn commits_per_saga_per_event(&self) -> f64 {
        self.modes
            .iter()
            .find(|m| !m.mode.batch_apply)
            .map_or(SUCCESS_PATH_COMMITS, |m| m.commits_per_saga)
    }
}

async fn run_scale(
    global: &GlobalArgs,
    args: &BenchArgs,
    tag: &str,
    scale: u16,
) -> Result<ScaleResult, String> {
    let level_max = args.levels.iter().copied().max().unwrap_or(1);
    let pool = super::serve::pool_size(
        Service::ALL.len(),
        args.replicas,
        usize::from(global.handle_concurrency),
        usize::from(level_max),
    );
    let (fresh, pg) = Fresh::create(global, tag, scale, pool).await?;
    let scenario = Arc::new(scenario(scale));
    PgStore::new(pg.clone())
        .seed_rows(&scenario.opening_rows())
        .await
        .map_err(|e| format!("seeding: {e}"))?;

    // 1. The ceiling, before any loop runs.
    sqlx::query("CREATE TABLE public.bench_ceiling (id int PRIMARY KEY, n bigint NOT NULL)")
        .execute(&pg)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("INSERT INTO public.bench_ceiling SELECT g, 0 FROM generate_series(0, $1) g")
        .bind(CEILING_ROWS - 1)
        .execute(&pg)
        .await
        .map_err(|e| e.to_string())?;
    for table in [
        "CREATE TABLE public.bench_inbox (event_id uuid PRIMARY KEY, processed_at timestamptz NOT NULL)",
        "CREATE TABLE public.bench_outbox (seq bigserial PRIMARY KEY, payload text NOT NULL,
                                           created_at timestamptz NOT NULL)",
    ] {
        sqlx::query(table).execute(&pg).await.map_err(|e| e.to_string())?;
    }
    let span = Duration::from_secs(u64::from(args.ceiling_seconds));
    let mut ceilings = BTreeMap::new();
    for &level in &args.levels {
        let single = ceiling(&pg, level, span, Shape::SingleRow).await?;
        let step = ceiling(&pg, level, span, Shape::Step).await?;
        println!(
            "  x{scale}: ceiling at {level} clients: {single:.0} single-row update tx/s, {step:.0} step-shaped tx/s"
        );
        ceilings.insert(level, (single, step));
    }
    // Its backends report their counters when they exit, before any mode.
    pg.close().await;

    // 2. The saga at each level, mode by mode.
    let mut modes = Vec::new();
    for mode in modes_of(global, args) {
        modes.push(run_mode(global, args, &fresh, &scenario, &ceilings, tag, scale, mode).await?);
    }

    // 3. The open-loop level of every mode, at one rate for all.
    let best = modes
        .iter()
        .flat_map(|m| &m.levels)
        .map(LevelResult::sagas_per_s)
        .fold(0.0, f64::max);
    let rate = args.open_rate.unwrap_or(best * args.open_fraction);
    if rate > 0.0 && rate.is_finite() {
        let orders = args.open_orders.unwrap_or(args.orders);
        for m in &mut modes {
            let window = Window::open(global, args, &fresh, &scenario, m.mode).await?;
            let bar = progress(
                u64::from(orders),
                &format!("  x{scale}/{} open {rate:.0}/s", m.mode.name()),
            );
            let open_tag = format!("{tag}-{}-{}-open", m.mode.dispatch_name(), m.mode.apply_name());
            let open = run_open(&window.rig, rate, orders, &open_tag, &bar).await;
            bar.finish_and_clear();
            let hops = window.rig.observer.hops.take();
            println!(
                "  x{scale}/{}: open loop at {rate:.1} orders/s ({} of {best:.1} sagas/s): p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, sender late {:.1} ms at most{}",
                m.mode.name(),
                args.open_rate.map_or_else(|| format!("{:.2}", args.open_fraction), |_| "given, not a share".into()),
                ms(percentile(&open.latencies, 50)),
                ms(percentile(&open.latencies, 99)),
                ms(permille(&open.latencies, 999)),
                ms(open.send_late_max),
                not_terminal(open.failed)
            );
            println!("    {}", hops.line());
            let counts = window.close(&fresh).await?;
            m.counts = m.counts.plus(&counts);
            m.open = Some(open);
        }
    }
    fresh.drop_all(args.keep).await;
    Ok(ScaleResult {
        scale,
        users: scenario.users.len(),
        items: scenario.items.len(),
        modes,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn not_terminal(failed: usize) -> String {
    if failed > 0 {
        format!(", {failed} not terminal")
    } else {
        String::new()
    }
}

fn progress(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{prefix} {{bar:40}} {{pos}}/{{len}} [{{elapsed}}] {{per_sec}}"
        ))
        .expect("a valid template"),
    );
    bar
}

/// The modes a run measures, in order: send on commit, then the relay's
/// dispatch (the control), both with the global `--batch-apply`; with
/// `--apply-control`, then one transaction per event (with the global
/// `--dispatch`) too. `--no-control` runs only the global settings.
fn modes_of(global: &GlobalArgs, args: &BenchArgs) -> Vec<Mode> {
    let batch_apply = global.batch_apply == OnOff::On;
    let dispatch = Dispatch::from(global.dispatch);
    if args.no_control {
        return vec![Mode {
            dispatch,
            batch_apply,
        }];
    }
    let mut modes = vec![
        Mode {
            dispatch: Dispatch::Commit,
            batch_apply,
        },
        Mode {
            dispatch: Dispatch::Relay,
            batch_apply,
        },
    ];
    if args.apply_control && batch_apply {
        modes.push(Mode {
            dispatch,
            batch_apply: false,
        });
    }
    modes
}

/// Runs every service's loops in `mode` and every level's clients against
/// them; the work is counted once the loops stopped.
#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
async fn run_mode(
    global: &GlobalArgs,
    args: &BenchArgs,
    fresh: &Fresh,
    scenario: &Arc<Scenario>,
    ceilings: &BTreeMap<u16, (f64, f64)>,
    tag: &str,
    scale: u16,
    mode: Mode,
) -> Result<ModeResult, String> {
    let window = Window::open(global, args, fresh, scenario, mode).await?;
    // Order ids stay unique over every mode on the one database.
    let tag = format!("{tag}-{}-{}", mode.dispatch_name(), mode.apply_name());
    let mut levels = Vec::new();
    for &level in &args.levels {
        let bar = progress(
            u64::from(args.orders),
            &format!("  x{scale}/{} {level:>3} clients", mode.name()),
        );
        let (latencies, failed, elapsed) = run_level(&window.rig, &tag, level, args.orders, &bar).await;
        bar.finish_and_clear();
        // The tail of this level (notifications) settles before the next.
        await_quiet(
            &window.rig.observer,
            Duration::from_millis(300),
            Duration::from_secs(30),
        )
        .await;
        let result = LevelResult {
            concurrency: level,
            sagas: latencies.len(),
            failed,
            elapsed,
            p50: percentile(&latencies, 50),
            p99: percentile(&latencies, 99),
            ceiling_tps: ceilings[&level].0,
            step_ceiling_tps: ceilings[&level].1,
            hops: window.rig.observer.hops.take(),
        };
        println!(
            "  x{scale}/{}: {level:>3} clients: {:.1} sagas/s, p50 {:.1} ms, p99 {:.1} ms{}",
            mode.name(),
            result.sagas_per_s(),
            ms(result.p50),
            ms(result.p99),
            not_terminal(failed)
        );
        println!("    {}", result.hops.line());
        levels.push(result);
    }
    let counts = window.close(fresh).await?;
    println!("  x{scale}/{}: {}", mode.name(), work_line(&counts));
    Ok(ModeResult {
        mode,
        levels,
        commits_per_saga: counts.per_saga(counts.commits_observed as f64),
        open: None,
        counts,
    })
}

/// The database's work of a window, per saga, on one line.
fn work_line(c: &WindowCounts) -> String {
    let writes = c.db.writes();
    let per_schema: Vec<String> =
        c.db.schemas
            .iter()
            .map(|(schema, w)| format!("{schema} {:.2}", c.per_saga(w.total() as f64)))
            .collect();
    format!(
        "{} sagas, {} events published ({} re-driven); per saga: {:.2} commits (database), {:.2} rows written ({:.2} ins, {:.2} upd, {:.2} del; {}), {:.2} relay claims that took rows ({:.2} claims in all); outbox writes per event {:.2} ({} ins, {} upd, {} del)",
        c.terminal,
        c.published,
        c.republished,
        c.per_saga(c.db.commits as f64),
        c.per_saga(writes.total() as f64),
        c.per_saga(writes.inserted as f64),
        c.per_saga(writes.updated as f64),
        c.per_saga(writes.deleted as f64),
        per_schema.join(", "),
        c.per_saga(c.claims.took_rows as f64),
        c.per_saga(c.claims.calls as f64),
        c.outbox_writes_per_event(),
        c.db.outbox.inserted,
        c.db.outbox.updated,
        c.db.outbox.deleted
    )
}

/// `purchase-saga bench`.
pub async fn run_bench(global: &GlobalArgs, args: &BenchArgs) -> Result<ExitCode, String> {
    if global.in_memory {
        return Err("bench measures PostgreSQL and Redis; it has no --in-memory mode".into());
    }
    assert!(
        !args.levels.is_empty() && !args.scales.is_empty(),
        "clap gives defaults"
    );
    if args.levels.contains(&0) || args.scales.contains(&0) {
        return Err("levels and scales must be at least 1".into());
    }
    if !(args.open_fraction >= 0.0 && args.open_fraction.is_finite()) {
        return Err(format!(
            "--open-fraction must be a share >= 0, not {}",
            args.open_fraction
        ));
    }
    if let Some(rate) = args.open_rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err(format!("--open-rate must be a rate > 0, not {rate}"));
        }
    }
    let tag = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let load_before = load_average();
    println!(
        "bench {tag}: levels {:?}, modes {:?}, {} orders per level, {} consumers per service, idle poll {} ms, relay wake {}, load average {load_before}",
        args.levels,
        modes_of(global, args).iter().map(Mode::name).collect::<Vec<_>>(),
        args.orders,
        args.replicas,
        args.idle_poll_ms,
        if args.no_relay_wake { "off" } else { "on" }
    );
    let mut results = Vec::new();
    for &scale in &args.scales {
        results.push(run_scale(global, args, &tag, scale).await?);
    }
    let load_after = load_average();
    let ok = print_report(&results);
    println!("load average: {load_before} before, {load_after} after");
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints the run's tables; false if an order did not end.
fn print_report(results: &[ScaleResult]) -> bool {
    println!();
    println!(
        "{:>5} {:>6} {:>5} {:>8} {:>5} {:>7} {:>9} {:>8} {:>8} {:>10} {:>9} {:>9} {:>10} {:>8} {:>10}",
        "scale",
        "users",
        "items",
        "dispatch",
        "apply",
        "clients",
        "sagas/s",
        "p50 ms",
        "p99 ms",
        "ceil tx/s",
        "step tx/s",
        "tx/saga",
        "naive sg/s",
        "ratio",
        "step ratio"
    );
    let mut ok = true;
    for r in results {
        let best =
            |f: fn(&LevelResult) -> f64| r.modes.iter().flat_map(|m| &m.levels).map(f).fold(0.0, f64::max);
        let per_saga = r.commits_per_saga_per_event().max(1e-9);
        let naive = best(|l| l.ceiling_tps) / per_saga;
        let step_sagas = best(|l| l.step_ceiling_tps) / per_saga;
        for m in &r.modes {
            for l in &m.levels {
                println!(
                    "{:>5} {:>6} {:>5} {:>8} {:>5} {:>7} {:>9.1} {:>8.1} {:>8.1} {:>10.0} {:>9.0} {:>9.2} {:>10.1} {:>7.1}% {:>9.1}%",
                    format!("x{}", r.scale),
                    r.users,
                    r.items,
                    m.mode.dispatch_name(),
                    m.mode.apply_name(),
                    l.concurrency,
                    l.sagas_per_s(),
                    ms(l.p50),
                    ms(l.p99),
                    l.ceiling_tps,
                    l.step_ceiling_tps,
                    m.commits_per_saga,
                    naive,
                    100.0 * l.sagas_per_s() / naive.max(1e-9),
                    100.0 * l.sagas_per_s() / step_sagas.max(1e-9)
                );
                ok &= l.failed == 0;
            }
        }
    }
    println!("dispatch: commit = events published by the committing task, relay = by the relay");
    println!("apply: batch = --batch-apply on, event = --batch-apply off (one transaction per event)");
    println!("tx/saga = commits per saga in that mode (observed by the runtime), over the mode's closed-loop levels");
    println!("naive sg/s = best single-row update tx/s of the scale / commits per saga with one transaction per event");
    println!("ratio = sagas/s / naive sg/s; step ratio = sagas/s / (best step-shaped tx/s / the same commits per saga)");

    println!();
    println!(
        "{:<5} {:>5} {:>8} {:>5} {:>7} {:>16} {:>16} {:>16} {:>6}",
        "hops",
        "scale",
        "dispatch",
        "apply",
        "clients",
        "step->pub ms",
        "pub->take-up ms",
        "apply ms",
        "hops"
    );
    let span = |s: &super::hops::Span| format!("{:.1} / {:.1}", ms(s.mean), ms(s.p99));
    for r in results {
        for m in &r.modes {
            for l in &m.levels {
                println!(
                    "{:<5} {:>5} {:>8} {:>5} {:>7} {:>16} {:>16} {:>16} {:>6}",
                    "hops",
                    format!("x{}", r.scale),
                    m.mode.dispatch_name(),
                    m.mode.apply_name(),
                    l.concurrency,
                    span(&l.hops.step_to_publish),
                    span(&l.hops.publish_to_take_up),
                    span(&l.hops.apply),
                    l.hops.apply.samples
                );
            }
        }
    }
    println!("hops: mean / p99 of each span (src/cli/hops.rs)");

    println!();
    println!(
        "{:<6} {:>5} {:>8} {:>5} {:>6} {:>9} {:>10} {:>10} {:>12} {:>11} {:>11} {:>11}",
        "writes",
        "scale",
        "dispatch",
        "apply",
        "sagas",
        "events",
        "commits/sg",
        "rows/sg",
        "outbox w/ev",
        "claims/sg",
        "claim calls",
        "redrives/ev"
    );
    for r in results {
        for m in &r.modes {
            let c = &m.counts;
            println!(
                "{:<6} {:>5} {:>8} {:>5} {:>6} {:>9} {:>10.2} {:>10.2} {:>12.2} {:>11.3} {:>11.2} {:>11.3}",
                "writes",
                format!("x{}", r.scale),
                m.mode.dispatch_name(),
                m.mode.apply_name(),
                c.terminal,
                c.published,
                c.per_saga(c.db.commits as f64),
                c.per_saga(c.db.writes().total() as f64),
                c.outbox_writes_per_event(),
                c.per_saga(c.claims.took_rows as f64),
                c.per_saga(c.claims.calls as f64),
                c.republished as f64 / c.published.max(1) as f64
            );
        }
    }
    println!("writes: over the mode's closed-loop and open-loop windows; commits/sg and rows/sg from pg_stat_database and pg_stat_user_tables (every service schema)");
    println!("outbox w/ev = outbox rows inserted + updated + deleted per event published; claims/sg = relay claims that took rows per saga; claim calls = every claim per saga, empty ones included; redrives/ev = publishes of already-marked entries (re-drive rounds, each a claim and a mark more) per event");

    let open: Vec<(&ScaleResult, &ModeResult, &OpenResult)> = results
        .iter()
        .flat_map(|r| {
            r.modes
                .iter()
                .filter_map(move |m| m.open.as_ref().map(|o| (r, m, o)))
        })
        .collect();
    if !open.is_empty() {
        println!();
        println!(
            "{:<5} {:>5} {:>8} {:>5} {:>9} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8}",
            "open",
            "scale",
            "dispatch",
            "apply",
            "offered/s",
            "orders",
            "sagas/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "late ms"
        );
        for (r, m, o) in open {
            println!(
                "{:<5} {:>5} {:>8} {:>5} {:>9.1} {:>7} {:>9.1} {:>8.1} {:>8.1} {:>9.1} {:>8.1} {:>8.1}",
                "open",
                format!("x{}", r.scale),
                m.mode.dispatch_name(),
                m.mode.apply_name(),
                o.rate,
                o.orders,
                o.sagas_per_s(),
                ms(percentile(&o.latencies, 50)),
                ms(percentile(&o.latencies, 99)),
                ms(permille(&o.latencies, 999)),
                ms(o.latencies.last().copied().unwrap_or_default()),
                ms(o.send_late_max)
            );
            ok &= o.failed == 0;
        }
        println!("open: Poisson arrivals at the offered rate; latency from each order's intended send time to its terminal event's publish; late = the sender's largest delay behind the schedule");
    }
    ok
}
