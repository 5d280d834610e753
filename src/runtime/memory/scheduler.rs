//! The seeded scheduler: runs a [`Scenario`] on the [`Harness`] choosing, at
//! every step and from one seed only, which order arrives, which outbox is
//! relayed, which entry of which stream is delivered next (any order, not
//! FIFO), which entries the broker delivers twice, and how far the clock
//! moves. Ends at quiescence or at a step bound; either way it reports the
//! trace and every invariant violation.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::domain::gateway::PaymentGateway;
use crate::domain::invariants::{Invariant, Violation};
use crate::domain::rows::OrderStatus;
use crate::domain::{DurationMs, Service};
use crate::runtime::RuntimeConfig;
use crate::workload::Scenario;

use super::harness::{deterministic_runtime, Harness};

/// The scheduler's knobs. Everything random is drawn from `seed`.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub seed: u64,
    /// Chance, per delivery, that the broker also keeps a copy to deliver
    /// again later (parts per thousand).
    pub duplicate_per_mille: u32,
    /// Largest clock step between two actions.
    pub tick_max: DurationMs,
    /// Actions before the run counts as not quiescing (a liveness failure).
    pub steps_max: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            seed: 0,
            duplicate_per_mille: 150,
            tick_max: DurationMs(200),
            steps_max: 20_000,
        }
    }
}

/// What one run did and found.
#[derive(Debug, Clone)]
pub struct SchedulerReport {
    pub trace: Vec<String>,
    pub violations: Vec<Violation>,
    pub steps: usize,
    pub duplicates_injected: usize,
    /// Terminal orders by outcome: `COMPLETED` or the failed step.
    pub outcomes: BTreeMap<String, usize>,
    pub dead_letters: usize,
    pub simulated: DurationMs,
}

/// Runtime settings for the harness: a short deadline, so that deadlines
/// race the saga in ordinary runs.
pub fn harness_config() -> RuntimeConfig {
    let mut config = RuntimeConfig {
        saga_deadline: DurationMs::from_secs(10),
        ..RuntimeConfig::default()
    };
    config.redrive.after = DurationMs::from_secs(5);
    config
}

/// See the module docs.
pub struct Scheduler;

impl Scheduler {
    /// Runs `scenario` with the harness's settings, the default simulated
    /// gateway and the default scheduler knobs but `seed` and
    /// `duplicate_per_mille`: what the property tests and the fuzzers run.
    pub fn run_scenario(scenario: &Scenario, seed: u64, duplicate_per_mille: u32) -> SchedulerReport {
        let config = SchedulerConfig {
            seed,
            duplicate_per_mille,
            ..SchedulerConfig::default()
        };
        let gateway = Arc::new(crate::domain::gateway::SimulatedGateway::default());
        Scheduler::run_blocking(scenario, &config, harness_config(), gateway)
    }

    /// Runs to quiescence (or `steps_max`) on a private deterministic runtime.
    pub fn run_blocking(
        scenario: &Scenario,
        config: &SchedulerConfig,
        runtime: RuntimeConfig,
        gateway: Arc<dyn PaymentGateway>,
    ) -> SchedulerReport {
        deterministic_runtime().block_on(Scheduler::run(scenario, config, runtime, gateway))
    }

    pub async fn run(
        scenario: &Scenario,
        config: &SchedulerConfig,
        runtime: RuntimeConfig,
        gateway: Arc<dyn PaymentGateway>,
    ) -> SchedulerReport {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut h = Harness::new(scenario, runtime, gateway);
        let start = h.clock.as_ref().now_ts();
        let mut next_order = 0;
        let mut duplicates = 0;
        let mut steps = 0;
        let mut quiescent = false;
        while steps < config.steps_max {
            steps += 1;
            let elapsed = h.clock.as_ref().now_ts().since(start);
            let mut actions: Vec<Action> = Vec::new();
            if let Some(o) = scenario.orders.get(next_order) {
                if o.at <= elapsed {
                    actions.push(Action::Place);
                }
            }
            for service in Service::ALL {
                if h.has_due_outbox(service).await {
                    actions.push(Action::Relay(service));
                }
                for id in h.bus.deliverable(service) {
                    actions.push(Action::Deliver(service, id));
                }
            }
            if h.has_due_deadline().await {
                actions.push(Action::Sweep);
            }
            if actions.is_empty() {
                match h
                    .next_wakeup(scenario.orders.get(next_order).map(|o| start.plus(o.at)))
                    .await
                {
                    Some(at) => {
                        let now = h.clock.as_ref().now_ts();
                        h.advance(at.since(now).max(DurationMs(1)));
                        continue;
                    }
                    None => {
                        quiescent = true;
                        break;
                    }
                }
            }
            match actions[rng.random_range(0..actions.len())] {
                Action::Place => {
                    let order = scenario.orders[next_order].clone();
                    next_order += 1;
                    // A rejection (unknown item, bad quantity) is a valid
                    // outcome of the request; the trace shows the request.
                    let _ = h.place(&order).await;
                }
                Action::Relay(service) => {
                    h.relay(service).await;
                }
                Action::Deliver(service, id) => {
                    if rng.random_range(0..1000) < config.duplicate_per_mille {
                        h.bus.duplicate(service, id);
                        duplicates += 1;
                    }
                    h.deliver(service, id).await;
                }
                Action::Sweep => {
                    h.sweep().await;
                }
            }
            let tick = rng.random_range(0..=config.tick_max.0.max(0));
            h.clock.advance(DurationMs(tick));
        }
        let mut violations = h.final_violations().await;
        if !quiescent {
            violations.push(Violation {
                invariant: Invariant::EveryOrderTerminal,
                subject: "run".to_string(),
                detail: format!("no quiescence after {} actions", config.steps_max),
            });
        }
        let snapshot = h.snapshot().await;
        let mut outcomes = BTreeMap::new();
        for order in snapshot.orders.values() {
            let key = match (order.status, order.failed_step) {
                (OrderStatus::Completed, _) => "COMPLETED".to_string(),
                (OrderStatus::Failed, Some(step)) => format!("FAILED@{}", step.as_str()),
                (status, _) => status.as_str().to_string(),
            };
            *outcomes.entry(key).or_insert(0) += 1;
        }
        SchedulerReport {
            trace: h.trace.lines(),
            violations,
            steps,
            duplicates_injected: duplicates,
            outcomes,
            dead_letters: h.bus.dead_letters().len(),
            simulated: h.clock.as_ref().now_ts().since(start),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Place,
    Relay(Service),
    Deliver(Service, u64),
    Sweep,
}
