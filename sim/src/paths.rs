//! What each order's saga came to: its path (`COMPLETED`, the failed
//! step, or its status), counted per run ([`paths`]), and the paths every
//! sweep must see ([`required_paths`]). Read from the domain's rows by the
//! run (`run.rs`) and torture, and summed by the sweep's summary
//! (`summary.rs`).

use std::collections::BTreeMap;

use purchase_saga::domain::invariants::Snapshot;
use purchase_saga::domain::rows::OrderStatus;
use purchase_saga::domain::FailedStep;

use crate::faults::FaultKind;

/// The saga paths every sweep must see: success and each failed step.
pub fn required_paths() -> Vec<String> {
    std::iter::once("COMPLETED".to_string())
        .chain(FailedStep::ALL.iter().map(|s| s.as_str().to_string()))
        .collect()
}

/// A run's orders by outcome: `COMPLETED`, the failed step, or the status
/// (`PENDING`); `REJECTED` for the scenario's `ordered` orders never placed.
pub fn paths(snapshot: &Snapshot, ordered: usize) -> BTreeMap<String, u64> {
    let mut paths: BTreeMap<String, u64> = BTreeMap::new();
    for path in order_paths(snapshot).into_values() {
        *paths.entry(path).or_insert(0) += 1;
    }
    let rejected = (ordered as u64).saturating_sub(snapshot.orders.len() as u64);
    if rejected > 0 {
        paths.insert("REJECTED".into(), rejected);
    }
    paths
}

/// Each placed order's path (`COMPLETED`, the failed step, or its status),
/// by order id as the trace writes it.
pub fn order_paths(snapshot: &Snapshot) -> BTreeMap<String, String> {
    snapshot
        .orders
        .iter()
        .map(|(id, order)| {
            let path = match (order.status, order.failed_step) {
                (OrderStatus::Completed, _) => "COMPLETED".to_string(),
                (OrderStatus::Failed, Some(step)) => step.as_str().to_string(),
                (status, _) => status.as_str().to_string(),
            };
            (id.to_string(), path)
        })
        .collect()
}

/// Adds the orders whose deadline was signalled to `faults` (the `deadline`
/// kind is counted from the state, not injected).
pub fn count_deadlines(snapshot: &Snapshot, faults: &mut BTreeMap<FaultKind, u64>) {
    let deadlines = snapshot.orders.values().filter(|o| o.deadline_signalled).count() as u64;
    if deadlines > 0 {
        *faults.entry(FaultKind::Deadline).or_insert(0) += deadlines;
    }
}
