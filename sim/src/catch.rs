//! What counts as catching a planted bug: a finding of a check about the
//! saga, never trouble of the harness around it.
//!
//! Every finding of the simulator and of torture is an invariant or
//! delivery-rule check (`domain::invariants`, `finding::check`,
//! `torture::checks`) except these, which say only that a run could not
//! prove anything:
//! - `torture-setup`: torture could not set a seed up, inject a fault it
//!   must, or read what it checks;
//! - `host-failed`: a process's software panicked (a crash of the harness's
//!   making or the code's, not a broken saga rule);
//! - a `liveness` finding that is about no saga state: torture's "cannot
//!   tell" (the state to judge quiescence by could not be read) and "client
//!   still placing orders" (the client, not the saga, ran out of time).
//!   Liveness that names unfinished saga work (orders not terminal, entries
//!   unacknowledged, rows unpublished) is a catch: `at-most-once-bus` and
//!   `no-group-recreate` are caught by it.
//!
//! A denylist rather than a list of invariants, so a check added later
//! counts without an edit here; `saga-sim mutants` and `corpus repin` also
//! require the catching run to be clean without the mutant, which no
//! harness trouble can fake twice on a deterministic run.

use crate::finding::{check, Finding};
use crate::run::SimOutcome;
use crate::torture::checks;

/// Phrases of torture's liveness findings that judge no saga state.
const LIVENESS_ABOUT_NO_SAGA: [&str; 2] = ["cannot tell", "client still placing orders"];

/// Whether `finding` may count as a planted bug's catch.
pub fn counts_as_catch(finding: &Finding) -> bool {
    match finding.check.as_str() {
        checks::SETUP | check::HOST_FAILED => false,
        check::LIVENESS => !LIVENESS_ABOUT_NO_SAGA
            .iter()
            .any(|phrase| finding.detail.contains(phrase)),
        _ => true,
    }
}

/// The first finding of `findings` that counts as a catch.
pub fn first_catch<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> Option<&'a Finding> {
    findings.into_iter().find(|f| counts_as_catch(f))
}

/// The check that counts as a catch found first in simulated time (the
/// trace logs each finding when it is made), else the first that counts
/// in the sorted list.
pub fn first_catch_in_time(outcome: &SimOutcome) -> Option<String> {
    let counting = |check: &str| {
        outcome
            .violations
            .iter()
            .any(|v| v.check == check && counts_as_catch(v))
    };
    outcome
        .entries
        .iter()
        .filter_map(|e| {
            let rest = e.text.strip_prefix("VIOLATION [")?;
            rest.split_once(']').map(|(check, _)| check.to_string())
        })
        .find(|check| counting(check))
        .or_else(|| first_catch(&outcome.violations).map(|v| v.check.clone()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn setup_host_failures_and_liveness_about_no_saga_state_do_not_count() {
        let bound = Duration::from_secs(45);
        for finding in [
            Finding::new(checks::SETUP, "seed 3", "cannot create the database"),
            Finding::new(check::HOST_FAILED, "order-r0", "panicked"),
            checks::liveness(bound, "cannot tell: connection refused"),
            checks::liveness(bound, "client still placing orders"),
        ] {
            assert!(!counts_as_catch(&finding), "{finding}");
        }
        for finding in [
            checks::liveness(bound, "3 orders not terminal"),
            Finding::new(check::ACK_AFTER_COMMIT, "Inventory entry #1", "acked"),
            Finding::new("balance-conservation", "user user-0", "balance 1 != 2"),
            Finding::new(checks::REPUBLISH_BOUNDED, "event e", "published 40 times"),
        ] {
            assert!(counts_as_catch(&finding), "{finding}");
        }
    }
}
