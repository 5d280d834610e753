//! `purchase-saga demo`: the whole system in one process. Migrates, seeds
//! a fresh set of users and items (ids unique to the run, so runs do not
//! eat each other's stock), serves every service and the HTTP API on a
//! local port, places orders through that API with a pool of concurrent
//! clients (each waits for its order's outcome with `?wait=`; each user
//! with their own API token, orders for unknown users with an admin token),
//! checks a few bad and unauthorized requests, waits for quiescence (bounded), audits, and prints the
//! outcomes by failure point with throughput and latency.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::domain::gateway::DECLINING_METHOD;
use crate::domain::invariants::Snapshot;
use crate::domain::{OrderId, Service};
use crate::workload::Scenario;

use super::audit::violations;
use super::backend::Backend;
use super::client;
use super::hops::percentile;
use super::seed::{demo_scenario, seed_rows};
use super::serve::{app_state, Running};
use super::{GlobalArgs, SHUTDOWN_GRACE};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub orders: u32,
    /// Clients placing orders at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub concurrency: u16,
    /// Consumers per service.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub replicas: u16,
    /// Seed of the order mix (who buys what, how many, how they pay).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Longest wait for quiescence after the last order, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u32).range(1..=3_600))]
    pub quiescence_timeout: u32,
}

/// Seconds a client waits for its order's outcome (`?wait=`).
const CLIENT_WAIT_S: u64 = 30;

/// One request of the run.
#[derive(Debug, Clone)]
struct PlannedOrder {
    key: String,
    body: Value,
    /// The buyer's token (an admin token for unknown users).
    token: String,
}

/// What the API answered for one planned order.
#[derive(Debug, Clone)]
struct Answer {
    order_id: Option<OrderId>,
    /// Request to terminal answer, when the answer was terminal.
    latency: Option<Duration>,
    error: Option<String>,
}

/// The run's orders, from `seed`: mostly known users, one in fifteen
/// unknown, one in ten paying with a declining method, a third of them on
/// the two scarce items.
fn plan(
    scenario: &Scenario,
    tokens: &BTreeMap<String, String>,
    prefix: &str,
    count: u32,
    seed: u64,
) -> Vec<PlannedOrder> {
    assert!(
        !scenario.users.is_empty() && scenario.items.len() >= 2,
        "the demo needs users and two scarce items"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|n| {
            let user = if rng.random_ratio(1, 15) {
                format!("{prefix}ghost-{n}")
            } else {
                scenario.users[rng.random_range(0..scenario.users.len())]
                    .id
                    .to_string()
            };
            let item = match rng.random_range(0..100) {
                0..25 => &scenario.items[0],
                25..35 => &scenario.items[1],
                _ => &scenario.items[rng.random_range(2..scenario.items.len())],
            };
            let mut body =
                json!({ "userId": user, "itemId": item.id.as_str(), "quantity": rng.random_range(1..=3) });
            if rng.random_ratio(1, 10) {
                body["paymentMethod"] = json!(DECLINING_METHOD);
            }
            let token = tokens
                .get(&user)
                .or_else(|| tokens.get("admin"))
                .expect("the demo issued an admin token")
                .clone();
            PlannedOrder {
                key: format!("{prefix}order-{n}"),
                body,
                token,
            }
        })
        .collect()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn post_order(
    addr: SocketAddr,
    order: &PlannedOrder,
    body: &Value,
    wait_s: u64,
) -> Result<client::Response, String> {
    client::request(
        addr,
        "POST",
        &format!("/orders?wait={wait_s}"),
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", &order.key),
            ("Authorization", &bearer(&order.token)),
        ],
        body.to_string().as_bytes(),
        Duration::from_secs(wait_s + 10),
    )
    .await
}

async fn place_one(addr: SocketAddr, order: &PlannedOrder) -> Answer {
    let started = Instant::now();
    let answer = |order_id, latency, error| Answer {
        order_id,
        latency,
        error,
    };
    let response = match post_order(addr, order, &order.body, CLIENT_WAIT_S).await {
        Ok(r) => r,
        Err(e) => return answer(None, None, Some(e)),
    };
    let elapsed = started.elapsed();
    let json = match response.json() {
        Ok(v) => v,
        Err(e) => return answer(None, None, Some(e)),
    };
    let order_id = json["orderId"].as_str().and_then(|s| OrderId::parse(s).ok());
    match response.status {
        200 => answer(order_id, Some(elapsed), None),
        202 => answer(order_id, None, None),
        s => answer(None, None, Some(format!("HTTP {s}: {json}"))),
    }
}

/// Places every order with at most `concurrency` in flight.
async fn place_all(addr: SocketAddr, orders: Vec<PlannedOrder>, concurrency: usize) -> Vec<Answer> {
    let bar = ProgressBar::new(orders.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} placing orders {bar:40} {pos}/{len} [{elapsed}] {per_sec}")
            .expect("a valid template"),
    );
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, order) in orders.into_iter().enumerate() {
        let permits = permits.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire().await.expect("the semaphore is never closed");
            let answer = place_one(addr, &order).await;
            bar.inc(1);
            (index, answer)
        });
    }
    let mut answers: Vec<Option<Answer>> = vec![None; tasks.len()];
    while let Some(joined) = tasks.join_next().await {
        let (index, answer) = joined.expect("a client task does not panic");
        answers[index] = Some(answer);
    }
    bar.finish_and_clear();
    answers
        .into_iter()
        .map(|a| a.expect("every task answered"))
        .collect()
}

/// A few bad, repeated or unauthorized requests and the answers they must
/// get. `other_user` is a token of a user other than `first`'s buyer.
async fn edge_checks(
    addr: SocketAddr,
    first: &PlannedOrder,
    first_id: Option<&OrderId>,
    admin: &str,
    other_user: &str,
) -> Vec<(String, bool)> {
    let mut checks = Vec::new();
    let replay = post_order(addr, first, &first.body, 0).await;
    let same_id = replay
        .as_ref()
        .ok()
        .and_then(|r| r.json().ok())
        .and_then(|v| v["orderId"].as_str().map(str::to_string));
    checks.push((
        "same Idempotency-Key, same body -> same order".to_string(),
        first_id.is_some_and(|id| same_id.as_deref() == Some(id.as_str())),
    ));
    let mut changed = first.body.clone();
    changed["quantity"] = json!(changed["quantity"].as_i64().unwrap_or(1) % 3 + 1);
    let status = |r: Result<client::Response, String>| r.map(|r| r.status).unwrap_or(0);
    checks.push((
        "same Idempotency-Key, other body -> 409".to_string(),
        status(post_order(addr, first, &changed, 0).await) == 409,
    ));
    let admin = bearer(admin);
    let json_header = [
        ("Content-Type", "application/json"),
        ("Authorization", admin.as_str()),
    ];
    let timeout = Duration::from_secs(10);
    let malformed = client::request(addr, "POST", "/orders", &json_header, b"{\"userId\":", timeout).await;
    checks.push(("malformed JSON -> 400".to_string(), status(malformed) == 400));
    let mut unknown = first.body.clone();
    unknown["itemId"] = json!("no-such-item");
    let unknown = client::request(
        addr,
        "POST",
        "/orders",
        &json_header,
        unknown.to_string().as_bytes(),
        timeout,
    )
    .await;
    checks.push(("unknown item -> 422".to_string(), status(unknown) == 422));
    let text = client::request(
        addr,
        "POST",
        "/orders",
        &[("Content-Type", "text/plain"), ("Authorization", admin.as_str())],
        b"hi",
        timeout,
    )
    .await;
    checks.push(("wrong content type -> 415".to_string(), status(text) == 415));
    let anonymous = client::request(
        addr,
        "POST",
        "/orders",
        &[("Content-Type", "application/json")],
        first.body.to_string().as_bytes(),
        timeout,
    )
    .await;
    checks.push(("no token -> 401".to_string(), status(anonymous) == 401));
    let other = bearer(other_user);
    let snooping = match first_id {
        Some(id) => {
            let path = format!("/orders/{id}");
            status(client::request(addr, "GET", &path, &[("Authorization", &other)], b"", timeout).await)
        }
        None => 0,
    };
    checks.push((
        "another user's order -> 404 (as a missing one)".to_string(),
        snooping == 404,
    ));
    checks
}

/// Polls the stores until every invariant holds at quiescence or `bound`
/// passes; returns the last snapshot and how long it took.
async fn await_quiescence(backend: &Backend, bound: Duration) -> Result<(Snapshot, Duration, bool), String> {
    let started = Instant::now();
    loop {
        let snapshot = backend
            .store
            .snapshot()
            .await
            .map_err(|e| format!("snapshot failed: {e}"))?;
        let clean = violations(&snapshot, false).is_empty();
        if clean || started.elapsed() >= bound {
            return Ok((snapshot, started.elapsed(), clean));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn outcome_label(snapshot: &Snapshot, id: &OrderId) -> (String, String) {
    match snapshot.orders.get(id) {
        None => ("MISSING".into(), String::new()),
        Some(o) => match o.failed_step {
            None => (o.status.as_str().to_string(), String::new()),
            Some(step) => (
                format!("FAILED at {}", step.as_str()),
                o.failure_reason.clone().unwrap_or_default(),
            ),
        },
    }
}

/// A reason without the run's ids and numbers (the text before its first
/// colon), so equal causes group.
fn reason_kind(reason: &str) -> String {
    let head = reason.split(':').next().unwrap_or(reason);
    let words: Vec<&str> = head
        .split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .take(8)
        .collect();
    words.join(" ")
}

/// The slowest order's timeline from `GET /orders/{id}`, as one line of
/// hops with the milliseconds each took: where the time went.
async fn slowest_timeline(addr: SocketAddr, answers: &[Answer], admin: &str) -> Option<String> {
    let (id, latency) = answers
        .iter()
        .filter_map(|a| Some((a.order_id.as_ref()?, a.latency?)))
        .max_by_key(|(_, latency)| *latency)?;
    let path = format!("/orders/{id}");
    let auth = bearer(admin);
    let response = client::request(
        addr,
        "GET",
        &path,
        &[("Authorization", &auth)],
        b"",
        Duration::from_secs(10),
    )
    .await
    .ok()?;
    let view = response.json().ok()?;
    let timeline = view["timeline"].as_array()?;
    let mut hops = Vec::new();
    let mut previous: Option<chrono::DateTime<chrono::Utc>> = None;
    for entry in timeline {
        let at = chrono::DateTime::parse_from_rfc3339(entry["at"].as_str()?)
            .ok()?
            .to_utc();
        let gap = previous.map_or(0, |p| (at - p).num_milliseconds());
        hops.push(format!("{} +{gap}ms", entry["type"].as_str()?));
        previous = Some(at);
    }
    Some(format!(
        "slowest order {id} ({} ms): {}",
        latency.as_millis(),
        hops.join(", ")
    ))
}

/// `purchase-saga demo`.
pub async fn run_demo(global: &GlobalArgs, args: &DemoArgs) -> Result<ExitCode, String> {
    let pool = super::serve::pool_size(
        Service::ALL.len(),
        args.replicas,
        usize::from(global.handle_concurrency),
        16,
    );
    let backend = Backend::open_to_migrate(global, pool, super::backend::Needs::StoreAndBus).await?;
    backend.migrate().await?;
    let tag = chrono::Utc::now().timestamp_millis() % 1_000_000_000;
    let prefix = format!("demo{tag}-");
    let scenario = demo_scenario(&prefix);
    let rows = scenario.opening_rows();
    seed_rows(backend.store.as_ref(), &rows)
        .await
        .map_err(|e| format!("seeding failed: {e}"))?;
    let tokens: BTreeMap<String, String> = super::seed::issue_demo_tokens(backend.tokens.as_ref(), &scenario)
        .await
        .map_err(|e| format!("issuing tokens failed: {e}"))?
        .into_iter()
        .collect();
    let admin = tokens["admin"].clone();
    let (env, metrics) = backend.observed_env(global);
    let mut running = Running::start(&env, &Service::ALL, args.replicas);
    running.spawn_bus_maintenance(&backend, &Service::ALL);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = app_state(&backend, running.env());
    running.spawn_http_with_metrics(listener, state, metrics);
    println!(
        "demo on {} with API at http://{addr}: {} users, {} items, {} orders, {} clients, {} consumers per service",
        backend.describe,
        scenario.users.len(),
        scenario.items.len(),
        args.orders,
        args.concurrency,
        args.replicas
    );

    let orders = plan(&scenario, &tokens, &prefix, args.orders, args.seed);
    let first = orders[0].clone();
    // A user other than the first order's buyer: users 0 and 1 differ.
    let other_user = scenario
        .users
        .iter()
        .map(|u| u.id.to_string())
        .find(|u| first.body["userId"].as_str() != Some(u))
        .map(|u| tokens[&u].clone())
        .expect("the demo has two users");
    let started = Instant::now();
    let answers = place_all(addr, orders, usize::from(args.concurrency)).await;
    let placing = started.elapsed();
    let checks = edge_checks(addr, &first, answers[0].order_id.as_ref(), &admin, &other_user).await;
    let (snapshot, settle, clean) =
        await_quiescence(&backend, Duration::from_secs(u64::from(args.quiescence_timeout))).await?;
    let slowest = slowest_timeline(addr, &answers, &admin).await;
    let unfinished = running.stop(SHUTDOWN_GRACE).await;

    // ---- summary ----
    let errors: Vec<&String> = answers.iter().filter_map(|a| a.error.as_ref()).collect();
    let mut outcomes: BTreeMap<String, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
    for id in answers.iter().filter_map(|a| a.order_id.as_ref()) {
        let (label, reason) = outcome_label(&snapshot, id);
        let entry = outcomes.entry(label).or_default();
        entry.0 += 1;
        if !reason.is_empty() {
            *entry.1.entry(reason_kind(&reason)).or_default() += 1;
        }
    }
    let placed = answers.iter().filter(|a| a.order_id.is_some()).count();
    println!();
    println!("{:<34} {:>7} {:>7}", "outcome", "orders", "share");
    for (label, (count, reasons)) in &outcomes {
        println!(
            "{label:<34} {count:>7} {:>6.1}%",
            100.0 * *count as f64 / placed.max(1) as f64
        );
        for (reason, n) in reasons {
            println!("    {n:>4} x {reason}");
        }
    }
    println!("{:<34} {placed:>7}", "total placed");
    let mut latencies: Vec<Duration> = answers.iter().filter_map(|a| a.latency).collect();
    latencies.sort();
    println!();
    println!(
        "throughput: {placed} orders in {:.2} s = {:.1} orders/s ({} clients)",
        placing.as_secs_f64(),
        placed as f64 / placing.as_secs_f64().max(1e-9),
        args.concurrency
    );
    println!(
        "order-to-terminal latency over HTTP: p50 {} ms, p99 {} ms, max {} ms ({} of {placed} terminal within the {CLIENT_WAIT_S} s wait)",
        percentile(&latencies, 50).as_millis(),
        percentile(&latencies, 99).as_millis(),
        latencies.last().copied().unwrap_or_default().as_millis(),
        latencies.len()
    );
    for (name, ok) in &checks {
        println!("edge check: {name}: {}", if *ok { "ok" } else { "FAILED" });
    }
    if !errors.is_empty() {
        println!("{} requests failed; first: {}", errors.len(), errors[0]);
    }
    let found = violations(&snapshot, false);
    println!(
        "quiescent after {:.2} s; audit over {} orders, {} users, {} items: {}",
        settle.as_secs_f64(),
        snapshot.orders.len(),
        snapshot.accounts.len(),
        snapshot.item_stocks.len(),
        if found.is_empty() {
            "clean".to_string()
        } else {
            format!("{} violation(s)", found.len())
        }
    );
    for v in found.iter().take(20) {
        println!("  {v}");
    }
    if let Some(slowest) = slowest {
        println!("{slowest}");
    }
    if !unfinished.is_empty() {
        println!("tasks that did not stop in time: {}", unfinished.join(", "));
    }
    let ok = clean && errors.is_empty() && checks.iter().all(|(_, ok)| *ok) && unfinished.is_empty();
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
