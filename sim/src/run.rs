//! One run: builds the turmoil simulation for a [`SimInput`] (scenario and
//! fault plan), drives it step by step applying the plan, heals, and runs
//! until quiescence or the liveness bound; then checks the invariants.
//!
//! Hosts, in registration order (which fixes turmoil's polling order):
//! the broker, each service's replicas, the client.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::invariants::{check_quiescent, Snapshot};
use purchase_saga::domain::participants::order::PlaceOrder;
use purchase_saga::domain::service::subscribers;
use purchase_saga::domain::{DurationMs, Service};
use purchase_saga::runtime::commands::{place_order, PlaceError};
use purchase_saga::runtime::memory::MemoryStore;
use purchase_saga::runtime::trace::trace_hash;
use purchase_saga::runtime::{consumer, relay, sweeper, Env, RuntimeConfig};
use purchase_saga::workload::{OrderSpec, Scenario, ScenarioSize};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::broker::{self, Broker};
use crate::bus::SimBus;
use crate::clock::SimClock;
use crate::faults::{CrashPoint, FaultKind, FaultPlan, Profile, Replica, Scheduled};
use crate::finding::{check, Finding};
use crate::observer::SimObserver;
use crate::store::SimStore;
use crate::world::{EntryKind, TraceEntry, World};

/// The shape of the simulated deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSettings {
    /// Replicas per service (>= 2 so consumers race).
    pub replicas: u8,
    /// turmoil's tick: a longer tick makes a seed cheaper.
    pub tick_ms: u64,
    /// After healing, every order must be terminal and every queue drained
    /// within this much simulated time.
    pub liveness_ms: u64,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            replicas: 2,
            tick_ms: 10,
            liveness_ms: 60_000,
        }
    }
}

/// Everything one run starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimInput {
    /// Seeds turmoil and the runtime fault draws.
    pub seed: u64,
    pub scenario: Scenario,
    pub plan: FaultPlan,
}

/// Orders arrive within this span (the workload's default).
pub const ARRIVAL_SPAN_MS: u64 = 5_000;

/// Every replica of the deployment, in host order.
pub fn replicas(settings: &SimSettings) -> Vec<Replica> {
    Service::ALL
        .into_iter()
        .flat_map(|service| (0..settings.replicas).map(move |index| Replica { service, index }))
        .collect()
}

/// The scenario and fault plan that `seed` fixes.
pub fn input_from_seed(seed: u64, profile: Profile, orders: usize, settings: &SimSettings) -> SimInput {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let size = ScenarioSize {
        orders,
        arrival_span: DurationMs(ARRIVAL_SPAN_MS as i64),
        ..ScenarioSize::default()
    };
    let scenario = Scenario::generate(&mut rng, size);
    let mut fault_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0fa1_7fa1_7fa1_7fa1);
    let plan = FaultPlan::generate(&mut fault_rng, profile, &replicas(settings), ARRIVAL_SPAN_MS);
    SimInput { seed, scenario, plan }
}

/// The runtime's knobs in the simulator: small batches, quick polls, the
/// plan's deadline, re-drive after 2 s.
pub fn runtime_config(plan: &FaultPlan) -> RuntimeConfig {
    let mut config = RuntimeConfig {
        batch_size: 8,
        deliveries_max: 10,
        conflict_retries_max: 8,
        conflict_backoff: Duration::from_millis(5),
        idle_poll: Duration::from_millis(50),
        error_backoff: Duration::from_millis(200),
        saga_deadline: DurationMs(plan.saga_deadline_ms),
        prune_interval: Duration::from_secs(60),
        ..RuntimeConfig::default()
    };
    config.redrive.after = DurationMs(2_000);
    // Rounds at 2, 6, ..., 126 s, then every 64 s until the horizon.
    config.redrive.republish_max = 6;
    config
}

/// What one run did and found.
#[derive(Debug, Clone)]
pub struct SimOutcome {
    pub seed: u64,
    pub entries: Vec<TraceEntry>,
    pub lines: Vec<String>,
    pub hash: u64,
    pub violations: Vec<Finding>,
    /// Orders by outcome: `COMPLETED`, a failed step, `PENDING`, `REJECTED`.
    pub paths: BTreeMap<String, u64>,
    /// Each placed order's path, by order id (`summary::order_paths`).
    pub order_paths: BTreeMap<String, String>,
    pub faults: BTreeMap<FaultKind, u64>,
    pub orders: u64,
    pub dead_letters: u64,
    pub simulated_ms: u64,
    pub wall: Duration,
}

/// Attempts of the client to place one order through store faults.
const PLACE_ATTEMPTS_MAX: u32 = 50;

fn env_for(world: &Arc<World>, replica: Option<Replica>, config: RuntimeConfig) -> Env {
    Env {
        store: Arc::new(SimStore::new(world.clone(), replica)),
        bus: Arc::new(SimBus::default()),
        clock: Arc::new(world.clock.clone()),
        gateway: Arc::new(SimulatedGateway::default()),
        observer: Arc::new(SimObserver { world: world.clone() }),
        config,
    }
}

/// A replica's software: the library's own loops for its service.
async fn replica_software(world: Arc<World>, replica: Replica, config: RuntimeConfig) -> turmoil::Result {
    let env = env_for(&world, Some(replica), config);
    let (keep_running, shutdown) = tokio::sync::watch::channel(false);
    let service = replica.service;
    tokio::task::spawn_local(consumer::run(
        env.clone(),
        service,
        replica.host(),
        shutdown.clone(),
    ));
    tokio::task::spawn_local(relay::run(env.clone(), service, shutdown.clone()));
    if service == Service::Order {
        tokio::task::spawn_local(sweeper::run(env.clone(), shutdown.clone()));
    }
    // Runs until the host is crashed; shutdown is never signalled.
    std::future::pending::<()>().await;
    drop(keep_running);
    Ok(())
}

/// The trace line of the client's request for `o`.
pub fn request_line(o: &OrderSpec) -> String {
    format!(
        "Client -> Order: create-order request {{order={} user={} item={} qty={} method={}}}",
        o.id, o.user, o.item, o.quantity, o.method
    )
}

/// The command that places `o`.
pub fn place_command(o: &OrderSpec) -> PlaceOrder {
    PlaceOrder {
        order_id: o.id.clone(),
        user_id: o.user.clone(),
        item_id: o.item.clone(),
        quantity: o.quantity,
        payment_method: o.method.clone(),
    }
}

/// The client: places each order at its arrival time, retrying store faults.
async fn client_software(
    world: Arc<World>,
    orders: Vec<OrderSpec>,
    config: RuntimeConfig,
) -> turmoil::Result {
    let env = env_for(&world, None, config);
    let start = tokio::time::Instant::now();
    for o in orders {
        tokio::time::sleep_until(start + o.at.as_std()).await;
        world.log(
            EntryKind::Place {
                order: o.id.to_string(),
            },
            request_line(&o),
        );
        let cmd = place_command(&o);
        for attempt in 1..=PLACE_ATTEMPTS_MAX {
            match place_order(&env, &cmd).await {
                Ok(_) => break,
                Err(PlaceError::Rejected(r)) => {
                    world.log(
                        EntryKind::Driver {
                            at: Some(Service::Order),
                        },
                        format!("Order -> Client: rejected {}: {r}", o.id),
                    );
                    break;
                }
                Err(PlaceError::Store(e)) => {
                    assert!(
                        attempt < PLACE_ATTEMPTS_MAX,
                        "order {} not placed after {attempt} attempts: {e}",
                        o.id
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    world.client_done.store(true, Ordering::SeqCst);
    Ok(())
}

/// Why the run is not quiescent yet, if it is not.
fn pending_work(world: &World, broker: &Broker) -> Option<String> {
    let snapshot = world.store.snapshot_now();
    let open = snapshot
        .orders
        .values()
        .filter(|o| !o.status.is_terminal())
        .count();
    if open > 0 {
        return Some(format!("{open} orders not terminal"));
    }
    let queued = broker.unacknowledged();
    if queued > 0 {
        return Some(format!("{queued} bus entries unacknowledged"));
    }
    for entry in world.store.outbox() {
        let id = entry.event.event_id;
        if entry.published_count == 0 {
            return Some(format!(
                "outbox entry {} of {} never published",
                entry.seq,
                entry.event.emitter()
            ));
        }
        for s in subscribers(entry.event.event_type()) {
            if !world.store.inbox_contains(s, id) && !broker.dead_lettered(s, id) {
                return Some(format!("{} never reached {s}", entry.event.summary()));
            }
        }
    }
    if world.store.locks_held() > 0 {
        return Some("store locks held".into());
    }
    None
}

/// Runs `input` to quiescence or to the liveness bound.
pub fn run(input: &SimInput, settings: &SimSettings) -> SimOutcome {
    assert!(
        settings.replicas >= 1 && settings.tick_ms >= 1,
        "a run needs replicas and a tick"
    );
    let wall_start = std::time::Instant::now();
    let plan = input.plan.clone();
    let clock = SimClock::default();
    let store = MemoryStore::new().with_lock_timeout(Duration::from_secs(1));
    let opening = input.scenario.opening_rows();
    store.seed(opening.clone());
    let world = Arc::new(World::new(
        plan.clone(),
        store.clone(),
        clock.clone(),
        ChaCha8Rng::seed_from_u64(input.seed ^ 0x5a6a_5a6a_5a6a_5a6a),
        Snapshot::from_rows(opening),
    ));
    let broker = Broker::new(world.clone());
    let config = runtime_config(&plan);
    let base_latency = Duration::from_millis(1);
    let mut sim = turmoil::Builder::new()
        .tick_duration(Duration::from_millis(settings.tick_ms))
        .simulation_duration(Duration::from_secs(24 * 3600))
        .min_message_latency(base_latency)
        .max_message_latency(base_latency + Duration::from_millis(plan.jitter_ms_max))
        .rng_seed(input.seed)
        .build();

    let b = broker.clone();
    sim.host(broker::HOST, move || broker::serve(b.clone()));
    let all = replicas(settings);
    for &r in &all {
        let (w, c) = (world.clone(), config.clone());
        sim.host(r.host(), move || replica_software(w.clone(), r, c.clone()));
    }
    sim.client(
        "client",
        client_software(world.clone(), input.scenario.orders.clone(), config.clone()),
    );

    let last_arrival = input
        .scenario
        .orders
        .iter()
        .map(|o| o.at.0.max(0) as u64)
        .max()
        .unwrap_or(0);
    let heal_at = plan.heal_at_ms;
    let end_ms = heal_at.max(last_arrival) + settings.liveness_ms;
    let mut next_fault = 0;
    let mut down: BTreeMap<Replica, u64> = BTreeMap::new();
    let mut cut: BTreeMap<Replica, u64> = BTreeMap::new();
    let mut quiescent = false;
    let mut failure = None;
    let check_every = (250 / settings.tick_ms).max(1);
    let mut steps: u64 = 0;
    loop {
        let t = u64::try_from(sim.elapsed().as_millis()).expect("simulated ms fit u64");
        clock.set_driver_ms(t as i64);
        if !world.healed() && t >= heal_at {
            world.heal();
            sim.set_max_message_latency(base_latency);
            for r in down.values_mut() {
                *r = t;
            }
            for r in cut.values_mut() {
                *r = t;
            }
            world.log(
                EntryKind::Driver { at: None },
                "== healed: no more faults; input stopped ==".into(),
            );
        }
        while !world.healed() && next_fault < plan.timed.len() && plan.timed[next_fault].at_ms <= t {
            match &plan.timed[next_fault].fault {
                Scheduled::Crash {
                    replica,
                    point: CrashPoint::Anywhere,
                    down_ms,
                } => {
                    if !down.contains_key(replica) {
                        crash(&mut sim, &world, *replica, CrashPoint::Anywhere);
                        down.insert(*replica, t + down_ms);
                    }
                }
                Scheduled::Crash {
                    replica,
                    point,
                    down_ms,
                } => {
                    world.arm(*replica, *point, *down_ms);
                }
                Scheduled::Partition { replica, len_ms } => {
                    if !cut.contains_key(replica) {
                        sim.partition(replica.host(), broker::HOST);
                        world.fault(
                            FaultKind::Partition,
                            Some(replica.service),
                            format!("{replica} cut off the bus for {len_ms}ms"),
                        );
                        cut.insert(*replica, t + len_ms);
                    }
                }
            }
            next_fault += 1;
        }
        for (r, point, down_ms) in world.take_crash_requests() {
            if let std::collections::btree_map::Entry::Vacant(slot) = down.entry(r) {
                crash(&mut sim, &world, r, point);
                slot.insert(if world.healed() { t } else { t + down_ms });
            }
        }
        for (r, at) in down.clone() {
            if at <= t {
                down.remove(&r);
                sim.bounce(r.host());
                world.log(
                    EntryKind::Driver { at: Some(r.service) },
                    format!("== {r} restarted =="),
                );
            }
        }
        for (r, at) in cut.clone() {
            if at <= t {
                cut.remove(&r);
                sim.repair(r.host(), broker::HOST);
                world.log(
                    EntryKind::Driver { at: Some(r.service) },
                    format!("== {r} reconnected =="),
                );
            }
        }
        if let Err(e) = sim.step() {
            failure = Some(e.to_string());
            break;
        }
        steps += 1;
        if world.healed()
            && world.client_done.load(Ordering::SeqCst)
            && steps % check_every == 0
            && pending_work(&world, &broker).is_none()
        {
            quiescent = true;
            break;
        }
        if t >= end_ms {
            break;
        }
    }
    let simulated_ms = u64::try_from(sim.elapsed().as_millis()).expect("simulated ms fit u64");
    clock.set_driver_ms(simulated_ms as i64);
    let snapshot = world.store.snapshot_now();
    let mut violations: Vec<Finding> = world.violations().into_iter().map(|(_, v)| v).collect();
    if let Some(e) = failure {
        violations.push(Finding::new(check::HOST_FAILED, "simulation", e));
    }
    if world.checked_state() != snapshot {
        violations.push(Finding::new(
            check::CHECKED_STATE,
            "run",
            "the safety checks' copy of the committed state differs from the store's",
        ));
    }
    if !quiescent {
        let why = pending_work(&world, &broker).unwrap_or_else(|| "client still placing orders".into());
        violations.push(Finding::new(
            check::LIVENESS,
            "run",
            format!("not quiescent {}ms after healing: {why}", settings.liveness_ms),
        ));
    }
    violations.extend(check_quiescent(&snapshot).into_iter().map(Finding::from));
    if quiescent {
        violations.extend(world.check_compensations(&snapshot));
    }
    violations.sort();
    violations.dedup();
    for v in &violations {
        world.log(EntryKind::Driver { at: None }, format!("VIOLATION {v}"));
    }

    let mut faults = world.counts();
    crate::summary::count_deadlines(&snapshot, &mut faults);
    let paths = crate::summary::paths(&snapshot, input.scenario.orders.len());
    let order_paths = crate::summary::order_paths(&snapshot);
    let entries = world.trace();
    let lines: Vec<String> = entries
        .iter()
        .map(|e| format!("{:>7} {}", e.at_ms, e.text))
        .collect();
    SimOutcome {
        seed: input.seed,
        hash: trace_hash(&lines),
        entries,
        lines,
        violations,
        paths,
        order_paths,
        faults,
        orders: input.scenario.orders.len() as u64,
        dead_letters: broker.dead_letters().len() as u64,
        simulated_ms,
        wall: wall_start.elapsed(),
    }
}

/// Crashes `replica`'s host now, counting what the crash interrupted.
fn crash(sim: &mut turmoil::Sim<'_>, world: &World, replica: Replica, point: CrashPoint) {
    let open = world.open_tx(replica);
    let what = match point {
        CrashPoint::Anywhere => "crashed",
        CrashPoint::BeforeCommit => "crashed before a commit",
        CrashPoint::AfterPublish => "crashed after publishing, before marking published",
    };
    world.fault(
        FaultKind::Crash,
        Some(replica.service),
        format!("{replica} {what}"),
    );
    if open > 0 {
        world.fault(
            FaultKind::CrashMidTransaction,
            Some(replica.service),
            format!("{replica} lost {open} open transaction(s)"),
        );
    }
    if point == CrashPoint::AfterPublish {
        world.count(FaultKind::CrashAfterPublish);
    }
    sim.crash(replica.host());
}
