//! `saga-sim torture`: the simulator's workloads and fault plans against the
//! production adapters (`PgStore` on PostgreSQL, `RedisBus` on Redis), with
//! the library's own runtime loops as replicas, and the simulator's
//! invariants as the verdict.
//!
//! Per seed: the scenario and `FaultPlan` that `saga-sim run` draws for it
//! (`input_from_seed`), plus torture's own faults ([`plan::Kind`]) drawn
//! from the same seed; a fresh database (`DATABASE_URL`'s server, dropped
//! after the seed even on failure) and a fresh key prefix on a private
//! redis-server or, with `--redis cluster`, a private three-node Redis
//! Cluster (see [`redis_target`]); two replicas per service, each its own
//! pool, Redis connections and tokio tasks ([`replicas`]); faults at the
//! adapter boundary ([`boundary`]) and at the servers ([`servers`]); the
//! simulator's checker: per commit and per ack below the faults
//! ([`witness`]), on what the streams hold ([`streams`]), quiescence and
//! the rest at the end ([`checks`]). It is
//! not deterministic: a failure prints the seed, the plan and the trace,
//! and the seed draws the same scenario and plan again, not the same
//! interleaving.
//!
//! # Time scaling
//!
//! Plans are written in the simulator's milliseconds (orders arrive over
//! 5 s, faults heal 3-10 s later, deadlines of 1-4 s under the deadline
//! fault, re-drive after 2 s). Torture runs them in real time divided by
//! [`TIME_DIVISOR`] (2): arrivals over 2.5 s, the heal after 4-7.5 s, saga
//! deadlines of 0.5-2 s (5 s without the deadline fault), re-drive rounds
//! 1, 3, 7, 15, 31 and 63 s after a commit, every crash, partition and
//! window halved. Everything the runtime waits on is scaled with it: the
//! visibility timeout is 500 ms (ten deliveries, the dead-letter budget,
//! take 5 s, so a read-only window of a few seconds spends it), the read
//! block 50 ms, lock timeout 300 ms, statement timeout 2 s and
//! `idle_in_transaction_session_timeout` 1 s (the frozen-replica fault
//! freezes for longer; [`pg_faults`]). Retention
//! (inbox and outbox, 10 min) outlasts any seed, so pruning runs (every
//! second) but may delete nothing a run still needs. A seed takes a few
//! seconds up to the heal, then as long as recovery needs, at most
//! [`TortureSettings::quiescence_bound`] (45 s by default: a lost event
//! waits for its next re-drive round, 15 s apart by then).

pub mod boundary;
pub mod checks;
pub mod coverage;
pub mod databases;
pub mod driver;
pub mod pg_faults;
pub mod plan;
pub mod redis_faults;
pub mod redis_target;
pub mod replicas;
pub mod servers;
pub mod state;
pub mod streams;
pub mod witness;

use std::collections::BTreeMap;
use std::time::Duration;

use purchase_saga::domain::DurationMs;
use purchase_saga::runtime::trace::trace_hash;
use purchase_saga::runtime::{Retention, RuntimeConfig};

use crate::faults::{FaultKind, FaultPlan, Profile};
use crate::finding::Finding;
use crate::run::SimOutcome;
use crate::summary::Summary;

pub use databases::Layout;
pub use driver::run_seed;
pub use plan::{parse_kinds, AnyKind, Kind, TortureInput};
pub use redis_target::RedisLayout;

/// Real time is the plan's time divided by this; see the module docs.
pub const TIME_DIVISOR: u64 = 2;

/// What every seed of a torture sweep shares.
#[derive(Debug, Clone)]
pub struct TortureSettings {
    /// The admin URL: each seed creates its database on this server.
    pub database_url: String,
    /// None: a private Redis per seed, of [`TortureSettings::redis`]'s
    /// layout (see [`redis_target`]).
    pub redis_url: Option<String>,
    /// One private redis-server per seed (the default), or a private
    /// three-node Redis Cluster (`--redis cluster`).
    pub redis: RedisLayout,
    pub profile: Profile,
    pub orders: usize,
    pub without: Vec<AnyKind>,
    /// After the heal, quiescence must come within this.
    pub quiescence_bound: Duration,
    /// Stop a seed at its first finding (a mutant hunt needs one finding,
    /// not the whole run).
    pub stop_at_first_finding: bool,
    /// One database, or one per group of services (`--layout`; see
    /// [`databases`]).
    pub layout: Layout,
    /// A planted routing error, for the tests that show the split layout's
    /// checks catch one: this service's replicas connect to another
    /// service's database ([`databases::DbMap`]). None on the command line.
    pub misroute: Option<purchase_saga::domain::Service>,
}

impl TortureSettings {
    pub fn new(database_url: String, redis_url: Option<String>, profile: Profile) -> TortureSettings {
        TortureSettings {
            database_url,
            redis_url,
            redis: RedisLayout::Single,
            profile,
            orders: 20,
            without: Vec::new(),
            quiescence_bound: Duration::from_secs(45),
            stop_at_first_finding: false,
            layout: Layout::Single,
            misroute: None,
        }
    }

    /// The `saga-sim torture` command line that runs seeds `a..b` again
    /// (`without`: the `--without` flags as given).
    pub fn command(&self, a: u64, b: u64, without: &[String], mutant: Option<&str>) -> String {
        let mut flags = String::new();
        for w in without {
            flags += &format!(" --without {w}");
        }
        if let Some(m) = mutant {
            flags += &format!(" --mutant {m}");
        }
        if let Some(url) = &self.redis_url {
            flags += &format!(" --redis-url {url}");
        }
        if self.layout != Layout::Single {
            flags += &format!(" --layout {}", self.layout);
        }
        if self.redis != RedisLayout::Single {
            flags += &format!(" --redis {}", self.redis.name());
        }
        format!(
            "saga-sim torture --seeds {a}..{b} --faults {} --orders {}{flags}",
            self.profile.name(),
            self.orders
        )
    }
}

/// The simulator's runtime knobs (`config::runtime_config`) scaled to
/// torture's clock (see the module docs).
pub fn runtime_config(plan: &FaultPlan) -> RuntimeConfig {
    let mut config = crate::config::runtime_config(plan);
    let divisor = TIME_DIVISOR as i64;
    config.handle_concurrency = 2;
    config.error_backoff = Duration::from_millis(100);
    config.saga_deadline = DurationMs(plan.saga_deadline_ms / divisor);
    config.redrive.after = DurationMs(config.redrive.after.0 / divisor);
    config.redrive.horizon = DurationMs::from_secs(300);
    config.retention = Retention {
        inbox: DurationMs::from_secs(600),
        outbox: DurationMs::from_secs(600),
        batch: 100,
    };
    config.prune_interval = Duration::from_secs(1);
    // Production's lease, as before the simulator scaled its own: real
    // PostgreSQL and Redis passes under torture's faults take longer.
    config.relay_lease = RuntimeConfig::default().relay_lease;
    config
}

/// The simulator's fault kinds a torture sweep does not make happen, on
/// purpose (ARCHITECTURE.md, torture): `prune` (torture's retention, 10
/// min, outlasts every seed so that no check loses rows it reads; pruning
/// on PostgreSQL is `tests/bounded_storage.rs`'s) and `wake` (not a fault:
/// the runtime's own relay wake-up, which torture's replicas run).
pub const NOT_IN_TORTURE: [FaultKind; 2] = [FaultKind::Prune, FaultKind::Wake];

/// The coverage gate of a torture sweep, counting effects (see
/// `driver.rs`): every saga path and every fault kind of the profile, the
/// simulator's (but [`NOT_IN_TORTURE`]) and torture's own ([`Kind`]),
/// happened at least once, unless `without` took it out or `layout` does
/// not draw it ([`Kind::drawn_in`]: `db-down` is required of split sweeps
/// only).
pub fn never_happened(
    summary: &Summary,
    profile: Profile,
    without: &[AnyKind],
    layout: Layout,
) -> Vec<String> {
    let left_out = |k: FaultKind| NOT_IN_TORTURE.contains(&k) || without.contains(&AnyKind::Sim(k));
    let mut missing: Vec<String> = summary
        .never_happened(profile)
        .into_iter()
        // Torture draws no steer: the rare states are the simulator's
        // (`FaultPlan::steer`, counted by its observer), not gated here.
        .filter(|m| !m.starts_with("rare state "))
        .filter(|m| {
            !FaultKind::ALL
                .iter()
                .any(|k| left_out(*k) && *m == format!("fault {k}"))
        })
        .collect();
    if profile != Profile::None {
        missing.extend(
            Kind::ALL
                .iter()
                .filter(|k| k.drawn_in(layout) && !without.contains(&AnyKind::Torture(**k)))
                .filter(|k| summary.other_faults.get(k.name()).copied().unwrap_or(0) == 0)
                .map(|k| format!("fault {k}")),
        );
    }
    missing
}

/// What one seed did and found.
#[derive(Debug, Clone)]
pub struct TortureOutcome {
    pub input: TortureInput,
    /// The trace: `ms-since-start text`, observer events and the driver's.
    pub lines: Vec<String>,
    /// Each finding with the ms it was found at, earliest first.
    pub findings: Vec<(u64, Finding)>,
    pub paths: BTreeMap<String, u64>,
    pub sim_faults: BTreeMap<FaultKind, u64>,
    pub kinds: BTreeMap<Kind, u64>,
    /// Effects counted by name (`Shared::effect`), e.g. `partition-takeover`.
    pub effects: BTreeMap<&'static str, u64>,
    pub dead_letters: u64,
    /// How often each PgStore statement and RedisBus command ran, under
    /// the faults and after the heal ([`coverage`]).
    pub statements: coverage::StatementTable,
    /// What the checker looked at: `commits` (each checked for safety and
    /// the ledger), `resyncs`, `acks` (each against the inbox),
    /// `stream-entries` (each against the outbox and the marks).
    pub checked: BTreeMap<&'static str, u64>,
    pub wall: Duration,
}

impl TortureOutcome {
    pub fn seed(&self) -> u64 {
        self.input.seed
    }

    /// The findings in the simulator's order (sorted, distinct).
    pub fn violations(&self) -> Vec<Finding> {
        let mut all: Vec<Finding> = self.findings.iter().map(|(_, f)| f.clone()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// The finding made first in time.
    pub fn first(&self) -> Option<&Finding> {
        self.findings.first().map(|(_, f)| f)
    }

    /// The outcome as the simulator's summary counts it (wall time stands
    /// for simulated time: torture's clock is real).
    pub fn as_sim_outcome(&self) -> SimOutcome {
        SimOutcome {
            seed: self.seed(),
            entries: Vec::new(),
            hash: trace_hash(&self.lines),
            lines: Vec::new(),
            violations: self.violations(),
            paths: self.paths.clone(),
            order_paths: Default::default(),
            faults: self.sim_faults.clone(),
            orders: self.input.scenario.orders.len() as u64,
            dead_letters: self.dead_letters,
            simulated_ms: u64::try_from(self.wall.as_millis()).unwrap_or(u64::MAX),
            shape: None,
            wall: self.wall,
        }
    }

    /// The report of a failing seed: the plan, torture's faults, the
    /// findings and the trace.
    pub fn failure_report(&self) -> String {
        let mut s = format!("seed {} plan: {:?}\n", self.seed(), self.input.plan);
        s += &format!("seed {} torture faults: {:?}\n", self.seed(), self.input.timed);
        for (at, f) in &self.findings {
            s += &format!("  at {at}ms: {f}\n");
        }
        s += "trace:\n";
        for line in &self.lines {
            s += line;
            s.push('\n');
        }
        s
    }
}
