//! Statement coverage of a torture run: how often each statement of
//! `PgStore` and each command or script of `RedisBus` ran through the
//! replicas (and the client) of a seed, split into "while a fault was
//! active" (before the heal) and after, summed over a sweep, and the gate
//! that fails a sweep in which a statement of the saga path never ran while
//! a fault was active (issue 23: torture used to run the single-row
//! statements only, never the batched ones `serve` runs).
//!
//! The adapters count (`purchase_saga::adapters::coverage`); this module
//! keeps a handle on the counters of every store and bus a replica opened
//! ([`StatementCoverage::register`]), takes their totals at the heal
//! ([`StatementCoverage::heal`]) and at the end ([`StatementCoverage::table`]).
//! Statements the saga path cannot reach in torture by design are listed
//! in [`NOT_REQUIRED`] with the reason, and printed as such.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use purchase_saga::adapters::coverage::StatementCounts;
use purchase_saga::adapters::postgres::{PgStatement, PgStore};
use purchase_saga::adapters::redis::{RedisBus, RedisCommand};

use super::plan::Kind;

/// Which adapter a statement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Adapter {
    Postgres,
    Redis,
}

impl Adapter {
    fn name(self) -> &'static str {
        match self {
            Adapter::Postgres => "postgres",
            Adapter::Redis => "redis",
        }
    }
}

/// How often one statement ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Runs {
    /// Before the heal: while the plan's faults were active.
    pub faulted: u64,
    /// After the heal.
    pub healed: u64,
}

/// Runs per statement, per adapter: one seed's or a sweep's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementTable {
    pub runs: BTreeMap<(Adapter, &'static str), Runs>,
}

/// Statements of the ports that a torture sweep does not run by design,
/// with the reason.
pub const NOT_REQUIRED: &[(Adapter, &str, &str)] = &[
    (
        Adapter::Postgres,
        "select",
        "an unlocked read: the HTTP API's read side (and the unlocked-stock-check mutant), never a saga step",
    ),
    (
        Adapter::Postgres,
        "row_upsert",
        "a save of a key not read first: no saga step writes a row it did not lock",
    ),
    (
        Adapter::Postgres,
        "row_upsert_many",
        "the batched save of keys not read first: no saga step writes a row it did not lock",
    ),
    (
        Adapter::Postgres,
        "overdue_sagas",
        "the sweeper's overdue gauge and /metrics; torture's checker finds stuck sagas itself",
    ),
    (
        Adapter::Postgres,
        "snapshot",
        "the checker reads its snapshots on its own connection, not through a replica's store",
    ),
    (
        Adapter::Postgres,
        "inbox_processed",
        "the consumer asks the inbox only for a delivery past deliveries_max (an applied event whose acks were lost \
         ten times), which torture's plans do not steer into; the simulator steers seeds into that state \
         (applied-past-limit) and catches the past-limit-dead-letters-applied bug there",
    ),
    (
        Adapter::Redis,
        "xtrim",
        "the trimmer runs in serve's maintenance loop; torture's replicas run no trimmer",
    ),
];

/// Statements required only when the sweep injected the fault that makes
/// them run: (adapter, statement, the torture fault).
const REQUIRED_WITH: &[(Adapter, &str, Kind)] =
    &[(Adapter::Postgres, "outbox_quarantine", Kind::BadOutboxRow)];

/// One store's or bus's counters.
#[derive(Clone)]
enum Counter {
    Postgres(StatementCounts<PgStatement>),
    Redis(StatementCounts<RedisCommand>),
}

impl Counter {
    fn totals(&self) -> Vec<((Adapter, &'static str), u64)> {
        let (adapter, counts) = match self {
            Counter::Postgres(c) => (Adapter::Postgres, c.snapshot()),
            Counter::Redis(c) => (Adapter::Redis, c.snapshot()),
        };
        counts.into_iter().map(|(s, n)| ((adapter, s), n)).collect()
    }
}

/// What one seed's statements did: see the module docs.
#[derive(Default)]
pub struct StatementCoverage {
    counters: Mutex<Vec<Counter>>,
    /// The totals at the heal; None before it.
    at_heal: Mutex<Option<BTreeMap<(Adapter, &'static str), u64>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StatementCoverage {
    /// Counts the statements of `store` and `bus` (a replica's or the
    /// client's, as connected) from now on. Only the counters are kept: a
    /// crashed replica's connections still close.
    pub fn register(&self, store: &PgStore, bus: &RedisBus) {
        let mut all = lock(&self.counters);
        all.push(Counter::Postgres(store.statement_counter()));
        all.push(Counter::Redis(bus.command_counter()));
    }

    fn totals(&self) -> BTreeMap<(Adapter, &'static str), u64> {
        let mut sum = BTreeMap::new();
        for counter in lock(&self.counters).iter() {
            for (key, n) in counter.totals() {
                *sum.entry(key).or_insert(0) += n;
            }
        }
        sum
    }

    /// The faults end now: what ran so far ran under them.
    pub fn heal(&self) {
        let totals = self.totals();
        lock(&self.at_heal).get_or_insert(totals);
    }

    /// The seed's table (a seed stopped before its heal counts all as faulted).
    pub fn table(&self) -> StatementTable {
        let end = self.totals();
        let at_heal = lock(&self.at_heal).clone().unwrap_or_else(|| end.clone());
        let mut runs = BTreeMap::new();
        for (key, total) in end {
            let faulted = at_heal.get(&key).copied().unwrap_or(0).min(total);
            runs.insert(
                key,
                Runs {
                    faulted,
                    healed: total - faulted,
                },
            );
        }
        StatementTable { runs }
    }
}

impl StatementTable {
    /// Adds another seed's runs.
    pub fn add(&mut self, other: &StatementTable) {
        for (key, r) in &other.runs {
            let sum = self.runs.entry(*key).or_default();
            sum.faulted += r.faulted;
            sum.healed += r.healed;
        }
    }

    fn not_required(adapter: Adapter, statement: &str) -> Option<&'static str> {
        NOT_REQUIRED
            .iter()
            .find(|(a, s, _)| *a == adapter && *s == statement)
            .map(|(_, _, why)| *why)
    }

    /// Whether the gate asks `statement` to have run under a fault, given
    /// the torture faults the sweep injected.
    fn required(adapter: Adapter, statement: &str, injected: &BTreeMap<Kind, u64>) -> bool {
        if Self::not_required(adapter, statement).is_some() {
            return false;
        }
        REQUIRED_WITH
            .iter()
            .find(|(a, s, _)| *a == adapter && *s == statement)
            .is_none_or(|(_, _, kind)| injected.get(kind).copied().unwrap_or(0) > 0)
    }

    /// The saga-path statements that never ran while a fault was active
    /// (`injected`: the torture faults the sweep injected, summed).
    pub fn never_under_fault(&self, injected: &BTreeMap<Kind, u64>) -> Vec<String> {
        assert!(
            !self.runs.is_empty() || injected.is_empty(),
            "a sweep that ran registered its adapters"
        );
        self.runs
            .iter()
            .filter(|((adapter, statement), r)| {
                r.faulted == 0 && Self::required(*adapter, statement, injected)
            })
            .map(|((adapter, statement), _)| format!("{} {statement}", adapter.name()))
            .collect()
    }

    /// The table: each statement's runs under faults and after the heal,
    /// and why a statement is not required.
    pub fn render(&self, injected: &BTreeMap<Kind, u64>) -> String {
        let mut s = String::from("statements (runs while a fault was active / after the heal):\n");
        for ((adapter, statement), r) in &self.runs {
            let note = match Self::not_required(*adapter, statement) {
                Some(why) => format!("  (not required: {why})"),
                None if !Self::required(*adapter, statement, injected) => {
                    "  (not required: its fault was not injected)".to_string()
                }
                None if r.faulted == 0 => "  NEVER UNDER A FAULT".to_string(),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "  {:<8} {:<26} {:>8} / {:<8}{note}",
                adapter.name(),
                statement,
                r.faulted,
                r.healed
            );
        }
        s
    }
}

/// A sweep's statement coverage: every seed's table summed, with the
/// torture faults the sweep injected.
pub struct SweepCoverage {
    pub table: StatementTable,
    pub injected: BTreeMap<Kind, u64>,
    /// Whether the profile injects faults at all (`none` does not: nothing
    /// can run under a fault, and the gate is off).
    gated: bool,
}

impl SweepCoverage {
    pub fn of(outcomes: &[super::TortureOutcome], profile: crate::faults::Profile) -> SweepCoverage {
        let mut table = StatementTable::default();
        let mut injected = BTreeMap::new();
        for o in outcomes {
            table.add(&o.statements);
            for (kind, n) in &o.kinds {
                *injected.entry(*kind).or_insert(0) += n;
            }
        }
        SweepCoverage {
            table,
            injected,
            gated: !matches!(profile, crate::faults::Profile::None),
        }
    }

    /// The saga-path statements that never ran under a fault (empty when
    /// the gate is off).
    pub fn missing(&self) -> Vec<String> {
        if !self.gated {
            return Vec::new();
        }
        self.table.never_under_fault(&self.injected)
    }

    /// The table, then the gate's verdict when it fails.
    pub fn render(&self) -> String {
        let mut s = self.table.render(&self.injected);
        let missing = self.missing();
        if !missing.is_empty() {
            let _ = writeln!(
                s,
                "\nNEVER RAN UNDER A FAULT (statement coverage): {}",
                missing.join(", ")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(Adapter, &'static str, u64, u64)]) -> StatementTable {
        StatementTable {
            runs: rows
                .iter()
                .map(|(a, s, f, h)| {
                    (
                        (*a, *s),
                        Runs {
                            faulted: *f,
                            healed: *h,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_statement_run_only_after_the_heal_fails_the_gate_unless_listed() {
        let t = table(&[
            (Adapter::Postgres, "inbox_insert_many", 0, 7),
            (Adapter::Postgres, "commit", 3, 1),
            (Adapter::Postgres, "snapshot", 0, 0),
            (Adapter::Postgres, "outbox_quarantine", 0, 0),
            (Adapter::Redis, "xadd_pipeline_multi_event", 0, 0),
        ]);
        let none = BTreeMap::new();
        assert_eq!(
            t.never_under_fault(&none),
            ["postgres inbox_insert_many", "redis xadd_pipeline_multi_event"]
        );
        let injected = BTreeMap::from([(Kind::BadOutboxRow, 1)]);
        assert_eq!(
            t.never_under_fault(&injected),
            [
                "postgres inbox_insert_many",
                "postgres outbox_quarantine",
                "redis xadd_pipeline_multi_event"
            ]
        );
        let rendered = t.render(&none);
        assert!(rendered.contains("NEVER UNDER A FAULT"), "{rendered}");
        assert!(rendered.contains("not required: the checker"), "{rendered}");
    }

    #[test]
    fn every_listed_statement_is_one_the_adapters_name() {
        use purchase_saga::adapters::coverage::Statement;
        let pg: Vec<&str> = PgStatement::ALL.iter().map(|s| s.name()).collect();
        let redis: Vec<&str> = RedisCommand::ALL.iter().map(|s| s.name()).collect();
        let listed = NOT_REQUIRED
            .iter()
            .map(|(a, s, _)| (*a, *s))
            .chain(REQUIRED_WITH.iter().map(|(a, s, _)| (*a, *s)));
        for (adapter, statement) in listed {
            let known = match adapter {
                Adapter::Postgres => &pg,
                Adapter::Redis => &redis,
            };
            assert!(
                known.contains(&statement),
                "{statement} is no {adapter:?} statement"
            );
        }
    }
}
