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

use crate::adapters::postgres::with_database;
use tokio::sync::oneshot;

use crate::adapters::postgres::{self, PgConfig, PgStore};
use crate::adapters::redis::{RedisBus, RedisConfig};
use crate::domain::gateway::{SimulatedGateway, DEFAULT_METHOD};
use crate::domain::participants::order::PlaceOrder;
use crate::domain::{ItemId, OrderId, Payload, Service, UserId};
use crate::runtime::commands::{place_order, Placed};
use crate::runtime::{Clock, Env, Observer, RuntimeEvent, Store, SystemClock};
use crate::workload::{ItemSpec, Scenario, UserSpec};

use super::hops::{percentile, Hops};
use super::serve::Running;
use super::{GlobalArgs, OnOff, SHUTDOWN_GRACE};

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
    /// batched apply and then with one transaction per event
    /// (`--batch-apply off`), on the same database after the same ceiling.
    #[arg(long)]
    pub no_control: bool,
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
                event: Some(event),
                attempt: 1,
                duration,
                ..
            } => self.hops.handled(event.event_id, *duration),
            _ => {}
        }
        match event {
            RuntimeEvent::Committed { .. } => {
                self.commits.fetch_add(1, Ordering::Relaxed);
            }
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
    store: PgStore,
    bus: RedisBus,
    redis_url: String,
}

impl Fresh {
    async fn create(global: &GlobalArgs, tag: &str, scale: u16, pool: u32) -> Result<Fresh, String> {
        let name = format!("ps_bench_{tag}_x{scale}");
        let mut admin = sqlx::PgConnection::connect(&global.database_url)
            .await
            .map_err(|e| {
                format!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    postgres::redact_url(&global.database_url)
                )
            })?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        let _ = admin.close().await;
        let config = PgConfig {
            connections_max: pool,
            ..PgConfig::default()
        };
        let pg = postgres::connect(&with_database(&global.database_url, &name), &config)
            .await
            .map_err(|e| e.to_string())?;
        postgres::migrate(&pg).await.map_err(|e| e.to_string())?;
        let bus = RedisBus::connect(
            &global.redis_url,
            RedisConfig {
                prefix: format!("ps-bench:{tag}:x{scale}"),
                ..RedisConfig::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Fresh {
            admin_url: global.database_url.clone(),
            name,
            store: PgStore::new(pg),
            bus,
            redis_url: global.redis_url.clone(),
        })
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
        self.store.pool().close().await;
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

/// What every client of a scale shares.
struct Rig {
    env: Env,
    observer: Arc<BenchObserver>,
    scenario: Arc<Scenario>,
    seed: u64,
    tag: String,
}

/// Places `orders` orders with `clients` closed-loop clients, each waiting
/// for its order's terminal publish; returns latencies and failures.
async fn run_level(
    rig: &Rig,
    clients: u16,
    orders: u32,
    bar: &ProgressBar,
) -> (Vec<Duration>, usize, Duration) {
    let Rig {
        env,
        observer,
        scenario,
        seed,
        tag,
    } = rig;
    let seed = *seed;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (env, observer, scenario, next, bar) = (
            env.clone(),
            observer.clone(),
            scenario.clone(),
            next.clone(),
            bar.clone(),
        );
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
                let user = &scenario.users[rng.random_range(0..scenario.users.len())];
                let item = &scenario.items[rng.random_range(0..scenario.items.len())];
                let cmd = PlaceOrder {
                    order_id: OrderId::parse(format!("{tag}-{n}")).expect("valid id"),
                    user_id: user.id.clone(),
                    item_id: item.id.clone(),
                    quantity: 1,
                    payment_method: DEFAULT_METHOD.to_string(),
                };
                let (tx, rx) = oneshot::channel();
                observer
                    .waiters
                    .lock()
                    .expect("waiters mutex")
                    .insert(cmd.order_id.clone(), tx);
                let placed_at = Instant::now();
                match place_order(&env, &cmd).await {
                    Ok(Placed::Created) => {}
                    Ok(Placed::Existing(_)) | Err(_) => {
                        observer
                            .waiters
                            .lock()
                            .expect("waiters mutex")
                            .remove(&cmd.order_id);
                        failed += 1;
                        bar.inc(1);
                        continue;
                    }
                }
                match tokio::time::timeout(TERMINAL_WAIT, rx).await {
                    Ok(Ok(at)) => latencies.push(at.saturating_duration_since(placed_at)),
                    _ => failed += 1,
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

/// What one apply mode measured at every level of a scale.
struct ModeResult {
    /// Batched apply (`--batch-apply on`) or one transaction per event.
    batch_apply: bool,
    levels: Vec<LevelResult>,
    commits_per_saga: f64,
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
    /// counted, or without a control the success path's
    /// [`SUCCESS_PATH_COMMITS`]): what the naive bound divides the ceiling
    /// by. A batched run's own count would divide by fewer commits and
    /// inflate the bound it is measured against.
    fn commits_per_saga_per_event(&self) -> f64 {
        self.modes
            .iter()
            .find(|m| !m.batch_apply)
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
    let fresh = Fresh::create(global, tag, scale, pool).await?;
    let scenario = Arc::new(scenario(scale));
    fresh
        .store
        .seed_rows(&scenario.opening_rows())
        .await
        .map_err(|e| format!("seeding: {e}"))?;

    // 1. The ceiling, before any loop runs.
    let pg = fresh.store.pool().clone();
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

    // 2. The saga at each level, batched apply first, then the control.
    let mut modes = Vec::new();
    for batch_apply in apply_modes(global, args) {
        modes.push(
            run_mode(
                global,
                args,
                &fresh,
                &scenario,
                &ceilings,
                tag,
                scale,
                batch_apply,
            )
            .await?,
        );
    }
    fresh.drop_all(args.keep).await;
    Ok(ScaleResult {
        scale,
        users: scenario.users.len(),
        items: scenario.items.len(),
        modes,
    })
}

/// The apply modes a run measures, in order: both (batched, then the
/// control) unless `--no-control`, which runs the global `--batch-apply`.
fn apply_modes(global: &GlobalArgs, args: &BenchArgs) -> Vec<bool> {
    if args.no_control {
        vec![global.batch_apply == OnOff::On]
    } else {
        vec![true, false]
    }
}

/// Runs every service's loops with `batch_apply` and every level's clients
/// against them; the commits per saga are counted once the loops stopped.
#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
async fn run_mode(
    global: &GlobalArgs,
    args: &BenchArgs,
    fresh: &Fresh,
    scenario: &Arc<Scenario>,
    ceilings: &BTreeMap<u16, (f64, f64)>,
    tag: &str,
    scale: u16,
    batch_apply: bool,
) -> Result<ModeResult, String> {
    let observer = Arc::new(BenchObserver::default());
    let mut config = global.runtime_config();
    config.idle_poll = Duration::from_millis(u64::from(args.idle_poll_ms));
    config.batch_apply = batch_apply;
    let env = Env {
        store: Arc::new(fresh.store.clone()) as Arc<dyn Store>,
        bus: Arc::new(fresh.bus.clone()),
        clock: Arc::new(SystemClock),
        gateway: Arc::new(SimulatedGateway::default()),
        observer: observer.clone(),
        config,
    };
    let mode = mode_name(batch_apply);
    let running = Running::start_with(&env, &Service::ALL, args.replicas, !args.no_relay_wake);
    let rig = Rig {
        env: running.env().clone(),
        observer: observer.clone(),
        scenario: scenario.clone(),
        seed: args.seed,
        // Order ids stay unique over both modes on the one database.
        tag: format!("{tag}-{mode}"),
    };
    let mut levels = Vec::new();
    for &level in &args.levels {
        let bar = ProgressBar::new(u64::from(args.orders));
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "  x{scale}/{mode} {level:>3} clients {{bar:40}} {{pos}}/{{len}} [{{elapsed}}] {{per_sec}}"
            ))
            .expect("a valid template"),
        );
        let (latencies, failed, elapsed) = run_level(&rig, level, args.orders, &bar).await;
        bar.finish_and_clear();
        let result = LevelResult {
            concurrency: level,
            sagas: latencies.len(),
            failed,
            elapsed,
            p50: percentile(&latencies, 50),
            p99: percentile(&latencies, 99),
            ceiling_tps: ceilings[&level].0,
            step_ceiling_tps: ceilings[&level].1,
        };
        println!(
            "  x{scale}/{mode}: {level:>3} clients: {:.1} sagas/s, p50 {:.1} ms, p99 {:.1} ms{}",
            result.sagas_per_s(),
            result.p50.as_secs_f64() * 1e3,
            result.p99.as_secs_f64() * 1e3,
            if failed > 0 {
                format!(", {failed} not terminal")
            } else {
                String::new()
            }
        );
        levels.push(result);
        // The tail of this level (notifications) settles before the next.
        await_quiet(&observer, Duration::from_millis(300), Duration::from_secs(30)).await;
        println!("    {}", observer.hops.take().line());
    }
    let unfinished = running.stop(SHUTDOWN_GRACE).await;
    if !unfinished.is_empty() {
        return Err(format!("tasks did not stop: {}", unfinished.join(", ")));
    }
    let terminal = observer.terminal.load(Ordering::Relaxed);
    let commits = observer.commits.load(Ordering::Relaxed);
    Ok(ModeResult {
        batch_apply,
        levels,
        commits_per_saga: commits as f64 / terminal.max(1) as f64,
    })
}

fn mode_name(batch_apply: bool) -> &'static str {
    if batch_apply {
        "batch"
    } else {
        "event"
    }
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
    let tag = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let load_before = load_average();
    println!(
        "bench {tag}: levels {:?}, apply {:?}, {} orders per level, {} consumers per service, idle poll {} ms, relay wake {}, load average {load_before}",
        args.levels,
        apply_modes(global, args).into_iter().map(mode_name).collect::<Vec<_>>(),
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

    println!();
    println!(
        "{:>5} {:>6} {:>5} {:>5} {:>7} {:>9} {:>8} {:>8} {:>10} {:>9} {:>9} {:>9} {:>8} {:>10}",
        "scale",
        "users",
        "items",
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
    for r in &results {
        let best =
            |f: fn(&LevelResult) -> f64| r.modes.iter().flat_map(|m| &m.levels).map(f).fold(0.0, f64::max);
        let per_saga = r.commits_per_saga_per_event().max(1e-9);
        let naive = best(|l| l.ceiling_tps) / per_saga;
        let step_sagas = best(|l| l.step_ceiling_tps) / per_saga;
        for m in &r.modes {
            for l in &m.levels {
                println!(
                    "{:>5} {:>6} {:>5} {:>5} {:>7} {:>9.1} {:>8.1} {:>8.1} {:>10.0} {:>9.0} {:>9.2} {:>10.1} {:>7.1}% {:>9.1}%",
                    format!("x{}", r.scale),
                    r.users,
                    r.items,
                    mode_name(m.batch_apply),
                    l.concurrency,
                    l.sagas_per_s(),
                    l.p50.as_secs_f64() * 1e3,
                    l.p99.as_secs_f64() * 1e3,
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
    println!(
        "apply: batch = --batch-apply on, event = --batch-apply off (one transaction per event, the control)"
    );
    println!("tx/saga = commits per saga in that mode, counted over the mode's run");
    println!("naive sg/s = best single-row update tx/s of the scale / commits per saga with one transaction per event");
    println!("ratio = sagas/s / naive sg/s; step ratio = sagas/s / (best step-shaped tx/s / the same commits per saga)");
    println!("load average: {load_before} before, {load_after} after");
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
