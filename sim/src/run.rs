//! One run: builds the turmoil simulation for a [`SimInput`] (scenario and
//! fault plan), drives it step by step applying the plan, heals, and runs
//! until quiescence or the liveness bound; then checks the invariants.
//!
//! Hosts, in registration order (which fixes turmoil's polling order):
//! the broker, each process of the seed's [`Topology`] (one per service
//! replica, or several services per process), the client (`client.rs`; its
//! and the broker's crashes: `host_crashes.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::dispatch_for;
use purchase_saga::domain::invariants::{check_quiescent, Snapshot};
use purchase_saga::domain::{DurationMs, Service};
use purchase_saga::runtime::memory::MemoryStore;
use purchase_saga::runtime::relay::RelayWake;
use purchase_saga::runtime::trace::trace_hash;
use purchase_saga::runtime::{consumer, relay, sweeper, Dispatch, RuntimeConfig};
use purchase_saga::workload::{Scenario, ScenarioSize};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::broker::{self, Broker};
use crate::client::{RequestLog, CLIENT_HOST};
use crate::clock::SimClock;
use crate::config::runtime_config;
use crate::faults::{CrashPoint, FaultKind, FaultPlan, Profile, Replica, Scheduled};
use crate::finding::{check, Finding};
use crate::floor::SeedShape;
use crate::host_crashes::HostCrashes;
use crate::host_env::env_for;
use crate::quiescence::{pending_work, QuiescenceProof};
use crate::topology::{Process, Topology};
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
    /// Which services share a process (a turmoil host).
    pub topology: Topology,
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

/// Salt of a seed's topology stream.
const TOPOLOGY_SALT: u64 = 0x7090_7090_7090_7090;

/// The scenario, fault plan and topology that `seed` fixes.
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
    // Its own stream: the scenario and the plan keep their draws.
    let topology = Topology::draw(&mut ChaCha8Rng::seed_from_u64(seed ^ TOPOLOGY_SALT), profile);
    SimInput {
        seed,
        scenario,
        plan,
        topology,
    }
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
    /// Each placed order's path, by order id (`paths::order_paths`).
    pub order_paths: BTreeMap<String, String>,
    pub faults: BTreeMap<FaultKind, u64>,
    pub orders: u64,
    pub dead_letters: u64,
    pub simulated_ms: u64,
    /// The turmoil hosts, steps and tick the run took (`floor::floor_seed`);
    /// None for a run that had no turmoil (torture's).
    pub shape: Option<SeedShape>,
    pub wall: Duration,
}

/// A process's software: the library's own loops for its services, wired
/// as production's `serve` (`Running::start`) wires them: per service a
/// consumer and a relay, the sweeper with the Order service, one pruner
/// over the process's services, and one relay wake that every commit of
/// the process rings. Each service keeps its own store connection (the
/// fault layer's crash points and open transactions are per replica).
async fn process_software(world: Arc<World>, process: Process, config: RuntimeConfig) -> turmoil::Result {
    // Commits wake the relays only in relay mode: with send on commit the
    // relay recovers, on its idle poll.
    let wake = (config.dispatch == Dispatch::Relay).then(|| Arc::new(RelayWake::default()));
    let clock_of = process.lead().host();
    let (keep_running, shutdown) = tokio::sync::watch::channel(false);
    for replica in process.replicas() {
        let env = env_for(&world, Some(replica), &clock_of, config.clone(), wake.clone());
        let service = replica.service;
        tokio::task::spawn_local(consumer::run(
            env.clone(),
            service,
            replica.host(),
            shutdown.clone(),
        ));
        tokio::task::spawn_local(relay::run_woken(
            env.clone(),
            service,
            shutdown.clone(),
            wake.clone(),
        ));
        if service == Service::Order {
            tokio::task::spawn_local(sweeper::run(env.clone(), shutdown.clone()));
        }
    }
    let lead = env_for(&world, Some(process.lead()), &clock_of, config, wake);
    tokio::task::spawn_local(sweeper::run_pruner(
        lead,
        process.services.clone(),
        shutdown.clone(),
    ));
    // Runs until the host is crashed; shutdown is never signalled.
    std::future::pending::<()>().await;
    drop(keep_running);
    Ok(())
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
    let mut config = runtime_config(&plan);
    config.dispatch = dispatch_for(input.seed);
    let world = Arc::new(World::new(
        plan.clone(),
        store.clone(),
        clock.clone(),
        ChaCha8Rng::seed_from_u64(input.seed ^ 0x5a6a_5a6a_5a6a_5a6a),
        Snapshot::from_rows(opening),
        config.deliveries_max,
    ));
    if let Some(steer) = plan.steer {
        world.log(
            EntryKind::Driver { at: None },
            format!(
                "== steered to {} from {}ms: {} ==",
                steer.state,
                steer.at_ms,
                steer.lever()
            ),
        );
    }
    for (host, ms) in plan.skew_ms.iter().filter(|(_, ms)| **ms != 0) {
        world.fault(FaultKind::Skew, None, format!("{host}'s clock is {ms:+}ms off"));
    }
    let broker = Broker::new(world.clone());
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
    let topology = &input.topology;
    if !topology.is_per_service() {
        world.log(
            EntryKind::Driver { at: None },
            format!("== processes: {topology} =="),
        );
    }
    let processes = topology.processes(settings.replicas);
    // The broker, the processes and the client.
    let hosts_in_sim = processes.len() + 2;
    for process in processes {
        let (w, c) = (world.clone(), config.clone());
        sim.host(process.host(), move || {
            process_software(w.clone(), process.clone(), c.clone())
        });
    }
    let requests = Arc::new(RequestLog::default());
    let (w, log, orders, c) = (
        world.clone(),
        requests.clone(),
        input.scenario.orders.clone(),
        config.clone(),
    );
    sim.host(CLIENT_HOST, move || {
        crate::client::software(w.clone(), log.clone(), orders.clone(), c.clone())
    });
    let mut host_crashes = HostCrashes::new(broker.clone(), requests.clone());

    let last_arrival = input
        .scenario
        .orders
        .iter()
        .map(|o| o.at.0.max(0) as u64)
        .max()
        .unwrap_or(0);
    let heal_at = plan.heal_at_ms;
    let end_ms = heal_at.max(last_arrival) + settings.liveness_ms + plan.linger_ms;
    let mut quiet_since: Option<u64> = None;
    let mut next_fault = 0;
    // Processes down / cut off, by lead replica, until a time.
    let mut down: BTreeMap<Replica, u64> = BTreeMap::new();
    let mut cut: BTreeMap<Replica, u64> = BTreeMap::new();
    let mut quiescent = false;
    let mut failure = None;
    let check_every = (250 / settings.tick_ms).max(1);
    let mut steps: u64 = 0;
    let mut proof = QuiescenceProof::default();
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
            host_crashes.heal(t);
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
                    let process = topology.process_of(*replica);
                    if let std::collections::btree_map::Entry::Vacant(slot) = down.entry(process.lead()) {
                        crash(&mut sim, &world, &process, *replica, CrashPoint::Anywhere);
                        slot.insert(t + down_ms);
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
                    let process = topology.process_of(*replica);
                    if let std::collections::btree_map::Entry::Vacant(slot) = cut.entry(process.lead()) {
                        sim.partition(process.host(), broker::HOST);
                        world.fault(
                            FaultKind::Partition,
                            Some(replica.service),
                            format!("{} cut off the bus for {len_ms}ms", process.host()),
                        );
                        slot.insert(t + len_ms);
                    }
                }
                host @ (Scheduled::BrokerLoss { .. } | Scheduled::ClientCrash { .. }) => {
                    host_crashes.strike(&mut sim, &world, host, t);
                }
            }
            next_fault += 1;
        }
        for (r, point, down_ms) in world.take_crash_requests() {
            let process = topology.process_of(r);
            if let std::collections::btree_map::Entry::Vacant(slot) = down.entry(process.lead()) {
                crash(&mut sim, &world, &process, r, point);
                slot.insert(if world.healed() { t } else { t + down_ms });
            }
        }
        host_crashes.take_requests(&mut sim, &world, t);
        host_crashes.restart_due(&mut sim, &world, t);
        for (r, at) in down.clone() {
            if at <= t {
                down.remove(&r);
                let host = topology.process_of(r).host();
                sim.bounce(host.as_str());
                world.log(
                    EntryKind::Driver { at: Some(r.service) },
                    format!("== {host} restarted =="),
                );
            }
        }
        for (r, at) in cut.clone() {
            if at <= t {
                cut.remove(&r);
                let host = topology.process_of(r).host();
                sim.repair(host.as_str(), broker::HOST);
                world.log(
                    EntryKind::Driver { at: Some(r.service) },
                    format!("== {host} reconnected =="),
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
            && proof.check(&world, &broker)
        {
            // A lingering run stays up, idle, until the pruners have had
            // their turn, and must be quiescent again at the end of it.
            let since = *quiet_since.get_or_insert(t);
            if t >= since + plan.linger_ms {
                quiescent = true;
                break;
            }
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
    violations.extend(requests.check(&snapshot));
    if quiescent {
        violations.extend(world.check_compensations(&snapshot));
    }
    violations.sort();
    violations.dedup();
    for v in &violations {
        world.log(EntryKind::Driver { at: None }, format!("VIOLATION {v}"));
    }

    let mut faults = world.counts();
    crate::paths::count_deadlines(&snapshot, &mut faults);
    let paths = crate::paths::paths(&snapshot, input.scenario.orders.len());
    let order_paths = crate::paths::order_paths(&snapshot);
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
        shape: Some(SeedShape {
            hosts: hosts_in_sim,
            steps,
            tick: Duration::from_millis(settings.tick_ms),
        }),
        wall: wall_start.elapsed(),
    }
}

/// Crashes `process` (whose `replica` the fault struck) now, counting what
/// the crash interrupted: the open transactions of every service in it.
fn crash(sim: &mut turmoil::Sim<'_>, world: &World, process: &Process, replica: Replica, point: CrashPoint) {
    let open: u32 = process.replicas().map(|r| world.open_tx(r)).sum();
    let host = process.host();
    let what = match point {
        CrashPoint::Anywhere => "crashed",
        CrashPoint::BeforeCommit => "crashed before a commit",
        CrashPoint::AfterPublish => "crashed after publishing, before marking published",
        CrashPoint::AfterCommit => "crashed after a commit, before sending its events",
    };
    world.fault(FaultKind::Crash, Some(replica.service), format!("{host} {what}"));
    if open > 0 {
        world.fault(
            FaultKind::CrashMidTransaction,
            Some(replica.service),
            format!("{host} lost {open} open transaction(s)"),
        );
    }
    if point == CrashPoint::AfterPublish {
        world.count(FaultKind::CrashAfterPublish);
    }
    if point == CrashPoint::AfterCommit {
        world.count(FaultKind::CrashAfterCommit);
    }
    sim.crash(host.as_str());
}
