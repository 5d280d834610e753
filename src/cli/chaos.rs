//! `purchase-saga chaos`: the saga on the real services under process and
//! backend faults. Documented, not run in CI (it restarts shared services).
//!
//! What it does:
//! 1. Migrates, seeds users and items under a prefix unique to the run,
//!    issues their API tokens.
//! 2. Runs each service as its own child process, `--replicas-per-service`
//!    of them (`serve --services S`), and serves the HTTP API in this
//!    process.
//! 3. Places `--orders` orders over HTTP with `--concurrency` clients
//!    (idempotency keys, bounded retries on 5xx and connection errors), while
//!    a fault loop, every `--fault-interval-ms`, does one of: kill -9 a random
//!    service process and restart it; restart Redis with its data lost
//!    (`redis-cli SHUTDOWN NOSAVE`, then `redis-server --save "" --daemonize
//!    yes` on the same port); restart PostgreSQL (`pg_ctlcluster
//!    --skip-systemctl-redirect <version> main restart`). At most
//!    `--faults-max` faults, none after `--duration-max`.
//!    The fault loop runs on after the last order is placed, until its
//!    bounds, so faults hit sagas in flight.
//! 4. Restarts any dead service process, waits for quiescence (every order
//!    terminal, every invariant holding; bounded by `--quiescence-timeout`),
//!    and reports orders by outcome, the faults injected, the time to
//!    quiescence, and per kill -9 the time until every order placed before
//!    it was terminal again (from the orders' terminal `updated_at`).
//!    Exit 0 only when the audit is clean.
//!
//! Only local addresses are accepted (the URLs' hosts must be loopback).
//! With `--no-restart-backends` only service processes are killed, which
//! is safe while others use the same PostgreSQL and Redis. A full run, on
//! a machine of your own:
//!
//! ```text
//! createdb -h 127.0.0.1 -U postgres chaos
//! purchase-saga --database-url postgres://postgres@127.0.0.1:5432/chaos \
//!     --redis-prefix chaos --saga-deadline 30 chaos --orders 2000
//! ```
//!
//! Measured on 2026-11-27 (debug build, 2 shared cores), a private Redis on
//! port 6391 and a fresh database on the shared PostgreSQL, so
//! `--no-restart-postgres`: 2,000 orders placed over HTTP in 4.6 s, 20 faults
//! (17 kill -9 of service processes, 3 Redis restarts losing every stream),
//! quiescent 116 s after the last fault, audit clean over 2,000 orders (248
//! completed; 1,490 failed at PAYMENT: the 20 s saga deadline cancelled the
//! orders whose events the restarts lost, through the pivot as designed).
//! With service kills only (`--no-restart-backends`): 1,000 orders, 10 kills,
//! quiescent after 29.6 s, clean. The full run, with the machine's own
//! PostgreSQL and Redis restarted (`--database-url …/chaos_final
//! --redis-prefix chaos-final chaos --orders 1000 --faults-max 12
//! --duration-max 45 --saga-deadline 20 --seed 5`): 1,000 orders placed in
//! 2.1 s, 12 faults (9 kill -9, 2 PostgreSQL restarts, 1 Redis restart),
//! quiescent 43.3 s after the last fault, audit clean (225 completed, 516
//! failed at PAYMENT: deadline cancels of sagas whose events the Redis
//! restart lost).
//!
//! Re-drive (60 s, then 120 s, 240 s) and the saga deadline bound how long
//! an order whose events Redis lost takes to finish, so give the quiescence
//! timeout a few minutes after a Redis restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::domain::invariants::Snapshot;
use crate::domain::{DurationMs, OrderId, Service, Timestamp};

use super::audit::violations;
use super::backend::{Backend, Needs};
use super::client;
use super::seed::{demo_scenario, issue_demo_tokens, seed_rows};
use super::serve::{app_state, Running};
use super::{GlobalArgs, OnOff, SHUTDOWN_GRACE};

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub orders: u32,
    /// Clients placing orders at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Service processes per service.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub replicas_per_service: u16,
    /// Most faults injected.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub faults_max: u32,
    /// Milliseconds between faults.
    #[arg(long, default_value_t = 1_500, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub fault_interval_ms: u64,
    /// No faults after this many seconds from the start.
    #[arg(long, value_name = "SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub duration_max: u64,
    /// Longest wait for quiescence after the last order and fault.
    #[arg(long, value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=7_200))]
    pub quiescence_timeout: u64,
    /// Only kill service processes; never restart Redis or PostgreSQL (safe
    /// on shared services).
    #[arg(long, alias = "no-restart-services")]
    pub no_restart_backends: bool,
    /// Restart Redis but never PostgreSQL (e.g. with a private Redis on
    /// another port and the shared PostgreSQL).
    #[arg(long)]
    pub no_restart_postgres: bool,
    /// Seed of the order mix and of the fault choices.
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
}

/// Attempts per order before the client gives up (each after a 5xx or a
/// connection error, 250 ms apart: long enough to ride out a restart).
const PLACE_ATTEMPTS_MAX: u32 = 120;
const PLACE_RETRY: Duration = Duration::from_millis(250);

/// A fault the loop injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillService,
    RestartRedis,
    RestartPostgres,
}

/// The service processes: (service, replica) -> child.
struct Fleet {
    exe: std::path::PathBuf,
    global: Vec<String>,
    children: BTreeMap<(Service, u16), Child>,
}

impl Fleet {
    fn spawn(&mut self, service: Service, replica: u16) -> Result<(), String> {
        let child = Command::new(&self.exe)
            .args(&self.global)
            .args(["serve", "--services", service.slug(), "--replicas", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {} replica {replica}: {e}", service.slug()))?;
        self.children.insert((service, replica), child);
        Ok(())
    }

    /// kill -9 of one process (SIGKILL: no shutdown path runs), then a new one.
    fn kill_and_restart(&mut self, key: (Service, u16)) -> Result<(), String> {
        if let Some(mut child) = self.children.remove(&key) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn(key.0, key.1)
    }

    /// Restarts every process that exited.
    fn revive(&mut self) -> Result<usize, String> {
        let dead: Vec<(Service, u16)> = self
            .children
            .iter_mut()
            .filter_map(|(k, c)| (!matches!(c.try_wait(), Ok(None))).then_some(*k))
            .collect();
        for key in &dead {
            self.spawn(key.0, key.1)?;
        }
        Ok(dead.len())
    }

    /// SIGTERM to all, then SIGKILL to those still running after the grace.
    fn stop(&mut self, grace: Duration) {
        for child in self.children.values() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let until = Instant::now() + grace;
        for child in self.children.values_mut() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `url`'s host is a loopback address.
fn is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1") || host.starts_with("127.")
}

fn redis_port(url: &str) -> u16 {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(6379)
}

fn run_quietly(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {args:?}: {status}"))
    }
}

/// Redis loses its data: SHUTDOWN NOSAVE, then a fresh server on the port.
fn restart_redis(url: &str) -> Result<(), String> {
    let port = redis_port(url).to_string();
    // SHUTDOWN closes the connection: its "error" is the expected outcome.
    let _ = run_quietly("redis-cli", &["-p", &port, "shutdown", "nosave"]);
    std::thread::sleep(Duration::from_millis(200));
    run_quietly(
        "redis-server",
        &[
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
        ],
    )
}

fn restart_postgres() -> Result<(), String> {
    let versions = std::fs::read_dir("/etc/postgresql").map_err(|e| format!("/etc/postgresql: {e}"))?;
    let version = versions
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .ok_or("no PostgreSQL cluster under /etc/postgresql")?;
    run_quietly(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "restart"],
    )
}

/// Places one order, retrying 5xx and connection errors; the order id, or
/// the last error.
async fn place(addr: SocketAddr, key: String, body: String, token: String) -> Result<OrderId, String> {
    let auth = format!("Bearer {token}");
    let mut last = String::new();
    for _ in 0..PLACE_ATTEMPTS_MAX {
        let headers = [
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key.as_str()),
            ("Authorization", auth.as_str()),
        ];
        match client::request(
            addr,
            "POST",
            "/orders",
            &headers,
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .await
        {
            Ok(r) if r.status == 200 || r.status == 202 => {
                let json = r.json()?;
                return json["orderId"]
                    .as_str()
                    .and_then(|s| OrderId::parse(s).ok())
                    .ok_or_else(|| format!("no orderId in {json}"));
            }
            Ok(r) if r.status >= 500 => last = format!("HTTP {}: {}", r.status, r.text()),
            Ok(r) => return Err(format!("HTTP {}: {}", r.status, r.text())),
            Err(e) => last = e,
        }
        tokio::time::sleep(PLACE_RETRY).await;
    }
    Err(format!("gave up after {PLACE_ATTEMPTS_MAX} attempts: {last}"))
}

/// One kill -9 of a service process.
#[derive(Debug, Clone, Copy)]
struct Kill {
    service: Service,
    replica: u16,
    /// Wall-clock time just before the signal.
    at: Timestamp,
}

/// How long after `kill` every order placed before it was terminal: the
/// latest terminal transition (`updated_at`: a terminal order is never
/// updated again) among the orders created by then, less the kill's time;
/// zero if all of them were terminal before it. None while one of them is
/// not terminal.
fn kill_to_terminal(kill: &Kill, snapshot: &Snapshot, placed: &[OrderId]) -> Option<DurationMs> {
    let mut latest = kill.at;
    for id in placed {
        let Some(order) = snapshot.orders.get(id) else {
            continue;
        };
        if order.created_at > kill.at {
            continue;
        }
        if !order.status.is_terminal() {
            return None;
        }
        latest = latest.max(order.updated_at);
    }
    let after = DurationMs(latest.0 - kill.at.0);
    assert!(after.0 >= 0, "the latest transition is at or after the kill");
    Some(after)
}

/// Prints, per kill -9, the time until every order placed before it was
/// terminal again, and the largest.
fn print_kill_recoveries(kills: &[Kill], snapshot: &Snapshot, placed: &[OrderId]) {
    if kills.is_empty() {
        return;
    }
    println!("kill -9 -> every order placed before it terminal:");
    let mut worst: Option<DurationMs> = Some(DurationMs(0));
    for (n, kill) in kills.iter().enumerate() {
        let after = kill_to_terminal(kill, snapshot, placed);
        worst = worst.zip(after).map(|(w, a)| w.max(a));
        println!(
            "  kill {:>3} {:<14} replica {}  {}",
            n + 1,
            kill.service.slug(),
            kill.replica,
            after.map_or("not terminal".to_string(), |a| format!(
                "{:.2} s",
                a.0 as f64 / 1e3
            ))
        );
    }
    println!(
        "max kill -> terminal: {}",
        worst.map_or("not terminal".to_string(), |w| format!(
            "{:.2} s",
            w.0 as f64 / 1e3
        ))
    );
}

/// `purchase-saga chaos`; see the module docs.
pub async fn run_chaos(global: &GlobalArgs, args: &ChaosArgs) -> Result<ExitCode, String> {
    if global.in_memory {
        return Err("chaos runs on PostgreSQL and Redis, one process per service".into());
    }
    for url in [&global.database_url, &global.redis_url] {
        if !is_local(url) {
            return Err(format!(
                "chaos uses local addresses only; {} is not",
                crate::adapters::postgres::redact_url(url)
            ));
        }
    }
    let backend = Backend::open(global, 24, Needs::StoreAndBus).await?;
    backend.migrate().await?;
    let tag = chrono::Utc::now().timestamp_millis() % 1_000_000_000;
    let prefix = format!("chaos{tag}-");
    let scenario = demo_scenario(&prefix);
    seed_rows(backend.store.as_ref(), &scenario.opening_rows())
        .await
        .map_err(|e| format!("seeding failed: {e}"))?;
    let tokens: BTreeMap<String, String> = issue_demo_tokens(backend.tokens.as_ref(), &scenario)
        .await
        .map_err(|e| format!("issuing tokens failed: {e}"))?
        .into_iter()
        .collect();

    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut fleet = Fleet {
        exe,
        global: vec![
            "--database-url".into(),
            global.database_url.clone(),
            "--redis-url".into(),
            global.redis_url.clone(),
            "--redis-prefix".into(),
            global.redis_prefix.clone(),
            "--saga-deadline".into(),
            global.saga_deadline.to_string(),
            "--batch-apply".into(),
            match global.batch_apply {
                OnOff::On => "on",
                OnOff::Off => "off",
            }
            .into(),
            "--dispatch".into(),
            crate::runtime::Dispatch::from(global.dispatch).name().into(),
        ],
        children: BTreeMap::new(),
    };
    for service in Service::ALL {
        for replica in 0..args.replicas_per_service {
            fleet.spawn(service, replica)?;
        }
    }
    let fleet = Arc::new(Mutex::new(fleet));

    let env = backend.env(global);
    let mut api = Running::start(&env, &[], 1);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    api.spawn_http(listener, app_state(&backend, &env));
    println!(
        "chaos on {}: {} service processes, API at http://{addr}, {} orders, up to {} faults every {} ms{}",
        backend.describe,
        Service::ALL.len() * usize::from(args.replicas_per_service),
        args.orders,
        args.faults_max,
        args.fault_interval_ms,
        match (args.no_restart_backends, args.no_restart_postgres) {
            (true, _) => " (service processes only)",
            (false, true) => " (service processes and Redis)",
            (false, false) => " (service processes, Redis and PostgreSQL)",
        }
    );

    let started = Instant::now();
    let faults = {
        let fleet = fleet.clone();
        let args = args.clone();
        let redis_url = global.redis_url.clone();
        tokio::task::spawn_blocking(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xfa17);
            let mut injected: Vec<(Fault, Result<(), String>)> = Vec::new();
            let mut kills: Vec<Kill> = Vec::new();
            let until = started + Duration::from_secs(args.duration_max);
            // Runs on while orders settle, too: faults hit every stage of the saga.
            while injected.len() < args.faults_max as usize && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(args.fault_interval_ms));
                let fault = match rng.random_range(0..10) {
                    8 if !args.no_restart_backends => Fault::RestartRedis,
                    9 if !args.no_restart_backends && !args.no_restart_postgres => Fault::RestartPostgres,
                    _ => Fault::KillService,
                };
                let outcome = match fault {
                    Fault::KillService => {
                        let service = Service::ALL[rng.random_range(0..Service::ALL.len())];
                        let replica = rng.random_range(0..args.replicas_per_service);
                        kills.push(Kill {
                            service,
                            replica,
                            at: Timestamp(chrono::Utc::now().timestamp_millis()),
                        });
                        fleet
                            .lock()
                            .expect("fleet mutex")
                            .kill_and_restart((service, replica))
                    }
                    Fault::RestartRedis => restart_redis(&redis_url),
                    Fault::RestartPostgres => restart_postgres(),
                };
                injected.push((fault, outcome));
            }
            (injected, kills)
        })
    };

    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let permits = Arc::new(Semaphore::new(usize::from(args.concurrency)));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.orders {
        let user = &scenario.users[rng.random_range(0..scenario.users.len())];
        let item = &scenario.items[rng.random_range(0..scenario.items.len())];
        let body = json!({ "itemId": item.id.as_str(), "quantity": rng.random_range(1..=2) }).to_string();
        let token = tokens[user.id.as_str()].clone();
        let key = format!("{prefix}order-{n}");
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire().await.expect("the semaphore is never closed");
            place(addr, key, body, token).await
        });
    }
    let mut placed = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| e.to_string())? {
            Ok(id) => placed.push(id),
            Err(e) => errors.push(e),
        }
    }
    let placing = started.elapsed();
    let (injected, kills) = faults.await.map_err(|e| format!("fault loop failed: {e}"))?;
    let revived = fleet.lock().expect("fleet mutex").revive()?;

    // Quiescence: every invariant holds over the whole database.
    let settle_started = Instant::now();
    let bound = Duration::from_secs(args.quiescence_timeout);
    let (snapshot, clean) = loop {
        match backend.store.snapshot().await {
            Ok(snapshot) => {
                let clean = violations(&snapshot, false).is_empty();
                if clean || settle_started.elapsed() >= bound {
                    break (snapshot, clean);
                }
            }
            Err(e) if settle_started.elapsed() >= bound => return Err(format!("snapshot failed: {e}")),
            Err(_) => {}
        }
        // Revive processes a fault left dead (e.g. exited while PostgreSQL was down).
        fleet.lock().expect("fleet mutex").revive()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let settle = settle_started.elapsed();
    fleet.lock().expect("fleet mutex").stop(SHUTDOWN_GRACE);
    let unfinished = api.stop(SHUTDOWN_GRACE).await;

    // ---- report ----
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for id in &placed {
        let label = match snapshot.orders.get(id) {
            None => "MISSING".to_string(),
            Some(o) => match o.failed_step {
                None => o.status.as_str().to_string(),
                Some(step) => format!("FAILED at {}", step.as_str()),
            },
        };
        *outcomes.entry(label).or_default() += 1;
    }
    let mut fault_counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (fault, outcome) in &injected {
        let entry = fault_counts.entry(format!("{fault:?}")).or_default();
        entry.0 += 1;
        entry.1 += usize::from(outcome.is_err());
    }
    println!(
        "placed {} orders in {:.1} s ({} failed to place)",
        placed.len(),
        placing.as_secs_f64(),
        errors.len()
    );
    for (label, n) in &outcomes {
        println!("  {label:<32} {n:>6}");
    }
    println!("faults injected: {}", injected.len());
    for (fault, (n, failed)) in &fault_counts {
        println!("  {fault:<32} {n:>6} ({failed} could not be injected)");
    }
    for (fault, outcome) in &injected {
        if let Err(e) = outcome {
            println!("  {fault:?} failed: {e}");
        }
    }
    println!("service processes found dead and restarted after the run: {revived}");
    print_kill_recoveries(&kills, &snapshot, &placed);
    let found = violations(&snapshot, false);
    println!(
        "time to quiescence after the last fault: {:.2} s; audit over {} orders: {}",
        settle.as_secs_f64(),
        snapshot.orders.len(),
        if clean {
            "clean".to_string()
        } else {
            format!("{} violation(s)", found.len())
        }
    );
    for v in found.iter().take(20) {
        println!("  {v}");
    }
    if let Some(e) = errors.first() {
        println!("first placing error: {e}");
    }
    let ok = clean && errors.is_empty() && unfinished.is_empty() && !outcomes.contains_key("MISSING");
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_local() {
        assert!(is_local("postgres://postgres@127.0.0.1:5432/postgres"));
        assert!(is_local("redis://localhost:6379"));
        assert!(is_local("postgres://u:p@[::1]:5432/db"));
        assert!(!is_local("postgres://postgres@db.example.com:5432/postgres"));
        assert!(!is_local("redis://10.0.0.5:6379"));
        assert_eq!(redis_port("redis://127.0.0.1:6380"), 6380);
        assert_eq!(redis_port("redis://127.0.0.1"), 6379);
    }
}
