//! Layer 2: the async driver that runs the domain over a store and a bus;
//! the same code in production and in the simulator.
//!
//! **Architecture Invariant:** nothing here names Postgres, Redis or
//! turmoil. It reaches the world through [`Store`], [`Bus`], [`Clock`] and
//! the payment gateway; time passes through `tokio::time`, which turmoil
//! simulates. Every loop is bounded by a shutdown signal and sleeps between
//! empty polls.

pub mod backoff;
pub mod batch;
pub mod bus;
pub mod commands;
pub mod consumer;
pub mod dispatch;
pub mod memory;
pub mod mermaid;
pub mod observer;
pub mod relay;
pub mod store;
pub mod sweeper;
pub mod trace;
pub mod transaction;

use std::sync::Arc;
use std::time::Duration;

pub use bus::{Bus, BusError, DeadLetter, Delivery, PartialPublish};
pub use dispatch::Dispatch;
pub use observer::{Disposition, Fanout, NoObserver, Observer, RuntimeEvent};
pub use store::{Mark, OutboxEntry, RedrivePolicy, Retention, Store, StoreError, StoreTx};

use crate::domain::gateway::PaymentGateway;
use crate::domain::{DurationMs, Timestamp};

/// The time source of the runtime: wall clock in production, simulated time
/// in the simulator, a manual clock in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }
}

/// Time that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn starting_at(t: Timestamp) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(t.0))
    }
    pub fn advance(&self, d: DurationMs) {
        self.0.fetch_add(d.0, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl ManualClock {
    pub fn now_ts(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The runtime's knobs. Every loop, batch and retry is bounded by one of them.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Entries a consumer takes per receive.
    pub batch_size: usize,
    /// Whether a consumer applies a batch's events in one store transaction
    /// (falling back to one transaction per event on a conflict, a
    /// constraint violation or a step error) instead of one transaction per
    /// event. Off is the control of the benchmark.
    pub batch_apply: bool,
    /// Orders of one batch a consumer handles at once (each in its own
    /// transaction, so each holds a store connection meanwhile).
    pub handle_concurrency: usize,
    /// Deliveries of one entry before it is dead-lettered.
    pub deliveries_max: u32,
    /// Immediate retries of a transaction that hit a conflict.
    pub conflict_retries_max: u32,
    /// First backoff after a conflict; doubles per retry.
    pub conflict_backoff: Duration,
    /// Sleep of a loop that found no work.
    pub idle_poll: Duration,
    /// Sleep after the store or bus was unavailable; doubles with each
    /// failure in a row, up to `error_backoff_max`.
    pub error_backoff: Duration,
    pub error_backoff_max: Duration,
    /// How long a relay holds the outbox entries it claimed: longer than a
    /// pass takes to publish and mark them. A crashed relay's entries are
    /// due again after it, so it bounds how long a kill -9 of a relay's
    /// process can hold an event back; a pass that outlives it only
    /// publishes its entries twice (the inboxes absorb the duplicate).
    pub relay_lease: Duration,
    /// Time from order creation to SAGA_DEADLINE_PASSED.
    pub saga_deadline: DurationMs,
    pub redrive: RedrivePolicy,
    pub retention: Retention,
    /// Period of the pruning pass.
    pub prune_interval: Duration,
    /// Who publishes a step's events: the committing task right after its
    /// commit (send on commit, the default), or only the relay (the
    /// control of the benchmark). See [`dispatch`].
    pub dispatch: Dispatch,
}

impl Default for RuntimeConfig {
    /// Production defaults: the founding document's 5-minute reservation TTL
    /// as the saga deadline.
    fn default() -> Self {
        RuntimeConfig {
            batch_size: 32,
            batch_apply: true,
            handle_concurrency: 8,
            deliveries_max: 10,
            conflict_retries_max: 8,
            conflict_backoff: Duration::from_millis(5),
            idle_poll: Duration::from_millis(50),
            error_backoff: Duration::from_millis(500),
            error_backoff_max: Duration::from_secs(10),
            // A pass takes milliseconds: 3 s is a wide margin, and keeps a
            // killed relay's claims within the few seconds of a takeover.
            relay_lease: Duration::from_secs(3),
            saga_deadline: DurationMs::from_secs(300),
            // Republish rounds start 1, 3, 7, ..., 255 minutes after an
            // event was committed, then every 128 minutes until the horizon,
            // the outbox row's life (24 h): 17 rounds, and an event lost at
            // any time the row is kept is re-driven within 128 minutes
            // (ARCHITECTURE.md "Re-drive until the horizon").
            redrive: RedrivePolicy {
                after: DurationMs::from_secs(60),
                republish_max: 8,
                horizon: DurationMs::from_secs(24 * 3600),
            },
            retention: Retention {
                inbox: DurationMs::from_secs(7 * 24 * 3600),
                outbox: DurationMs::from_secs(24 * 3600),
                batch: 1000,
            },
            prune_interval: Duration::from_secs(60),
            dispatch: Dispatch::Commit,
        }
    }
}

/// Everything the runtime's functions need, shared by all loops of a process.
#[derive(Clone)]
pub struct Env {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub clock: Arc<dyn Clock>,
    pub gateway: Arc<dyn PaymentGateway>,
    pub observer: Arc<dyn Observer>,
    pub config: RuntimeConfig,
}

/// Tells loops to stop; each finishes the item in hand first.
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

/// Sleeps for `d` unless shutdown is signalled first; returns whether to stop.
pub(crate) async fn sleep_or_stop(shutdown: &mut Shutdown, d: Duration) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        biased;
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
    }
}
