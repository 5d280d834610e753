//! Statement coverage: how often each statement (PostgreSQL) or command and
//! script (Redis) of an adapter has run, so that a test harness can prove
//! which of them it exercised (`saga-sim torture` fails a sweep in which a
//! saga-path statement never ran while a fault was on) and an operator can
//! see them on `/metrics` (`saga_store_statements_total`,
//! `saga_bus_commands_total`).
//!
//! Each adapter names its statements in a closed enum ([`Statement`]); the
//! counters are one `AtomicU64` per statement, shared by every clone of the
//! adapter, bumped when the statement is sent (whatever its outcome: a
//! statement that a fault made fail still ran).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The closed set of one adapter's statements.
pub trait Statement: Copy + 'static {
    /// Every statement, each at its [`index`](Self::index).
    const ALL: &'static [Self];

    /// The label on `/metrics` and in torture's table.
    fn name(self) -> &'static str;

    /// Position in [`ALL`](Self::ALL) (`self as usize` for a fieldless enum).
    fn index(self) -> usize;
}

/// One counter per statement of `S`, shared by clones.
pub struct StatementCounts<S> {
    counts: Arc<[AtomicU64]>,
    statements: PhantomData<fn() -> S>,
}

impl<S: Statement> StatementCounts<S> {
    pub fn new() -> StatementCounts<S> {
        assert!(
            S::ALL.iter().enumerate().all(|(i, s)| s.index() == i),
            "every statement sits at its own index of ALL"
        );
        StatementCounts {
            counts: S::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            statements: PhantomData,
        }
    }

    /// Counts one run of `statement`.
    pub fn ran(&self, statement: S) {
        self.counts[statement.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Every statement with its count so far, zeros included.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        S::ALL
            .iter()
            .map(|s| (s.name(), self.counts[s.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

impl<S: Statement> Default for StatementCounts<S> {
    fn default() -> Self {
        StatementCounts::new()
    }
}

impl<S> Clone for StatementCounts<S> {
    fn clone(&self) -> Self {
        StatementCounts {
            counts: self.counts.clone(),
            statements: PhantomData,
        }
    }
}

impl<S> fmt::Debug for StatementCounts<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatementCounts")
            .field("statements", &self.counts.len())
            .finish()
    }
}
