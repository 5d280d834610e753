//! A whole saga in one process with no threads, sockets or wall clock: the
//! six services over one [`MemoryStore`] and one [`MemoryBus`], moved one
//! action at a time (place an order, relay an outbox, deliver an entry,
//! sweep deadlines, move the clock) by a test script or by the seeded
//! [`Scheduler`](super::Scheduler). After every commit it checks the safety
//! invariants against the previous snapshot.

use std::sync::Arc;

use crate::domain::gateway::PaymentGateway;
use crate::domain::invariants::{self, Snapshot, Violation};
use crate::domain::participants::order::PlaceOrder;
use crate::domain::{DurationMs, Service, Timestamp};
use crate::runtime::commands::{place_order, PlaceError, Placed};
use crate::runtime::observer::Disposition;
use crate::runtime::trace::TraceRecorder;
use crate::runtime::{consumer, relay, sweeper, Env, ManualClock, Observer, RuntimeConfig, Store};
use crate::workload::{OrderSpec, Scenario};

use super::{MemoryBus, MemoryStore};

/// See the module docs.
pub struct Harness {
    pub env: Env,
    pub store: MemoryStore,
    pub bus: MemoryBus,
    pub clock: Arc<ManualClock>,
    pub trace: Arc<TraceRecorder>,
    /// Safety violations seen after any commit, in order.
    pub violations: Vec<Violation>,
    last: Snapshot,
    last_commits: u64,
}

/// Visibility timeout of the harness's bus: long, so that only the
/// scheduler's explicit choices redeliver.
const VISIBILITY: DurationMs = DurationMs(3_600_000);

impl Harness {
    pub fn new(scenario: &Scenario, config: RuntimeConfig, gateway: Arc<dyn PaymentGateway>) -> Harness {
        let clock = Arc::new(ManualClock::starting_at(Timestamp::SIM_EPOCH));
        let store = MemoryStore::new();
        store.seed(scenario.opening_rows());
        let bus = MemoryBus::new(clock.clone(), VISIBILITY);
        let trace = Arc::new(TraceRecorder::default());
        let env = Env {
            store: Arc::new(store.clone()),
            bus: Arc::new(bus.clone()),
            clock: clock.clone(),
            gateway,
            observer: trace.clone() as Arc<dyn Observer>,
            config,
        };
        let last = Snapshot::from_rows(scenario.opening_rows());
        Harness {
            env,
            store,
            bus,
            clock,
            trace,
            violations: Vec::new(),
            last,
            last_commits: 0,
        }
    }

    /// A client places `order`.
    pub async fn place(&mut self, order: &OrderSpec) -> Result<Placed, PlaceError> {
        self.trace.push(format!(
            "Client -> Order: PLACE_ORDER {{order={} user={} item={} qty={} method={}}}",
            order.id, order.user, order.item, order.quantity, order.method
        ));
        let cmd = PlaceOrder {
            order_id: order.id.clone(),
            user_id: order.user.clone(),
            item_id: order.item.clone(),
            quantity: order.quantity,
            payment_method: order.method.clone(),
        };
        let placed = place_order(&self.env, &cmd).await;
        self.check().await;
        placed
    }

    /// Runs one relay pass of `service`; returns the events published.
    pub async fn relay(&mut self, service: Service) -> usize {
        let n = relay::relay_once(&self.env, service)
            .await
            .expect("the memory store and bus do not fail");
        n
    }

    /// Delivers entry `id` of `service`'s stream to its consumer.
    pub async fn deliver(&mut self, service: Service, id: u64) -> Option<Disposition> {
        let delivery = self.bus.deliver(service, id)?;
        let disposition = consumer::handle_delivery(&self.env, service, "harness", &delivery).await;
        self.check().await;
        Some(disposition)
    }

    /// Signals every order past its deadline.
    pub async fn sweep(&mut self) -> usize {
        let n = sweeper::sweep_once(&self.env)
            .await
            .expect("the memory store does not fail");
        self.check().await;
        n
    }

    /// Moves the clock forward, with a trace line.
    pub fn advance(&mut self, d: DurationMs) {
        self.clock.advance(d);
        self.trace.push(format!("-- clock +{}ms --", d.0));
    }

    /// Relays and delivers, oldest entry first, for the services `allow`
    /// admits, until nothing moves. Returns the deliveries made.
    pub async fn drain(&mut self, allow: impl Fn(Service) -> bool) -> usize {
        let mut delivered = 0;
        loop {
            let mut moved = 0;
            for service in Service::ALL {
                moved += self.relay(service).await;
            }
            for service in Service::ALL.into_iter().filter(|s| allow(*s)) {
                if let Some(&id) = self.bus.deliverable(service).first() {
                    self.deliver(service, id).await;
                    moved += 1;
                    delivered += 1;
                }
            }
            if moved == 0 {
                return delivered;
            }
        }
    }

    /// The committed state of every service.
    pub async fn snapshot(&self) -> Snapshot {
        self.store
            .snapshot()
            .await
            .expect("the memory store does not fail")
    }

    /// Safety after the last commit(s); records violations.
    async fn check(&mut self) {
        let commits = self.store.commits();
        if commits == self.last_commits {
            return;
        }
        self.last_commits = commits;
        let now = self.snapshot().await;
        self.violations.extend(invariants::check_safety(&now));
        self.violations
            .extend(invariants::check_transition(&self.last, &now));
        self.last = now;
    }

    /// Quiescence invariants over the final state, plus every safety
    /// violation seen on the way.
    pub async fn final_violations(&self) -> Vec<Violation> {
        let mut all = self.violations.clone();
        all.extend(invariants::check_quiescent(&self.snapshot().await));
        all.sort();
        all.dedup();
        all
    }
}

/// A current-thread tokio runtime: the harness's futures run in a fixed
/// order. It acts one step at a time, so no lock is ever waited for and no
/// timer decides anything.
pub fn deterministic_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds")
}

impl Harness {
    /// Whether `service` has outbox entries the relay would publish now.
    pub async fn has_due_outbox(&self, service: Service) -> bool {
        let now = self.clock.now_ts();
        !self
            .store
            .outbox_due(service, now, 1)
            .await
            .expect("the memory store does not fail")
            .is_empty()
    }

    /// Whether the sweeper would signal a deadline now.
    pub async fn has_due_deadline(&self) -> bool {
        !self
            .store
            .orders_past_deadline(self.clock.now_ts(), 1)
            .await
            .expect("the memory store does not fail")
            .is_empty()
    }

    /// When something will next have work, if anything will: the next
    /// arrival, the earliest deadline of a PENDING order, or the next
    /// re-drive of an entry of a non-terminal order. None once every order is
    /// terminal and nothing is scheduled: quiescence.
    pub async fn next_wakeup(&self, next_arrival: Option<Timestamp>) -> Option<Timestamp> {
        let snapshot = self.snapshot().await;
        let pending: Vec<_> = snapshot
            .orders
            .values()
            .filter(|o| !o.status.is_terminal())
            .collect();
        let deadline = pending
            .iter()
            .filter(|o| !o.deadline_signalled)
            .map(|o| o.deadline_at)
            .min();
        let redrive = if pending.is_empty() {
            None
        } else {
            let policy = self.env.config.redrive;
            self.store
                .outbox()
                .iter()
                .filter_map(|e| policy.next_republish(e))
                .min()
        };
        [next_arrival, deadline, redrive].into_iter().flatten().min()
    }
}
